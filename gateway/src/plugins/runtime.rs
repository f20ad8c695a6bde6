//! The plugin runtime: lifecycle (upload → validate → store → activate, roll
//! back, delete), the per-instance map of active plugins per tenant and kind,
//! and the calls themselves.
//!
//! Every call gets a fresh `Store` from the pooling allocator, the memory
//! limiter and an epoch deadline, and runs on a blocking thread. A trap,
//! deadline, OOM or malformed output becomes a typed [`PluginError`] for that
//! call only and counts against the plugin's [`Breaker`]. Callers decide what a
//! failure means (policy: deny; reranker: original order; retention: stop).
//!
//! The active map is filled lazily from the control plane and invalidated by
//! NOTIFY ([`super::reload`]) or after `plugins.cache_ttl_ms`. A call holds an
//! `Arc<Active>`, so in-flight calls finish on the version they started with.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use wasmtime::{Store, Trap};

use super::bindings::sql::Statement as WitStatement;
use super::bindings::types::{Candidate, Decision, Item, Origin, Request, Scored, Verdict};
use super::engine::PluginEngine;
use super::host::HostState;
use super::host::log::{LogBudget, LogSink};
use super::limits::{Breaker, Limits, MAX_GUEST_ERROR_BYTES, MAX_REASON_BYTES, truncate};
use super::loader::{Compiled, Loader, Pre};
use super::registry::{self, Artifacts, NOTIFY_CHANNEL, VersionRef};
use super::slots::Slots;
use super::{PluginError, PluginKind};
use crate::config::Config;
use crate::control::ControlPlane;
use crate::control::audit::{self, Actor, AuditEvent};
use crate::ids::TenantId;
use crate::upstream::s3::ObjectStore;

/// A plugin version active for a tenant, ready to call.
pub struct Active {
    pub tenant_id: TenantId,
    pub tenant: String,
    pub kind: PluginKind,
    pub version: i32,
    pub sha256: String,
    /// JSON text passed to every call.
    pub config: String,
    compiled: Arc<Compiled>,
    breaker: Arc<Breaker>,
    log_budget: Arc<LogBudget>,
}

impl Active {
    /// `policy v3`, used in errors and logs.
    pub fn label(&self) -> String {
        format!("{} v{}", self.kind, self.version)
    }
}

struct CacheEntry {
    active: Option<Arc<Active>>,
    at: Instant,
}

type VersionKey = (TenantId, PluginKind, i32);

/// Per-version state that outlives cache entries: the breaker and log budget.
type VersionState = (Arc<Breaker>, Arc<LogBudget>);

struct Inner {
    engine: PluginEngine,
    limits: Limits,
    loader: Loader,
    slots: Slots,
    artifacts: Artifacts,
    control: ControlPlane,
    cache_ttl: Duration,
    /// By tenant id (ours: a fast hasher, looked up per request).
    active: RwLock<foldhash::HashMap<(TenantId, PluginKind), CacheEntry>>,
    generation: AtomicU64,
    breakers: Mutex<HashMap<VersionKey, VersionState>>,
}

/// The plugin platform of one gateway process. Cheap to clone.
#[derive(Clone)]
pub struct Plugins {
    inner: Arc<Inner>,
}

/// Who is changing plugins, for the audit log.
pub struct Who<'a> {
    pub tenant_name: &'a str,
    pub actor: &'a Actor,
    pub request_id: Option<&'a str>,
}

/// The policy's answer after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyDecision {
    Allow,
    Deny(String),
}

/// A retention verdict after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetentionVerdict {
    Keep,
    Delete(String),
}

