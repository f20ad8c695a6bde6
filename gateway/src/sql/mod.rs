//! SQL: understanding it and running it.
//!
//! - [`parser`] parses every statement text once with Postgres's own grammar
//!   (libpg_query), with a bounded per-tenant cache, into the [`statement`]
//!   model ([`analyze`] builds it from the parse tree);
//! - [`rules`] holds what no tenant may run on a shared cluster, and what a
//!   `/v1/sql` request may not do inside the gateway's transaction ([`stage`]
//!   runs the shared-cluster rules in the pipeline);
//! - [`exec`] runs `/v1/sql` requests ([`params`] binds JSON parameters,
//!   [`values`] renders results).

pub mod analyze;
pub mod builtins;
pub mod exec;
pub mod params;
pub mod parser;
pub mod rewrite;
pub mod rules;
pub mod shape;
pub mod stage;
pub mod statement;
pub mod values;

pub use exec::*;
pub use parser::{Parsed, SqlParser, SyntaxError};
pub use statement::{Kind, SessionEffect, Statement};

#[cfg(test)]
mod tests;
