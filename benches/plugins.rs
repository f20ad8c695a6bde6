//! Plugin hot paths.
//!
//! Run: `scripts/build-plugins && (cd plugins && cargo build --target
//! wasm32-wasip2 --profile bench-big -p policy-ddl-guard) && cargo bench -p
//! sluice --bench plugins` (figures in docs/benchmarks.md). Needs no stack for the first two groups;
//! `upload_to_active` runs only when the `SLUICE_…` variables of
//! `scripts/stack env` are set (it starts a gateway and uploads over HTTP).
//!
//! - `policy/warm_call`: a fresh `Store`, an instance from the pooling
//!   allocator, one `evaluate` call of `policy-ddl-guard`, drop. Also printed:
//!   p50/p99 over 20 000 timed calls.
//! - `reranker/mmr_100x384`: `reranker-mmr` over 100 candidates of 384 dims.
//! - `upload_to_active`: `PUT /v1/plugins/policy?activate=true` until it
//!   answers, of the optimized `policy-ddl-guard` padded to 2 MiB and of its
//!   unoptimized build (`--profile bench-big` in plugins/, ~3 MiB).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

mod support;
use sluice::plugins::PluginKind;
use sluice::plugins::bindings::types::{Candidate, Door, Origin, Request};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn wasm(profile: &str, name: &str) -> Vec<u8> {
    let p = root().join("plugins/target/wasm32-wasip2").join(profile).join(format!("{name}.wasm"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}; run scripts/build-plugins", p.display()))
}

fn origin() -> Origin {
    Origin { door: "pg".into(), s3_operation: None }
}

fn request() -> Request {
    Request {
        tenant: "bench".into(),
        key_prefix: "slk_bench".into(),
        role: "service".into(),
        door: Door::Http,
        operation: "sql".into(),
        object_key: None,
        collection: None,
        sql: Some("SELECT id, body FROM notes WHERE id = $1".into()),
        size: None,
        count: None,
    }
}

/// `bytes` with a custom section holding `payload` appended: another digest,
/// so the gateway compiles it again (a cold upload every time).
fn with_custom_section(bytes: &[u8], payload: &[u8]) -> Vec<u8> {
    fn leb(mut v: usize, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
    }
    let name = b"sluice-bench";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(payload);
    let mut out = bytes.to_vec();
    out.push(0);
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // Default deadlines: the MMR example over 100 × 384 fits the 10 ms one.
    let svc = sluice::services::Services::new(support::dev_config()).expect("services");
    let plugins = svc.plugins.clone();

    let policy = rt
        .block_on(plugins.ephemeral(
            "bench",
            PluginKind::Policy,
            wasm("release", "policy_ddl_guard").into(),
            r#"{"allowed_tables": ["notes"]}"#,
        ))
        .expect("policy loads");
    // The statement model the pipeline hands the policy for `request().sql`.
    let parsed = sluice::sql::parser::parse_text("SELECT id, body FROM notes WHERE id = $1").expect("parses");
    let statements: Vec<_> = parsed.statements.iter().map(sluice::plugins::host::sql::statement).collect();
    let mut samples = Vec::with_capacity(20_000);
    let mut missed = 0u64;
    for _ in 0..20_000 {
        let t0 = Instant::now();
        let d = plugins.evaluate_blocking(&policy, request(), origin(), &statements);
        samples.push(t0.elapsed());
        missed += u64::from(d.is_err());
        drop(std::hint::black_box(d));
    }
    samples.sort();
    println!(
        "policy/warm_call timed 20000: p50 {:?} p99 {:?} max {:?}",
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        samples[samples.len() - 1]
    );
    c.bench_function("policy/warm_call", |b| {
        b.iter(|| missed += u64::from(plugins.evaluate_blocking(&policy, request(), origin(), &statements).is_err()))
    });
    if missed > 0 {
        println!("policy/warm_call: {missed} calls missed the policy deadline");
    }

    let reranker = rt
        .block_on(plugins.ephemeral("bench", PluginKind::Reranker, wasm("release", "reranker_mmr").into(), "{}"))
        .expect("reranker loads");
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 2000) as f32 / 1000.0 - 1.0
    };
    let query: Vec<f32> = (0..384).map(|_| next()).collect();
    let candidates: Vec<Candidate> = (0..100)
        .map(|i| Candidate {
            id: format!("p{i}"),
            distance: f64::from(i) / 100.0,
            vector: (0..384).map(|_| next()).collect(),
            metadata: "{}".into(),
        })
        .collect();
    // A call that misses its deadline (a noisy machine) is counted, not a panic.
    missed = 0;
    c.bench_function("reranker/mmr_100x384_k10", |b| {
        b.iter(|| match plugins.rerank_blocking(&reranker, &query, 10, &candidates) {
            Ok(order) => drop(std::hint::black_box(order)),
            Err(_) => missed += 1,
        })
    });
    if missed > 0 {
        println!("reranker/mmr_100x384_k10: {missed} calls missed the reranker deadline");
    }

    if std::env::var_os("SLUICE_CONTROL__DATABASE_URL").is_some() {
        // The optimized guard padded to exactly 2 MiB with a custom section,
        // and the unoptimized build (`--profile bench-big`, ~3 MiB, more code
        // to compile).
        let mut padded = wasm("release", "policy_ddl_guard");
        let pad = (2usize << 20) - padded.len() - 2 * 32;
        padded = with_custom_section(&padded, &vec![0u8; pad]);
        let big = wasm("bench-big", "policy_ddl_guard");
        println!("upload_to_active: padded {} bytes, unoptimized {} bytes", padded.len(), big.len());
        let (gw_addr, admin) = rt.block_on(async {
            let svc = sluice::services::Services::new(support::dev_config()).expect("services");
            let token = sluice::secret::ExposeSecret::expose_secret(&svc.config.auth.operator_token).to_owned();
            let running = sluice::server::start(svc, "127.0.0.1:0").await.expect("gateway");
            let base = format!("http://{}", running.http_addr);
            let http = reqwest::Client::new();
            let name = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
            let body: serde_json::Value = http
                .post(format!("{base}/admin/v1/tenants"))
                .bearer_auth(token)
                .json(&serde_json::json!({ "name": name }))
                .send()
                .await
                .expect("create tenant")
                .json()
                .await
                .expect("json");
            std::mem::forget(running);
            (base, body["admin_key"]["key"].as_str().expect("admin key").to_owned())
        });
        let http = reqwest::Client::new();
        let mut group = c.benchmark_group("upload_to_active");
        group.sample_size(10).measurement_time(Duration::from_secs(20));
        let mut n = 0u64;
        for (label, base) in [("policy_2MiB_padded", &padded), ("policy_unoptimized_3MiB", &big)] {
            group.bench_function(label, |b| {
                b.iter(|| {
                    n += 1;
                    let body = with_custom_section(base, &n.to_le_bytes());
                    rt.block_on(async {
                        let r = http
                            .put(format!("{gw_addr}/v1/plugins/policy?activate=true"))
                            .bearer_auth(&admin)
                            .body(body)
                            .send()
                            .await
                            .expect("upload");
                        assert_eq!(r.status(), 201);
                    })
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