impl Plugins {
    pub fn new(config: &Config, control: ControlPlane, s3: ObjectStore) -> Result<Self, PluginError> {
        let limits = Limits::from_config(&config.plugins);
        let engine = PluginEngine::new(&limits, config.plugins.max_instances)?;
        let loader = Loader::new(&config.plugins, limits.memory_bytes);
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                limits,
                loader,
                slots: Slots::new(config.plugins.max_instances, config.plugins.max_instances_per_tenant),
                artifacts: Artifacts::new(s3),
                control,
                cache_ttl: Duration::from_millis(config.plugins.cache_ttl_ms),
                active: RwLock::default(),
                generation: AtomicU64::new(0),
                breakers: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub fn engine(&self) -> &PluginEngine {
        &self.inner.engine
    }

    pub fn artifacts(&self) -> &Artifacts {
        &self.inner.artifacts
    }

    /// The gateway is stopping: kill running compiles (their uploads fail
    /// with a retryable error) so nothing holds the shutdown.
    pub fn stop_compiles(&self) {
        self.inner.loader.stop_compiles();
    }

    /// Concurrent calls each tenant may run on this instance.
    pub fn per_tenant_slots(&self) -> u32 {
        self.inner.slots.per_tenant()
    }

    /// Instance slots a tenant's calls hold on this instance now.
    pub fn slots_in_use(&self, tenant_id: TenantId) -> u32 {
        self.inner.slots.in_use(tenant_id)
    }

    // ---- the active map ----------------------------------------------------

    /// [`Plugins::active`] when the cache answers: `None` when it must be
    /// looked up.
    pub fn active_cached(&self, tenant_id: TenantId, kind: PluginKind) -> Option<Option<Arc<Active>>> {
        let map = self.inner.active.read().unwrap_or_else(|p| p.into_inner());
        map.get(&(tenant_id, kind)).filter(|e| e.at.elapsed() < self.inner.cache_ttl).map(|e| e.active.clone())
    }

    /// The active plugin of `kind` for a tenant, if any (cached).
    pub async fn active(
        &self,
        tenant_id: TenantId,
        tenant: &str,
        kind: PluginKind,
    ) -> Result<Option<Arc<Active>>, PluginError> {
        if let Some(active) = self.active_cached(tenant_id, kind) {
            return Ok(active);
        }
        let generation = self.inner.generation.load(Ordering::Acquire);
        let row = registry::active(&self.inner.control.client().await?, tenant_id, kind).await?;
        let active = match row {
            Some(v) => Some(self.prepare(tenant_id, tenant, kind, v).await?),
            None => None,
        };
        let mut map = self.inner.active.write().unwrap_or_else(|p| p.into_inner());
        if self.inner.generation.load(Ordering::Acquire) == generation {
            map.insert((tenant_id, kind), CacheEntry { active: active.clone(), at: Instant::now() });
        }
        Ok(active)
    }

    /// Forget what this instance knows about one tenant's plugin of `kind`.
    pub fn invalidate(&self, tenant_id: TenantId, kind: PluginKind) {
        let mut map = self.inner.active.write().unwrap_or_else(|p| p.into_inner());
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        map.remove(&(tenant_id, kind));
    }

    /// Forget everything (after a reconnect of the notification listener).
    pub fn invalidate_all(&self) {
        let mut map = self.inner.active.write().unwrap_or_else(|p| p.into_inner());
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        map.clear();
    }

    /// Compiled component of a version: from the cache, or fetched from the
    /// object store, digest-checked and compiled.
    async fn compiled(&self, kind: PluginKind, v: &VersionRef) -> Result<Arc<Compiled>, PluginError> {
        if let Some(c) = self.inner.loader.cached(&v.sha256, kind) {
            return Ok(c);
        }
        let bytes = self.inner.artifacts.get(&v.artifact_key).await?;
        let actual = registry::sha256_hex(&bytes);
        if actual != v.sha256 {
            return Err(PluginError::Corrupt {
                plugin: format!("{kind} v{}", v.version),
                expected: v.sha256.clone(),
                actual,
            });
        }
        self.inner.loader.load(&self.inner.engine, None, kind, &v.sha256, bytes).await
    }

    async fn prepare(
        &self,
        tenant_id: TenantId,
        tenant: &str,
        kind: PluginKind,
        v: VersionRef,
    ) -> Result<Arc<Active>, PluginError> {
        let compiled = self.compiled(kind, &v).await?;
        let (breaker, log_budget) = {
            let mut b = self.inner.breakers.lock().unwrap_or_else(|p| p.into_inner());
            b.entry((tenant_id, kind, v.version))
                .or_insert_with(|| {
                    (
                        Arc::new(Breaker::new(self.inner.limits.breaker_failures, self.inner.limits.breaker_cooldown)),
                        Arc::new(LogBudget::new(self.inner.limits.log_lines_per_second)),
                    )
                })
                .clone()
        };
        Ok(Arc::new(Active {
            tenant_id,
            tenant: tenant.to_owned(),
            kind,
            version: v.version,
            sha256: v.sha256,
            config: v.config,
            compiled,
            breaker,
            log_budget,
        }))
    }

    /// Validate `bytes` and make them callable for a made-up tenant, without the
    /// control plane or the object store (benches, tools).
    pub async fn ephemeral(
        &self,
        tenant: &str,
        kind: PluginKind,
        bytes: Bytes,
        config: &str,
    ) -> Result<Arc<Active>, PluginError> {
        let sha = registry::sha256_hex(&bytes);
        let compiled = self.inner.loader.load(&self.inner.engine, None, kind, &sha, bytes).await?;
        let limits = &self.inner.limits;
        Ok(Arc::new(Active {
            tenant_id: TenantId(uuid::Uuid::nil()),
            tenant: tenant.to_owned(),
            kind,
            version: 0,
            sha256: sha,
            config: config.to_owned(),
            compiled,
            breaker: Arc::new(Breaker::new(limits.breaker_failures, limits.breaker_cooldown)),
            log_budget: Arc::new(LogBudget::new(limits.log_lines_per_second)),
        }))
    }

    /// The same version with another config (for `/test`).
    pub fn with_config(&self, a: &Arc<Active>, config: String) -> Arc<Active> {
        Arc::new(Active {
            tenant_id: a.tenant_id,
            tenant: a.tenant.clone(),
            kind: a.kind,
            version: a.version,
            sha256: a.sha256.clone(),
            config,
            compiled: a.compiled.clone(),
            breaker: a.breaker.clone(),
            log_budget: a.log_budget.clone(),
        })
    }

    // ---- lifecycle ---------------------------------------------------------

    /// Validate, store and record a new version; optionally activate it.
    pub async fn upload(
        &self,
        tenant_id: TenantId,
        who: &Who<'_>,
        kind: PluginKind,
        bytes: Bytes,
        activate: bool,
        config: Option<Value>,
    ) -> Result<Value, PluginError> {
        let limit = self.inner.limits.max_artifact_bytes;
        if bytes.len() as u64 > limit {
            return Err(PluginError::TooLarge { size: bytes.len() as u64, limit });
        }
        if bytes.is_empty() {
            return Err(PluginError::Invalid("empty body: send the component bytes".into()));
        }
        let sha = registry::sha256_hex(&bytes);
        let started = Instant::now();
        let validated = self.inner.loader.load(&self.inner.engine, Some(tenant_id), kind, &sha, bytes.clone()).await;
        if let Err(e) = &validated {
            self.audit_failure(tenant_id, who, "plugin.upload", kind, json!({ "sha256": sha, "error": e.to_string() }))
                .await;
        }
        validated?;
        let compile_ms = started.elapsed().as_secs_f64() * 1000.0;
        let key = registry::artifact_key(tenant_id, kind, &sha);
        self.inner.artifacts.put(&key, bytes.clone()).await?;
        let mut c = self.inner.control.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        tx.execute(
            "INSERT INTO plugins (tenant_id, kind) VALUES ($1, $2) ON CONFLICT (tenant_id, kind) DO NOTHING",
            &[&tenant_id.0, &kind.as_str()],
        )
        .await
        .map_err(db)?;
        tx.execute(
            "SELECT 1 FROM plugins WHERE tenant_id = $1 AND kind = $2 FOR UPDATE",
            &[&tenant_id.0, &kind.as_str()],
        )
        .await
        .map_err(db)?;
        let version: i32 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM plugin_versions WHERE tenant_id = $1 AND kind = $2",
                &[&tenant_id.0, &kind.as_str()],
            )
            .await
            .map_err(db)?
            .get(0);
        tx.execute(
            "INSERT INTO plugin_versions (tenant_id, kind, version, sha256, size_bytes, artifact_key, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&tenant_id.0, &kind.as_str(), &version, &sha, &(bytes.len() as i64), &key, &who.actor.label()],
        )
        .await
        .map_err(db)?;
        let details = json!({ "version": version, "sha256": sha, "size_bytes": bytes.len(), "activated": activate });
        record(&tx, tenant_id, who, "plugin.upload", kind, true, details).await?;
        if activate {
            set_active(&tx, tenant_id, kind, Some(version), config.as_ref()).await?;
            record(&tx, tenant_id, who, "plugin.activate", kind, true, json!({ "version": version, "config": config }))
                .await?;
        }
        tx.commit().await.map_err(db)?;
        if activate {
            self.invalidate(tenant_id, kind);
        }
        Ok(json!({
            "kind": kind, "version": version, "sha256": sha, "size_bytes": bytes.len(),
            "active": activate, "compile_ms": compile_ms,
        }))
    }

