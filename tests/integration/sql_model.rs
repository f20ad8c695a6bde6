//! The statement model at both doors, on the real stack: policy bypasses that
//! text matching let through are denied by the example DDL guard; syntax
//! errors match Postgres's own; `/v1/sql` batches cannot commit half-way or
//! lift their timeout; shared-cluster statements are refused; session state
//! set over either protocol follows its client and never another.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::secret::ExposeSecret;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::pg_door::{MustFail, connect, show};
use crate::plugins::{post, sql};
use crate::support::{Gateway, TestTenant, config, error_code, plugin_wasm, unique};

async fn batch(gw: &Gateway, key: &str, texts: &[&str]) -> (u16, Value) {
    let statements: Vec<Value> = texts.iter().map(|t| json!({ "sql": t })).collect();
    post(gw, key, "/v1/sql", json!({ "statements": statements })).await
}

/// A superuser connection straight to `db` on the stack's Postgres.
async fn direct(db: &str) -> Client {
    let mut url = url::Url::parse(config().postgres.admin_url.expose_secret()).expect("admin url");
    url.set_path(db);
    let (c, conn) = tokio_postgres::connect(url.as_str(), NoTls).await.expect("direct connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    c
}

async fn upload_policy(gw: &Gateway, t: &TestTenant, wasm: &str, config: &str) {
    let resp = gw
        .http
        .put(gw.url("/v1/plugins/policy?activate=true"))
        .bearer_auth(&t.admin_key)
        .header("x-sluice-plugin-config", config)
        .body(plugin_wasm(wasm))
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
}

async fn tables_named(db: &Client, names: &[&str]) -> Vec<String> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    db.query("SELECT relname::text FROM pg_class WHERE relname = ANY($1) ORDER BY 1", &[&names])
        .await
        .expect("pg_class")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Every bypass the text-matching guard let through, on both doors and both
/// pg protocols: each is denied and creates nothing.
#[tokio::test]
async fn policy_bypasses_are_denied_on_both_doors() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("bypass")).await;
    let admin = direct(&t.db()).await;
    admin
        .batch_execute(&format!(
            "SET search_path TO public;
             CREATE TABLE notes (id int); CREATE TABLE secret (s text); INSERT INTO secret VALUES ('s3cr3t');
             CREATE FUNCTION mk() RETURNS void LANGUAGE plpgsql AS $$BEGIN CREATE TABLE t9 (i int); END$$;
             CREATE PROCEDURE mkp() LANGUAGE plpgsql AS $$BEGIN CREATE TABLE t10 (i int); END$$;
             ALTER TABLE notes OWNER TO \"{role}\"; ALTER TABLE secret OWNER TO \"{role}\";",
            role = t.db()
        ))
        .await
        .unwrap_or_else(|e| panic!("setup: {e:?}"));
    upload_policy(&gw, &t, "policy_ddl_guard", r#"{"allowed_tables": ["notes"]}"#).await;

    let bypasses = [
        "DO $$BEGIN EXECUTE 'CREATE TABLE t2(i int)'; END$$",
        "SELECT 1 AS x INTO t3",
        "EXPLAIN ANALYZE CREATE TABLE t5 AS SELECT 1",
        "WITH a AS (SELECT 1) SELECT * INTO t6 FROM a",
        "CREATE TABLE t7 AS SELECT 1",
        "/* comment */ CREATE TABLE t8 (i int)",
        "SELECT mk()",
        "CALL mkp()",
        "SELECT * FROM (WITH secret AS (SELECT 1) SELECT * FROM secret) x, secret",
        "SELECT (SELECT s FROM secret)",
        "SELECT * FROM notes WHERE id IN (SELECT length(s) FROM public.secret)",
        "COPY (SELECT * FROM secret) TO STDOUT",
    ];
    let made = ["t2", "t3", "t5", "t6", "t7", "t8", "t9", "t10"];
    let pg = connect(&gw, &t).await;
    for text in bypasses {
        let (s, b) = sql(&gw, &t.service_key, text).await;
        assert_eq!(s, 403, "/v1/sql {text}: {b}");
        assert_eq!(error_code(&b), "plugin_error", "{text}: {b}");
        let e = pg.simple_query(text).await.err().unwrap_or_else(|| panic!("pg simple {text}: allowed"));
        assert_eq!(e.code().map(|c| c.code()), Some("42501"), "pg simple {text}: {e:?}");
        if !text.starts_with("COPY") {
            let e = pg.execute(text, &[]).await.err().unwrap_or_else(|| panic!("pg extended {text}: allowed"));
            assert_eq!(e.code().map(|c| c.code()), Some("42501"), "pg extended {text}: {e:?}");
        }
    }
    // A multi-statement Query is judged statement by statement: nothing runs.
    let e = pg.simple_query("SELECT 1; CREATE TABLE t2 (i int)").await.must_fail("multi denied");
    assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e:?}");
    // COPY … TO STDOUT of a table outside the allowlist.
    let e = pg.copy_out("COPY secret TO STDOUT").await.must_fail("copy denied");
    assert!(db_error(&e).1.contains("not in the allowlist"), "{e:?}");
    assert_eq!(tables_named(&admin, &made).await, Vec::<String>::new(), "nothing was created");

    // Allowed work still works on both doors, and the session stays usable.
    let (s, b) = sql(&gw, &t.service_key, "INSERT INTO notes VALUES (1)").await;
    assert_eq!(s, 200, "{b}");
    let n: i64 = pg.query_one("SELECT count(*) FROM notes", &[]).await.expect("count").get(0);
    assert_eq!(n, 1);
}

