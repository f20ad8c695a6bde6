//! The semantic cache: values found by the similarity of a query vector to a
//! cached one, on plain Redis 7 (no modules), shared by every instance.
//!
//! Entries live in a [`Scope`] under the tenant's Redis prefix, so a lookup
//! can only ever see its own tenant's entries of the same scope:
//! - vector search (`frontend/http/collections.rs`, `"cache": true`): tenant,
//!   collection, collection version (bumped by every write, so writes
//!   invalidate at once), k, canonical filter, include flags, ef_search and the
//!   reranker version;
//! - the tenant cache API (`/v1/semcache/{namespace}`): the namespace.
//!
//! Index: random-hyperplane LSH ([`lsh`]) buckets as Redis sets. A lookup is
//! one script (union of the probed buckets → ids and vectors of live
//! candidates, at most `cache.max_candidates`) plus one `HGET` of the best
//! candidate's value; similarity is exact cosine against the stored vector,
//! and a hit needs similarity ≥ the threshold. Writes are one script that also
//! keeps the per-tenant byte count and evicts entries closest to expiry past
//! `cache.max_bytes_per_tenant` ([`scripts`] has the key layout).
//!
//! Metrics (per tenant): `sluice_semcache_lookups_total{tenant,kind,outcome=hit|miss}`,
//! `sluice_semcache_lookup_seconds{tenant,kind}`, `sluice_semcache_evictions_total{tenant}`.

pub mod lsh;
pub mod scripts;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::CacheConfig;
use crate::error::{ClientError, ErrorKind};
use crate::pipeline::auth::Principal;
use crate::upstream::redis::{RedisError, RedisStore};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{0}")]
    Invalid(String),
    #[error("value is {size} bytes; at most {max} are allowed")]
    TooLarge { size: usize, max: u64 },
    #[error("the semantic cache is disabled on this gateway")]
    Disabled,
    #[error("semantic cache: {0}")]
    Redis(#[from] RedisError),
}

impl From<redis::RedisError> for CacheError {
    fn from(e: redis::RedisError) -> Self {
        CacheError::Redis(RedisError::Redis(e))
    }
}

impl ClientError for CacheError {
    fn kind(&self) -> ErrorKind {
        match self {
            CacheError::Invalid(_) => ErrorKind::User,
            CacheError::TooLarge { .. } => ErrorKind::TooLarge,
            CacheError::Disabled => ErrorKind::NotFound,
            CacheError::Redis(_) => ErrorKind::Upstream,
        }
    }
}

/// Where an entry lives: a hash of everything that must match for a hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope(String);

/// What decides whether a cached search result may answer a search.
#[derive(Debug, Clone)]
pub struct SearchScope<'a> {
    pub collection: &'a str,
    pub version: i64,
    pub k: u32,
    pub filter: Option<&'a Value>,
    pub include_metadata: bool,
    pub include_vector: bool,
    pub ef_search: u32,
    /// Version of the active reranker plugin (0: none).
    pub reranker_version: u32,
}

impl Scope {
    fn hashed(text: &str) -> Self {
        let digest = Sha256::digest(text.as_bytes());
        Scope(hex::encode(&digest[..16]))
    }

    /// A tenant cache-API namespace: `^[A-Za-z0-9_.-]{1,64}$`.
    pub fn namespace(ns: &str) -> Result<Self, CacheError> {
        let ok = (1..=64).contains(&ns.len())
            && ns.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return Err(CacheError::Invalid(
                "invalid namespace: use 1-64 characters A-Z, a-z, 0-9, '_', '.' and '-'".into(),
            ));
        }
        Ok(Self::hashed(&format!("ns\u{0}{ns}")))
    }

    pub fn search(s: &SearchScope<'_>) -> Self {
        let filter = s.filter.map(canonical_json).unwrap_or_default();
        Self::hashed(&format!(
            "search\u{0}{}\u{0}{}\u{0}{}\u{0}{filter}\u{0}{}{}\u{0}{}\u{0}{}",
            s.collection,
            s.version,
            s.k,
            u8::from(s.include_metadata),
            u8::from(s.include_vector),
            s.ef_search,
            s.reranker_version
        ))
    }

    pub fn id(&self) -> &str {
        &self.0
    }
}

/// JSON with object keys sorted at every level, so equal filters hash equally.
pub fn canonical_json(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String((*k).clone()).to_string());
                    out.push(':');
                    if let Some(x) = m.get(*k) {
                        write(x, out);
                    }
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut s = String::new();
    write(v, &mut s);
    s
}

