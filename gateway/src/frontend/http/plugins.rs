//! `/v1/plugins/{kind}…` (tenant admin key): upload a component (validated,
//! stored, versioned), list versions, activate / roll back, deactivate, delete
//! a version, and run a sample input through a version. `/v1/retention/runs`
//! starts a retention run (or a dry run). All of it is audited.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{ApiJson, Ctx, TenantAdmin};
use crate::control::audit::Actor;
use crate::control::tenants;
use crate::error::ClientError;
use crate::pipeline::auth::Principal;
use crate::plugins::bindings::types::{Candidate, Door as WitDoor, Item, ItemKind, MetadataEntry, Origin, Request};
use crate::plugins::runtime::{PolicyDecision, RetentionVerdict, Who};
use crate::plugins::{PluginError, PluginKind, registry};
use crate::retention::{self, RetentionError, RunOptions};
use crate::services::Services;

/// Header carrying a JSON config on upload (alternative to `?config=`).
pub const CONFIG_HEADER: &str = "x-sluice-plugin-config";

impl From<PluginError> for ApiError {
    fn from(e: PluginError) -> Self {
        let mut err = ApiError::from_client_error(&e);
        if matches!(e, PluginError::Invalid(_)) {
            err.status = StatusCode::UNPROCESSABLE_ENTITY;
            err.code = "invalid_plugin";
        }
        err
    }
}

impl From<RetentionError> for ApiError {
    fn from(e: RetentionError) -> Self {
        match e {
            RetentionError::Plugin(p) => p.into(),
            other => ApiError::from_client_error(&other),
        }
    }
}

fn kind(raw: &str) -> Result<PluginKind, ApiError> {
    PluginKind::parse(raw)
        .ok_or_else(|| ApiError::not_found(format!("no plugin kind {raw:?}; kinds are policy, retention, reranker")))
}

/// A tenant key as the actor of an audited change.
pub(super) fn actor(p: &Principal) -> Actor {
    Actor::Key(p.key_prefix.0.clone())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// Activate the new version at once.
    #[serde(default)]
    activate: bool,
    /// JSON config to activate with (URL-encoded).
    #[serde(default)]
    config: Option<String>,
}

fn parse_config(raw: &str) -> Result<Value, ApiError> {
    serde_json::from_str(raw).map_err(|e| ApiError::bad_request(format!("plugin config is not valid JSON: {e}")))
}

pub async fn upload(
    TenantAdmin(p): TenantAdmin,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    Path(raw_kind): Path<String>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let kind = kind(&raw_kind)?;
    let config = match (q.config.as_deref(), headers.get(CONFIG_HEADER)) {
        (Some(c), _) => Some(parse_config(c)?),
        (None, Some(h)) => {
            Some(parse_config(h.to_str().map_err(|_| ApiError::bad_request(format!("{CONFIG_HEADER} is not text")))?)?)
        }
        (None, None) => None,
    };
    let actor = actor(&p);
    let who = Who { tenant_name: p.tenant.as_str(), actor: &actor, request_id: Some(&ctx.request_id) };
    let out = svc.plugins.upload(p.tenant_id, &who, kind, body, q.activate, config).await?;
    Ok((StatusCode::CREATED, Json(out)))
}

pub async fn list(
    TenantAdmin(p): TenantAdmin,
    State(svc): State<Services>,
    Path(raw_kind): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let kind = kind(&raw_kind)?;
    let c = svc.control.client().await?;
    Ok(Json(json!(registry::list(&c, p.tenant_id, kind).await?)))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    /// The version to make active (any stored version: this is also roll back).
    pub version: i32,
    /// New JSON config for the plugin; the current one is kept when absent.
    #[serde(default)]
    pub config: Option<Value>,
}

pub async fn activate(
    TenantAdmin(p): TenantAdmin,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    Path(raw_kind): Path<String>,
    ApiJson(req): ApiJson<ActivateRequest>,
) -> Result<Json<Value>, ApiError> {
    let kind = kind(&raw_kind)?;
    let actor = actor(&p);
    let who = Who { tenant_name: p.tenant.as_str(), actor: &actor, request_id: Some(&ctx.request_id) };
    Ok(Json(svc.plugins.activate(p.tenant_id, &who, kind, req.version, req.config).await?))
}

pub async fn deactivate(
    TenantAdmin(p): TenantAdmin,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    Path(raw_kind): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let kind = kind(&raw_kind)?;
    let actor = actor(&p);
    let who = Who { tenant_name: p.tenant.as_str(), actor: &actor, request_id: Some(&ctx.request_id) };
    Ok(Json(svc.plugins.deactivate(p.tenant_id, &who, kind).await?))
}

