//! Backups of deleted tenants. Deleting a tenant keeps its backups, so that
//! it can still be restored as a new tenant; from then on they expire by age
//! alone (`backup.retain_days`, no minimum count; pinned ones stay until
//! unpinned), and once none is left, everything of the tenant in the target
//! goes — content, data key — and so do its rows (the audit log keeps the
//! record). [`purge`] does all of that at once, for an operator who must
//! erase a deleted tenant's data now.

use serde::Serialize;
use serde_json::json;

use super::{BackupError, Backups, catalog, target};
use crate::control::audit::{self, Actor, AuditEvent};
use crate::ids::TenantId;
use crate::services::Services;

/// A deleted tenant that still has backup rows.
#[derive(Debug, Clone, Serialize)]
pub struct DeletedTenant {
    pub tenant_id: uuid::Uuid,
    /// Its name when last backed up (the name may belong to a new tenant now).
    pub tenant_name: String,
    pub complete: i64,
    pub pinned: i64,
}

/// What one pass over deleted tenants, or one purge, removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Removed {
    pub tenant_id: Option<uuid::Uuid>,
    pub tenant_name: String,
    pub backups_expired: Vec<uuid::Uuid>,
    /// Everything of the tenant went (no complete backup was left).
    pub purged: bool,
    pub keys_deleted: u64,
}

/// Deleted tenants with backup rows, newest name first.
pub async fn deleted_tenants(svc: &Services) -> Result<Vec<DeletedTenant>, BackupError> {
    query_deleted(svc, None).await
}

/// Deleted tenants with backup rows; with `due_days`, only those an expiry
/// pass has work for (a complete, unpinned backup older than that, or no
/// complete backup left), so a pass does not lock every deleted tenant.
async fn query_deleted(svc: &Services, due_days: Option<i32>) -> Result<Vec<DeletedTenant>, BackupError> {
    let rows = svc
        .control
        .client()
        .await?
        .query(
            "SELECT b.tenant_id, (array_agg(b.tenant_name ORDER BY b.started_at DESC))[1],
                    count(*) FILTER (WHERE b.status = 'complete'),
                    count(*) FILTER (WHERE b.status = 'complete' AND b.pinned)
             FROM backups b WHERE NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = b.tenant_id)
             GROUP BY b.tenant_id
             HAVING $1::int IS NULL
                 OR count(*) FILTER (WHERE b.status = 'complete') = 0
                 OR bool_or(b.status = 'complete' AND NOT b.pinned
                            AND b.started_at < now() - make_interval(days => $1::int))
             ORDER BY max(b.started_at) DESC",
            &[&due_days],
        )
        .await
        .map_err(|e| BackupError::pg("list deleted tenants' backups", e))?;
    Ok(rows
        .iter()
        .map(|r| DeletedTenant { tenant_id: r.get(0), tenant_name: r.get(1), complete: r.get(2), pinned: r.get(3) })
        .collect())
}

