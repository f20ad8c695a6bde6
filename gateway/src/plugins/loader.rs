//! Validation and compilation of uploaded components.
//!
//! Loading = check what compiling would cost ([`super::precheck`]), compile
//! under a budget ([`super::compiler`]), then check the component against its
//! kind's world ([`check_world`]): the export must exist (named in the error
//! when missing), every import must be one the host provides (named when
//! not), and the export's type must match (`*Pre::new`). Compiled components
//! are cached by (sha256, kind), so an artifact is compiled once per process
//! however often it is activated.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wasmtime::component::Component;

use super::bindings::{policy::PolicyPre, reranker::RerankerPre, retention::RetentionPre, v0_1, v0_2};
use super::compiler::{Compiler, root_message};
use super::engine::PluginEngine;
use super::host::HostState;
use super::precheck::{self, CodeLimits};
use super::{PluginError, PluginKind};
use crate::config::PluginsConfig;
use crate::ids::TenantId;

/// Compiled components kept at most (oldest evicted first).
const CACHE_CAPACITY: usize = 256;

/// A component ready to instantiate for its world (`sluice:plugin@0.3.0`, or
/// the `V0_2` / `V0_1` variants for components built against `@0.2.0` / `@0.1.0`).
pub enum Pre {
    Policy(PolicyPre<HostState>),
    Retention(RetentionPre<HostState>),
    Reranker(RerankerPre<HostState>),
    PolicyV0_2(v0_2::policy::PolicyPre<HostState>),
    RetentionV0_2(v0_2::retention::RetentionPre<HostState>),
    RerankerV0_2(v0_2::reranker::RerankerPre<HostState>),
    PolicyV0_1(v0_1::policy::PolicyPre<HostState>),
    RetentionV0_1(v0_1::retention::RetentionPre<HostState>),
    RerankerV0_1(v0_1::reranker::RerankerPre<HostState>),
}

/// A compiled, type-checked component.
pub struct Compiled {
    pub sha256: String,
    pub kind: PluginKind,
    pub pre: Pre,
}

/// Interfaces a guest may import besides WASI.
const ALLOWED_IMPORTS: &[&str] = &[
    "sluice:plugin/log@0.3.0",
    "sluice:plugin/types@0.3.0",
    "sluice:plugin/sql@0.3.0",
    "sluice:plugin/log@0.2.0",
    "sluice:plugin/types@0.2.0",
    "sluice:plugin/sql@0.2.0",
    "sluice:plugin/log@0.1.0",
    "sluice:plugin/types@0.1.0",
];

/// (sha256, kind): what a compiled component is cached under.
type CacheKey = (String, PluginKind);

/// Compiled components and their insertion order (for eviction).
type Cache = (HashMap<CacheKey, Arc<Compiled>>, Vec<CacheKey>);

pub struct Loader {
    cache: Mutex<Cache>,
    code_limits: CodeLimits,
    compiler: Compiler,
}

impl Loader {
    pub fn new(c: &PluginsConfig, memory_bytes: usize) -> Self {
        Self {
            cache: Mutex::new((HashMap::new(), Vec::new())),
            code_limits: CodeLimits::from_config(c),
            compiler: Compiler::new(c, memory_bytes),
        }
    }

    pub fn cached(&self, sha256: &str, kind: PluginKind) -> Option<Arc<Compiled>> {
        let c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        c.0.get(&(sha256.to_owned(), kind)).cloned()
    }

    fn insert(&self, compiled: Arc<Compiled>) {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let key = (compiled.sha256.clone(), compiled.kind);
        if c.0.insert(key.clone(), compiled).is_none() {
            c.1.push(key);
        }
        while c.1.len() > CACHE_CAPACITY {
            let old = c.1.remove(0);
            c.0.remove(&old);
        }
    }

    /// Kill running compiles and refuse new ones (shutdown).
    pub fn stop_compiles(&self) {
        self.compiler.stop();
    }

