//! The `api_keys` table: create, list, revoke, and look up for authentication.

use std::sync::LazyLock;

use deadpool_postgres::GenericClient;
use serde::Serialize;
use uuid::Uuid;

use super::ControlError;
use super::credentials::{GeneratedKey, generate_key};
use super::quotas::{self, KeyLimits, Quotas};
use super::tenants::Tenant;
use crate::ids::{KeyPrefix, KeyRole, TenantId};
use crate::secret::{ExposeSecret, SecretString};

/// A key as listed (never with its secret).
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub id: Uuid,
    pub prefix: KeyPrefix,
    pub role: KeyRole,
    pub label: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// A key just created: the only time the secret is available.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub info: KeyInfo,
    /// The whole API key. Shown once.
    pub key: String,
}

/// What authentication needs to know about a key, found by its prefix.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub id: Uuid,
    pub prefix: KeyPrefix,
    pub role: KeyRole,
    pub secret_sha256: Vec<u8>,
    pub revoked: bool,
    pub tenant_id: TenantId,
    pub tenant_name: String,
    pub tenant_active: bool,
    /// Why the operator suspended the tenant, when it is suspended.
    pub suspended: Option<String>,
    /// Why the tenant is fenced (a restore in progress), when it is.
    pub fenced: Option<String>,
    pub quotas: Quotas,
    /// What the tenant stores (as of this lookup).
    pub usage: crate::usage::Usage,
    /// This key's overrides of the tenant's rate limits.
    pub key_limits: KeyLimits,
    pub db: super::tenants::TenantDb,
}

const TS: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'";

/// Create a key for `tenant` (generates the secret and its verifiers).
pub async fn create(
    c: &impl GenericClient,
    tenant: &Tenant,
    role: KeyRole,
    label: &str,
) -> Result<CreatedKey, ControlError> {
    if label.chars().count() > 200 {
        return Err(ControlError::Invalid("key label is longer than 200 characters".into()));
    }
    let GeneratedKey { prefix, key, sha256, scram } = generate_key(&tenant.scram_salt, tenant.scram_iterations);
    let id = Uuid::new_v4();
    let row = c
        .query_one(
            &format!(
                "INSERT INTO api_keys (id, tenant_id, prefix, secret_sha256, scram_stored_key, scram_server_key, role, label)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 RETURNING to_char(created_at AT TIME ZONE 'UTC', {TS})"
            ),
            &[
                &id,
                &tenant.id.0,
                &prefix.0,
                &sha256.as_slice(),
                &scram.stored_key.as_slice(),
                &scram.server_key.as_slice(),
                &role.as_str(),
                &label,
            ],
        )
        .await?;
    Ok(CreatedKey {
        info: KeyInfo { id, prefix, role, label: label.to_owned(), created_at: row.get(0), revoked_at: None },
        key: expose(key),
    })
}

fn expose(s: SecretString) -> String {
    s.expose_secret().to_owned()
}

pub async fn list(c: &impl GenericClient, tenant: TenantId) -> Result<Vec<KeyInfo>, ControlError> {
    let rows = c
        .query(
            &format!(
                "SELECT id, prefix, role, label, to_char(created_at AT TIME ZONE 'UTC', {TS}),
                        to_char(revoked_at AT TIME ZONE 'UTC', {TS})
                 FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, prefix"
            ),
            &[&tenant.0],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| KeyInfo {
            id: r.get(0),
            prefix: KeyPrefix(r.get(1)),
            role: KeyRole::parse(r.get(2)).unwrap_or(KeyRole::Service),
            label: r.get(3),
            created_at: r.get(4),
            revoked_at: r.get(5),
        })
        .collect())
}

/// Revoke a key of `tenant`. A key of another tenant is "not found", exactly like
/// a key that does not exist, so tenants cannot probe each other's prefixes.
pub async fn revoke(c: &impl GenericClient, tenant: TenantId, prefix: &str) -> Result<(), ControlError> {
    let n = c
        .execute(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
             WHERE tenant_id = $1 AND prefix = $2",
            &[&tenant.0, &prefix],
        )
        .await?;
    if n == 0 { Err(ControlError::NotFound(format!("key {prefix}"))) } else { Ok(()) }
}

