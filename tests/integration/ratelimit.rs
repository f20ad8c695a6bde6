//! Rate limits against the real Redis: bursts, 429 headers, isolation between
//! tenants, two instances sharing one limit, per-key overrides, the connection
//! cap, accuracy at 10× the limit across two instances (open loop, and
//! closed loop on a saturated machine), and the local fallback when Redis is
//! unreachable (divided by the live instances; recovery when it returns).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice::config::FailMode;
use sluice::pipeline::auth::authenticate_key;
use sluice::ratelimit::{Class, RateLimiter, Source};
use sluice::secret::ExposeSecret;

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
/// check every refusal is a well-formed 429. Returns (admitted, elapsed).
async fn burst(gws: &[&Gateway], key: &str, n: usize) -> (usize, Duration) {
    let started = Instant::now();
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
    (ok, started.elapsed())
}

/// GCRA admits the burst, then the rate: at most burst + rate × elapsed (+1
/// for the boundary), at least the burst, and some requests were refused.
fn assert_admitted(admitted: usize, n: usize, rate: f64, burst: usize, elapsed: Duration) {
    let most = burst + (rate * elapsed.as_secs_f64()).floor() as usize + 1;
    assert!(
        (burst..=most).contains(&admitted) && admitted < n,
        "admitted {admitted} of {n} in {elapsed:?} at {rate}/s with burst {burst} (at most {most})"
    );
}

/// A gateway whose decisions wait up to 1 s for Redis: these tests are about
/// the shared limit, not the fallback (a loaded test machine can take > 50 ms).
async fn patient_gateway() -> Gateway {
    let mut cfg = config();
    cfg.ratelimit.redis_timeout_ms = 1_000;
    Gateway::start_with(cfg).await
}