/// The example guard's opaque-code rule can be lifted by config, and the plugin
/// test endpoint shows the statement model the policy received.
#[tokio::test]
async fn policy_sees_the_statement_model() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("model")).await;
    upload_policy(&gw, &t, "policy_ddl_guard", r#"{"allow_opaque": true}"#).await;
    let (s, b) = sql(&gw, &t.service_key, "DO $$BEGIN PERFORM 1; END$$").await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = post(
        &gw,
        &t.admin_key,
        "/v1/plugins/policy/test",
        json!({ "input": { "operation": "sql", "sql": "SELECT 1; SELECT * INTO t3 FROM notes" } }),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["output"]["decision"], "deny", "{b}");
    let st = &b["output"]["statements"];
    assert_eq!(st.as_array().map(Vec::len), Some(2), "{b}");
    assert_eq!(st[1]["kind"], "select");
    assert_eq!(st[1]["ddl"]["action"], "create");
    assert_eq!(st[1]["writes"], true);
    assert_eq!(st[1]["relations"][0]["name"], "t3");
    assert_eq!(st[1]["relations"][0]["access"], "write");
    assert_eq!(st[1]["relations"][1]["name"], "notes");
    // A syntax error is reported as Postgres would.
    let (s, b) = post(
        &gw,
        &t.admin_key,
        "/v1/plugins/policy/test",
        json!({ "input": { "operation": "sql", "sql": "SELEC 1" } }),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["sqlstate"], "42601", "{b}");
}

/// A component built against sluice:plugin@0.1.0 keeps loading and deciding
/// on the SQL text.
#[tokio::test]
async fn policy_built_for_0_1_0_still_runs() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("legacy")).await;
    upload_policy(&gw, &t, "policy_v0_1", "{}").await;
    let (s, b) = sql(&gw, &t.service_key, "SELECT 'legacy_forbidden'").await;
    assert_eq!((s, error_code(&b)), (403, "plugin_error"), "{b}");
    assert!(b["error"]["message"].as_str().unwrap_or("").contains("legacy policy says no"), "{b}");
    assert_eq!(sql(&gw, &t.service_key, "SELECT 1").await.0, 200);
    let pg = connect(&gw, &t).await;
    assert!(pg.simple_query("SELECT 'legacy_forbidden'").await.is_err());
    assert!(pg.simple_query("SELECT 2").await.is_ok());
}

