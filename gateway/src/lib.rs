//! Sluice: a multi-tenant storage gateway.
//!
//! One stateless process stands between many tenants and shared data services
//! (Postgres + pgvector, Redis, an S3-compatible object store). The crate is split
//! by concern; `docs/architecture.md` gives each module a paragraph.
//!
//! Request flow (both doors): accept → [`pipeline::auth`] → tenant → rate limit →
//! policy → route to [`upstream`] → respond → metrics + audit.

pub mod backup;
pub mod cache;
pub mod cli;
pub mod config;
pub mod control;
pub mod error;
pub mod frontend;
pub mod ids;
pub mod memory;
pub mod objects;
pub mod pipeline;
pub mod plugins;
pub mod ratelimit;
pub mod retention;
pub mod secret;
pub mod server;
pub mod services;
pub mod sql;
pub mod telemetry;
pub mod upstream;
pub mod usage;
pub mod vectors;