/// Find a key and its tenant by prefix (authentication's one query).
pub async fn lookup(c: &impl GenericClient, prefix: &KeyPrefix) -> Result<Option<KeyRecord>, ControlError> {
    // Every request of every door runs this: prepared once per connection
    // (a five-table join is planned once, and each lookup is one round trip).
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT k.id, k.prefix, k.role, k.secret_sha256, k.revoked_at IS NOT NULL,
                    t.id, t.name, t.status = 'active',
                    CASE WHEN t.status = 'suspended' THEN coalesce(t.suspended_reason, '') END,
                    t.db_name, t.db_role, {}, {}, {}, t.fenced_reason
             FROM api_keys k JOIN tenants t ON t.id = k.tenant_id JOIN quotas q ON q.tenant_id = t.id
             LEFT JOIN key_limits kl ON kl.key_id = k.id
             LEFT JOIN tenant_usage u ON u.tenant_id = t.id
             WHERE k.prefix = $1",
            quotas::COLUMNS_Q,
            quotas::COLUMNS_KL,
            crate::usage::COLUMNS_U,
        )
    });
    let stmt = c.prepare_cached(&SQL).await?;
    let row = c.query_opt(&stmt, &[&prefix.0]).await?;
    Ok(row.map(|r| KeyRecord {
        id: r.get(0),
        prefix: KeyPrefix(r.get(1)),
        role: KeyRole::parse(r.get(2)).unwrap_or(KeyRole::Service),
        secret_sha256: r.get(3),
        revoked: r.get(4),
        tenant_id: TenantId(r.get(5)),
        tenant_name: r.get(6),
        tenant_active: r.get(7),
        suspended: r.get(8),
        db: super::tenants::TenantDb { name: r.get(9), role: r.get(10) },
        quotas: quotas::from_row(&r, 11),
        key_limits: quotas::key_limits_from_row(&r, 11 + quotas::COLUMNS_Q_LEN),
        usage: crate::usage::from_row(&r, 11 + quotas::COLUMNS_Q_LEN + 4),
        fenced: r.get(r.len() - 1),
    }))
}

/// A key's SCRAM verifier, as the Postgres door checks it.
#[derive(Debug, Clone)]
pub struct ScramVerifier {
    pub id: Uuid,
    pub prefix: KeyPrefix,
    pub role: KeyRole,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
    /// The key's own rate limits, where it has any.
    pub key_limits: KeyLimits,
}

/// What an open session's key may do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// Still valid, with its tenant's quotas and its own limits as of now.
    Usable { quotas: Quotas, key_limits: KeyLimits },
    /// Revoked, deleted, or its tenant is no longer active: why.
    Unusable(&'static str),
}

/// The state of each of `ids` (sessions opened with a key check this, so
/// revocations and quota changes reach them).
pub async fn states_of(c: &impl GenericClient, ids: &[Uuid]) -> Result<Vec<(Uuid, KeyState)>, ControlError> {
    let rows = c
        .query(
            &format!(
                "SELECT k.id, k.revoked_at IS NOT NULL, t.status = 'active', t.status = 'suspended',
                        {}, {}
                 FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
                 JOIN quotas q ON q.tenant_id = k.tenant_id
                 LEFT JOIN key_limits kl ON kl.key_id = k.id
                 WHERE k.id = ANY($1)",
                quotas::COLUMNS_Q,
                quotas::COLUMNS_KL
            ),
            &[&ids],
        )
        .await?;
    let mut found = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(ids.len());
    for r in &rows {
        let id: Uuid = r.get(0);
        found.insert(id);
        let state = if r.get::<_, bool>(1) {
            KeyState::Unusable("its API key was revoked")
        } else if r.get::<_, bool>(3) {
            KeyState::Unusable("its tenant was suspended by the operator")
        } else if !r.get::<_, bool>(2) {
            KeyState::Unusable("its tenant is no longer active")
        } else {
            KeyState::Usable {
                quotas: quotas::from_row(r, 4),
                key_limits: quotas::key_limits_from_row(r, 4 + quotas::COLUMNS_Q_LEN),
            }
        };
        out.push((id, state));
    }
    out.extend(
        ids.iter()
            .filter(|id| !found.contains(*id))
            .map(|id| (*id, KeyState::Unusable("its API key no longer exists"))),
    );
    Ok(out)
}

