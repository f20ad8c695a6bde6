//! The semantic cache against the real Redis: search results (miss → hit,
//! threshold, invalidation by writes, shared by instances, per tenant) and the
//! tenant cache API (round trip, TTL, namespace delete, cap, isolation).

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Gateway, TestTenant, call, config, error_code, unique};

/// A unit vector at cosine `c` to e0 in 8 dimensions (rotated towards e1).
fn at_cosine(c: f64) -> Value {
    let mut v = vec![0.0; 8];
    v[0] = c;
    v[1] = (1.0 - c * c).sqrt();
    json!(v)
}

async fn setup_collection(gw: &Gateway, t: &TestTenant) {
    let (s, v) = call(gw, t, "PUT", "/v1/collections/docs", Some(json!({ "dimension": 8 }))).await;
    assert_eq!(s, 201, "{v}");
    let pts: Vec<Value> = (0..20)
        .map(|i| {
            let mut v = vec![0.1; 8];
            v[i % 8] = 1.0 + i as f64;
            json!({ "id": format!("p{i}"), "vector": v, "metadata": { "n": i } })
        })
        .collect();
    let (s, v) = call(gw, t, "POST", "/v1/collections/docs/points", Some(json!({ "points": pts }))).await;
    assert_eq!(s, 200, "{v}");
}

async fn search(gw: &Gateway, t: &TestTenant, vector: Value) -> Value {
    let (s, v) =
        call(gw, t, "POST", "/v1/collections/docs/search", Some(json!({ "vector": vector, "k": 5, "cache": true })))
            .await;
    assert_eq!(s, 200, "{v}");
    v
}

fn status(v: &Value) -> &str {
    v["cache"]["status"].as_str().unwrap_or("none")
}

#[tokio::test]
async fn search_cache_hits_misses_and_invalidates() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("sc-search")).await;
    setup_collection(&gw, &t).await;

    let first = search(&gw, &t, at_cosine(1.0)).await;
    assert_eq!(status(&first), "miss", "{first}");
    let again = search(&gw, &t, at_cosine(1.0)).await;
    assert_eq!(status(&again), "hit", "{again}");
    assert!((again["cache"]["similarity"].as_f64().unwrap_or(0.0) - 1.0).abs() < 1e-5, "{again}");
    assert_eq!(again["hits"], first["hits"], "a hit serves the cached hits");

    let near = search(&gw, &t, at_cosine(0.99)).await;
    assert_eq!(status(&near), "hit", "cosine 0.99 ≥ 0.95: {near}");
    let sim = near["cache"]["similarity"].as_f64().unwrap_or(0.0);
    assert!((sim - 0.99).abs() < 1e-4, "similarity is exact: {sim}");

    let below = search(&gw, &t, at_cosine(0.94)).await;
    assert_eq!(status(&below), "miss", "cosine 0.94 < 0.95: {below}");
    assert!(below["cache"]["similarity"].as_f64().unwrap_or(1.0) < 0.95);

    // Other parameters are other scopes.
    let (_, other_k) = call(
        &gw,
        &t,
        "POST",
        "/v1/collections/docs/search",
        Some(json!({ "vector": at_cosine(1.0), "k": 6, "cache": true })),
    )
    .await;
    assert_eq!(status(&other_k), "miss", "k is part of the scope");
    let (_, uncached) =
        call(&gw, &t, "POST", "/v1/collections/docs/search", Some(json!({ "vector": at_cosine(1.0), "k": 5 }))).await;
    assert!(uncached.get("cache").is_none(), "no cache report without `cache`: {uncached}");

    // A write invalidates at once.
    let (s, _) = call(
        &gw,
        &t,
        "POST",
        "/v1/collections/docs/points",
        Some(json!({ "points": [{ "id": "new", "vector": at_cosine(1.0) }] })),
    )
    .await;
    assert_eq!(s, 200);
    let after = search(&gw, &t, at_cosine(1.0)).await;
    assert_eq!(status(&after), "miss", "{after}");
    assert_eq!(after["hits"][0]["id"], "new", "fresh results after the write");
    assert_eq!(status(&search(&gw, &t, at_cosine(1.0)).await), "hit");

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn search_cache_is_shared_by_instances_and_private_to_tenants() {
    let gw1 = Gateway::start().await;
    let gw2 = Gateway::start().await;
    let a = gw1.create_tenant(&unique("sc-a")).await;
    let b = gw1.create_tenant(&unique("sc-b")).await;
    setup_collection(&gw1, &a).await;
    setup_collection(&gw1, &b).await;
    assert_eq!(status(&search(&gw1, &a, at_cosine(1.0)).await), "miss");
    let on2 = search(&gw2, &a, at_cosine(1.0)).await;
    assert_eq!(status(&on2), "hit", "stored via instance 1, served by instance 2: {on2}");
    // Same collection name, data, version and vector — another tenant.
    assert_eq!(status(&search(&gw2, &b, at_cosine(1.0)).await), "miss");

    // The cache API too.
    let entry = json!({ "vector": at_cosine(1.0), "value": "a's secret" });
    let (s, _) = call(&gw1, &a, "POST", "/v1/semcache/shared/entries", Some(entry)).await;
    assert_eq!(s, 201);
    let (_, v) = call(&gw2, &b, "POST", "/v1/semcache/shared/lookup", Some(json!({ "vector": at_cosine(1.0) }))).await;
    assert_eq!(v, json!({ "hit": false }), "cross-tenant lookups never hit");
    let (_, v) = call(&gw2, &a, "POST", "/v1/semcache/shared/lookup", Some(json!({ "vector": at_cosine(1.0) }))).await;
    assert_eq!(v["value"], "a's secret");

    gw1.delete_tenant(&a.name).await;
    gw1.delete_tenant(&b.name).await;
    gw1.stop().await;
    gw2.stop().await;
}

