//! Per-tenant pools of raw upstream connections ([`super::ServerConn`]), one
//! per node (the primary, each read replica),
//! sized by the tenant's `pg_pool_size` quota, built on first use and rebuilt
//! when that quota changes. A connection marked `broken` is discarded when it
//! comes back, so the pool heals by opening a fresh one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use tokio_postgres::config::Host;

use super::prepared::StatementKey;
use super::{ServerConn, UpstreamTarget, WireError};
use crate::control::credentials::tenant_role_password;
use crate::ids::TenantId;
use crate::pipeline::auth::Principal;
use crate::services::Services;
use crate::upstream::replicas::Node;

/// Creates and recycles [`ServerConn`]s for one tenant. A connection that
/// is broken, or that the server closed while it was idle, is discarded on
/// checkout, so a client never gets it.
pub struct WireManager {
    pub target: Arc<UpstreamTarget>,
    /// Statements that some connection of this pool prepared successfully
    /// (see [`WireManager::is_known`]).
    known: Mutex<HashSet<StatementKey>>,
}

/// Most statements remembered in [`WireManager::known`] (then it starts over).
const MAX_KNOWN_STATEMENTS: usize = 10_000;

impl WireManager {
    pub fn new(target: Arc<UpstreamTarget>) -> Self {
        WireManager { target, known: Mutex::default() }
    }

    /// Did a connection of this pool prepare `key` successfully? The door
    /// then answers a client's Parse of it without taking a connection (the
    /// statement is prepared on the connection at its first Bind or
    /// Describe, from the catalog as of then).
    pub fn is_known(&self, key: &StatementKey) -> bool {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).contains(key)
    }

    pub fn remember(&self, key: StatementKey) {
        let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if k.len() >= MAX_KNOWN_STATEMENTS {
            k.clear();
        }
        k.insert(key);
    }
}

impl managed::Manager for WireManager {
    /// Boxed: a checkout moves the pool's slot several times, and a pointer
    /// moves for less than the connection's few hundred bytes.
    type Type = Box<ServerConn>;
    type Error = WireError;

    async fn create(&self) -> Result<Box<ServerConn>, WireError> {
        // The connect future (TCP, TLS, SCRAM) is large and rarely run:
        // boxed, so every checkout's future stays small.
        let conn = Box::pin(ServerConn::connect(&self.target)).await?;
        metrics::counter!("sluice_pg_upstream_connects_total").increment(1);
        Ok(Box::new(conn))
    }

    async fn recycle(&self, conn: &mut Box<ServerConn>, _: &Metrics) -> RecycleResult<WireError> {
        if conn.is_alive() {
            Ok(())
        } else {
            metrics::counter!("sluice_pg_upstream_discarded_total").increment(1);
            Err(RecycleError::message("connection is broken or was closed by the server"))
        }
    }
}

pub type WirePool = managed::Pool<WireManager>;
pub type PooledConn = managed::Object<WireManager>;

struct Entry {
    /// The database it reaches (a tenant renamed by `sluice migrate up` gets a new pool).
    db: String,
    pool: WirePool,
    size: i32,
}

/// Every tenant's wire pools, keyed by tenant id and node.
#[derive(Clone, Default)]
pub struct WirePools {
    pools: Arc<Mutex<HashMap<(TenantId, Node), Entry>>>,
}

impl WirePools {
    /// The tenant's pool on the primary (building or resizing it as the quota says).
    pub fn pool(&self, svc: &Services, p: &Principal, wait: Duration) -> Result<WirePool, WireError> {
        self.pool_on(svc, p, Node::Primary, wait)
    }

    /// The tenant's pool on `node`.
    pub fn pool_on(&self, svc: &Services, p: &Principal, node: Node, wait: Duration) -> Result<WirePool, WireError> {
        let size = p.quotas.pg_pool_size.max(1);
        let mut pools = self.pools.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(e) = pools.get(&(p.tenant_id, node))
            && e.size == size
            && e.db == p.db.name
        {
            return Ok(e.pool.clone());
        }
        if node == Node::Primary {
            crate::control::roles::ensure(svc, p);
        }
        let target = Arc::new(target_for(svc, p, node)?);
        let connect = target.connect_timeout;
        let pool = WirePool::builder(WireManager::new(target))
            .max_size(usize::try_from(size).unwrap_or(1))
            .wait_timeout(Some(wait))
            .create_timeout(Some(connect + Duration::from_secs(1)))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| WireError::Protocol(format!("build pool: {e}")))?;
        if let Some(old) = pools.insert((p.tenant_id, node), Entry { db: p.db.name.clone(), pool: pool.clone(), size })
        {
            old.pool.close();
        }
        Ok(pool)
    }

    /// Close and forget a tenant's pools.
    pub fn evict(&self, tenant: TenantId) {
        let mut pools = self.pools.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pools.retain(|(t, _), e| {
            if *t == tenant {
                e.pool.close();
            }
            *t != tenant
        });
    }
}

/// Connection settings for the tenant's own role on its own database on
/// `node`, taken from the admin URL's (or the replica URL's) host and port.
pub fn target_for(svc: &Services, p: &Principal, node: Node) -> Result<UpstreamTarget, WireError> {
    let (db, role) = (&p.db.name, &p.db.role);
    let password = tenant_role_password(&svc.config.auth.master_key, p.tenant_id);
    let cfg = svc.replicas.tenant_config(&svc.pg_admin, node, db, role, &password);
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(_) => return Err(WireError::Protocol("the Postgres door needs a TCP host in postgres.admin_url".into())),
        None => "localhost".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    // No application_name: the client's own (or none) is what it sees, and
    // what pg_stat_activity shows while it holds the connection.
    let mut options = Vec::new();
    if p.quotas.statement_timeout_ms > 0 {
        options.push(("statement_timeout".to_owned(), p.quotas.statement_timeout_ms.to_string()));
    }
    Ok(UpstreamTarget {
        host,
        port,
        user: role.clone(),
        database: db.clone(),
        password,
        options,
        connect_timeout: Duration::from_millis(svc.config.postgres.connect_timeout_ms),
    })
}
