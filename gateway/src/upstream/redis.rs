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

    /// `{prefix}:{name}`: a key of the gateway's own (never a tenant's).
    pub fn gateway_key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// `{prefix}:t:{tenant}:` — the only key space a tenant's data may use.
    pub fn tenant_prefix(&self, tenant: TenantId) -> String {
        format!("{}:t:{tenant}:", self.prefix)
    }

    /// Where a tenant's key/value entry lives.
    fn kv_key(&self, tenant: TenantId, key: &KvKey) -> String {
        format!("{}kv:{}", self.tenant_prefix(tenant), key.as_str())
    }

    /// Where a tenant's key/value byte counter lives.
    fn kv_bytes_key(&self, tenant: TenantId) -> String {
        format!("{}usage:kv_bytes", self.tenant_prefix(tenant))
    }

    /// Set an entry, replacing any value and TTL it had; `ttl_secs: None`
    /// keeps it forever. The tenant's byte counter moves with it in the same
    /// script; a write that would take the counter past `max_total_bytes` is
    /// refused with `Err((used, limit))` and changes nothing.
    pub async fn kv_set(
        &self,
        tenant: TenantId,
        key: &KvKey,
        value: &[u8],
        ttl_secs: Option<u64>,
        max_total_bytes: i64,
    ) -> Result<Result<(), (i64, i64)>, RedisError> {
        let mut c = self.conn().await?;
        let (ok, used): (i64, i64) = KV_SET
            .key(self.kv_key(tenant, key))
            .key(self.kv_bytes_key(tenant))
            .arg(value)
            .arg(max_total_bytes)
            .arg(ttl_secs.unwrap_or(0))
            .invoke_async(&mut c)
            .await?;
        Ok(if ok == 1 { Ok(()) } else { Err((used, max_total_bytes)) })
    }

    /// The tenant's key/value bytes as counted by the write scripts.
    pub async fn kv_bytes(&self, tenant: TenantId) -> Result<i64, RedisError> {
        let mut c = self.conn().await?;
        let v: Option<i64> = c.get(self.kv_bytes_key(tenant)).await?;
        Ok(v.unwrap_or(0).max(0))
    }

    /// Recount the tenant's key/value bytes (SCAN + STRLEN) and store the
    /// count: corrects what expired entries left in the counter.
    pub async fn kv_recount(&self, tenant: TenantId) -> Result<i64, RedisError> {
        let mut c = self.conn().await?;
        let pattern = format!("{}*", glob_escape(&format!("{}kv:", self.tenant_prefix(tenant))));
        let (mut total, mut cursor) = (0i64, Some(0));
        while let Some(at) = cursor {
            let (next, keys) = scan_page(&mut c, &pattern, at).await?;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.strlen(k);
                }
                let lens: Vec<i64> = pipe.query_async(&mut c).await?;
                total = lens.iter().fold(total, |a, b| a.saturating_add(*b));
            }
            cursor = next;
        }
        let () = c.set(self.kv_bytes_key(tenant), total).await?;
        Ok(total)
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
        let n: i64 =
            KV_DELETE.key(self.kv_key(tenant, key)).key(self.kv_bytes_key(tenant)).invoke_async(&mut c).await?;
        Ok(n > 0)
    }

    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut c = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    /// Every key/value entry of a tenant with its remaining TTL in ms (`None`:
    /// no expiry), read page by page (SCAN, then GET + PTTL pipelined); for
    /// backups. Entries that expire while it runs are left out. Memory is the
    /// tenant's entries, which its `max_kv_bytes` quota bounds.
    pub async fn kv_export(&self, tenant: TenantId) -> Result<Vec<KvExported>, RedisError> {
        let mut c = self.conn().await?;
        let base = format!("{}kv:", self.tenant_prefix(tenant));
        let pattern = format!("{}*", glob_escape(&base));
        let (mut out, mut cursor) = (Vec::new(), Some(0));
        while let Some(at) = cursor {
            let (next, keys) = scan_page(&mut c, &pattern, at).await?;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.get(k).cmd("PTTL").arg(k);
                }
                let got: Vec<(Option<Vec<u8>>, i64)> = pipe.query_async(&mut c).await?;
                for (k, (value, pttl)) in keys.iter().zip(got) {
                    if let (Some(value), Some(key)) = (value, k.strip_prefix(&base)) {
                        out.push(KvExported { key: key.to_owned(), value, ttl_ms: u64::try_from(pttl).ok() });
                    }
                }
            }
            cursor = next;
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Replace a tenant's key/value entries with `entries` (each TTL counted
    /// from now), then recount its bytes; for restores.
    pub async fn kv_replace(&self, tenant: TenantId, entries: &[KvExported]) -> Result<(), RedisError> {
        let mut c = self.conn().await?;
        let base = format!("{}kv:", self.tenant_prefix(tenant));
        let pattern = format!("{}*", glob_escape(&base));
        let mut cursor = Some(0);
        while let Some(at) = cursor {
            let (next, keys) = scan_page(&mut c, &pattern, at).await?;
            if !keys.is_empty() {
                let _: u64 = c.unlink(&keys).await?;
            }
            cursor = next;
        }
        for batch in entries.chunks(500) {
            let mut pipe = redis::pipe();
            for e in batch {
                let k = format!("{base}{}", e.key);
                match e.ttl_ms.filter(|t| *t > 0) {
                    Some(ms) => pipe.cmd("SET").arg(&k).arg(&e.value).arg("PX").arg(ms).ignore(),
                    None => pipe.cmd("SET").arg(&k).arg(&e.value).ignore(),
                };
            }
            let () = pipe.query_async(&mut c).await?;
        }
        self.kv_recount(tenant).await?;
        Ok(())
    }

    /// Remove every key of a tenant (SCAN + UNLINK in batches). Returns how many.
    pub async fn delete_tenant_keys(&self, tenant: TenantId) -> Result<u64, RedisError> {
        let mut c = self.conn().await?;
        let pattern = format!("{}*", glob_escape(&self.tenant_prefix(tenant)));
        let (mut removed, mut cursor) = (0u64, Some(0));
        while let Some(at) = cursor {
            let (next, keys) = scan_page(&mut c, &pattern, at).await?;
            if !keys.is_empty() {
                let n: u64 = c.unlink(&keys).await?;
                removed += n;
            }
            cursor = next;
        }
        Ok(removed)
    }
}

