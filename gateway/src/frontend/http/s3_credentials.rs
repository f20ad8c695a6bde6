//! S3 access keys of the caller's tenant (`/v1/s3/credentials…`, tenant
//! admin): create (the secret is shown once), list, revoke. The logic is in
//! [`crate::control::s3_credentials`].

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{ApiJson, Ctx, TenantAdmin};
use crate::control::audit::Actor;
use crate::control::s3_credentials::{self, NewS3Credential};
use crate::services::Services;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateS3Credential {
    /// Reads and lists only (default false).
    #[serde(default)]
    pub read_only: bool,
    /// Limit the key to object keys that start with this (default: the whole bucket).
    #[serde(default)]
    pub prefix: String,
    /// A note for people, e.g. what uses the key.
    #[serde(default)]
    pub label: String,
}

pub async fn list(TenantAdmin(p): TenantAdmin, State(svc): State<Services>) -> Result<Json<Value>, ApiError> {
    let c = svc.control.client().await?;
    Ok(Json(json!({ "credentials": s3_credentials::list(&c, p.tenant_id).await? })))
}

pub async fn create(
    TenantAdmin(p): TenantAdmin,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    ApiJson(body): ApiJson<CreateS3Credential>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let actor = Actor::Key(p.key_prefix.0.clone());
    let new = NewS3Credential { read_only: body.read_only, prefix: body.prefix, label: body.label };
    let created = s3_credentials::create_audited(&svc, &p.tenant, &new, &actor, Some(&ctx.request_id)).await?;
    Ok((StatusCode::CREATED, Json(json!(created))))
}

pub async fn revoke(
    TenantAdmin(p): TenantAdmin,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let actor = Actor::Key(p.key_prefix.0.clone());
    s3_credentials::revoke_audited(&svc, &p.tenant, &id, &actor, Some(&ctx.request_id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
