//! Hot-path micro-benchmarks of authentication and credential work.
//!
//! Run: `cargo bench -p sluice --bench auth` (figures in docs/benchmarks.md).

use criterion::{Criterion, criterion_group, criterion_main};
use sluice::control::credentials::{generate_key, new_salt, parse_key, scram_keys, sha256};
use sluice::secret::{ExposeSecret, ct_eq};

fn bench(c: &mut Criterion) {
    let salt = new_salt();
    let key = generate_key(&salt, 4096);
    let presented = key.key.expose_secret().to_owned();
    let stored = key.sha256;

    // What every authenticated HTTP request costs in CPU (the DB lookup aside).
    c.bench_function("auth/parse+sha256+ct_eq", |b| {
        b.iter(|| {
            let prefix = parse_key(std::hint::black_box(&presented)).expect("well-formed");
            let digest = sha256(presented.as_bytes());
            (prefix, ct_eq(&digest, &stored))
        })
    });

    // Key creation: SCRAM verifier at the default 4096 PBKDF2 iterations.
    c.bench_function("keys/scram_verifier_4096", |b| {
        b.iter(|| scram_keys(std::hint::black_box(presented.as_bytes()), &salt, 4096))
    });

    c.bench_function("keys/generate", |b| b.iter(|| generate_key(&salt, 4096)));
}

criterion_group!(benches, bench);
criterion_main!(benches);
