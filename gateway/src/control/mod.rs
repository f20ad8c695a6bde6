//! The control plane: the database that knows every tenant, its credentials,
//! quotas, plugins, collections, retention runs and the audit log.
//!
//! - [`migrate`]: reversible migrations for this database and the tenant template.
//! - [`credentials`]: API keys, SCRAM verifiers, derived role passwords.
//! - [`tenants`], [`keys`], [`quotas`], [`audit`]: typed access to the tables.
//! - [`provision`]: creating and deleting a tenant across Postgres, S3 and Redis.
//! - [`operator`]: audited changes while a tenant runs (quotas, key limits, suspension).
//! - [`roles`]: a tenant role's connection limit and resource-setting defaults.

pub mod audit;
pub mod credentials;
pub mod keys;
pub mod migrate;
pub mod operator;
pub mod provision;
pub mod quotas;
pub mod roles;
pub mod s3_credentials;
pub mod tenants;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use crate::config::ControlConfig;
use crate::error::{ClientError, ErrorKind};
use crate::secret::ExposeSecret;

/// Errors of control-plane access.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control-plane database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("control-plane pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
}

impl ClientError for ControlError {
    fn kind(&self) -> ErrorKind {
        match self {
            ControlError::Db(e) if e.as_db_error().is_none() => ErrorKind::Upstream,
            ControlError::Db(_) => ErrorKind::Internal,
            ControlError::Pool(_) => ErrorKind::Upstream,
            ControlError::NotFound(_) => ErrorKind::NotFound,
            ControlError::Conflict(_) => ErrorKind::Conflict,
            ControlError::Invalid(_) => ErrorKind::User,
        }
    }
}

/// A pooled connection to the control-plane database.
#[derive(Clone)]
pub struct ControlPlane {
    pool: Pool,
}

impl ControlPlane {
    /// Build the pool. Connections are opened lazily, so this succeeds while the
    /// database is down; `/readyz` says so.
    pub fn new(cfg: &ControlConfig) -> Result<Self, ControlError> {
        let mut pg: tokio_postgres::Config = cfg
            .database_url
            .expose_secret()
            .parse()
            .map_err(|_| ControlError::Invalid("control.database_url is not a Postgres URL".into()))?;
        pg.connect_timeout(Duration::from_millis(cfg.connect_timeout_ms));
        pg.application_name("sluice-control");
        let mgr =
            Manager::from_config(pg, tokio_postgres::NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(mgr)
            .max_size(cfg.pool_size as usize)
            .wait_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)))
            .create_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| ControlError::Invalid(format!("control pool: {e}")))?;
        Ok(Self { pool })
    }

    pub async fn client(&self) -> Result<deadpool_postgres::Object, ControlError> {
        Ok(self.pool.get().await?)
    }

    /// A cheap round trip, for readiness.
    pub async fn ping(&self) -> Result<(), ControlError> {
        self.client().await?.simple_query("SELECT 1").await?;
        Ok(())
    }
}
