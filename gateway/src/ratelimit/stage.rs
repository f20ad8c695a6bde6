//! The rate-limit [`Stage`] of the shared pipeline: which operations cost what.
//!
//! Runs first among the stages (before the policy plugin). `Door::Pg` SQL
//! statements cost one `query` unit; object uploads cost their size in
//! `bytes_in` (an unknown size checks only that the bucket is not in debt;
//! the object door then calls [`RateLimiter::charge`]); object downloads check
//! that `bytes_out` is not in debt (the door charges the bytes sent). HTTP
//! requests are charged once each by the HTTP door's `Authed` extractor, not
//! here, because one HTTP request may pass the pipeline several times (a SQL
//! batch admits each statement).

use super::{Class, RateLimiter};
use crate::pipeline::{Action, Check, Door, Operation, Stage};

pub struct RateLimitStage {
    limiter: RateLimiter,
}

impl RateLimitStage {
    pub fn new(limiter: RateLimiter) -> Self {
        Self { limiter }
    }
}

/// The class and cost of an operation, if it is metered here.
pub fn cost_of(op: &Operation<'_>) -> Option<(Class, u64)> {
    match (op.door, &op.action) {
        (Door::Pg, Action::Sql { .. }) => Some((Class::Query, 1)),
        (_, Action::ObjectPut { size, .. }) => Some((Class::BytesIn, size.unwrap_or(0))),
        (_, Action::ObjectGet { .. }) => Some((Class::BytesOut, 0)),
        _ => None,
    }
}

impl Stage for RateLimitStage {
    fn name(&self) -> &'static str {
        "ratelimit"
    }

    fn check<'a>(&'a self, op: &'a Operation<'a>) -> Check<'a> {
        let Some((class, cost)) = cost_of(op) else { return Check::ALLOW };
        match self.limiter.admit_now(op.principal, class, cost) {
            Some(r) => Check::Done(r.map(drop)),
            None => Check::Wait(Box::pin(async move { self.limiter.admit(op.principal, class, cost).await.map(drop) })),
        }
    }
}
