//! Tenant guardrails against the real stack: operators change quotas and key
//! limits on a running gateway, suspend and resume tenants, and storage
//! quotas (database, objects, key/value, vector points) refuse growth while
//! reads and deletes keep working, on both doors.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::pg_door::{MustFail, connect, try_connect};
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
    let tn = sluice::ids::TenantName::parse(&name).expect("name");
    let tenant =
        sluice::control::tenants::get_by_name(&gw.svc.control.client().await.expect("c"), &tn).await.expect("t");
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
    let tn = sluice::ids::TenantName::parse(&name).expect("name");
    let tenant =
        sluice::control::tenants::get_by_name(&gw.svc.control.client().await.expect("c"), &tn).await.expect("t");
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

    // One huge value is refused as it arrives, before it is decoded and
    // rendered (tokio-postgres still holds the row it received whole).
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
    assert!(peak1.saturating_sub(peak0) < 400 << 20, "peak grew by {} bytes", peak1 - peak0);

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
