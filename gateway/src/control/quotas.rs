//! The `quotas` table: one row per tenant, seeded from `[quotas]` in the config.

use deadpool_postgres::GenericClient;
use serde::Serialize;

use super::ControlError;
use crate::config::QuotaDefaults;
use crate::ids::TenantId;

/// A tenant's quotas (see `config::QuotaDefaults` for the meaning of each field).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Quotas {
    pub pg_pool_size: i32,
    pub pg_max_connections: i32,
    pub http_rps: i32,
    pub http_burst: i32,
    pub query_rps: i32,
    pub query_burst: i32,
    pub bytes_in_per_sec: i64,
    pub bytes_out_per_sec: i64,
    pub statement_timeout_ms: i32,
    pub max_rows: i32,
    pub max_object_bytes: i64,
    pub max_kv_value_bytes: i32,
}

/// Per-key overrides of the tenant's rate limits (table `key_limits`). `None`
/// means the key shares the tenant's limit (and bucket) for that class; a value
/// gives the key its own bucket at that limit instead.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct KeyLimits {
    pub http_rps: Option<i32>,
    pub http_burst: Option<i32>,
    pub query_rps: Option<i32>,
    pub query_burst: Option<i32>,
}

/// The `key_limits` columns, qualified with alias `kl`, in [`key_limits_from_row`] order.
pub const COLUMNS_KL: &str = "kl.http_rps, kl.http_burst, kl.query_rps, kl.query_burst";

/// Read [`COLUMNS_KL`] starting at column `at` (NULLs from a LEFT JOIN are `None`).
pub fn key_limits_from_row(r: &tokio_postgres::Row, at: usize) -> KeyLimits {
    KeyLimits { http_rps: r.get(at), http_burst: r.get(at + 1), query_rps: r.get(at + 2), query_burst: r.get(at + 3) }
}

fn clamp32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}
fn clamp64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl From<&QuotaDefaults> for Quotas {
    fn from(d: &QuotaDefaults) -> Self {
        Quotas {
            pg_pool_size: clamp32(d.pg_pool_size),
            pg_max_connections: clamp32(d.pg_max_connections),
            http_rps: clamp32(d.http_rps),
            http_burst: clamp32(d.http_burst.max(1)),
            query_rps: clamp32(d.query_rps),
            query_burst: clamp32(d.query_burst.max(1)),
            bytes_in_per_sec: clamp64(d.bytes_in_per_sec.max(1)),
            bytes_out_per_sec: clamp64(d.bytes_out_per_sec.max(1)),
            statement_timeout_ms: clamp32(d.statement_timeout_ms),
            max_rows: clamp32(d.max_rows.max(1)),
            max_object_bytes: clamp64(d.max_object_bytes.max(1)),
            max_kv_value_bytes: clamp32(d.max_kv_value_bytes.max(1)),
        }
    }
}

pub async fn insert(c: &impl GenericClient, tenant: TenantId, q: &Quotas) -> Result<(), ControlError> {
    c.execute(
        "INSERT INTO quotas (tenant_id, pg_pool_size, pg_max_connections, http_rps, http_burst,
             query_rps, query_burst, bytes_in_per_sec, bytes_out_per_sec, statement_timeout_ms,
             max_rows, max_object_bytes, max_kv_value_bytes)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        &[
            &tenant.0,
            &q.pg_pool_size,
            &q.pg_max_connections,
            &q.http_rps,
            &q.http_burst,
            &q.query_rps,
            &q.query_burst,
            &q.bytes_in_per_sec,
            &q.bytes_out_per_sec,
            &q.statement_timeout_ms,
            &q.max_rows,
            &q.max_object_bytes,
            &q.max_kv_value_bytes,
        ],
    )
    .await?;
    Ok(())
}

/// The quota columns, qualified with alias `q`, in [`from_row`] order.
pub const COLUMNS_Q: &str = "q.pg_pool_size, q.pg_max_connections, q.http_rps, q.http_burst, q.query_rps, \
     q.query_burst, q.bytes_in_per_sec, q.bytes_out_per_sec, q.statement_timeout_ms, q.max_rows, \
     q.max_object_bytes, q.max_kv_value_bytes";

/// Read [`COLUMNS_Q`] starting at column `at`.
pub fn from_row(r: &tokio_postgres::Row, at: usize) -> Quotas {
    Quotas {
        pg_pool_size: r.get(at),
        pg_max_connections: r.get(at + 1),
        http_rps: r.get(at + 2),
        http_burst: r.get(at + 3),
        query_rps: r.get(at + 4),
        query_burst: r.get(at + 5),
        bytes_in_per_sec: r.get(at + 6),
        bytes_out_per_sec: r.get(at + 7),
        statement_timeout_ms: r.get(at + 8),
        max_rows: r.get(at + 9),
        max_object_bytes: r.get(at + 10),
        max_kv_value_bytes: r.get(at + 11),
    }
}

pub async fn get(c: &impl GenericClient, tenant: TenantId) -> Result<Quotas, ControlError> {
    let r = c
        .query_opt(&format!("SELECT {COLUMNS_Q} FROM quotas q WHERE q.tenant_id = $1"), &[&tenant.0])
        .await?
        .ok_or_else(|| ControlError::NotFound(format!("quotas of tenant {tenant}")))?;
    Ok(from_row(&r, 0))
}
