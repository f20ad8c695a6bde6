//! Read replicas (`postgres.replicas`) against the stack's real streaming
//! standby (`scripts/stack up --replica`, 127.0.0.1:54321): where reads and
//! writes go, as the servers themselves report (`inet_server_port()`,
//! `pg_stat_activity`), read-your-writes, the lag ban, and a replica stopped
//! under load.
//!
//! Tests that pause or stop the replica hold [`REPLICA`] for writing, the
//! others for reading, so a test that expects a fit replica finds one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::secret::SecretString;
use tokio_postgres::NoTls;

use crate::support::{Gateway, TestTenant, call, config, missing, repo_root, unique};

static REPLICA: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

const PRIMARY_PORT: i32 = 54320;
const REPLICA_PORT: i32 = 54321;

/// The replica's superuser URL, or None (skip) when the stack has none.
fn replica_url() -> Option<String> {
    match std::env::var("SLUICE_TEST_PG_REPLICA_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            missing("a Postgres read replica (scripts/stack up --replica)");
            None
        }
    }
}

/// A gateway reading from the replica, with a short read-your-writes window.
/// Tests of routing allow a generous lag, so a replica the shared stack's
/// other tests keep busy still serves them; they wait for replay
/// ([`caught_up`]) before they read what they wrote.
async fn gateway(url: &str) -> Gateway {
    gateway_with_lag(url, 60_000).await
}

async fn gateway_with_lag(url: &str, max_lag_ms: u64) -> Gateway {
    let mut cfg = config();
    cfg.postgres.replicas = vec![SecretString::from(url.to_owned())];
    cfg.postgres.replica_routing.max_lag_ms = max_lag_ms;
    cfg.postgres.replica_routing.check_interval_ms = 100;
    cfg.postgres.replica_routing.read_your_writes_ms = 1_000;
    let gw = Gateway::start_with(cfg).await;
    wait_health(&gw, "fit", Duration::from_secs(30)).await;
    gw
}

async fn replica_health(gw: &Gateway) -> Value {
    let r = gw.http.get(gw.url("/readyz")).send().await.expect("readyz");
    let body: Value = r.json().await.expect("json");
    body["replicas"][0].clone()
}

