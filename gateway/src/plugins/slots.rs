//! Instance slots, shared fairly. The pooling allocator has `max_instances`
//! slots for the whole process; a call takes one of them and one of its
//! tenant's `max_instances_per_tenant` before it instantiates, so a tenant
//! whose plugin is slow (or whose clients are many) waits for its own slots
//! and never takes the last of the others'. A call that cannot get both
//! within its deadline is refused as [`PluginError::Busy`], which is not the
//! plugin's fault and never trips a breaker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::PluginError;
use crate::ids::TenantId;

pub struct Slots {
    total: u32,
    per_tenant: u32,
    all: Arc<Semaphore>,
    tenants: Arc<Mutex<HashMap<TenantId, Arc<Semaphore>>>>,
}

/// One slot held for a call (the tenant's and the process's), given back on drop.
pub struct Slot {
    tenant: TenantId,
    share: Option<Arc<Semaphore>>,
    tenants: Arc<Mutex<HashMap<TenantId, Arc<Semaphore>>>>,
    own: Option<OwnedSemaphorePermit>,
    _global: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.own.take();
        if let Some(share) = self.share.take() {
            forget_if_idle(&self.tenants, self.tenant, share);
        }
    }
}

/// Forget a tenant's semaphore once nobody holds or waits on it (after
/// `share`, the caller's handle, is dropped), so the map holds only tenants
/// with calls in flight.
fn forget_if_idle(tenants: &Mutex<HashMap<TenantId, Arc<Semaphore>>>, tenant: TenantId, share: Arc<Semaphore>) {
    drop(share);
    let mut map = tenants.lock().unwrap_or_else(|p| p.into_inner());
    if map.get(&tenant).is_some_and(|s| Arc::strong_count(s) == 1) {
        map.remove(&tenant);
    }
}

impl Slots {
    pub fn new(total: u32, per_tenant: u32) -> Self {
        let total = total.max(1);
        Self {
            total,
            per_tenant: per_tenant.clamp(1, total),
            all: Arc::new(Semaphore::new(total as usize)),
            tenants: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Each tenant's share.
    pub fn per_tenant(&self) -> u32 {
        self.per_tenant
    }

    /// Slots the tenant holds now (for tests and metrics).
    pub fn in_use(&self, tenant: TenantId) -> u32 {
        let map = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&tenant).map_or(0, |s| self.per_tenant - s.available_permits() as u32)
    }

    /// Take a slot for `tenant`, waiting at most `wait`.
    pub async fn acquire(&self, tenant: TenantId, wait: Duration) -> Result<Slot, PluginError> {
        let share = {
            let mut map = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(tenant).or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant as usize))).clone()
        };
        let deadline = tokio::time::Instant::now() + wait;
        let own = match tokio::time::timeout_at(deadline, share.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                forget_if_idle(&self.tenants, tenant, share);
                return Err(PluginError::Busy(format!(
                    "this tenant is running its maximum of {} concurrent plugin calls; retry later",
                    self.per_tenant
                )));
            }
        };
        let global = match tokio::time::timeout_at(deadline, self.all.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                drop(own);
                forget_if_idle(&self.tenants, tenant, share);
                return Err(PluginError::Busy(format!(
                    "all {} plugin instance slots of this gateway are busy; retry later",
                    self.total
                )));
            }
        };
        Ok(Slot { tenant, share: Some(share), tenants: self.tenants.clone(), own: Some(own), _global: global })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(n: u128) -> TenantId {
        TenantId(uuid::Uuid::from_u128(n))
    }

    #[tokio::test]
    async fn a_tenant_cannot_take_more_than_its_share() {
        let slots = Slots::new(4, 2);
        let a1 = slots.acquire(tenant(1), Duration::from_millis(5)).await.expect("first");
        let _a2 = slots.acquire(tenant(1), Duration::from_millis(5)).await.expect("second");
        let e = slots.acquire(tenant(1), Duration::from_millis(5)).await.err().expect("third is refused");
        assert!(matches!(e, PluginError::Busy(_)), "{e}");
        assert!(!e.is_call_failure());
        // Another tenant still gets its slots.
        let _b1 = slots.acquire(tenant(2), Duration::from_millis(5)).await.expect("other tenant");
        assert_eq!(slots.in_use(tenant(1)), 2);
        drop(a1);
        assert_eq!(slots.in_use(tenant(1)), 1);
        slots.acquire(tenant(1), Duration::from_millis(5)).await.expect("a slot came back");
    }

    #[tokio::test]
    async fn idle_tenants_are_forgotten() {
        let slots = Slots::new(4, 2);
        drop(slots.acquire(tenant(7), Duration::from_millis(5)).await.expect("slot"));
        assert!(slots.tenants.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn the_global_pool_bounds_everyone() {
        let slots = Slots::new(2, 2);
        let _a = slots.acquire(tenant(1), Duration::from_millis(5)).await.expect("a");
        let _b = slots.acquire(tenant(2), Duration::from_millis(5)).await.expect("b");
        let e = slots.acquire(tenant(3), Duration::from_millis(5)).await.err().expect("pool full");
        assert!(e.to_string().contains("instance slots"), "{e}");
    }
}