#[tokio::test]
async fn burst_is_limited_with_headers_and_other_tenants_are_not() {
    let gw = patient_gateway().await;
    let a = gw.create_tenant(&unique("rl-a")).await;
    let b = gw.create_tenant(&unique("rl-b")).await;
    set_http_limit(&gw, &a.name, 5, 5).await;

    let started = Instant::now();
    let (s, h, _) = whoami(&gw, &a.service_key).await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "ratelimit-policy"), "\"http\";q=5;w=1", "success carries the policy");
    assert!(header(&h, "ratelimit").starts_with("\"http\";r=4;t="), "{h:?}");

    let (admitted, _) = burst(&[&gw], &a.service_key, 29).await;
    assert_admitted(admitted + 1, 30, 5.0, 5, started.elapsed());

    // B is untouched by A's exhaustion.
    assert_eq!(burst(&[&gw], &b.service_key, 20).await.0, 20);

    // Quota changes apply without a restart.
    set_http_limit(&gw, &a.name, 1000, 1000).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(burst(&[&gw], &a.service_key, 10).await.0, 10);

    gw.delete_tenant(&a.name).await;
    gw.delete_tenant(&b.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn two_instances_share_one_limit() {
    let gw1 = patient_gateway().await;
    let gw2 = patient_gateway().await;
    let t = gw1.create_tenant(&unique("rl-two")).await;
    set_http_limit(&gw1, &t.name, 5, 5).await;
    let (admitted, elapsed) = burst(&[&gw1, &gw2], &t.service_key, 30).await;
    assert_admitted(admitted, 30, 5.0, 5, elapsed);
    gw1.delete_tenant(&t.name).await;
    gw1.stop().await;
    gw2.stop().await;
}

#[tokio::test]
async fn per_key_override_has_its_own_bucket() {
    let gw = patient_gateway().await;
    let t = gw.create_tenant(&unique("rl-key")).await;
    let key_id: uuid::Uuid = t.body["service_key"]["id"].as_str().expect("key id").parse().expect("uuid");
    let c = gw.svc.control.client().await.expect("control");
    c.execute("INSERT INTO key_limits (key_id, http_rps, http_burst) VALUES ($1, 2, 2)", &[&key_id])
        .await
        .expect("insert override");
    let started = Instant::now();
    let (_, h, _) = whoami(&gw, &t.service_key).await;
    assert_eq!(header(&h, "ratelimit-policy"), "\"http\";q=2;w=1");
    let (admitted, _) = burst(&[&gw], &t.service_key, 14).await;
    assert_admitted(admitted + 1, 15, 2.0, 2, started.elapsed());
    // The admin key has no override: the tenant's default limit.
    assert_eq!(burst(&[&gw], &t.admin_key, 15).await.0, 15);
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
    let all = Instant::now();
    for _ in 0..20 {
        let started = Instant::now();
        let (s, _, body) = whoami(&down, &t.service_key).await;
        let took = started.elapsed();
        assert!(took < Duration::from_millis(500), "decision took {took:?}");
        assert!(s == 200 || s == 429, "no 5xx while Redis is down: {s} {body}");
        statuses.push(s);
    }
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert_admitted(admitted, 20, 5.0, 5, all.elapsed());
    let metrics = down.metrics_text().await;
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

/// A synthetic principal (the limiter needs only ids and quotas).
fn principal(name: &str, rps: i32, burst: i32) -> sluice::pipeline::auth::Principal {
    let mut quotas = sluice::control::quotas::Quotas::from(&sluice::config::QuotaDefaults::default());
    quotas.http_rps = rps;
    quotas.http_burst = burst;
    sluice::pipeline::auth::Principal {
        tenant_id: sluice::ids::TenantId::new_random(),
        tenant: sluice::ids::TenantName::parse(&unique(name)).expect("name"),
        key_id: uuid::Uuid::new_v4(),
        key_prefix: sluice::ids::KeyPrefix("testtesttest".into()),
        role: sluice::ids::KeyRole::Service,
        quotas,
        key_limits: Default::default(),
        usage: Default::default(),
        db: Default::default(),
    }
}

fn limiter(redis_url: &str, breaker_ms: u64) -> RateLimiter {
    limiter_in(redis_url, breaker_ms, &config().redis.key_prefix)
}

/// A limiter whose gateway keys (the instance heartbeats) live under `prefix`.
fn limiter_in(redis_url: &str, breaker_ms: u64, prefix: &str) -> RateLimiter {
    let mut cfg = config();
    cfg.redis.url = redis_url.to_owned().into();
    cfg.redis.key_prefix = prefix.to_owned();
    cfg.ratelimit.breaker_ms = breaker_ms;
    let redis = sluice::upstream::redis::RedisStore::new(&cfg.redis).expect("redis client");
    RateLimiter::new(redis, cfg.ratelimit)
}

/// Two instances (two limiters, two Redis connections), one tenant at 100/s
/// with burst 100 driven at ~1000/s for 5 s: admitted = 100 × 5 + 100 ± 2%.
/// A second tenant at 50/s meanwhile is never refused.
#[tokio::test]
async fn accuracy_across_two_instances() {
    let url = config().redis.url.expose_secret().to_owned();
    let (l1, l2) = (limiter(&url, 1000), limiter(&url, 1000));
    let redis = sluice::upstream::redis::RedisStore::new(&config().redis).expect("redis");
    two_instance_accuracy(&l1, &l2, &redis).await;
}

/// The body of [`accuracy_across_two_instances`], for any two limiters on
/// the same Redis (`redis` cleans up after).
pub async fn two_instance_accuracy(l1: &RateLimiter, l2: &RateLimiter, redis: &sluice::upstream::redis::RedisStore) {
    let hot = principal("rl-hot", 100, 100);
    let calm = principal("rl-calm", 100, 100);
    // Warm both instances (connection made, script loaded), as a running gateway is.
    let warm = principal("rl-warm", 1000, 1000);
    for l in [l1, l2] {
        assert_eq!(l.decide(&warm, Class::Http, 1, false).await.source, Source::Redis);
    }
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(5) {
        tick.tick().await;
        let l = if sent.is_multiple_of(2) { l1.clone() } else { l2.clone() };
        let p = hot.clone();
        tasks.spawn(async move { (0, l.decide(&p, Class::Http, 1, false).await) });
        if sent.is_multiple_of(20) {
            let (l, p) = (l1.clone(), calm.clone());
            tasks.spawn(async move { (1, l.decide(&p, Class::Http, 1, false).await) });
        }
        sent += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (mut admitted, mut calm_refused, mut fallback) = (0u64, 0u64, 0u64);
    while let Some(r) = tasks.join_next().await {
        let (who, d) = r.expect("task");
        fallback += u64::from(d.source != Source::Redis);
        match who {
            0 => admitted += u64::from(d.outcome.allowed),
            _ => calm_refused += u64::from(!d.outcome.allowed),
        }
    }
    let expected = 100.0 * elapsed + 100.0;
    let error = (admitted as f64 - expected) / expected;
    eprintln!(
        "accuracy: sent {sent} in {elapsed:.2} s ({:.0}/s), admitted {admitted}, expected {expected:.0} ({:+.2}%)",
        sent as f64 / elapsed,
        error * 100.0
    );
    assert_eq!(fallback, 0, "every decision came from Redis");
    assert!(sent as f64 / elapsed > 500.0, "driven at {:.0}/s", sent as f64 / elapsed);
    assert!(error.abs() <= 0.02, "admitted {admitted}, expected {expected:.0} ({:+.2}%)", error * 100.0);
    assert_eq!(calm_refused, 0, "the calm tenant is never refused");
    for p in [&hot, &calm, &warm] {
        redis.delete_tenant_keys(p.tenant_id).await.expect("clean up");
    }
}

/// Closed loop at saturation: two instances, 32 workers deciding as fast as
/// they can while two threads burn both cores, with the default 50 ms Redis
/// timeout. Replies get slow, but Redis is up, so every decision is still
/// made in Redis and admitted = 100 × t + 100 ± 2%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accuracy_closed_loop_at_saturation() {
    let url = config().redis.url.expose_secret().to_owned();
    let (l1, l2) = (limiter(&url, 1000), limiter(&url, 1000));
    let hot = principal("rl-sat", 100, 100);
    let warm = principal("rl-sat-warm", 1000, 1000);
    for l in [&l1, &l2] {
        assert_eq!(l.decide(&warm, Class::Http, 1, false).await.source, Source::Redis);
    }
    let run = Duration::from_secs(4);
    let burn = Arc::new(AtomicBool::new(true));
    let burners: Vec<_> = (0..2)
        .map(|_| {
            let burn = burn.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while burn.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..32 {
        let l = if w % 2 == 0 { l1.clone() } else { l2.clone() };
        let p = hot.clone();
        tasks.spawn(async move {
            let (mut admitted, mut sent, mut fallback, mut slowest) = (0u64, 0u64, 0u64, Duration::ZERO);
            while started.elapsed() < run {
                let t0 = Instant::now();
                let d = l.decide(&p, Class::Http, 1, false).await;
                slowest = slowest.max(t0.elapsed());
                sent += 1;
                admitted += u64::from(d.outcome.allowed);
                fallback += u64::from(d.source != Source::Redis);
            }
            (admitted, sent, fallback, slowest)
        });
    }
    let (mut admitted, mut sent, mut fallback, mut slowest) = (0u64, 0u64, 0u64, Duration::ZERO);
    while let Some(r) = tasks.join_next().await {
        let (a, s, f, w) = r.expect("task");
        (admitted, sent, fallback, slowest) = (admitted + a, sent + s, fallback + f, slowest.max(w));
    }
    let elapsed = started.elapsed().as_secs_f64();
    burn.store(false, Ordering::Relaxed);
    for b in burners {
        b.join().expect("burner");
    }
    let expected = 100.0 * elapsed + 100.0;
    let error = (admitted as f64 - expected) / expected;
    eprintln!(
        "closed loop: sent {sent} in {elapsed:.2} s, admitted {admitted}, expected {expected:.0} ({:+.2}%), \
         slowest decision {slowest:?}, {fallback} decided locally",
        error * 100.0
    );
    assert_eq!(fallback, 0, "Redis was up: no decision may fall back");
    assert!(sent > 2 * admitted, "saturated: {sent} sent for {admitted} admitted");
    assert!(error.abs() <= 0.02, "admitted {admitted}, expected {expected:.0} ({:+.2}%)", error * 100.0);
    let redis = sluice::upstream::redis::RedisStore::new(&config().redis).expect("redis");
    for p in [&hot, &warm] {
        redis.delete_tenant_keys(p.tenant_id).await.expect("clean up");
    }
}

/// The fallback divides each limit by the live instances that heartbeats in
/// Redis count, not by a configured constant.
#[tokio::test]
async fn fallback_divides_by_live_instances() {
    let target = url::Url::parse(config().redis.url.expose_secret()).expect("redis url");
    let target = format!("{}:{}", target.host_str().expect("host"), target.port().unwrap_or(6379));
    let proxy = Proxy::start(target).await;
    // A key prefix of its own: other tests' gateways beat in the shared set.
    let prefix = unique("rl-live");
    let url = config().redis.url.expose_secret().to_owned();
    let (l1, l2, l3) =
        (limiter_in(&proxy.url, 60_000, &prefix), limiter_in(&url, 60_000, &prefix), limiter_in(&url, 60_000, &prefix));
    assert_eq!(l1.instances().live(), 1, "configured count until the first beat");
    for l in [&l1, &l2, &l3] {
        l.instances().beat(l.redis()).await.expect("beat");
    }
    l1.instances().beat(l1.redis()).await.expect("beat");
    assert_eq!(l1.instances().live(), 3);

    proxy.cut();
    // 30/s with burst 30 over three live instances: 10 each while Redis is away.
    let p = principal("rl-live", 30, 30);
    let mut admitted = 0;
    for _ in 0..30 {
        let d = l1.decide(&p, Class::Http, 1, false).await;
        assert_eq!(d.source, Source::Fallback);
        admitted += usize::from(d.outcome.allowed);
    }
    assert!((10..=11).contains(&admitted), "admitted {admitted} locally; expected the burst ÷ 3 = 10");
    let redis = sluice::upstream::redis::RedisStore::new(&config().redis).expect("redis");
    let mut conn = redis.conn().await.expect("conn");
    let _: i64 = redis::cmd("DEL").arg(format!("{prefix}:instances")).query_async(&mut conn).await.expect("clean up");
}

/// Statements are leased: two instances driving one tenant's `query` class
/// (1,000/s, burst 500 → leases of up to 32) mostly skip Redis under the
/// limit, and overdriven the admitted count stays within burst + rate × time
/// plus at most one lease per instance either way.
#[tokio::test]
async fn query_leases_skip_redis_and_stay_exact() {
    let url = config().redis.url.expose_secret().to_owned();
    let (l1, l2) = (limiter(&url, 1000), limiter(&url, 1000));
    let mut p = principal("rl-lease", 100, 100);
    p.quotas.query_rps = 1000;
    p.quotas.query_burst = 500;
    // Under the limit (500/s): every statement admitted, most without Redis.
    let mut calm_leased = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    for i in 0..300u64 {
        tick.tick().await;
        let d = if i % 2 == 0 { &l1 } else { &l2 }.decide(&p, Class::Query, 1, false).await;
        assert!(d.outcome.allowed, "under the limit");
        calm_leased += u64::from(d.source == Source::Lease);
    }
    assert!(calm_leased >= 240, "most decisions come from leases ({calm_leased} of 300)");
    // Drained and overdriven at 4,000/s: exact within leases.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let started = Instant::now();
    let (mut admitted, mut leased) = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_micros(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8000u64 {
        tick.tick().await;
        let l = if i % 2 == 0 { l1.clone() } else { l2.clone() };
        let p = p.clone();
        tasks.spawn(async move { l.decide(&p, Class::Query, 1, false).await });
    }
    let elapsed = started.elapsed().as_secs_f64();
    while let Some(d) = tasks.join_next().await {
        let d = d.expect("task");
        assert_ne!(d.source, Source::Fallback, "Redis answered");
        admitted += u64::from(d.outcome.allowed);
        leased += u64::from(d.source == Source::Lease);
    }
    let ceiling = 500.0 + 1000.0 * elapsed;
    eprintln!(
        "leases: calm {calm_leased}/300 from leases; overdriven {admitted} admitted of 8000 in {elapsed:.2} s \
         (ceiling {ceiling:.0}), {leased} from leases"
    );
    // Units leased in the calm phase (at most one lease per instance) are
    // spent here though charged before `started`.
    assert!(admitted as f64 <= ceiling + 2.0 * 32.0, "admitted {admitted} > {ceiling:.0} + leftover leases");
    assert!(admitted as f64 >= ceiling - 4.0 * 32.0 - 0.02 * ceiling, "admitted {admitted}, ceiling {ceiling:.0}");
    let redis = sluice::upstream::redis::RedisStore::new(&config().redis).expect("redis");
    redis.delete_tenant_keys(p.tenant_id).await.expect("clean up");
}

/// A TCP proxy to the shared Redis that can be cut and restored, so a test can
/// take "Redis" away without stopping the shared server.
struct Proxy {
    url: String,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("redis://{}", listener.local_addr().expect("addr"));
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: connection closed at once
                }
                let target = target.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns2.lock().expect("lock").push(h);
            }
        });
        Self { url, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for h in self.conns.lock().expect("lock").drain(..) {
            h.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn redis_outage_falls_back_then_recovers() {
    let target = url::Url::parse(config().redis.url.expose_secret()).expect("redis url");
    let target = format!("{}:{}", target.host_str().expect("host"), target.port().unwrap_or(6379));
    let proxy = Proxy::start(target).await;
    let l = limiter(&proxy.url, 200);
    let p = principal("rl-outage", 1000, 1000);
    assert_eq!(l.decide(&p, Class::Http, 1, false).await.source, Source::Redis);

    proxy.cut();
    let mut fallback = 0;
    for _ in 0..20 {
        let started = Instant::now();
        let d = l.decide(&p, Class::Http, 1, false).await;
        assert!(started.elapsed() < Duration::from_millis(150), "decided in {:?}", started.elapsed());
        assert!(d.outcome.allowed, "fail-open admits within the local limit");
        fallback += usize::from(d.source == Source::Fallback);
    }
    assert!(fallback >= 19, "{fallback} of 20 decided locally while Redis was away");

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if l.decide(&p, Class::Http, 1, false).await.source == Source::Redis {
            break;
        }
        assert!(Instant::now() < deadline, "shared limiting did not resume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let redis = sluice::upstream::redis::RedisStore::new(&config().redis).expect("redis");
    redis.delete_tenant_keys(p.tenant_id).await.expect("clean up");
}