/// The answer of a lookup.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The cached value, when the best candidate reached the threshold.
    pub hit: Option<Vec<u8>>,
    /// Exact cosine similarity of the best candidate (None: no candidates).
    pub similarity: Option<f32>,
    /// How many candidates were compared.
    pub candidates: usize,
}

/// Largest dimension projected on the async worker (when its planes exist).
const CHEAP_PROJECTION_DIM: usize = 1024;

/// The shared cache client. Cheap to clone.
#[derive(Clone)]
pub struct SemCache {
    inner: Arc<Inner>,
}

struct Inner {
    redis: RedisStore,
    cfg: CacheConfig,
    planes: lsh::PlaneCache,
    insert: redis::Script,
    lookup: redis::Script,
    clear: redis::Script,
}

impl SemCache {
    pub fn new(redis: RedisStore, cfg: CacheConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                redis,
                cfg,
                planes: lsh::PlaneCache::default(),
                insert: scripts::insert(),
                lookup: scripts::lookup(),
                clear: scripts::clear(),
            }),
        }
    }

    pub fn config(&self) -> &CacheConfig {
        &self.inner.cfg
    }

    fn plane_shape(&self) -> (usize, usize) {
        let c = &self.inner.cfg;
        (c.lsh_tables.max(1) as usize, c.lsh_bits.clamp(1, 30) as usize)
    }

    /// `f` over the hyperplanes of `vector`'s dimension. Generating planes
    /// (a 16,000-dimension set is 2M Gaussian samples) and projecting a
    /// large vector cost milliseconds of CPU: that runs on a blocking
    /// thread, never on the async workers other tenants' requests share.
    async fn project<T: Send + 'static>(
        &self,
        vector: &[f32],
        f: impl FnOnce(&lsh::Planes, &[f32]) -> T + Send + 'static,
    ) -> Result<T, CacheError> {
        let (tables, bits) = self.plane_shape();
        if vector.len() <= CHEAP_PROJECTION_DIM
            && let Some(planes) = self.inner.planes.cached(vector.len(), tables, bits)
        {
            return Ok(f(&planes, vector));
        }
        let (this, v) = (self.clone(), vector.to_vec());
        tokio::task::spawn_blocking(move || f(&this.inner.planes.get(v.len(), tables, bits), &v))
            .await
            .map_err(|e| CacheError::Invalid(format!("project the vector: {e}")))
    }

    async fn bounded<T>(&self, f: impl std::future::Future<Output = Result<T, CacheError>>) -> Result<T, CacheError> {
        let d = Duration::from_millis(self.inner.cfg.redis_timeout_ms);
        tokio::time::timeout(d, f).await.map_err(|_| CacheError::Redis(RedisError::Timeout(d)))?
    }

    /// Find the most similar cached vector in `scope`; a hit needs exact
    /// cosine similarity ≥ `threshold`. `kind` labels the metrics.
    pub async fn lookup(
        &self,
        p: &Principal,
        scope: &Scope,
        vector: &[f32],
        threshold: f32,
        kind: &'static str,
    ) -> Result<Lookup, CacheError> {
        if !self.inner.cfg.enabled {
            return Err(CacheError::Disabled);
        }
        check_vector(vector)?;
        let started = Instant::now();
        let probes = self.project(vector, move |planes, v| planes.probes(v, threshold)).await?;
        let prefix = self.inner.redis.tenant_prefix(p.tenant_id);
        let result = self
            .bounded(async {
                let mut conn = self.inner.redis.conn().await?;
                let mut inv = self.inner.lookup.prepare_invoke();
                inv.key(scripts::routing_key(&prefix)).arg(&prefix).arg(scope.id()).arg(self.inner.cfg.max_candidates);
                for b in &probes {
                    inv.arg(b);
                }
                let flat: Vec<Vec<u8>> = inv.invoke_async(&mut conn).await?;
                let mut best: Option<(f32, &[u8])> = None;
                for pair in flat.chunks_exact(2) {
                    let Some(v) = lsh::from_bytes(&pair[1]) else { continue };
                    let s = lsh::cosine(vector, &v);
                    if best.is_none_or(|(b, _)| s > b) {
                        best = Some((s, &pair[0]));
                    }
                }
                let candidates = flat.len() / 2;
                let Some((similarity, id)) = best else {
                    return Ok(Lookup { hit: None, similarity: None, candidates });
                };
                if similarity < threshold {
                    return Ok(Lookup { hit: None, similarity: Some(similarity), candidates });
                }
                let id = String::from_utf8_lossy(id);
                let key = format!("{prefix}sc:e:{}:{id}", scope.id());
                let value: Option<Vec<u8>> = redis::cmd("HGET").arg(&key).arg("val").query_async(&mut conn).await?;
                Ok(Lookup { hit: value, similarity: Some(similarity), candidates })
            })
            .await;
        let tenant = p.tenant.to_string();
        metrics::histogram!("sluice_semcache_lookup_seconds", "tenant" => tenant.clone(), "kind" => kind)
            .record(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(l) if l.hit.is_some() => "hit",
            Ok(_) => "miss",
            Err(_) => "error",
        };
        metrics::counter!("sluice_semcache_lookups_total", "tenant" => tenant, "kind" => kind, "outcome" => outcome)
            .increment(1);
        result
    }

    /// Store `value` under `vector` in `scope` for `ttl` (capped by
    /// `cache.max_ttl_secs`). Returns the entry id.
    pub async fn insert(
        &self,
        p: &Principal,
        scope: &Scope,
        vector: &[f32],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<String, CacheError> {
        let cfg = &self.inner.cfg;
        if !cfg.enabled {
            return Err(CacheError::Disabled);
        }
        check_vector(vector)?;
        let ttl = ttl.unwrap_or(Duration::from_secs(cfg.default_ttl_secs)).min(Duration::from_secs(cfg.max_ttl_secs));
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let buckets = self.project(vector, |planes, v| planes.buckets(v)).await?;
        let prefix = self.inner.redis.tenant_prefix(p.tenant_id);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let evicted: u64 = self
            .bounded(async {
                let mut conn = self.inner.redis.conn().await?;
                let mut inv = self.inner.insert.prepare_invoke();
                inv.key(scripts::routing_key(&prefix))
                    .arg(&prefix)
                    .arg(scope.id())
                    .arg(&id)
                    .arg(lsh::to_bytes(vector))
                    .arg(value)
                    .arg(ttl_ms)
                    .arg(cfg.max_bytes_per_tenant);
                for b in &buckets {
                    inv.arg(b);
                }
                Ok(inv.invoke_async(&mut conn).await?)
            })
            .await?;
        if evicted > 0 {
            metrics::counter!("sluice_semcache_evictions_total", "tenant" => p.tenant.to_string()).increment(evicted);
        }
        Ok(id)
    }

    /// Remove every entry of `scope`; returns how many there were.
    pub async fn clear(&self, p: &Principal, scope: &Scope) -> Result<u64, CacheError> {
        if !self.inner.cfg.enabled {
            return Err(CacheError::Disabled);
        }
        let prefix = self.inner.redis.tenant_prefix(p.tenant_id);
        self.bounded(async {
            let mut conn = self.inner.redis.conn().await?;
            let key = scripts::routing_key(&prefix);
            Ok(self.inner.clear.key(key).arg(&prefix).arg(scope.id()).invoke_async(&mut conn).await?)
        })
        .await
    }
}

