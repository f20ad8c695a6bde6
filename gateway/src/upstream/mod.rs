//! Adapters for the shared data services, each small and behind its own type:
//! [`postgres`] (tenant-cluster administration, identifier quoting),
//! [`redis`] (namespaced keys), [`s3`] (per-tenant buckets), [`tenant_pg`]
//! (per-tenant connection pools as the tenant's own role, each connection
//! under a [`frame_limit`] cap on server messages), [`pg_wire`] (raw
//! protocol connections and pools for the Postgres-wire door), [`budget`]
//! (the per-tenant connection budget both doors share), [`replicas`] (read
//! routing to hot standbys, lag-aware).

pub mod budget;
pub mod frame_limit;
pub mod pg_wire;
pub mod postgres;
pub mod redis;
pub mod replicas;
pub mod s3;
pub mod tenant_pg;