pub async fn delete_version(
    TenantAdmin(p): TenantAdmin,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    Path((raw_kind, version)): Path<(String, i32)>,
) -> Result<StatusCode, ApiError> {
    let kind = kind(&raw_kind)?;
    let actor = actor(&p);
    let who = Who { tenant_name: p.tenant.as_str(), actor: &actor, request_id: Some(&ctx.request_id) };
    svc.plugins.delete_version(p.tenant_id, &who, kind, version).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    /// Version to run; the active one when absent.
    #[serde(default)]
    pub version: Option<i32>,
    /// Config to run with instead of the stored one.
    #[serde(default)]
    pub config: Option<Value>,
    /// A sample input for the kind: policy `{operation, door?, sql?, object_key?,
    /// collection?, size?, count?}`; retention `{now_ms?, items: [{key, size?,
    /// modified_ms, content_type?, metadata?: {k: v}}]}`; reranker `{query, k?,
    /// candidates: [{id, distance?, vector?, metadata?}]}`.
    pub input: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyInput {
    operation: String,
    #[serde(default)]
    door: Option<String>,
    /// For `door: "s3"`: the S3 operation the policy sees in `origin`.
    #[serde(default)]
    s3_operation: Option<String>,
    #[serde(default)]
    sql: Option<String>,
    #[serde(default)]
    object_key: Option<String>,
    #[serde(default)]
    collection: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    count: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionInput {
    #[serde(default)]
    now_ms: Option<i64>,
    items: Vec<ItemInput>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemInput {
    key: String,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    created_ms: Option<i64>,
    modified_ms: i64,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RerankInput {
    query: Vec<f32>,
    #[serde(default = "default_k")]
    k: u32,
    candidates: Vec<CandidateInput>,
}

fn default_k() -> u32 {
    10
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CandidateInput {
    id: String,
    #[serde(default)]
    distance: f64,
    #[serde(default)]
    vector: Vec<f32>,
    #[serde(default)]
    metadata: Value,
}

fn input<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", format!("`input` does not fit the kind: {e}"))
    })
}

pub async fn test(
    TenantAdmin(p): TenantAdmin,
    State(svc): State<Services>,
    Path(raw_kind): Path<String>,
    ApiJson(req): ApiJson<TestRequest>,
) -> Result<Json<Value>, ApiError> {
    let kind = kind(&raw_kind)?;
    let mut active = svc.plugins.for_test(p.tenant_id, p.tenant.as_str(), kind, req.version).await?;
    if let Some(cfg) = &req.config {
        active = svc.plugins.with_config(&active, cfg.to_string());
    }
    let started = Instant::now();
    let out: Result<Value, PluginError> = match kind {
        PluginKind::Policy => {
            let i: PolicyInput = input(req.input)?;
            let (door, door_name) = match i.door.as_deref() {
                None | Some("http") => (WitDoor::Http, "http"),
                Some("pg") => (WitDoor::Pg, "pg"),
                // As the pipeline hands it over: `http` in `request.door`.
                Some("s3") => (WitDoor::Http, "s3"),
                Some(other) => {
                    return Err(ApiError::bad_request(format!("`door` must be http, pg or s3, not {other:?}")));
                }
            };
            if i.s3_operation.is_some() && door_name != "s3" {
                return Err(ApiError::bad_request("`s3_operation` goes with `door: \"s3\"`"));
            }
            let origin = Origin { door: door_name.to_owned(), s3_operation: i.s3_operation };
            // The same statement model the pipeline would hand the policy.
            let parsed = match &i.sql {
                Some(sql) => Some(svc.sql.parse(p.tenant_id, sql).await.map_err(|e| {
                    ApiError::bad_request(format!("`sql` does not parse: {e}")).with_details(
                        [("sqlstate".to_owned(), json!("42601")), ("position".to_owned(), json!(e.position))]
                            .into_iter()
                            .collect(),
                    )
                })?),
                None => None,
            };
            let statements: Vec<_> =
                parsed.iter().flat_map(|p| p.statements.iter()).map(crate::plugins::host::sql::statement).collect();
            let r = Request {
                tenant: p.tenant.to_string(),
                key_prefix: p.key_prefix.0.clone(),
                role: p.role.as_str().into(),
                door,
                operation: i.operation,
                object_key: i.object_key,
                collection: i.collection,
                sql: i.sql,
                size: i.size,
                count: i.count,
            };
            let model = parsed.as_ref().map(|p| json!(p.statements));
            svc.plugins.evaluate(&active, r, origin, statements).await.map(|d| match d {
                PolicyDecision::Allow => json!({ "decision": "allow", "statements": model }),
                PolicyDecision::Deny(reason) => json!({ "decision": "deny", "reason": reason, "statements": model }),
            })
        }
        PluginKind::Retention => {
            let i: RetentionInput = input(req.input)?;
            let keys: Vec<String> = i.items.iter().map(|it| it.key.clone()).collect();
            let mut items = Vec::with_capacity(i.items.len());
            for it in i.items {
                let kind = match it.kind.as_deref() {
                    None | Some("object") => ItemKind::Object,
                    Some("point") => ItemKind::Point,
                    Some("row") => ItemKind::Row,
                    Some(o) => {
                        return Err(ApiError::bad_request(format!(
                            "item kind must be object, point or row, not {o:?}"
                        )));
                    }
                };
                items.push(Item {
                    kind,
                    key: it.key,
                    size: it.size,
                    created_ms: it.created_ms,
                    modified_ms: it.modified_ms,
                    content_type: it.content_type,
                    metadata: it.metadata.into_iter().map(|(key, value)| MetadataEntry { key, value }).collect(),
                });
            }
            let now = i.now_ms.unwrap_or_else(|| time::OffsetDateTime::now_utc().unix_timestamp() * 1000);
            svc.plugins.decide(&active, now, items).await.map(|vs| {
                let verdicts: Vec<Value> = keys
                    .iter()
                    .zip(vs)
                    .map(|(k, v)| match v {
                        RetentionVerdict::Keep => json!({ "key": k, "action": "keep" }),
                        RetentionVerdict::Delete(r) => json!({ "key": k, "action": "delete", "reason": r }),
                    })
                    .collect();
                json!({ "verdicts": verdicts })
            })
        }
        PluginKind::Reranker => {
            let i: RerankInput = input(req.input)?;
            let ids: Vec<String> = i.candidates.iter().map(|c| c.id.clone()).collect();
            let candidates = i
                .candidates
                .into_iter()
                .map(|c| Candidate {
                    id: c.id,
                    distance: c.distance,
                    vector: c.vector,
                    metadata: c.metadata.to_string(),
                })
                .collect();
            svc.plugins.rerank(&active, i.query, i.k, candidates).await.map(|order| {
                let order: Vec<Value> =
                    order.into_iter().map(|(i, s)| json!({ "id": ids[i], "index": i, "score": s })).collect();
                json!({ "order": order })
            })
        }
    };
    let took_ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok(Json(match out {
        Ok(output) => json!({ "ok": true, "version": active.version, "output": output, "took_ms": took_ms }),
        Err(e) => json!({
            "ok": false, "version": active.version, "took_ms": took_ms,
            "error": { "cause": e.cause(), "message": e.client_message() },
        }),
    }))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionRunRequest {
    /// Report what would be deleted, delete nothing.
    #[serde(default)]
    pub dry_run: bool,
}

pub async fn retention_run(
    TenantAdmin(p): TenantAdmin,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    ApiJson(req): ApiJson<RetentionRunRequest>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenants::get_by_id(&svc.control.client().await?, p.tenant_id).await?;
    let actor = actor(&p);
    let opts = RunOptions { dry_run: req.dry_run, actor: &actor, request_id: Some(&ctx.request_id), run_id: None };
    let report = retention::run(&svc, &tenant, &opts, &|_| {}).await?;
    Ok(Json(json!(report)))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// Seconds between scheduled retention runs for this tenant (0 = never,
    /// else ≥ 60); `null` goes back to the gateway's default.
    pub interval_s: Option<u32>,
}

/// `GET /v1/retention/schedule`: the tenant's interval and where it comes from.
pub async fn get_schedule(TenantAdmin(p): TenantAdmin, State(svc): State<Services>) -> Result<Json<Value>, ApiError> {
    let c = svc.control.client().await?;
    let tenant = tenants::get_by_id(&c, p.tenant_id).await?;
    Ok(Json(json!(retention::schedule::get(&c, &tenant, svc.config.retention.interval_s).await?)))
}

/// `PUT /v1/retention/schedule`: set or clear the tenant's interval.
pub async fn put_schedule(
    TenantAdmin(p): TenantAdmin,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    ApiJson(req): ApiJson<ScheduleRequest>,
) -> Result<Json<Value>, ApiError> {
    let mut c = svc.control.client().await?;
    let tenant = tenants::get_by_id(&c, p.tenant_id).await?;
    retention::schedule::set(&mut c, &tenant, req.interval_s, &actor(&p), Some(&ctx.request_id)).await?;
    Ok(Json(json!(retention::schedule::get(&c, &tenant, svc.config.retention.interval_s).await?)))
}
