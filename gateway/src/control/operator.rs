//! What an operator changes on a tenant while it runs: quotas, a key's own
//! rate limits, suspension. Each change commits together with its audit
//! record; the admin API and the CLI both call these. Nothing needs a
//! restart: HTTP requests read quotas and key limits per request, Postgres
//! sessions per statement through their principal at login (new sessions)
//! and the key watch (suspension ends open sessions within seconds).

use serde_json::json;

use super::ControlError;
use super::audit::{self, Actor, AuditEvent};
use super::quotas::{self, KeyLimits, KeyLimitsPatch, QuotaPatch, Quotas};
use super::tenants::{self, Tenant};
use crate::ids::TenantName;
use crate::services::Services;

async fn audited(
    tx: &deadpool_postgres::Transaction<'_>,
    t: &Tenant,
    actor: &Actor,
    action: &str,
    target: &str,
    details: serde_json::Value,
    request_id: Option<&str>,
) -> Result<(), ControlError> {
    let e = AuditEvent {
        tenant_id: Some(t.id),
        tenant_name: Some(t.name.as_str()),
        actor,
        action,
        target: Some(target),
        ok: true,
        details,
        request_id,
    };
    audit::record(tx, &e).await
}

/// Change some of a tenant's quotas; returns all of them as they are now.
pub async fn set_quotas(
    svc: &Services,
    name: &TenantName,
    patch: &QuotaPatch,
    actor: &Actor,
    request_id: Option<&str>,
) -> Result<Quotas, ControlError> {
    let mut c = svc.control.client().await?;
    let tx = c.transaction().await?;
    let t = tenants::get_by_name(&tx, name).await?;
    let q = quotas::update(&tx, t.id, patch).await?;
    let details = serde_json::to_value(patch).unwrap_or_default();
    audited(&tx, &t, actor, "tenant.quotas.set", name.as_str(), details, request_id).await?;
    tx.commit().await?;
    // A full database may have room now (or none): decide on the next measurement.
    let u = crate::usage::get(&c, t.id).await?;
    svc.usage.set(t.id, u.db_bytes, q.max_db_bytes);
    Ok(q)
}

async fn key_id(
    c: &impl deadpool_postgres::GenericClient,
    t: &Tenant,
    prefix: &str,
) -> Result<uuid::Uuid, ControlError> {
    let row = c
        .query_opt("SELECT id FROM api_keys WHERE tenant_id = $1 AND prefix = $2", &[&t.id.0, &prefix])
        .await?
        .ok_or_else(|| ControlError::NotFound(format!("key {prefix} of tenant {}", t.name)))?;
    Ok(row.get(0))
}

/// One key's own rate limits.
pub async fn key_limits(svc: &Services, name: &TenantName, prefix: &str) -> Result<KeyLimits, ControlError> {
    let c = svc.control.client().await?;
    let t = tenants::get_by_name(&c, name).await?;
    quotas::key_limits(&c, key_id(&c, &t, prefix).await?).await
}

/// Change one key's own rate limits (`null` removes an override).
pub async fn set_key_limits(
    svc: &Services,
    name: &TenantName,
    prefix: &str,
    patch: &KeyLimitsPatch,
    actor: &Actor,
    request_id: Option<&str>,
) -> Result<KeyLimits, ControlError> {
    let mut c = svc.control.client().await?;
    let tx = c.transaction().await?;
    let t = tenants::get_by_name(&tx, name).await?;
    let id = key_id(&tx, &t, prefix).await?;
    let next = patch.apply(&quotas::key_limits(&tx, id).await?)?;
    quotas::set_key_limits(&tx, id, &next).await?;
    audited(&tx, &t, actor, "key.limits.set", prefix, json!(next), request_id).await?;
    tx.commit().await?;
    Ok(next)
}

/// Suspend (`true`) or resume a tenant. While suspended both doors refuse
/// it with the reason, open Postgres sessions end, and its data is kept.
pub async fn set_suspended(
    svc: &Services,
    name: &TenantName,
    suspend: bool,
    reason: &str,
    actor: &Actor,
    request_id: Option<&str>,
) -> Result<Tenant, ControlError> {
    let mut c = svc.control.client().await?;
    let tx = c.transaction().await?;
    let t = tenants::set_suspended(&tx, name, suspend, reason).await?;
    let action = if suspend { "tenant.suspend" } else { "tenant.resume" };
    audited(&tx, &t, actor, action, name.as_str(), json!({ "reason": reason }), request_id).await?;
    tx.commit().await?;
    Ok(t)
}