/// The deleted tenant `raw` names: its id, or the name it had (refused when
/// a live tenant has that name or several deleted ones had it).
pub async fn find(svc: &Services, raw: &str) -> Result<DeletedTenant, BackupError> {
    let all = deleted_tenants(svc).await?;
    if let Ok(id) = raw.parse::<uuid::Uuid>() {
        return all.into_iter().find(|d| d.tenant_id == id).ok_or_else(|| {
            BackupError::NotFound(format!("no deleted tenant {id} with backups (a live tenant is not purged)"))
        });
    }
    let live: bool = svc
        .control
        .client()
        .await?
        .query_one("SELECT EXISTS (SELECT 1 FROM tenants WHERE name = $1)", &[&raw])
        .await
        .map_err(|e| BackupError::pg("look up the tenant", e))?
        .get(0);
    if live {
        return Err(BackupError::Conflict(format!(
            "tenant {raw} exists: delete the tenant first, or delete its backups one by one"
        )));
    }
    let mut named: Vec<DeletedTenant> = all.into_iter().filter(|d| d.tenant_name == raw).collect();
    match named.len() {
        0 => Err(BackupError::NotFound(format!("no deleted tenant named {raw} has backups"))),
        1 => Ok(named.remove(0)),
        _ => Err(BackupError::Conflict(format!(
            "several deleted tenants were named {raw}; name one by id: {}",
            named.iter().map(|d| d.tenant_id.to_string()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// One pass over every deleted tenant: expire its backups older than
/// `backup.retain_days` (pinned ones stay), then purge it when no complete
/// backup is left. A tenant whose lock another instance holds is skipped.
pub async fn expire_deleted(svc: &Services, b: &Backups, actor: &Actor) -> Result<Vec<Removed>, BackupError> {
    let days = i32::try_from(svc.config.backup.retain_days).unwrap_or(i32::MAX);
    let mut out = Vec::new();
    for d in query_deleted(svc, Some(days)).await? {
        let id = TenantId(d.tenant_id);
        let Some(_lock) = catalog::TenantLock::try_take(svc, id).await? else { continue };
        let c = svc.control.client().await?;
        let expiring: Vec<uuid::Uuid> = c
            .query(
                "SELECT id FROM backups WHERE tenant_id = $1 AND status = 'complete' AND NOT pinned
                   AND started_at < now() - make_interval(days => $2)",
                &[&d.tenant_id, &days],
            )
            .await
            .map_err(|e| BackupError::pg("find expired backups", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        drop(c);
        let mut removed =
            Removed { tenant_id: Some(d.tenant_id), tenant_name: d.tenant_name.clone(), ..Removed::default() };
        removed.keys_deleted += catalog::expire_backups(svc, b, id, &expiring).await?;
        removed.backups_expired = expiring;
        let c = svc.control.client().await?;
        let left: i64 = c
            .query_one("SELECT count(*) FROM backups WHERE tenant_id = $1 AND status = 'complete'", &[&d.tenant_id])
            .await
            .map_err(|e| BackupError::pg("count backups", e))?
            .get(0);
        drop(c);
        if left == 0 {
            removed.keys_deleted += erase(svc, b, id).await?;
            removed.purged = true;
        } else if !removed.backups_expired.is_empty() {
            removed.keys_deleted += catalog::delete_unreferenced(svc, b, id).await?;
        }
        if removed.purged || !removed.backups_expired.is_empty() {
            record(svc, &d, actor, "backup.expire_deleted", &removed).await?;
            out.push(removed);
        }
    }
    Ok(out)
}

/// Remove every backup of a deleted tenant now, pinned ones included, with
/// its content and data key, and its rows. Audited.
pub async fn purge(svc: &Services, b: &Backups, tenant: &DeletedTenant, actor: &Actor) -> Result<Removed, BackupError> {
    let id = TenantId(tenant.tenant_id);
    let Some(_lock) = catalog::TenantLock::try_take(svc, id).await? else {
        return Err(BackupError::Conflict("a backup, restore or expiry of this tenant is running; retry later".into()));
    };
    let backups: Vec<uuid::Uuid> = svc
        .control
        .client()
        .await?
        .query("SELECT id FROM backups WHERE tenant_id = $1 AND status = 'complete'", &[&tenant.tenant_id])
        .await
        .map_err(|e| BackupError::pg("list backups", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let keys_deleted = erase(svc, b, id).await?;
    let removed = Removed {
        tenant_id: Some(tenant.tenant_id),
        tenant_name: tenant.tenant_name.clone(),
        backups_expired: backups,
        purged: true,
        keys_deleted,
    };
    record(svc, tenant, actor, "backup.purge", &removed).await?;
    Ok(removed)
}

/// Everything under the tenant's prefix, then its rows (a crash in between
/// leaves rows that the next pass purges again).
async fn erase(svc: &Services, b: &Backups, id: TenantId) -> Result<u64, BackupError> {
    let n = b.target.delete_prefix(&target::tenant_prefix(id)).await?;
    svc.control
        .client()
        .await?
        .execute("DELETE FROM backups WHERE tenant_id = $1", &[&id.0])
        .await
        .map_err(|e| BackupError::pg("remove the backup rows", e))?;
    Ok(n)
}

async fn record(
    svc: &Services,
    d: &DeletedTenant,
    actor: &Actor,
    action: &str,
    removed: &Removed,
) -> Result<(), BackupError> {
    let c = svc.control.client().await?;
    audit::record(
        &c,
        &AuditEvent {
            tenant_id: Some(TenantId(d.tenant_id)),
            tenant_name: Some(&d.tenant_name),
            actor,
            action,
            target: None,
            ok: true,
            details: json!(removed),
            request_id: None,
        },
    )
    .await?;
    Ok(())
}