/// A key/value entry as a backup holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KvExported {
    /// The entry's key (without the tenant's key space).
    pub key: String,
    #[serde(with = "base64_bytes")]
    pub value: Vec<u8>,
    /// Remaining time to live at export, in ms; `None`: no expiry.
    pub ttl_ms: Option<u64>,
}

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// One SCAN page (about 1,000 keys) of keys matching `pattern`, and the
/// cursor of the next page (`None` after the last).
async fn scan_page(
    c: &mut ConnectionManager,
    pattern: &str,
    cursor: u64,
) -> Result<(Option<u64>, Vec<String>), RedisError> {
    let (next, keys): (u64, Vec<String>) =
        redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).query_async(c).await?;
    Ok(((next != 0).then_some(next), keys))
}

/// SET with the tenant's byte counter (KEYS: entry, counter; ARGV: value,
/// limit, ttl or 0). Growth past the limit is refused; shrinking never is.
static KV_SET: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local old = redis.call('STRLEN', KEYS[1])
local new = string.len(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
if new > old and used - old + new > tonumber(ARGV[2]) then
  return {0, used}
end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('INCRBY', KEYS[2], new - old)
return {1, used - old + new}
",
    )
});

/// DEL with the tenant's byte counter (KEYS: entry, counter).
static KV_DELETE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local old = redis.call('STRLEN', KEYS[1])
local n = redis.call('DEL', KEYS[1])
if n > 0 then redis.call('DECRBY', KEYS[2], old) end
return n
",
    )
});

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