/// A component built against sluice:plugin@0.2.0 (no `origin`) keeps loading
/// and gets the statement model.
#[tokio::test]
async fn policy_built_for_0_2_0_still_runs() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("legacy2")).await;
    upload_policy(&gw, &t, "policy_v0_2", "{}").await;
    let (s, b) = sql(&gw, &t.service_key, "CREATE TABLE nope (a int)").await;
    assert_eq!((s, error_code(&b)), (403, "plugin_error"), "{b}");
    assert!(b["error"]["message"].as_str().unwrap_or("").contains("0.2.0 policy says no to"), "{b}");
    assert_eq!(sql(&gw, &t.service_key, "SELECT 1").await.0, 200);
    let pg = connect(&gw, &t).await;
    assert!(pg.simple_query("CREATE TABLE nope (a int)").await.is_err());
    assert!(pg.simple_query("SELECT 2").await.is_ok());
}

fn db_error(e: &tokio_postgres::Error) -> (String, String, Option<u32>) {
    let db = e.as_db_error().unwrap_or_else(|| panic!("not a server error: {e:?}"));
    let pos = match db.position() {
        Some(tokio_postgres::error::ErrorPosition::Original(p)) => Some(*p),
        _ => None,
    };
    (db.code().code().to_owned(), db.message().to_owned(), pos)
}

/// The gateway's parser reports syntax errors exactly as Postgres does (code,
/// message, position), on both pg protocols and over HTTP, before anything
/// reaches the upstream.
#[tokio::test]
async fn syntax_errors_match_postgres() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("syntax")).await;
    let pg = connect(&gw, &t).await;
    let direct = direct(&t.db()).await;
    for text in [
        "SELEC 1",
        "SELECT (",
        "select 1 from from",
        "SELECT 1; SELECT from from; SELECT 2",
        "SELECT 'é', 'abc",
        "CREATE TABLE (id int)",
        "SELECT * FROM t WHERE",
        "INSERT INTO t VALUES (1,, 2)",
        "SELECT $$unterminated",
        "SELECT 1 2",
        "UPDATE t SET",
        "SELECT \"unterminated",
    ] {
        let want = db_error(&direct.simple_query(text).await.must_fail("direct fails"));
        assert_eq!(want.0, "42601", "{text}: {want:?}");
        let got = db_error(&pg.simple_query(text).await.must_fail("door fails"));
        assert_eq!(got, want, "simple query {text}");
        if !text.contains(';') {
            let got = db_error(&pg.prepare(text).await.must_fail("door fails"));
            assert_eq!(got, want, "Parse {text}");
            let (s, b) = sql(&gw, &t.service_key, text).await;
            assert_eq!(s, 400, "{text}: {b}");
            let d = &b["error"];
            assert_eq!((d["sqlstate"].as_str(), d["position"].as_u64()), (Some("42601"), want.2.map(u64::from)));
            assert_eq!(b["error"]["message"].as_str().map(|m| m.contains(&want.1)), Some(true), "{b}");
        }
    }
    // The session is still usable.
    assert!(pg.simple_query("SELECT 1").await.is_ok());
}

