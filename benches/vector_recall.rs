//! Vector search quality and latency through the gateway.
//!
//! Starts a gateway in-process against the local stack, creates a throwaway
//! tenant, upserts N clustered D-dimensional unit vectors over HTTP, then runs Q
//! queries and compares the gateway's top-10 with exact brute force computed
//! here. Prints recall@10 and latency percentiles per `ef_search`, then the
//! same queries uncached vs answered by the semantic cache.
//!
//! Run (stack up): `cargo bench -p sluice --bench vector_recall`
//! Knobs: `VR_N` (default 100000), `VR_DIM` (384), `VR_QUERIES` (200), `VR_CLUSTERS` (64).

use std::time::Instant;

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use sluice::control::audit::Actor;
use sluice::control::provision::{self, CreateOptions};
use sluice::ids::TenantName;

mod support;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn normal(rng: &mut StdRng) -> f32 {
    // Box–Muller.
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn clustered(rng: &mut StdRng, centers: &[Vec<f32>], spread: f32) -> Vec<f32> {
    let c = &centers[rng.random_range(0..centers.len())];
    unit(c.iter().map(|x| x + spread * normal(rng)).collect())
}

#[tokio::main]
async fn main() {
    let n = env_usize("VR_N", 100_000);
    let dim = env_usize("VR_DIM", 384);
    let queries = env_usize("VR_QUERIES", 200);
    let clusters = env_usize("VR_CLUSTERS", 64);

    let (svc, running) = support::gateway(support::dev_config()).await;
    let base = format!("http://{}", running.http_addr);
    let name = TenantName::parse(&format!("bench-vr-{}", std::process::id())).expect("name");
    let t = provision::create_tenant(&svc, &name, &Actor::Cli, &CreateOptions::default()).await.expect("tenant");
    let key = t.service_key.key.clone();
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, p: &str, body: Value| {
        http.request(method, format!("{base}{p}")).bearer_auth(&key).json(&body).send()
    };

    let resp = call(reqwest::Method::PUT, "/v1/collections/bench", json!({ "dimension": dim })).await.expect("create");
    assert!(resp.status().is_success(), "create collection: {}", resp.status());

    let mut rng = StdRng::seed_from_u64(7);
    let centers: Vec<Vec<f32>> = (0..clusters).map(|_| unit((0..dim).map(|_| normal(&mut rng)).collect())).collect();
    let data: Vec<Vec<f32>> = (0..n).map(|_| clustered(&mut rng, &centers, 0.08)).collect();
    let started = Instant::now();
    for (b, chunk) in data.chunks(500).enumerate() {
        let points: Vec<Value> =
            chunk.iter().enumerate().map(|(i, v)| json!({ "id": b * 500 + i, "vector": v })).collect();
        let resp = call(reqwest::Method::POST, "/v1/collections/bench/points", json!({ "points": points }))
            .await
            .expect("upsert");
        assert!(resp.status().is_success(), "upsert: {}", resp.status());
    }
    let ingest = started.elapsed();
    eprintln!(
        "ingested {n} × {dim}-d in {:.1} s ({:.0} points/s)",
        ingest.as_secs_f64(),
        n as f64 / ingest.as_secs_f64()
    );

    let qs: Vec<Vec<f32>> = (0..queries).map(|_| clustered(&mut rng, &centers, 0.08)).collect();
    let exact: Vec<Vec<usize>> = qs
        .iter()
        .map(|q| {
            let mut scored: Vec<(f32, usize)> =
                data.iter().enumerate().map(|(i, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>(), i)).collect();
            scored.select_nth_unstable_by(10, |a, b| b.0.total_cmp(&a.0));
            scored[..10].iter().map(|(_, i)| *i).collect()
        })
        .collect();

    println!("| ef_search | recall@10 | p50 ms | p95 ms | p99 ms |");
    println!("|---|---|---|---|---|");
    for ef in [None, Some(40), Some(100), Some(400)] {
        let mut lat = Vec::with_capacity(queries);
        let mut found = 0usize;
        for (q, truth) in qs.iter().zip(&exact) {
            let mut body = json!({ "vector": q, "k": 10, "include": { "metadata": false } });
            if let Some(ef) = ef {
                body["ef_search"] = json!(ef);
            }
            let t0 = Instant::now();
            let v: Value = call(reqwest::Method::POST, "/v1/collections/bench/search", body)
                .await
                .expect("search")
                .json()
                .await
                .expect("json");
            lat.push(t0.elapsed());
            let ids: Vec<usize> =
                v["hits"].as_array().expect("hits").iter().filter_map(|h| h["id"].as_str()?.parse().ok()).collect();
            found += ids.iter().filter(|i| truth.contains(i)).count();
        }
        lat.sort();
        let label = ef.map_or("default (200)".to_string(), |e| e.to_string());
        println!(
            "| {label} | {:.3} | {:.2} | {:.2} | {:.2} |",
            found as f64 / (10 * queries) as f64,
            support::pct_ms(&lat, 0.5),
            support::pct_ms(&lat, 0.95),
            support::pct_ms(&lat, 0.99)
        );
    }

    // Semantic cache: the same queries uncached, then with `"cache": true`
    // (a miss that stores the result), then a nearby query (cosine ≈ 0.98 to
    // the first, above the default threshold 0.95) that should be a hit.
    let timed = |label: &'static str| (label, Vec::with_capacity(queries), 0usize);
    let (mut uncached, mut missed, mut hit) = (timed("uncached"), timed("cache miss"), timed("cache hit"));
    for q in &qs {
        let near = unit(q.iter().map(|x| x + 0.01 * normal(&mut rng)).collect());
        for (row, v, cache) in [(&mut uncached, q, false), (&mut missed, q, true), (&mut hit, &near, true)] {
            let body = json!({ "vector": v, "k": 10, "include": { "metadata": false }, "cache": cache });
            let t0 = Instant::now();
            let out: Value = call(reqwest::Method::POST, "/v1/collections/bench/search", body)
                .await
                .expect("search")
                .json()
                .await
                .expect("json");
            row.1.push(t0.elapsed());
            row.2 += usize::from(out["cache"]["status"] == "hit");
        }
    }
    println!();
    println!("| search | p50 ms | p99 ms | cache hits |");
    println!("|---|---|---|---|");
    for row in [&mut uncached, &mut missed, &mut hit] {
        row.1.sort();
        println!(
            "| {} | {:.2} | {:.2} | {}/{} |",
            row.0,
            support::pct_ms(&row.1, 0.5),
            support::pct_ms(&row.1, 0.99),
            row.2,
            queries
        );
    }
    println!(
        "p50 ratio uncached / cache hit: {:.1}×",
        support::pct_ms(&uncached.1, 0.5) / support::pct_ms(&hit.1, 0.5).max(1e-9)
    );
    provision::delete_tenant(&svc, &name, &Actor::Cli, None).await.expect("cleanup");
    running.shutdown().await.expect("shutdown");
}
