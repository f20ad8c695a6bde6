//! 4 KiB object GET throughput and latency: through Sluice vs straight from the
//! object store, in one run, same object, same concurrency.
//!
//! Starts a gateway in-process against the local stack, creates a throwaway
//! tenant, PUTs one 4 KiB object through the gateway, then for each side runs
//! `OG_CONCURRENCY` (default 16) closed-loop clients for `OG_SECONDS` (default
//! 10) and reports requests/s and latency percentiles. The direct side uses
//! aws-sdk-s3 with the gateway's own credentials on the tenant's bucket.
//!
//! Run (stack up): `cargo bench -p sluice --bench object_get`

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::control::audit::Actor;
use sluice::control::provision::{self, CreateOptions, bucket_name};
use sluice::ids::TenantName;
use support::{dev_config, env_u64, gateway, pct_ms};

mod support;

struct Outcome {
    ok: u64,
    errors: u64,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

async fn drive<F, Fut>(concurrency: u64, seconds: u64, one: F) -> Outcome
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let one = Arc::new(one);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let one = one.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut lat) = (0u64, 0u64, Vec::new());
            while Instant::now() < deadline {
                let t0 = Instant::now();
                if one().await {
                    ok += 1
                } else {
                    errors += 1
                }
                lat.push(t0.elapsed());
            }
            (ok, errors, lat)
        }));
    }
    let mut out = Outcome { ok: 0, errors: 0, latencies: Vec::new(), elapsed: Duration::ZERO };
    for t in tasks {
        let (ok, errors, lat) = t.await.expect("client task");
        out.ok += ok;
        out.errors += errors;
        out.latencies.extend(lat);
    }
    out.elapsed = started.elapsed();
    out.latencies.sort();
    out
}

#[tokio::main]
async fn main() {
    let concurrency = env_u64("OG_CONCURRENCY", 16);
    let seconds = env_u64("OG_SECONDS", 10);
    let (svc, running) = gateway(dev_config()).await;
    let base = format!("http://{}", running.http_addr);
    let name = TenantName::parse(&format!("bench-og-{}", std::process::id())).expect("name");
    let t = provision::create_tenant(&svc, &name, &Actor::Cli, &CreateOptions::default()).await.expect("tenant");
    let key = t.service_key.key.clone();
    let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency as usize).build().expect("client");
    let body = vec![7u8; 4096];
    let url = format!("{base}/v1/objects/bench/4k.bin");
    let resp = http.put(&url).bearer_auth(&key).body(body).send().await.expect("put");
    assert!(resp.status().is_success(), "put: {}", resp.status());

    let gw = {
        let (http, url, key) = (http.clone(), url.clone(), key.clone());
        drive(concurrency, seconds, move || {
            let req = http.get(&url).bearer_auth(&key).send();
            async move {
                match req.await {
                    Ok(r) if r.status().is_success() => r.bytes().await.map(|b| b.len() == 4096).unwrap_or(false),
                    _ => false,
                }
            }
        })
        .await
    };
    let direct = {
        let s3 = svc.s3.client().clone();
        let bucket = bucket_name(&svc, &name);
        drive(concurrency, seconds, move || {
            let req = s3.get_object().bucket(&bucket).key("bench/4k.bin").send();
            async move {
                match req.await {
                    Ok(o) => o.body.collect().await.map(|b| b.into_bytes().len() == 4096).unwrap_or(false),
                    Err(_) => false,
                }
            }
        })
        .await
    };
    println!("concurrency {concurrency}, {seconds} s each, 4 KiB object");
    println!("| path | req/s | p50 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|");
    for (label, o) in [("direct (aws-sdk-s3 → Garage)", &direct), ("through Sluice", &gw)] {
        println!(
            "| {label} | {:.0} | {:.2} | {:.2} | {} |",
            o.ok as f64 / o.elapsed.as_secs_f64(),
            pct_ms(&o.latencies, 0.5),
            pct_ms(&o.latencies, 0.99),
            o.errors
        );
    }
    let ratio = (gw.ok as f64 / gw.elapsed.as_secs_f64()) / (direct.ok as f64 / direct.elapsed.as_secs_f64());
    println!("throughput ratio Sluice/direct: {ratio:.2}");
    provision::delete_tenant(&svc, &name, &Actor::Cli, None).await.expect("cleanup");
    running.shutdown().await.expect("shutdown");
}
