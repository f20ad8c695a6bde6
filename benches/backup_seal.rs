//! Sealing and opening backup parts (zstd level 3 + age), the CPU cost per
//! byte of a backup and of a restore's checks. No stack needed:
//!
//!   cargo bench -p sluice --bench backup_seal
//!
//! Inputs: 8 MiB of random bytes (objects that do not compress) and 8 MiB
//! of `pg_dump`-like text (rows of hex and numbers).

use std::hint::black_box;
use std::io::{Read, Write};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::backup::crypt::{DataKey, Recipients, Sealer, opener};

fn inputs() -> Vec<(&'static str, Vec<u8>)> {
    let mut x = 0x9e3779b97f4a7c15u64;
    let random: Vec<u8> = (0..8 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x & 0xff) as u8
        })
        .collect();
    let mut text = Vec::with_capacity(8 << 20);
    let mut i = 0u64;
    while text.len() < 8 << 20 {
        writeln!(
            text,
            "{i}\t{}\t{:016x}{:016x}\t2026-12-03 21:00:{:02}",
            i % 17,
            i.wrapping_mul(0x9e37),
            i ^ 0xabcdef,
            i % 60
        )
        .expect("write");
        i += 1;
    }
    text.truncate(8 << 20);
    vec![("random", random), ("dump_text", text)]
}

fn bench(c: &mut Criterion) {
    let key = DataKey::generate();
    let to = Recipients::new(&key, &[]).expect("recipients");
    let mut g = c.benchmark_group("backup_seal");
    g.sample_size(10);
    for (name, data) in inputs() {
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(format!("seal/{name}"), |b| {
            b.iter(|| {
                let mut s = Sealer::new(Vec::with_capacity(data.len() + 4096), &to, 3).expect("sealer");
                s.write_all(&data).expect("write");
                black_box(s.finish().expect("finish"));
            })
        });
        let mut s = Sealer::new(Vec::new(), &to, 3).expect("sealer");
        s.write_all(&data).expect("write");
        let (sealed, _) = s.finish().expect("finish");
        g.bench_function(format!("open/{name}"), |b| {
            b.iter(|| {
                let mut out = Vec::with_capacity(data.len());
                opener(&sealed[..], &key).expect("open").read_to_end(&mut out).expect("read");
                black_box(out);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
