//! The Postgres-wire door with real clients: tokio-postgres, psql, pgbench and
//! psycopg 3, plus raw sockets for hostile input.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use crate::support::{Gateway, TestTenant, unique};

pub async fn connect(gw: &Gateway, t: &TestTenant) -> Client {
    try_connect(gw, &t.name, &t.service_key, &t.db()).await.unwrap_or_else(|e| panic!("connect {}: {e:?}", t.name))
}

/// Gateway logs in test output when `RUST_LOG` is set.
fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

pub async fn try_connect(gw: &Gateway, user: &str, key: &str, db: &str) -> Result<Client, tokio_postgres::Error> {
    init_logs();
    let (client, conn) = tokio_postgres::connect(&gw.pg_url(user, key, db), NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

pub async fn show(c: &Client, what: &str) -> Option<String> {
    c.query_one(&format!("SELECT current_setting('{what}', true)"), &[]).await.expect("show").get(0)
}

/// `expect_err` for results whose Ok type is not `Debug`.
pub trait MustFail<E> {
    fn must_fail(self, what: &str) -> E;
}

impl<T, E> MustFail<E> for Result<T, E> {
    fn must_fail(self, what: &str) -> E {
        match self {
            Ok(_) => panic!("{what}: expected an error"),
            Err(e) => e,
        }
    }
}

fn code(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.code()
}

#[tokio::test]
async fn scram_login_and_refusals() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("pgauth")).await;
    let other = gw.create_tenant(&unique("pgauth")).await;

    let c = connect(&gw, &t).await;
    let row = c.query_one("SELECT current_user, current_database()", &[]).await.expect("query");
    assert_eq!(row.get::<_, String>(1), t.db());
    // The plain tenant name works as a database alias; the admin key works too.
    let c2 = try_connect(&gw, &t.name, &t.admin_key, &t.name).await.expect("alias db");
    assert_eq!(c2.query_one("SELECT 1::int4", &[]).await.expect("q").get::<_, i32>(0), 1);

    // Wrong key, unknown tenant, malformed user: the same 28P01.
    let wrong = format!("{}x", &t.service_key[..t.service_key.len() - 1]);
    for (user, key) in
        [(t.name.as_str(), wrong.as_str()), ("no-such-tenant-x", t.service_key.as_str()), ("BAD NAME", "x")]
    {
        let e = try_connect(&gw, user, key, "whatever").await.must_fail("refused");
        assert_eq!(code(&e), Some(&SqlState::INVALID_PASSWORD), "{user}: {e:?}");
        let db = e.as_db_error().expect("db error");
        assert_eq!(db.message(), format!("password authentication failed for user \"{user}\""));
    }
    // Another tenant's database, or any other: refused after auth, no upstream.
    for db in [other.db(), "postgres".into(), "sluice_control".into()] {
        let e = try_connect(&gw, &t.name, &t.service_key, &db).await.must_fail("refused");
        assert_eq!(code(&e), Some(&SqlState::INVALID_CATALOG_NAME), "{db}: {e:?}");
    }
    // A revoked key stops working.
    let prefix = t.service_key.split('_').nth(1).expect("prefix").to_owned();
    let ctl = gw.svc.control.client().await.expect("control");
    ctl.execute("UPDATE api_keys SET revoked_at = now() WHERE prefix = $1", &[&prefix]).await.expect("revoke");
    let e = try_connect(&gw, &t.name, &t.service_key, &t.db()).await.must_fail("revoked");
    assert_eq!(code(&e), Some(&SqlState::INVALID_PASSWORD));
    drop((c, c2));
    gw.delete_tenant(&t.name).await;
    gw.delete_tenant(&other.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn prepared_statements_survive_pooling_with_many_clients() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("pgpool")).await;
    gw.set_quota(&t.name, "pg_pool_size", 1).await;
    let setup = connect(&gw, &t).await;
    setup.batch_execute("CREATE TABLE kv (k int4 PRIMARY KEY, v text)").await.expect("create");
    let gw = Arc::new(gw);
    let mut tasks = Vec::new();
    for i in 0..20i32 {
        let gw = gw.clone();
        let (name, key, db) = (t.name.clone(), t.service_key.clone(), t.db());
        tasks.push(tokio::spawn(async move {
            let mut c = try_connect(&gw, &name, &key, &db).await.expect("connect");
            let ins = c.prepare("INSERT INTO kv VALUES ($1, $2)").await.expect("prepare insert");
            let sel = c.prepare("SELECT v FROM kv WHERE k = $1").await.expect("prepare select");
            for j in 0..10i32 {
                let k = i * 100 + j;
                // Each statement reused in its own transaction; another client
                // runs between them on the single upstream connection.
                let tx = c.transaction().await.expect("begin");
                tx.execute(&ins, &[&k, &format!("v{k}")]).await.expect("insert");
                tx.commit().await.expect("commit");
                let row = c.query_one(&sel, &[&k]).await.expect("select");
                assert_eq!(row.get::<_, String>(0), format!("v{k}"));
                tokio::task::yield_now().await;
            }
            // Errors keep the session usable.
            let e = c.execute(&ins, &[&(i * 100), &"dup"]).await.must_fail("duplicate");
            assert_eq!(e.code(), Some(&SqlState::UNIQUE_VIOLATION));
            assert_eq!(
                c.query_one(&sel, &[&(i * 100)]).await.expect("after error").get::<_, String>(0),
                format!("v{}", i * 100)
            );
            // Re-preparing a closed statement name works (tokio-postgres closes on drop).
            drop(ins);
            let again = c.prepare("SELECT count(*) FROM kv WHERE k >= $1").await.expect("prepare");
            let _: i64 = c.query_one(&again, &[&0i32]).await.expect("count").get(0);
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    let n: i64 = setup.query_one("SELECT count(*) FROM kv", &[]).await.expect("count").get(0);
    assert_eq!(n, 200);
    // Only one upstream connection was ever used.
    let n: i64 = setup
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND usename = current_user",
            &[],
        )
        .await
        .expect("activity")
        .get(0);
    assert_eq!(n, 1);
    drop(setup);
    let gw = Arc::into_inner(gw).expect("sole owner");
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn session_settings_never_leak() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("pgset")).await;
    gw.set_quota(&t.name, "pg_pool_size", 1).await;
    let a = connect(&gw, &t).await;
    let b = connect(&gw, &t).await;
    a.batch_execute("CREATE SCHEMA s1; SET search_path TO s1, public").await.expect("set");
    a.simple_query("SET application_name = 'client-a'").await.expect("set app");
    a.simple_query("SELECT set_config('sluice.test', 'from-a', false)").await.expect("set_config");
    // The single upstream connection goes from a to b and back.
    for _ in 0..3 {
        assert_eq!(show(&b, "search_path").await.as_deref(), Some("\"$user\", public"));
        assert_eq!(show(&b, "application_name").await.as_deref(), Some(""));
        assert_ne!(show(&b, "sluice.test").await.as_deref(), Some("from-a"));
        assert_eq!(show(&a, "search_path").await.as_deref(), Some("s1, public"));
        assert_eq!(show(&a, "application_name").await.as_deref(), Some("client-a"));
    }
    // RESET is tracked too.
    a.simple_query("RESET search_path").await.expect("reset");
    assert_eq!(show(&b, "search_path").await.as_deref(), Some("\"$user\", public"));
    assert_eq!(show(&a, "search_path").await.as_deref(), Some("\"$user\", public"));
    // Startup options apply to that client only.
    let url = format!("{}?options=-c%20search_path%3Ds1", gw.pg_url(&t.name, &t.service_key, &t.db()));
    let (c, conn) = tokio_postgres::connect(&url, NoTls).await.expect("connect with options");
    tokio::spawn(conn);
    assert_eq!(show(&c, "search_path").await.as_deref(), Some("s1"));
    assert_eq!(show(&b, "search_path").await.as_deref(), Some("\"$user\", public"));
    drop((a, b, c));
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn cancel_copy_and_disconnect_mid_transaction() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("pgcopy")).await;
    gw.set_quota(&t.name, "pg_pool_size", 1).await;
    let c = connect(&gw, &t).await;

    // Cancel reaches the upstream running the query (sent once the query
    // is seen running there, so a loaded machine cannot make it early).
    let token = c.cancel_token();
    let started = Instant::now();
    let admin = gw.svc.pg_admin.connect(None).await.expect("admin");
    let db = t.db();
    let canceller = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let running: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active' AND query = 'SELECT pg_sleep(10)'",
                    &[&db],
                )
                .await
                .expect("activity")
                .get(0);
            if running > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        token.cancel_query(NoTls).await
    });
    let e = c.simple_query("SELECT pg_sleep(10)").await.must_fail("cancelled");
    assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    canceller.await.expect("task").expect("cancel sent");
    assert_eq!(c.query_one("SELECT 2::int4", &[]).await.expect("usable").get::<_, i32>(0), 2);

    // COPY FROM STDIN and TO STDOUT.
    c.batch_execute("CREATE TABLE items (id int4, name text)").await.expect("create");
    let sink = c.copy_in("COPY items FROM STDIN").await.expect("copy in");
    futures::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..1000 {
        data.push_str(&format!("{i}\titem {i}\n"));
    }
    sink.send(bytes::Bytes::from(data)).await.expect("send");
    assert_eq!(sink.finish().await.expect("finish"), 1000);
    let stream = c.copy_out("COPY (SELECT * FROM items ORDER BY id) TO STDOUT").await.expect("copy out");
    let chunks: Vec<_> = stream.collect().await;
    let out: Vec<u8> = chunks.into_iter().flat_map(|c| c.expect("chunk").to_vec()).collect();
    let text = String::from_utf8(out).expect("utf8");
    assert_eq!(text.lines().count(), 1000);
    assert!(text.starts_with("0\titem 0\n"));

    // A client that vanishes mid-transaction: rolled back, connection reused.
    let d = connect(&gw, &t).await;
    d.batch_execute("BEGIN; INSERT INTO items VALUES (-1, 'ghost'); LOCK items").await.expect("begin");
    drop(d);
    let n: i64 =
        tokio::time::timeout(Duration::from_secs(5), c.query_one("SELECT count(*) FROM items WHERE id = -1", &[]))
            .await
            .expect("not blocked by the dead client's lock")
            .expect("count")
            .get(0);
    assert_eq!(n, 0);
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn upstream_death_and_connection_cap() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("pgdie")).await;
    gw.set_quota(&t.name, "pg_max_connections", 3).await;
    let a = connect(&gw, &t).await;
    let b = connect(&gw, &t).await;
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        b.simple_query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE query LIKE 'SELECT pg_sleep(7)%' AND pid <> pg_backend_pid()",
        )
        .await
        .expect("terminate");
        b
    });
    let e = a.simple_query("SELECT pg_sleep(7)").await.must_fail("upstream died");
    // The server's own FATAL reaches the client, and its session ends, as direct.
    assert_eq!(e.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{e:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(a.is_closed(), "the session ended with its upstream");
    let a = connect(&gw, &t).await;
    assert_eq!(a.query_one("SELECT 3::int4", &[]).await.expect("a new session works").get::<_, i32>(0), 3);
    let b = killer.await.expect("killer");
    let _c = connect(&gw, &t).await;
    let e = try_connect(&gw, &t.name, &t.service_key, &t.db()).await.must_fail("over the cap");
    assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
    drop(b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _d = connect(&gw, &t).await;
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// Denies SQL containing "forbidden_word" and rate-limits "slow_down".
struct TestStage;

impl sluice::pipeline::Stage for TestStage {
    fn name(&self) -> &'static str {
        "test"
    }
    fn check<'a>(&'a self, op: &'a sluice::pipeline::Operation<'a>) -> sluice::pipeline::Check<'a> {
        use sluice::pipeline::{Action, PipelineError};
        let r = match &op.action {
            Action::Sql { text, .. } if text.contains("forbidden_word") => {
                Err(PipelineError::Denied { reason: "no forbidden words".into() })
            }
            Action::Sql { text, .. } if text.contains("slow_down") => {
                Err(PipelineError::RateLimited { class: "queries", retry_after_ms: 100, limit: 1 })
            }
            _ => Ok(()),
        };
        // A stage that waits, as a plugin or Redis would.
        sluice::pipeline::Check::Wait(Box::pin(async move { r }))
    }
}

