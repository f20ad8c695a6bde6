//! Points: validate a whole batch first (dimension, finite values, metadata
//! against the collection's JSON Schema), then write it in one statement, so a
//! bad batch writes nothing.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::VectorError;
use super::collections::{Collection, MAX_DIMENSION};
use crate::sql::params::{vector_element, vector_from};

/// Most points in one upsert.
pub const MAX_BATCH: usize = 1000;

/// A point as sent by a client.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PointIn {
    pub id: PointId,
    #[schemars(with = "Vec<f32>")]
    pub vector: VectorIn,
    // Kept as its JSON text: parsed into values one point at a time, while
    // it is checked, and stored from the text.
    #[serde(default)]
    #[schemars(with = "Option<Value>")]
    pub metadata: Option<Box<RawValue>>,
}

/// A point's vector as sent, read straight into `f32`s (4 bytes a number,
/// where a JSON value tree takes 32 and more), at most [`MAX_DIMENSION`] of
/// them: a longer array stops the request being parsed. Any other problem is
/// kept and reported with the point's index.
#[derive(Debug, Clone)]
pub struct VectorIn(Result<Vec<f32>, String>);

impl VectorIn {
    fn into_vector(self) -> Result<pgvector::Vector, String> {
        self.0.and_then(vector_from)
    }
}

impl<'de> Deserialize<'de> for VectorIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(VectorVisitor)
    }
}

/// One element of a vector: a number, or the kind of what was there instead.
enum Element {
    Number(f64),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Element {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ElementVisitor)
    }
}

struct ElementVisitor;

impl<'de> Visitor<'de> for ElementVisitor {
    type Value = Element;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Element, E> {
        Ok(Element::Number(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Element, E> {
        Ok(Element::Number(v as f64))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Element, E> {
        Ok(Element::Number(v as f64))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Element, E> {
        Ok(Element::Other("boolean"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Element, E> {
        Ok(Element::Other("string"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Element, E> {
        Ok(Element::Other("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Element, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Element::Other("array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Element, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Element::Other("object"))
    }
}

struct VectorVisitor;

impl<'de> Visitor<'de> for VectorVisitor {
    type Value = VectorIn;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of numbers")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<VectorIn, A::Error> {
        let mut out = Ok(Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_DIMENSION)));
        let mut i = 0;
        while let Some(e) = seq.next_element::<Element>()? {
            if i == MAX_DIMENSION {
                return Err(de::Error::custom(format!("a vector has at most {MAX_DIMENSION} dimensions")));
            }
            if out.is_ok() {
                let element = match e {
                    Element::Number(f) => vector_element(i, f),
                    Element::Other(kind) => Err(format!("element {i}: expected a number, found {kind}")),
                };
                match element {
                    Ok(f) => {
                        if let Ok(v) = &mut out {
                            v.push(f);
                        }
                    }
                    Err(problem) => out = Err(problem),
                }
            }
            i += 1;
        }
        Ok(VectorIn(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<VectorIn, A::Error> {
        ElementVisitor.visit_map(map).map(not_an_array)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<VectorIn, E> {
        Ok(not_an_array(Element::Other("number")))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<VectorIn, E> {
        Ok(not_an_array(Element::Other("number")))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<VectorIn, E> {
        Ok(not_an_array(Element::Other("number")))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<VectorIn, E> {
        Ok(not_an_array(Element::Other("boolean")))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<VectorIn, E> {
        Ok(not_an_array(Element::Other("string")))
    }
    fn visit_unit<E: de::Error>(self) -> Result<VectorIn, E> {
        Ok(not_an_array(Element::Other("null")))
    }
}

fn not_an_array(e: Element) -> VectorIn {
    let kind = match e {
        Element::Number(_) => "number",
        Element::Other(kind) => kind,
    };
    VectorIn(Err(format!("expected an array of numbers, found {kind}")))
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
    /// Each point's metadata object as JSON text.
    pub metadata: Vec<String>,
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
        let v = p.vector.into_vector().map_err(|problem| VectorError::BadPoint {
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
        let text = p.metadata.map_or_else(|| "{}".to_owned(), |m| String::from(Box::<str>::from(m)));
        let meta: Value = serde_json::from_str(&text).map_err(|e| VectorError::BadPoint {
            index,
            pointer: None,
            problem: format!("`metadata`: {e}"),
        })?;
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
        metas.push(text);
    }
    Ok(Batch { ids, vectors, metadata: metas })
}

/// Insert or replace points in one statement: `(written, newly inserted)`.
pub async fn upsert(db: &deadpool_postgres::Object, c: &Collection, b: &Batch) -> Result<(u64, u64), VectorError> {
    let sql = format!(
        "WITH w AS (
           INSERT INTO {} (id, embedding, metadata)
           SELECT u.id, u.embedding, u.metadata::jsonb
             FROM unnest($1::text[], $2::vector[], $3::text[]) AS u(id, embedding, metadata)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(json: &str) -> Result<Result<Vec<f32>, String>, String> {
        serde_json::from_str::<VectorIn>(json).map(|v| v.into_vector().map(|v| v.to_vec())).map_err(|e| e.to_string())
    }

    #[test]
    fn vectors_are_read_as_floats_with_their_problems() {
        assert_eq!(vector("[1, 2.5, -3]"), Ok(Ok(vec![1.0, 2.5, -3.0])));
        assert_eq!(vector("[]"), Ok(Err("a vector needs at least one element".into())));
        assert_eq!(vector(r#"[1, "x", [2]]"#), Ok(Err("element 1: expected a number, found string".into())));
        assert_eq!(vector("[1, 1e300]"), Ok(Err("element 1: not a finite 32-bit float".into())));
        assert_eq!(vector(r#"{"a": [1]}"#), Ok(Err("expected an array of numbers, found object".into())));
        assert_eq!(vector("null"), Ok(Err("expected an array of numbers, found null".into())));
    }

    #[test]
    fn overlong_vectors_stop_the_parse() {
        let long = format!("[{}]", vec!["0.5"; MAX_DIMENSION + 1].join(","));
        assert!(vector(&long).is_err_and(|e| e.contains("at most 2000 dimensions")));
        let max = format!("[{}]", vec!["0.5"; MAX_DIMENSION].join(","));
        assert!(vector(&max).is_ok_and(|v| v.is_ok_and(|v| v.len() == MAX_DIMENSION)));
    }
}
