//! The backup scheduler: every instance with `backup.scheduler` checks
//! once a minute which tenants are due — a backup older than their interval
//! (their `backup_settings`, else `backup.interval_s`), or a verification
//! older than `backup.verify_interval_s` — and runs them. Several instances
//! may run it: a tenant's run takes its control-plane lock
//! ([`super::catalog::TenantLock`]), so only one instance does each. After
//! each backup, the tenant's expiry pass runs; each pass also expires the
//! backups of deleted tenants ([`super::purge`]).

use std::time::Duration;

use tokio::sync::watch;

use super::create::{self, Trigger};
use super::{BackupError, catalog, verify};
use crate::control::audit::Actor;
use crate::control::tenants;
use crate::ids::TenantId;
use crate::services::Services;

/// Check every minute until shutdown.
pub async fn scheduler(svc: Services, mut shutdown: watch::Receiver<bool>) {
    if svc.backups.is_none() || !svc.config.backup.scheduler {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        if let Err(e) = run_due(&svc).await {
            tracing::warn!(error = %e, "backup scheduler pass failed");
        }
        if let Err(e) = export_metrics(&svc).await {
            tracing::debug!(error = %e, "backup metrics");
        }
    }
}

/// Per tenant, from the control plane (so any scheduler instance reports
/// it, also after a restart): seconds since the snapshot of the newest
/// complete backup (the current RPO), and whether its last verification
/// passed.
pub async fn export_metrics(svc: &Services) -> Result<(), BackupError> {
    let rows = svc
        .control
        .client()
        .await?
        .query(
            "SELECT t.name,
                    EXTRACT(EPOCH FROM now() - max(coalesce(b.snapshot_at, b.started_at)))::float8,
                    (SELECT v.verify_ok FROM backups v WHERE v.tenant_id = t.id AND v.verified_at IS NOT NULL
                     ORDER BY v.verified_at DESC LIMIT 1)
             FROM tenants t JOIN backups b ON b.tenant_id = t.id AND b.status = 'complete'
             GROUP BY t.id, t.name",
            &[],
        )
        .await
        .map_err(|e| BackupError::pg("read backup ages", e))?;
    for r in rows {
        let labels = [("tenant", r.get::<_, String>(0))];
        metrics::gauge!("sluice_backup_rpo_seconds", &labels).set(r.get::<_, f64>(1));
        if let Some(ok) = r.get::<_, Option<bool>>(2) {
            metrics::gauge!("sluice_backup_last_verify_ok", &labels).set(if ok { 1.0 } else { 0.0 });
        }
    }
    Ok(())
}

/// Tenants whose scheduled backup is due: no complete or running backup
/// within their interval, and no failed one in the last 10 minutes.
const DUE_BACKUPS: &str = "
SELECT t.id FROM tenants t LEFT JOIN backup_settings s ON s.tenant_id = t.id
WHERE t.status = 'active' AND t.fenced_reason IS NULL
  AND coalesce(s.interval_s, $1) > 0
  AND NOT EXISTS (SELECT 1 FROM backups b WHERE b.tenant_id = t.id
        AND ((b.status IN ('complete', 'running') AND b.started_at > now() - make_interval(secs => coalesce(s.interval_s, $1)))
          OR (b.status = 'failed' AND b.started_at > now() - interval '10 minutes')))";

/// Newest complete backups whose tenant has no verification within `$1` s.
const DUE_VERIFIES: &str = "
SELECT DISTINCT ON (b.tenant_id) b.id FROM backups b JOIN tenants t ON t.id = b.tenant_id
WHERE b.status = 'complete' AND t.status = 'active' AND t.fenced_reason IS NULL
  AND NOT EXISTS (SELECT 1 FROM backups v WHERE v.tenant_id = b.tenant_id
                  AND v.verified_at > now() - make_interval(secs => $1))
ORDER BY b.tenant_id, b.started_at DESC";

/// One pass; returns (backups run, verifications run).
pub async fn run_due(svc: &Services) -> Result<(usize, usize), BackupError> {
    let b = super::require(svc)?;
    let cfg = &svc.config.backup;
    let interval = i32::try_from(cfg.interval_s).unwrap_or(i32::MAX);
    let due: Vec<uuid::Uuid> = svc
        .control
        .client()
        .await?
        .query(DUE_BACKUPS, &[&interval])
        .await
        .map_err(|e| BackupError::pg("find due backups", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut backups = 0;
    for id in due {
        let Ok(tenant) = tenants::get_by_id(&svc.control.client().await?, TenantId(id)).await else { continue };
        let opts = create::Options {
            trigger: Trigger::Schedule,
            actor: &Actor::Cli,
            request_id: None,
            progress: &super::no_progress,
            id: None,
        };
        match create::run(svc, b, &tenant, &opts).await {
            Ok(row) => {
                backups += 1;
                tracing::info!(tenant = %tenant.name, backup = %row.id, bytes = row.uploaded_bytes, "scheduled backup")
            }
            Err(BackupError::Conflict(_)) => continue,
            Err(e) => tracing::warn!(tenant = %tenant.name, error = %e, "scheduled backup failed"),
        }
        if let Ok(Some(_lock)) = catalog::TenantLock::try_take(svc, tenant.id).await
            && let Err(e) = catalog::expire(svc, b, &tenant, &Actor::Cli).await
        {
            tracing::warn!(tenant = %tenant.name, error = %e, "backup expiry failed");
        }
    }
    // Backups of deleted tenants expire by age; the last one takes the rest.
    match super::purge::expire_deleted(svc, b, &Actor::Cli).await {
        Ok(removed) => {
            for r in removed {
                tracing::info!(tenant = %r.tenant_name, expired = r.backups_expired.len(), purged = r.purged,
                    "backups of a deleted tenant expired");
            }
        }
        Err(e) => tracing::warn!(error = %e, "expiry of deleted tenants' backups failed"),
    }
    let mut verifies = 0;
    if cfg.verify_interval_s > 0 {
        let secs = cfg.verify_interval_s as f64;
        let due: Vec<uuid::Uuid> = svc
            .control
            .client()
            .await?
            .query(DUE_VERIFIES, &[&secs])
            .await
            .map_err(|e| BackupError::pg("find due verifications", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for id in due {
            match verify::run(svc, b, id, &Actor::Cli, None, &super::no_progress).await {
                Ok(v) if v.ok => verifies += 1,
                Ok(v) => {
                    verifies += 1;
                    tracing::error!(backup = %id, problems = ?v.problems, "scheduled backup verification FAILED")
                }
                Err(e) => tracing::warn!(backup = %id, error = %e, "scheduled backup verification could not run"),
            }
        }
    }
    Ok((backups, verifies))
}