#[tokio::test]
async fn pipeline_refusals_keep_the_connection() {
    let mut svc = sluice::services::Services::new(crate::support::config()).expect("services");
    svc.pipeline = svc.pipeline.clone().with_stage(Arc::new(TestStage));
    let gw = Gateway::start_services(svc).await;
    let t = gw.create_tenant(&unique("pgpipe")).await;
    let c = connect(&gw, &t).await;
    let e = c.simple_query("SELECT 'forbidden_word'").await.must_fail("denied");
    assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    let e = c.query("SELECT 'slow_down'::text", &[]).await.must_fail("rate limited");
    assert_eq!(e.code(), Some(&SqlState::CONFIGURATION_LIMIT_EXCEEDED));
    let e = c.prepare("SELECT $1::text || 'forbidden_word'").await.must_fail("denied parse");
    assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    // Inside a transaction too.
    c.batch_execute("BEGIN").await.expect("begin");
    assert!(c.simple_query("SELECT 'forbidden_word'").await.is_err());
    c.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(c.query_one("SELECT $1::int4", &[&5i32]).await.expect("still usable").get::<_, i32>(0), 5);
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// Startup + SCRAM over a raw socket; returns the socket after ReadyForQuery.
async fn raw_login(gw: &Gateway, t: &TestTenant) -> TcpStream {
    let mut s = TcpStream::connect(gw.pg_addr).await.expect("connect");
    let mut buf = BytesMut::new();
    let db = t.db();
    frontend::startup_message([("user", t.name.as_str()), ("database", db.as_str())], &mut buf).expect("startup");
    s.write_all(&buf).await.expect("write");
    let mut rbuf = BytesMut::new();
    let mut scram = None;
    loop {
        let msg = loop {
            if let Some(m) = backend::Message::parse(&mut rbuf).expect("parse") {
                break m;
            }
            assert!(s.read_buf(&mut rbuf).await.expect("read") > 0, "closed during login");
        };
        buf.clear();
        match msg {
            backend::Message::AuthenticationSasl(_) => {
                let sc = ScramSha256::new(t.service_key.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, sc.message(), &mut buf).expect("sasl");
                scram = Some(sc);
            }
            backend::Message::AuthenticationSaslContinue(b) => {
                let sc = scram.as_mut().expect("scram");
                sc.update(b.data()).expect("update");
                frontend::sasl_response(sc.message(), &mut buf).expect("sasl");
            }
            backend::Message::AuthenticationSaslFinal(b) => {
                scram.as_mut().expect("scram").finish(b.data()).expect("verify server")
            }
            backend::Message::ReadyForQuery(_) => return s,
            backend::Message::ErrorResponse(_) => panic!("login refused"),
            _ => {}
        }
        if !buf.is_empty() {
            s.write_all(&buf).await.expect("write");
        }
    }
}

/// Read until EOF (or 1 s); returns what came.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "the gateway closed the socket within a second (got {out:?})");
    out
}