    /// Make `version` the active one (activate, or roll back to an older one).
    /// `config` replaces the kind's config when given.
    pub async fn activate(
        &self,
        tenant_id: TenantId,
        who: &Who<'_>,
        kind: PluginKind,
        version: i32,
        config: Option<Value>,
    ) -> Result<Value, PluginError> {
        let v = registry::version(&self.inner.control.client().await?, tenant_id, kind, version).await?;
        // Make sure it still loads (artifact present, digest right) before
        // switching, with no control-plane connection held meanwhile (the
        // artifact comes from the object store and may need compiling).
        let tenant = who.tenant_name;
        self.prepare(tenant_id, tenant, kind, v).await?;
        let mut c = self.inner.control.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let previous = lock_active(&tx, tenant_id, kind).await?;
        // Still there (a version is deleted under the same row lock).
        registry::version(&tx, tenant_id, kind, version).await?;
        set_active(&tx, tenant_id, kind, Some(version), config.as_ref()).await?;
        let details = json!({ "version": version, "previous": previous, "config": config });
        record(&tx, tenant_id, who, "plugin.activate", kind, true, details).await?;
        tx.commit().await.map_err(db)?;
        self.invalidate(tenant_id, kind);
        Ok(json!({ "kind": kind, "active_version": version, "previous_version": previous }))
    }

