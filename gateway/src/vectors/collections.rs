//! Collection definitions (control plane) and their tables (tenant database).

use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::Row;

use super::VectorError;
use crate::control::{ControlError, ControlPlane};
use crate::ids::TenantId;
use crate::upstream::postgres::quote_ident;

/// Distance metric of a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Cosine,
    L2,
    InnerProduct,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::L2 => "l2",
            Metric::InnerProduct => "inner_product",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "l2" => Metric::L2,
            "inner_product" => Metric::InnerProduct,
            _ => Metric::Cosine,
        }
    }
    /// pgvector distance operator.
    pub fn operator(self) -> &'static str {
        match self {
            Metric::Cosine => "<=>",
            Metric::L2 => "<->",
            Metric::InnerProduct => "<#>",
        }
    }
    fn opclass(self) -> &'static str {
        match self {
            Metric::Cosine => "vector_cosine_ops",
            Metric::L2 => "vector_l2_ops",
            Metric::InnerProduct => "vector_ip_ops",
        }
    }
    /// Higher is better: 1 - cosine distance, -L2 distance, inner product.
    pub fn score(self, distance: f64) -> f64 {
        match self {
            Metric::Cosine => 1.0 - distance,
            Metric::L2 | Metric::InnerProduct => -distance,
        }
    }
}

/// What a client sends to create a collection.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectionSpec {
    pub dimension: i32,
    #[serde(default = "cosine")]
    pub metric: Metric,
    #[serde(default)]
    pub hnsw: HnswParams,
    /// JSON Schema every point's metadata must satisfy.
    #[serde(default)]
    pub metadata_schema: Option<Value>,
    /// Semantic-cache similarity threshold (0..1].
    #[serde(default = "default_threshold")]
    pub cache_threshold: f32,
}

fn cosine() -> Metric {
    Metric::Cosine
}
fn default_threshold() -> f32 {
    0.95
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HnswParams {
    pub m: i32,
    pub ef_construction: i32,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self { m: 16, ef_construction: 64 }
    }
}

/// A collection as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Collection {
    pub name: String,
    pub dimension: i32,
    pub metric: Metric,
    pub hnsw: HnswParams,
    pub metadata_schema: Option<Value>,
    #[serde(serialize_with = "shortest_f32")]
    pub cache_threshold: f32,
    pub version: i64,
    pub created_at: String,
}

/// An `f32` as the shortest decimal that reads back as it (0.95, not the
/// 0.949999988… a widening to `f64` would print in a JSON value).
fn shortest_f32<S: serde::Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(v.to_string().parse().unwrap_or(f64::from(*v)))
}

impl Collection {
    /// `sluice."c_<name>"`, quoted.
    pub fn table(&self) -> String {
        table_for(&self.name)
    }
}

fn table_for(name: &str) -> String {
    format!("sluice.{}", quote_ident(&format!("c_{name}")))
}

/// `^[a-z][a-z0-9_]{0,47}$`: fits a Postgres identifier with its `c_` prefix.
pub fn validate_name(name: &str) -> Result<(), VectorError> {
    let ok = (1..=48).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(VectorError::Invalid(format!(
            "invalid collection name {:?}: use 1-48 characters a-z, 0-9 and '_', starting with a letter",
            name.chars().take(64).collect::<String>()
        )))
    }
}

impl CollectionSpec {
    pub fn validate(&self) -> Result<(), VectorError> {
        if !(1..=MAX_DIMENSION as i32).contains(&self.dimension) {
            return Err(VectorError::Invalid(format!("`dimension` must be between 1 and {MAX_DIMENSION}")));
        }
        if !(2..=100).contains(&self.hnsw.m) {
            return Err(VectorError::Invalid("`hnsw.m` must be between 2 and 100".into()));
        }
        if !(4..=1000).contains(&self.hnsw.ef_construction) || self.hnsw.ef_construction < 2 * self.hnsw.m {
            return Err(VectorError::Invalid("`hnsw.ef_construction` must be 4..1000 and at least 2 × m".into()));
        }
        if !(self.cache_threshold > 0.0 && self.cache_threshold <= 1.0) {
            return Err(VectorError::Invalid("`cache_threshold` must be in (0, 1]".into()));
        }
        if let Some(schema) = &self.metadata_schema {
            if !(schema.is_object() || schema.is_boolean()) {
                return Err(VectorError::Invalid("`metadata_schema` must be a JSON Schema object".into()));
            }
            jsonschema::validator_for(schema)
                .map_err(|e| VectorError::Invalid(format!("`metadata_schema` is not a valid JSON Schema: {e}")))?;
        }
        Ok(())
    }
}

/// Most dimensions of a collection: what pgvector's HNSW index supports for `vector`.
pub const MAX_DIMENSION: usize = 2000;

const COLUMNS: &str = "name, dimension, metric, hnsw_m, hnsw_ef_construction, metadata_schema, cache_threshold, \
     version, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')";

fn from_row(r: &Row) -> Collection {
    Collection {
        name: r.get(0),
        dimension: r.get(1),
        metric: Metric::parse(r.get(2)),
        hnsw: HnswParams { m: r.get(3), ef_construction: r.get(4) },
        metadata_schema: r.get(5),
        cache_threshold: r.get(6),
        version: r.get(7),
        created_at: r.get(8),
    }
}