/// `/v1/sql` batches run in one transaction the gateway owns: transaction
/// control and timeout changes are refused before anything runs, and the
/// gateway's own deadline ends a request whose code lifted the timeout.
#[tokio::test]
async fn http_batches_are_atomic_and_bounded() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("atomic")).await;
    assert_eq!(sql(&gw, &t.service_key, "CREATE TABLE t (i int)").await.0, 200);

    let (s, b) =
        batch(&gw, &t.service_key, &["INSERT INTO t VALUES (1)", "COMMIT", "INSERT INTO t VALUES (2)", "SELECT 1/0"])
            .await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["error"]["rule"], "http.transaction-control", "{b}");
    assert_eq!(b["error"]["statement"], 1, "{b}");
    let (_, b) = sql(&gw, &t.service_key, "SELECT count(*)::int AS n FROM t").await;
    assert_eq!(b["rows"][0][0], 0, "nothing committed: {b}");

    // A failing batch leaves nothing behind.
    let (s, _) =
        batch(&gw, &t.service_key, &["INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)", "SELECT 1/0"]).await;
    assert_eq!(s, 400);
    let (_, b) = sql(&gw, &t.service_key, "SELECT count(*)::int AS n FROM t").await;
    assert_eq!(b["rows"][0][0], 0, "{b}");
    // Savepoints are fine.
    let (s, b) = batch(
        &gw,
        &t.service_key,
        &["INSERT INTO t VALUES (1)", "SAVEPOINT a", "INSERT INTO t VALUES (2)", "ROLLBACK TO SAVEPOINT a"],
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (_, b) = sql(&gw, &t.service_key, "SELECT count(*)::int AS n FROM t").await;
    assert_eq!(b["rows"][0][0], 1, "{b}");

    for text in [
        "COMMIT",
        "SET statement_timeout = 0",
        "SET LOCAL statement_timeout = 0",
        "SELECT set_config('statement_timeout', '0', true)",
        "RESET ALL",
        "SET LOCAL work_mem = '4GB'",
    ] {
        let (s, b) = batch(&gw, &t.service_key, &[text, "SELECT pg_sleep(35)"]).await;
        assert_eq!(s, 403, "{text}: {b}");
        assert!(b["error"]["rule"].as_str().is_some_and(|r| r.starts_with("http.")), "{b}");
    }
    assert_eq!(sql(&gw, &t.service_key, "SET LOCAL statement_timeout = '5s'").await.0, 200);

    // Opaque code can still lift the server-side timeout; the gateway's clock
    // ends the request anyway, and the connection is not reused.
    gw.set_quota(&t.name, "statement_timeout_ms", 1_000).await;
    let (s, b) = sql(
        &gw,
        &t.service_key,
        "CREATE FUNCTION lift() RETURNS void LANGUAGE plpgsql AS $$BEGIN PERFORM set_config('statement_timeout', '0', true); END$$",
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let started = Instant::now();
    let (s, b) = batch(&gw, &t.service_key, &["SELECT lift()", "SELECT pg_sleep(20)"]).await;
    let took = started.elapsed();
    assert_eq!((s, error_code(&b)), (504, "statement_timeout"), "{b}");
    assert!(took < Duration::from_secs(6), "ended by the gateway after {took:?}");
    assert_eq!(sql(&gw, &t.service_key, "SELECT 1").await.0, 200, "the tenant's pool still serves");
}

/// Statements no tenant may run on a shared cluster, refused on both doors
/// with the rule's name; the role's password is unchanged.
#[tokio::test]
async fn shared_cluster_statements_are_refused() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("shared")).await;
    let pg = connect(&gw, &t).await;
    let admin = direct("postgres").await;
    let before: Option<String> =
        admin.query_one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &[&t.db()]).await.expect("role").get(0);
    for text in [
        "ALTER ROLE current_user PASSWORD 'x'",
        "ALTER USER current_user CONNECTION LIMIT 1000",
        "ALTER ROLE current_user SET statement_timeout = 0",
        &format!("ALTER DATABASE {} CONNECTION LIMIT 1000", t.db()),
        &format!("ALTER DATABASE {} IS_TEMPLATE true", t.db()),
        "ALTER SYSTEM SET work_mem = '1GB'",
        "COPY (SELECT 1) TO '/tmp/x'",
        "SET standard_conforming_strings = off",
    ] {
        let (s, b) = sql(&gw, &t.service_key, text).await;
        assert_eq!((s, error_code(&b)), (403, "forbidden"), "{text}: {b}");
        let rule = b["error"]["rule"].as_str().unwrap_or_default().to_owned();
        assert!(rule.starts_with("shared-cluster."), "{text}: {b}");
        let e = pg.simple_query(text).await.err().unwrap_or_else(|| panic!("pg door allowed {text}"));
        let (code, message, _) = db_error(&e);
        assert_eq!(code, "42501", "{text}");
        assert!(message.contains(&rule), "{text}: {message}");
    }
    let after: Option<String> =
        admin.query_one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &[&t.db()]).await.expect("role").get(0);
    assert_eq!(before, after, "the role's password is unchanged");
}

async fn simple_value(c: &Client, text: &str) -> String {
    let msgs = c.simple_query(text).await.unwrap_or_else(|e| panic!("{text}: {e:?}"));
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default()
}

