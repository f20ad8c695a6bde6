//! WebAssembly plugins end to end on the real stack: upload → validate → store
//! → activate → effect → roll back; hostile plugins contained; hot reload across
//! two gateway instances; tenant isolation; reranker; retention.
//!
//! The guest components come from `scripts/build-plugins`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Gateway, TestTenant, config, error_code, plugin_wasm, unique};

async fn upload(gw: &Gateway, key: &str, kind: &str, wasm: &str, query: &str) -> (u16, Value) {
    let resp = gw
        .http
        .put(gw.url(&format!("/v1/plugins/{kind}{query}")))
        .bearer_auth(key)
        .header("content-type", "application/wasm")
        .body(plugin_wasm(wasm))
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

pub async fn post(gw: &Gateway, key: &str, path: &str, body: Value) -> (u16, Value) {
    let resp = gw.http.post(gw.url(path)).bearer_auth(key).json(&body).send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

pub async fn sql(gw: &Gateway, key: &str, text: &str) -> (u16, Value) {
    post(gw, key, "/v1/sql", json!({ "sql": text })).await
}

async fn activate(gw: &Gateway, t: &TestTenant, kind: &str, body: Value) {
    let (s, b) = post(gw, &t.admin_key, &format!("/v1/plugins/{kind}/activate"), body).await;
    assert_eq!(s, 200, "activate: {b}");
}

/// Upload `retention-max-age` and activate it with `max_age_days = 0`
/// (everything older than now goes, except legal holds).
async fn activate_max_age_zero(gw: &Gateway, t: &TestTenant) {
    let (s, b) = upload(
        gw,
        &t.admin_key,
        "retention",
        "retention_max_age",
        "?activate=true&config=%7B%22max_age_days%22%3A0%7D",
    )
    .await;
    assert_eq!(s, 201, "{b}");
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1]
}

#[tokio::test]
async fn policy_upload_activate_rollback_and_test() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("plg")).await;

    // v1: deny DDL; effect on /v1/sql.
    let (s, v1) = upload(&gw, &t.admin_key, "policy", "policy_ddl_guard", "?activate=true").await;
    assert_eq!(s, 201, "{v1}");
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["sha256"].as_str().map(str::len), Some(64));
    let (s, b) = sql(&gw, &t.service_key, "CREATE TABLE notes (id int)").await;
    assert_eq!((s, error_code(&b)), (403, "plugin_error"), "{b}");
    assert!(message(&b).contains("DDL (CREATE TABLE) is not allowed"), "{b}");
    let (s, b) = sql(&gw, &t.service_key, "SELECT 1 AS one").await;
    assert_eq!(s, 200, "{b}");

    // Deactivate: DDL goes through.
    let (s, b) = post(&gw, &t.admin_key, "/v1/plugins/policy/deactivate", json!({})).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = sql(&gw, &t.service_key, "CREATE TABLE notes (id int)").await;
    assert_eq!(s, 200, "{b}");

    // v2: the same guard with a table allowlist, config by header.
    let resp = gw
        .http
        .put(gw.url("/v1/plugins/policy?activate=true"))
        .bearer_auth(&t.admin_key)
        .header("x-sluice-plugin-config", r#"{"allowed_tables": ["notes"]}"#)
        .body(plugin_wasm("policy_ddl_guard"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 201);
    let (s, b) = sql(&gw, &t.service_key, "SELECT count(*) FROM notes").await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = sql(&gw, &t.service_key, "SELECT count(*) FROM pg_class").await;
    assert_eq!(s, 403, "{b}");
    assert!(message(&b).contains("not in the allowlist"), "{b}");

    // Roll back to v1 (without allowlist): pg_class allowed again.
    activate(&gw, &t, "policy", json!({ "version": 1, "config": {} })).await;
    let (s, b) = sql(&gw, &t.service_key, "SELECT count(*) FROM pg_class").await;
    assert_eq!(s, 200, "{b}");
    let (s, _) = sql(&gw, &t.service_key, "DROP TABLE notes").await;
    assert_eq!(s, 403);

    // Activate v2 again.
    activate(&gw, &t, "policy", json!({ "version": 2, "config": { "allowed_tables": ["notes"] } })).await;
    let (s, _) = sql(&gw, &t.service_key, "SELECT count(*) FROM pg_class").await;
    assert_eq!(s, 403);

    // List, delete rules.
    let (s, list) = gw.get("/v1/plugins/policy", &t.admin_key).await;
    assert_eq!(s, 200);
    assert_eq!(list["active_version"], 2, "{list}");
    assert_eq!(list["versions"].as_array().map(Vec::len), Some(2));
    let resp =
        gw.http.delete(gw.url("/v1/plugins/policy/versions/2")).bearer_auth(&t.admin_key).send().await.expect("req");
    assert_eq!(resp.status(), 409, "the active version cannot be deleted");
    let resp =
        gw.http.delete(gw.url("/v1/plugins/policy/versions/1")).bearer_auth(&t.admin_key).send().await.expect("req");
    assert_eq!(resp.status(), 204);

    // The test endpoint.
    let (s, out) = post(
        &gw,
        &t.admin_key,
        "/v1/plugins/policy/test",
        json!({ "input": { "operation": "sql", "door": "pg", "sql": "DROP TABLE notes" } }),
    )
    .await;
    assert_eq!(s, 200, "{out}");
    assert_eq!(out["output"]["decision"], "deny", "{out}");

    // Audited.
    let (_, audit) = gw.get("/v1/audit?limit=100", &t.admin_key).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .or(audit.as_array())
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in ["plugin.upload", "plugin.activate", "plugin.deactivate", "plugin.delete_version"] {
        assert!(actions.contains(&a), "{a} audited: {actions:?}");
    }
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// The same policy on the Postgres-wire door: simple and extended protocol,
/// inside a transaction, and a deny leaves the session usable.
#[tokio::test]
async fn policy_applies_on_the_pg_door() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("plgpg")).await;
    let db = t.db();
    let (client, conn) = tokio_postgres::connect(&gw.pg_url(&t.name, &t.service_key, &db), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client.batch_execute("CREATE TABLE notes (id int)").await.expect("no policy yet");

    let resp = gw
        .http
        .put(gw.url("/v1/plugins/policy?activate=true"))
        .bearer_auth(&t.admin_key)
        .header("x-sluice-plugin-config", r#"{"allowed_tables": ["notes"]}"#)
        .body(plugin_wasm("policy_ddl_guard"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 201);

    let denied = |e: tokio_postgres::Error, what: &str| {
        let db = e.as_db_error().unwrap_or_else(|| panic!("{what}: not a server error: {e:?}"));
        assert_eq!(db.code(), &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE, "{what}: {db:?}");
        db.message().to_owned()
    };
    let m = denied(client.batch_execute("DROP TABLE notes").await.expect_err("DDL denied"), "simple DDL");
    assert!(m.contains("DDL (DROP TABLE) is not allowed"), "{m}");
    let m = denied(client.prepare("SELECT count(*) FROM pg_class").await.expect_err("denied"), "parse");
    assert!(m.contains("not in the allowlist"), "{m}");
    client.execute("INSERT INTO notes VALUES ($1)", &[&7i32]).await.expect("allowed table, extended protocol");
    client.batch_execute("BEGIN").await.expect("begin");
    assert!(client.batch_execute("CREATE TABLE other (id int)").await.is_err(), "DDL in a transaction");
    client.batch_execute("ROLLBACK").await.expect("rollback");
    let n: i64 = client.query_one("SELECT count(*) FROM notes", &[]).await.expect("still usable").get(0);
    assert_eq!(n, 1);

    // Deactivated: DDL passes again on the same session.
    let (s, b) = post(&gw, &t.admin_key, "/v1/plugins/policy/deactivate", json!({})).await;
    assert_eq!(s, 200, "{b}");
    client.batch_execute("DROP TABLE notes").await.expect("DDL after deactivation");
    drop(client);
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn invalid_components_are_rejected_naming_the_problem() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("plg")).await;
    let (s, b) = upload(&gw, &t.admin_key, "policy", "wrong_world", "").await;
    assert_eq!((s, error_code(&b)), (422, "invalid_plugin"), "{b}");
    assert!(message(&b).contains("missing export `evaluate`"), "{b}");
    assert!(message(&b).contains("unsupported import `test:wrong/net@0.1.0`"), "{b}");
    // A component of another world.
    let (s, b) = upload(&gw, &t.admin_key, "policy", "reranker_mmr", "").await;
    assert_eq!(s, 422, "{b}");
    assert!(message(&b).contains("missing export `evaluate`"), "{b}");
    // Not wasm at all.
    let resp = gw
        .http
        .put(gw.url("/v1/plugins/retention"))
        .bearer_auth(&t.admin_key)
        .body(b"hello".to_vec())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 422);
    // Unknown kind; nothing stored.
    let (s, _) = upload(&gw, &t.admin_key, "firewall", "policy_ddl_guard", "").await;
    assert_eq!(s, 404);
    let (_, list) = gw.get("/v1/plugins/policy", &t.admin_key).await;
    assert_eq!(list["versions"], json!([]), "{list}");
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// Each hostile plugin fails its own tenant's requests closed, within its
/// deadline + 50 ms, naming the cause; another tenant keeps being served.
#[tokio::test]
async fn hostile_plugins_are_contained() {
    let mut cfg = config();
    cfg.plugins.breaker_failures = 10_000;
    // Filling 16 MiB takes a debug-built host ~12-15 ms; give the memory bomb
    // room to hit its cap before the deadline so each cause is seen.
    cfg.plugins.policy_timeout_ms = 50;
    let gw = Gateway::start_with(cfg).await;
    let bad = gw.create_tenant(&unique("bad")).await;
    let good = gw.create_tenant(&unique("good")).await;

    // Baseline latency of the good tenant.
    let mut base = Vec::new();
    for _ in 0..40 {
        let t0 = Instant::now();
        let (s, _) = sql(&gw, &good.service_key, "SELECT 1").await;
        assert_eq!(s, 200);
        base.push(t0.elapsed());
    }

    let cases = [
        ("infinite_loop", Some("timed out: exceeded its 50 ms deadline")),
        ("memory_bomb", Some("ran out of memory")),
        ("panic", Some("deliberate panic")),
        ("oversized_output", Some("oversized output")),
        ("log_flood", None),
    ];
    for (wasm, expect) in cases {
        let (s, b) = upload(&gw, &bad.admin_key, "policy", wasm, "?activate=true").await;
        assert_eq!(s, 201, "{wasm}: {b}");
        // The good tenant, concurrently.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (http, url, key, stop2) = (gw.http.clone(), gw.url("/v1/sql"), good.service_key.clone(), stop.clone());
        let background = tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                let t0 = Instant::now();
                let r = http.post(&url).bearer_auth(&key).json(&json!({ "sql": "SELECT 1" })).send().await;
                assert_eq!(r.map(|r| r.status().as_u16()).unwrap_or(0), 200);
                lat.push(t0.elapsed());
            }
            lat
        });
        for _ in 0..5 {
            let t0 = Instant::now();
            let (s, b) = sql(&gw, &bad.service_key, "SELECT 1").await;
            let took = t0.elapsed();
            match expect {
                Some(cause) => {
                    assert_eq!((s, error_code(&b)), (403, "plugin_error"), "{wasm}: {b}");
                    assert!(message(&b).contains(cause), "{wasm}: {b}");
                }
                None => assert_eq!(s, 200, "{wasm}: {b}"),
            }
            assert!(took < Duration::from_secs(2), "{wasm}: request took {took:?}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let lat = background.await.expect("background task");
        // The call itself, timed by the host.
        let (s, out) = post(
            &gw,
            &bad.admin_key,
            "/v1/plugins/policy/test",
            json!({ "input": { "operation": "sql", "sql": "SELECT 1" } }),
        )
        .await;
        assert_eq!(s, 200, "{out}");
        let took_ms = out["took_ms"].as_f64().unwrap_or(f64::MAX);
        assert!(took_ms <= 50.0 + 50.0, "{wasm}: plugin call took {took_ms} ms: {out}");
        if let Some(cause) = expect {
            assert_eq!(out["ok"], false, "{out}");
            assert!(out["error"]["message"].as_str().unwrap_or_default().contains(cause), "{wasm}: {out}");
        }
        eprintln!(
            "{wasm}: call {took_ms:.1} ms; good tenant p99 {:?} over {} requests (baseline p99 {:?})",
            p99(lat.clone()),
            lat.len(),
            p99(base.clone())
        );
        assert!(p99(lat) < Duration::from_secs(1), "{wasm}: other tenant slowed down");
    }
    gw.delete_tenant(&bad.name).await;
    gw.delete_tenant(&good.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn breaker_pauses_a_failing_plugin() {
    let mut cfg = config();
    cfg.plugins.breaker_failures = 3;
    cfg.plugins.breaker_cooldown_ms = 60_000;
    let gw = Gateway::start_with(cfg).await;
    let t = gw.create_tenant(&unique("brk")).await;
    let (s, _) = upload(&gw, &t.admin_key, "policy", "panic", "?activate=true").await;
    assert_eq!(s, 201);
    for _ in 0..3 {
        let (s, b) = sql(&gw, &t.service_key, "SELECT 1").await;
        assert_eq!(s, 403);
        assert!(message(&b).contains("trapped"), "{b}");
    }
    let (s, b) = sql(&gw, &t.service_key, "SELECT 1").await;
    assert_eq!(s, 403, "a paused policy still fails closed");
    assert!(message(&b).contains("paused"), "{b}");
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn activation_reaches_another_instance_within_a_second() {
    let gw1 = Gateway::start().await;
    let gw2 = Gateway::start().await;
    let t = gw1.create_tenant(&unique("hot")).await;
    // gw2 has cached "no policy".
    let (s, _) = sql(&gw2, &t.service_key, "CREATE TABLE IF NOT EXISTS a (id int)").await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (s, _) = upload(&gw1, &t.admin_key, "policy", "policy_ddl_guard", "?activate=true").await;
    assert_eq!(s, 201);
    let activated = Instant::now();
    loop {
        let (s, _) = sql(&gw2, &t.service_key, "CREATE TABLE IF NOT EXISTS a (id int)").await;
        if s == 403 {
            break;
        }
        assert!(activated.elapsed() < Duration::from_secs(1), "activation did not reach gw2 within 1 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reached = activated.elapsed();
    let (s, _) = post(&gw1, &t.admin_key, "/v1/plugins/policy/deactivate", json!({})).await;
    assert_eq!(s, 200);
    let deactivated = Instant::now();
    loop {
        let (s, _) = sql(&gw2, &t.service_key, "CREATE TABLE IF NOT EXISTS a (id int)").await;
        if s == 200 {
            break;
        }
        assert!(deactivated.elapsed() < Duration::from_secs(1), "deactivation did not reach gw2 within 1 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("activation reached the other instance in {reached:?}, deactivation in {:?}", deactivated.elapsed());
    gw1.delete_tenant(&t.name).await;
    gw1.stop().await;
    gw2.stop().await;
}

#[tokio::test]
async fn tenants_cannot_touch_each_others_plugins() {
    let gw = Gateway::start().await;
    let a = gw.create_tenant(&unique("iso")).await;
    let b = gw.create_tenant(&unique("iso")).await;
    let (s, _) = upload(&gw, &a.admin_key, "policy", "policy_ddl_guard", "?activate=true").await;
    assert_eq!(s, 201);
    // A's policy never runs for B.
    let (s, body) = sql(&gw, &b.service_key, "CREATE TABLE b_only (id int)").await;
    assert_eq!(s, 200, "{body}");
    let (s, _) = sql(&gw, &a.service_key, "CREATE TABLE a_only (id int)").await;
    assert_eq!(s, 403);
    // B sees only its own (empty) plugin list and cannot activate A's version.
    let (s, list) = gw.get("/v1/plugins/policy", &b.admin_key).await;
    assert_eq!(s, 200);
    assert_eq!(list["versions"], json!([]), "{list}");
    let (s, _) = post(&gw, &b.admin_key, "/v1/plugins/policy/activate", json!({ "version": 1 })).await;
    assert_eq!(s, 404);
    let resp =
        gw.http.delete(gw.url("/v1/plugins/policy/versions/1")).bearer_auth(&b.admin_key).send().await.expect("req");
    assert_eq!(resp.status(), 404);
    // Service keys cannot manage plugins at all.
    let (s, _) = upload(&gw, &a.service_key, "policy", "policy_ddl_guard", "").await;
    assert_eq!(s, 403);
    let (s, _) = gw.get("/v1/plugins/policy", &a.service_key).await;
    assert_eq!(s, 403);
    let (s, _) = gw.get("/v1/plugins/policy", "").await;
    assert_eq!(s, 401);
    // A's list still has its one version, active.
    let (_, list) = gw.get("/v1/plugins/policy", &a.admin_key).await;
    assert_eq!(list["active_version"], 1, "{list}");
    gw.delete_tenant(&a.name).await;
    gw.delete_tenant(&b.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn reranker_reorders_search_and_fails_open() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("rr")).await;
    let call = |method: &'static str, path: String, body: Value| {
        let req =
            gw.http.request(method.parse().expect("method"), gw.url(&path)).bearer_auth(&t.service_key).json(&body);
        async move {
            let resp = req.send().await.expect("req");
            let s = resp.status().as_u16();
            (s, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, b) = call("PUT", "/v1/collections/docs".into(), json!({ "dimension": 3 })).await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = call(
        "POST",
        "/v1/collections/docs/points".into(),
        json!({ "points": [
            { "id": "near", "vector": [1, 0, 0], "metadata": {} },
            { "id": "mid", "vector": [0.8, 0.6, 0], "metadata": {} },
            { "id": "far", "vector": [0, 1, 0], "metadata": { "pinned": true } },
        ] }),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let ids = |b: &Value| -> Vec<String> {
        b["hits"].as_array().into_iter().flatten().filter_map(|h| h["id"].as_str().map(str::to_owned)).collect()
    };
    let search = json!({ "vector": [1, 0, 0], "k": 3 });
    let (_, plain) = call("POST", "/v1/collections/docs/search".into(), search.clone()).await;
    assert_eq!(ids(&plain), ["near", "mid", "far"], "{plain}");

    let resp = gw
        .http
        .put(gw.url("/v1/plugins/reranker?activate=true"))
        .bearer_auth(&t.admin_key)
        .header("x-sluice-plugin-config", r#"{"lambda": 1.0, "boost_field": "pinned", "boost": 10}"#)
        .body(plugin_wasm("reranker_mmr"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 201);
    let (s, b) = call("POST", "/v1/collections/docs/search".into(), search.clone()).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(ids(&b), ["far", "near", "mid"], "pinned boosted to the top: {b}");
    assert_eq!(b["reranker"]["version"], 1, "{b}");
    assert_eq!(b["reranker"]["applied"], true, "{b}");
    assert!(b["hits"][0].get("vector").is_none(), "vectors only when asked: {b}");

    // Opt out per request.
    let (_, b) =
        call("POST", "/v1/collections/docs/search".into(), json!({ "vector": [1, 0, 0], "k": 3, "rerank": false }))
            .await;
    assert_eq!(ids(&b), ["near", "mid", "far"], "{b}");
    assert!(b.get("reranker").is_none(), "{b}");

    // A trapping reranker fails open: original order, and says so.
    let (s, _) = upload(&gw, &t.admin_key, "reranker", "reranker_panic", "?activate=true").await;
    assert_eq!(s, 201);
    let (s, b) = call("POST", "/v1/collections/docs/search".into(), search).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(ids(&b), ["near", "mid", "far"], "{b}");
    assert_eq!(b["reranker"]["applied"], false, "{b}");
    assert!(b["reranker"]["error"].as_str().unwrap_or_default().contains("trapped"), "{b}");
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn retention_dry_run_then_capped_real_runs() {
    let mut cfg = config();
    cfg.retention.max_deletions_per_run = 3;
    let gw = Gateway::start_with(cfg).await;
    let t = gw.create_tenant(&unique("ret")).await;
    let bucket = format!("{}{}", gw.svc.config.s3.bucket_prefix, t.name);
    let s3 = gw.svc.s3.client();
    for i in 0..5 {
        s3.put_object()
            .bucket(&bucket)
            .key(format!("logs/{i}.txt"))
            .body(b"x".to_vec().into())
            .send()
            .await
            .expect("put");
    }
    s3.put_object()
        .bucket(&bucket)
        .key("contracts/keep.pdf")
        .metadata("legal-hold", "true")
        .body(b"y".to_vec().into())
        .send()
        .await
        .expect("put");

    // No plugin yet.
    let (s, _) = post(&gw, &t.admin_key, "/v1/retention/runs", json!({ "dry_run": true })).await;
    assert_eq!(s, 404);

    // max_age_days = 0: everything older than now goes, except legal holds.
    activate_max_age_zero(&gw, &t).await;
    tokio::time::sleep(Duration::from_millis(5)).await;

    let (s, dry) = post(&gw, &t.admin_key, "/v1/retention/runs", json!({ "dry_run": true })).await;
    assert_eq!(s, 200, "{dry}");
    assert_eq!(dry["status"], "succeeded", "{dry}");
    assert_eq!(dry["scanned"], 6, "{dry}");
    assert_eq!(dry["deleted"], 5, "dry run lists all that would go: {dry}");
    let count = |s3: aws_sdk_s3::Client, bucket: String| async move {
        s3.list_objects_v2().bucket(bucket).send().await.expect("list").key_count().unwrap_or(0)
    };
    assert_eq!(count(s3.clone(), bucket.clone()).await, 6, "dry run deletes nothing");

    let (s, run) = post(&gw, &t.admin_key, "/v1/retention/runs", json!({ "dry_run": false })).await;
    assert_eq!(s, 200, "{run}");
    assert_eq!((run["status"].as_str(), run["deleted"].as_u64()), (Some("capped"), Some(3)), "{run}");
    assert_eq!(count(s3.clone(), bucket.clone()).await, 3);
    let (_, run2) = post(&gw, &t.admin_key, "/v1/retention/runs", json!({ "dry_run": false })).await;
    assert_eq!((run2["status"].as_str(), run2["deleted"].as_u64()), (Some("succeeded"), Some(2)), "{run2}");
    let left = s3.list_objects_v2().bucket(&bucket).send().await.expect("list");
    let keys: Vec<&str> = left.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["contracts/keep.pdf"], "legal hold kept");

    // Every deletion audited; runs recorded.
    let (_, audit) = gw.get("/v1/audit?limit=200", &t.admin_key).await;
    let deletes = audit["entries"]
        .as_array()
        .or(audit.as_array())
        .into_iter()
        .flatten()
        .filter(|e| e["action"] == "retention.delete")
        .count();
    assert_eq!(deletes, 5);
    let c = gw.svc.control.client().await.expect("control");
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM retention_runs r JOIN tenants t ON t.id = r.tenant_id WHERE t.name = $1",
            &[&t.name],
        )
        .await
        .expect("runs")
        .get(0);
    assert_eq!(n, 3);

    // Age logic with the test endpoint and a fake clock.
    let day = 86_400_000i64;
    activate(&gw, &t, "retention", json!({ "version": 1, "config": { "max_age_days": 30 } })).await;
    let (s, out) = post(
        &gw,
        &t.admin_key,
        "/v1/plugins/retention/test",
        json!({ "input": { "now_ms": 100 * day, "items": [
            { "key": "old", "modified_ms": 10 * day },
            { "key": "new", "modified_ms": 90 * day },
            { "key": "held", "modified_ms": 10 * day, "metadata": { "legal-hold": "true" } },
        ] } }),
    )
    .await;
    assert_eq!(s, 200, "{out}");
    let actions: Vec<&str> =
        out["output"]["verdicts"].as_array().into_iter().flatten().filter_map(|v| v["action"].as_str()).collect();
    assert_eq!(actions, ["delete", "keep", "keep"], "{out}");
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// Per-tenant retention schedules: validated, audited, and the scheduler runs
/// a tenant when its own interval says so (the gateway default here is 0).
#[tokio::test]
async fn retention_schedule_per_tenant() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("sched")).await;
    let tenant_id = t.body["tenant"]["id"].as_str().and_then(|s| s.parse::<uuid::Uuid>().ok()).expect("tenant id");
    let (s, b) = gw.get("/v1/retention/schedule", &t.admin_key).await;
    assert_eq!((s, &b["interval_s"], &b["source"]), (200, &json!(0), &json!("default")), "{b}");
    let put = |body: Value| gw.http.put(gw.url("/v1/retention/schedule")).bearer_auth(&t.admin_key).json(&body).send();
    let r = put(json!({ "interval_s": 30 })).await.expect("request");
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert!(message(&body).contains("at least 60"), "{body}");
    let r = gw.http.put(gw.url("/v1/retention/schedule")).bearer_auth(&t.service_key).json(&json!({})).send().await;
    assert_eq!(r.expect("request").status(), 403, "service keys cannot change the schedule");

    // A retention plugin and one object; the tenant's own interval makes it due.
    activate_max_age_zero(&gw, &t).await;
    let r = gw.http.put(gw.url("/v1/objects/old.txt")).bearer_auth(&t.service_key).body("x").send().await;
    assert!(r.expect("put").status().is_success());
    tokio::time::sleep(Duration::from_millis(5)).await;
    let due = sluice::retention::run_due(&gw.svc, Duration::ZERO).await.expect("pass");
    assert!(!due.contains(&tenant_id), "no own schedule and default 0: never scheduled");

    let r = put(json!({ "interval_s": 60 })).await.expect("request");
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!((&body["interval_s"], &body["source"]), (&json!(60), &json!("tenant")), "{body}");
    let due = sluice::retention::run_due(&gw.svc, Duration::ZERO).await.expect("pass");
    assert!(due.contains(&tenant_id), "due on its own interval");
    let (s, _) = gw.get("/v1/objects/old.txt", &t.service_key).await;
    assert_eq!(s, 404, "the scheduled run deleted the old object");
    let due = sluice::retention::run_due(&gw.svc, Duration::ZERO).await.expect("pass");
    assert!(!due.contains(&tenant_id), "not again within the interval");

    let r = put(json!({ "interval_s": null })).await.expect("request");
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(body["source"], "default", "{body}");
    let (_, audit) = gw.get("/v1/audit?limit=100", &t.admin_key).await;
    let n = audit["entries"]
        .as_array()
        .or(audit.as_array())
        .into_iter()
        .flatten()
        .filter(|e| e["action"] == "retention.schedule")
        .count();
    assert_eq!(n, 2, "both changes audited");
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}
