//! Which tenants' databases are over `max_db_bytes`, as this instance knows it.
//!
//! Reloaded every `usage.refresh_ms` with one control-plane query that
//! returns only full tenants (usually none), so checking a statement on
//! either door is a map lookup. The meter updates the book of the instance
//! that measured at once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use super::{QuotaExceeded, Resource};
use crate::control::ControlError;
use crate::ids::TenantId;
use crate::services::Services;

/// `(used, limit)` of each tenant whose database is full.
type FullSet = Arc<HashMap<TenantId, (i64, i64)>>;

#[derive(Clone, Default)]
pub struct UsageBook {
    full: Arc<RwLock<FullSet>>,
}

impl UsageBook {
    /// The refusal for a write that may grow `tenant`'s database, if it is full.
    pub fn db_full(&self, tenant: TenantId) -> Option<QuotaExceeded> {
        let full = self.full.read().unwrap_or_else(|p| p.into_inner()).clone();
        full.get(&tenant).map(|&(used, limit)| QuotaExceeded { resource: Resource::Database, used, limit, adding: 0 })
    }

    /// Record one tenant's measured size against its quota.
    pub fn set(&self, tenant: TenantId, used: i64, limit: i64) {
        let mut guard = self.full.write().unwrap_or_else(|p| p.into_inner());
        let is_full = used >= limit;
        if guard.contains_key(&tenant) == is_full && !is_full {
            return;
        }
        let mut next = HashMap::clone(&guard);
        if is_full {
            next.insert(tenant, (used, limit));
        } else {
            next.remove(&tenant);
        }
        *guard = Arc::new(next);
    }

    /// Reload the whole set from the control plane.
    pub async fn reload(&self, svc: &Services) -> Result<(), ControlError> {
        let c = svc.control.client().await?;
        let rows = c
            .query(
                "SELECT u.tenant_id, u.db_bytes, q.max_db_bytes FROM tenant_usage u
                 JOIN quotas q ON q.tenant_id = u.tenant_id WHERE u.db_bytes >= q.max_db_bytes",
                &[],
            )
            .await?;
        let next: HashMap<TenantId, (i64, i64)> =
            rows.iter().map(|r| (TenantId(r.get(0)), (r.get(1), r.get(2)))).collect();
        *self.full.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(())
    }

    /// Reload every `usage.refresh_ms` until shutdown.
    pub async fn run(self, svc: Services, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(svc.config.usage.refresh_ms.max(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
            match self.reload(&svc).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("storage-quota state reloads again");
                }
                Ok(()) => {}
                // Keep the last known state; say so once.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "reload storage-quota state; keeping the last known");
                }
                Err(_) => {}
            }
        }
    }
}
