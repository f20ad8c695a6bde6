//! Authentication: API key → [`Principal`] (the key, its role and its tenant).
//!
//! One indexed query by the key's public prefix, then a constant-time comparison
//! of SHA-256 digests. Unknown prefixes still pay a comparison so timing does not
//! tell "no such key" from "wrong secret". Revocation is reported only to a
//! caller who presented the right secret.

use uuid::Uuid;

use crate::control::credentials::{parse_key, sha256};
use crate::control::quotas::{KeyLimits, Quotas};
use crate::control::{ControlError, ControlPlane, keys};
use crate::error::{ClientError, ErrorKind};
use crate::ids::{KeyPrefix, KeyRole, TenantId, TenantName};
use crate::secret::ct_eq;
use crate::usage::Usage;

/// Who is calling, once authenticated.
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant_id: TenantId,
    pub tenant: TenantName,
    pub key_id: Uuid,
    pub key_prefix: KeyPrefix,
    pub role: KeyRole,
    /// The tenant's quotas as of this request.
    pub quotas: Quotas,
    /// The key's own rate limits, where it has any (as of this request).
    pub key_limits: KeyLimits,
    /// What the tenant stores, as of this request (storage quotas).
    pub usage: Usage,
    /// The tenant's database and role.
    pub db: crate::control::tenants::TenantDb,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key: send `Authorization: Bearer <key>`")]
    Missing,
    #[error("malformed API key: expected slk_<prefix>_<secret>")]
    Malformed,
    #[error("unknown API key")]
    Unknown,
    #[error("API key has been revoked")]
    Revoked,
    #[error("tenant is not active")]
    TenantInactive,
    #[error("tenant is suspended by the operator{}", if .0.is_empty() { String::new() } else { format!(": {}", .0) })]
    Suspended(String),
    #[error("this needs an admin key")]
    NotAdmin,
    /// A restore is replacing the tenant's data; retry shortly.
    #[error("the tenant is fenced ({0}); retry shortly")]
    Fenced(String),
    #[error(transparent)]
    Control(#[from] ControlError),
}

impl ClientError for AuthError {
    fn kind(&self) -> ErrorKind {
        match self {
            AuthError::NotAdmin | AuthError::Suspended(_) => ErrorKind::Forbidden,
            AuthError::Control(e) => e.kind(),
            AuthError::Fenced(_) => ErrorKind::Upstream,
            _ => ErrorKind::Auth,
        }
    }
    fn client_message(&self) -> String {
        match self {
            AuthError::Control(e) => e.client_message(),
            _ => self.to_string(),
        }
    }
}

/// Refuse a revoked credential or a tenant that may not be served (suspended,
/// not active, fenced), in that order; else the tenant's name.
fn usable(
    revoked: bool,
    suspended: Option<String>,
    tenant_active: bool,
    fenced: Option<String>,
    tenant_name: &str,
) -> Result<TenantName, AuthError> {
    if revoked {
        return Err(AuthError::Revoked);
    }
    if let Some(reason) = suspended {
        return Err(AuthError::Suspended(reason));
    }
    if !tenant_active {
        return Err(AuthError::TenantInactive);
    }
    if let Some(reason) = fenced {
        return Err(AuthError::Fenced(reason));
    }
    Ok(TenantName::parse(tenant_name).map_err(|e| ControlError::Invalid(e.to_string()))?)
}

/// Check a presented API key.
pub async fn authenticate_key(control: &ControlPlane, presented: &str) -> Result<Principal, AuthError> {
    let prefix = parse_key(presented).map_err(|_| AuthError::Malformed)?;
    let record = keys::lookup(&control.client().await?, &prefix).await?;
    let digest = sha256(presented.as_bytes());
    let Some(record) = record else {
        // Same work as a real comparison.
        let _ = ct_eq(&digest, &[0u8; 32]);
        return Err(AuthError::Unknown);
    };
    if !ct_eq(&digest, &record.secret_sha256) {
        return Err(AuthError::Unknown);
    }
    let tenant = usable(record.revoked, record.suspended, record.tenant_active, record.fenced, &record.tenant_name)?;
    Ok(Principal {
        tenant_id: record.tenant_id,
        tenant,
        key_id: record.id,
        key_prefix: record.prefix,
        role: record.role,
        quotas: record.quotas,
        key_limits: record.key_limits,
        usage: record.usage,
        db: record.db,
    })
}

/// What an S3 access key may reach beyond its tenant's bucket.
#[derive(Debug, Clone)]
pub struct S3Grant {
    pub access_key_id: String,
    /// Reads and lists only.
    pub read_only: bool,
    /// Keys outside this prefix are refused ('' = the whole bucket).
    pub prefix: String,
}

/// Turn an S3 access key (its SigV4 signature already verified) into a
/// [`Principal`] like an API key's, so rate limits, quotas and the policy
/// plugin see the S3 door's requests as the tenant's. The key has no
/// per-key limits: it shares the tenant's. Its "prefix" in logs, metrics and
/// plugin requests is its access key id.
pub async fn authenticate_s3(control: &ControlPlane, access_key_id: &str) -> Result<(Principal, S3Grant), AuthError> {
    let record = crate::control::s3_credentials::lookup(&control.client().await?, access_key_id)
        .await?
        .ok_or(AuthError::Unknown)?;
    s3_principal(record)
}

/// The principal and grant of an S3 access key's record, as looked up.
pub fn s3_principal(
    record: crate::control::s3_credentials::S3CredentialRecord,
) -> Result<(Principal, S3Grant), AuthError> {
    let tenant = usable(record.revoked, record.suspended, record.tenant_active, record.fenced, &record.tenant_name)?;
    let principal = Principal {
        tenant_id: record.tenant_id,
        tenant,
        key_id: Uuid::nil(),
        key_prefix: KeyPrefix(record.access_key_id.clone()),
        role: KeyRole::Service,
        quotas: record.quotas,
        key_limits: KeyLimits::default(),
        usage: record.usage,
        db: record.db,
    };
    let grant = S3Grant { access_key_id: record.access_key_id, read_only: record.read_only, prefix: record.prefix };
    Ok((principal, grant))
}

impl Principal {
    pub fn require_admin(&self) -> Result<(), AuthError> {
        if self.role == KeyRole::Admin { Ok(()) } else { Err(AuthError::NotAdmin) }
    }
}
