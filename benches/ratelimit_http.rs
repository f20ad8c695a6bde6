//! Rate-limit accuracy over HTTP across two gateway instances.
//!
//! Starts two gateways in-process, each with its own `Services` (own Redis and
//! control-plane connections, as two processes would have), against the local
//! stack. Tenant "hot" gets a limit of `RL_LIMIT` requests/s with a burst of
//! `RL_LIMIT` (default 100) and is driven open-loop at `RL_RATE` (default 1,000)
//! requests/s for `RL_SECONDS` (default 10), alternating between the two
//! instances. Tenant "calm" sends 20 requests/s the whole time; its latency is
//! compared with a calm-only baseline taken first.
//!
//! Expected admitted = limit × elapsed + burst; the goal is ±2 %.
//!
//! Run (stack up, `eval "$(scripts/stack env)"`):
//! `cargo bench -p sluice --bench ratelimit_http`

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::control::audit::Actor;
use sluice::control::provision::{self, CreateOptions};
use sluice::ids::TenantName;
use support::{dev_config, env_u64, gateway, pct_ms};
use tokio::task::JoinSet;

mod support;

/// `GET /v1/tenant` (authenticated, admitted by the pipeline, no upstream
/// work): the status code, or 0 on a transport error.
async fn call(http: &reqwest::Client, url: &str, key: &str) -> u16 {
    match http.get(url).bearer_auth(key).send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            let _ = r.bytes().await;
            s
        }
        Err(_) => 0,
    }
}

/// Calm traffic: 20 requests/s until `stop`; latencies and non-200 count.
async fn calm(http: reqwest::Client, url: String, key: String, seconds: f64) -> (Vec<Duration>, u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let started = Instant::now();
    let (mut lat, mut bad) = (Vec::new(), 0u64);
    while started.elapsed().as_secs_f64() < seconds {
        tick.tick().await;
        let t0 = Instant::now();
        if call(&http, &url, &key).await != 200 {
            bad += 1;
        }
        lat.push(t0.elapsed());
    }
    lat.sort();
    (lat, bad)
}

#[tokio::main]
async fn main() {
    let limit = env_u64("RL_LIMIT", 100);
    let rate = env_u64("RL_RATE", 1000);
    let seconds = env_u64("RL_SECONDS", 10);
    let (svc1, run1) = gateway(dev_config()).await;
    let (_svc2, run2) = gateway(dev_config()).await;
    let bases = [format!("http://{}/v1/tenant", run1.http_addr), format!("http://{}/v1/tenant", run2.http_addr)];

    let pid = std::process::id();
    let hot_name = TenantName::parse(&format!("bench-rl-hot-{pid}")).expect("name");
    let calm_name = TenantName::parse(&format!("bench-rl-calm-{pid}")).expect("name");
    let opts = CreateOptions::default();
    let hot = provision::create_tenant(&svc1, &hot_name, &Actor::Cli, &opts).await.expect("hot tenant");
    let calm_t = provision::create_tenant(&svc1, &calm_name, &Actor::Cli, &opts).await.expect("calm tenant");
    let limit_i = i32::try_from(limit).expect("limit fits i32");
    svc1.control
        .client()
        .await
        .expect("control")
        .execute(
            "UPDATE quotas SET http_rps = $2, http_burst = $2 WHERE tenant_id = (SELECT id FROM tenants WHERE name = $1)",
            &[&hot_name.as_str(), &limit_i],
        )
        .await
        .expect("set limit");
    let (hot_key, calm_key) = (hot.service_key.key.clone(), calm_t.service_key.key.clone());
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build().expect("client");

    // Warm both instances (connections, scripts) on the calm tenant.
    for b in &bases {
        assert_eq!(call(&http, b, &calm_key).await, 200, "warm-up");
    }
    let baseline = calm(http.clone(), bases[0].clone(), calm_key.clone(), 5.0).await;

    // The run: hot open-loop at `rate`, calm at 20/s alongside.
    let calm_task = tokio::spawn(calm(http.clone(), bases[1].clone(), calm_key.clone(), seconds as f64));
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    let total = rate * seconds;
    let bases = Arc::new(bases);
    for i in 0..total {
        tick.tick().await;
        let (http, bases, key) = (http.clone(), bases.clone(), hot_key.clone());
        tasks.spawn(async move { call(&http, &bases[(i % 2) as usize], &key).await });
    }
    let send_elapsed = started.elapsed().as_secs_f64();
    let (mut ok, mut limited, mut server_errors, mut other) = (0u64, 0u64, 0u64, 0u64);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap_or(0) {
            200 => ok += 1,
            429 => limited += 1,
            500..=599 => server_errors += 1,
            _ => other += 1,
        }
    }
    let (loaded, calm_bad) = calm_task.await.expect("calm task");

    let expected = limit as f64 * send_elapsed + limit as f64;
    let error = (ok as f64 - expected) / expected * 100.0;
    println!("two instances; hot tenant limit {limit}/s burst {limit}; driven at {rate}/s for {seconds} s");
    println!("| figure | value |");
    println!("|---|---|");
    println!("| hot: sent / achieved rate | {total} in {send_elapsed:.2} s ({:.0}/s) |", total as f64 / send_elapsed);
    println!("| hot: admitted (200) / expected | {ok} / {expected:.0} ({error:+.2} %) |");
    println!("| hot: 429 / 5xx / other | {limited} / {server_errors} / {other} |");
    println!(
        "| calm: p50 / p99 ms, baseline (alone, {} requests) | {:.2} / {:.2} |",
        baseline.0.len(),
        pct_ms(&baseline.0, 0.5),
        pct_ms(&baseline.0, 0.99)
    );
    println!(
        "| calm: p50 / p99 ms, during the hot run ({} requests) | {:.2} / {:.2} |",
        loaded.len(),
        pct_ms(&loaded, 0.5),
        pct_ms(&loaded, 0.99)
    );
    println!("| calm: non-200 responses (baseline + run) | {} |", baseline.1 + calm_bad);

    for n in [&hot_name, &calm_name] {
        provision::delete_tenant(&svc1, n, &Actor::Cli, None).await.expect("cleanup");
    }
    run1.shutdown().await.expect("shutdown");
    run2.shutdown().await.expect("shutdown");
}