    /// Turn the plugin of `kind` off (versions are kept).
    pub async fn deactivate(&self, tenant_id: TenantId, who: &Who<'_>, kind: PluginKind) -> Result<Value, PluginError> {
        let mut c = self.inner.control.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let previous = lock_active(&tx, tenant_id, kind).await?;
        set_active(&tx, tenant_id, kind, None, None).await?;
        record(&tx, tenant_id, who, "plugin.deactivate", kind, true, json!({ "previous": previous })).await?;
        tx.commit().await.map_err(db)?;
        self.invalidate(tenant_id, kind);
        Ok(json!({ "kind": kind, "active_version": null, "previous_version": previous }))
    }

    /// Delete a version that is not active; its artifact goes when no other
    /// version uses the same bytes.
    pub async fn delete_version(
        &self,
        tenant_id: TenantId,
        who: &Who<'_>,
        kind: PluginKind,
        version: i32,
    ) -> Result<(), PluginError> {
        let mut c = self.inner.control.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let active = lock_active(&tx, tenant_id, kind).await?;
        if active == Some(version) {
            return Err(PluginError::Conflict(format!(
                "{kind} plugin version {version} is active; activate another version or deactivate first"
            )));
        }
        let v = registry::version(&tx, tenant_id, kind, version).await?;
        tx.execute(
            "DELETE FROM plugin_versions WHERE tenant_id = $1 AND kind = $2 AND version = $3",
            &[&tenant_id.0, &kind.as_str(), &version],
        )
        .await
        .map_err(db)?;
        let still_used: bool = tx
            .query_one("SELECT EXISTS (SELECT 1 FROM plugin_versions WHERE artifact_key = $1)", &[&v.artifact_key])
            .await
            .map_err(db)?
            .get(0);
        record(
            &tx,
            tenant_id,
            who,
            "plugin.delete_version",
            kind,
            true,
            json!({ "version": version, "sha256": v.sha256 }),
        )
        .await?;
        tx.commit().await.map_err(db)?;
        if !still_used && let Err(e) = self.inner.artifacts.delete(&v.artifact_key).await {
            tracing::warn!(error = %e, key = %v.artifact_key, "delete unused plugin artifact");
        }
        Ok(())
    }

