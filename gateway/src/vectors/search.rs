//! k-nearest-neighbour search on a collection's HNSW index.
//!
//! Runs in a short transaction with `hnsw.ef_search` and
//! `hnsw.iterative_scan = relaxed_order` (pgvector ≥ 0.8): when a metadata
//! filter removes candidates, the index scan keeps going (up to
//! `hnsw.max_scan_tuples`) until k rows match, so a filtered search still
//! returns k results whenever k points match. Relaxed order is re-sorted by
//! exact distance in the outer query.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::VectorError;
use super::collections::Collection;
use super::filter;
use crate::sql::params::{Param, vector};

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    pub vector: Value,
    #[serde(default = "default_k")]
    pub k: u32,
    #[serde(default)]
    pub filter: Option<Value>,
    #[serde(default)]
    pub include: Include,
    /// HNSW candidate list size (recall vs speed). Default 200.
    #[serde(default)]
    pub ef_search: Option<u32>,
    /// Answer from the semantic cache when a cached query in the same scope is
    /// similar enough (the collection's `cache_threshold`), and cache the
    /// result on a miss. Default false.
    #[serde(default)]
    pub cache: bool,
    /// Let the tenant's active reranker plugin re-order the hits. Default true;
    /// `false` opts out for this request.
    #[serde(default = "default_rerank")]
    pub rerank: bool,
}

fn default_rerank() -> bool {
    true
}

fn default_k() -> u32 {
    10
}

#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Include {
    pub metadata: bool,
    pub vector: bool,
}

impl Default for Include {
    fn default() -> Self {
        Self { metadata: true, vector: false }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    pub id: String,
    pub distance: f64,
    pub score: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
    /// The reranker plugin's score, when one re-ordered the hits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerank_score: Option<f64>,
}

pub const DEFAULT_EF_SEARCH: u32 = 200;

/// Validate a request against its collection; returns the query vector.
pub fn validate(c: &Collection, req: &SearchRequest) -> Result<pgvector::Vector, VectorError> {
    let v = vector(&req.vector).map_err(|e| VectorError::Invalid(format!("`vector`: {e}")))?;
    if v.as_slice().len() != c.dimension as usize {
        return Err(VectorError::Invalid(format!(
            "`vector` has {} dimensions; collection {} has {}",
            v.as_slice().len(),
            c.name,
            c.dimension
        )));
    }
    if !(1..=1000).contains(&req.k) {
        return Err(VectorError::Invalid("`k` must be between 1 and 1000".into()));
    }
    if let Some(ef) = req.ef_search
        && !(1..=1000).contains(&ef)
    {
        return Err(VectorError::Invalid("`ef_search` must be between 1 and 1000".into()));
    }
    Ok(v)
}

pub async fn search(
    db: &deadpool_postgres::Object,
    c: &Collection,
    req: &SearchRequest,
    query: pgvector::Vector,
) -> Result<Vec<Hit>, VectorError> {
    let compiled = match &req.filter {
        Some(f) => filter::compile(f, 3)?,
        None => filter::Compiled { sql: "TRUE".into(), params: vec![] },
    };
    let op = c.metric.operator();
    let sql = format!(
        "WITH nn AS MATERIALIZED (
             SELECT id, metadata, {vec_col}, embedding {op} $1 AS distance
             FROM {table} WHERE {filter}
             ORDER BY embedding {op} $1 LIMIT $2)
         SELECT * FROM nn ORDER BY distance, id",
        vec_col = if req.include.vector { "embedding" } else { "NULL::vector AS embedding" },
        table = c.table(),
        filter = compiled.sql,
    );
    let k = i64::from(req.k);
    let mut params: Vec<Param> = vec![Param::Vector(query), Param::I64(k)];
    params.extend(compiled.params);
    let ef = req.ef_search.unwrap_or(DEFAULT_EF_SEARCH).max(req.k.min(1000));
    // Numbers only in the SET statements: validated integers.
    db.batch_execute(&format!(
        "BEGIN READ ONLY; SET LOCAL hnsw.ef_search = {ef}; SET LOCAL hnsw.iterative_scan = relaxed_order"
    ))
    .await?;
    let result = async {
        let stmt = db.prepare_cached(&sql).await?;
        db.query(&stmt, &params.iter().map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync)).collect::<Vec<_>>())
            .await
    }
    .await;
    let _ = db.batch_execute(if result.is_ok() { "COMMIT" } else { "ROLLBACK" }).await;
    let rows = result?;
    Ok(rows
        .iter()
        .map(|r| {
            let distance: f64 = r.get(3);
            Hit {
                id: r.get(0),
                distance,
                score: c.metric.score(distance),
                metadata: req.include.metadata.then(|| r.get(1)),
                vector: if req.include.vector {
                    r.get::<_, Option<pgvector::Vector>>(2).map(|v| v.to_vec())
                } else {
                    None
                },
                rerank_score: None,
            }
        })
        .collect())
}