fn is_fatal_08p01(bytes: &[u8]) -> bool {
    bytes.first() == Some(&b'E') && bytes.windows(7).any(|w| w == b"C08P01\0")
}

#[tokio::test]
async fn hostile_bytes_end_in_fatal_or_close() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("pgfuzz")).await;
    let startups: &[&[u8]] = &[
        b"\0\0\0\x02",                        // length smaller than itself
        b"\x7f\xff\xff\xff\0\x03\0\0",        // huge startup packet
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", // not Postgres at all
        b"\0\0\0\x08\0\x03\0\x01",            // unsupported minor version
        b"\0\0\0\x10\0\x03\0\0user\0abc",     // truncated parameters
    ];
    for bytes in startups {
        let mut s = TcpStream::connect(gw.pg_addr).await.expect("connect");
        s.write_all(bytes).await.expect("write");
        let out = read_to_close(&mut s).await;
        assert!(out.is_empty() || is_fatal_08p01(&out), "{bytes:?} -> {out:?}");
    }
    // After login: unknown type, huge length, bad length, bad Bind.
    let after: &[&[u8]] =
        &[b"F\0\0\0\x04", b"Q\x7f\xff\xff\xff", b"Q\0\0\0\x01", b"B\0\0\0\x0c\0\0\xff\xff\0\0\0\0", b"\0\0\0\0\0"];
    for bytes in after {
        let mut s = raw_login(&gw, &t).await;
        s.write_all(bytes).await.expect("write");
        let out = read_to_close(&mut s).await;
        assert!(is_fatal_08p01(&out), "{bytes:?} -> {out:?}");
    }
    // A message cut short by the client closing.
    let mut s = raw_login(&gw, &t).await;
    s.write_all(b"Q\0\0\0\x20select").await.expect("write");
    s.shutdown().await.expect("shutdown");
    read_to_close(&mut s).await;
    // A client that never finishes its startup packet is dropped eventually;
    // meanwhile the gateway serves everyone else.
    let mut idle = TcpStream::connect(gw.pg_addr).await.expect("connect");
    idle.write_all(b"\0\0\0\x40\0\x03").await.expect("write");
    let c = connect(&gw, &t).await;
    assert_eq!(c.query_one("SELECT 1::int4", &[]).await.expect("serves").get::<_, i32>(0), 1);
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

