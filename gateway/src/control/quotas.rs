//! The `quotas` table: one row per tenant, seeded from `[quotas]` in the config.

use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};

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
    pub max_db_bytes: i64,
    pub max_storage_bytes: i64,
    pub max_kv_bytes: i64,
    pub max_vector_points: i64,
    pub max_result_bytes: i64,
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
            max_db_bytes: clamp64(d.max_db_bytes.max(1)),
            max_storage_bytes: clamp64(d.max_storage_bytes.max(1)),
            max_kv_bytes: clamp64(d.max_kv_bytes.max(1)),
            max_vector_points: clamp64(d.max_vector_points.max(1)),
            max_result_bytes: clamp64(d.max_result_bytes.max(1)),
        }
    }
}

pub async fn insert(c: &impl GenericClient, tenant: TenantId, q: &Quotas) -> Result<(), ControlError> {
    c.execute(
        "INSERT INTO quotas (tenant_id, pg_pool_size, pg_max_connections, http_rps, http_burst,
             query_rps, query_burst, bytes_in_per_sec, bytes_out_per_sec, statement_timeout_ms,
             max_rows, max_object_bytes, max_kv_value_bytes, max_db_bytes, max_storage_bytes,
             max_kv_bytes, max_vector_points, max_result_bytes)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
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
            &q.max_db_bytes,
            &q.max_storage_bytes,
            &q.max_kv_bytes,
            &q.max_vector_points,
            &q.max_result_bytes,
        ],
    )
    .await?;
    Ok(())
}

/// The quota columns, qualified with alias `q`, in [`from_row`] order.
pub const COLUMNS_Q: &str = "q.pg_pool_size, q.pg_max_connections, q.http_rps, q.http_burst, q.query_rps, \
     q.query_burst, q.bytes_in_per_sec, q.bytes_out_per_sec, q.statement_timeout_ms, q.max_rows, \
     q.max_object_bytes, q.max_kv_value_bytes, q.max_db_bytes, q.max_storage_bytes, q.max_kv_bytes, \
     q.max_vector_points, q.max_result_bytes";

/// How many columns [`COLUMNS_Q`] has.
pub const COLUMNS_Q_LEN: usize = 17;

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
        max_db_bytes: r.get(at + 12),
        max_storage_bytes: r.get(at + 13),
        max_kv_bytes: r.get(at + 14),
        max_vector_points: r.get(at + 15),
        max_result_bytes: r.get(at + 16),
    }
}

pub async fn get(c: &impl GenericClient, tenant: TenantId) -> Result<Quotas, ControlError> {
    let r = c
        .query_opt(&format!("SELECT {COLUMNS_Q} FROM quotas q WHERE q.tenant_id = $1"), &[&tenant.0])
        .await?
        .ok_or_else(|| ControlError::NotFound(format!("quotas of tenant {tenant}")))?;
    Ok(from_row(&r, 0))
}

/// A change to some of a tenant's quotas: fields left out keep their value.
/// Every value must be positive; `pg_pool_size` at most 1,000.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct QuotaPatch {
    #[arg(long)]
    pub pg_pool_size: Option<i32>,
    #[arg(long)]
    pub pg_max_connections: Option<i32>,
    #[arg(long)]
    pub http_rps: Option<i32>,
    #[arg(long)]
    pub http_burst: Option<i32>,
    #[arg(long)]
    pub query_rps: Option<i32>,
    #[arg(long)]
    pub query_burst: Option<i32>,
    #[arg(long)]
    pub bytes_in_per_sec: Option<i64>,
    #[arg(long)]
    pub bytes_out_per_sec: Option<i64>,
    #[arg(long)]
    pub statement_timeout_ms: Option<i32>,
    #[arg(long)]
    pub max_rows: Option<i32>,
    #[arg(long)]
    pub max_object_bytes: Option<i64>,
    #[arg(long)]
    pub max_kv_value_bytes: Option<i32>,
    #[arg(long)]
    pub max_db_bytes: Option<i64>,
    #[arg(long)]
    pub max_storage_bytes: Option<i64>,
    #[arg(long)]
    pub max_kv_bytes: Option<i64>,
    #[arg(long)]
    pub max_vector_points: Option<i64>,
    #[arg(long)]
    pub max_result_bytes: Option<i64>,
}