    /// A version (or the active one) ready to call, for `/test`.
    pub async fn for_test(
        &self,
        tenant_id: TenantId,
        tenant: &str,
        kind: PluginKind,
        version: Option<i32>,
    ) -> Result<Arc<Active>, PluginError> {
        let c = self.inner.control.client().await?;
        let v = match version {
            Some(n) => registry::version(&c, tenant_id, kind, n).await?,
            None => registry::active(&c, tenant_id, kind)
                .await?
                .ok_or_else(|| PluginError::NotFound(format!("active {kind} plugin (pass `version`)")))?,
        };
        drop(c);
        self.prepare(tenant_id, tenant, kind, v).await
    }

    async fn audit_failure(&self, tenant_id: TenantId, who: &Who<'_>, action: &str, kind: PluginKind, details: Value) {
        let result = async {
            let c = self.inner.control.client().await?;
            record(&c, tenant_id, who, action, kind, false, details).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "audit failed plugin action");
        }
    }

    // ---- calls -------------------------------------------------------------

    /// Run a policy. Errors are the caller's to turn into a denial.
    /// `statements`: the request's SQL statements (empty for other operations);
    /// a `0.2.0` policy gets no `origin`, a `0.1.0` one only the request.
    pub async fn evaluate(
        &self,
        a: &Arc<Active>,
        request: Request,
        origin: Origin,
        statements: Vec<WitStatement>,
    ) -> Result<PolicyDecision, PluginError> {
        let timeout = self.inner.limits.policy_timeout;
        let out = self
            .call(a, timeout, move |store, pre, config| call_policy(store, pre, config, &request, &origin, &statements))
            .await;
        self.settle(a, out.and_then(|r| check_policy(a, r)))
    }

    /// Run a reranker: returns the new order as candidate indexes.
    pub async fn rerank(
        &self,
        a: &Arc<Active>,
        query: Vec<f32>,
        k: u32,
        candidates: Vec<Candidate>,
    ) -> Result<Vec<(usize, f64)>, PluginError> {
        let timeout = self.inner.limits.reranker_timeout;
        let n = candidates.len();
        let out = self
            .call(a, timeout, move |store, pre, config| call_rerank(store, pre, config, &query, k, &candidates))
            .await;
        self.settle(a, out.and_then(|r| check_rerank(a, r, n)))
    }

    /// Run a retention rule over one batch.
    pub async fn decide(
        &self,
        a: &Arc<Active>,
        now_ms: i64,
        items: Vec<Item>,
    ) -> Result<Vec<RetentionVerdict>, PluginError> {
        let timeout = self.inner.limits.retention_timeout;
        let n = items.len();
        let out = self
            .call(a, timeout, move |store, pre, config| match pre {
                Pre::Retention(p) => {
                    let inst = p.instantiate(&mut *store)?;
                    inst.call_decide(&mut *store, config, now_ms, &items)
                }
                Pre::RetentionV0_2(p) => {
                    let inst = p.instantiate(&mut *store)?;
                    inst.call_decide(&mut *store, config, now_ms, &items)
                }
                Pre::RetentionV0_1(p) => {
                    let inst = p.instantiate(&mut *store)?;
                    inst.call_decide(&mut *store, config, now_ms, &items)
                }
                _ => Err(wasmtime::Error::msg("not a retention rule")),
            })
            .await;
        self.settle(a, out.and_then(|r| check_retention(a, r, n)))
    }

    /// Breaker bookkeeping and metrics for a finished call.
    fn settle<T>(&self, a: &Active, r: Result<T, PluginError>) -> Result<T, PluginError> {
        let tenant = a.tenant.clone();
        match &r {
            Ok(_) => a.breaker.success(),
            Err(e) if e.is_call_failure() => {
                metrics::counter!("sluice_plugin_failures_total", "tenant" => tenant, "kind" => a.kind.as_str(), "cause" => e.cause())
                    .increment(1);
                if a.breaker.failure() {
                    tracing::warn!(tenant = %a.tenant, plugin = %a.label(), "plugin paused by its breaker after repeated failures");
                }
            }
            Err(_) => {}
        }
        r
    }

    /// One call in a fresh store on a blocking thread.
    async fn call<R: Send + 'static>(
        &self,
        a: &Arc<Active>,
        timeout: Duration,
        f: impl FnOnce(&mut Store<HostState>, &Pre, &str) -> wasmtime::Result<R> + Send + 'static,
    ) -> Result<R, PluginError> {
        if let Err(retry_in) = a.breaker.check() {
            return Err(PluginError::Paused { plugin: a.label(), retry_in });
        }
        // A slot of the tenant's share first: waiting for one is bounded by the
        // call's own deadline, and does not count as the plugin failing.
        let slot = self.inner.slots.acquire(a.tenant_id, timeout).await?;
        let inner = self.inner.clone();
        let a2 = a.clone();
        let started = Instant::now();
        let r = tokio::task::spawn_blocking(move || {
            let r = call_sync(&inner, &a2, timeout, f);
            drop(slot);
            r
        })
        .await
        .map_err(|e| PluginError::Internal(format!("plugin call task: {e}")))?;
        metrics::histogram!("sluice_plugin_call_seconds", "tenant" => a.tenant.clone(), "kind" => a.kind.as_str())
            .record(started.elapsed().as_secs_f64());
        r
    }

    /// The same call without a blocking thread, for benches and callers that
    /// are already off the async runtime.
    pub fn evaluate_blocking(
        &self,
        a: &Arc<Active>,
        request: Request,
        origin: Origin,
        statements: &[WitStatement],
    ) -> Result<PolicyDecision, PluginError> {
        let r = call_sync(&self.inner, a, self.inner.limits.policy_timeout, move |store, pre, config| {
            call_policy(store, pre, config, &request, &origin, statements)
        });
        r.and_then(|r| check_policy(a, r))
    }

    /// [`Plugins::rerank`] on the current thread, for benches.
    pub fn rerank_blocking(
        &self,
        a: &Arc<Active>,
        query: &[f32],
        k: u32,
        candidates: &[Candidate],
    ) -> Result<Vec<(usize, f64)>, PluginError> {
        let n = candidates.len();
        let r = call_sync(&self.inner, a, self.inner.limits.reranker_timeout, move |store, pre, config| {
            call_rerank(store, pre, config, query, k, candidates)
        });
        r.and_then(|r| check_rerank(a, r, n))
    }
}

