//! Operator endpoints (`/admin/v1/*`, operator token): tenants, their keys,
//! quotas, key limits, suspension and usage, the audit log. Tenant API keys are refused here whatever their role.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{ApiJson, Ctx, Operator};
use crate::control::audit::{self, Actor};
use crate::control::provision::{self, CreateOptions};
use crate::control::{keys, operator, quotas, tenants};
use crate::ids::TenantName;
use crate::services::Services;

pub(super) fn parse_name(raw: &str) -> Result<TenantName, ApiError> {
    TenantName::parse(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    name: String,
}

pub async fn create_tenant(
    _: Operator,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = parse_name(&body.name)?;
    let opts = CreateOptions { request_id: Some(ctx.request_id.clone()), ..Default::default() };
    let created = provision::create_tenant(&svc, &name, &Actor::Operator, &opts).await?;
    Ok((StatusCode::CREATED, Json(json!(created))))
}

pub async fn list_tenants(_: Operator, State(svc): State<Services>) -> Result<Json<Value>, ApiError> {
    let list = tenants::list(&svc.control.client().await?).await?;
    Ok(Json(json!({ "tenants": list })))
}

pub async fn show_tenant(
    _: Operator,
    State(svc): State<Services>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = parse_name(&name)?;
    let c = svc.control.client().await?;
    let t = tenants::get_by_name(&c, &name).await?;
    let q = quotas::get(&c, t.id).await?;
    let k = keys::list(&c, t.id).await?;
    Ok(Json(json!({ "tenant": t, "quotas": q, "keys": k })))
}

#[derive(Deserialize)]
pub struct DeleteParams {
    /// Must repeat the tenant's name: deleting is irreversible.
    confirm: Option<String>,
}

pub async fn delete_tenant(
    _: Operator,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    Path(name): Path<String>,
    Query(p): Query<DeleteParams>,
) -> Result<Json<Value>, ApiError> {
    let name = parse_name(&name)?;
    if p.confirm.as_deref() != Some(name.as_str()) {
        return Err(ApiError::bad_request(format!(
            "deleting a tenant removes its database, bucket and keys for good; repeat its name as ?confirm={name}"
        )));
    }
    let deleted = provision::delete_tenant(&svc, &name, &Actor::Operator, Some(&ctx.request_id)).await?;
    Ok(Json(json!(deleted)))
}

pub async fn create_key(
    _: Operator,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<super::tenant::CreateKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = parse_name(&name)?;
    let created =
        super::tenant::create_key_audited(&svc, &name, body.role, &body.label, &Actor::Operator, &ctx.request_id)
            .await?;
    Ok((StatusCode::CREATED, Json(json!(created))))
}

pub async fn list_keys(
    _: Operator,
    State(svc): State<Services>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = parse_name(&name)?;
    let c = svc.control.client().await?;
    let t = tenants::get_by_name(&c, &name).await?;
    Ok(Json(json!({ "keys": keys::list(&c, t.id).await? })))
}

pub async fn revoke_key(
    _: Operator,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    Path((name, prefix)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let name = parse_name(&name)?;
    super::tenant::revoke_key_audited(&svc, &name, &prefix, &Actor::Operator, &ctx.request_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn get_quotas(
    _: Operator,
    State(svc): State<Services>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = parse_name(&name)?;
    let c = svc.control.client().await?;
    let t = tenants::get_by_name(&c, &name).await?;
    Ok(Json(json!({ "quotas": quotas::get(&c, t.id).await? })))
}

/// `PUT /admin/v1/tenants/{name}/quotas`: change the quotas named in the body.
pub async fn put_quotas(
    _: Operator,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<quotas::QuotaPatch>,
) -> Result<Json<Value>, ApiError> {
    let name = parse_name(&name)?;
    let q = operator::set_quotas(&svc, &name, &body, &Actor::Operator, Some(&ctx.request_id)).await?;
    Ok(Json(json!({ "quotas": q })))
}

pub async fn get_key_limits(
    _: Operator,
    State(svc): State<Services>,
    Path((name, prefix)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let name = parse_name(&name)?;
    Ok(Json(json!({ "limits": operator::key_limits(&svc, &name, &prefix).await? })))
}

/// `PUT /admin/v1/tenants/{name}/keys/{prefix}/limits`: a key's own rate
/// limits (`null` removes an override).
pub async fn put_key_limits(
    _: Operator,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    Path((name, prefix)): Path<(String, String)>,
    ApiJson(body): ApiJson<quotas::KeyLimitsPatch>,
) -> Result<Json<Value>, ApiError> {
    let name = parse_name(&name)?;
    let l = operator::set_key_limits(&svc, &name, &prefix, &body, &Actor::Operator, Some(&ctx.request_id)).await?;
    Ok(Json(json!({ "limits": l })))
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Suspend {
    /// Shown to the tenant's clients (at most 500 characters).
    #[serde(default)]
    reason: String,
}

/// `POST /admin/v1/tenants/{name}/suspend`.
pub async fn suspend(
    _: Operator,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<Suspend>,
) -> Result<Json<Value>, ApiError> {
    let name = parse_name(&name)?;
    let t = operator::set_suspended(&svc, &name, true, &body.reason, &Actor::Operator, Some(&ctx.request_id)).await?;
    Ok(Json(json!({ "tenant": t })))
}

/// `POST /admin/v1/tenants/{name}/resume`.
pub async fn resume(
    _: Operator,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = parse_name(&name)?;
    let t = operator::set_suspended(&svc, &name, false, "", &Actor::Operator, Some(&ctx.request_id)).await?;
    Ok(Json(json!({ "tenant": t })))
}

/// `GET /admin/v1/tenants/{name}/usage`.
pub async fn usage(
    _: Operator,
    State(svc): State<Services>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = parse_name(&name)?;
    let t = tenants::get_by_name(&svc.control.client().await?, &name).await?;
    Ok(Json(json!(crate::usage::report(&svc, t.id).await?)))
}

#[derive(Deserialize)]
pub struct AuditParams {
    tenant: Option<String>,
    limit: Option<i64>,
    before: Option<i64>,
}

pub async fn list_audit(
    _: Operator,
    State(svc): State<Services>,
    Query(p): Query<AuditParams>,
) -> Result<Json<Value>, ApiError> {
    let c = svc.control.client().await?;
    let tenant = match p.tenant {
        Some(n) => Some(tenants::get_by_name(&c, &parse_name(&n)?).await?.id),
        None => None,
    };
    let entries = audit::list(&c, tenant, p.limit.unwrap_or(100), p.before).await?;
    Ok(Json(json!({ "entries": entries })))
}
