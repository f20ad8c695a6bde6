//! S3 access keys (`s3_credentials`): create, list, revoke, and look up for
//! the S3 door's SigV4 check.
//!
//! Only the access key id is stored. The secret is derived from the master key
//! and the id ([`credentials::s3_secret`]), so it is shown once at creation and
//! every gateway instance can recompute it to verify a signature. Revoking sets
//! `revoked_at`; the door looks the row up on every request, so it takes effect
//! at once.

use std::sync::LazyLock;

use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::json;

use super::ControlError;
use super::audit::{self, Actor, AuditEvent};
use super::credentials;
use super::quotas::{self, Quotas};
use super::tenants;
use crate::ids::{TenantId, TenantName};
use crate::secret::ExposeSecret;
use crate::services::Services;

const TS: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'";
/// Longest key prefix a credential may be limited to.
pub const MAX_PREFIX_BYTES: usize = 1024;

/// A credential as listed (never with its secret).
#[derive(Debug, Clone, Serialize)]
pub struct S3CredentialInfo {
    pub access_key_id: String,
    pub read_only: bool,
    pub prefix: String,
    pub label: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// A credential just created: the only time its secret is shown.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedS3Credential {
    #[serde(flatten)]
    pub info: S3CredentialInfo,
    pub secret_access_key: String,
    /// Where the S3 door listens (`http://host:port`; empty when it is off).
    pub endpoint: String,
    /// The bucket name S3 clients use: the tenant's name.
    pub bucket: String,
}

/// What a new credential may do.
#[derive(Debug, Clone, Default)]
pub struct NewS3Credential {
    pub read_only: bool,
    pub prefix: String,
    pub label: String,
}

/// What the S3 door needs to know about an access key and its tenant.
#[derive(Debug, Clone)]
pub struct S3CredentialRecord {
    pub access_key_id: String,
    pub read_only: bool,
    pub prefix: String,
    pub revoked: bool,
    pub tenant_id: TenantId,
    pub tenant_name: String,
    pub tenant_active: bool,
    pub suspended: Option<String>,
    pub fenced: Option<String>,
    pub quotas: Quotas,
    pub usage: crate::usage::Usage,
    pub db: tenants::TenantDb,
}