/// The policy export of any world version.
fn call_policy(
    store: &mut Store<HostState>,
    pre: &Pre,
    config: &str,
    request: &Request,
    origin: &Origin,
    statements: &[WitStatement],
) -> wasmtime::Result<Result<Decision, String>> {
    match pre {
        Pre::Policy(p) => {
            let inst = p.instantiate(&mut *store)?;
            inst.call_evaluate(&mut *store, config, request, statements, origin)
        }
        Pre::PolicyV0_2(p) => {
            let inst = p.instantiate(&mut *store)?;
            inst.call_evaluate(&mut *store, config, request, statements)
        }
        Pre::PolicyV0_1(p) => {
            let inst = p.instantiate(&mut *store)?;
            inst.call_evaluate(&mut *store, config, request)
        }
        _ => Err(wasmtime::Error::msg("not a policy")),
    }
}

/// The reranker export of any world version.
fn call_rerank(
    store: &mut Store<HostState>,
    pre: &Pre,
    config: &str,
    query: &[f32],
    k: u32,
    candidates: &[Candidate],
) -> wasmtime::Result<Result<Vec<Scored>, String>> {
    match pre {
        Pre::Reranker(p) => {
            let inst = p.instantiate(&mut *store)?;
            inst.call_rerank(&mut *store, config, query, k, candidates)
        }
        Pre::RerankerV0_2(p) => {
            let inst = p.instantiate(&mut *store)?;
            inst.call_rerank(&mut *store, config, query, k, candidates)
        }
        Pre::RerankerV0_1(p) => {
            let inst = p.instantiate(&mut *store)?;
            inst.call_rerank(&mut *store, config, query, k, candidates)
        }
        _ => Err(wasmtime::Error::msg("not a reranker")),
    }
}

