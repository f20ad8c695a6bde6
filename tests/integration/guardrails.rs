//! Tenant guardrails against the real stack: operators change quotas and key
//! limits on a running gateway, suspend and resume tenants, and storage
//! quotas (database, objects, key/value, vector points) refuse growth while
//! reads and deletes keep working, on both doors; a tenant locking its own
//! tables starves nobody else; memory settings have ceilings and tenant
//! roles carry defaults they cannot raise; results, request bodies and
//! partially read pg-door messages have memory ceilings.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use tokio_postgres::error::SqlState;

use crate::pg_door::{MustFail, connect, show, try_connect};
use crate::support::{Gateway, TestTenant, call, error_code, unique};

async fn operator(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = gw.http.request(method.parse().expect("method"), gw.url(path)).bearer_auth(gw.operator_token());
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn put_raw(gw: &Gateway, t: &TestTenant, path: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = gw.http.put(gw.url(path)).bearer_auth(&t.service_key).body(body).send().await.expect("put");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The control plane's record of a tenant.
async fn tenant_record(gw: &Gateway, name: &str) -> sluice::control::tenants::Tenant {
    let tn = sluice::ids::TenantName::parse(name).expect("name");
    sluice::control::tenants::get_by_name(&gw.svc.control.client().await.expect("control"), &tn).await.expect("tenant")
}

async fn usage_of(gw: &Gateway, t: &TestTenant, resource: &str) -> i64 {
    let (s, body) = gw.get("/v1/usage", &t.service_key).await;
    assert_eq!(s, 200, "{body}");
    body["resources"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["resource"] == resource))
        .and_then(|r| r["used"].as_i64())
        .unwrap_or_else(|| panic!("{resource} in {body}"))
}

#[tokio::test]
async fn operators_change_quotas_and_key_limits_without_restart() {
    let gw = Gateway::start().await;
    let name = unique("gq");
    let t = gw.create_tenant(&name).await;

    let (s, body) = call(&gw, &t, "POST", "/v1/sql", Some(json!({ "sql": "SELECT generate_series(1, 5) AS n" }))).await;
    assert_eq!((s, body["rows"].as_array().map(Vec::len)), (200, Some(5)), "{body}");

    let (s, body) =
        operator(&gw, "PUT", &format!("/admin/v1/tenants/{name}/quotas"), Some(json!({ "max_rows": 2 }))).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["quotas"]["max_rows"], 2);
    // The very next request has the new quota.
    let (s, body) = call(&gw, &t, "POST", "/v1/sql", Some(json!({ "sql": "SELECT generate_series(1, 5) AS n" }))).await;
    assert_ne!(body["rows"].as_array().map(Vec::len), Some(5), "max_rows 2 applied at once: {s} {body}");
    let (s, body) = operator(&gw, "GET", &format!("/admin/v1/tenants/{name}/quotas"), None).await;
    assert_eq!((s, body["quotas"]["max_rows"].as_i64()), (200, Some(2)));

    // Bad patches are refused with a reason, and change nothing.
    for (bad, needle) in [
        (json!({ "max_rows": 0 }), "positive"),
        (json!({ "pg_pool_size": 5000 }), "at most 1000"),
        (json!({}), "at least one"),
        (json!({ "max_rowz": 3 }), "max_rowz"),
    ] {
        let (s, body) = operator(&gw, "PUT", &format!("/admin/v1/tenants/{name}/quotas"), Some(bad.clone())).await;
        assert!(s == 400 || s == 422, "{bad}: {s} {body}");
        assert!(body["error"]["message"].as_str().unwrap_or("").contains(needle), "{bad}: {body}");
    }

    // A key's own limits: set, read back, remove with null.
    let prefix = t.service_key.split('_').nth(1).expect("prefix").to_owned();
    let path = format!("/admin/v1/tenants/{name}/keys/{prefix}/limits");
    let (s, body) = operator(&gw, "PUT", &path, Some(json!({ "http_rps": 7, "http_burst": 9 }))).await;
    assert_eq!((s, body["limits"]["http_rps"].as_i64()), (200, Some(7)), "{body}");
    let (_, body) = operator(&gw, "PUT", &path, Some(json!({ "http_rps": null, "http_burst": null }))).await;
    assert_eq!(body["limits"], json!({ "http_rps": null, "http_burst": null, "query_rps": null, "query_burst": null }));
    let (s, _) = operator(
        &gw,
        "PUT",
        &format!("/admin/v1/tenants/{name}/keys/zzzzzzzzzzzz/limits"),
        Some(json!({ "http_rps": 1 })),
    )
    .await;
    assert_eq!(s, 404);

    // Both changes are in the audit log.
    let (_, audit) = operator(&gw, "GET", &format!("/admin/v1/audit?tenant={name}"), None).await;
    let actions: Vec<&str> =
        audit["entries"].as_array().expect("entries").iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"tenant.quotas.set") && actions.contains(&"key.limits.set"), "{actions:?}");
    gw.delete_tenant(&name).await;
    gw.stop().await;
}

