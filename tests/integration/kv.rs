//! Key/value over HTTP (`/v1/kv/…`) against real Redis: round trips, TTLs,
//! size caps, key rules, isolation between tenants, and Redis being down.

use serde_json::Value;

use crate::support::{Gateway, config, error_code, unique};

fn kv(key: &str) -> String {
    format!("/v1/kv/{key}")
}

async fn put(gw: &Gateway, token: &str, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let resp = gw.http.put(gw.url(path)).bearer_auth(token).body(body).send().await.expect("put");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// (status, body bytes, x-sluice-ttl)
async fn get(gw: &Gateway, token: &str, key: &str) -> (u16, bytes::Bytes, Option<u64>) {
    let resp = gw.http.get(gw.url(&kv(key))).bearer_auth(token).send().await.expect("get");
    let status = resp.status().as_u16();
    let ttl = resp.headers().get("x-sluice-ttl").and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok());
    (status, resp.bytes().await.expect("body"), ttl)
}

async fn delete(gw: &Gateway, token: &str, key: &str) -> u16 {
    gw.http.delete(gw.url(&kv(key))).bearer_auth(token).send().await.expect("delete").status().as_u16()
}

#[tokio::test]
async fn kv_put_get_delete() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("kv-rt")).await;
    let k = &t.service_key;
    let value: Vec<u8> = vec![0, 1, 2, 0xff, 0xfe, b'\n', 0];

    assert_eq!(put(&gw, k, &kv("bin/value"), value.clone()).await.0, 204);
    let resp = gw.http.get(gw.url(&kv("bin/value"))).bearer_auth(k).send().await.expect("get");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert!(resp.headers().get("x-sluice-ttl").is_none());
    assert_eq!(&resp.bytes().await.expect("body")[..], &value[..]);

    // The entry lives under the tenant's own Redis prefix.
    let tenant_id = t.body["tenant"]["id"].as_str().expect("tenant id");
    let redis_key = format!("{}:t:{tenant_id}:kv:bin/value", gw.svc.config.redis.key_prefix);
    let mut c = gw.svc.redis.conn().await.expect("redis");
    let stored: Option<Vec<u8>> = redis::cmd("GET").arg(&redis_key).query_async(&mut c).await.expect("GET");
    assert_eq!(stored.as_deref(), Some(&value[..]));

    // Overwrite; empty values are values too.
    assert_eq!(put(&gw, k, &kv("bin/value"), "second").await.0, 204);
    assert_eq!(&get(&gw, k, "bin/value").await.1[..], b"second");
    assert_eq!(put(&gw, k, &kv("empty"), "").await.0, 204);
    assert_eq!(get(&gw, k, "empty").await.0, 200);

    assert_eq!(delete(&gw, k, "bin/value").await, 204);
    let (status, body, _) = get(&gw, k, "bin/value").await;
    assert_eq!(status, 404);
    let body: Value = serde_json::from_slice(&body).expect("json error");
    assert_eq!(error_code(&body), "not_found");
    assert_eq!(delete(&gw, k, "bin/value").await, 404);

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn kv_ttl_expires_entries() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("kv-ttl")).await;
    let k = &t.service_key;

    assert_eq!(put(&gw, k, &kv("short?ttl=1"), "soon gone").await.0, 204);
    let (status, body, ttl) = get(&gw, k, "short").await;
    assert_eq!((status, &body[..]), (200, &b"soon gone"[..]));
    assert!(ttl.is_some_and(|s| s <= 1), "{ttl:?}");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(get(&gw, k, "short").await.0, 404);

    // A long TTL is reported; a later PUT without one makes the entry permanent.
    assert_eq!(put(&gw, k, &kv("long?ttl=3600"), "v").await.0, 204);
    assert!(get(&gw, k, "long").await.2.is_some_and(|s| (3590..=3600).contains(&s)));
    assert_eq!(put(&gw, k, &kv("long"), "v2").await.0, 204);
    assert_eq!(get(&gw, k, "long").await.2, None);

    for bad in ["ttl=0", "ttl=31536001", "ttl=-1", "ttl=abc", "expire=5"] {
        let (status, body) = put(&gw, k, &format!("{}?{bad}", kv("x")), "v").await;
        assert_eq!((status, error_code(&body)), (400, "bad_request"), "{bad}");
    }
    assert_eq!(put(&gw, k, &kv("max?ttl=31536000"), "v").await.0, 204);

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn kv_oversized_values_are_413_and_bad_keys_400() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("kv-size")).await;
    let k = &t.service_key;

    // Default cap (1 MiB): Content-Length one byte over.
    let (status, body) = put(&gw, k, &kv("big"), vec![0u8; (1 << 20) + 1]).await;
    assert_eq!((status, error_code(&body)), (413, "payload_too_large"), "{body}");
    assert_eq!(put(&gw, k, &kv("big"), vec![0u8; 1 << 20]).await.0, 204);

    // A lowered cap, declared and chunked.
    gw.set_quota(&t.name, "max_kv_value_bytes", 10).await;
    assert_eq!(put(&gw, k, &kv("small"), "0123456789").await.0, 204);
    let (status, body) = put(&gw, k, &kv("small2"), "0123456789A").await;
    assert_eq!((status, error_code(&body)), (413, "payload_too_large"), "{body}");
    let chunks: Vec<Result<&'static str, std::io::Error>> = vec![Ok("012345"), Ok("6789A")];
    let (status, body) = put(&gw, k, &kv("small3"), reqwest::Body::wrap_stream(futures::stream::iter(chunks))).await;
    assert_eq!((status, error_code(&body)), (413, "payload_too_large"), "{body}");
    assert_eq!(get(&gw, k, "small2").await.0, 404);
    assert_eq!(get(&gw, k, "small3").await.0, 404);

    // Keys: 1..=512 bytes, no control characters.
    let long = "k".repeat(513);
    for (key, needle) in [(long.as_str(), "513 bytes"), ("a%0Ab", "control character"), ("a%7Fb", "control character")]
    {
        let (status, body) = put(&gw, k, &kv(key), "v").await;
        assert_eq!((status, error_code(&body)), (400, "bad_request"), "{key}");
        let msg = body["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains(needle), "{key}: {msg:?}");
        assert_eq!(get(&gw, k, key).await.0, 400);
        assert_eq!(delete(&gw, k, key).await, 400);
    }
    assert_eq!(put(&gw, k, &kv(&"k".repeat(512)), "v").await.0, 204);

    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn kv_is_isolated_between_tenants() {
    let gw = Gateway::start().await;
    let a = gw.create_tenant(&unique("kv-iso-a")).await;
    let b = gw.create_tenant(&unique("kv-iso-b")).await;
    let (ka, kb) = (&a.service_key, &b.service_key);

    assert_eq!(put(&gw, ka, &kv("shared/key"), "A's value").await.0, 204);
    assert_eq!(put(&gw, kb, &kv("shared/key"), "B's value").await.0, 204);
    assert_eq!(&get(&gw, ka, "shared/key").await.1[..], b"A's value");
    assert_eq!(&get(&gw, kb, "shared/key").await.1[..], b"B's value");

    // Keys that look like another tenant's Redis key are plain keys of A.
    let b_id = b.body["tenant"]["id"].as_str().expect("tenant id");
    let lookalike = format!("{}:t:{b_id}:kv:shared/key", gw.svc.config.redis.key_prefix);
    assert_eq!(get(&gw, ka, &lookalike).await.0, 404);
    assert_eq!(get(&gw, ka, "..%2Fshared%2Fkey").await.0, 404);

    assert_eq!(delete(&gw, ka, "shared/key").await, 204);
    assert_eq!(get(&gw, ka, "shared/key").await.0, 404);
    assert_eq!(&get(&gw, kb, "shared/key").await.1[..], b"B's value");
    assert_eq!(delete(&gw, ka, "shared/key").await, 404);

    gw.delete_tenant(&a.name).await;
    gw.delete_tenant(&b.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn kv_redis_down_is_503_with_retry_after() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("kv-down")).await;
    let mut cfg = config();
    cfg.redis.url = "redis://127.0.0.1:1".to_string().into();
    let down = Gateway::start_with(cfg).await;
    for method in [reqwest::Method::GET, reqwest::Method::PUT, reqwest::Method::DELETE] {
        let resp =
            down.http.request(method.clone(), down.url(&kv("k"))).bearer_auth(&t.service_key).body("v").send().await;
        let resp = resp.expect("request");
        assert_eq!(resp.status(), 503, "{method}");
        assert_eq!(resp.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
        let body: Value = resp.json().await.expect("json");
        assert_eq!(error_code(&body), "upstream_unavailable");
    }
    down.stop().await;
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}