fn call_sync<R>(
    inner: &Inner,
    a: &Active,
    timeout: Duration,
    f: impl FnOnce(&mut Store<HostState>, &Pre, &str) -> wasmtime::Result<R>,
) -> Result<R, PluginError> {
    let sink = LogSink::new(&a.tenant, a.label(), a.log_budget.clone());
    // Declared before the store, dropped after it: the epoch ticks while
    // any guest code of this call can run.
    let _ticking = inner.engine.ticking();
    let mut store = Store::new(&inner.engine.engine, HostState::new(inner.limits.memory_bytes, sink));
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(PluginEngine::ticks(timeout));
    let r = f(&mut store, &a.compiled.pre, &a.config);
    store.data().log.finish();
    r.map_err(|e| classify(&e, store.data(), a, timeout, inner.limits.memory_bytes))
}

/// Name the cause of a failed call.
fn classify(e: &wasmtime::Error, st: &HostState, a: &Active, timeout: Duration, memory: usize) -> PluginError {
    let plugin = a.label();
    if st.limiter.hit_memory_cap {
        return PluginError::OutOfMemory { plugin, limit: memory };
    }
    let trap = e.downcast_ref::<Trap>();
    if trap == Some(&Trap::Interrupt) {
        return PluginError::Deadline { plugin, ms: timeout.as_millis() as u64 };
    }
    let mut message = match trap {
        Some(t) => t.to_string(),
        None => e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": "),
    };
    let stderr = st.stderr_text();
    if !stderr.is_empty() {
        message.push_str(&format!(" (guest stderr: {})", truncate(&stderr, 512)));
    }
    PluginError::Trap { plugin, message: truncate(&message, 2048) }
}

fn guest_error(a: &Active, message: &str) -> PluginError {
    PluginError::Guest { plugin: a.label(), message: truncate(message, MAX_GUEST_ERROR_BYTES) }
}

fn bad_output(a: &Active, message: String) -> PluginError {
    PluginError::BadOutput { plugin: a.label(), message }
}

fn check_policy(a: &Active, r: Result<Decision, String>) -> Result<PolicyDecision, PluginError> {
    match r {
        Ok(Decision::Allow) => Ok(PolicyDecision::Allow),
        Ok(Decision::Deny(reason)) if reason.len() > MAX_REASON_BYTES => Err(bad_output(
            a,
            format!("deny reason is {} bytes; the limit is {MAX_REASON_BYTES} (oversized output)", reason.len()),
        )),
        Ok(Decision::Deny(reason)) => Ok(PolicyDecision::Deny(reason)),
        Err(msg) => Err(guest_error(a, &msg)),
    }
}

