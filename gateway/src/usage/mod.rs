//! Storage usage per tenant and the storage quotas that bound it.
//!
//! What a tenant stores lives in the control plane's `tenant_usage` row:
//! object bytes and count and vector points are kept on every write the
//! gateway makes; the database size is measured ([`meter`]) because SQL can
//! grow it in ways no one sees statement by statement; key/value bytes are
//! kept exactly in Redis by the write scripts ([`crate::upstream::redis`]).
//! [`meter`] also recounts everything now and then, which corrects drift
//! (expired key/value entries, objects written behind the gateway's back).
//!
//! Writes that would pass a quota are refused with [`QuotaExceeded`] (HTTP
//! 403 `quota_exceeded`, SQLSTATE 53100 on the Postgres door); reads and
//! deletes keep working so a tenant can always get back under its quota.
//! Which tenants' databases are full is kept per instance by [`book`], so
//! both doors answer without a control-plane query per statement.

pub mod book;
pub mod meter;
pub mod stage;

use deadpool_postgres::GenericClient;
use serde::Serialize;

use crate::control::ControlError;
use crate::control::quotas::Quotas;
use crate::error::{ClientError, ErrorKind};
use crate::ids::TenantId;

/// SQLSTATE of a storage-quota refusal on the Postgres door (`disk_full`).
pub const SQLSTATE_QUOTA: &str = "53100";

/// What a tenant stores, as of the last write or measurement.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub db_bytes: i64,
    pub object_bytes: i64,
    pub object_count: i64,
    pub kv_bytes: i64,
    pub vector_points: i64,
    /// When the database size was last measured (RFC 3339), if ever.
    pub measured_at: Option<String>,
    /// When everything was last recounted, if ever.
    pub reconciled_at: Option<String>,
}

/// The `tenant_usage` columns, qualified with alias `u`, in [`from_row`] order
/// (zeros when the row is missing, e.g. from a LEFT JOIN). Object bytes
/// include the parts of open multipart uploads, summed live from their rows
/// (`objects::multipart`), so no counter of them can drift.
pub const COLUMNS_U: &str = "coalesce(u.db_bytes, 0), \
     coalesce(u.object_bytes, 0) + coalesce((SELECT sum(p.size) FROM s3_uploads s \
         JOIN s3_upload_parts p ON p.upload_id = s.upload_id WHERE s.tenant_id = u.tenant_id), 0)::bigint, \
     coalesce(u.object_count, 0), \
     coalesce(u.kv_bytes, 0), coalesce(u.vector_points, 0), \
     to_char(u.measured_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
     to_char(u.reconciled_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')";

/// Read [`COLUMNS_U`] starting at column `at`.
pub fn from_row(r: &tokio_postgres::Row, at: usize) -> Usage {
    Usage {
        db_bytes: r.get(at),
        object_bytes: r.get(at + 1),
        object_count: r.get(at + 2),
        kv_bytes: r.get(at + 3),
        vector_points: r.get(at + 4),
        measured_at: r.get(at + 5),
        reconciled_at: r.get(at + 6),
    }
}

/// A stored resource with a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// The tenant's database (`max_db_bytes`).
    Database,
    /// Its objects (`max_storage_bytes`).
    Objects,
    /// Its key/value values (`max_kv_bytes`).
    Kv,
    /// Its vector points (`max_vector_points`).
    VectorPoints,
}

impl Resource {
    pub fn quota_name(self) -> &'static str {
        match self {
            Resource::Database => "max_db_bytes",
            Resource::Objects => "max_storage_bytes",
            Resource::Kv => "max_kv_bytes",
            Resource::VectorPoints => "max_vector_points",
        }
    }
    fn unit(self) -> &'static str {
        if self == Resource::VectorPoints { "points" } else { "bytes" }
    }
}

/// A write refused because it would pass a storage quota.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error(
    "storage quota exceeded: {} uses {used} of {limit} {}{}; delete data or ask the operator to raise {}",
    what(*resource),
    resource.unit(),
    if *adding > 0 { format!(" and this write adds {adding}") } else { String::new() },
    resource.quota_name()
)]
pub struct QuotaExceeded {
    pub resource: Resource,
    pub used: i64,
    pub limit: i64,
    pub adding: i64,
}

fn what(r: Resource) -> &'static str {
    match r {
        Resource::Database => "the database",
        Resource::Objects => "objects",
        Resource::Kv => "key/value values",
        Resource::VectorPoints => "vector collections",
    }
}

impl ClientError for QuotaExceeded {
    fn kind(&self) -> ErrorKind {
        ErrorKind::StorageFull
    }
}

/// Room left for `resource` (0 when at or over the quota).
pub fn room(q: &Quotas, u: &Usage, resource: Resource) -> i64 {
    let (used, limit) = used_and_limit(q, u, resource);
    (limit - used).max(0)
}

