//! Vector collections on pgvector.
//!
//! A collection's definition (dimension, metric, HNSW parameters, JSON Schema
//! for point metadata, a version bumped by every write) lives in the control
//! plane ([`collections`]); its points live in the tenant's own database, in
//! table `sluice."c_<name>"` with an HNSW index for the metric and a GIN index on
//! metadata ([`points`]). [`filter`] compiles metadata filters to parameterized
//! SQL; [`search`] runs k-NN with pgvector's iterative index scan so a filtered
//! search still returns k results whenever k points match.

pub mod collections;
pub mod filter;
pub mod points;
pub mod search;

use crate::error::{ClientError, ErrorKind};

/// Errors of the vector API, each naming what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    #[error("{0}")]
    Invalid(String),
    #[error("collection {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("point {index}: {problem}")]
    BadPoint { index: usize, pointer: Option<String>, problem: String },
    #[error(transparent)]
    Filter(#[from] filter::FilterError),
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error(transparent)]
    Pool(#[from] crate::upstream::tenant_pg::TenantPoolError),
    #[error("tenant database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

impl ClientError for VectorError {
    fn kind(&self) -> ErrorKind {
        match self {
            VectorError::Invalid(_) | VectorError::BadPoint { .. } | VectorError::Filter(_) => ErrorKind::User,
            VectorError::NotFound(_) => ErrorKind::NotFound,
            VectorError::Conflict(_) => ErrorKind::Conflict,
            VectorError::Control(e) => e.kind(),
            VectorError::Pool(e) => e.kind(),
            VectorError::Db(e) => match e.code() {
                Some(c) => crate::sql::kind_for_sqlstate(c.code()),
                None => ErrorKind::Upstream,
            },
        }
    }
}
