//! Backups over HTTP. The tenant admin key (`/v1/backups…`) starts a backup
//! of its own tenant, lists and reads its backups, restores one as a new
//! tenant and sets the tenant's backup settings. The operator token
//! (`/admin/v1/…/backups…`) does the same for any tenant and also restores
//! in place, verifies, pins, unpins and deletes.
//!
//! A backup takes minutes, so `POST …/backups` answers `202` with the id as
//! soon as the run has recorded it and the run goes on in a background task
//! (poll the backup until it is `complete` or `failed`; failures are also
//! logged); `…/verify?wait=false` does the same for a verification (its result
//! lands on the backup's row); restores run inline (a restore as new answers
//! the new tenant's keys, shown once).
//! All the work is in [`crate::backup`]; these handlers only call it.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::admin::parse_name;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Ctx, Operator, TenantAdmin};
use super::plugins::actor;
use crate::backup::{self, BackupError, catalog, create, restore, verify};
use crate::control::audit::Actor;
use crate::control::tenants::{self, Tenant};
use crate::ids::TenantId;
use crate::services::Services;

/// A backup id from the path.
fn backup_id(raw: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw).map_err(|_| ApiError::bad_request(format!("{raw:?} is not a backup id (a UUID)")))
}

async fn tenant_by_id(svc: &Services, id: TenantId) -> Result<Tenant, ApiError> {
    Ok(tenants::get_by_id(&svc.control.client().await?, id).await?)
}

async fn tenant_by_name(svc: &Services, raw: &str) -> Result<Tenant, ApiError> {
    let name = parse_name(raw)?;
    Ok(tenants::get_by_name(&svc.control.client().await?, &name).await?)
}

/// The tenant a backup belongs to (operator routes name only the backup).
async fn owner(svc: &Services, id: uuid::Uuid) -> Result<Tenant, ApiError> {
    let row = catalog::get(&svc.control.client().await?, id, None).await?;
    tenant_by_id(svc, TenantId(row.tenant_id)).await
}

/// How long `POST …/backups` waits for the run to record its row.
const START_WAIT: Duration = Duration::from_secs(10);

/// Start a manual backup of `tenant` in a background task and answer `202`
/// with its id once its row exists (so the id can be polled at once). A run
/// that cannot start — another backup, a restore or an expiry of the tenant
/// holds its lock (`409`), the target is down — is answered with its error.
async fn start(
    svc: &Services,
    tenant: Tenant,
    actor: Actor,
    request_id: String,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let b = backup::require(svc)?.clone();
    let tenant_id = tenant.id;
    let rows = catalog::list(&svc.control.client().await?, tenant_id, false).await?;
    if let Some(r) = rows.iter().find(|r| r.status == "running") {
        let err = BackupError::Conflict(format!("backup {} of this tenant is running; wait for it to finish", r.id));
        return Err(ApiError::from(err).with_details([("backup_id".to_owned(), json!(r.id))].into_iter().collect()));
    }
    let id = uuid::Uuid::new_v4();
    let mut task = {
        let svc = svc.clone();
        tokio::spawn(async move {
            let opts = create::Options {
                trigger: create::Trigger::Manual,
                actor: &actor,
                request_id: Some(&request_id),
                progress: &backup::no_progress,
                id: Some(id),
            };
            let out = create::run(&svc, &b, &tenant, &opts).await;
            match &out {
                Ok(row) => tracing::info!(
                    tenant = %tenant.name, backup = %id, request_id, uploaded_bytes = row.uploaded_bytes, "backup complete"
                ),
                Err(e) => tracing::error!(tenant = %tenant.name, backup = %id, request_id, error = %e, "backup failed"),
            }
            out.map(|_| ())
        })
    };
    let accepted = (StatusCode::ACCEPTED, Json(json!({ "id": id, "status": "running" })));
    let deadline = Instant::now() + START_WAIT;
    loop {
        tokio::select! {
            joined = &mut task => return match joined {
                Ok(Ok(())) => Ok(accepted),
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(BackupError::Io(format!("backup task: {e}")).into()),
            },
            _ = tokio::time::sleep(Duration::from_millis(25)) => {}
        }
        if catalog::get(&svc.control.client().await?, id, Some(tenant_id)).await.is_ok() || Instant::now() > deadline {
            return Ok(accepted);
        }
    }
}

/// The body of a restore: `{"as": NAME}` restores as a new tenant,
/// `{"in_place": true}` (operators only) replaces the tenant's own data.
#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Name of a new tenant to create from the backup (its keys are shown once).
    #[serde(default, rename = "as")]
    pub as_new: Option<String>,
    /// Replace the backed-up tenant's own data (operator token only; the
    /// tenant is fenced while it runs).
    #[serde(default)]
    pub in_place: bool,
}

