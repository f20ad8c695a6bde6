//! The tenant's policy plugin as a pipeline [`Stage`]: runs before every HTTP
//! data request and every Postgres-wire statement. Allow → continue; deny →
//! [`PipelineError::Denied`]; any failure (trap, deadline, OOM, bad output,
//! paused breaker, plugin not loadable) → [`PipelineError::PluginFailed`]:
//! policies fail closed.

use std::sync::Arc;

use futures::FutureExt;

use super::bindings::types::{Door as WitDoor, Origin, Request};
use super::runtime::{Active, PolicyDecision};
use super::{PluginError, PluginKind, Plugins};
use crate::pipeline::{Action, Check, Door, Operation, PipelineError, Stage};

pub struct PolicyStage {
    plugins: Plugins,
}

impl PolicyStage {
    pub fn new(plugins: Plugins) -> Self {
        Self { plugins }
    }
}

/// Where the operation came from, for the policy's `origin` argument.
pub fn origin(op: &Operation<'_>) -> Origin {
    Origin {
        door: op.door.as_str().to_owned(),
        s3_operation: match op.door {
            Door::S3 { operation } => Some(operation.to_owned()),
            _ => None,
        },
    }
}

/// The WIT request for an operation.
pub fn request(op: &Operation<'_>) -> Request {
    let p = op.principal;
    let mut r = Request {
        tenant: p.tenant.to_string(),
        key_prefix: p.key_prefix.0.clone(),
        role: p.role.as_str().to_owned(),
        door: match op.door {
            // `request.door` is as it was before the S3 door (0.2.0): S3
            // requests are `http` there, with the same `object.*`
            // operations; `origin` names the door and the S3 operation.
            Door::Http | Door::S3 { .. } => WitDoor::Http,
            Door::Pg => WitDoor::Pg,
        },
        operation: op.action.name().to_owned(),
        object_key: None,
        collection: None,
        sql: None,
        size: None,
        count: None,
    };
    match &op.action {
        Action::Sql { text, .. } => r.sql = Some((*text).to_owned()),
        Action::ObjectGet { key } | Action::ObjectHead { key } | Action::ObjectDelete { key } => {
            r.object_key = Some((*key).to_owned())
        }
        Action::ObjectPut { key, size } => {
            r.object_key = Some((*key).to_owned());
            r.size = *size;
        }
        Action::ObjectList { prefix } => r.object_key = Some((*prefix).to_owned()),
        Action::CollectionRead { name } => r.collection = Some((*name).to_owned()),
        Action::CollectionWrite { name, points, .. } => {
            r.collection = Some((*name).to_owned());
            r.count = Some(*points as u64);
        }
        Action::Search { collection, k } => {
            r.collection = Some((*collection).to_owned());
            r.count = Some(u64::from(*k));
        }
        Action::KvGet { key } | Action::KvDelete { key } => r.object_key = Some((*key).to_owned()),
        Action::KvPut { key, size } => {
            r.object_key = Some((*key).to_owned());
            r.size = Some(*size);
        }
    }
    r
}

impl Stage for PolicyStage {
    fn name(&self) -> &'static str {
        "policy"
    }

    fn check<'a>(&'a self, op: &'a Operation<'a>) -> Check<'a> {
        // Most tenants have no policy, and the cache knows it: no future.
        let cached = self.plugins.active_cached(op.principal.tenant_id, PluginKind::Policy);
        if matches!(cached, Some(None)) {
            return Check::ALLOW;
        }
        Check::Wait(self.decide(op, cached).boxed())
    }
}

impl PolicyStage {
    /// Load the tenant's policy (unless `cached` holds it) and ask it.
    async fn decide(&self, op: &Operation<'_>, cached: Option<Option<Arc<Active>>>) -> Result<(), PipelineError> {
        let p = op.principal;
        let active = match cached {
            Some(active) => active,
            None => self.plugins.active(p.tenant_id, p.tenant.as_str(), PluginKind::Policy).await.map_err(|e| {
                tracing::warn!(tenant = %p.tenant, error = %e, "load policy plugin; denying");
                PipelineError::PluginFailed(format!("policy plugin could not be loaded: {e}"))
            })?,
        };
        let Some(active) = active else { return Ok(()) };
        let statements = match &op.action {
            Action::Sql { statements, .. } => statements.iter().map(super::host::sql::statement).collect(),
            _ => Vec::new(),
        };
        match self.plugins.evaluate(&active, request(op), origin(op), statements).await {
            Ok(PolicyDecision::Allow) => Ok(()),
            Ok(PolicyDecision::Deny(reason)) => Err(PipelineError::Denied { reason }),
            // The tenant's own calls fill its share of plugin slots: its
            // request is rate limited, nobody else's.
            Err(e @ PluginError::Busy(_)) => {
                tracing::debug!(tenant = %p.tenant, error = %e, "no plugin slot; refusing as rate limited");
                Err(PipelineError::RateLimited {
                    class: "plugin_calls",
                    retry_after_ms: 100,
                    limit: u64::from(self.plugins.per_tenant_slots()),
                })
            }
            // Refused while the breaker is open: its opening was logged
            // once; a line per refused request would flood the log.
            Err(e @ PluginError::Paused { .. }) => {
                tracing::debug!(tenant = %p.tenant, error = %e, "policy paused; denying");
                Err(PipelineError::PluginFailed(e.to_string()))
            }
            Err(e) => {
                tracing::warn!(tenant = %p.tenant, plugin = %active.label(), cause = e.cause(), error = %e, "policy failed; denying");
                Err(PipelineError::PluginFailed(e.to_string()))
            }
        }
    }
}
