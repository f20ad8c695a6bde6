//! Redis, with every key under `{prefix}:t:{tenant_id}:` for tenant data.
//!
//! One Redis or a Redis Cluster (`redis.cluster_urls`), behind one
//! connection type ([`RedisConn`]) every caller uses the same way. A single
//! Redis is reached through a `ConnectionManager` (reconnects by itself); a
//! cluster through the client library's cluster connection, which learns
//! the slot map from the seeds, follows MOVED/ASK and retries through a
//! failover. Either is made on first use so the gateway starts even while
//! Redis is down.
//!
//! On a cluster the tenant's id in its prefix is a hash tag
//! (`{prefix}:t:{{tenant_id}}:`): every key of a tenant is in one slot, so
//! the multi-key scripts (key/value with its byte counter, rate limits, the
//! semantic cache, backup holds) and the per-tenant SCANs (routed to that
//! slot's node) work unchanged. The tenant key/value store (`/v1/kv`) lives
//! under `{prefix}:t:{tenant_id}:kv:{key}`.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Value};
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

/// A connection to one Redis or to a Redis Cluster; cheap to clone (both
/// multiplex one set of sockets).
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

enum Client {
    Single(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

#[derive(Clone)]
pub struct RedisStore {
    client: std::sync::Arc<Client>,
    conn: std::sync::Arc<OnceCell<RedisConn>>,
    prefix: String,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// On a cluster, a command whose slot has no reachable master retries
/// with waits of at least this long (and at most 4×), so that the retries
/// together span `redis.cluster_failover_wait_ms` at the least.
const CLUSTER_RETRY_WAIT_MS: u64 = 250;

impl RedisStore {
    pub fn new(cfg: &RedisConfig) -> Result<Self, RedisError> {
        let client = if cfg.cluster_urls.is_empty() {
            Client::Single(redis::Client::open(cfg.url.expose_secret())?)
        } else {
            let seeds: Vec<&str> = cfg.cluster_urls.iter().map(|u| u.expose_secret()).collect();
            Client::Cluster(Box::new(
                redis::cluster::ClusterClient::builder(seeds)
                    .connection_timeout(CONNECT_TIMEOUT)
                    // The timeout covers a command with its retries.
                    .response_timeout(Duration::from_millis(cfg.cluster_failover_wait_ms) + Duration::from_secs(2))
                    .retries(
                        u32::try_from(cfg.cluster_failover_wait_ms.div_ceil(CLUSTER_RETRY_WAIT_MS) + 1)
                            .unwrap_or(u32::MAX),
                    )
                    .min_retry_wait(CLUSTER_RETRY_WAIT_MS)
                    .max_retry_wait(4 * CLUSTER_RETRY_WAIT_MS)
                    .retry_wait_formula(CLUSTER_RETRY_WAIT_MS, 2)
                    .build()?,
            ))
        };
        Ok(Self { client: std::sync::Arc::new(client), conn: Default::default(), prefix: cfg.key_prefix.clone() })
    }

    /// Is this a Redis Cluster?
    pub fn is_cluster(&self) -> bool {
        matches!(*self.client, Client::Cluster(_))
    }

    /// The shared, self-healing connection.
    pub async fn conn(&self) -> Result<RedisConn, RedisError> {
        let c = self
            .conn
            .get_or_try_init(|| async {
                let made = match &*self.client {
                    Client::Single(client) => {
                        let cfg = redis::aio::ConnectionManagerConfig::new()
                            .set_connection_timeout(Some(CONNECT_TIMEOUT))
                            .set_response_timeout(Some(Duration::from_secs(2)))
                            .set_number_of_retries(1);
                        tokio::time::timeout(CONNECT_TIMEOUT, client.get_connection_manager_with_config(cfg))
                            .await
                            .map(|r| r.map(RedisConn::Single))
                    }
                    Client::Cluster(client) => tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_connection())
                        .await
                        .map(|r| r.map(RedisConn::Cluster)),
                };
                match made {
                    Ok(r) => r.map_err(RedisError::from),
                    Err(_) => Err(RedisError::Timeout(CONNECT_TIMEOUT)),
                }
            })
            .await?;
        Ok(c.clone())
    }

    /// `{prefix}:{name}`: a key of the gateway's own (never a tenant's).
    pub fn gateway_key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// `{prefix}:t:{tenant}:` — the only key space a tenant's data may use
    /// (on a cluster `{prefix}:t:{{tenant}}:`, one slot per tenant).
    pub fn tenant_prefix(&self, tenant: TenantId) -> String {
        if self.is_cluster() {
            format!("{}:t:{{{tenant}}}:", self.prefix)
        } else {
            format!("{}:t:{tenant}:", self.prefix)
        }
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
        let (value, ttl): (Option<Vec<u8>>, i64) = KV_GET.key(&k).invoke_async(&mut c).await?;
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

    /// Mark that API key `key` of `tenant` wrote: for `window_ms` its reads
    /// stay on the primary on every gateway instance (read-your-writes
    /// across instances, see `upstream::replicas`).
    pub async fn mark_wrote(&self, tenant: TenantId, key: uuid::Uuid, window_ms: u64) -> Result<(), RedisError> {
        let mut c = self.conn().await?;
        let k = format!("{}ryw:{key}", self.tenant_prefix(tenant));
        let _: () = redis::cmd("SET").arg(k).arg(1).arg("PX").arg(window_ms.max(1)).query_async(&mut c).await?;
        Ok(())
    }

    /// Whether [`RedisStore::mark_wrote`]'s mark of `key` is still there.
    pub async fn wrote_lately(&self, tenant: TenantId, key: uuid::Uuid) -> Result<bool, RedisError> {
        let mut c = self.conn().await?;
        let k = format!("{}ryw:{key}", self.tenant_prefix(tenant));
        let n: i64 = redis::cmd("EXISTS").arg(k).query_async(&mut c).await?;
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

/// One SCAN page (about 1,000 keys) of keys matching `pattern` — a
/// tenant's key space, so on a cluster all of them are on the node that
/// serves the tenant's slot, where the SCAN goes — and the cursor of the
/// next page (`None` after the last).
async fn scan_page(c: &mut RedisConn, pattern: &str, cursor: u64) -> Result<(Option<u64>, Vec<String>), RedisError> {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
    let (next, keys): (u64, Vec<String>) = match c {
        RedisConn::Single(single) => cmd.query_async(single).await?,
        RedisConn::Cluster(cluster) => {
            let slot = Slot::for_key(pattern.trim_end_matches('*'));
            let to =
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_slot(slot, SlotAddr::Master)));
            redis::from_redis_value(cluster.route_command(cmd, to).await?).map_err(redis::RedisError::from)?
        }
    };
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

/// GET and TTL of one entry, atomically (KEYS: entry).
static KV_GET: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new("return {redis.call('GET', KEYS[1]), redis.call('TTL', KEYS[1])}"));

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
