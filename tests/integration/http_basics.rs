//! Health, readiness, metrics, request ids, error shape, body limits, shutdown.

use serde_json::Value;

use crate::support::{Gateway, config, error_code};

#[tokio::test]
async fn health_and_readiness_with_all_services_up() {
    let gw = Gateway::start().await;
    let (status, body) = gw.get("/healthz", "").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = gw.get("/readyz", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    for svc in ["postgres", "redis", "object_store"] {
        assert_eq!(body["checks"][svc]["ok"], true, "{svc}: {body}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn readiness_names_the_service_that_is_down() {
    let mut cfg = config();
    // Nothing listens on port 1 of loopback.
    cfg.redis.url = "redis://127.0.0.1:1".to_string().into();
    cfg.s3.endpoint = "http://127.0.0.1:1".into();
    let gw = Gateway::start_with(cfg).await;
    let (status, body) = gw.get("/readyz", "").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unready");
    let down: Vec<&str> = body["down"].as_array().expect("down").iter().filter_map(Value::as_str).collect();
    assert_eq!(down, vec!["redis", "object_store"]);
    assert_eq!(body["checks"]["postgres"]["ok"], true);
    gw.stop().await;
}

#[tokio::test]
async fn request_ids_and_error_shape() {
    let gw = Gateway::start().await;
    let resp = gw.http.get(gw.url("/healthz")).send().await.expect("req");
    let id = resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert_eq!(id.len(), 32, "generated request id");

    let resp = gw.http.get(gw.url("/healthz")).header("x-request-id", "trace-abc.123").send().await.expect("req");
    assert_eq!(resp.headers()["x-request-id"], "trace-abc.123", "a sane incoming id is kept");
    let resp = gw.http.get(gw.url("/healthz")).header("x-request-id", "bad id with spaces").send().await.expect("req");
    assert_ne!(resp.headers()["x-request-id"], "bad id with spaces");

    let resp = gw.http.get(gw.url("/no/such/route")).send().await.expect("req");
    assert_eq!(resp.status(), 404);
    let rid = resp.headers()["x-request-id"].to_str().expect("ascii").to_owned();
    let body: Value = resp.json().await.expect("json");
    assert_eq!(error_code(&body), "not_found");
    assert_eq!(body["error"]["request_id"], rid.as_str(), "body and header carry the same id");

    let resp = gw.http.put(gw.url("/healthz")).send().await.expect("req");
    assert_eq!(resp.status(), 405);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(error_code(&body), "method_not_allowed");
    gw.stop().await;
}

#[tokio::test]
async fn bad_bodies_get_precise_errors() {
    let gw = Gateway::start().await;
    let op = gw.operator_token();
    let post = |body: Vec<u8>, ctype: &'static str| {
        gw.http.post(gw.url("/admin/v1/tenants")).bearer_auth(&op).header("content-type", ctype).body(body).send()
    };
    let resp = post(b"{\"name\": ".to_vec(), "application/json").await.expect("req");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("malformed JSON"), "{body}");

    let resp = post(b"name=x".to_vec(), "application/x-www-form-urlencoded").await.expect("req");
    assert_eq!(resp.status(), 415);

    let resp = post(b"\xff\xfe".to_vec(), "application/json").await.expect("req");
    assert_eq!(resp.status(), 400);

    let big = format!("{{\"name\": \"{}\"}}", "a".repeat(2 << 20));
    let resp = post(big.into_bytes(), "application/json").await.expect("req");
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(error_code(&body), "payload_too_large");
    gw.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_per_route_and_tenant() {
    let gw = Gateway::start().await;
    gw.get("/healthz", "").await;
    gw.get("/v1/tenant", "slk_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb").await;
    let text = gw.metrics_text().await;
    assert!(text.contains("sluice_http_requests_total"), "{text}");
    assert!(text.contains("route=\"/healthz\""), "{text}");
    assert!(text.contains("status=\"401\""), "{text}");
    gw.stop().await;
}

/// Issue 12, item 7: the metrics name tenants, so the HTTP door serves them
/// to the operator only; `server.metrics_addr` serves them without a token on
/// a separate (private) address, and nothing else there.
#[tokio::test]
async fn metrics_need_the_operator_token_or_their_own_address() {
    let gw = Gateway::start().await;
    gw.get("/healthz", "").await;
    assert_eq!(gw.metrics_addr, None, "no metrics listener by default");
    let (status, body) = gw.get("/metrics", "").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(error_code(&body), "unauthenticated");
    let tenant_key = "slk_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let resp = gw.http.get(gw.url("/metrics")).bearer_auth(tenant_key).send().await.expect("req");
    assert_eq!(resp.status(), 401, "a tenant key is not the operator token");
    assert!(gw.metrics_text().await.contains("sluice_http_requests_total"));
    gw.stop().await;

    let mut cfg = crate::support::config();
    cfg.server.metrics_addr = "127.0.0.1:0".into();
    let gw = Gateway::start_with(cfg).await;
    gw.get("/healthz", "").await;
    let addr = gw.metrics_addr.expect("metrics listener");
    let resp = gw.http.get(format!("http://{addr}/metrics")).send().await.expect("req");
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.expect("text").contains("sluice_http_requests_total"));
    let resp = gw.http.get(format!("http://{addr}/v1/tenant")).send().await.expect("req");
    assert_eq!(resp.status(), 404, "only /metrics on the metrics address");
    // The HTTP door still wants the token.
    assert_eq!(gw.get("/metrics", "").await.0, 401);
    gw.stop().await;
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let gw = Gateway::start().await;
    let url = gw.url("/healthz");
    let (status, _) = gw.get("/healthz", "").await;
    assert_eq!(status, 200);
    let client = gw.http.clone();
    gw.stop().await;
    assert!(client.get(&url).send().await.is_err(), "no longer accepting after shutdown");
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&crate::support::unique("drain")).await;
    let http = gw.http.clone();
    let url = gw.url("/v1/sql");
    let key = t.service_key.clone();
    // A request that is still running when shutdown starts...
    let slow = tokio::spawn(async move {
        let resp = http
            .post(url)
            .bearer_auth(key)
            .json(&serde_json::json!({ "sql": "SELECT pg_sleep(1.5), 'done' AS status" }))
            .send()
            .await
            .expect("request");
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let svc = gw.svc.clone();
    let name = t.name.clone();
    gw.stop().await;
    // ...completes normally: shutdown waited for it.
    let (status, body) = slow.await.expect("join");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0][1], "done");
    crate::support::delete_tenant_after_stop(&svc, &name).await;
}
