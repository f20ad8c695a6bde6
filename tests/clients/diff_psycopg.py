"""psycopg 3 used the way applications use it, as a transcript: every step's
rows, command status or error (SQLSTATE and message). Run once against
Postgres directly and once through Sluice's door; the two transcripts must
be equal. Usage: diff_psycopg.py URL  (prints one JSON document)."""

import datetime
import json
import sys

import psycopg
from psycopg import errors, sql

out = []


def step(name, fn):
    try:
        result = fn()
    except psycopg.Error as e:
        result = {"error": e.sqlstate, "message": str(e).splitlines()[0] if str(e) else ""}
    except Exception as e:  # a driver-side failure is part of the transcript too
        result = {"exception": type(e).__name__, "message": str(e)}
    out.append([name, result])


def rows(conn, query, params=None, prepare=None):
    with conn.cursor() as cur:
        cur.execute(query, params, prepare=prepare)
        return [list(map(str, r)) for r in cur.fetchall()] if cur.description else cur.statusmessage


def main(url):
    conn = psycopg.connect(url, autocommit=True)
    other = psycopg.connect(url, autocommit=True)
    conn.execute("DROP TABLE IF EXISTS dp_t, dp_items, dp_u")

    # Prepared statements across DDL that changes types (psycopg prepares
    # after 5 executions of the same query, or at once with prepare=True).
    conn.execute("CREATE TABLE dp_t (d date)")
    for _ in range(6):
        step("insert date", lambda: rows(conn, "INSERT INTO dp_t VALUES (%s)", [datetime.date(2020, 1, 2)]))
    step("prepared insert", lambda: rows(conn, "INSERT INTO dp_t VALUES (%s)", [datetime.date(2020, 1, 3)], True))
    conn.execute("DROP TABLE dp_t")
    conn.execute("CREATE TABLE dp_t (d text)")
    step("other client after DDL", lambda: rows(other, "INSERT INTO dp_t VALUES (%s)", ["hello"], True))
    step("other client again", lambda: rows(other, "INSERT INTO dp_t VALUES (%s)", ["again"], True))
    step("select", lambda: rows(conn, "SELECT d FROM dp_t ORDER BY d"))

    # executemany runs in pipeline mode.
    conn.execute("CREATE TABLE dp_items (id int PRIMARY KEY, name text)")
    with conn.cursor() as cur:
        step("executemany", lambda: cur.executemany("INSERT INTO dp_items VALUES (%s, %s)", [(i, f"n{i}") for i in range(20)]) or cur.rowcount)
        step("executemany duplicate", lambda: cur.executemany("INSERT INTO dp_items VALUES (%s, %s)", [(100, "a"), (1, "dup"), (101, "b")]))
    step("after executemany", lambda: rows(conn, "SELECT count(*), max(id) FROM dp_items"))
    conn.execute("DROP TABLE dp_items")
    conn.execute("CREATE TABLE dp_items (id text PRIMARY KEY, name text)")
    with other.cursor() as cur:
        step("executemany after DDL", lambda: cur.executemany("INSERT INTO dp_items VALUES (%s, %s)", [(f"k{i}", "v") for i in range(5)]) or cur.rowcount)

    # An explicit pipeline with an error in the middle. (Where psycopg raises
    # the error, at sync() or at the fetch, depends on timing; what is
    # compared is which errors and results there were.)
    def pipeline():
        res, errs = [], set()

        def note(e):
            # Server errors only: psycopg's own PipelineAborted /
            # "no result" errors appear or not with timing.
            if e.sqlstate is not None:
                errs.add(e.sqlstate)

        try:
            with conn.pipeline() as p:
                c1 = conn.execute("SELECT 1")
                p.sync()
                res.append(c1.fetchall())
                for q in ["SELECT 1/0", "SELECT 3"]:
                    try:
                        conn.execute(q)
                    except psycopg.Error as e:
                        note(e)
                try:
                    p.sync()
                except psycopg.Error as e:
                    note(e)
        except psycopg.Error as e:
            note(e)
        res.append(sorted(errs))
        res.append(rows(conn, "SELECT 'after pipeline'"))
        return str(res)

    step("pipeline", pipeline)

    # Transactions, savepoints, errors.
    def tx():
        conn.autocommit = False
        try:
            with conn.transaction():
                conn.execute("INSERT INTO dp_items VALUES ('t1', 'x')")
                try:
                    with conn.transaction():
                        conn.execute("INSERT INTO dp_items VALUES ('t1', 'dup')")
                except errors.UniqueViolation as e:
                    pass
                conn.execute("INSERT INTO dp_items VALUES ('t2', 'y')")
        finally:
            conn.autocommit = True
        return rows(conn, "SELECT id FROM dp_items WHERE id LIKE 't%' ORDER BY id")

    step("savepoints", tx)
    step("syntax error", lambda: rows(conn, "SELEC 1"))
    step("undefined table", lambda: rows(conn, "SELECT * FROM dp_nope"))
    step("division by zero", lambda: rows(conn, "SELECT 1/0"))

    # Session state.
    step("set_config", lambda: rows(conn, "SELECT set_config('DateStyle', 'SQL, DMY', false)"))
    step("date style kept", lambda: rows(conn, "SELECT '2020-03-04'::date::text"))
    step("other's date style", lambda: rows(other, "SELECT '2020-03-04'::date::text"))
    step("SET", lambda: rows(conn, "SET TIME ZONE 'Asia/Tokyo'"))
    step("time zone kept", lambda: rows(conn, "SHOW TimeZone"))
    step("other's time zone", lambda: rows(other, "SHOW TimeZone"))
    step("application_name", lambda: rows(conn, "SHOW application_name"))
    step("reset", lambda: rows(conn, "RESET DateStyle"))

    # Server-side cursors and COPY.
    def named_cursor():
        conn.autocommit = False
        try:
            with conn.cursor(name="dp_cur") as cur:
                cur.execute("SELECT g FROM generate_series(1, 100) g")
                first = cur.fetchmany(3)
                rest = len(cur.fetchall())
            conn.commit()
        finally:
            conn.autocommit = True
        return [str(first), rest]

    step("named cursor", named_cursor)

    def copy():
        with conn.cursor() as cur:
            with cur.copy("COPY dp_items (id, name) FROM STDIN") as cp:
                for i in range(50):
                    cp.write_row((f"c{i}", "copied"))
            got = []
            with cur.copy("COPY (SELECT id FROM dp_items WHERE name = 'copied' ORDER BY id) TO STDOUT") as cp:
                for row in cp.rows():
                    got.append(row[0])
        return len(got)

    step("copy", copy)

    # LISTEN / NOTIFY.
    def notify():
        conn.execute("LISTEN dp_chan")
        other.execute("NOTIFY dp_chan, 'hello'")
        got = []
        for n in conn.notifies(timeout=5, stop_after=1):
            got.append([n.channel, n.payload])
        conn.execute("UNLISTEN dp_chan")
        return got

    step("notify", notify)

    # Advisory locks.
    step("lock", lambda: rows(conn, "SELECT pg_advisory_lock(777)"))
    step("other try lock", lambda: rows(other, "SELECT pg_try_advisory_lock(777)"))
    step("unlock", lambda: rows(conn, "SELECT pg_advisory_unlock(777)"))

    # Types round-trip.
    step(
        "types",
        lambda: rows(
            conn,
            "SELECT %s::int8, %s::numeric, %s::text[], %s::jsonb, %s::bytea, %s::timestamptz, %s::uuid",
            [2**40, "1.50", ["a", "b"], json.dumps({"k": [1, 2]}), b"\x00\x01", datetime.datetime(2020, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc), "11111111-2222-3333-4444-555555555555"],
        ),
    )
    conn.execute("DROP TABLE IF EXISTS dp_t, dp_items")
    conn.close()
    other.close()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
