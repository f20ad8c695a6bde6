"""psycopg 3 through Sluice's Postgres door: parameters, server-side prepared
statements, COPY, transactions and errors. Usage: psycopg_test.py URL"""

import sys

import psycopg
from psycopg import errors


def main(url: str) -> None:
    with psycopg.connect(url, autocommit=False) as conn:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE pets (id int PRIMARY KEY, name text, born date)")
            conn.commit()

            # Parameters of several types.
            cur.execute("INSERT INTO pets VALUES (%s, %s, %s)", (1, "rex", "2020-01-02"))
            cur.execute("SELECT id, name, born::text FROM pets WHERE id = %s", (1,))
            assert cur.fetchone() == (1, "rex", "2020-01-02")
            conn.commit()

            # Server-side prepared statements, reused across transactions.
            for i in range(2, 12):
                cur.execute("INSERT INTO pets (id, name) VALUES (%s, %s)", (i, f"pet{i}"), prepare=True)
                conn.commit()
            for i in range(2, 12):
                cur.execute("SELECT name FROM pets WHERE id = %s", (i,), prepare=True)
                assert cur.fetchone() == (f"pet{i}",)
                conn.commit()

            # COPY in and out.
            with cur.copy("COPY pets (id, name) FROM STDIN") as copy:
                for i in range(100, 150):
                    copy.write_row((i, f"copied{i}"))
            conn.commit()
            rows = []
            with cur.copy("COPY (SELECT id FROM pets WHERE id >= 100 ORDER BY id) TO STDOUT") as copy:
                for row in copy.rows():
                    rows.append(int(row[0]))
            assert rows == list(range(100, 150)), rows

            # Transactions: rollback discards.
            cur.execute("INSERT INTO pets (id, name) VALUES (999, 'ghost')")
            conn.rollback()
            cur.execute("SELECT count(*) FROM pets WHERE id = 999")
            assert cur.fetchone() == (0,)
            conn.commit()

            # Errors carry SQLSTATEs and leave the connection usable.
            try:
                cur.execute("INSERT INTO pets (id, name) VALUES (1, 'dup')")
                raise AssertionError("expected a unique violation")
            except errors.UniqueViolation:
                conn.rollback()
            try:
                cur.execute("SELECT * FROM no_such_table")
                raise AssertionError("expected undefined table")
            except errors.UndefinedTable:
                conn.rollback()
            cur.execute("SELECT count(*) FROM pets")
            assert cur.fetchone() == (61,)
            conn.commit()

    # Autocommit and pipeline mode.
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.pipeline():
            c1 = conn.execute("SELECT %s::int + 1", (1,))
            c2 = conn.execute("SELECT %s::text", ("x",))
        assert c1.fetchone() == (2,)
        assert c2.fetchone() == ("x",)
    print("psycopg: all checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
