"""asyncpg used the way applications use it, as a transcript (see
diff_psycopg.py). asyncpg prepares every query as a named statement and
caches it, introspects types, and pipelines executemany.
Usage: diff_asyncpg.py URL  (prints one JSON document)."""

import asyncio
import datetime
import json
import sys

import asyncpg

out = []


async def step(name, coro_fn):
    try:
        result = await coro_fn()
    except asyncpg.PostgresError as e:
        result = {"error": e.sqlstate, "message": str(e)}
    except asyncpg.InterfaceError as e:
        result = {"interface_error": type(e).__name__}
    out.append([name, result])


def plain(records):
    return [[str(v) for v in r.values()] for r in records]


async def main(url):
    conn = await asyncpg.connect(url)
    other = await asyncpg.connect(url)
    await conn.execute("DROP TABLE IF EXISTS da_t, da_items; DROP TYPE IF EXISTS da_mood")

    await step("params", lambda: conn.fetch("SELECT $1::int4 + 1 AS a, $2::text AS b", 41, "x"))
    out[-1][1] = plain(out[-1][1]) if isinstance(out[-1][1], list) else out[-1][1]

    # Custom types (asyncpg introspects them), then DDL that replaces them.
    await conn.execute("CREATE TYPE da_mood AS ENUM ('ok', 'meh'); CREATE TABLE da_t (m da_mood, n int)")
    await step("insert enum", lambda: conn.execute("INSERT INTO da_t VALUES ($1, $2)", "ok", 1))
    await step("select enum", lambda: conn.fetchval("SELECT m FROM da_t WHERE n = $1", 1))
    await conn.execute("DROP TABLE da_t; DROP TYPE da_mood; CREATE TYPE da_mood AS ENUM ('great'); CREATE TABLE da_t (m da_mood, n int)")
    await step("other after DDL", lambda: other.execute("INSERT INTO da_t VALUES ($1, $2)", "great", 2))
    await step("other select", lambda: other.fetchval("SELECT m FROM da_t WHERE n = $1", 2))
    await step("result type changed", lambda: conn.fetchval("SELECT m FROM da_t WHERE n = $1", 2))

    # executemany (pipelined), with an error in the middle.
    await conn.execute("CREATE TABLE da_items (id int PRIMARY KEY, v text)")
    await step("executemany", lambda: conn.executemany("INSERT INTO da_items VALUES ($1, $2)", [(i, "v") for i in range(50)]))
    await step("executemany dup", lambda: conn.executemany("INSERT INTO da_items VALUES ($1, $2)", [(100, "a"), (1, "b"), (101, "c")]))
    await step("count", lambda: conn.fetchval("SELECT count(*) FROM da_items"))

    # Transactions.
    async def tx():
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO da_items VALUES (200, 'x')")
                await conn.execute("INSERT INTO da_items VALUES (200, 'dup')")
        except asyncpg.UniqueViolationError:
            pass
        return await conn.fetchval("SELECT count(*) FROM da_items WHERE id = 200")

    await step("rolled back", tx)

    async def savepoint():
        async with conn.transaction():
            await conn.execute("INSERT INTO da_items VALUES (300, 'x')")
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO da_items VALUES (300, 'dup')")
            except asyncpg.UniqueViolationError:
                pass
        return await conn.fetchval("SELECT count(*) FROM da_items WHERE id = 300")

    await step("savepoint", savepoint)

    async def cursor():
        async with conn.transaction():
            cur = await conn.cursor("SELECT g FROM generate_series(1, 100) g")
            a = await cur.fetch(5)
            b = await cur.fetch(10)
        return [len(a), len(b), a[0]["g"]]

    await step("cursor", cursor)

    async def prepared():
        st = await conn.prepare("SELECT $1::int4 * 2")
        return [await st.fetchval(21), [str(t) for t in st.get_parameters()], await st.fetchval(5)]

    await step("prepared", prepared)
    await step("copy in", lambda: conn.copy_records_to_table("da_items", records=[(1000 + i, "copied") for i in range(30)]))
    await step("copied", lambda: conn.fetchval("SELECT count(*) FROM da_items WHERE v = 'copied'"))
    await step("error", lambda: conn.fetch("SELECT 1/0"))
    await step("syntax", lambda: conn.fetch("SELEC 1"))
    await step("settings", lambda: conn.execute("SET search_path TO public; SELECT set_config('DateStyle', 'SQL, DMY', false)"))
    await step("date style", lambda: conn.fetchval("SELECT '2020-03-04'::date::text"))
    await step("other date style", lambda: other.fetchval("SELECT '2020-03-04'::date::text"))
    await step("app name", lambda: conn.fetchval("SHOW application_name"))
    await step("types", lambda: conn.fetchrow(
        "SELECT $1::int8 AS a, $2::numeric AS b, $3::text[] AS c, $4::jsonb AS d, $5::bytea AS e, $6::timestamptz AS f",
        2**40, 1.5, ["a", "b"], json.dumps({"k": 1}), b"\x00\x01", datetime.datetime(2020, 1, 2, tzinfo=datetime.timezone.utc)))
    out[-1][1] = [str(v) for v in out[-1][1].values()] if not isinstance(out[-1][1], dict) else out[-1][1]

    # LISTEN / NOTIFY.
    got = asyncio.get_running_loop().create_future()
    await conn.add_listener("da_chan", lambda c, pid, ch, payload: got.done() or got.set_result([ch, payload]))
    await other.execute("NOTIFY da_chan, 'hi'")

    async def wait_notify():
        return await asyncio.wait_for(got, 5)

    await step("notify", wait_notify)
    await conn.remove_listener("da_chan", lambda *a: None)

    await conn.execute("DROP TABLE IF EXISTS da_t, da_items; DROP TYPE IF EXISTS da_mood")
    await conn.close()
    await other.close()
    for s in out:
        if isinstance(s[1], list) and s[1] and hasattr(s[1][0], "values"):
            s[1] = plain(s[1])
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