pub async fn get(c: &impl GenericClient, tenant: TenantId, name: &str) -> Result<Collection, VectorError> {
    let sql = format!("SELECT {COLUMNS} FROM collections WHERE tenant_id = $1 AND name = $2");
    match c.query_opt(&sql, &[&tenant.0, &name]).await.map_err(ControlError::from)? {
        Some(r) => Ok(from_row(&r)),
        None => Err(VectorError::NotFound(name.to_owned())),
    }
}

pub async fn list(c: &impl GenericClient, tenant: TenantId) -> Result<Vec<Collection>, VectorError> {
    let sql = format!("SELECT {COLUMNS} FROM collections WHERE tenant_id = $1 ORDER BY name");
    Ok(c.query(&sql, &[&tenant.0]).await.map_err(ControlError::from)?.iter().map(from_row).collect())
}

/// Bump the version after a write (invalidates semantic-cache entries).
pub async fn bump_version(c: &impl GenericClient, tenant: TenantId, name: &str) -> Result<i64, VectorError> {
    let r = c
        .query_opt(
            "UPDATE collections SET version = version + 1 WHERE tenant_id = $1 AND name = $2 RETURNING version",
            &[&tenant.0, &name],
        )
        .await
        .map_err(ControlError::from)?;
    r.map(|r| r.get(0)).ok_or_else(|| VectorError::NotFound(name.to_owned()))
}

/// Create the table, then the definition. No control-plane connection is
/// held while the tenant's database works (the tenant can make that wait, and
/// every tenant needs the control plane): the table is created first, so two
/// concurrent creates meet at `CREATE TABLE` (one gets a conflict), and the
/// row is inserted after it; if that insert fails, the table is dropped again.
/// Creating an identical collection again is a no-op (`Ok(false)`).
pub async fn create(
    control: &ControlPlane,
    tenant_db: &deadpool_postgres::Object,
    tenant: TenantId,
    name: &str,
    spec: &CollectionSpec,
) -> Result<(Collection, bool), VectorError> {
    validate_name(name)?;
    spec.validate()?;
    if let Ok(existing) = get(&control.client().await?, tenant, name).await {
        let same = existing.dimension == spec.dimension
            && existing.metric == spec.metric
            && existing.hnsw == spec.hnsw
            && existing.metadata_schema == spec.metadata_schema;
        return if same {
            Ok((existing, false))
        } else {
            Err(VectorError::Conflict(format!("collection {name} exists with a different definition")))
        };
    }
    let table = table_for(name);
    // Identifiers come from the validated name and fixed fragments; numbers are
    // validated integers.
    let ddl = format!(
        "CREATE TABLE {table} (
             id text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 256),
             embedding vector({dim}) NOT NULL,
             metadata jsonb NOT NULL DEFAULT '{{}}'::jsonb,
             updated_at timestamptz NOT NULL DEFAULT now());
         CREATE INDEX ON {table} USING hnsw (embedding {ops}) WITH (m = {m}, ef_construction = {ef});
         CREATE INDEX ON {table} USING gin (metadata jsonb_path_ops);",
        dim = spec.dimension,
        ops = spec.metric.opclass(),
        m = spec.hnsw.m,
        ef = spec.hnsw.ef_construction,
    );
    match tenant_db.batch_execute(&ddl).await {
        Ok(()) => {}
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_TABLE) => {
            return Err(VectorError::Conflict(format!("collection {name} is being created concurrently")));
        }
        Err(e) => return Err(e.into()),
    }
    let inserted = async {
        let c = control.client().await?;
        let n = c
            .execute(
                "INSERT INTO collections (tenant_id, name, dimension, metric, hnsw_m, hnsw_ef_construction, metadata_schema, cache_threshold)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                &[
                    &tenant.0,
                    &name,
                    &spec.dimension,
                    &spec.metric.as_str(),
                    &spec.hnsw.m,
                    &spec.hnsw.ef_construction,
                    &spec.metadata_schema,
                    &spec.cache_threshold,
                ],
            )
            .await?;
        Ok::<_, ControlError>((n, c))
    }
    .await;
    let c = match inserted {
        Ok((1, c)) => c,
        failed => {
            let _ = tenant_db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await;
            return Err(match failed {
                Err(e) => e.into(),
                Ok(_) => VectorError::Conflict(format!("collection {name} is being created concurrently")),
            });
        }
    };
    Ok((get(&c, tenant, name).await?, true))
}

/// Drop the table and the definition (the row after the table: a failed drop
/// leaves the collection usable). A control-plane connection is taken only
/// for the control-plane statements, never while the tenant's database works.
pub async fn delete(
    control: &ControlPlane,
    tenant_db: &deadpool_postgres::Object,
    tenant: TenantId,
    name: &str,
) -> Result<(), VectorError> {
    validate_name(name)?;
    get(&control.client().await?, tenant, name).await?;
    tenant_db.batch_execute(&format!("DROP TABLE IF EXISTS {}", table_for(name))).await?;
    control
        .client()
        .await?
        .execute("DELETE FROM collections WHERE tenant_id = $1 AND name = $2", &[&tenant.0, &name])
        .await
        .map_err(ControlError::from)?;
    Ok(())
}

/// Number of points (exact count).
pub async fn count(tenant_db: &deadpool_postgres::Object, c: &Collection) -> Result<i64, VectorError> {
    Ok(tenant_db.query_one(&format!("SELECT count(*) FROM {}", c.table()), &[]).await?.get(0))
}
