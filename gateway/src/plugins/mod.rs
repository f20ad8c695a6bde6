//! The WebAssembly plugin platform: tenant admins upload components that
//! implement one world of `wit/` (`sluice:plugin@0.1.0`) — a policy, a
//! retention rule or a reranker — and the gateway runs them sandboxed.
//!
//! - [`engine`]: the wasmtime engine (pooling allocator, epoch ticker) and linker.
//! - [`bindings`]: the one `bindgen!`.
//! - [`host`]: what guests may import (`log`, deny-all WASI).
//! - [`precheck`]: what compiling a component would cost, bounded before it starts.
//! - [`compiler`]: compiles in a budgeted, killable child process.
//! - [`loader`]: check + compile + type-check once per artifact digest.
//! - [`limits`]: memory limiter, output caps, breaker.
//! - [`registry`]: versions in the control plane, artifacts in the object store.
//! - [`runtime`]: the active-plugin map per tenant and kind, and the calls
//!   (one `Store` per call, epoch deadline, typed failures).
//! - [`slots`]: instance slots shared fairly: a per-tenant share of the pool.
//! - [`reload`]: LISTEN/NOTIFY so activations reach every instance in < 1 s.
//! - [`stage`]: the policy as a pipeline [`crate::pipeline::Stage`].
//!
//! Failure semantics: policies fail closed (deny), rerankers fail open (the
//! original order), a retention run stops.

pub mod bindings;
pub mod compiler;
pub mod engine;
pub mod host;
pub mod limits;
pub mod loader;
pub mod precheck;
pub mod registry;
pub mod reload;
pub mod runtime;
pub mod slots;
pub mod stage;

use std::time::Duration;

use crate::control::ControlError;
use crate::error::{ClientError, ErrorKind};
use crate::upstream::s3::S3Error;

pub use runtime::{Active, Plugins};

/// The three kinds of plugin, one world each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    Policy,
    Retention,
    Reranker,
}

impl PluginKind {
    pub const ALL: [PluginKind; 3] = [PluginKind::Policy, PluginKind::Retention, PluginKind::Reranker];

    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Policy => "policy",
            PluginKind::Retention => "retention",
            PluginKind::Reranker => "reranker",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The world a component of this kind must implement.
    pub fn world(self) -> &'static str {
        match self {
            PluginKind::Policy => "sluice:plugin/policy@0.3.0",
            PluginKind::Retention => "sluice:plugin/retention@0.3.0",
            PluginKind::Reranker => "sluice:plugin/reranker@0.3.0",
        }
    }

    /// The function the world exports.
    pub fn export_name(self) -> &'static str {
        match self {
            PluginKind::Policy => "evaluate",
            PluginKind::Retention => "decide",
            PluginKind::Reranker => "rerank",
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of the plugin platform. Call failures name the plugin
/// (`policy v3`) and the cause.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("invalid plugin: {0}")]
    Invalid(String),
    #[error("plugin is {size} bytes; the limit is {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("plugin {plugin} timed out: exceeded its {ms} ms deadline")]
    Deadline { plugin: String, ms: u64 },
    #[error("plugin {plugin} ran out of memory: exceeded its {limit} byte memory limit")]
    OutOfMemory { plugin: String, limit: usize },
    #[error("plugin {plugin} trapped: {message}")]
    Trap { plugin: String, message: String },
    #[error("plugin {plugin} returned malformed output: {message}")]
    BadOutput { plugin: String, message: String },
    #[error("plugin {plugin} returned an error: {message}")]
    Guest { plugin: String, message: String },
    #[error("plugin {plugin} is paused after repeated failures; retry in {} s", retry_in.as_secs().max(1))]
    Paused { plugin: String, retry_in: Duration },
    #[error("artifact of plugin {plugin} does not match its sha256 (stored {expected}, got {actual})")]
    Corrupt { plugin: String, expected: String, actual: String },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("plugin artifact store: {0}")]
    Storage(#[from] S3Error),
    /// No room to run or compile now (the tenant's share of instance slots,
    /// all slots, or the compiler); not the plugin's fault, so it never
    /// counts against its breaker. Retry helps.
    #[error("{0}")]
    Busy(String),
    #[error("plugin host: {0}")]
    Internal(String),
}

impl PluginError {
    /// A short machine-readable cause for call failures (`deadline`, `trap`, …).
    pub fn cause(&self) -> &'static str {
        match self {
            PluginError::Deadline { .. } => "deadline",
            PluginError::OutOfMemory { .. } => "out_of_memory",
            PluginError::Trap { .. } => "trap",
            PluginError::BadOutput { .. } => "bad_output",
            PluginError::Guest { .. } => "guest_error",
            PluginError::Paused { .. } => "paused",
            PluginError::Corrupt { .. } => "corrupt_artifact",
            PluginError::Busy(_) => "busy",
            _ => "other",
        }
    }

    /// Whether this counts against the plugin's breaker.
    pub fn is_call_failure(&self) -> bool {
        matches!(
            self,
            PluginError::Deadline { .. }
                | PluginError::OutOfMemory { .. }
                | PluginError::Trap { .. }
                | PluginError::BadOutput { .. }
                | PluginError::Guest { .. }
        )
    }
}

impl ClientError for PluginError {
    fn kind(&self) -> ErrorKind {
        match self {
            PluginError::Invalid(_) | PluginError::BadRequest(_) => ErrorKind::User,
            PluginError::TooLarge { .. } => ErrorKind::TooLarge,
            PluginError::NotFound(_) => ErrorKind::NotFound,
            PluginError::Conflict(_) => ErrorKind::Conflict,
            PluginError::Deadline { .. }
            | PluginError::OutOfMemory { .. }
            | PluginError::Trap { .. }
            | PluginError::BadOutput { .. }
            | PluginError::Guest { .. }
            | PluginError::Paused { .. } => ErrorKind::Plugin,
            PluginError::Control(e) => e.kind(),
            PluginError::Storage(_) => ErrorKind::Upstream,
            PluginError::Busy(_) => ErrorKind::RateLimit,
            PluginError::Corrupt { .. } | PluginError::Internal(_) => ErrorKind::Internal,
        }
    }
}