async fn wait_health(gw: &Gateway, want: &str, within: Duration) {
    let started = Instant::now();
    loop {
        let h = replica_health(gw).await;
        if h["health"] == want {
            return;
        }
        assert!(started.elapsed() < within, "replica not {want} within {within:?}: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn superuser(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect as superuser");
    tokio::spawn(conn);
    c
}

/// Wait until the replica has replayed every commit the primary has made so
/// far (see [`flush_primary`]).
async fn caught_up(gw: &Gateway, replica: &tokio_postgres::Client) {
    let lsn = flush_primary(gw).await;
    let started = Instant::now();
    loop {
        let done: bool = replica
            .query_one("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", &[&lsn])
            .await
            .expect("replay lsn")
            .get(0);
        if done {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "replica did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The primary's written WAL position once every commit made so far is in
/// it. The stack runs with `synchronous_commit = off`, so a commit its client
/// has seen may still sit in WAL buffers: a synchronous commit that wrote WAL
/// (a temporary table's catalog rows; one that only took an xid commits
/// asynchronously anyway) flushes everything before it first.
async fn flush_primary(gw: &Gateway) -> String {
    let primary = gw.svc.pg_admin.connect(None).await.expect("admin");
    primary
        .batch_execute(
            "BEGIN; SET LOCAL synchronous_commit = on; CREATE TEMP TABLE sluice_flush () ON COMMIT DROP; COMMIT",
        )
        .await
        .expect("flush the primary's WAL");
    primary.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.expect("lsn").get(0)
}

async fn door(gw: &Gateway, t: &TestTenant, key: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(&gw.pg_url(&t.name, key, &t.name), NoTls).await.expect("door login");
    tokio::spawn(conn);
    c
}

/// The port of the server that answered a simple query (its first column).
async fn simple_port(c: &tokio_postgres::Client, sql: &str) -> i32 {
    let msgs = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    msgs.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().expect("port")),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

async fn http_port(gw: &Gateway, key: &str, sql: &str) -> i32 {
    let r =
        gw.http.post(gw.url("/v1/sql")).bearer_auth(key).json(&json!({ "sql": sql })).send().await.expect("request");
    let status = r.status();
    let body: Value = r.json().await.expect("json");
    assert_eq!(status, 200, "{sql}: {body}");
    i32::try_from(body["rows"][0][0].as_i64().expect("port")).expect("i32")
}

/// `/v1/sql` with the tenant's admin key (the tests read with the service
/// key, which read-your-writes would otherwise hold to the primary).
async fn admin_sql(gw: &Gateway, t: &TestTenant, body: Value) -> (u16, Value) {
    let r = gw.http.post(gw.url("/v1/sql")).bearer_auth(&t.admin_key).json(&body).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A tenant with table `t` (written with the admin key), replayed on the replica.
async fn tenant_with_rows(gw: &Gateway, replica: &tokio_postgres::Client) -> TestTenant {
    let t = gw.create_tenant(&unique("rep")).await;
    let (s, b) = admin_sql(
        gw,
        &t,
        json!({ "statements": [
            { "sql": "CREATE TABLE t (id int PRIMARY KEY, v text)" },
            { "sql": "INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 100) g" },
        ]}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    caught_up(gw, replica).await;
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_the_replica_and_writes_to_the_primary() {
    let Some(url) = replica_url() else { return };
    let _shared = REPLICA.read().await;
    let gw = gateway(&url).await;
    let replica = superuser(&url).await;
    let t = tenant_with_rows(&gw, &replica).await;
    // The service key has not written: its reads may use the replica.
    let mut c = door(&gw, &t, &t.service_key).await;

    // Simple protocol: autocommit reads, and a read-only transaction.
    assert_eq!(simple_port(&c, "SELECT inet_server_port() FROM t LIMIT 1").await, REPLICA_PORT);
    assert_eq!(simple_port(&c, "SHOW port").await, REPLICA_PORT);
    c.simple_query("BEGIN READ ONLY").await.expect("begin read only");
    assert_eq!(simple_port(&c, "SELECT inet_server_port()").await, REPLICA_PORT);
    let e = c.simple_query("INSERT INTO t VALUES (500, 'no')").await.expect_err("read-only transaction");
    assert_eq!(e.code().map(|c| c.code()), Some("25006"), "{e}");
    c.simple_query("ROLLBACK").await.expect("rollback");
    // Extended protocol (tokio-postgres prepares, then binds): the same.
    let row = c.query_one("SELECT inet_server_port(), count(*) FROM t WHERE id <= $1", &[&50i32]).await.expect("read");
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i64>(1)), (REPLICA_PORT, 50));
    let tx = c.build_transaction().read_only(true).start().await.expect("read-only tx");
    let row = tx.query_one("SELECT inet_server_port()", &[]).await.expect("in tx");
    assert_eq!(row.get::<_, i32>(0), REPLICA_PORT);
    tx.commit().await.expect("commit");
    // HTTP.
    assert_eq!(http_port(&gw, &t.service_key, "SELECT inet_server_port()").await, REPLICA_PORT);
    // The replica's own view: the tenant's role is connected there.
    let db = gw.direct_pg(&t).await.db;
    let on_replica: i64 = replica
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", &[&db])
        .await
        .expect("pg_stat_activity")
        .get(0);
    assert!(on_replica > 0, "the door's pooled connections show on the replica");

    // Anything that is not a pure read goes to the primary: a plain
    // transaction, a write, a locking read, a sequence.
    let other = door(&gw, &t, &t.admin_key).await;
    other.simple_query("BEGIN").await.expect("begin");
    assert_eq!(simple_port(&other, "SELECT inet_server_port()").await, PRIMARY_PORT);
    other.simple_query("COMMIT").await.expect("commit");
    assert_eq!(simple_port(&other, "SELECT inet_server_port() FROM t WHERE id = 1 FOR UPDATE").await, PRIMARY_PORT);
    let row = other
        .query_one("INSERT INTO t VALUES ($1, 'x') RETURNING inet_server_port()", &[&1000i32])
        .await
        .expect("write");
    assert_eq!(row.get::<_, i32>(0), PRIMARY_PORT);
    let (s, b) = call(
        &gw,
        &t,
        "POST",
        "/v1/sql",
        Some(json!({ "sql": "UPDATE t SET v = 'y' WHERE id = 1 RETURNING inet_server_port()" })),
    )
    .await;
    assert_eq!((s, b["rows"][0][0].as_i64()), (200, Some(i64::from(PRIMARY_PORT))), "{b}");
    // A serializable batch cannot run on a standby: the primary serves it.
    let r = gw
        .http
        .post(gw.url("/v1/sql"))
        .bearer_auth(&t.service_key)
        .json(&json!({ "statements": [{ "sql": "SELECT inet_server_port()" }], "isolation": "serializable" }))
        .send()
        .await
        .expect("request");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["results"][0]["rows"][0][0].as_i64(), Some(i64::from(PRIMARY_PORT)), "{body}");

    let metrics = gw.metrics_text().await;
    for needle in [
        r#"sluice_pg_routed_total{door="pg",node="replica-1",kind="read"}"#,
        r#"sluice_pg_routed_total{door="http",node="replica-1",kind="read"}"#,
        r#"sluice_pg_routed_total{door="pg",node="primary",kind="write"}"#,
        r#"sluice_pg_replica_lag_seconds{node="replica-1"}"#,
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle}");
    }
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_its_own_writes() {
    let Some(url) = replica_url() else { return };
    let _shared = REPLICA.read().await;
    let gw = gateway(&url).await;
    let replica = superuser(&url).await;
    let t = tenant_with_rows(&gw, &replica).await;
    let c = door(&gw, &t, &t.service_key).await;
    assert_eq!(simple_port(&c, "SELECT inet_server_port()").await, REPLICA_PORT);
    // A write on the door, then at once a read over HTTP with the same key:
    // the primary serves it, so the new row is there.
    c.simple_query("INSERT INTO t VALUES (777, 'mine')").await.expect("write");
    let r = gw
        .http
        .post(gw.url("/v1/sql"))
        .bearer_auth(&t.service_key)
        .json(&json!({ "sql": "SELECT v, inet_server_port() FROM t WHERE id = 777" }))
        .send()
        .await
        .expect("read");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["rows"], json!([["mine", PRIMARY_PORT]]), "{body}");
    assert_eq!(simple_port(&c, "SELECT inet_server_port()").await, PRIMARY_PORT);
    // Once the window (1 s here) has passed, reads go back to the replica.
    caught_up(&gw, &replica).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(simple_port(&c, "SELECT inet_server_port() FROM t WHERE id = 777").await, REPLICA_PORT);
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_its_own_writes_through_another_instance() {
    let Some(url) = replica_url() else { return };
    let _shared = REPLICA.read().await;
    let (a, b) = (gateway(&url).await, gateway(&url).await);
    let replica = superuser(&url).await;
    let t = tenant_with_rows(&a, &replica).await;
    let read = |gw: &Gateway| {
        let r = gw
            .http
            .post(gw.url("/v1/sql"))
            .bearer_auth(&t.service_key)
            .json(&json!({ "sql": "SELECT coalesce(max(v), 'none'), inet_server_port() FROM t WHERE id = 888" }))
            .send();
        async move { r.await.expect("read").json::<Value>().await.expect("json")["rows"].clone() }
    };
    assert_eq!(read(&b).await, json!([["none", REPLICA_PORT]]), "reads go to the replica");
    // A write through instance A, then at once a read through instance B:
    // B sees A's mark in Redis and reads the primary.
    let w = a
        .http
        .post(a.url("/v1/sql"))
        .bearer_auth(&t.service_key)
        .json(&json!({ "sql": "INSERT INTO t VALUES (888, 'mine')" }))
        .send()
        .await
        .expect("write");
    assert_eq!(w.status(), 200);
    assert_eq!(read(&b).await, json!([["mine", PRIMARY_PORT]]));
    // After the window (1 s here), B reads the replica again.
    caught_up(&a, &replica).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(read(&b).await, json!([["mine", REPLICA_PORT]]));
    a.delete_tenant(&t.name).await;
    a.stop().await;
    b.stop().await;
}

/// Resumes replay when dropped (also when the test fails).
struct ResumeReplay(String);

impl Drop for ResumeReplay {
    fn drop(&mut self) {
        let psql = std::env::var("SLUICE_PG_BIN").map(|b| format!("{b}/psql")).unwrap_or_else(|_| "psql".into());
        let _ = std::process::Command::new(psql).args([&self.0, "-c", "SELECT pg_wal_replay_resume()"]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_is_banned_until_it_catches_up() {
    let Some(url) = replica_url() else { return };
    let _serial = REPLICA.write().await;
    const MAX_LAG_MS: u64 = 2_000;
    let gw = gateway_with_lag(&url, MAX_LAG_MS).await;
    let replica = superuser(&url).await;
    let t = tenant_with_rows(&gw, &replica).await;
    let c = door(&gw, &t, &t.service_key).await;
    wait_health(&gw, "fit", Duration::from_secs(30)).await;
    assert_eq!(simple_port(&c, "SELECT inet_server_port()").await, REPLICA_PORT);

    replica.execute("SELECT pg_wal_replay_pause()", &[]).await.expect("pause replay");
    let _resume = ResumeReplay(url.clone());
    // The primary moves on (another key writes, so the service key's reads
    // are not held to the primary by read-your-writes). Once the commit is
    // written and older than the bound, every check finds the replica late
    // (it cannot replay past the pause).
    let (s, b) = admin_sql(&gw, &t, json!({ "sql": "CREATE TABLE later (id int)" })).await;
    assert_eq!(s, 200, "{b}");
    flush_primary(&gw).await;
    tokio::time::sleep(Duration::from_millis(MAX_LAG_MS + 500)).await;
    wait_health(&gw, "lagging", Duration::from_secs(10)).await;
    // Reads now go to the primary, which has the new table.
    assert_eq!(simple_port(&c, "SELECT inet_server_port() FROM (SELECT count(*) FROM later) c").await, PRIMARY_PORT);
    assert_eq!(
        http_port(&gw, &t.service_key, "SELECT inet_server_port() FROM (SELECT count(*) FROM later) c").await,
        PRIMARY_PORT
    );
    let h = replica_health(&gw).await;
    assert!(h["lag_ms"].as_u64().unwrap_or(0) > MAX_LAG_MS, "{h}");
    assert!(
        gw.metrics_text().await.contains(r#"sluice_pg_replica_bans_total{node="replica-1",reason="lagging"}"#),
        "the ban is counted"
    );

    replica.execute("SELECT pg_wal_replay_resume()", &[]).await.expect("resume replay");
    wait_health(&gw, "fit", Duration::from_secs(30)).await;
    assert_eq!(simple_port(&c, "SELECT inet_server_port() FROM (SELECT count(*) FROM later) c").await, REPLICA_PORT);
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// A new instance does not know how long a replica has been behind: one that
/// has not replayed what the primary had written when the instance started
/// serves no reads, however generous the lag bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_reads_no_replica_behind_it() {
    let Some(url) = replica_url() else { return };
    let _serial = REPLICA.write().await;
    let first = gateway(&url).await;
    let replica = superuser(&url).await;
    let t = tenant_with_rows(&first, &replica).await;

    replica.execute("SELECT pg_wal_replay_pause()", &[]).await.expect("pause replay");
    let _resume = ResumeReplay(url.clone());
    let (s, b) = admin_sql(&first, &t, json!({ "sql": "CREATE TABLE later (id int)" })).await;
    assert_eq!(s, 200, "{b}");
    flush_primary(&first).await;

    let mut cfg = config();
    cfg.postgres.replicas = vec![SecretString::from(url.clone())];
    cfg.postgres.replica_routing.max_lag_ms = 60_000;
    cfg.postgres.replica_routing.check_interval_ms = 100;
    let gw = Gateway::start_with(cfg).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let h = replica_health(&gw).await;
    assert_eq!(h["health"], "unknown", "{h}");
    let c = door(&gw, &t, &t.service_key).await;
    assert_eq!(simple_port(&c, "SELECT inet_server_port() FROM (SELECT count(*) FROM later) c").await, PRIMARY_PORT);

    replica.execute("SELECT pg_wal_replay_resume()", &[]).await.expect("resume replay");
    wait_health(&gw, "fit", Duration::from_secs(30)).await;
    assert_eq!(simple_port(&c, "SELECT inet_server_port() FROM (SELECT count(*) FROM later) c").await, REPLICA_PORT);
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
    first.stop().await;
}

fn pg_error(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map_or_else(|| e.to_string(), |d| format!("{} {}", d.code().code(), d.message()))
}

/// Starts the replica again when dropped (also when the test fails).
struct StartReplica;

impl Drop for StartReplica {
    fn drop(&mut self) {
        let _ = std::process::Command::new(repo_root().join("scripts/stack")).arg("replica-start").output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_under_load_costs_no_client_errors() {
    let Some(url) = replica_url() else { return };
    let _serial = REPLICA.write().await;
    let gw = Arc::new(gateway(&url).await);
    let replica = superuser(&url).await;
    let t = tenant_with_rows(&gw, &replica).await;
    drop(replica);
    for (column, value) in
        [("query_rps", 100_000), ("query_burst", 100_000), ("http_rps", 100_000), ("http_burst", 100_000)]
    {
        gw.set_quota(&t.name, column, value).await;
    }
    let t = Arc::new(t);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let on_replica = Arc::new(AtomicU64::new(0));
    let on_primary = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for kind in ["simple", "extended", "http", "simple", "extended"] {
        let (gw, t, stop) = (gw.clone(), t.clone(), stop.clone());
        let (on_replica, on_primary, errors) = (on_replica.clone(), on_primary.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let c = door(&gw, &t, &t.service_key).await;
            let mut i = 0i32;
            while !stop.load(Ordering::Relaxed) {
                i = i % 100 + 1;
                let port: Result<i32, String> = match kind {
                    "simple" => c
                        .simple_query(&format!("SELECT inet_server_port(), v FROM t WHERE id = {i}"))
                        .await
                        .map_err(|e| pg_error(&e))
                        .and_then(|m| {
                            m.iter()
                                .find_map(|m| match m {
                                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
                                    _ => None,
                                })
                                .ok_or_else(|| "no row".into())
                        }),
                    "extended" => c
                        .query_one("SELECT inet_server_port(), v FROM t WHERE id = $1", &[&i])
                        .await
                        .map(|r| r.get(0))
                        .map_err(|e| pg_error(&e)),
                    _ => {
                        let r = gw
                            .http
                            .post(gw.url("/v1/sql"))
                            .bearer_auth(&t.service_key)
                            .json(&json!({ "sql": "SELECT inet_server_port(), v FROM t WHERE id = $1", "params": [i] }))
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status() == 200 => {
                                let b: Value = r.json().await.unwrap_or(Value::Null);
                                b["rows"][0][0]
                                    .as_i64()
                                    .and_then(|p| i32::try_from(p).ok())
                                    .ok_or_else(|| b.to_string())
                            }
                            Ok(r) => Err(format!("{} {}", r.status(), r.text().await.unwrap_or_default())),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                };
                match port {
                    Ok(REPLICA_PORT) => on_replica.fetch_add(1, Ordering::Relaxed),
                    Ok(_) => on_primary.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.lock().expect("lock").push(format!("{kind}: {e}"));
                        0
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before = on_replica.load(Ordering::Relaxed);
    let _restart = StartReplica;
    let out = tokio::process::Command::new(repo_root().join("scripts/stack"))
        .arg("replica-stop")
        .output()
        .await
        .expect("scripts/stack replica-stop");
    assert!(out.status.success(), "replica-stop: {}", String::from_utf8_lossy(&out.stderr));
    let primary_at_stop = on_primary.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("load task");
    }
    let errors = errors.lock().expect("lock").clone();
    assert!(before > 50, "reads reached the replica before it stopped ({before})");
    assert!(
        on_primary.load(Ordering::Relaxed) > primary_at_stop + 50,
        "reads moved to the primary once the replica stopped"
    );
    assert!(errors.is_empty(), "{} client errors, e.g. {:?}", errors.len(), &errors[..errors.len().min(5)]);
    assert_ne!(replica_health(&gw).await["health"], "fit");

    let out = tokio::process::Command::new(repo_root().join("scripts/stack"))
        .arg("replica-start")
        .output()
        .await
        .expect("scripts/stack replica-start");
    assert!(out.status.success(), "replica-start: {}", String::from_utf8_lossy(&out.stderr));
    wait_health(&gw, "fit", Duration::from_secs(30)).await;
    gw.delete_tenant(&t.name).await;
}