fn validate(new: &NewS3Credential) -> Result<(), ControlError> {
    if new.label.chars().count() > 200 {
        return Err(ControlError::Invalid("label is longer than 200 characters".into()));
    }
    if new.prefix.len() > MAX_PREFIX_BYTES || new.prefix.chars().any(char::is_control) {
        return Err(ControlError::Invalid(format!(
            "prefix must be at most {MAX_PREFIX_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

/// The S3 door's endpoint as clients reach it (empty when the door is off).
pub fn endpoint(svc: &Services) -> String {
    match svc.config.server.s3_addr.as_str() {
        "" => String::new(),
        addr => format!("http://{addr}"),
    }
}

/// Create a credential for `tenant` and audit it, in one transaction.
pub async fn create_audited(
    svc: &Services,
    tenant: &TenantName,
    new: &NewS3Credential,
    actor: &Actor,
    request_id: Option<&str>,
) -> Result<CreatedS3Credential, ControlError> {
    validate(new)?;
    let mut c = svc.control.client().await?;
    let tx = c.transaction().await?;
    let t = tenants::get_by_name(&tx, tenant).await?;
    let id = credentials::new_s3_access_key_id();
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO s3_credentials (access_key_id, tenant_id, read_only, prefix, label)
                 VALUES ($1, $2, $3, $4, $5) RETURNING to_char(created_at AT TIME ZONE 'UTC', {TS})"
            ),
            &[&id, &t.id.0, &new.read_only, &new.prefix, &new.label],
        )
        .await?;
    let details = json!({ "read_only": new.read_only, "prefix": new.prefix, "label": new.label });
    record(&tx, &t, actor, "s3_credential.create", &id, details, request_id).await?;
    tx.commit().await?;
    let secret = credentials::s3_secret(&svc.config.auth.master_key, &id);
    Ok(CreatedS3Credential {
        info: S3CredentialInfo {
            access_key_id: id,
            read_only: new.read_only,
            prefix: new.prefix.clone(),
            label: new.label.clone(),
            created_at: row.get(0),
            revoked_at: None,
        },
        secret_access_key: secret.expose_secret().to_owned(),
        endpoint: endpoint(svc),
        bucket: t.name.to_string(),
    })
}

/// Audit a successful action on one of `t`'s credentials.
async fn record(
    c: &impl GenericClient,
    t: &tenants::Tenant,
    actor: &Actor,
    action: &str,
    access_key_id: &str,
    details: serde_json::Value,
    request_id: Option<&str>,
) -> Result<(), ControlError> {
    let event = AuditEvent {
        tenant_id: Some(t.id),
        tenant_name: Some(t.name.as_str()),
        actor,
        action,
        target: Some(access_key_id),
        ok: true,
        details,
        request_id,
    };
    audit::record(c, &event).await
}

/// The credentials of `tenant`, revoked ones included.
pub async fn list(c: &impl GenericClient, tenant: TenantId) -> Result<Vec<S3CredentialInfo>, ControlError> {
    let rows = c
        .query(
            &format!(
                "SELECT access_key_id, read_only, prefix, label, to_char(created_at AT TIME ZONE 'UTC', {TS}),
                        to_char(revoked_at AT TIME ZONE 'UTC', {TS})
                 FROM s3_credentials WHERE tenant_id = $1 ORDER BY created_at, access_key_id"
            ),
            &[&tenant.0],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| S3CredentialInfo {
            access_key_id: r.get(0),
            read_only: r.get(1),
            prefix: r.get(2),
            label: r.get(3),
            created_at: r.get(4),
            revoked_at: r.get(5),
        })
        .collect())
}

/// Revoke a credential of `tenant` and audit it. Another tenant's access key
/// id is "not found", like one that does not exist.
pub async fn revoke_audited(
    svc: &Services,
    tenant: &TenantName,
    access_key_id: &str,
    actor: &Actor,
    request_id: Option<&str>,
) -> Result<(), ControlError> {
    let mut c = svc.control.client().await?;
    let tx = c.transaction().await?;
    let t = tenants::get_by_name(&tx, tenant).await?;
    let n = tx
        .execute(
            "UPDATE s3_credentials SET revoked_at = coalesce(revoked_at, now())
             WHERE tenant_id = $1 AND access_key_id = $2",
            &[&t.id.0, &access_key_id],
        )
        .await?;
    if n == 0 {
        return Err(ControlError::NotFound(format!("S3 credential {access_key_id}")));
    }
    record(&tx, &t, actor, "s3_credential.revoke", access_key_id, json!({}), request_id).await?;
    tx.commit().await?;
    Ok(())
}

/// Find an access key and its tenant (the S3 door's one query per request).
pub async fn lookup(c: &impl GenericClient, access_key_id: &str) -> Result<Option<S3CredentialRecord>, ControlError> {
    // Every S3-door request runs this: prepared once per connection.
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT s.access_key_id, s.read_only, s.prefix, s.revoked_at IS NOT NULL,
                    t.id, t.name, t.status = 'active',
                    CASE WHEN t.status = 'suspended' THEN coalesce(t.suspended_reason, '') END,
                    t.fenced_reason, t.db_name, t.db_role, {}, {}
             FROM s3_credentials s JOIN tenants t ON t.id = s.tenant_id JOIN quotas q ON q.tenant_id = t.id
             LEFT JOIN tenant_usage u ON u.tenant_id = t.id
             WHERE s.access_key_id = $1",
            quotas::COLUMNS_Q,
            crate::usage::COLUMNS_U,
        )
    });
    let stmt = c.prepare_cached(&SQL).await?;
    let row = c.query_opt(&stmt, &[&access_key_id]).await?;
    Ok(row.map(|r| S3CredentialRecord {
        access_key_id: r.get(0),
        read_only: r.get(1),
        prefix: r.get(2),
        revoked: r.get(3),
        tenant_id: TenantId(r.get(4)),
        tenant_name: r.get(5),
        tenant_active: r.get(6),
        suspended: r.get(7),
        fenced: r.get(8),
        db: tenants::TenantDb { name: r.get(9), role: r.get(10) },
        quotas: quotas::from_row(&r, 11),
        usage: crate::usage::from_row(&r, 11 + quotas::COLUMNS_Q_LEN),
    }))
}
