//! `/v1/collections/…`: create/list/get/delete collections, upsert/get/delete
//! points, and k-NN search with metadata filters (and, with `"cache": true`,
//! the semantic cache: see `crate::cache`).

use std::time::Instant;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::extract::{ApiJson, Authed};
use crate::cache::{Scope, SearchScope};
use crate::error::ClientError;
use crate::pipeline::auth::Principal;
use crate::pipeline::{Action, Door, Operation};
use crate::plugins::PluginKind;
use crate::plugins::bindings::types::Candidate;
use crate::services::Services;
use crate::usage;
use crate::vectors::collections::{self, CollectionSpec};
use crate::vectors::points::{self, PointIn};
use crate::vectors::search::{self, SearchRequest};
use crate::vectors::{VectorError, filter};

impl From<VectorError> for ApiError {
    fn from(e: VectorError) -> Self {
        let mut err = ApiError::from_client_error(&e);
        match &e {
            VectorError::BadPoint { index, pointer, .. } => {
                let mut d = Map::new();
                d.insert("point".into(), json!(index));
                if let Some(p) = pointer {
                    d.insert("pointer".into(), json!(p));
                }
                err.status = StatusCode::UNPROCESSABLE_ENTITY;
                err.code = "invalid_point";
                err = err.with_details(d);
            }
            VectorError::Filter(filter::FilterError { .. }) => err.code = "invalid_filter",
            // The tenant's statement timeout (a lock the tenant holds, a slow
            // scan): the same answer as `/v1/sql` gives.
            VectorError::Db(db) if db.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) => {
                err.status = StatusCode::GATEWAY_TIMEOUT;
                err.code = "statement_timeout";
                err.message = "the collection's statement ran past the tenant's statement timeout".into();
            }
            _ => {}
        }
        if e.kind() == crate::error::ErrorKind::User && err.code == "bad_request" {
            err.message = e.to_string();
        }
        err
    }
}

async fn admit(svc: &Services, p: &Principal, action: Action<'_>) -> Result<(), ApiError> {
    Ok(svc.pipeline.admit(&Operation { door: Door::Http, principal: p, action }).await?)
}

/// A collection's definition. The control-plane connection is given back
/// before the caller touches the tenant's database: a tenant can make its own
/// database wait (locks, long statements), and every tenant needs the
/// control plane.
async fn definition(svc: &Services, p: &Principal, name: &str) -> Result<collections::Collection, ApiError> {
    Ok(collections::get(&svc.control.client().await?, p.tenant_id, name).await?)
}

/// After a write of `delta` points: the usage count and the collection's
/// version (which retires its semantic-cache entries); the new version.
async fn record_write(svc: &Services, p: &Principal, name: &str, delta: i64) -> Result<i64, ApiError> {
    let control = svc.control.client().await?;
    usage::add_points(&control, p.tenant_id, delta).await?;
    Ok(collections::bump_version(&control, p.tenant_id, name).await?)
}

pub async fn put_collection(
    Authed(p): Authed,
    State(svc): State<Services>,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<CollectionSpec>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admit(&svc, &p, Action::CollectionWrite { name: &name, points: 0, removes: true }).await?;
    // No control-plane connection is held while waiting for the tenant's
    // connection or its database: every tenant needs the control plane.
    let db = svc.tenant_pg.get_owner(&svc, &p).await.map_err(VectorError::from)?;
    let (c, created) = collections::create(&svc.control, &db, p.tenant_id, &name, &spec).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(json!(c))))
}

pub async fn list_collections(Authed(p): Authed, State(svc): State<Services>) -> Result<Json<Value>, ApiError> {
    admit(&svc, &p, Action::CollectionRead { name: "" }).await?;
    let control = svc.control.client().await?;
    Ok(Json(json!({ "collections": collections::list(&control, p.tenant_id).await? })))
}

pub async fn get_collection(
    Authed(p): Authed,
    State(svc): State<Services>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admit(&svc, &p, Action::CollectionRead { name: &name }).await?;
    let c = definition(&svc, &p, &name).await?;
    let db = svc.tenant_pg.get(&svc, &p).await.map_err(VectorError::from)?;
    let count = collections::count(&db, &c).await?;
    let mut v = json!(c);
    v["points"] = json!(count);
    Ok(Json(v))
}

