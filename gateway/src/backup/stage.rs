//! The fence as a pipeline [`Stage`]: every operation of a fenced tenant
//! is refused (retryable) on either door; see [`super::fence`].

use super::fence::Fences;
use crate::pipeline::{Check, Operation, PipelineError, Stage};

pub struct FenceStage {
    fences: Fences,
}

impl FenceStage {
    pub fn new(fences: Fences) -> Self {
        Self { fences }
    }
}

impl Stage for FenceStage {
    fn name(&self) -> &'static str {
        "fence"
    }

    fn check<'a>(&'a self, op: &'a Operation<'a>) -> Check<'a> {
        let r = match self.fences.reason(op.principal.tenant_id) {
            Some(reason) => Err(PipelineError::Fenced(reason)),
            None => Ok(()),
        };
        Check::Done(r)
    }
}
