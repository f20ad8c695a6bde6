//! Measuring what tenants store: the database size every
//! `usage.measure_interval_s`, and a full recount (objects listed, key/value
//! values scanned, points counted) every `usage.reconcile_interval_s`.
//!
//! Safe with many gateway instances: each claims a few due tenants at a time
//! (`FOR UPDATE SKIP LOCKED` plus a short claim), so each tenant is measured
//! by one instance per interval. A recount races with writes that land while
//! it runs (they may be counted twice or not at all until the next one).

use std::time::Duration;

use tokio::sync::watch;

use super::Usage;
use super::book::UsageBook;
use crate::control::ControlError;
use crate::control::tenants::{self, Tenant};
use crate::ids::TenantId;
use crate::services::Services;
use crate::upstream::s3::ListQuery;
use crate::vectors::collections;

/// Tenants one instance claims per round.
const CLAIM_BATCH: i64 = 16;
/// How long a claim keeps other instances off a tenant.
const CLAIM_SECS: f64 = 300.0;

#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("measure database: {0}")]
    Pg(String),
    #[error("recount objects: {0}")]
    S3(#[from] crate::upstream::s3::S3Error),
    #[error("recount key/value: {0}")]
    Redis(#[from] crate::upstream::redis::RedisError),
}

/// Measure (and with `reconcile`, recount) one tenant now; stores and
/// returns its usage and updates this instance's book.
pub async fn measure_tenant(
    svc: &Services,
    book: &UsageBook,
    t: &Tenant,
    reconcile: bool,
) -> Result<Usage, MeterError> {
    let admin = admin(svc).await?;
    measure_with(svc, book, &admin, t, reconcile).await
}

/// An admin connection to the tenant cluster (a login costs both sides a
/// SCRAM key derivation: a round takes one for all the tenants it measures).
async fn admin(svc: &Services) -> Result<tokio_postgres::Client, MeterError> {
    svc.pg_admin.connect(None).await.map_err(|e| MeterError::Pg(e.to_string()))
}

async fn measure_with(
    svc: &Services,
    book: &UsageBook,
    admin: &tokio_postgres::Client,
    t: &Tenant,
    reconcile: bool,
) -> Result<Usage, MeterError> {
    let db_bytes: i64 = admin
        .query_one("SELECT pg_database_size($1)", &[&t.db_name])
        .await
        .map_err(|e| MeterError::Pg(e.to_string()))?
        .get(0);
    if reconcile {
        // Counted before a control-plane connection is taken: the counts wait
        // on the object store, Redis and the tenant's own tables.
        let (object_bytes, object_count) = count_objects(svc, &t.bucket).await?;
        let kv_bytes = svc.redis.kv_recount(t.id).await?;
        let vector_points = count_points(svc, t).await?;
        let c = svc.control.client().await?;
        c.execute(
            "UPDATE tenant_usage SET db_bytes = $2, object_bytes = $3, object_count = $4, kv_bytes = $5,
                    vector_points = $6, measured_at = now(), reconciled_at = now(), claimed_until = NULL
             WHERE tenant_id = $1",
            &[&t.id.0, &db_bytes, &object_bytes, &object_count, &kv_bytes, &vector_points],
        )
        .await
        .map_err(ControlError::from)?;
    } else {
        svc.control
            .client()
            .await?
            .execute(
                "UPDATE tenant_usage SET db_bytes = $2, measured_at = now(), claimed_until = NULL WHERE tenant_id = $1",
                &[&t.id.0, &db_bytes],
            )
            .await
            .map_err(ControlError::from)?;
    }
    let c = svc.control.client().await?;
    let q = crate::control::quotas::get(&c, t.id).await?;
    book.set(t.id, db_bytes, q.max_db_bytes);
    let mut usage = super::get(&c, t.id).await?;
    drop(c);
    usage.kv_bytes = svc.redis.kv_bytes(t.id).await.unwrap_or(usage.kv_bytes);
    for (kind, v) in [
        ("database", usage.db_bytes),
        ("objects", usage.object_bytes),
        ("kv", usage.kv_bytes),
        ("vector_points", usage.vector_points),
    ] {
        metrics::gauge!("sluice_tenant_storage", "tenant" => t.name.to_string(), "kind" => kind).set(v as f64);
    }
    Ok(usage)
}

async fn count_objects(svc: &Services, bucket: &str) -> Result<(i64, i64), MeterError> {
    let (mut bytes, mut count) = (0i64, 0i64);
    let mut cursor: Option<String> = None;
    loop {
        let q = ListQuery { prefix: "", delimiter: None, limit: 1000, cursor: cursor.as_deref(), start_after: None };
        let page = match svc.s3.list_objects(bucket, &q).await {
            Ok(p) => p,
            Err(crate::upstream::s3::S3Error::NotFound) => return Ok((0, 0)),
            Err(e) => return Err(e.into()),
        };
        for o in &page.objects {
            bytes = bytes.saturating_add(i64::try_from(o.size).unwrap_or(i64::MAX));
            count += 1;
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok((bytes, count)),
        }
    }
}

/// Deadlines of the meter's point counts (an admin connection has none).
const COUNT_LIMITS: &str = "SET lock_timeout = '2s'; SET statement_timeout = '60s'";

async fn count_points(svc: &Services, t: &Tenant) -> Result<i64, MeterError> {
    let list =
        collections::list(&svc.control.client().await?, t.id).await.map_err(|e| MeterError::Pg(e.to_string()))?;
    if list.is_empty() {
        return Ok(0);
    }
    let db = svc.pg_admin.connect(Some(&t.db_name)).await.map_err(|e| MeterError::Pg(e.to_string()))?;
    // The tenant can lock its tables: the meter (one task for every tenant)
    // gives up on a count instead of waiting for the tenant, and tries again
    // at the next recount.
    db.batch_execute(COUNT_LIMITS).await.map_err(|e| MeterError::Pg(e.to_string()))?;
    let mut total = 0i64;
    for c in &list {
        let sql = format!("SELECT count(*) FROM {}", c.table());
        match db.query_one(&sql, &[]).await {
            Ok(r) => total = total.saturating_add(r.get::<_, i64>(0)),
            // A collection dropped while we count.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {}
            Err(e) => return Err(MeterError::Pg(e.to_string())),
        }
    }
    Ok(total)
}

/// Claim up to [`CLAIM_BATCH`] tenants whose measurement is due; the flag
/// says whether their recount is due too.
async fn claim(svc: &Services) -> Result<Vec<(TenantId, bool)>, ControlError> {
    let measure = svc.config.usage.measure_interval_s as f64;
    let reconcile = svc.config.usage.reconcile_interval_s as f64;
    let c = svc.control.client().await?;
    let rows = c
        .query(
            "UPDATE tenant_usage u SET claimed_until = now() + make_interval(secs => $3)
             FROM (SELECT u2.tenant_id FROM tenant_usage u2 JOIN tenants t ON t.id = u2.tenant_id
                   WHERE t.status IN ('active', 'suspended')
                     AND (u2.measured_at IS NULL OR u2.measured_at < now() - make_interval(secs => $1))
                     AND (u2.claimed_until IS NULL OR u2.claimed_until < now())
                   ORDER BY u2.measured_at NULLS FIRST LIMIT $4
                   FOR UPDATE OF u2 SKIP LOCKED) due
             WHERE u.tenant_id = due.tenant_id
             RETURNING u.tenant_id,
                       u.reconciled_at IS NULL OR u.reconciled_at < now() - make_interval(secs => $2)",
            &[&measure, &reconcile, &CLAIM_SECS, &CLAIM_BATCH],
        )
        .await?;
    Ok(rows.iter().map(|r| (TenantId(r.get(0)), r.get(1))).collect())
}

/// One round: measure every claimed tenant.
pub async fn round(svc: &Services, book: &UsageBook) -> Result<usize, MeterError> {
    let due = claim(svc).await?;
    let mut conn: Option<tokio_postgres::Client> = None;
    for (id, reconcile) in &due {
        let t = tenants::get_by_id(&svc.control.client().await?, *id).await?;
        let c = match conn.take().filter(|c| !c.is_closed()) {
            Some(c) => c,
            None => admin(svc).await?,
        };
        let c = conn.insert(c);
        if let Err(e) = measure_with(svc, book, c, &t, *reconcile).await {
            tracing::warn!(tenant = %t.name, error = %e, "measure tenant storage");
        }
    }
    Ok(due.len())
}

/// Measure due tenants until shutdown.
pub async fn run(svc: Services, book: UsageBook, mut shutdown: watch::Receiver<bool>) {
    let period = Duration::from_secs(svc.config.usage.measure_interval_s.clamp(1, 10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        let r = tokio::select! {
            r = round(&svc, &book) => r,
            _ = shutdown.wait_for(|v| *v) => return,
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "storage metering round");
        }
    }
}