pub async fn delete_collection(
    Authed(p): Authed,
    State(svc): State<Services>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    admit(&svc, &p, Action::CollectionWrite { name: &name, points: 0, removes: true }).await?;
    let points = definition(&svc, &p, &name).await.ok();
    let db = svc.tenant_pg.get_owner(&svc, &p).await.map_err(VectorError::from)?;
    let removed = match &points {
        Some(c) => collections::count(&db, c).await.unwrap_or(0),
        None => 0,
    };
    collections::delete(&svc.control, &db, p.tenant_id, &name).await?;
    drop(db);
    usage::add_points(&svc.control.client().await?, p.tenant_id, -removed).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upsert {
    points: Vec<PointIn>,
}

pub async fn upsert_points(
    Authed(p): Authed,
    State(svc): State<Services>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<Upsert>,
) -> Result<Json<Value>, ApiError> {
    admit(&svc, &p, Action::CollectionWrite { name: &name, points: body.points.len(), removes: false }).await?;
    let c = definition(&svc, &p, &name).await?;
    let schema = match &c.metadata_schema {
        Some(s) => Some(
            jsonschema::validator_for(s)
                .map_err(|e| VectorError::Invalid(format!("stored metadata_schema no longer compiles: {e}")))?,
        ),
        None => None,
    };
    let batch = points::validate_batch(&c, schema.as_ref(), body.points)?;
    let db = svc.tenant_pg.get_owner(&svc, &p).await.map_err(VectorError::from)?;
    let (n, inserted) = points::upsert(&db, &c, &batch).await?;
    drop(db);
    let version = record_write(&svc, &p, &name, i64::try_from(inserted).unwrap_or(i64::MAX)).await?;
    Ok(Json(json!({ "upserted": n, "version": version })))
}

pub async fn get_point(
    Authed(p): Authed,
    State(svc): State<Services>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    admit(&svc, &p, Action::CollectionRead { name: &name }).await?;
    let c = definition(&svc, &p, &name).await?;
    let db = svc.tenant_pg.get(&svc, &p).await.map_err(VectorError::from)?;
    match points::get(&db, &c, &id).await? {
        Some(pt) => Ok(Json(json!(pt))),
        None => Err(ApiError::not_found(format!("point {id:?} not found in collection {name}"))),
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeletePoints {
    ids: Vec<points::PointId>,
}

async fn delete_ids(svc: &Services, p: &Principal, name: &str, ids: Vec<String>) -> Result<Value, ApiError> {
    admit(svc, p, Action::CollectionWrite { name, points: ids.len(), removes: true }).await?;
    if ids.is_empty() || ids.len() > points::MAX_BATCH {
        return Err(ApiError::bad_request(format!("`ids` must hold 1 to {} ids", points::MAX_BATCH)));
    }
    let c = definition(svc, p, name).await?;
    let db = svc.tenant_pg.get_owner(svc, p).await.map_err(VectorError::from)?;
    let n = points::delete(&db, &c, &ids).await?;
    drop(db);
    let version = record_write(svc, p, name, -i64::try_from(n).unwrap_or(i64::MAX)).await?;
    Ok(json!({ "deleted": n, "version": version }))
}

pub async fn delete_point(
    Authed(p): Authed,
    State(svc): State<Services>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let v = delete_ids(&svc, &p, &name, vec![id.clone()]).await?;
    if v["deleted"] == 0 {
        return Err(ApiError::not_found(format!("point {id:?} not found in collection {name}")));
    }
    Ok(StatusCode::NO_CONTENT)
}

pub async fn delete_points(
    Authed(p): Authed,
    State(svc): State<Services>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<DeletePoints>,
) -> Result<Json<Value>, ApiError> {
    let ids = body.ids.into_iter().map(points::PointId::into_string).collect();
    Ok(Json(delete_ids(&svc, &p, &name, ids).await?))
}

pub async fn search(
    Authed(p): Authed,
    State(svc): State<Services>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SearchRequest>,
) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    admit(&svc, &p, Action::Search { collection: &name, k: req.k }).await?;
    let c = definition(&svc, &p, &name).await?;
    let query = search::validate(&c, &req)?;
    let reranker = if req.rerank { active_reranker(&svc, &p).await } else { None };
    // The cache scope names the reranker version: activating another one
    // never serves hits ordered by the old one.
    let reranker_version = reranker.as_ref().map_or(0, |r| u32::try_from(r.version).unwrap_or(0));
    let cached = if req.cache {
        Some(cached_search(&svc, &p, &c, &req, reranker_version, query.as_slice()).await)
    } else {
        None
    };
    let (hits, cache, rerank_info) = match cached {
        Some(CachedSearch { hits: Some(hits), report, .. }) => (hits, Some(report), Value::Null),
        cached => {
            let db = svc.tenant_pg.get(&svc, &p).await.map_err(VectorError::from)?;
            let vector = cached.as_ref().map(|_| query.to_vec());
            let (hits, rerank_info) = match &reranker {
                None => (search::search(&db, &c, &req, query).await?, Value::Null),
                Some(r) => rerank(&svc, &db, &c, &req, query, r).await?,
            };
            let hits = json!(hits);
            // A failed rerank is not cached: the next request tries again.
            let rerank_ok = rerank_info.get("applied").is_none_or(|a| a == true);
            if let (Some(cached), Some(vector), true) = (&cached, vector, rerank_ok) {
                store_search(&svc, &p, cached, &vector, &hits).await;
            }
            (hits, cached.map(|c| c.report), rerank_info)
        }
    };
    let took = started.elapsed().as_secs_f64();
    metrics::histogram!("sluice_vector_search_seconds", "tenant" => p.tenant.to_string()).record(took);
    let mut out = json!({ "hits": hits, "collection_version": c.version, "took_ms": took * 1000.0 });
    if let Some(report) = cache {
        out["cache"] = report;
    }
    if !rerank_info.is_null() {
        out["reranker"] = rerank_info;
    }
    Ok(Json(out))
}

/// The tenant's active reranker, if any. Rerankers fail open: trouble loading
/// one searches without it.
async fn active_reranker(svc: &Services, p: &Principal) -> Option<std::sync::Arc<crate::plugins::Active>> {
    match svc.plugins.active(p.tenant_id, p.tenant.as_str(), PluginKind::Reranker).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(tenant = %p.tenant, error = %e, "load reranker plugin; searching without it");
            None
        }
    }
}

