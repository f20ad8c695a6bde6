//! Storage quotas as a pipeline [`Stage`]: SQL that may grow a full database
//! and point upserts past `max_vector_points` (or into a full database) are
//! refused on either door before they reach the upstream. Object and
//! key/value writes are checked where their size is known (the object
//! handler, the Redis write script).

use super::book::UsageBook;
use super::{Resource, check};
use crate::pipeline::{Action, Check, Operation, PipelineError, Stage};

pub struct StorageQuotaStage {
    book: UsageBook,
}

impl StorageQuotaStage {
    pub fn new(book: UsageBook) -> Self {
        Self { book }
    }

    fn decide(&self, op: &Operation<'_>) -> Result<(), PipelineError> {
        let p = op.principal;
        match &op.action {
            Action::Sql { statements, .. } if statements.iter().any(|s| s.may_grow_storage()) => {
                match self.book.db_full(p.tenant_id) {
                    Some(full) => Err(full.into()),
                    None => Ok(()),
                }
            }
            Action::CollectionWrite { points, removes: false, .. } if *points > 0 => {
                if let Some(full) = self.book.db_full(p.tenant_id) {
                    return Err(full.into());
                }
                let adding = i64::try_from(*points).unwrap_or(i64::MAX);
                check(&p.quotas, &p.usage, Resource::VectorPoints, adding).map_err(PipelineError::from)
            }
            _ => Ok(()),
        }
    }
}

impl Stage for StorageQuotaStage {
    fn name(&self) -> &'static str {
        "storage-quota"
    }

    fn check<'a>(&'a self, op: &'a Operation<'a>) -> Check<'a> {
        Check::Done(self.decide(op))
    }
}
