//! Adapters for the shared data services, each small and behind its own type:
//! [`postgres`] (tenant-cluster administration, identifier quoting),
//! [`redis`] (namespaced keys), [`s3`] (per-tenant buckets).

pub mod postgres;
pub mod redis;
pub mod s3;