fn pg_bin(tool: &str) -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("SLUICE_PG_BIN")?;
    let p = std::path::PathBuf::from(dir).join(tool);
    p.exists().then_some(p)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed: {}\nstdout: {stdout}\nstderr: {stderr}", out.status);
    stdout
}

#[tokio::test]
async fn psql_scripted_session() {
    let Some(psql) = pg_bin("psql") else {
        eprintln!("SLUICE_PG_BIN not set; skipping");
        return;
    };
    init_logs();
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("pgpsql")).await;
    let url = gw.pg_url(&t.name, &t.service_key, &t.db());
    let script = r"
CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);
BEGIN;
INSERT INTO notes (body) VALUES ('one'), ('two');
COMMIT;
SET search_path TO public;
SELECT $1::int + 1 AS n \bind 41 \g
\copy notes (body) from stdin
three
four
\.
SELECT string_agg(body, ',' ORDER BY id) FROM notes;
\copy (SELECT count(*) FROM notes) to stdout
";
    let out = {
        let url = url.clone();
        let psql = psql.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = Command::new(&psql)
                .args([url.as_str(), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("psql");
            child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("script");
            let out = child.wait_with_output().expect("psql");
            assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .await
        .expect("psql task")
    };
    assert_eq!(out.lines().collect::<Vec<_>>(), ["42", "one,two,three,four", "4"], "{out}");
    // An error ends the script with ON_ERROR_STOP, not the gateway.
    let bad = tokio::task::spawn_blocking(move || {
        Command::new(&psql).args([url.as_str(), "-X", "-v", "ON_ERROR_STOP=1", "-c", "SELECT * FROM nope"]).output()
    })
    .await
    .expect("task")
    .expect("psql");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("does not exist"));
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn pgbench_all_protocols() {
    let Some(pgbench) = pg_bin("pgbench") else {
        eprintln!("SLUICE_PG_BIN not set; skipping");
        return;
    };
    init_logs();
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("pgbench")).await;
    gw.set_quota(&t.name, "pg_pool_size", 4).await;
    // pgbench runs thousands of queries per second; lift the query rate limit.
    gw.set_quota(&t.name, "query_rps", 1_000_000).await;
    gw.set_quota(&t.name, "query_burst", 1_000_000).await;
    let base = |cmd: &mut Command| {
        cmd.env("PGPASSWORD", &t.service_key).args([
            "-h",
            &gw.pg_addr.ip().to_string(),
            "-p",
            &gw.pg_addr.port().to_string(),
            "-U",
            &t.name,
        ]);
    };
    let db = t.db();
    let mut init = Command::new(&pgbench);
    base(&mut init);
    init.args(["-i", "-s", "1", "-q", &db]);
    let init_out = tokio::task::spawn_blocking(move || run(&mut init)).await.expect("init");
    drop(init_out);
    // SLUICE_PGBENCH_ONLY="prepared -N" narrows the run while debugging.
    let only = std::env::var("SLUICE_PGBENCH_ONLY").unwrap_or_default();
    for mode in ["simple", "extended", "prepared"] {
        for kind in ["-S", "-N"] {
            if !only.is_empty() && only != format!("{mode} {kind}") {
                continue;
            }
            let mut cmd = Command::new(&pgbench);
            base(&mut cmd);
            cmd.args([kind, "-M", mode, "-c", "8", "-j", "2", "-T", "2", &db]);
            let out = tokio::task::spawn_blocking(move || run(&mut cmd)).await.expect("pgbench");
            assert!(out.contains("number of failed transactions: 0"), "{mode} {kind}: {out}");
            assert!(!out.contains("number of transactions actually processed: 0/"), "{mode} {kind}: {out}");
        }
    }
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn psycopg3_client() {
    let has_psycopg = Command::new("python3").args(["-c", "import psycopg"]).output().is_ok_and(|o| o.status.success());
    if !has_psycopg {
        eprintln!("python3 with psycopg is not available; skipping (scripts/test installs it)");
        return;
    }
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("pgpsy")).await;
    gw.set_quota(&t.name, "pg_pool_size", 2).await;
    let url = gw.pg_url(&t.name, &t.service_key, &t.db());
    let script = crate::support::repo_root().join("tests/clients/psycopg_test.py");
    let out =
        tokio::task::spawn_blocking(move || run(Command::new("python3").arg(script).arg(url))).await.expect("python");
    assert!(out.contains("psycopg: all checks passed"), "{out}");
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// Send SSLRequest on a raw socket; the one-byte answer.
async fn ssl_request(gw: &Gateway) -> u8 {
    let mut s = TcpStream::connect(gw.pg_addr).await.expect("connect");
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    s.write_all(&buf).await.expect("write");
    s.read_u8().await.expect("answer")
}

#[tokio::test]
async fn tls_when_configured() {
    // Without TLS configured, SSLRequest is answered 'N' and startup goes on.
    let gw = Gateway::start().await;
    assert_eq!(ssl_request(&gw).await, b'N');
    gw.stop().await;

    let dir = std::env::temp_dir().join(unique("sluice-tls"));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    if !made.is_ok_and(|o| o.status.success()) {
        eprintln!("openssl is not available; skipping");
        return;
    }
    let mut cfg = crate::support::config();
    cfg.server.tls = Some(sluice::config::TlsConfig { cert_path: cert, key_path: key });
    let gw = Gateway::start_with(cfg).await;
    assert_eq!(ssl_request(&gw).await, b'S');
    // A real TLS handshake after SSLRequest (openssl's postgres STARTTLS).
    let addr = gw.pg_addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("openssl")
            .args(["s_client", "-starttls", "postgres", "-connect", &addr, "-brief"])
            .stdin(std::process::Stdio::null())
            .output()
    })
    .await
    .expect("task")
    .expect("openssl s_client");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("TLSv1.3") || text.contains("TLSv1.2"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
    gw.stop().await;
}

