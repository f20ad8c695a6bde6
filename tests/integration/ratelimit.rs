//! Rate limits against the real Redis: bursts, 429 headers, isolation between
//! tenants, two instances sharing one limit, per-key overrides, the connection
//! cap, and the local fallback when Redis is unreachable.

use std::time::{Duration, Instant};

use sluice::config::FailMode;
use sluice::pipeline::auth::authenticate_key;

use crate::support::{Gateway, TestTenant, config, error_code, unique};

/// Set a tenant's HTTP rate and burst in the control plane (no restart).
async fn set_http_limit(gw: &Gateway, tenant: &str, rps: i32, burst: i32) {
    let c = gw.svc.control.client().await.expect("control");
    let n = c
        .execute(
            "UPDATE quotas SET http_rps = $2, http_burst = $3 WHERE tenant_id = (SELECT id FROM tenants WHERE name = $1)",
            &[&tenant, &rps, &burst],
        )
        .await
        .expect("update quotas");
    assert_eq!(n, 1);
}

/// `GET /v1/tenant` once; returns (status, headers).
async fn whoami(gw: &Gateway, key: &str) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let resp = gw.http.get(gw.url("/v1/tenant")).bearer_auth(key).send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap_or_default())
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Send `n` requests in turn (spread over the given gateways); count 200s and
/// check every refusal is a well-formed 429.
async fn burst(gws: &[&Gateway], key: &str, n: usize) -> usize {
    let mut ok = 0;
    for i in 0..n {
        let (s, h, body) = whoami(gws[i % gws.len()], key).await;
        match s {
            200 => ok += 1,
            429 => {
                assert_eq!(error_code(&body), "rate_limited", "{body}");
                let retry: u64 = header(&h, "retry-after").parse().expect("Retry-After is whole seconds");
                assert!(retry >= 1, "Retry-After {retry}");
                assert!(header(&h, "ratelimit-policy").starts_with("\"http\";q="), "{h:?}");
                assert!(header(&h, "ratelimit").starts_with("\"http\";r=0;t="), "{h:?}");
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    ok
}

#[tokio::test]
async fn burst_is_limited_with_headers_and_other_tenants_are_not() {
    let gw = Gateway::start().await;
    let a = gw.create_tenant(&unique("rl-a")).await;
    let b = gw.create_tenant(&unique("rl-b")).await;
    set_http_limit(&gw, &a.name, 5, 5).await;

    let (s, h, _) = whoami(&gw, &a.service_key).await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "ratelimit-policy"), "\"http\";q=5;w=1", "success carries the policy");
    assert!(header(&h, "ratelimit").starts_with("\"http\";r=4;t="), "{h:?}");

    let admitted = 1 + burst(&[&gw], &a.service_key, 29).await;
    assert!((5..=7).contains(&admitted), "admitted {admitted} of 30 at 5/s with burst 5");

    // B is untouched by A's exhaustion.
    assert_eq!(burst(&[&gw], &b.service_key, 20).await, 20);

    // Quota changes apply without a restart.
    set_http_limit(&gw, &a.name, 1000, 1000).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(burst(&[&gw], &a.service_key, 10).await, 10);

    gw.delete_tenant(&a.name).await;
    gw.delete_tenant(&b.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn two_instances_share_one_limit() {
    let gw1 = Gateway::start().await;
    let gw2 = Gateway::start().await;
    let t = gw1.create_tenant(&unique("rl-two")).await;
    set_http_limit(&gw1, &t.name, 5, 5).await;
    let admitted = burst(&[&gw1, &gw2], &t.service_key, 30).await;
    assert!((5..=7).contains(&admitted), "admitted {admitted} across two instances");
    gw1.delete_tenant(&t.name).await;
    gw1.stop().await;
    gw2.stop().await;
}

#[tokio::test]
async fn per_key_override_has_its_own_bucket() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("rl-key")).await;
    let key_id: uuid::Uuid = t.body["service_key"]["id"].as_str().expect("key id").parse().expect("uuid");
    let c = gw.svc.control.client().await.expect("control");
    c.execute("INSERT INTO key_limits (key_id, http_rps, http_burst) VALUES ($1, 2, 2)", &[&key_id])
        .await
        .expect("insert override");
    let (_, h, _) = whoami(&gw, &t.service_key).await;
    assert_eq!(header(&h, "ratelimit-policy"), "\"http\";q=2;w=1");
    let admitted = 1 + burst(&[&gw], &t.service_key, 14).await;
    assert!((2..=3).contains(&admitted), "service key admitted {admitted} at 2/s burst 2");
    // The admin key has no override: the tenant's default limit.
    assert_eq!(burst(&[&gw], &t.admin_key, 15).await, 15);
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn connection_cap_is_shared_and_released() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("rl-conn")).await;
    let c = gw.svc.control.client().await.expect("control");
    c.execute(
        "UPDATE quotas SET pg_max_connections = 2 WHERE tenant_id = (SELECT id FROM tenants WHERE name = $1)",
        &[&t.name],
    )
    .await
    .expect("update quotas");
    let p = authenticate_key(&gw.svc.control, &t.service_key).await.expect("auth");
    let first = gw.svc.ratelimit.acquire_connection(&p).await.expect("first");
    let _second = gw.svc.ratelimit.acquire_connection(&p).await.expect("second");
    let err = gw.svc.ratelimit.acquire_connection(&p).await.expect_err("third is over the cap");
    assert_eq!(err.sqlstate(), "53300");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match gw.svc.ratelimit.acquire_connection(&p).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "slot not released: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// A gateway whose Redis URL points at a closed loopback port.
async fn gateway_without_redis(mode: FailMode) -> Gateway {
    let mut cfg = config();
    cfg.redis.url = "redis://127.0.0.1:1".to_owned().into();
    cfg.ratelimit.fail_mode = mode;
    Gateway::start_with(cfg).await
}

async fn limited_tenant(gw: &Gateway) -> TestTenant {
    let t = gw.create_tenant(&unique("rl-down")).await;
    set_http_limit(gw, &t.name, 5, 5).await;
    t
}

#[tokio::test]
async fn redis_down_falls_back_to_local_limits() {
    let gw = Gateway::start().await;
    let t = limited_tenant(&gw).await;
    let down = gateway_without_redis(FailMode::Open).await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let (s, _, body) = whoami(&down, &t.service_key).await;
        let took = started.elapsed();
        assert!(took < Duration::from_millis(500), "decision took {took:?}");
        assert!(s == 200 || s == 429, "no 5xx while Redis is down: {s} {body}");
        statuses.push(s);
    }
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert!((5..=7).contains(&admitted), "local fallback admitted {admitted}: {statuses:?}");
    let metrics = down.http.get(down.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    let fallback = metrics
        .lines()
        .filter(|l| l.starts_with("sluice_ratelimit_decisions_total") && l.contains(&t.name))
        .filter(|l| l.contains("outcome=\"fallback_allowed\"") || l.contains("outcome=\"fallback_limited\""))
        .count();
    assert_eq!(fallback, 2, "fallback metrics recorded:\n{metrics}");
    down.stop().await;
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn redis_down_fail_closed_refuses() {
    let gw = Gateway::start().await;
    let t = limited_tenant(&gw).await;
    let down = gateway_without_redis(FailMode::Closed).await;
    for _ in 0..3 {
        let started = Instant::now();
        let (s, h, body) = whoami(&down, &t.service_key).await;
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!((s, error_code(&body)), (429, "rate_limited"), "{body}");
        assert!(header(&h, "retry-after").parse::<u64>().is_ok(), "{h:?}");
    }
    down.stop().await;
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}
