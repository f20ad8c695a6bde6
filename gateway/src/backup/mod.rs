//! Backups and restores of one tenant as one unit: its database (a
//! `pg_dump` from one snapshot), its bucket's objects as of that moment
//! (see [`hold`]), its gateway records, and a manifest — compressed and
//! encrypted part by part, stored in an S3-compatible target with object
//! content deduplicated across the tenant's backups.
//!
//! - [`create`]: take a backup; [`restore`]: check every part, then restore
//!   in place (the tenant fenced meanwhile) or as a new tenant;
//!   [`verify`]: restore into a scratch database and compare;
//!   [`catalog`]: the control-plane rows, expiry and orphan collection;
//!   [`schedule`]: the multi-instance scheduler; [`purge`]: backups of
//!   deleted tenants (expiry by age, then erasure).
//! - [`crypt`] (zstd + age), [`target`] (the bucket), [`manifest`],
//!   [`dump`] (pg_dump / pg_restore), [`records`], [`hold`] (object
//!   copy-before-write), [`fence`] (both doors refuse a tenant being restored).
//!
//! Both doors and the CLI call these functions; none of them is HTTP- or
//! CLI-specific.

pub mod catalog;
pub mod create;
pub mod crypt;
pub mod dump;
pub mod fence;
pub mod hold;
pub mod manifest;
pub mod purge;
pub mod records;
pub mod restore;
pub mod schedule;
pub mod stage;
pub mod target;
pub mod verify;

use std::sync::Arc;

use crate::config::Config;
use crate::error::{ClientError, ErrorKind};
use crate::upstream::s3::S3Error;

pub use catalog::BackupRow;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backups are not configured: {0}")]
    Config(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A part or content blob fails its checks (named in the message).
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Missing(String),
    #[error("encryption: {0}")]
    Crypto(String),
    #[error("backup target: {0}")]
    Target(#[from] S3Error),
    #[error("{what}: {source}")]
    Pg { what: String, source: tokio_postgres::Error },
    #[error("{0}")]
    Tool(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error(transparent)]
    Provision(#[from] crate::control::provision::ProvisionError),
    #[error(transparent)]
    Hold(#[from] hold::HoldError),
}

impl BackupError {
    pub fn pg(what: &str, source: tokio_postgres::Error) -> Self {
        BackupError::Pg { what: what.to_owned(), source }
    }
    pub fn admin(e: crate::upstream::postgres::PgAdminError) -> Self {
        BackupError::Tool(e.to_string())
    }
}

impl ClientError for BackupError {
    fn kind(&self) -> ErrorKind {
        match self {
            BackupError::Config(_) | BackupError::Conflict(_) => ErrorKind::Conflict,
            BackupError::Invalid(_) => ErrorKind::User,
            BackupError::NotFound(_) => ErrorKind::NotFound,
            BackupError::Corrupt(_) | BackupError::Missing(_) | BackupError::Crypto(_) => ErrorKind::Conflict,
            BackupError::Control(e) => e.kind(),
            BackupError::Provision(e) => e.kind(),
            BackupError::Hold(hold::HoldError::Busy) => ErrorKind::Upstream,
            BackupError::Target(_) | BackupError::Pg { .. } | BackupError::Hold(_) => ErrorKind::Upstream,
            BackupError::Tool(_) | BackupError::Io(_) => ErrorKind::Internal,
        }
    }
    fn client_message(&self) -> String {
        match self {
            BackupError::Provision(e) => e.client_message(),
            BackupError::Control(e) => e.client_message(),
            BackupError::Target(_) => "the backup target is unavailable; retry later".into(),
            BackupError::Pg { what, .. } => format!("{what}: the database failed; see the gateway log"),
            BackupError::Tool(_) | BackupError::Io(_) => {
                "the backup failed; see the gateway log for the request id".into()
            }
            other => other.to_string(),
        }
    }
}

/// Everything a backup needs besides [`crate::services::Services`].
#[derive(Clone)]
pub struct Backups {
    pub target: target::Target,
    pub keyring: Arc<crypt::Keyring>,
    pub tools: dump::Tools,
}

impl Backups {
    /// `Ok(None)` when no backup target is configured.
    pub fn from_config(cfg: &Config) -> Result<Option<Self>, BackupError> {
        let Some(target) = target::Target::from_config(&cfg.backup) else { return Ok(None) };
        Ok(Some(Self {
            target,
            keyring: Arc::new(crypt::Keyring::from_config(&cfg.backup)?),
            tools: dump::Tools::from_config(cfg)?,
        }))
    }
}

/// The configured backups, or a clear error when there are none.
pub fn require(svc: &crate::services::Services) -> Result<&Backups, BackupError> {
    svc.backups.as_deref().ok_or_else(|| {
        BackupError::Config("set [backup] endpoint, bucket, credentials and operator_key in the config".into())
    })
}

/// Progress of a long run, for bars and logs.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A phase begins; `total_bytes` when known.
    Phase { name: &'static str, total_bytes: Option<u64> },
    /// Bytes done in the current phase.
    Bytes(u64),
}

/// A progress callback.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Send + Sync);

/// A progress callback that ignores everything.
pub fn no_progress(_: Progress) {}