/// A key's own query limit (table `key_limits`) applies on this door as on
/// HTTP: its statements are refused with 53400 past the burst while a key
/// without an override keeps the tenant's limit.
#[tokio::test]
async fn per_key_query_limit_applies() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("pgkey")).await;
    let key_id: uuid::Uuid = t.body["service_key"]["id"].as_str().expect("key id").parse().expect("uuid");
    let ctl = gw.svc.control.client().await.expect("control");
    ctl.execute("INSERT INTO key_limits (key_id, query_rps, query_burst) VALUES ($1, 1, 3)", &[&key_id])
        .await
        .expect("insert override");
    let limited = connect(&gw, &t).await;
    let mut refused = 0;
    for _ in 0..10 {
        if let Err(e) = limited.simple_query("SELECT 1").await {
            assert_eq!(code(&e), Some(&SqlState::CONFIGURATION_LIMIT_EXCEEDED), "{e:?}");
            refused += 1;
        }
    }
    assert!(refused >= 5, "the key's limit (1/s, burst 3) refused only {refused} of 10");
    let admin = try_connect(&gw, &t.name, &t.admin_key, &t.db()).await.expect("admin login");
    for _ in 0..10 {
        admin.simple_query("SELECT 1").await.expect("the admin key has the tenant's limit");
    }
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}
