//! The fence around a tenant whose data a restore replaces: both doors
//! refuse its new work with a retryable error (HTTP 503 with `Retry-After`,
//! SQLSTATE 57P03 on the Postgres door) until the restore ends.
//!
//! The fence is `tenants.fenced_reason`. API-key authentication reads it
//! on every request; the Postgres door reads it at login and, for sessions
//! already open, each instance keeps the set of fenced tenants in memory,
//! reloaded every `usage.refresh_ms` (one query that returns only fenced
//! tenants, usually none), and refuses their statements in the pipeline.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use super::BackupError;
use crate::control::ControlError;
use crate::control::tenants::Tenant;
use crate::ids::TenantId;
use crate::services::Services;

/// SQLSTATE of a fenced tenant's refusals (`cannot_connect_now`).
pub const SQLSTATE: &str = "57P03";

/// Fenced tenants as this instance knows them, with the reason.
#[derive(Clone, Default)]
pub struct Fences {
    set: Arc<RwLock<Arc<HashMap<TenantId, String>>>>,
}

impl Fences {
    pub fn reason(&self, tenant: TenantId) -> Option<String> {
        let set = self.set.read().unwrap_or_else(|p| p.into_inner()).clone();
        set.get(&tenant).cloned()
    }

    fn put(&self, tenant: TenantId, reason: Option<&str>) {
        let mut guard = self.set.write().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::clone(&guard);
        match reason {
            Some(r) => next.insert(tenant, r.to_owned()),
            None => next.remove(&tenant),
        };
        *guard = Arc::new(next);
    }

    pub async fn reload(&self, svc: &Services) -> Result<(), ControlError> {
        let rows = svc
            .control
            .client()
            .await?
            .query("SELECT id, fenced_reason FROM tenants WHERE fenced_reason IS NOT NULL", &[])
            .await?;
        let next = rows.iter().map(|r| (TenantId(r.get(0)), r.get::<_, String>(1))).collect();
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(())
    }

    /// Reload every `usage.refresh_ms` until shutdown.
    pub async fn run(self, svc: Services, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(svc.config.usage.refresh_ms.max(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
            if let Err(e) = self.reload(&svc).await {
                tracing::debug!(error = %e, "reload tenant fences; keeping the last known");
            }
        }
    }
}

/// Fence (`Some(reason)`) or unfence (`None`) a tenant.
pub async fn set(svc: &Services, tenant: &Tenant, reason: Option<&str>) -> Result<(), BackupError> {
    svc.control
        .client()
        .await?
        .execute("UPDATE tenants SET fenced_reason = $2, updated_at = now() WHERE id = $1", &[&tenant.id.0, &reason])
        .await
        .map_err(|e| BackupError::pg("set the tenant's fence", e))?;
    svc.fences.put(tenant.id, reason);
    Ok(())
}

/// The message both doors give.
pub fn message(reason: &str) -> String {
    format!("the tenant is fenced ({reason}); retry shortly")
}
