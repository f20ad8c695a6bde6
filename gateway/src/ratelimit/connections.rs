//! The cap on concurrent Postgres-door connections per tenant
//! (`quotas.pg_max_connections`), shared by every instance.
//!
//! Each open connection holds a lease: a member of the sorted set
//! `…:t:{tenant}:rl:pg_connections` scored by its expiry (Redis server time).
//! Acquiring drops expired leases, counts, and adds one if under the cap — one
//! script, one round trip. A [`ConnectionPermit`] renews its lease every third
//! of `ratelimit.connection_lease_ms` and gives it back when dropped, so a
//! crashed instance frees its slots within one lease.
//!
//! How the Postgres door uses it:
//! ```ignore
//! // after authentication, before ReadyForQuery:
//! let permit = match svc.ratelimit.acquire_connection(&principal).await {
//!     Ok(p) => p,
//!     Err(e) => return send_error(FATAL, e.sqlstate() /* 53300 */, &e.to_string()),
//! };
//! // keep `permit` alive for the whole session; dropping it releases the slot.
//! ```
//! While Redis is unreachable the cap is counted in-process at
//! cap ÷ live instances (`fail_mode = "open"`) or refused (`"closed"`).

use std::time::Duration;

use super::{Inner, RateLimiter, record};
use crate::config::FailMode;
use crate::error::{ClientError, ErrorKind};
use crate::pipeline::auth::Principal;
use crate::upstream::redis::RedisError;

const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[2]) then return {0, n} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
return {1, n + 1}
"#;

const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
"#;

pub(super) struct Scripts {
    acquire: redis::Script,
    renew: redis::Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self { acquire: redis::Script::new(ACQUIRE), renew: redis::Script::new(RENEW) }
    }
}

/// The tenant has as many Postgres-door connections as it may.
#[derive(Debug, thiserror::Error)]
#[error("too many connections for tenant {tenant} (limit {limit})")]
pub struct TooManyConnections {
    pub tenant: String,
    pub limit: u32,
}

impl TooManyConnections {
    /// SQLSTATE 53300 `too_many_connections`.
    pub fn sqlstate(&self) -> &'static str {
        super::SQLSTATE_TOO_MANY_CONNECTIONS
    }
}

impl ClientError for TooManyConnections {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Quota
    }
}

/// One held connection slot; dropping it releases the slot.
pub struct ConnectionPermit {
    limiter: RateLimiter,
    key: String,
    lease: String,
    local: bool,
    renew: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for ConnectionPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionPermit").field("key", &self.key).field("local", &self.local).finish()
    }
}

impl RateLimiter {
    /// Take one of the tenant's `pg_max_connections` slots for a new
    /// Postgres-door connection; hold the permit for the session.
    pub async fn acquire_connection(&self, p: &Principal) -> Result<ConnectionPermit, TooManyConnections> {
        let limit = u32::try_from(p.quotas.pg_max_connections).unwrap_or(1).max(1);
        let key = format!("{}rl:pg_connections", self.inner.redis.tenant_prefix(p.tenant_id));
        let lease = uuid::Uuid::new_v4().simple().to_string();
        let tenant = p.tenant.to_string();
        let refuse = || TooManyConnections { tenant: tenant.clone(), limit };
        if !self.inner.cfg.enabled {
            return Ok(ConnectionPermit { limiter: self.clone(), key, lease, local: true, renew: None });
        }
        if self.redis_allowed() {
            let timeout = self.redis_wait();
            match tokio::time::timeout(timeout, self.redis_acquire(&key, &lease, limit)).await {
                Ok(Ok(true)) => {
                    self.answered();
                    record(&tenant, "pg_connections", "allowed");
                    let renew = Some(tokio::spawn(renew_loop(self.inner.clone(), key.clone(), lease.clone())));
                    return Ok(ConnectionPermit { limiter: self.clone(), key, lease, local: false, renew });
                }
                Ok(Ok(false)) => {
                    self.answered();
                    record(&tenant, "pg_connections", "limited");
                    return Err(refuse());
                }
                Ok(Err(e)) => self.trip(&e.to_string()),
                Err(_) => self.trip(&format!("no answer within {timeout:?}")),
            }
        }
        let local_cap = limit.div_ceil(self.inner.instances.live()).max(1);
        let admitted = self.inner.cfg.fail_mode == FailMode::Open
            && match self.inner.local.lock() {
                Ok(mut l) => {
                    let n = l.conns.entry(key.clone()).or_insert(0);
                    if *n < local_cap {
                        *n += 1;
                        true
                    } else {
                        false
                    }
                }
                Err(_) => true,
            };
        record(&tenant, "pg_connections", if admitted { "fallback_allowed" } else { "fallback_limited" });
        if admitted {
            Ok(ConnectionPermit { limiter: self.clone(), key, lease, local: true, renew: None })
        } else {
            Err(refuse())
        }
    }

    async fn redis_acquire(&self, key: &str, lease: &str, limit: u32) -> Result<bool, RedisError> {
        let mut conn = self.inner.redis.conn().await?;
        let r: Vec<i64> = self
            .inner
            .conns
            .acquire
            .key(key)
            .arg(lease)
            .arg(limit)
            .arg(self.inner.cfg.connection_lease_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(r.first() == Some(&1))
    }
}

async fn renew_loop(inner: std::sync::Arc<Inner>, key: String, lease: String) {
    let every = Duration::from_millis((inner.cfg.connection_lease_ms / 3).max(100));
    loop {
        tokio::time::sleep(every).await;
        let result = async {
            let mut conn = inner.redis.conn().await?;
            let _: i64 = inner
                .conns
                .renew
                .key(&key)
                .arg(&lease)
                .arg(inner.cfg.connection_lease_ms)
                .invoke_async(&mut conn)
                .await?;
            Ok::<_, RedisError>(())
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "renew connection lease");
        }
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if let Some(h) = self.renew.take() {
            h.abort();
        }
        if self.local {
            if let Ok(mut l) = self.limiter.inner.local.lock()
                && let Some(n) = l.conns.get_mut(&self.key)
            {
                *n = n.saturating_sub(1);
            }
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // No runtime: the lease expires by itself.
        };
        let redis = self.limiter.inner.redis.clone();
        let (key, lease) = (std::mem::take(&mut self.key), std::mem::take(&mut self.lease));
        rt.spawn(async move {
            let result = async {
                let mut conn = redis.conn().await?;
                let _: i64 = redis::cmd("ZREM").arg(&key).arg(&lease).query_async(&mut conn).await?;
                Ok::<_, RedisError>(())
            }
            .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "release connection lease (it expires by itself)");
            }
        });
    }
}