    /// Check, compile and type-check (or take from the cache). `tenant`: whose
    /// upload this is (`None` when loading a stored version).
    pub async fn load(
        &self,
        engine: &PluginEngine,
        tenant: Option<TenantId>,
        kind: PluginKind,
        sha256: &str,
        bytes: bytes::Bytes,
    ) -> Result<Arc<Compiled>, PluginError> {
        if let Some(c) = self.cached(sha256, kind) {
            return Ok(c);
        }
        reject_core_module(&bytes)?;
        let limits = self.code_limits;
        let checked = bytes.clone();
        tokio::task::spawn_blocking(move || precheck::check(&checked, &limits))
            .await
            .map_err(|e| PluginError::Internal(format!("check task: {e}")))??;
        let component = self.compiler.compile(&engine.engine, tenant, bytes).await?;
        let compiled = Arc::new(check_world(engine, kind, sha256.to_owned(), &component)?);
        self.insert(compiled.clone());
        Ok(compiled)
    }
}

fn reject_core_module(bytes: &[u8]) -> Result<(), PluginError> {
    if bytes.get(..8) == Some(&b"\0asm\x01\0\0\0"[..]) {
        return Err(PluginError::Invalid(
            "this is a core wasm module, not a component; build for wasm32-wasip2 (or run `wasm-tools component new`)"
                .into(),
        ));
    }
    Ok(())
}

/// Check a compiled component against `kind`'s world.
pub fn check_world(
    engine: &PluginEngine,
    kind: PluginKind,
    sha256: String,
    component: &Component,
) -> Result<Compiled, PluginError> {
    let ty = component.component_type();
    let export = kind.export_name();
    let mut problems = Vec::new();
    let exports: Vec<&str> = ty.exports(&engine.engine).map(|(n, _)| n).collect();
    if !exports.contains(&export) {
        problems.push(format!(
            "missing export `{export}` required by world {}; the component exports [{}]",
            kind.world(),
            exports.join(", ")
        ));
    }
    for (name, _) in ty.imports(&engine.engine) {
        if !(name.starts_with("wasi:") || ALLOWED_IMPORTS.contains(&name)) {
            problems.push(format!(
                "unsupported import `{name}`: plugins may import only sluice:plugin/log (@0.3.0, @0.2.0 or @0.1.0) and WASI (which is deny-all)"
            ));
        }
    }
    if !problems.is_empty() {
        return Err(PluginError::Invalid(problems.join("; ")));
    }
    let pre = engine
        .linker
        .instantiate_pre(component)
        .map_err(|e| PluginError::Invalid(format!("unsupported import: {}", root_message(&e))))?;
    let mismatch = |e: wasmtime::Error| {
        PluginError::Invalid(format!("export `{export}` does not match world {}: {}", kind.world(), root_message(&e)))
    };
    // Which package version it was built against: its `sluice:plugin`
    // imports say (a component importing none is taken as the current one).
    let built_for = |v: &str| ty.imports(&engine.engine).any(|(n, _)| n.starts_with("sluice:") && n.ends_with(v));
    let version = if built_for("@0.1.0") {
        1
    } else if built_for("@0.2.0") {
        2
    } else {
        3
    };
    let pre = match (kind, version) {
        (PluginKind::Policy, 1) => Pre::PolicyV0_1(v0_1::policy::PolicyPre::new(pre).map_err(mismatch)?),
        (PluginKind::Retention, 1) => Pre::RetentionV0_1(v0_1::retention::RetentionPre::new(pre).map_err(mismatch)?),
        (PluginKind::Reranker, 1) => Pre::RerankerV0_1(v0_1::reranker::RerankerPre::new(pre).map_err(mismatch)?),
        (PluginKind::Policy, 2) => Pre::PolicyV0_2(v0_2::policy::PolicyPre::new(pre).map_err(mismatch)?),
        (PluginKind::Retention, 2) => Pre::RetentionV0_2(v0_2::retention::RetentionPre::new(pre).map_err(mismatch)?),
        (PluginKind::Reranker, 2) => Pre::RerankerV0_2(v0_2::reranker::RerankerPre::new(pre).map_err(mismatch)?),
        (PluginKind::Policy, _) => Pre::Policy(PolicyPre::new(pre).map_err(mismatch)?),
        (PluginKind::Retention, _) => Pre::Retention(RetentionPre::new(pre).map_err(mismatch)?),
        (PluginKind::Reranker, _) => Pre::Reranker(RerankerPre::new(pre).map_err(mismatch)?),
    };
    Ok(Compiled { sha256, kind, pre })
}