fn check_vector(v: &[f32]) -> Result<(), CacheError> {
    if v.is_empty() || v.len() > 16_000 {
        return Err(CacheError::Invalid("`vector` must hold 1 to 16000 numbers".into()));
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(CacheError::Invalid("`vector` must hold finite numbers".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys() {
        let a = json!({ "b": 1, "a": { "d": [1, { "z": 0, "y": 1 }], "c": "x" } });
        let b = json!({ "a": { "c": "x", "d": [1, { "y": 1, "z": 0 }] }, "b": 1 });
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(canonical_json(&json!({ "b": 1, "a": 2 })), r#"{"a":2,"b":1}"#);
    }

    #[test]
    fn scopes_differ_by_every_part() {
        let f = json!({ "color": "red" });
        let base = SearchScope {
            collection: "c",
            version: 1,
            k: 10,
            filter: Some(&f),
            include_metadata: true,
            include_vector: false,
            ef_search: 100,
            reranker_version: 0,
        };
        let s0 = Scope::search(&base);
        assert_eq!(s0, Scope::search(&base.clone()));
        for other in [
            SearchScope { version: 2, ..base.clone() },
            SearchScope { k: 11, ..base.clone() },
            SearchScope { filter: None, ..base.clone() },
            SearchScope { include_vector: true, ..base.clone() },
            SearchScope { ef_search: 50, ..base.clone() },
            SearchScope { reranker_version: 1, ..base.clone() },
            SearchScope { collection: "d", ..base.clone() },
        ] {
            assert_ne!(s0, Scope::search(&other), "{other:?}");
        }
    }

    #[test]
    fn namespaces_are_validated() {
        assert!(Scope::namespace("answers.v1_x-2").is_ok());
        for bad in ["", "a b", "a/b", "a:b", &"x".repeat(65)] {
            assert!(Scope::namespace(bad).is_err(), "{bad}");
        }
    }
}
