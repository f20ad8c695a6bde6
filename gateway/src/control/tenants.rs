//! The `tenants` table.

use deadpool_postgres::GenericClient;
use serde::Serialize;
use tokio_postgres::Row;

use super::ControlError;
use crate::ids::{TenantId, TenantName};

/// Lifecycle state of a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    Provisioning,
    Active,
    /// Stopped by the operator: both doors refuse it, its data stays.
    Suspended,
    Deleting,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Provisioning => "provisioning",
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
            TenantStatus::Deleting => "deleting",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "active" => TenantStatus::Active,
            "suspended" => TenantStatus::Suspended,
            "deleting" => TenantStatus::Deleting,
            _ => TenantStatus::Provisioning,
        }
    }
}

/// Where a tenant's relational data lives: its database and the role the
/// gateway reaches it as (from the tenant's row, so tenants created before
/// names became opaque keep working until renamed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantDb {
    pub name: String,
    pub role: String,
}

/// One tenant and where its data lives.
#[derive(Debug, Clone, Serialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: TenantName,
    pub status: TenantStatus,
    pub db_name: String,
    pub db_role: String,
    pub bucket: String,
    #[serde(skip)]
    pub scram_salt: Vec<u8>,
    #[serde(skip)]
    pub scram_iterations: u32,
    pub created_at: String,
    /// Why it is suspended (only while it is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspended_reason: Option<String>,
}

const COLUMNS: &str = "id, name, status, db_name, db_role, bucket, scram_salt, scram_iterations, \
     to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
     CASE WHEN status = 'suspended' THEN coalesce(suspended_reason, '') END";

fn from_row(r: &Row) -> Result<Tenant, ControlError> {
    let name: String = r.get(1);
    let iterations: i32 = r.get(7);
    Ok(Tenant {
        id: TenantId(r.get(0)),
        name: TenantName::parse(&name).map_err(|e| ControlError::Invalid(e.to_string()))?,
        status: TenantStatus::parse(r.get(2)),
        db_name: r.get(3),
        db_role: r.get(4),
        bucket: r.get(5),
        scram_salt: r.get(6),
        scram_iterations: u32::try_from(iterations).unwrap_or(4096),
        created_at: r.get(8),
        suspended_reason: r.get(9),
    })
}

pub async fn get_by_name(c: &impl GenericClient, name: &TenantName) -> Result<Tenant, ControlError> {
    let sql = format!("SELECT {COLUMNS} FROM tenants WHERE name = $1");
    match c.query_opt(&sql, &[&name.as_str()]).await? {
        Some(r) => from_row(&r),
        None => Err(ControlError::NotFound(format!("tenant {name}"))),
    }
}

pub async fn get_by_id(c: &impl GenericClient, id: TenantId) -> Result<Tenant, ControlError> {
    let sql = format!("SELECT {COLUMNS} FROM tenants WHERE id = $1");
    match c.query_opt(&sql, &[&id.0]).await? {
        Some(r) => from_row(&r),
        None => Err(ControlError::NotFound(format!("tenant {id}"))),
    }
}

pub async fn list(c: &impl GenericClient) -> Result<Vec<Tenant>, ControlError> {
    let sql = format!("SELECT {COLUMNS} FROM tenants ORDER BY name");
    c.query(&sql, &[]).await?.iter().map(from_row).collect()
}

/// Insert a tenant in `provisioning` state. A taken name is a conflict.
pub async fn insert(c: &impl GenericClient, t: &Tenant) -> Result<(), ControlError> {
    let res = c
        .execute(
            "INSERT INTO tenants (id, name, status, db_name, db_role, bucket, scram_salt, scram_iterations)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &t.id.0,
                &t.name.as_str(),
                &t.status.as_str(),
                &t.db_name,
                &t.db_role,
                &t.bucket,
                &t.scram_salt,
                &(i32::try_from(t.scram_iterations).unwrap_or(i32::MAX)),
            ],
        )
        .await;
    match res {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
            Err(ControlError::Conflict(format!("tenant {} already exists", t.name)))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn set_status(c: &impl GenericClient, id: TenantId, status: TenantStatus) -> Result<(), ControlError> {
    c.execute("UPDATE tenants SET status = $2, updated_at = now() WHERE id = $1", &[&id.0, &status.as_str()]).await?;
    Ok(())
}

/// Remove the row and (by cascade) its keys, quotas, plugins and collections.
pub async fn delete_row(c: &impl GenericClient, id: TenantId) -> Result<(), ControlError> {
    c.execute("DELETE FROM tenants WHERE id = $1", &[&id.0]).await?;
    Ok(())
}

/// Suspend an active tenant (`reason` is shown to its clients), or resume a
/// suspended one. Returns the tenant as it is now. Idempotent (suspending a
/// suspended tenant keeps its reason); a tenant being created or deleted is a conflict.
pub async fn set_suspended(
    c: &impl GenericClient,
    name: &TenantName,
    suspend: bool,
    reason: &str,
) -> Result<Tenant, ControlError> {
    if reason.chars().count() > 500 {
        return Err(ControlError::Invalid("suspension reason is longer than 500 characters".into()));
    }
    let (from, to) = if suspend { ("active", "suspended") } else { ("suspended", "active") };
    let n = c
        .execute(
            "UPDATE tenants SET status = $3, suspended_reason = CASE WHEN $3 = 'suspended' THEN $4 END,
                    updated_at = now()
             WHERE name = $1 AND status = $2",
            &[&name.as_str(), &from, &to, &reason],
        )
        .await?;
    let t = get_by_name(c, name).await?;
    if n == 0 && t.status.as_str() != to {
        return Err(ControlError::Conflict(format!("tenant {name} is {}, not {from}", t.status.as_str())));
    }
    Ok(t)
}