/// Quotas an operator changes reach Postgres-door sessions that are already
/// open (within the key check's period), not only the next login.
#[tokio::test]
async fn quota_changes_reach_open_pg_sessions() {
    let gw = Gateway::start().await;
    let name = unique("gqo");
    let t = gw.create_tenant(&name).await;
    let c = connect(&gw, &t).await;
    let big = "SELECT repeat('x', 1000) FROM generate_series(1, 100)";
    assert_eq!(c.query(big, &[]).await.expect("under the default cap").len(), 100);
    c.simple_query("SET statement_timeout = '20s'").await.expect("under the default quota");

    let (s, body) = operator(
        &gw,
        "PUT",
        &format!("/admin/v1/tenants/{name}/quotas"),
        Some(json!({ "max_result_bytes": 20_000, "statement_timeout_ms": 2_000 })),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    // The same session, without reconnecting: the new cap within ~2 s.
    let started = Instant::now();
    let e = loop {
        match c.query(big, &[]).await {
            Ok(_) if started.elapsed() < Duration::from_secs(6) => tokio::time::sleep(Duration::from_millis(200)).await,
            Ok(_) => panic!("the new max_result_bytes never reached the open session"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.code(), Some(&SqlState::PROGRAM_LIMIT_EXCEEDED), "{e:?}");
    assert!(e.as_db_error().is_some_and(|d| d.message().contains("20000 bytes")), "{e:?}");
    // The new statement timeout: raising past it is refused, and a statement
    // running past it is cancelled by the gateway's clock.
    let e = c.simple_query("SET statement_timeout = '10s'").await.must_fail("above the new quota");
    assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e:?}");
    let started = Instant::now();
    let e = c.simple_query("SELECT pg_sleep(15)").await.must_fail("cancelled at the new quota");
    assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(8), "cancelled near 2 s + grace: {:?}", started.elapsed());
    assert_eq!(c.query_one("SELECT 41 + 1", &[]).await.expect("usable after").get::<_, i32>(0), 42);
    gw.delete_tenant(&name).await;
    gw.stop().await;
}

#[tokio::test]
async fn suspended_tenants_are_refused_on_both_doors_and_their_sessions_end() {
    let gw = Gateway::start().await;
    let name = unique("gs");
    let t = gw.create_tenant(&name).await;
    let other = gw.create_tenant(&unique("gs")).await;
    // Our own connection task, to read the FATAL the door ends the session with.
    let (open, conn) = tokio_postgres::connect(&gw.pg_url(&t.name, &t.service_key, &t.db()), tokio_postgres::NoTls)
        .await
        .expect("connect");
    let conn_end = tokio::spawn(conn);
    open.simple_query("SELECT 1").await.expect("works before");

    let (s, body) = operator(
        &gw,
        "POST",
        &format!("/admin/v1/tenants/{name}/suspend"),
        Some(json!({ "reason": "unpaid invoice" })),
    )
    .await;
    assert_eq!((s, body["tenant"]["status"].as_str()), (200, Some("suspended")), "{body}");

    let (s, body) = gw.get("/v1/tenant", &t.service_key).await;
    assert_eq!(s, 403, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("unpaid invoice"), "{body}");
    let e = try_connect(&gw, &t.name, &t.service_key, &t.db()).await.must_fail("suspended login");
    let msg = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
    assert!(msg.contains("suspended") && msg.contains("unpaid invoice"), "{e:?}");
    // A wrong key learns nothing about the suspension.
    let e = try_connect(&gw, &t.name, "slk_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", &t.db())
        .await
        .must_fail("bad key");
    assert!(!format!("{e:?}").contains("suspended"), "{e:?}");

    // The open session ends within a few seconds, with the reason.
    let started = Instant::now();
    let ended = loop {
        match open.simple_query("SELECT 1").await {
            Err(e) => break e,
            Ok(_) if started.elapsed() > Duration::from_secs(10) => panic!("session still open after 10 s"),
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert!(started.elapsed() < Duration::from_secs(5), "ended after {:?}: {ended:?}", started.elapsed());
    let fatal = conn_end.await.expect("connection task").expect_err("ended by a FATAL");
    assert!(format!("{fatal:?}").contains("suspended"), "{fatal:?}");

    // Others are untouched; suspending again is a no-op (operators retry); resume restores.
    let (s, _) = gw.get("/v1/tenant", &other.service_key).await;
    assert_eq!(s, 200);
    let (s, body) = operator(&gw, "POST", &format!("/admin/v1/tenants/{name}/suspend"), Some(json!({}))).await;
    assert_eq!((s, body["tenant"]["suspended_reason"].as_str()), (200, Some("unpaid invoice")), "{body}");
    let (s, body) = operator(&gw, "POST", &format!("/admin/v1/tenants/{name}/resume"), Some(json!({}))).await;
    assert_eq!((s, body["tenant"]["status"].as_str()), (200, Some("active")), "{body}");
    let (s, _) = gw.get("/v1/tenant", &t.service_key).await;
    assert_eq!(s, 200);
    connect(&gw, &t).await.simple_query("SELECT 1").await.expect("works after resume");
    gw.delete_tenant(&name).await;
    gw.delete_tenant(&other.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn object_storage_quota_counts_every_write_and_refuses_growth() {
    let gw = Gateway::start().await;
    let name = unique("go");
    let t = gw.create_tenant(&name).await;
    gw.set_quota(&name, "max_storage_bytes", 1000).await;

    assert_eq!(put_raw(&gw, &t, "/v1/objects/a", vec![1; 600]).await.0, 200);
    assert_eq!(usage_of(&gw, &t, "objects").await, 600);
    let (s, body) = put_raw(&gw, &t, "/v1/objects/b", vec![2; 600]).await;
    assert_eq!((s, error_code(&body)), (403, "quota_exceeded"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("max_storage_bytes"), "{body}");
    // A chunked body (no length) that grows past the room is refused too.
    let chunks = futures::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![3u8; 100])));
    let resp = gw
        .http
        .put(gw.url("/v1/objects/c"))
        .bearer_auth(&t.service_key)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status().as_u16(), 403);
    // Overwriting with less is fine and counts the difference.
    assert_eq!(put_raw(&gw, &t, "/v1/objects/a", vec![1; 300]).await.0, 200);
    assert_eq!(usage_of(&gw, &t, "objects").await, 300);
    assert_eq!(put_raw(&gw, &t, "/v1/objects/b", vec![2; 600]).await.0, 200);
    assert_eq!(usage_of(&gw, &t, "objects").await, 900);
    // Reads and deletes keep working when full.
    let (s, _) = call(&gw, &t, "GET", "/v1/objects", None).await;
    assert_eq!(s, 200);
    let (s, _) = call(&gw, &t, "DELETE", "/v1/objects/b", None).await;
    assert_eq!(s, 204);
    assert_eq!(usage_of(&gw, &t, "objects").await, 300);
    // A recount agrees with the running count.
    let tenant = tenant_record(&gw, &name).await;
    let u = sluice::usage::meter::measure_tenant(&gw.svc, &gw.svc.usage, &tenant, true).await.expect("measure");
    assert_eq!((u.object_bytes, u.object_count), (300, 1));
    gw.delete_tenant(&name).await;
    gw.stop().await;
}

#[tokio::test]
async fn kv_bytes_quota_is_exact_under_overwrites_and_deletes() {
    let gw = Gateway::start().await;
    let name = unique("gk");
    let t = gw.create_tenant(&name).await;
    gw.set_quota(&name, "max_kv_bytes", 100).await;

    assert_eq!(put_raw(&gw, &t, "/v1/kv/a", vec![b'a'; 60]).await.0, 204);
    let (s, body) = put_raw(&gw, &t, "/v1/kv/b", vec![b'b'; 60]).await;
    assert_eq!((s, error_code(&body)), (403, "quota_exceeded"), "{body}");
    assert_eq!(put_raw(&gw, &t, "/v1/kv/a", vec![b'a'; 10]).await.0, 204, "shrinking is always allowed");
    assert_eq!(put_raw(&gw, &t, "/v1/kv/b", vec![b'b'; 60]).await.0, 204);
    assert_eq!(usage_of(&gw, &t, "kv").await, 70);
    let (s, _) = call(&gw, &t, "DELETE", "/v1/kv/b", None).await;
    assert_eq!(s, 204);
    assert_eq!(usage_of(&gw, &t, "kv").await, 10);
    // Concurrent writers cannot pass the quota together (the check is in the script).
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (http, url, key) = (gw.http.clone(), gw.url(&format!("/v1/kv/c{i}")), t.service_key.clone());
        tasks.push(tokio::spawn(async move {
            http.put(url).bearer_auth(key).body(vec![b'c'; 10]).send().await.expect("put").status().as_u16()
        }));
    }
    let mut ok = 0;
    for task in tasks {
        ok += usize::from(task.await.expect("task") == 204);
    }
    assert_eq!(ok, 9, "exactly the room left (90 bytes) was admitted");
    assert_eq!(usage_of(&gw, &t, "kv").await, 100);
    gw.delete_tenant(&name).await;
    gw.stop().await;
}

#[tokio::test]
async fn vector_point_quota_counts_inserts_not_updates() {
    let gw = Gateway::start().await;
    let name = unique("gv");
    let t = gw.create_tenant(&name).await;
    gw.set_quota(&name, "max_vector_points", 3).await;
    let (s, body) = call(&gw, &t, "PUT", "/v1/collections/docs", Some(json!({ "dimension": 2, "metric": "l2" }))).await;
    assert_eq!(s, 201, "{body}");
    let pts = |ids: &[&str]| json!({ "points": ids.iter().map(|i| json!({ "id": i, "vector": [1.0, 2.0] })).collect::<Vec<_>>() });

    assert_eq!(call(&gw, &t, "POST", "/v1/collections/docs/points", Some(pts(&["a", "b", "c"]))).await.0, 200);
    assert_eq!(usage_of(&gw, &t, "vector_points").await, 3);
    let (s, body) = call(&gw, &t, "POST", "/v1/collections/docs/points", Some(pts(&["d"]))).await;
    assert_eq!((s, error_code(&body)), (403, "quota_exceeded"), "{body}");
    let (s, _) = call(&gw, &t, "POST", "/v1/collections/docs/points/delete", Some(json!({ "ids": ["a"] }))).await;
    assert_eq!(s, 200, "deletes work when full");
    assert_eq!(call(&gw, &t, "POST", "/v1/collections/docs/points", Some(pts(&["d"]))).await.0, 200);
    assert_eq!(usage_of(&gw, &t, "vector_points").await, 3);
    let (s, _) = call(&gw, &t, "DELETE", "/v1/collections/docs", None).await;
    assert_eq!(s, 204);
    assert_eq!(usage_of(&gw, &t, "vector_points").await, 0);
    gw.delete_tenant(&name).await;
    gw.stop().await;
}

#[tokio::test]
async fn full_database_refuses_writes_on_both_doors_but_not_reads_or_deletes() {
    let gw = Gateway::start().await;
    let name = unique("gd");
    let t = gw.create_tenant(&name).await;
    let pg = connect(&gw, &t).await;
    pg.batch_execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)").await.expect("setup");

    let (s, body) =
        operator(&gw, "PUT", &format!("/admin/v1/tenants/{name}/quotas"), Some(json!({ "max_db_bytes": 1 }))).await;
    assert_eq!(s, 200, "{body}");
    let tenant = tenant_record(&gw, &name).await;
    let u = sluice::usage::meter::measure_tenant(&gw.svc, &gw.svc.usage, &tenant, false).await.expect("measure");
    assert!(u.db_bytes > 1_000_000, "measured {}", u.db_bytes);

    // HTTP: writes refused, reads and deletes fine.
    let sql = |q: &str| Some(json!({ "sql": q }));
    let (s, body) = call(&gw, &t, "POST", "/v1/sql", sql("INSERT INTO t VALUES (1)")).await;
    assert_eq!((s, error_code(&body)), (403, "quota_exceeded"), "{body}");
    assert_eq!(call(&gw, &t, "POST", "/v1/sql", sql("SELECT count(*) FROM t")).await.0, 200);
    assert_eq!(call(&gw, &t, "POST", "/v1/sql", sql("DELETE FROM t WHERE id > 90")).await.0, 200);
    // Postgres door: SQLSTATE 53100, the session stays usable.
    for q in ["INSERT INTO t VALUES (1)", "CREATE TABLE u (x int)", "UPDATE t SET id = id + 1"] {
        let e = pg.simple_query(q).await.must_fail(q);
        assert_eq!(e.code().map(|c| c.code()), Some("53100"), "{q}: {e:?}");
    }
    let e = pg.execute("INSERT INTO t VALUES ($1)", &[&5i32]).await.must_fail("extended insert");
    assert_eq!(e.code().map(|c| c.code()), Some("53100"), "{e:?}");
    let n: i64 = pg.query_one("SELECT count(*) FROM t", &[]).await.expect("read").get(0);
    assert_eq!(n, 90);
    pg.batch_execute("DELETE FROM t WHERE id > 80; TRUNCATE t; DROP TABLE t").await.expect("deletes work");

    // Raising the quota opens writes at once.
    let (s, _) = operator(
        &gw,
        "PUT",
        &format!("/admin/v1/tenants/{name}/quotas"),
        Some(json!({ "max_db_bytes": 10_000_000_000i64 })),
    )
    .await;
    assert_eq!(s, 200);
    pg.batch_execute("CREATE TABLE t2 (id int); INSERT INTO t2 VALUES (1)").await.expect("writes again");
    let (s, body) = operator(&gw, "GET", &format!("/admin/v1/tenants/{name}/usage"), None).await;
    assert_eq!(s, 200, "{body}");
    assert!(body["measured_at"].is_string(), "{body}");
    gw.delete_tenant(&name).await;
    gw.stop().await;
}

