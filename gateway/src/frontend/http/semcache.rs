//! `/v1/semcache/{namespace}`: the semantic cache for tenants' own payloads
//! (e.g. model responses keyed by prompt embeddings).
//!
//! - `POST …/lookup` `{vector, threshold?}` → `{hit: true, value, similarity}`
//!   or `{hit: false}`; `threshold` defaults to `cache.default_threshold`.
//! - `POST …/entries` `{vector, value, ttl?}` → 201 `{id, ttl}`; `value` is any
//!   JSON up to `cache.max_value_bytes`, `ttl` in seconds (default
//!   `cache.default_ttl_secs`, capped at `cache.max_ttl_secs`).
//! - `DELETE /v1/semcache/{namespace}` → `{deleted}`.
//!
//! Each passes the pipeline as a key/value operation on key `semcache:{namespace}`.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{ApiJson, Authed};
use crate::cache::{CacheError, Scope};
use crate::pipeline::{Action, Door, Operation};
use crate::services::Services;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupBody {
    vector: Vec<f32>,
    #[serde(default)]
    threshold: Option<f32>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EntryBody {
    vector: Vec<f32>,
    value: Value,
    /// Seconds.
    #[serde(default)]
    ttl: Option<u64>,
}

pub async fn lookup(
    Authed(p): Authed,
    State(svc): State<Services>,
    Path(ns): Path<String>,
    ApiJson(body): ApiJson<LookupBody>,
) -> Result<Json<Value>, ApiError> {
    let scope = Scope::namespace(&ns)?;
    let key = format!("semcache:{ns}");
    svc.pipeline.admit(&Operation { door: Door::Http, principal: &p, action: Action::KvGet { key: &key } }).await?;
    let threshold = body.threshold.unwrap_or(svc.semcache.config().default_threshold);
    if !(threshold > 0.0 && threshold <= 1.0) {
        return Err(CacheError::Invalid("`threshold` must be in (0, 1]".into()).into());
    }
    let l = svc.semcache.lookup(&p, &scope, &body.vector, threshold, "api").await?;
    match (l.hit, l.similarity) {
        (Some(bytes), Some(similarity)) => {
            let value: Value = serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::from_client_error(&CacheError::Invalid(format!("stored value: {e}"))))?;
            Ok(Json(json!({ "hit": true, "value": value, "similarity": similarity })))
        }
        _ => Ok(Json(json!({ "hit": false }))),
    }
}

pub async fn put_entry(
    Authed(p): Authed,
    State(svc): State<Services>,
    Path(ns): Path<String>,
    ApiJson(body): ApiJson<EntryBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let scope = Scope::namespace(&ns)?;
    let cfg = svc.semcache.config();
    let value = serde_json::to_vec(&body.value).map_err(|e| CacheError::Invalid(format!("`value`: {e}")))?;
    let key = format!("semcache:{ns}");
    let op = Action::KvPut { key: &key, size: value.len() as u64 };
    svc.pipeline.admit(&Operation { door: Door::Http, principal: &p, action: op }).await?;
    if value.len() as u64 > cfg.max_value_bytes {
        return Err(CacheError::TooLarge { size: value.len(), max: cfg.max_value_bytes }.into());
    }
    if body.ttl == Some(0) {
        return Err(CacheError::Invalid("`ttl` must be at least 1 second".into()).into());
    }
    let ttl = body.ttl.unwrap_or(cfg.default_ttl_secs).min(cfg.max_ttl_secs);
    let id = svc.semcache.insert(&p, &scope, &body.vector, &value, Some(Duration::from_secs(ttl))).await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id, "ttl": ttl }))))
}

pub async fn delete_namespace(
    Authed(p): Authed,
    State(svc): State<Services>,
    Path(ns): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let scope = Scope::namespace(&ns)?;
    let key = format!("semcache:{ns}");
    svc.pipeline.admit(&Operation { door: Door::Http, principal: &p, action: Action::KvDelete { key: &key } }).await?;
    let n = svc.semcache.clear(&p, &scope).await?;
    Ok(Json(json!({ "deleted": n })))
}