/// Run a restore; `201` when it created a tenant, else `200`.
async fn run_restore(
    svc: &Services,
    id: uuid::Uuid,
    mode: restore::Mode,
    actor: &Actor,
    request_id: &str,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let b = backup::require(svc)?;
    let status = match mode {
        restore::Mode::AsNew(_) => StatusCode::CREATED,
        restore::Mode::InPlace => StatusCode::OK,
    };
    let r = restore::run(svc, b, id, mode, actor, Some(request_id), &backup::no_progress).await?;
    Ok((status, Json(json!(r))))
}

// ---- tenant admin key: /v1/backups… ----

/// `POST /v1/backups`: back up the caller's tenant (in the background).
pub async fn create(
    TenantAdmin(p): TenantAdmin,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let tenant = tenant_by_id(&svc, p.tenant_id).await?;
    start(&svc, tenant, actor(&p), ctx.request_id.clone()).await
}

/// `GET /v1/backups`: the tenant's backups, newest first.
pub async fn list(TenantAdmin(p): TenantAdmin, State(svc): State<Services>) -> Result<Json<Value>, ApiError> {
    let rows = catalog::list(&svc.control.client().await?, p.tenant_id, false).await?;
    Ok(Json(json!({ "backups": rows })))
}

/// `GET /v1/backups/{id}`: one of the tenant's backups.
pub async fn show(
    TenantAdmin(p): TenantAdmin,
    State(svc): State<Services>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = catalog::get(&svc.control.client().await?, backup_id(&id)?, Some(p.tenant_id)).await?;
    Ok(Json(json!(row)))
}

/// `POST /v1/backups/{id}/restore`: restore one of the tenant's backups as
/// a new tenant (in place is for operators).
pub async fn restore(
    TenantAdmin(p): TenantAdmin,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<RestoreRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = backup_id(&id)?;
    let name = match req {
        RestoreRequest { as_new: Some(name), in_place: false } => parse_name(&name)?,
        _ => {
            return Err(ApiError::bad_request(
                "a tenant key restores a backup as a new tenant only: send {\"as\": \"new-tenant-name\"}; \
                 restoring in place is for the operator",
            ));
        }
    };
    // Another tenant's backup is not found, before anything is created.
    catalog::get(&svc.control.client().await?, id, Some(p.tenant_id)).await?;
    run_restore(&svc, id, restore::Mode::AsNew(name), &actor(&p), &ctx.request_id).await
}

/// `GET /v1/backups/settings`: the tenant's effective backup settings.
pub async fn get_settings(TenantAdmin(p): TenantAdmin, State(svc): State<Services>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(catalog::settings(&svc, &svc.control.client().await?, p.tenant_id).await?)))
}

/// `PUT /v1/backups/settings`: change the tenant's backup settings.
pub async fn put_settings(
    TenantAdmin(p): TenantAdmin,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    ApiJson(patch): ApiJson<catalog::SettingsPatch>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_by_id(&svc, p.tenant_id).await?;
    Ok(Json(json!(catalog::set_settings(&svc, &tenant, &patch, &actor(&p), Some(&ctx.request_id)).await?)))
}

// ---- operator token: /admin/v1/…/backups… ----

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Include expired (deleted) backups.
    #[serde(default)]
    all: bool,
}

/// `GET /admin/v1/tenants/{name}/backups` (`?all=true` with expired ones).
pub async fn admin_list(
    _: Operator,
    State(svc): State<Services>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_by_name(&svc, &name).await?;
    let rows = catalog::list(&svc.control.client().await?, tenant.id, q.all).await?;
    Ok(Json(json!({ "backups": rows })))
}

/// `POST /admin/v1/tenants/{name}/backups`: back up a tenant (in the background).
pub async fn admin_create(
    _: Operator,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let tenant = tenant_by_name(&svc, &name).await?;
    start(&svc, tenant, Actor::Operator, ctx.request_id.clone()).await
}

/// `GET /admin/v1/backups/{id}`: any tenant's backup.
pub async fn admin_show(
    _: Operator,
    State(svc): State<Services>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(catalog::get(&svc.control.client().await?, backup_id(&id)?, None).await?)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Delete a pinned backup too.
    #[serde(default)]
    force: bool,
}

