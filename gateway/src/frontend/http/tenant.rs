//! Tenant self-service (`/v1/tenant`, `/v1/keys`, `/v1/audit`): a tenant's own
//! keys see and manage only that tenant. Another tenant's key prefix is "not
//! found", exactly like one that does not exist.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{ApiJson, Authed, Ctx, TenantAdmin};
use crate::control::audit::{self, Actor, AuditEvent};
use crate::control::keys::{self, CreatedKey};
use crate::control::{ControlError, quotas, tenants};
use crate::ids::{KeyRole, TenantName};
use crate::services::Services;

/// Create a key and audit it, in one transaction.
pub async fn create_key_audited(
    svc: &Services,
    tenant: &TenantName,
    role: KeyRole,
    label: &str,
    actor: &Actor,
    request_id: &str,
) -> Result<CreatedKey, ControlError> {
    let mut c = svc.control.client().await?;
    let tx = c.transaction().await?;
    let t = tenants::get_by_name(&tx, tenant).await?;
    let created = keys::create(&tx, &t, role, label).await?;
    audit::record(
        &tx,
        &AuditEvent {
            tenant_id: Some(t.id),
            tenant_name: Some(t.name.as_str()),
            actor,
            action: "key.create",
            target: Some(&created.info.prefix.0),
            ok: true,
            details: json!({ "role": role.as_str(), "label": label }),
            request_id: Some(request_id),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(created)
}

/// Revoke a key of `tenant` and audit it, in one transaction.
pub async fn revoke_key_audited(
    svc: &Services,
    tenant: &TenantName,
    prefix: &str,
    actor: &Actor,
    request_id: &str,
) -> Result<(), ControlError> {
    let mut c = svc.control.client().await?;
    let tx = c.transaction().await?;
    let t = tenants::get_by_name(&tx, tenant).await?;
    keys::revoke(&tx, t.id, prefix).await?;
    audit::record(
        &tx,
        &AuditEvent {
            tenant_id: Some(t.id),
            tenant_name: Some(t.name.as_str()),
            actor,
            action: "key.revoke",
            target: Some(prefix),
            ok: true,
            details: json!({}),
            request_id: Some(request_id),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Who am I: the calling key's tenant, role and quotas.
pub async fn whoami(Authed(p): Authed, State(svc): State<Services>) -> Result<Json<Value>, ApiError> {
    let c = svc.control.client().await?;
    let q = quotas::get(&c, p.tenant_id).await?;
    Ok(Json(json!({
        "tenant": p.tenant, "key": { "prefix": p.key_prefix, "role": p.role }, "quotas": q,
    })))
}

/// `GET /v1/usage`: what the caller's tenant stores against its quotas.
pub async fn usage(Authed(p): Authed, State(svc): State<Services>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(crate::usage::report(&svc, p.tenant_id).await?)))
}

pub async fn list_keys(TenantAdmin(p): TenantAdmin, State(svc): State<Services>) -> Result<Json<Value>, ApiError> {
    let c = svc.control.client().await?;
    Ok(Json(json!({ "keys": keys::list(&c, p.tenant_id).await? })))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// `admin` or `service` (default).
    #[serde(default = "service")]
    pub role: KeyRole,
    /// A note for people, e.g. what uses the key.
    #[serde(default)]
    pub label: String,
}

fn service() -> KeyRole {
    KeyRole::Service
}

pub async fn create_key(
    TenantAdmin(p): TenantAdmin,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let actor = Actor::Key(p.key_prefix.0.clone());
    let created = create_key_audited(&svc, &p.tenant, body.role, &body.label, &actor, &ctx.request_id).await?;
    Ok((StatusCode::CREATED, Json(json!(created))))
}

pub async fn revoke_key(
    TenantAdmin(p): TenantAdmin,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    Path(prefix): Path<String>,
) -> Result<StatusCode, ApiError> {
    let actor = Actor::Key(p.key_prefix.0.clone());
    revoke_key_audited(&svc, &p.tenant, &prefix, &actor, &ctx.request_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct AuditParams {
    limit: Option<i64>,
    before: Option<i64>,
}

pub async fn list_audit(
    TenantAdmin(p): TenantAdmin,
    State(svc): State<Services>,
    Query(q): Query<AuditParams>,
) -> Result<Json<Value>, ApiError> {
    let c = svc.control.client().await?;
    let entries = audit::list(&c, Some(p.tenant_id), q.limit.unwrap_or(100), q.before).await?;
    Ok(Json(json!({ "entries": entries })))
}