fn check_rerank(a: &Active, r: Result<Vec<Scored>, String>, n: usize) -> Result<Vec<(usize, f64)>, PluginError> {
    let scored = r.map_err(|m| guest_error(a, &m))?;
    if scored.len() > n {
        return Err(bad_output(a, format!("{} scores for {n} candidates (oversized output)", scored.len())));
    }
    let mut seen = vec![false; n];
    let mut out = Vec::with_capacity(scored.len());
    for s in scored {
        let i = s.index as usize;
        if i >= n {
            return Err(bad_output(a, format!("candidate index {i} out of range (0..{n})")));
        }
        if std::mem::replace(&mut seen[i], true) {
            return Err(bad_output(a, format!("candidate index {i} appears twice")));
        }
        if !s.score.is_finite() {
            return Err(bad_output(a, format!("score of candidate {i} is not a finite number")));
        }
        out.push((i, s.score));
    }
    // Highest score first; ties keep the guest's order.
    out.sort_by(|x, y| y.1.total_cmp(&x.1));
    Ok(out)
}

fn check_retention(
    a: &Active,
    r: Result<Vec<Verdict>, String>,
    n: usize,
) -> Result<Vec<RetentionVerdict>, PluginError> {
    let verdicts = r.map_err(|m| guest_error(a, &m))?;
    if verdicts.len() != n {
        return Err(bad_output(a, format!("{} verdicts for {n} items", verdicts.len())));
    }
    verdicts
        .into_iter()
        .map(|v| match v {
            Verdict::Keep => Ok(RetentionVerdict::Keep),
            Verdict::Delete(reason) if reason.len() > MAX_REASON_BYTES => Err(bad_output(
                a,
                format!("delete reason is {} bytes; the limit is {MAX_REASON_BYTES} (oversized output)", reason.len()),
            )),
            Verdict::Delete(reason) => Ok(RetentionVerdict::Delete(reason)),
        })
        .collect()
}

fn db(e: tokio_postgres::Error) -> PluginError {
    PluginError::Control(e.into())
}

/// Lock the kind's row and read its active version.
async fn lock_active(
    c: &impl deadpool_postgres::GenericClient,
    tenant_id: TenantId,
    kind: PluginKind,
) -> Result<Option<i32>, PluginError> {
    Ok(c.query_opt(
        "SELECT active_version FROM plugins WHERE tenant_id = $1 AND kind = $2 FOR UPDATE",
        &[&tenant_id.0, &kind.as_str()],
    )
    .await
    .map_err(db)?
    .and_then(|r| r.get(0)))
}

async fn set_active(
    c: &impl deadpool_postgres::GenericClient,
    tenant_id: TenantId,
    kind: PluginKind,
    version: Option<i32>,
    config: Option<&Value>,
) -> Result<(), PluginError> {
    c.execute(
        "UPDATE plugins SET active_version = $3, config = COALESCE($4, config), updated_at = now()
         WHERE tenant_id = $1 AND kind = $2",
        &[&tenant_id.0, &kind.as_str(), &version, &config],
    )
    .await
    .map_err(db)?;
    let payload = format!("{}:{}", tenant_id.0, kind.as_str());
    c.execute("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, &payload]).await.map_err(db)?;
    Ok(())
}

async fn record(
    c: &impl deadpool_postgres::GenericClient,
    tenant_id: TenantId,
    who: &Who<'_>,
    action: &str,
    kind: PluginKind,
    ok: bool,
    details: Value,
) -> Result<(), PluginError> {
    audit::record(
        c,
        &AuditEvent {
            tenant_id: Some(tenant_id),
            tenant_name: Some(who.tenant_name),
            actor: who.actor,
            action,
            target: Some(kind.as_str()),
            ok,
            details,
            request_id: who.request_id,
        },
    )
    .await?;
    Ok(())
}
