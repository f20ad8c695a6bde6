//! Per-tenant Postgres pools: connections to the tenant's own database as
//! the tenant's own role ([`TenantPools::get`], or [`TenantPools::get_on`] a
//! read replica, one pool per node) or, for writes to collection
//! tables, as the tenant's collection owner ([`TenantPools::get_owner`], see
//! [`crate::control::roles`]); sized by the tenant's `pg_pool_size` quota, created on first use
//! and rebuilt when that quota or the statement timeout changes. Every
//! connection has the tenant's `statement_timeout_ms` as its session default.
//!
//! A connection is handed out with a permit of the tenant's connection
//! budget ([`super::budget`]), shared with the Postgres door, and released
//! with it.
//!
//! Connections are recycled with deadpool's `Clean` method (`RESET ALL`,
//! `CLOSE ALL`, `UNLISTEN *`, advisory locks released, temp tables dropped), so
//! session state one request set never reaches the next.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::OwnedSemaphorePermit;

use super::budget::BudgetTimeout;
use super::frame_limit::{LimitedConnect, server_addr};

use crate::control::credentials::{collection_owner_password, tenant_role_password};
use crate::error::{ClientError, ErrorKind};
use crate::ids::TenantId;
use crate::pipeline::auth::Principal;
use crate::services::Services;
use crate::upstream::replicas::Node;

