//! Redis, with every key under `{prefix}:t:{tenant_id}:` for tenant data.
//!
//! The connection is a `ConnectionManager` (reconnects by itself), made on first
//! use so the gateway starts even while Redis is down.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use crate::config::RedisConfig;
use crate::ids::TenantId;
use crate::secret::ExposeSecret;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis: timed out after {0:?}")]
    Timeout(Duration),
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
