//! The request pipeline shared by both doors:
//! authenticate → resolve tenant → parse SQL → rules → rate limit → policy →
//! (cache) → route.
//!
//! [`auth`] turns a credential into a [`auth::Principal`]. SQL is parsed once
//! by the door ([`crate::sql::SqlParser`]) into the statement model. Then every
//! data request, whichever door it came through, is described as an
//! [`Operation`] and passed to [`Pipeline::admit`], which runs the [`Stage`]s
//! in order: the shared-cluster rules ([`crate::sql::stage`]), the rate limiter
//! and the tenant's policy plugin. A door routes the request only after
//! `admit` said yes; a refusal is a [`PipelineError`] that each door renders
//! its own way (HTTP status, Postgres `ErrorResponse`).

pub mod auth;

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::error::{ClientError, ErrorKind};
use crate::sql::Statement;
use crate::sql::rules::Refusal;
use auth::Principal;

/// Which door a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Http,
    Pg,
    /// The S3-compatible door (`frontend/s3`), serving this S3 operation
    /// (`GetObject`, `UploadPart`, …).
    S3 {
        operation: &'static str,
    },
}

impl Door {
    /// `http`, `pg` or `s3`.
    pub fn as_str(self) -> &'static str {
        match self {
            Door::Http => "http",
            Door::Pg => "pg",
            Door::S3 { .. } => "s3",
        }
    }
}

impl serde::Serialize for Door {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What a request wants to do, with the facts stages decide on.
#[derive(Debug, Clone)]
pub enum Action<'a> {
    /// SQL: one query text (a pg-door `Query` or `Parse`, or one `/v1/sql`
    /// statement) and the statements the parser found in it.
    Sql {
        text: &'a str,
        statements: &'a [Statement],
    },
    ObjectGet {
        key: &'a str,
    },
    ObjectHead {
        key: &'a str,
    },
    ObjectPut {
        key: &'a str,
        size: Option<u64>,
    },
    ObjectDelete {
        key: &'a str,
    },
    ObjectList {
        prefix: &'a str,
    },
    CollectionRead {
        name: &'a str,
    },
    /// Create, delete or change a collection: `points` upserted (or, with
    /// `removes`, deleted).
    CollectionWrite {
        name: &'a str,
        points: usize,
        removes: bool,
    },
    Search {
        collection: &'a str,
        k: u32,
    },
    KvGet {
        key: &'a str,
    },
    KvPut {
        key: &'a str,
        size: u64,
    },
    KvDelete {
        key: &'a str,
    },
}

impl Action<'_> {
    /// Stable operation name (metrics label, policy input).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Sql { .. } => "sql",
            Action::ObjectGet { .. } => "object.get",
            Action::ObjectHead { .. } => "object.head",
            Action::ObjectPut { .. } => "object.put",
            Action::ObjectDelete { .. } => "object.delete",
            Action::ObjectList { .. } => "object.list",
            Action::CollectionRead { .. } => "collection.read",
            Action::CollectionWrite { .. } => "collection.write",
            Action::Search { .. } => "collection.search",
            Action::KvGet { .. } => "kv.get",
            Action::KvPut { .. } => "kv.put",
            Action::KvDelete { .. } => "kv.delete",
        }
    }
}

/// One request as the stages see it.
#[derive(Debug, Clone)]
pub struct Operation<'a> {
    pub door: Door,
    pub principal: &'a Principal,
    pub action: Action<'a>,
}

/// Why a stage refused a request.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A rate limit said no (`crate::ratelimit`). `limit` is the class's
    /// sustained rate in units per second (requests, queries or bytes).
    /// On the Postgres door this is SQLSTATE 53400 (`ratelimit::SQLSTATE_RATE_LIMITED`).
    #[error("rate limit exceeded for {class}; retry in {retry_after_ms} ms")]
    RateLimited { class: &'static str, retry_after_ms: u64, limit: u64 },
    #[error("denied by policy: {reason}")]
    Denied { reason: String },
    #[error("policy plugin failed: {0}")]
    PluginFailed(String),
    /// The statement model's rules refused a statement (`crate::sql::rules`).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A write would grow a full store (`crate::usage`); SQLSTATE 53100 on
    /// the Postgres door.
    #[error(transparent)]
    StorageFull(#[from] crate::usage::QuotaExceeded),
    /// The tenant is fenced while a restore replaces its data
    /// (`crate::backup::fence`); retry shortly. SQLSTATE 57P03.
    #[error("the tenant is fenced ({0}); retry shortly")]
    Fenced(String),
}

impl ClientError for PipelineError {
    fn kind(&self) -> ErrorKind {
        match self {
            PipelineError::RateLimited { .. } => ErrorKind::RateLimit,
            PipelineError::Denied { .. } | PipelineError::PluginFailed(_) => ErrorKind::Plugin,
            PipelineError::Refused(_) => ErrorKind::Forbidden,
            PipelineError::StorageFull(_) => ErrorKind::StorageFull,
            PipelineError::Fenced(_) => ErrorKind::Upstream,
        }
    }
    fn client_message(&self) -> String {
        match self.kind() {
            ErrorKind::Internal => "internal error; see the gateway log for the request id".into(),
            ErrorKind::Upstream if !matches!(self, PipelineError::Fenced(_)) => {
                "a data service is unavailable; retry later".into()
            }
            _ => self.to_string(),
        }
    }
}

/// A stage's answer: decided at once, or a future to wait on. Most checks
/// decide from memory (the rules, a rate-limit lease, a cached "no policy"),
/// and those cost no allocation: only a stage that must wait (Redis, a plugin
/// call) boxes a future.
pub enum Check<'a> {
    Done(Result<(), PipelineError>),
    Wait(BoxFuture<'a, Result<(), PipelineError>>),
}

impl<'a> Check<'a> {
    pub const ALLOW: Check<'static> = Check::Done(Ok(()));
}

/// A pipeline stage. `check` runs before the request is routed; `Ok(())` lets
/// it through, an error refuses it. Stages must be cheap and must not block;
/// one that decides without waiting answers [`Check::Done`].
pub trait Stage: Send + Sync {
    fn name(&self) -> &'static str;
    fn check<'a>(&'a self, op: &'a Operation<'a>) -> Check<'a>;
}

/// The ordered stages every data request passes.
#[derive(Clone, Default)]
pub struct Pipeline {
    stages: Vec<Arc<dyn Stage>>,
}

impl Pipeline {
    pub fn with_stage(mut self, stage: Arc<dyn Stage>) -> Self {
        self.stages.push(stage);
        self
    }

    /// Run every stage in order; the first refusal wins.
    pub async fn admit(&self, op: &Operation<'_>) -> Result<(), PipelineError> {
        for stage in &self.stages {
            // Most stages answer at once: no future is built for them.
            let r = match stage.check(op) {
                Check::Done(r) => r,
                Check::Wait(f) => f.await,
            };
            if let Err(e) = r {
                metrics::counter!("sluice_pipeline_refusals_total",
                    "stage" => stage.name(), "op" => op.action.name(), "tenant" => op.principal.tenant.to_string())
                .increment(1);
                return Err(e);
            }
        }
        Ok(())
    }
}
