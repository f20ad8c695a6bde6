//! The shared-cluster rules as a pipeline [`Stage`]: the first stage every
//! SQL operation of either door passes, so a refused statement costs no rate
//! limit units and never reaches the policy plugin or the upstream. On the
//! Postgres door it also keeps resource settings within their ceilings
//! (`/v1/sql` checks its stricter rules itself).

use super::rules;
use crate::pipeline::{Action, Check, Door, Operation, PipelineError, Stage};

pub struct SqlRulesStage {
    ceilings: rules::Ceilings,
}

impl SqlRulesStage {
    /// The stage with the operator's memory ceilings from `[postgres]`.
    pub fn new(postgres: &crate::config::PostgresConfig) -> Self {
        Self { ceilings: rules::Ceilings::new(postgres, 0) }
    }
}

impl Stage for SqlRulesStage {
    fn name(&self) -> &'static str {
        "sql-rules"
    }

    fn check<'a>(&'a self, op: &'a Operation<'a>) -> Check<'a> {
        let r = match &op.action {
            Action::Sql { statements, .. } => {
                let ceilings = self.ceilings.with_statement_timeout(op.principal.quotas.statement_timeout_ms);
                statements
                    .iter()
                    .try_for_each(|st| {
                        rules::shared_cluster(st)?;
                        if op.door == Door::Pg { rules::pg_statement(st, &ceilings) } else { Ok(()) }
                    })
                    .map_err(PipelineError::from)
            }
            _ => Ok(()),
        };
        Check::Done(r)
    }
}
