//! The shared-cluster rules as a pipeline [`Stage`]: the first stage every
//! SQL operation of either door passes, so a refused statement costs no rate
//! limit units and never reaches the policy plugin or the upstream. On the
//! Postgres door it also keeps time limits within the tenant's quota
//! (`/v1/sql` checks its stricter rules itself).

use futures::FutureExt;
use futures::future::BoxFuture;

use super::rules;
use crate::pipeline::{Action, Door, Operation, PipelineError, Stage};

pub struct SqlRulesStage;

impl Stage for SqlRulesStage {
    fn name(&self) -> &'static str {
        "sql-rules"
    }

    fn check<'a>(&'a self, op: &'a Operation<'a>) -> BoxFuture<'a, Result<(), PipelineError>> {
        let r = match &op.action {
            Action::Sql { statements, .. } => {
                let quota = u64::try_from(op.principal.quotas.statement_timeout_ms).unwrap_or(0);
                statements
                    .iter()
                    .try_for_each(|st| {
                        rules::shared_cluster(st)?;
                        if op.door == Door::Pg { rules::pg_statement(st, quota) } else { Ok(()) }
                    })
                    .map_err(PipelineError::from)
            }
            _ => Ok(()),
        };
        async move { r }.boxed()
    }
}