/// What the Postgres door needs before a SCRAM proof, for a tenant name.
#[derive(Debug, Clone)]
pub struct LoginCandidate {
    pub tenant_id: TenantId,
    pub tenant_name: String,
    pub active: bool,
    /// Why it is suspended, when it is.
    pub suspended: Option<String>,
    pub scram_salt: Vec<u8>,
    pub scram_iterations: u32,
    pub quotas: Quotas,
    pub usage: crate::usage::Usage,
    pub db: super::tenants::TenantDb,
    /// The tenant's keys that are not revoked.
    pub verifiers: Vec<ScramVerifier>,
    /// Why the tenant is fenced (a restore in progress), when it is.
    pub fenced: Option<String>,
}

/// The tenant named `name` (any text: no match is `None`) with its quotas,
/// usage and key verifiers, in one query. The door runs this same query for
/// every login, valid name or not, so how long the server takes to answer
/// does not tell which tenant names exist.
pub async fn login_candidate(c: &impl GenericClient, name: &str) -> Result<Option<LoginCandidate>, ControlError> {
    // Every Postgres-door login runs this: prepared once per connection.
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT t.id, t.name, t.status = 'active',
                    CASE WHEN t.status = 'suspended' THEN coalesce(t.suspended_reason, '') END,
                    t.scram_salt, t.scram_iterations, t.db_name, t.db_role, {}, {},
                    k.id, k.prefix, k.role, k.scram_stored_key, k.scram_server_key, {}, t.fenced_reason
             FROM tenants t JOIN quotas q ON q.tenant_id = t.id
             LEFT JOIN tenant_usage u ON u.tenant_id = t.id
             LEFT JOIN api_keys k ON k.tenant_id = t.id AND k.revoked_at IS NULL
             LEFT JOIN key_limits kl ON kl.key_id = k.id
             WHERE t.name = $1",
            quotas::COLUMNS_Q,
            crate::usage::COLUMNS_U,
            quotas::COLUMNS_KL,
        )
    });
    let stmt = c.prepare_cached(&SQL).await?;
    let rows = c.query(&stmt, &[&name]).await?;
    let Some(first) = rows.first() else { return Ok(None) };
    let q_at = 8;
    let u_at = q_at + quotas::COLUMNS_Q_LEN;
    let k_at = u_at + 7;
    let iterations: i32 = first.get(5);
    let verifiers = rows
        .iter()
        .filter_map(|r| {
            let id: Option<Uuid> = r.get(k_at);
            Some(ScramVerifier {
                id: id?,
                prefix: KeyPrefix(r.get(k_at + 1)),
                role: KeyRole::parse(r.get(k_at + 2)).unwrap_or(KeyRole::Service),
                stored_key: r.get(k_at + 3),
                server_key: r.get(k_at + 4),
                key_limits: quotas::key_limits_from_row(r, k_at + 5),
            })
        })
        .collect();
    Ok(Some(LoginCandidate {
        tenant_id: TenantId(first.get(0)),
        tenant_name: first.get(1),
        active: first.get(2),
        suspended: first.get(3),
        scram_salt: first.get(4),
        scram_iterations: u32::try_from(iterations).unwrap_or(4096),
        quotas: quotas::from_row(first, q_at),
        usage: crate::usage::from_row(first, u_at),
        db: super::tenants::TenantDb { name: first.get(6), role: first.get(7) },
        verifiers,
        fenced: first.get(first.len() - 1),
    }))
}