impl QuotaPatch {
    /// `(column, value)` of every field that is set, checked.
    fn assignments(&self) -> Result<Vec<(&'static str, i64)>, ControlError> {
        let fields: [(&'static str, Option<i64>); 17] = [
            ("pg_pool_size", self.pg_pool_size.map(i64::from)),
            ("pg_max_connections", self.pg_max_connections.map(i64::from)),
            ("http_rps", self.http_rps.map(i64::from)),
            ("http_burst", self.http_burst.map(i64::from)),
            ("query_rps", self.query_rps.map(i64::from)),
            ("query_burst", self.query_burst.map(i64::from)),
            ("bytes_in_per_sec", self.bytes_in_per_sec),
            ("bytes_out_per_sec", self.bytes_out_per_sec),
            ("statement_timeout_ms", self.statement_timeout_ms.map(i64::from)),
            ("max_rows", self.max_rows.map(i64::from)),
            ("max_object_bytes", self.max_object_bytes),
            ("max_kv_value_bytes", self.max_kv_value_bytes.map(i64::from)),
            ("max_db_bytes", self.max_db_bytes),
            ("max_storage_bytes", self.max_storage_bytes),
            ("max_kv_bytes", self.max_kv_bytes),
            ("max_vector_points", self.max_vector_points),
            ("max_result_bytes", self.max_result_bytes),
        ];
        let mut out = Vec::new();
        for (name, value) in fields {
            let Some(v) = value else { continue };
            if v <= 0 {
                return Err(ControlError::Invalid(format!("quota {name} must be positive, got {v}")));
            }
            if name == "pg_pool_size" && v > 1000 {
                return Err(ControlError::Invalid(format!("quota pg_pool_size must be at most 1000, got {v}")));
            }
            out.push((name, v));
        }
        if out.is_empty() {
            return Err(ControlError::Invalid("no quota to change: name at least one field".into()));
        }
        Ok(out)
    }
}

/// Apply `patch` to a tenant's quotas; returns them as they are now. Changes
/// apply to the next request (HTTP) or statement/session (Postgres door).
pub async fn update(c: &impl GenericClient, tenant: TenantId, patch: &QuotaPatch) -> Result<Quotas, ControlError> {
    let sets = patch.assignments()?;
    // Column names come from the fixed list above, never from the request.
    let mut sql = String::from("UPDATE quotas q SET updated_at = now()");
    let mut params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = vec![Box::new(tenant.0)];
    for (name, v) in &sets {
        params.push(if is_int4(name) { Box::new(i32::try_from(*v).unwrap_or(i32::MAX)) } else { Box::new(*v) });
        sql.push_str(&format!(", {name} = ${}", params.len()));
    }
    sql.push_str(&format!(" WHERE q.tenant_id = $1 RETURNING {COLUMNS_Q}"));
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        params.iter().map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
    let row =
        c.query_opt(&sql, &refs).await?.ok_or_else(|| ControlError::NotFound(format!("quotas of tenant {tenant}")))?;
    Ok(from_row(&row, 0))
}

fn is_int4(column: &str) -> bool {
    matches!(
        column,
        "pg_pool_size"
            | "pg_max_connections"
            | "http_rps"
            | "http_burst"
            | "query_rps"
            | "query_burst"
            | "statement_timeout_ms"
            | "max_rows"
            | "max_kv_value_bytes"
    )
}

/// A change to one key's own rate limits. `Some(None)` (JSON `null`) removes
/// the override, so the key shares the tenant's limit again.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyLimitsPatch {
    #[serde(default, deserialize_with = "some_option")]
    pub http_rps: Option<Option<i32>>,
    #[serde(default, deserialize_with = "some_option")]
    pub http_burst: Option<Option<i32>>,
    #[serde(default, deserialize_with = "some_option")]
    pub query_rps: Option<Option<i32>>,
    #[serde(default, deserialize_with = "some_option")]
    pub query_burst: Option<Option<i32>>,
}

fn some_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<i32>>, D::Error> {
    Option::<i32>::deserialize(d).map(Some)
}

impl KeyLimitsPatch {
    pub fn apply(&self, old: &KeyLimits) -> Result<KeyLimits, ControlError> {
        let pick = |name: &str, patch: Option<Option<i32>>, old: Option<i32>| -> Result<Option<i32>, ControlError> {
            match patch {
                None => Ok(old),
                Some(Some(v)) if v <= 0 => {
                    Err(ControlError::Invalid(format!("key limit {name} must be positive, got {v}")))
                }
                Some(v) => Ok(v),
            }
        };
        Ok(KeyLimits {
            http_rps: pick("http_rps", self.http_rps, old.http_rps)?,
            http_burst: pick("http_burst", self.http_burst, old.http_burst)?,
            query_rps: pick("query_rps", self.query_rps, old.query_rps)?,
            query_burst: pick("query_burst", self.query_burst, old.query_burst)?,
        })
    }
}

/// One key's own limits (all `None` when it has none).
pub async fn key_limits(c: &impl GenericClient, key: uuid::Uuid) -> Result<KeyLimits, ControlError> {
    let row = c.query_opt(&format!("SELECT {COLUMNS_KL} FROM key_limits kl WHERE kl.key_id = $1"), &[&key]).await?;
    Ok(row.map(|r| key_limits_from_row(&r, 0)).unwrap_or_default())
}

/// Replace one key's own limits (a key with none left has no row).
pub async fn set_key_limits(c: &impl GenericClient, key: uuid::Uuid, l: &KeyLimits) -> Result<(), ControlError> {
    if *l == KeyLimits::default() {
        c.execute("DELETE FROM key_limits WHERE key_id = $1", &[&key]).await?;
        return Ok(());
    }
    c.execute(
        "INSERT INTO key_limits (key_id, http_rps, http_burst, query_rps, query_burst) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (key_id) DO UPDATE SET http_rps = $2, http_burst = $3, query_rps = $4, query_burst = $5",
        &[&key, &l.http_rps, &l.http_burst, &l.query_rps, &l.query_burst],
    )
    .await?;
    Ok(())
}