#[derive(Debug, thiserror::Error)]
pub enum TenantPoolError {
    #[error("tenant database pool: {0}")]
    Build(String),
    #[error("prepare the tenant's collection owner: {0}")]
    Owner(String),
    #[error("tenant database unavailable: {0}")]
    Get(#[from] deadpool_postgres::PoolError),
    #[error("{0}; retry later")]
    Busy(#[from] BudgetTimeout),
}

impl ClientError for TenantPoolError {
    fn kind(&self) -> ErrorKind {
        match self {
            TenantPoolError::Build(_) => ErrorKind::Internal,
            TenantPoolError::Owner(_) => ErrorKind::Upstream,
            TenantPoolError::Get(_) | TenantPoolError::Busy(_) => ErrorKind::Upstream,
        }
    }
}

/// A pooled connection and the budget permit it holds.
pub struct TenantConn {
    conn: deadpool_postgres::Object,
    permit: OwnedSemaphorePermit,
    server: Arc<(String, u16)>,
}

impl TenantConn {
    /// Host and port of the server the connection reaches (where a cancel
    /// request for it goes).
    pub fn server(&self) -> Arc<(String, u16)> {
        self.server.clone()
    }

    /// The connection and its permit (keep the permit while using it).
    pub fn into_parts(self) -> (deadpool_postgres::Object, OwnedSemaphorePermit) {
        (self.conn, self.permit)
    }
}

impl std::ops::Deref for TenantConn {
    type Target = deadpool_postgres::Object;
    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl std::ops::DerefMut for TenantConn {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

struct Entry {
    /// The database it reaches (a tenant renamed by `sluice migrate up` gets a new pool).
    db: String,
    pool: Pool,
    server: Arc<(String, u16)>,
    size: i32,
    statement_timeout_ms: i32,
    max_message: usize,
}

/// The largest message a tenant's connections read: its result cap (a
/// message is at most one row, which the cap refuses anyway), and never
/// below 1 MiB so that descriptions and errors of any reasonable size pass.
fn max_message(p: &Principal) -> usize {
    usize::try_from(p.quotas.max_result_bytes).unwrap_or(usize::MAX).max(1 << 20).saturating_add(64 << 10)
}

/// Whom a pool's connections log in as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Login {
    Tenant,
    CollectionOwner,
}

/// One pool per tenant, login and node.
type PoolKey = (TenantId, Login, Node);

/// The database whose collection owner was prepared, behind the tenant's lock.
type OwnerReady = Arc<tokio::sync::Mutex<Option<String>>>;

/// Every tenant's pools, keyed by tenant id and login.
#[derive(Clone, Default)]
pub struct TenantPools {
    pools: Arc<Mutex<HashMap<PoolKey, Entry>>>,
    /// Per tenant: the database whose collection owner this process has
    /// prepared (`Some`), behind a lock of that tenant's alone, so preparing
    /// one tenant (admin statements that may wait on its locks) never holds
    /// up another's writes.
    owners: Arc<Mutex<HashMap<TenantId, OwnerReady>>>,
}

impl TenantPools {
    /// A connection from the tenant's pool (building the pool if needed),
    /// once the tenant's connection budget has room.
    pub async fn get(&self, svc: &Services, p: &Principal) -> Result<TenantConn, TenantPoolError> {
        self.get_on(svc, p, Node::Primary).await
    }

    /// A connection as the tenant's own role on `node` (the primary or a
    /// read replica); same budget as [`TenantPools::get`].
    pub async fn get_on(&self, svc: &Services, p: &Principal, node: Node) -> Result<TenantConn, TenantPoolError> {
        let wait = Duration::from_millis(svc.config.server.pg_pool_timeout_ms);
        let permit = svc.budgets.acquire(p.tenant_id, p.quotas.pg_pool_size, wait).await?;
        let (pool, server) = self.pool(svc, p, Login::Tenant, node)?;
        Ok(TenantConn { conn: pool.get().await?, permit, server })
    }

    /// A connection as the tenant's collection owner, for writes to
    /// collection tables (same budget as [`TenantPools::get`]).
    pub async fn get_owner(&self, svc: &Services, p: &Principal) -> Result<TenantConn, TenantPoolError> {
        self.prepare_owner(svc, p).await?;
        let wait = Duration::from_millis(svc.config.server.pg_pool_timeout_ms);
        let permit = svc.budgets.acquire(p.tenant_id, p.quotas.pg_pool_size, wait).await?;
        let (pool, server) = self.pool(svc, p, Login::CollectionOwner, Node::Primary)?;
        Ok(TenantConn { conn: pool.get().await?, permit, server })
    }

    /// Once per process and tenant database: make sure the collection owner
    /// exists and owns the collection tables (tenants created before it).
    async fn prepare_owner(&self, svc: &Services, p: &Principal) -> Result<(), TenantPoolError> {
        let owner = {
            let mut owners = self.owners.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            owners.entry(p.tenant_id).or_default().clone()
        };
        let mut ready = owner.lock().await;
        if ready.as_deref() == Some(p.db.name.as_str()) {
            return Ok(());
        }
        crate::control::roles::ensure_collection_owner(svc, p.tenant_id, &p.db, p.quotas.pg_pool_size)
            .await
            .map_err(|e| TenantPoolError::Owner(e.to_string()))?;
        *ready = Some(p.db.name.clone());
        Ok(())
    }

    fn pool(
        &self,
        svc: &Services,
        p: &Principal,
        login: Login,
        node: Node,
    ) -> Result<(Pool, Arc<(String, u16)>), TenantPoolError> {
        let size = p.quotas.pg_pool_size.max(1);
        let mut pools = self.pools.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let statement_timeout_ms = p.quotas.statement_timeout_ms;
        let max_message = max_message(p);
        if let Some(e) = pools.get(&(p.tenant_id, login, node))
            && e.size == size
            && e.db == p.db.name
            && e.statement_timeout_ms == statement_timeout_ms
            && e.max_message == max_message
        {
            return Ok((e.pool.clone(), e.server.clone()));
        }
        crate::control::roles::ensure(svc, p);
        let (db, role, password) = match login {
            Login::Tenant => {
                (&p.db.name, p.db.role.clone(), tenant_role_password(&svc.config.auth.master_key, p.tenant_id))
            }
            Login::CollectionOwner => (
                &p.db.name,
                crate::control::roles::collection_owner(&p.db.role),
                collection_owner_password(&svc.config.auth.master_key, p.tenant_id),
            ),
        };
        let mut cfg = svc.replicas.tenant_config(&svc.pg_admin, node, db, &role, &password);
        let connect_timeout = Duration::from_millis(svc.config.postgres.connect_timeout_ms);
        cfg.connect_timeout(connect_timeout);
        // Every statement of the gateway's own (collections, points, search)
        // has the tenant's deadline: a startup option is the session's reset
        // value, so it survives the `RESET ALL` of recycling; `/v1/sql` sets
        // the same with `SET LOCAL`. A statement waiting on a lock the tenant
        // holds ends with 57014 instead of holding the connection for ever.
        if statement_timeout_ms > 0 {
            cfg.options(format!("-c statement_timeout={statement_timeout_ms}"));
        }
        let server = Arc::new(server_addr(&cfg));
        // No message larger than the tenant's result cap is read into memory.
        let mgr = Manager::from_connect(
            cfg,
            LimitedConnect { limit: max_message },
            ManagerConfig { recycling_method: RecyclingMethod::Clean },
        );
        let pool = Pool::builder(mgr)
            .max_size(usize::try_from(size).unwrap_or(1))
            .wait_timeout(Some(connect_timeout))
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(connect_timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| TenantPoolError::Build(e.to_string()))?;
        let entry = Entry {
            db: p.db.name.clone(),
            pool: pool.clone(),
            server: server.clone(),
            size,
            statement_timeout_ms,
            max_message,
        };
        if let Some(old) = pools.insert((p.tenant_id, login, node), entry) {
            old.pool.close();
        }
        Ok((pool, server))
    }

    /// Close and forget a tenant's pool (tenant deleted).
    pub fn evict(&self, tenant: TenantId) {
        let mut pools = self.pools.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pools.retain(|(t, _, _), e| {
            if *t == tenant {
                e.pool.close();
            }
            *t != tenant
        });
        drop(pools);
        self.owners.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&tenant);
    }
}
