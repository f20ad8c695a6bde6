//! Per-tenant retention schedules (table `retention_schedules`): how often the
//! [`scheduler`](super::scheduler) runs a tenant's retention plugin. No row
//! means the gateway's `retention.interval_s`; 0 means never.

use serde::Serialize;
use serde_json::json;

use crate::control::ControlError;
use crate::control::audit::{self, Actor, AuditEvent};
use crate::control::tenants::Tenant;

/// The shortest interval a tenant may set (0 = never).
pub const MIN_INTERVAL_S: u32 = 60;

/// A tenant's effective schedule.
#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    /// Seconds between scheduled runs; 0 = no scheduled runs.
    pub interval_s: u64,
    /// `"tenant"` when the tenant set it, `"default"` for the gateway's.
    pub source: &'static str,
}

/// The tenant's schedule, or the gateway default.
pub async fn get(
    c: &impl deadpool_postgres::GenericClient,
    tenant: &Tenant,
    default_s: u64,
) -> Result<Schedule, ControlError> {
    let row = c.query_opt("SELECT interval_s FROM retention_schedules WHERE tenant_id = $1", &[&tenant.id.0]).await?;
    Ok(match row {
        Some(r) => Schedule { interval_s: u64::try_from(r.get::<_, i32>(0)).unwrap_or(0), source: "tenant" },
        None => Schedule { interval_s: default_s, source: "default" },
    })
}

/// Set (`Some`) or clear (`None`: back to the default) the tenant's interval;
/// audited as `retention.schedule`.
pub async fn set(
    c: &mut deadpool_postgres::Object,
    tenant: &Tenant,
    interval_s: Option<u32>,
    actor: &Actor,
    request_id: Option<&str>,
) -> Result<(), ControlError> {
    if let Some(s) = interval_s
        && s != 0
        && s < MIN_INTERVAL_S
    {
        return Err(ControlError::Invalid(format!(
            "interval_s must be 0 (never) or at least {MIN_INTERVAL_S} seconds, got {s}"
        )));
    }
    let tx = c.transaction().await?;
    match interval_s {
        Some(s) => {
            let s = i32::try_from(s).map_err(|_| ControlError::Invalid("interval_s is too large".into()))?;
            tx.execute(
                "INSERT INTO retention_schedules (tenant_id, interval_s) VALUES ($1, $2)
                 ON CONFLICT (tenant_id) DO UPDATE SET interval_s = excluded.interval_s, updated_at = now()",
                &[&tenant.id.0, &s],
            )
            .await?;
        }
        None => {
            tx.execute("DELETE FROM retention_schedules WHERE tenant_id = $1", &[&tenant.id.0]).await?;
        }
    }
    audit::record(
        &tx,
        &AuditEvent {
            tenant_id: Some(tenant.id),
            tenant_name: Some(tenant.name.as_str()),
            actor,
            action: "retention.schedule",
            target: None,
            ok: true,
            details: json!({ "interval_s": interval_s }),
            request_id,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