/// A semantic-cache lookup for a search: the hits on a hit, and the
/// `"cache"` object of the response.
struct CachedSearch {
    scope: Option<Scope>,
    hits: Option<Value>,
    report: Value,
}

/// Look a search up in the semantic cache. Cache trouble never fails the
/// search: it runs uncached and the response says `"status": "error"`.
async fn cached_search(
    svc: &Services,
    p: &Principal,
    c: &collections::Collection,
    req: &SearchRequest,
    reranker_version: u32,
    vector: &[f32],
) -> CachedSearch {
    let scope = Scope::search(&SearchScope {
        collection: &c.name,
        version: c.version,
        k: req.k,
        filter: req.filter.as_ref(),
        include_metadata: req.include.metadata,
        include_vector: req.include.vector,
        ef_search: req.ef_search.unwrap_or(search::DEFAULT_EF_SEARCH),
        reranker_version,
    });
    match svc.semcache.lookup(p, &scope, vector, c.cache_threshold, "search").await {
        Ok(l) => {
            let hits = l.hit.and_then(|v| serde_json::from_slice::<Value>(&v).ok());
            let status = if hits.is_some() { "hit" } else { "miss" };
            let report = json!({ "status": status, "similarity": l.similarity });
            CachedSearch { scope: Some(scope), hits, report }
        }
        Err(e) => {
            tracing::warn!(error = %e, "semantic cache lookup failed; searching uncached");
            CachedSearch { scope: None, hits: None, report: json!({ "status": "error" }) }
        }
    }
}

async fn store_search(svc: &Services, p: &Principal, cached: &CachedSearch, vector: &[f32], hits: &Value) {
    let Some(scope) = &cached.scope else { return };
    let Ok(bytes) = serde_json::to_vec(hits) else { return };
    if let Err(e) = svc.semcache.insert(p, scope, vector, &bytes, None).await {
        tracing::warn!(error = %e, "store search result in the semantic cache");
    }
}

/// Search a wider candidate set with vectors and metadata, let the reranker
/// order it and keep `k`. Any reranker failure keeps the original order.
async fn rerank(
    svc: &Services,
    db: &deadpool_postgres::Object,
    c: &collections::Collection,
    req: &SearchRequest,
    query: pgvector::Vector,
    r: &std::sync::Arc<crate::plugins::Active>,
) -> Result<(Vec<search::Hit>, Value), ApiError> {
    let mut wide = req.clone();
    wide.k = req.k.saturating_mul(3).clamp(req.k, 1000);
    wide.include = search::Include { metadata: true, vector: true };
    let query_vec = query.to_vec();
    let mut hits = search::search(db, c, &wide, query).await?;
    let candidates = hits
        .iter()
        .map(|h| Candidate {
            id: h.id.clone(),
            distance: h.distance,
            vector: h.vector.clone().unwrap_or_default(),
            metadata: h.metadata.as_ref().map_or_else(|| "null".to_owned(), Value::to_string),
        })
        .collect();
    let k = req.k as usize;
    let info = match svc.plugins.rerank(r, query_vec, req.k, candidates).await {
        Ok(order) => {
            let mut picked = Vec::with_capacity(k);
            for (i, score) in order.into_iter().take(k) {
                let mut h = hits[i].clone();
                h.rerank_score = Some(score);
                picked.push(h);
            }
            hits = picked;
            json!({ "version": r.version, "applied": true })
        }
        Err(e) => {
            tracing::warn!(tenant = %r.tenant, plugin = %r.label(), cause = e.cause(), error = %e, "reranker failed; original order");
            hits.truncate(k);
            json!({ "version": r.version, "applied": false, "error": e.client_message() })
        }
    };
    for h in &mut hits {
        if !req.include.vector {
            h.vector = None;
        }
        if !req.include.metadata {
            h.metadata = None;
        }
    }
    Ok((hits, info))
}