fn used_and_limit(q: &Quotas, u: &Usage, resource: Resource) -> (i64, i64) {
    match resource {
        Resource::Database => (u.db_bytes, q.max_db_bytes),
        Resource::Objects => (u.object_bytes, q.max_storage_bytes),
        Resource::Kv => (u.kv_bytes, q.max_kv_bytes),
        Resource::VectorPoints => (u.vector_points, q.max_vector_points),
    }
}

/// Refuse a write that adds `adding` to `resource` past its quota. A write
/// that adds nothing passes unless the resource is already full.
pub fn check(q: &Quotas, u: &Usage, resource: Resource, adding: i64) -> Result<(), QuotaExceeded> {
    let (used, limit) = used_and_limit(q, u, resource);
    if used >= limit || used.saturating_add(adding) > limit {
        return Err(QuotaExceeded { resource, used, limit, adding });
    }
    Ok(())
}

/// A tenant's usage row (zeros if it has none yet).
pub async fn get(c: &impl GenericClient, tenant: TenantId) -> Result<Usage, ControlError> {
    let row = c
        .query_opt(
            &format!(
                "SELECT {COLUMNS_U} FROM tenants t LEFT JOIN tenant_usage u ON u.tenant_id = t.id WHERE t.id = $1"
            ),
            &[&tenant.0],
        )
        .await?
        .ok_or_else(|| ControlError::NotFound(format!("tenant {tenant}")))?;
    Ok(from_row(&row, 0))
}

/// Create the usage row of a new tenant.
pub async fn insert(c: &impl GenericClient, tenant: TenantId) -> Result<(), ControlError> {
    c.execute("INSERT INTO tenant_usage (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING", &[&tenant.0]).await?;
    Ok(())
}

/// Account objects written or deleted (`bytes` and `count` may be negative).
pub async fn add_objects(c: &impl GenericClient, tenant: TenantId, bytes: i64, count: i64) -> Result<(), ControlError> {
    if bytes == 0 && count == 0 {
        return Ok(());
    }
    c.execute(
        "UPDATE tenant_usage SET object_bytes = greatest(0, object_bytes + $2),
                                 object_count = greatest(0, object_count + $3)
         WHERE tenant_id = $1",
        &[&tenant.0, &bytes, &count],
    )
    .await?;
    Ok(())
}

/// Account vector points inserted (positive) or deleted (negative).
pub async fn add_points(c: &impl GenericClient, tenant: TenantId, points: i64) -> Result<(), ControlError> {
    if points == 0 {
        return Ok(());
    }
    c.execute(
        "UPDATE tenant_usage SET vector_points = greatest(0, vector_points + $2) WHERE tenant_id = $1",
        &[&tenant.0, &points],
    )
    .await?;
    Ok(())
}

/// One stored resource in a usage report.
#[derive(Debug, Clone, Serialize)]
pub struct ResourceReport {
    pub resource: Resource,
    pub used: i64,
    pub limit: i64,
    /// Writes to it are refused until it has room again.
    pub full: bool,
}

/// What `GET /v1/usage` and `GET /admin/v1/tenants/{name}/usage` return.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub resources: Vec<ResourceReport>,
    pub object_count: i64,
    pub measured_at: Option<String>,
    pub reconciled_at: Option<String>,
}

/// A tenant's usage against its quotas (key/value bytes read live from Redis).
pub async fn report(svc: &crate::services::Services, tenant: TenantId) -> Result<Report, ControlError> {
    let c = svc.control.client().await?;
    let mut u = get(&c, tenant).await?;
    let q = crate::control::quotas::get(&c, tenant).await?;
    drop(c);
    if let Ok(kv) = svc.redis.kv_bytes(tenant).await {
        u.kv_bytes = kv;
    }
    let resources = [Resource::Database, Resource::Objects, Resource::Kv, Resource::VectorPoints]
        .into_iter()
        .map(|r| {
            let (used, limit) = used_and_limit(&q, &u, r);
            ResourceReport { resource: r, used, limit, full: used >= limit }
        })
        .collect();
    Ok(Report { resources, object_count: u.object_count, measured_at: u.measured_at, reconciled_at: u.reconciled_at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QuotaDefaults;

    #[test]
    fn check_refuses_only_past_the_quota() {
        let q = Quotas { max_storage_bytes: 100, ..Quotas::from(&QuotaDefaults::default()) };
        let mut u = Usage { object_bytes: 60, ..Usage::default() };
        assert!(check(&q, &u, Resource::Objects, 40).is_ok());
        let e = check(&q, &u, Resource::Objects, 41).expect_err("over");
        assert_eq!((e.used, e.limit, e.adding), (60, 100, 41));
        assert!(e.to_string().contains("max_storage_bytes"), "{e}");
        u.object_bytes = 100;
        assert!(check(&q, &u, Resource::Objects, 0).is_err(), "full refuses even empty writes");
        assert_eq!(room(&q, &u, Resource::Objects), 0);
    }
}
