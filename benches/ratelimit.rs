//! Rate-limit decisions and semantic-cache lookups against the local Redis
//! (`scripts/stack up`; `eval "$(scripts/stack env)"` first).
//!
//! Run: `cargo bench -p sluice --bench ratelimit -- --warm-up-time 1 --measurement-time 5`
//! (figures in docs/benchmarks.md). Besides criterion's medians it prints
//! decision throughput at 64 in flight and lookup percentiles (p50/p99) over
//! 2000 lookups in a namespace of 10k entries.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use sluice::cache::{Scope, SemCache};
use sluice::config::QuotaDefaults;
use sluice::control::quotas::Quotas;
use sluice::ids::{KeyPrefix, KeyRole, TenantId, TenantName};
use sluice::pipeline::auth::Principal;
use sluice::ratelimit::gcra::{Limit, LocalGcra};
use sluice::ratelimit::{Class, RateLimiter};
use sluice::upstream::redis::RedisStore;

const DIM: usize = 384;
const ENTRIES: usize = 10_000;

fn config() -> sluice::config::Config {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/dev.toml");
    let text = std::fs::read_to_string(path).expect("config/dev.toml");
    sluice::config::load_str(&text, "config/dev.toml", std::env::vars()).expect("dev config")
}

fn principal() -> Principal {
    let mut quotas = Quotas::from(&QuotaDefaults::default());
    // Never refuse: measure the decision, not the refusal path.
    quotas.http_rps = i32::MAX;
    quotas.http_burst = i32::MAX;
    Principal {
        tenant_id: TenantId::new_random(),
        tenant: TenantName::parse("bench-tenant").expect("valid name"),
        key_id: uuid::Uuid::new_v4(),
        key_prefix: KeyPrefix("benchbench01".into()),
        role: KeyRole::Service,
        quotas,
        key_limits: Default::default(),
        usage: Default::default(),
        db: Default::default(),
    }
}

/// Deterministic pseudo-random unit-ish vectors.
fn vector(seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..DIM)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 20_000) as f32 / 10_000.0 - 1.0
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cfg = config();
    let redis = RedisStore::new(&cfg.redis).expect("redis client");
    let limiter = RateLimiter::new(redis.clone(), cfg.ratelimit.clone());
    let cache = SemCache::new(redis.clone(), cfg.cache.clone());
    let p = principal();
    rt.block_on(redis.ping()).expect("local Redis is up (scripts/stack up)");

    c.bench_function("ratelimit/decision_redis", |b| {
        b.to_async(&rt).iter(|| async {
            let d = limiter.decide(&p, Class::Http, 1, false).await;
            assert_eq!(d.source, sluice::ratelimit::Source::Redis, "Redis answered");
        })
    });

    let mut local = LocalGcra::default();
    let limit = Limit::new(1e9, 1_000_000_000);
    c.bench_function("ratelimit/decision_local_fallback", |b| {
        b.iter(|| local.decide(std::hint::black_box("sluice:t:x:rl:http"), &limit, 1, false))
    });

    // Throughput with 64 decisions in flight.
    let n = 20_000;
    let started = Instant::now();
    rt.block_on(async {
        use futures::StreamExt;
        futures::stream::iter(0..n)
            .for_each_concurrent(64, |_| async {
                limiter.decide(&p, Class::Http, 1, false).await;
            })
            .await;
    });
    let secs = started.elapsed().as_secs_f64();
    println!("ratelimit/throughput_64_in_flight: {n} decisions in {secs:.2} s = {:.0}/s", n as f64 / secs);

    // 10k entries in one namespace, then lookups of near neighbours of stored vectors.
    let scope = Scope::namespace("bench").expect("namespace");
    rt.block_on(async {
        use futures::StreamExt;
        futures::stream::iter(0..ENTRIES as u64)
            .for_each_concurrent(32, |i| {
                let (cache, p, scope) = (&cache, &p, &scope);
                async move {
                    let value = format!("{{\"answer\":{i}}}");
                    cache.insert(p, scope, &vector(i), value.as_bytes(), None).await.expect("insert");
                }
            })
            .await;
    });
    let near = |i: u64| -> Vec<f32> {
        vector(i).iter().enumerate().map(|(j, x)| x + if j % 7 == 0 { 0.05 } else { 0.0 }).collect()
    };
    let mut i = 0u64;
    c.bench_function("semcache/lookup_10k_dim384", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 7919) % ENTRIES as u64;
            let q = near(i);
            let (cache, p, scope) = (&cache, &p, &scope);
            async move { cache.lookup(p, scope, &q, 0.95, "bench").await.expect("lookup") }
        })
    });

    let mut times = Vec::with_capacity(2000);
    let (mut hits, mut candidates) = (0usize, 0usize);
    rt.block_on(async {
        for j in 0..2000u64 {
            let q = near((j * 104_729) % ENTRIES as u64);
            let t = Instant::now();
            let l = cache.lookup(&p, &scope, &q, 0.95, "bench").await.expect("lookup");
            times.push(t.elapsed());
            hits += usize::from(l.hit.is_some());
            candidates += l.candidates;
        }
    });
    times.sort();
    println!(
        "semcache/lookup_10k_dim384 over 2000: p50 {:?} p99 {:?} max {:?}; hit rate {:.3}; mean candidates {:.1}",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        percentile(&times, 1.0),
        hits as f64 / 2000.0,
        candidates as f64 / 2000.0
    );

    // Hit recall versus brute force at the threshold: queries at cosine ≈ 0.955
    // to a stored vector; among those whose exact best match is ≥ 0.95, how
    // many does the cache hit (with that same best similarity)?
    let stored: Vec<Vec<f32>> = (0..ENTRIES as u64).map(vector).collect();
    let (mut eligible, mut found, mut exact_best) = (0usize, 0usize, 0usize);
    rt.block_on(async {
        for j in 0..500u64 {
            let base = vector((j * 7_919) % ENTRIES as u64);
            let noise = vector(1_000_000 + j);
            let q: Vec<f32> = base.iter().zip(&noise).map(|(b, n)| b + 0.31 * n).collect();
            let best = stored.iter().map(|v| sluice::cache::lsh::cosine(&q, v)).fold(f32::MIN, f32::max);
            if best < 0.95 {
                continue;
            }
            eligible += 1;
            let l = cache.lookup(&p, &scope, &q, 0.95, "bench").await.expect("lookup");
            if l.hit.is_some() {
                found += 1;
                exact_best += usize::from(l.similarity.is_some_and(|s| (s - best).abs() < 1e-6));
            }
        }
    });
    println!(
        "semcache/recall_at_0.95: {found}/{eligible} = {:.3} (best match returned in {exact_best})",
        found as f64 / eligible.max(1) as f64
    );

    rt.block_on(redis.delete_tenant_keys(p.tenant_id)).expect("clean up bench keys");
}

criterion_group!(benches, bench);
criterion_main!(benches);
