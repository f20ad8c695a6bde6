//! Points: validate a whole batch first (dimension, finite values, metadata
//! against the collection's JSON Schema), then write it in one statement, so a
//! bad batch writes nothing.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::VectorError;
use super::collections::Collection;
use crate::sql::params::vector;

/// Most points in one upsert.
pub const MAX_BATCH: usize = 1000;

/// A point as sent by a client.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PointIn {
    pub id: PointId,
    pub vector: Value,
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// Point ids are strings; integers are accepted and stored as their decimal text.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum PointId {
    Text(String),
    Int(i64),
}

impl PointId {
    pub fn into_string(self) -> String {
        match self {
            PointId::Text(s) => s,
            PointId::Int(i) => i.to_string(),
        }
    }
}

/// A point as returned.
#[derive(Debug, Clone, Serialize)]
pub struct PointOut {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

pub fn validate_id(id: &str, index: usize) -> Result<(), VectorError> {
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        return Err(VectorError::BadPoint {
            index,
            pointer: None,
            problem: "`id` must be 1-256 bytes without control characters".into(),
        });
    }
    Ok(())
}

/// A validated batch, column by column, ready for one `unnest` insert.
pub struct Batch {
    pub ids: Vec<String>,
    pub vectors: Vec<pgvector::Vector>,
    pub metadata: Vec<Value>,
}

/// Check every point; return rows ready to write.
pub fn validate_batch(
    c: &Collection,
    schema: Option<&jsonschema::Validator>,
    points: Vec<PointIn>,
) -> Result<Batch, VectorError> {
    if points.is_empty() || points.len() > MAX_BATCH {
        return Err(VectorError::Invalid(format!("`points` must hold 1 to {MAX_BATCH} points")));
    }
    let mut ids = Vec::with_capacity(points.len());
    let mut vectors = Vec::with_capacity(points.len());
    let mut metas = Vec::with_capacity(points.len());
    let mut seen = std::collections::HashSet::new();
    for (index, p) in points.into_iter().enumerate() {
        let id = p.id.into_string();
        validate_id(&id, index)?;
        if !seen.insert(id.clone()) {
            return Err(VectorError::BadPoint {
                index,
                pointer: None,
                problem: format!("duplicate id {id:?} in batch"),
            });
        }
        let v = vector(&p.vector).map_err(|problem| VectorError::BadPoint {
            index,
            pointer: None,
            problem: format!("`vector`: {problem}"),
        })?;
        let dim = v.as_slice().len();
        if dim != c.dimension as usize {
            return Err(VectorError::BadPoint {
                index,
                pointer: None,
                problem: format!("`vector` has {dim} dimensions; collection {} has {}", c.name, c.dimension),
            });
        }
        let meta = p.metadata.unwrap_or_else(|| Value::Object(Map::new()));
        if !meta.is_object() {
            return Err(VectorError::BadPoint { index, pointer: None, problem: "`metadata` must be an object".into() });
        }
        if let Some(schema) = schema
            && let Some(e) = schema.iter_errors(&meta).next()
        {
            let pointer = e.instance_path().as_str().to_owned();
            return Err(VectorError::BadPoint {
                index,
                problem: format!(
                    "metadata{}: {e}",
                    if pointer.is_empty() { String::new() } else { format!(" at {pointer}") }
                ),
                pointer: Some(pointer),
            });
        }
        ids.push(id);
        vectors.push(v);
        metas.push(meta);
    }
    Ok(Batch { ids, vectors, metadata: metas })
}

/// Insert or replace points in one statement: `(written, newly inserted)`.
pub async fn upsert(db: &deadpool_postgres::Object, c: &Collection, b: &Batch) -> Result<(u64, u64), VectorError> {
    let sql = format!(
        "WITH w AS (
           INSERT INTO {} (id, embedding, metadata)
           SELECT * FROM unnest($1::text[], $2::vector[], $3::jsonb[])
           ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, metadata = EXCLUDED.metadata,
                                          updated_at = now()
           RETURNING (xmax = 0) AS inserted)
         SELECT count(*), count(*) FILTER (WHERE inserted) FROM w",
        c.table()
    );
    let r = db.query_one(&sql, &[&b.ids, &b.vectors, &b.metadata]).await?;
    let (n, ins): (i64, i64) = (r.get(0), r.get(1));
    Ok((u64::try_from(n).unwrap_or(0), u64::try_from(ins).unwrap_or(0)))
}

pub async fn get(db: &deadpool_postgres::Object, c: &Collection, id: &str) -> Result<Option<PointOut>, VectorError> {
    let sql = format!("SELECT id, embedding, metadata FROM {} WHERE id = $1", c.table());
    Ok(db.query_opt(&sql, &[&id]).await?.map(|r| PointOut {
        id: r.get(0),
        vector: Some(r.get::<_, pgvector::Vector>(1).to_vec()),
        metadata: Some(r.get(2)),
    }))
}

pub async fn delete(db: &deadpool_postgres::Object, c: &Collection, ids: &[String]) -> Result<u64, VectorError> {
    let sql = format!("DELETE FROM {} WHERE id = ANY($1)", c.table());
    Ok(db.execute(&sql, &[&ids]).await?)
}
