//! Redis, with every key under `{prefix}:t:{tenant_id}:` for tenant data.
//!
//! The connection is a `ConnectionManager` (reconnects by itself), made on first
//! use so the gateway starts even while Redis is down. The tenant key/value
//! store (`/v1/kv`) lives under `{prefix}:t:{tenant_id}:kv:{key}`.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use crate::config::RedisConfig;
use crate::error::{ClientError, ErrorKind};
use crate::ids::{KvKey, TenantId};
use crate::secret::ExposeSecret;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis: timed out after {0:?}")]
    Timeout(Duration),
}

impl ClientError for RedisError {
    /// Whatever went wrong, Redis is the one to blame and a retry may help.
    fn kind(&self) -> ErrorKind {
        ErrorKind::Upstream
    }
}

/// A key/value entry as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub value: Vec<u8>,
    /// Seconds left before it expires; `None` if it never does.
    pub ttl_secs: Option<u64>,
}

#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    conn: std::sync::Arc<OnceCell<ConnectionManager>>,
    prefix: String,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl RedisStore {
    pub fn new(cfg: &RedisConfig) -> Result<Self, RedisError> {
        Ok(Self {
            client: redis::Client::open(cfg.url.expose_secret())?,
            conn: Default::default(),
            prefix: cfg.key_prefix.clone(),
        })
    }

    /// The shared, self-healing connection.
    pub async fn conn(&self) -> Result<ConnectionManager, RedisError> {
        let cm = self
            .conn
            .get_or_try_init(|| async {
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(1);
                match tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_connection_manager_with_config(cfg)).await {
                    Ok(r) => r.map_err(RedisError::from),
                    Err(_) => Err(RedisError::Timeout(CONNECT_TIMEOUT)),
                }
            })
            .await?;
        Ok(cm.clone())
    }

    /// `{prefix}:t:{tenant}:` — the only key space a tenant's data may use.
    pub fn tenant_prefix(&self, tenant: TenantId) -> String {
        format!("{}:t:{tenant}:", self.prefix)
    }

    /// Where a tenant's key/value entry lives.
    fn kv_key(&self, tenant: TenantId, key: &KvKey) -> String {
        format!("{}kv:{}", self.tenant_prefix(tenant), key.as_str())
    }

    /// Set an entry, replacing any value and TTL it had; `ttl_secs: None` keeps it forever.
    pub async fn kv_set(
        &self,
        tenant: TenantId,
        key: &KvKey,
        value: &[u8],
        ttl_secs: Option<u64>,
    ) -> Result<(), RedisError> {
        let mut c = self.conn().await?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.kv_key(tenant, key)).arg(value);
        if let Some(ttl) = ttl_secs {
            cmd.arg("EX").arg(ttl);
        }
        let () = cmd.query_async(&mut c).await?;
        Ok(())
    }

    /// Read an entry and its remaining TTL in one atomic round trip.
    pub async fn kv_get(&self, tenant: TenantId, key: &KvKey) -> Result<Option<KvEntry>, RedisError> {
        let mut c = self.conn().await?;
        let k = self.kv_key(tenant, key);
        let (value, ttl): (Option<Vec<u8>>, i64) = redis::pipe().atomic().get(&k).ttl(&k).query_async(&mut c).await?;
        // TTL is -1 for "no expiry" (and -2 for "gone", covered by `value`).
        Ok(value.map(|value| KvEntry { value, ttl_secs: u64::try_from(ttl).ok() }))
    }

    /// Delete an entry; `false` if there was none.
    pub async fn kv_delete(&self, tenant: TenantId, key: &KvKey) -> Result<bool, RedisError> {
        let mut c = self.conn().await?;
        let n: u64 = c.del(self.kv_key(tenant, key)).await?;
        Ok(n > 0)
    }

    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut c = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    /// Remove every key of a tenant (SCAN + UNLINK in batches). Returns how many.
    pub async fn delete_tenant_keys(&self, tenant: TenantId) -> Result<u64, RedisError> {
        let mut c = self.conn().await?;
        let pattern = format!("{}*", glob_escape(&self.tenant_prefix(tenant)));
        let mut cursor: u64 = 0;
        let mut removed = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await?;
            if !keys.is_empty() {
                let n: u64 = c.unlink(&keys).await?;
                removed += n;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

/// Escape Redis glob metacharacters so a prefix matches only itself.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}