/// SET over the extended protocol and `set_config(…, false)` follow their
/// client across pooled connections and never reach another client; a
/// session advisory lock pins its client and is released when it leaves.
#[tokio::test]
async fn session_state_from_the_model_follows_its_client() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("sess")).await;
    gw.set_quota(&t.name, "pg_pool_size", 2).await;
    let a = connect(&gw, &t).await;
    let b = connect(&gw, &t).await;
    let default_path = show(&b, "search_path").await;

    // Extended protocol (tokio-postgres `execute` = Parse/Bind/Execute).
    a.execute("SET search_path TO a_schema, public", &[]).await.expect("set over extended");
    a.query_one("SELECT set_config('app.user', '42', false)", &[]).await.expect("set_config");
    for _ in 0..10 {
        assert_eq!(show(&b, "search_path").await, default_path, "no leak to another client");
        assert_eq!(show(&b, "app.user").await.unwrap_or_default(), "", "no leak to another client");
        assert_eq!(show(&a, "search_path").await.as_deref(), Some("a_schema, public"), "kept across the pool");
        assert_eq!(show(&a, "app.user").await.as_deref(), Some("42"));
    }

    // A session-level advisory lock pins its holder; the other client sees it held.
    assert_eq!(simple_value(&a, "SELECT pg_advisory_lock(4242)::text").await, "");
    assert_eq!(simple_value(&b, "SELECT pg_try_advisory_lock(4242)::text").await, "false");
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if simple_value(&b, "SELECT pg_try_advisory_lock(4242)::text").await == "true" {
            break;
        }
        assert!(Instant::now() < deadline, "the lock was released when its client left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(simple_value(&b, "SELECT pg_advisory_unlock(4242)::text").await, "true");
}

/// The built-in function list the model trusts is the server's own.
#[tokio::test]
async fn builtin_functions_match_the_server() {
    let admin = direct("postgres").await;
    let rows = admin
        .query("SELECT DISTINCT proname::text FROM pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace", &[])
        .await
        .expect("pg_proc");
    let server: std::collections::BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
    let ours: std::collections::BTreeSet<String> = sluice::sql::builtins::all().map(str::to_owned).collect();
    assert_eq!(ours, server, "regenerate gateway/src/sql/builtin_functions.txt from pg_proc");
}

/// In a client encoding whose characters can contain `\`, the server would
/// read a text differently from the gateway's UTF-8 parse: such encodings are
/// refused at startup and in SET, and opaque code that switches to one ends
/// the session (pg door) or the request (HTTP) before another text is sent.
#[tokio::test]
async fn unsafe_client_encodings_are_refused() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("enc")).await;
    let pg = connect(&gw, &t).await;
    let e = pg.simple_query("SET client_encoding = 'SJIS'").await.must_fail("SET refused");
    assert_eq!(db_error(&e).0, "42501", "{e:?}");
    assert!(pg.simple_query("SELECT 1").await.is_ok(), "a refusal keeps the session");

    let e = pg
        .simple_query("DO $$BEGIN PERFORM set_config('client_encoding', 'SJIS', false); END$$")
        .await
        .must_fail("opaque switch ends the session");
    assert_eq!(db_error(&e).0, "0A000", "{e:?}");
    assert!(pg.simple_query("SELECT 1").await.is_err(), "the session is over");

    let (s, b) = batch(
        &gw,
        &t.service_key,
        &["DO $$BEGIN PERFORM set_config('client_encoding', 'SJIS', true); END$$", "SELECT 1"],
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert!(b["error"]["message"].as_str().unwrap_or("").contains("client_encoding"), "{b}");
    assert_eq!(sql(&gw, &t.service_key, "SELECT 1").await.0, 200);

    // psql asking for SJIS at startup (async: the gateway runs on this thread).
    if let Ok(bin) = std::env::var("SLUICE_PG_BIN") {
        let out = tokio::process::Command::new(format!("{bin}/psql"))
            .arg(gw.pg_url(&t.name, &t.service_key, &t.db()))
            .args(["-Atc", "SELECT 1"])
            .env("PGCLIENTENCODING", "SJIS")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("psql runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("client_encoding"), "psql: {err}");
    }
}
