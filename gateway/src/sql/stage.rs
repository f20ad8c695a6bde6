//! The shared-cluster rules as a pipeline [`Stage`]: the first stage every
//! SQL operation of either door passes, so a refused statement costs no rate
//! limit units and never reaches the policy plugin or the upstream.

use futures::FutureExt;
use futures::future::BoxFuture;

use super::rules;
use crate::pipeline::{Action, Operation, PipelineError, Stage};

pub struct SqlRulesStage;

impl Stage for SqlRulesStage {
    fn name(&self) -> &'static str {
        "sql-rules"
    }

    fn check<'a>(&'a self, op: &'a Operation<'a>) -> BoxFuture<'a, Result<(), PipelineError>> {
        let r = match &op.action {
            Action::Sql { statements, .. } => {
                statements.iter().try_for_each(rules::shared_cluster).map_err(PipelineError::from)
            }
            _ => Ok(()),
        };
        async move { r }.boxed()
    }
}