#[tokio::test]
async fn semcache_api_round_trip_ttl_and_delete() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("sc-api")).await;
    let value = json!({ "answer": 42, "text": "forty-two" });
    let (s, v) = call(
        &gw,
        &t,
        "POST",
        "/v1/semcache/answers/entries",
        Some(json!({ "vector": at_cosine(1.0), "value": value })),
    )
    .await;
    assert_eq!((s, v["ttl"].as_u64()), (201, Some(3600)), "{v}");
    let lookup = |vector: Value, threshold: Option<f64>| {
        let mut body = json!({ "vector": vector });
        if let Some(th) = threshold {
            body["threshold"] = json!(th);
        }
        call(&gw, &t, "POST", "/v1/semcache/answers/lookup", Some(body))
    };
    let (s, v) = lookup(at_cosine(0.98), None).await;
    assert_eq!((s, &v["hit"], &v["value"]), (200, &json!(true), &value), "{v}");
    assert!((v["similarity"].as_f64().unwrap_or(0.0) - 0.98).abs() < 1e-4);
    let (_, v) = lookup(at_cosine(0.9), None).await;
    assert_eq!(v, json!({ "hit": false }), "0.9 < default 0.95");
    let (_, v) = lookup(at_cosine(0.9), Some(0.85)).await;
    assert_eq!(v["hit"], true, "a lower threshold finds it (multi-probe): {v}");
    let (_, v) = call(&gw, &t, "POST", "/v1/semcache/other/lookup", Some(json!({ "vector": at_cosine(1.0) }))).await;
    assert_eq!(v["hit"], false, "namespaces are separate");

    // TTL.
    let (s, _) = call(
        &gw,
        &t,
        "POST",
        "/v1/semcache/short/entries",
        Some(json!({ "vector": at_cosine(1.0), "value": 1, "ttl": 1 })),
    )
    .await;
    assert_eq!(s, 201);
    let (_, v) = call(&gw, &t, "POST", "/v1/semcache/short/lookup", Some(json!({ "vector": at_cosine(1.0) }))).await;
    assert_eq!(v["hit"], true);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (_, v) = call(&gw, &t, "POST", "/v1/semcache/short/lookup", Some(json!({ "vector": at_cosine(1.0) }))).await;
    assert_eq!(v["hit"], false, "expired after its TTL");

    // Namespace delete.
    let (s, v) = call(&gw, &t, "DELETE", "/v1/semcache/answers", None).await;
    assert_eq!((s, v["deleted"].as_u64()), (200, Some(1)), "{v}");
    let (_, v) = lookup(at_cosine(1.0), None).await;
    assert_eq!(v["hit"], false);

    // Bad input.
    let (s, e) = call(&gw, &t, "POST", "/v1/semcache/bad:ns/lookup", Some(json!({ "vector": [1.0] }))).await;
    assert_eq!((s, error_code(&e)), (400, "bad_request"), "{e}");
    let big = "x".repeat(300 * 1024);
    let (s, e) =
        call(&gw, &t, "POST", "/v1/semcache/answers/entries", Some(json!({ "vector": [1.0], "value": big }))).await;
    assert_eq!((s, error_code(&e)), (413, "payload_too_large"), "{e}");
    let (s, _) = lookup(at_cosine(1.0), Some(1.5)).await;
    assert_eq!(s, 400);

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn tenant_memory_cap_evicts_oldest() {
    let mut cfg = config();
    cfg.cache.max_bytes_per_tenant = 8 * 1024;
    let gw = Gateway::start_with(cfg).await;
    let t = gw.create_tenant(&unique("sc-cap")).await;
    let filler = "y".repeat(1000);
    for i in 0..20 {
        let mut v = vec![0.0; 8];
        v[i % 8] = 1.0;
        v[(i + 1) % 8] = i as f64;
        let (s, e) = call(
            &gw,
            &t,
            "POST",
            &format!("/v1/semcache/ns{i}/entries"),
            Some(json!({ "vector": v, "value": filler, "ttl": 60 + i })),
        )
        .await;
        assert_eq!(s, 201, "{e}");
    }
    let lookup = async |i: usize| {
        let mut v = vec![0.0; 8];
        v[i % 8] = 1.0;
        v[(i + 1) % 8] = i as f64;
        call(&gw, &t, "POST", &format!("/v1/semcache/ns{i}/lookup"), Some(json!({ "vector": v }))).await
    };
    assert_eq!(lookup(0).await.1["hit"], false, "the oldest entry was evicted");
    assert_eq!(lookup(19).await.1["hit"], true, "the newest stays");
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.lines().any(|l| l.starts_with("sluice_semcache_evictions_total") && l.contains(&t.name)),
        "eviction metric"
    );
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}
