//! The statement model's hot path: parsing with libpg_query into the model
//! (a cache miss) and the per-tenant cache lookup (a hit).
//!
//! Run: `cargo bench -p sluice --bench sql_parse` (figures in docs/benchmarks.md).

use criterion::{Criterion, criterion_group, criterion_main};
use sluice::ids::TenantId;
use sluice::sql::SqlParser;
use sluice::sql::parser::parse_text;

const PGBENCH_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";

/// A ~2 KB query shaped like an ORM's: many qualified columns, joins, a
/// subquery, ordering and paging.
fn orm_query() -> String {
    let cols: Vec<String> = (0..40).map(|i| format!("\"orders\".\"column_{i}\" AS \"orders_column_{i}\"")).collect();
    format!(
        "SELECT {}, \"customers\".\"name\" FROM \"public\".\"orders\" \
         INNER JOIN \"public\".\"customers\" ON \"customers\".\"id\" = \"orders\".\"customer_id\" \
         LEFT OUTER JOIN \"public\".\"payments\" ON \"payments\".\"order_id\" = \"orders\".\"id\" \
         WHERE \"orders\".\"tenant_id\" = $1 AND \"orders\".\"created_at\" >= $2 \
         AND \"orders\".\"id\" IN (SELECT \"order_id\" FROM \"public\".\"order_tags\" WHERE \"tag\" = ANY($3)) \
         ORDER BY \"orders\".\"created_at\" DESC LIMIT $4 OFFSET $5",
        cols.join(", ")
    )
}

fn bench(c: &mut Criterion) {
    let orm = orm_query();
    assert!(orm.len() >= 2000, "the ORM query is {} bytes", orm.len());
    c.bench_function("sql/parse_pgbench_select (miss)", |b| {
        b.iter(|| parse_text(std::hint::black_box(PGBENCH_SELECT)).expect("parses"))
    });
    c.bench_function("sql/parse_orm_2kb (miss)", |b| {
        b.iter(|| parse_text(std::hint::black_box(&orm)).expect("parses"))
    });

    let parser = SqlParser::new();
    let tenant = TenantId(uuid::Uuid::new_v4());
    parser.parse_blocking(tenant, PGBENCH_SELECT).expect("parses");
    parser.parse_blocking(tenant, &orm).expect("parses");
    c.bench_function("sql/cache_hit_pgbench_select", |b| {
        b.iter(|| parser.parse_blocking(tenant, std::hint::black_box(PGBENCH_SELECT)).expect("hit"))
    });
    // Literals inline (psql, `pgbench -M simple`): every text new, its shape cached.
    let mut aid = 0u64;
    c.bench_function("sql/shape_hit_pgbench_select", |b| {
        b.iter(|| {
            aid += 1;
            let text = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
            parser.parse_blocking(tenant, std::hint::black_box(&text)).expect("shape hit")
        })
    });
    c.bench_function("sql/cache_hit_orm_2kb", |b| {
        b.iter(|| parser.parse_blocking(tenant, std::hint::black_box(&orm)).expect("hit"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