/// `DELETE /admin/v1/backups/{id}?force=`: delete a backup (a pinned one
/// only with `force=true`).
pub async fn admin_delete(
    _: Operator,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> Result<Json<Value>, ApiError> {
    let id = backup_id(&id)?;
    let b = backup::require(&svc)?;
    let tenant = owner(&svc, id).await?;
    catalog::delete(&svc, b, &tenant, id, q.force, &Actor::Operator, Some(&ctx.request_id)).await?;
    Ok(Json(json!({ "deleted": id })))
}

/// `POST /admin/v1/backups/{id}/restore`: `{"as": NAME}` (201) or
/// `{"in_place": true}` (200).
pub async fn admin_restore(
    _: Operator,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<RestoreRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = backup_id(&id)?;
    let mode = match req {
        RestoreRequest { as_new: Some(name), in_place: false } => restore::Mode::AsNew(parse_name(&name)?),
        RestoreRequest { as_new: None, in_place: true } => restore::Mode::InPlace,
        _ => {
            return Err(ApiError::bad_request(
                "send either {\"as\": \"new-tenant-name\"} (restore as a new tenant) or {\"in_place\": true} \
                 (replace the tenant's own data)",
            ));
        }
    };
    run_restore(&svc, id, mode, &Actor::Operator, &ctx.request_id).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyQuery {
    /// `false`: answer `202` at once and verify in the background (the
    /// result lands on the backup's row: `verified_at`, `verify_ok`,
    /// `verify_error`). Default `true`.
    #[serde(default = "yes")]
    wait: bool,
}

fn yes() -> bool {
    true
}

/// `POST /admin/v1/backups/{id}/verify[?wait=false]`: restore into a scratch
/// database and compare; `200` with `ok: false` and the problems when it
/// differs. A large backup takes minutes: with `wait=false` the answer is
/// `202` once the backup is known to exist, and the result is polled on
/// `GET /admin/v1/backups/{id}`.
pub async fn admin_verify(
    _: Operator,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<VerifyQuery>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = backup_id(&id)?;
    let b = backup::require(&svc)?.clone();
    if !q.wait {
        let row = catalog::get(&svc.control.client().await?, id, None).await?;
        if row.status != "complete" {
            return Err(BackupError::Conflict(format!("backup {id} is {}, not complete", row.status)).into());
        }
        let request_id = ctx.request_id.clone();
        tokio::spawn(async move {
            match verify::run(&svc, &b, id, &Actor::Operator, Some(&request_id), &backup::no_progress).await {
                Ok(v) => tracing::info!(backup = %id, ok = v.ok, request_id, "background verification done"),
                Err(e) => tracing::error!(backup = %id, error = %e, request_id, "background verification failed"),
            }
        });
        let poll = format!("/admin/v1/backups/{id}");
        return Ok((StatusCode::ACCEPTED, Json(json!({ "id": id, "status": "verifying", "poll": poll }))));
    }
    let v = verify::run(&svc, &b, id, &Actor::Operator, Some(&ctx.request_id), &backup::no_progress).await?;
    Ok((StatusCode::OK, Json(json!(v))))
}

async fn set_pinned(svc: &Services, raw_id: &str, pinned: bool, request_id: &str) -> Result<Json<Value>, ApiError> {
    let id = backup_id(raw_id)?;
    let tenant = owner(svc, id).await?;
    let row = catalog::set_pinned(svc, &tenant, id, pinned, &Actor::Operator, Some(request_id)).await?;
    Ok(Json(json!(row)))
}

/// `POST /admin/v1/backups/{id}/pin`: the backup never expires.
pub async fn admin_pin(
    _: Operator,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_pinned(&svc, &id, true, &ctx.request_id).await
}

/// `POST /admin/v1/backups/{id}/unpin`.
pub async fn admin_unpin(
    _: Operator,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_pinned(&svc, &id, false, &ctx.request_id).await
}

/// `GET /admin/v1/tenants/{name}/backups/settings`.
pub async fn admin_get_settings(
    _: Operator,
    State(svc): State<Services>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_by_name(&svc, &name).await?;
    Ok(Json(json!(catalog::settings(&svc, &svc.control.client().await?, tenant.id).await?)))
}

/// `PUT /admin/v1/tenants/{name}/backups/settings`.
pub async fn admin_put_settings(
    _: Operator,
    Ctx(ctx): Ctx,
    State(svc): State<Services>,
    Path(name): Path<String>,
    ApiJson(patch): ApiJson<catalog::SettingsPatch>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_by_name(&svc, &name).await?;
    Ok(Json(json!(catalog::set_settings(&svc, &tenant, &patch, &Actor::Operator, Some(&ctx.request_id)).await?)))
}
