//! One database-connection budget per tenant on this gateway instance,
//! shared by both doors.
//!
//! Each door has its own pool onto the tenant's database (tokio-postgres
//! clients for HTTP, raw protocol connections for the Postgres door), each
//! at most `pg_pool_size` connections. What the tenant may *use* at once is
//! one budget of `pg_pool_size`: an HTTP request holds a permit while it
//! holds a connection, a Postgres-door session while it holds one (a
//! transaction, or a pinned session). The semaphore is fair (first come,
//! first served), so when the budget is spent, requests of either door wait
//! in one queue, up to `pg_pool_timeout_ms`, instead of failing on the
//! role's connection limit, which [`role_connection_limit`] keeps above
//! what both pools can open.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ids::TenantId;

/// The tenant role's `CONNECTION LIMIT` for a pool size: both doors' pools
/// at full size, plus room for operator sessions and migrations.
pub fn role_connection_limit(pool_size: i32) -> i32 {
    pool_size.max(1).saturating_mul(2).saturating_add(4)
}

/// The budget was spent for the whole wait.
#[derive(Debug, thiserror::Error)]
#[error("all {size} of the tenant's database connections stayed busy for {waited_ms} ms")]
pub struct BudgetTimeout {
    pub size: i32,
    pub waited_ms: u64,
}

struct Entry {
    size: i32,
    sem: Arc<Semaphore>,
}

/// Every tenant's budget on this instance.
#[derive(Clone, Default)]
pub struct Budgets {
    /// By tenant id (ours, not a client's: a fast hasher, looked up per checkout).
    map: Arc<Mutex<foldhash::HashMap<TenantId, Entry>>>,
}

impl Budgets {
    fn semaphore(&self, tenant: TenantId, size: i32) -> Arc<Semaphore> {
        let size = size.max(1);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&tenant) {
            Some(e) if e.size == size => e.sem.clone(),
            // New, or the quota changed: a new budget (permits of the old one
            // drain as their connections are given back).
            _ => {
                let sem = Arc::new(Semaphore::new(usize::try_from(size).unwrap_or(1)));
                map.insert(tenant, Entry { size, sem: sem.clone() });
                sem
            }
        }
    }

    /// A permit to hold one of the tenant's connections, waiting up to `wait`.
    pub async fn acquire(
        &self,
        tenant: TenantId,
        size: i32,
        wait: Duration,
    ) -> Result<OwnedSemaphorePermit, BudgetTimeout> {
        let sem = self.semaphore(tenant, size);
        if let Ok(p) = sem.clone().try_acquire_owned() {
            return Ok(p);
        }
        metrics::counter!("sluice_pg_budget_waits_total").increment(1);
        match tokio::time::timeout(wait, sem.acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => {
                Err(BudgetTimeout { size: size.max(1), waited_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX) })
            }
        }
    }

    /// Forget a tenant (deleted).
    pub fn evict(&self, tenant: TenantId) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(&tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_fair_budget_per_tenant() {
        let b = Budgets::default();
        let (t1, t2) = (TenantId(uuid::Uuid::new_v4()), TenantId(uuid::Uuid::new_v4()));
        let wait = Duration::from_millis(50);
        let p1 = b.acquire(t1, 2, wait).await.expect("first");
        let _p2 = b.acquire(t1, 2, wait).await.expect("second");
        assert!(b.acquire(t1, 2, wait).await.is_err(), "spent");
        let _other = b.acquire(t2, 2, wait).await.expect("another tenant's budget is its own");
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.acquire(t1, 2, Duration::from_secs(5)).await.is_ok() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(p1);
        assert!(waiter.await.expect("task"), "a waiter gets the permit given back");
        assert_eq!(role_connection_limit(10), 24);
    }
}