/// One request's outcome and how long it took.
async fn timed<F: Future<Output = bool>>(f: F) -> (bool, Duration) {
    let started = Instant::now();
    let ok = f.await;
    (ok, started.elapsed())
}

/// Issue 12, item 1: tenant A locks its own collection table in an open
/// Postgres-door transaction (as strongly as it may: collection tables are
/// read-only to tenant SQL, so `ACCESS EXCLUSIVE` is refused and `ACCESS
/// SHARE` is the most it gets) and piles requests onto it. Other tenants'
/// requests and logins, and readiness, must not notice (no control-plane
/// connection is held while A's database makes a request wait), A's
/// requests that wait on the lock (dropping the collection) end at A's
/// statement timeout instead of waiting for ever, its reads are served, and
/// A can still roll back.
#[tokio::test]
async fn a_tenant_locking_its_tables_starves_nobody() {
    let mut cfg = crate::support::config();
    // A small control-plane pool: a handler holding one across A's lock
    // would empty it with the requests below.
    cfg.control.pool_size = 2;
    let gw = Gateway::start_with(cfg).await;
    let a = gw.create_tenant(&unique("gla")).await;
    let b = gw.create_tenant(&unique("glb")).await;
    gw.set_quota(&a.name, "statement_timeout_ms", 2_000).await;
    let (s, body) = call(&gw, &a, "PUT", "/v1/collections/docs", Some(json!({ "dimension": 2, "metric": "l2" }))).await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = call(
        &gw,
        &a,
        "POST",
        "/v1/collections/docs/points",
        Some(json!({ "points": [{ "id": "p1", "vector": [1.0, 2.0] }] })),
    )
    .await;
    assert_eq!(s, 200, "{body}");

    let locker = connect(&gw, &a).await;
    let refused = locker.batch_execute("BEGIN; LOCK TABLE sluice.\"c_docs\" IN ACCESS EXCLUSIVE MODE").await;
    let code = refused.as_ref().err().and_then(|e| e.code()).map(|c| c.code().to_owned());
    assert_eq!(code.as_deref(), Some("42501"), "the tenant may not lock out the gateway: {refused:?}");
    locker.batch_execute("ROLLBACK").await.expect("rollback");
    locker.batch_execute("BEGIN; LOCK TABLE sluice.\"c_docs\" IN ACCESS SHARE MODE").await.expect("lock");

    // A's pile-up: collection reads, searches and deletes waiting on the lock.
    let started = Instant::now();
    let mut pile = Vec::new();
    for i in 0..12 {
        let (gw_http, url, key) = (gw.http.clone(), gw.base.clone(), a.service_key.clone());
        pile.push(tokio::spawn(async move {
            let docs = format!("{url}/v1/collections/docs");
            let req = match i % 4 {
                2 => gw_http
                    .post(format!("{docs}/search"))
                    .json(&json!({ "vector": [1.0, 2.0], "k": 1, "rerank": false })),
                3 => gw_http.delete(docs),
                _ => gw_http.get(docs),
            };
            let resp = req.bearer_auth(&key).send().await.expect("request");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (i % 4 == 3, status, body, started.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Meanwhile B: /v1/sql, Postgres-door logins, and readiness, for longer
    // than A's requests can wait.
    let mut slowest = Duration::ZERO;
    let mut failures = Vec::new();
    let mut rounds = 0;
    while started.elapsed() < Duration::from_secs(4) {
        rounds += 1;
        let (ok, took) = timed(async {
            let (s, body) = call(&gw, &b, "POST", "/v1/sql", Some(json!({ "sql": "SELECT 1 AS one" }))).await;
            s == 200 && body["rows"][0][0] == 1
        })
        .await;
        slowest = slowest.max(took);
        if !ok {
            failures.push("sql");
        }
        let (ok, took) = timed(async {
            match try_connect(&gw, &b.name, &b.service_key, &b.db()).await {
                Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
                Err(_) => false,
            }
        })
        .await;
        slowest = slowest.max(took);
        if !ok {
            failures.push("pg login");
        }
        let (ok, took) = timed(async {
            let (_, body) = gw.get("/readyz", "").await;
            body["checks"]["postgres"]["ok"] == true
        })
        .await;
        slowest = slowest.max(took);
        if !ok {
            failures.push("readyz postgres");
        }
    }
    eprintln!("tenant B during A's lock: {rounds} rounds (sql, pg login, readyz), slowest {slowest:?}");
    assert!(failures.is_empty(), "tenant B failed while A held its lock: {failures:?}");
    // Generous for a busy 2-core machine; starvation meant 5 s and failures.
    assert!(slowest < Duration::from_secs(2), "tenant B's slowest request took {slowest:?}");

    // A's own requests end at its statement timeout (2 s), not at the lock.
    let mut answers = Vec::new();
    for h in pile {
        let deadline = Duration::from_secs(10).saturating_sub(started.elapsed());
        answers.push(tokio::time::timeout(deadline, h).await.map(|r| r.expect("request task")));
    }
    // The storage meter (one task for every tenant) does not wait on A's
    // lock for ever, holding no control-plane connection.
    let record = tenant_record(&gw, &a.name).await;
    let measured = tokio::time::timeout(
        Duration::from_secs(8),
        sluice::usage::meter::measure_tenant(&gw.svc, &gw.svc.usage, &record, true),
    )
    .await;
    assert!(measured.is_ok(), "the meter finishes (or gives up) while A holds its lock");
    // A can roll back, and its collection answers again.
    let (ok, took) = timed(async { locker.batch_execute("ROLLBACK").await.is_ok() }).await;
    assert!(ok && took < Duration::from_secs(1), "rollback: {ok} after {took:?}");
    for a in answers {
        let (waits, status, body, took) = a.unwrap_or_else(|_| panic!("an A request still waited after 10 s"));
        eprintln!("tenant A's request: {status} after {took:?}");
        // A's reads may also queue behind A's own pending drops (Postgres
        // queues lock requests in order); either way each one ends.
        if !waits && status == 200 {
            continue;
        }
        assert!(status == 504 || status == 503, "A's request after {took:?}: {status} {body}");
        if status == 504 {
            assert_eq!(error_code(&body), "statement_timeout", "{body}");
        }
    }
    let (s, body) = call(&gw, &a, "GET", "/v1/collections/docs", None).await;
    assert_eq!((s, body["points"].as_i64()), (200, Some(1)), "{body}");

    gw.delete_tenant(&a.name).await;
    gw.delete_tenant(&b.name).await;
    gw.stop().await;
}

/// Issue 12, item 4: memory settings have ceilings on both doors, idle
/// transactions keep a timeout, and every tenant role carries defaults it
/// cannot raise (`temp_file_limit` is superuser-only in Postgres itself).
#[tokio::test]
async fn tenants_cannot_raise_memory_or_temp_file_limits() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("gmem")).await;
    let door = connect(&gw, &t).await;

    // The door: past the ceiling refused, naming it; within it fine.
    for sql in [
        "SET work_mem = '4GB'",
        "SET maintenance_work_mem = '1GB'",
        "SELECT set_config('work_mem', '128MB', false)",
        "SET idle_in_transaction_session_timeout = 0",
        "SET temp_file_limit = -1",
    ] {
        let e = door.simple_query(sql).await.must_fail(sql);
        assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{sql}: {e:?}");
    }
    let e = door.simple_query("SET work_mem = '4GB'").await.must_fail("4GB");
    let msg = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
    assert!(msg.contains("64MB"), "the refusal names the ceiling: {msg}");
    door.simple_query("SET work_mem = '32MB'").await.expect("within the ceiling");
    assert_eq!(show(&door, "work_mem").await.as_deref(), Some("32MB"));
    // Startup options too.
    let url = format!("{}?options=-c%20work_mem%3D4GB", gw.pg_url(&t.name, &t.service_key, &t.db()));
    let e = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.must_fail("startup work_mem");
    assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e:?}");

    // /v1/sql.
    for sql in ["SET LOCAL work_mem = '4GB'", "SET LOCAL idle_in_transaction_session_timeout = 0"] {
        let (s, body) = call(&gw, &t, "POST", "/v1/sql", Some(json!({ "sql": sql }))).await;
        assert_eq!(s, 403, "{sql}: {body}");
        assert_eq!(body["error"]["rule"], "http.resource-setting", "{body}");
    }
    let (s, body) = call(&gw, &t, "POST", "/v1/sql", Some(json!({ "sql": "SET LOCAL work_mem = '4GB'" }))).await;
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("64MB"), "{s} {body}");
    let (s, body) = call(&gw, &t, "POST", "/v1/sql", Some(json!({ "sql": "SET LOCAL work_mem = '16MB'" }))).await;
    assert_eq!(s, 200, "{body}");

    // Role defaults, seen by the tenant through the door and directly.
    let fresh = connect(&gw, &t).await;
    assert_eq!(show(&fresh, "temp_file_limit").await.as_deref(), Some("10GB"));
    assert_eq!(show(&fresh, "work_mem").await.as_deref(), Some("4MB"));
    let direct = gw.direct_pg(&t).await;
    let (c, conn) = tokio_postgres::connect(&direct.url(), tokio_postgres::NoTls).await.expect("direct connect");
    tokio::spawn(conn);
    assert_eq!(show(&c, "temp_file_limit").await.as_deref(), Some("10GB"));
    let quota = gw.svc.config.quotas.statement_timeout_ms;
    let shown = show(&c, "statement_timeout").await.unwrap_or_default();
    assert!(
        [format!("{quota}ms"), format!("{}s", quota / 1000), format!("{}min", quota / 60_000)].contains(&shown),
        "role default {shown} vs quota {quota} ms"
    );
    // Postgres itself refuses: only a superuser may change temp_file_limit.
    let e = c.simple_query("SET temp_file_limit = -1").await.must_fail("superuser-only");
    assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e:?}");
    drop(c);

    // A tenant created before these defaults gets them when a gateway builds
    // its pools.
    let admin = gw.svc.pg_admin.connect(None).await.expect("admin");
    let role = direct.user.clone();
    admin.batch_execute(&format!("ALTER ROLE \"{role}\" RESET ALL")).await.expect("reset the role");
    let settings = || async {
        admin
            .query_opt(
                "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
                 WHERE r.rolname = $1 AND s.setdatabase = 0",
                &[&role],
            )
            .await
            .expect("role settings")
            .and_then(|r| r.get::<_, Option<Vec<String>>>(0))
            .unwrap_or_default()
    };
    assert!(settings().await.is_empty());
    let other = Gateway::start().await;
    let (s, _) = call(&other, &t, "POST", "/v1/sql", Some(json!({ "sql": "SELECT 1" }))).await;
    assert_eq!(s, 200);
    let started = Instant::now();
    while !settings().await.contains(&"temp_file_limit=10GB".to_owned()) {
        assert!(started.elapsed() < Duration::from_secs(5), "role defaults after a pool build: {:?}", settings().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    other.stop().await;

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// This process's resident memory now and at its peak, in bytes (the
/// gateways of these tests run in-process).
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

const MB: f64 = 1024.0 * 1024.0;

#[tokio::test]
async fn results_are_capped_on_http_and_operators_lower_the_cap() {
    let gw = Gateway::start().await;
    let name = unique("grc");
    let t = gw.create_tenant(&name).await;
    let rows = json!({ "sql": "SELECT repeat('x', 1000) AS s FROM generate_series(1, 100)" });

    let (s, body) = call(&gw, &t, "POST", "/v1/sql", Some(rows.clone())).await;
    assert_eq!((s, body["rows"].as_array().map(Vec::len)), (200, Some(100)), "{body}");

    // The operator lowers the cap through the admin API; the next request obeys it.
    let (s, body) =
        operator(&gw, "PUT", &format!("/admin/v1/tenants/{name}/quotas"), Some(json!({ "max_result_bytes": 50_000 })))
            .await;
    assert_eq!((s, body["quotas"]["max_result_bytes"].as_i64()), (200, Some(50_000)), "{body}");
    let (s, body) = call(&gw, &t, "POST", "/v1/sql", Some(rows.clone())).await;
    assert_eq!((s, error_code(&body)), (413, "result_too_large"), "{body}");
    assert_eq!(body["error"]["max_result_bytes"], 50_000, "{body}");
    assert_eq!(body["error"]["sqlstate"], "54000", "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("50000 bytes"), "{body}");

    // A batch shares the cap (the response holds all its results).
    let half = json!({ "sql": "SELECT repeat('x', 1000) AS s FROM generate_series(1, 30)" });
    let (s, body) = call(&gw, &t, "POST", "/v1/sql", Some(json!({ "statements": [half.clone()] }))).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = call(&gw, &t, "POST", "/v1/sql", Some(json!({ "statements": [half.clone(), half] }))).await;
    assert_eq!(
        (s, error_code(&body), body["error"]["statement"].as_u64()),
        (413, "result_too_large", Some(1)),
        "{body}"
    );

    // Escaping counts: 20,000 quotes render as 40,000 bytes of JSON.
    let (s, body) = call(
        &gw,
        &t,
        "POST",
        "/v1/sql",
        Some(json!({ "sql": "SELECT repeat('\"', 20000) AS s, repeat('\"', 20000) AS t" })),
    )
    .await;
    assert_eq!((s, error_code(&body)), (413, "result_too_large"), "{body}");

    // One huge value is refused before it is read: the connection's message
    // cap (the result cap) stops it at its header, so it is never held whole.
    let (rss0, peak0) = rss();
    let (s, body) =
        call(&gw, &t, "POST", "/v1/sql", Some(json!({ "sql": "SELECT repeat('x', 200000000) AS s" }))).await;
    let (rss1, peak1) = rss();
    assert_eq!((s, error_code(&body)), (413, "result_too_large"), "{body}");
    eprintln!(
        "memory ceilings: /v1/sql of one 200 MB value under a 50 kB cap: VmHWM {:.0} -> {:.0} MiB (+{:.0}), VmRSS {:.0} -> {:.0} MiB",
        peak0 as f64 / MB,
        peak1 as f64 / MB,
        (peak1.saturating_sub(peak0)) as f64 / MB,
        rss0 as f64 / MB,
        rss1 as f64 / MB
    );
    assert!(peak1.saturating_sub(peak0) < 128 << 20, "peak grew by {} bytes", peak1 - peak0);

    // The connection went back clean: the tenant's next request works.
    let (s, body) = call(&gw, &t, "POST", "/v1/sql", Some(json!({ "sql": "SELECT 1 AS one" }))).await;
    assert_eq!((s, body["rows"][0][0].as_i64()), (200, Some(1)), "{body}");

    gw.delete_tenant(&name).await;
    gw.stop().await;
}

#[tokio::test]
async fn results_are_capped_on_the_pg_door_and_the_session_stays_usable() {
    use tokio_postgres::error::SqlState;
    let gw = Gateway::start().await;
    let name = unique("grp");
    let t = gw.create_tenant(&name).await;
    gw.set_quota(&name, "max_result_bytes", 100_000).await;
    let c = connect(&gw, &t).await;
    // Rows keep coming long after the cap: the statement is cancelled.
    let endless = "SELECT repeat('x', 1000) FROM generate_series(1, 10000000)";
    let limit = |e: &tokio_postgres::Error| {
        assert_eq!(e.code(), Some(&SqlState::PROGRAM_LIMIT_EXCEEDED), "{e:?}");
        assert!(e.as_db_error().is_some_and(|d| d.message().contains("100000 bytes")), "{e:?}");
    };
    let started = Instant::now();
    limit(&c.query(endless, &[]).await.must_fail("extended protocol"));
    limit(&c.simple_query(endless).await.must_fail("simple protocol"));
    assert!(started.elapsed() < Duration::from_secs(10), "cancelled, not run to the end: {:?}", started.elapsed());
    assert_eq!(c.query_one("SELECT 41 + 1", &[]).await.expect("usable after").get::<_, i32>(0), 42);

    // One value far past the cap is refused at its header: the door never
    // holds it (its bytes are discarded as they arrive).
    let (rss0, peak0) = rss();
    limit(&c.query("SELECT repeat('x', 200000000)", &[]).await.must_fail("one huge value, extended"));
    limit(&c.simple_query("SELECT 1, repeat('x', 200000000)").await.must_fail("one huge value, simple"));
    let (rss1, peak1) = rss();
    eprintln!(
        "memory ceilings: pg door, one 200 MB value under a 100 kB cap (twice): VmHWM {:.0} -> {:.0} MiB, VmRSS {:.0} -> {:.0} MiB",
        peak0 as f64 / MB,
        peak1 as f64 / MB,
        rss0 as f64 / MB,
        rss1 as f64 / MB
    );
    assert!(peak1.saturating_sub(peak0) < 128 << 20, "peak grew by {} bytes", peak1 - peak0);
    assert_eq!(c.query_one("SELECT 43", &[]).await.expect("usable after").get::<_, i32>(0), 43);

    // Under the cap, nothing changes.
    let rows = c.query("SELECT repeat('x', 1000) FROM generate_series(1, 50)", &[]).await.expect("under the cap");
    assert_eq!(rows.len(), 50);

    // COPY TO STDOUT counts too.
    let copy = c
        .copy_out("COPY (SELECT repeat('x', 1000) FROM generate_series(1, 10000000)) TO STDOUT")
        .await
        .expect("copy starts");
    futures::pin_mut!(copy);
    let mut failed = None;
    while let Some(chunk) = futures::StreamExt::next(&mut copy).await {
        if let Err(e) = chunk {
            failed = Some(e);
            break;
        }
    }
    limit(&failed.expect("COPY TO STDOUT past the cap fails"));

    // In a transaction the statement fails it, as an error would.
    c.batch_execute("BEGIN").await.expect("begin");
    limit(&c.query(endless, &[]).await.must_fail("in a transaction"));
    let e = c.query("SELECT 1", &[]).await.must_fail("transaction is aborted");
    assert_eq!(e.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION), "{e:?}");
    c.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(c.query_one("SELECT 7", &[]).await.expect("usable after rollback").get::<_, i32>(0), 7);

    drop(c);
    gw.delete_tenant(&name).await;
    gw.stop().await;
}

/// Send `head` and then `body` (possibly endless) on a raw connection and
/// return the response as text; the body is written by another task, so a
/// server that stops reading does not block the test.
async fn raw_http(gw: &Gateway, head: String, body: impl futures::Stream<Item = Vec<u8>> + Send + 'static) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = gw.base.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(head.as_bytes()).await.expect("write head");
    let writer = tokio::spawn(async move {
        futures::pin_mut!(body);
        while let Some(chunk) = futures::StreamExt::next(&mut body).await {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        // Keep the write half open: the server answers, then closes.
        std::future::pending::<()>().await;
    });
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // Until the server closes, or a second passes quietly after the response started.
    loop {
        let wait = if got.is_empty() { deadline } else { tokio::time::Instant::now() + Duration::from_secs(1) };
        match tokio::time::timeout_at(wait.min(deadline), rd.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    writer.abort();
    assert!(!got.is_empty(), "no response in time");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn oversized_json_bodies_are_refused_before_they_are_read() {
    let gw = Gateway::start().await;
    let name = unique("grb");
    let t = gw.create_tenant(&name).await;
    let head = |path: &str, framing: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n{framing}\r\n",
            t.service_key
        )
    };
    // A Content-Length over the cap: 413 at once, with no body sent at all,
    // and the message names the cap.
    for (path, len, cap) in [
        ("/v1/sql", 2u64 << 20, 1u64 << 20),
        ("/v1/sql", 100_000_000, 1 << 20),
        ("/v1/collections/none/points", 70 << 20, 64 << 20),
        ("/v1/kv/k", 1 << 30, 1 << 20),
    ] {
        let mut h = head(path, &format!("Content-Length: {len}\r\n"));
        if path.starts_with("/v1/kv") {
            h = h.replacen("POST", "PUT", 1);
        }
        let resp = raw_http(&gw, h, futures::stream::empty()).await;
        assert!(resp.starts_with("HTTP/1.1 413 "), "{path} with Content-Length {len}: {resp}");
        assert!(resp.contains("payload_too_large") && resp.contains(&format!("{cap} bytes")), "{path}: {resp}");
    }

    // A chunked body stops being read at the cap (64 MiB of it would follow).
    let chunk = {
        let data = vec![b' '; 64 << 10];
        let mut c = format!("{:x}\r\n", data.len()).into_bytes();
        c.extend_from_slice(&data);
        c.extend_from_slice(b"\r\n");
        c
    };
    let endless = futures::stream::iter(std::iter::repeat_n(chunk, 1024));
    let resp = raw_http(&gw, head("/v1/sql", "Transfer-Encoding: chunked\r\n"), endless).await;
    assert!(resp.starts_with("HTTP/1.1 413 ") && resp.contains("1048576 bytes"), "chunked: {resp}");

    // A points body under its 64 MiB cap is not parsed into JSON value trees:
    // 1000 points of 2000 long numbers (~42 MB) for a 3-dimension collection.
    let (s, body) = call(&gw, &t, "PUT", "/v1/collections/mem", Some(json!({ "dimension": 3 }))).await;
    assert!(s == 200 || s == 201, "{body}");
    let vector = format!("[{}]", vec!["0.12345678901234567"; 2000].join(","));
    let points: Vec<String> = (0..1000).map(|i| format!("{{\"id\":{i},\"vector\":{vector}}}")).collect();
    let (status, body) = upsert_measured(&gw, &t, &points, "wrong dimension, 422").await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("2000 dimensions"), "{body}");

    // Nor is its metadata all at once: 1000 points of 60 kB of small numbers
    // (~60 MB; as JSON values about 16 times that), the last point invalid.
    let meta = format!("{{\"a\":[{}]}}", vec!["1"; 30_000].join(","));
    let points: Vec<String> = (0..1000)
        .map(|i| {
            let v = if i == 999 { "[1,2]" } else { "[1,2,3]" };
            format!("{{\"id\":{i},\"vector\":{v},\"metadata\":{meta}}}")
        })
        .collect();
    let (status, body) = upsert_measured(&gw, &t, &points, "of metadata, last point invalid, 422").await;
    assert_eq!((status, body["error"]["point"].as_u64()), (422, Some(999)), "{body}");

    gw.delete_tenant(&name).await;
    gw.stop().await;
}

/// Upsert `points` into the collection `mem`, print how much the peak memory
/// grew, and check it stayed far below what JSON value trees would take.
async fn upsert_measured(gw: &Gateway, t: &TestTenant, points: &[String], what: &str) -> (u16, Value) {
    let payload = format!("{{\"points\":[{}]}}", points.join(","));
    let size = payload.len();
    let (_, peak0) = rss();
    let resp = gw
        .http
        .post(gw.url("/v1/collections/mem/points"))
        .bearer_auth(&t.service_key)
        .header("content-type", "application/json")
        .body(payload)
        .send()
        .await
        .expect("send points");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let grew = rss().1.saturating_sub(peak0);
    eprintln!(
        "memory ceilings: points upsert of {:.0} MB ({what}): VmHWM +{:.0} MiB",
        size as f64 / 1e6,
        grew as f64 / MB
    );
    assert!(grew < 400 << 20, "peak grew by {grew} bytes");
    (status, body)
}

/// The Postgres door as a target for the gateway's own raw wire client (so a
/// test can send partial messages after a real SCRAM login).
fn door_target(gw: &Gateway, t: &TestTenant) -> sluice::upstream::pg_wire::UpstreamTarget {
    sluice::upstream::pg_wire::UpstreamTarget {
        host: gw.pg_addr.ip().to_string(),
        port: gw.pg_addr.port(),
        user: t.name.clone(),
        database: t.db(),
        password: sluice::secret::SecretString::from(t.service_key.clone()),
        options: Vec::new(),
        connect_timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn pg_door_refuses_messages_beyond_its_read_budget() {
    use sluice::upstream::pg_wire::{ServerConn, parse_error_fields};
    let mut cfg = crate::support::config();
    cfg.server.pg_read_budget_bytes = 3 << 20;
    let gw = Gateway::start_with(cfg).await;
    let name = unique("grm");
    let t = gw.create_tenant(&name).await;
    let target = door_target(&gw, &t);
    // A Query announcing 2 MiB, of which only the start arrives: its room is taken.
    let announce = |conn: &mut ServerConn, len: i32| {
        conn.wbuf.extend_from_slice(b"Q");
        conn.wbuf.extend_from_slice(&len.to_be_bytes());
        conn.wbuf.extend_from_slice(b"SELECT ");
    };
    let (rss0, _) = rss();
    let mut holder = ServerConn::connect(&target).await.expect("connect holder");
    announce(&mut holder, 2 << 20);
    holder.flush().await.expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Another client's 2 MiB message finds no room: FATAL 53200, connection closed.
    let mut refused = ServerConn::connect(&target).await.expect("connect second");
    announce(&mut refused, 2 << 20);
    refused.flush().await.expect("send");
    let (tag, body) = tokio::time::timeout(Duration::from_secs(5), refused.read_frame())
        .await
        .expect("answered in time")
        .expect("an answer");
    let (severity, code, message) = parse_error_fields(&body);
    assert_eq!((tag, severity.as_str(), code.as_str()), (b'E', "FATAL", "53200"), "{message}");
    assert!(message.contains("2097153 bytes"), "{message}");
    assert!(tokio::time::timeout(Duration::from_secs(5), refused.read_frame()).await.expect("closed").is_err());

    // Small messages need no room: a normal session works meanwhile.
    let c = connect(&gw, &t).await;
    assert_eq!(c.query_one("SELECT 5", &[]).await.expect("small query").get::<_, i32>(0), 5);

    // The holder leaves; its room comes back, and a whole 2 MiB Bind runs.
    drop(holder);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let big = "y".repeat(2 << 20);
    let n: i32 =
        c.query_one("SELECT length($1::text)", &[&big]).await.expect("big Bind after the room came back").get(0);
    assert_eq!(n, 2 << 20);
    let (rss1, _) = rss();
    eprintln!(
        "memory ceilings: pg door read budget 3 MiB, two clients announcing 2 MiB: VmRSS {:.0} -> {:.0} MiB",
        rss0 as f64 / MB,
        rss1 as f64 / MB
    );

    drop(c);
    gw.delete_tenant(&name).await;
    gw.stop().await;
}

#[tokio::test]
async fn pg_door_memory_stays_within_its_read_budget_under_attack() {
    use sluice::upstream::pg_wire::{ServerConn, parse_error_fields};
    // The default budget (256 MiB); eight clients each send 59 of an announced 60 MiB Query.
    let gw = Gateway::start().await;
    let name = unique("gra");
    let t = gw.create_tenant(&name).await;
    let target = door_target(&gw, &t);
    let (rss0, peak0) = rss();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut c = ServerConn::connect(&target).await.expect("connect");
        c.wbuf.extend_from_slice(b"Q");
        c.wbuf.extend_from_slice(&(60i32 << 20).to_be_bytes());
        c.wbuf.extend_from_slice(b"SELECT '");
        c.wbuf.resize(c.wbuf.len() + (59 << 20), b'x');
        // A refused client's write may fail when the door closes it.
        let _ = c.flush().await;
        // This process is the gateway too: keep only the door's copy.
        drop(std::mem::take(&mut c.wbuf));
        clients.push(c);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss1, peak1) = rss();
    let mut refused = 0;
    for c in &mut clients {
        if let Ok(Ok((b'E', body))) = tokio::time::timeout(Duration::from_millis(200), c.read_frame()).await {
            let (_, code, _) = parse_error_fields(&body);
            assert_eq!(code, "53200");
            refused += 1;
        }
    }
    eprintln!(
        "memory ceilings: 8 pg clients x 59 of 60 MiB partial Query, budget 256 MiB: {refused} refused; VmRSS {:.0} -> {:.0} MiB, VmHWM {:.0} -> {:.0} MiB",
        rss0 as f64 / MB,
        rss1 as f64 / MB,
        peak0 as f64 / MB,
        peak1 as f64 / MB
    );
    assert_eq!(refused, 4, "four fit in 256 MiB");
    drop(clients);
    gw.delete_tenant(&name).await;
    gw.stop().await;
}

/// A statement that lifts its own server-side timeout (opaque code may)
/// still ends at the tenant's deadline: the gateway cancels it on the server
/// (a cancel request to the server the connection reaches) and answers 504.
#[tokio::test]
async fn a_statement_that_lifts_its_own_timeout_is_cancelled_at_the_deadline() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("gdl")).await;
    gw.set_quota(&t.name, "statement_timeout_ms", 500).await;
    let started = Instant::now();
    let (s, body) = call(
        &gw,
        &t,
        "POST",
        "/v1/sql",
        Some(json!({ "statements": [
            { "sql": "DO $$ BEGIN PERFORM set_config('statement_timeout', '0', true); END $$" },
            { "sql": "SELECT pg_sleep(20)" },
        ]})),
    )
    .await;
    let took = started.elapsed();
    assert_eq!((s, error_code(&body)), (504, "statement_timeout"), "{body}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    // The sleep does not run on: the cancel reached the server.
    let admin = gw.svc.pg_admin.connect(None).await.expect("admin");
    let db = t.db();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let running: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query = 'SELECT pg_sleep(20)'",
                &[&db],
            )
            .await
            .expect("activity")
            .get(0);
        if running == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the statement still runs on the server");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// The storage meter's rounds (what `serve` runs every few seconds) measure
/// every tenant that is due, over one admin connection per round.
#[tokio::test]
async fn metering_rounds_measure_every_due_tenant() {
    let gw = Gateway::start().await;
    let tenants = [gw.create_tenant(&unique("gma")).await, gw.create_tenant(&unique("gmb")).await];
    let mut ids = Vec::new();
    for t in &tenants {
        ids.push(tenant_record(&gw, &t.name).await.id);
    }
    // Other tests' tenants may be due too: rounds go on until these two
    // have been measured (a round claims a batch, oldest first).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        sluice::usage::meter::round(&gw.svc, &gw.svc.usage).await.expect("round");
        let c = gw.svc.control.client().await.expect("control");
        let mut measured = 0;
        for id in &ids {
            let u = sluice::usage::get(&c, *id).await.expect("usage");
            if u.db_bytes > 1_000_000 {
                measured += 1;
            }
        }
        if measured == ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{measured} of {} tenants measured", ids.len());
    }
    for t in &tenants {
        gw.delete_tenant(&t.name).await;
    }
    gw.stop().await;
}
