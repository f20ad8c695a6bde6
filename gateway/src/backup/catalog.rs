//! The control-plane side of backups: one row per run (`backups`), the
//! tenant's settings (`backup_settings`), the per-tenant lock that keeps
//! runs, restores and expiry of one tenant apart across instances, and
//! retention: expiry by age and count, removal of unreferenced content and
//! of parts left by runs that died.

use std::collections::HashSet;

use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::json;
use tokio_postgres::{Client, NoTls, Row};

use super::{BackupError, Backups, crypt, manifest::Manifest, target};
use crate::control::audit::{self, Actor, AuditEvent};
use crate::control::tenants::Tenant;
use crate::ids::TenantId;
use crate::secret::ExposeSecret;
use crate::services::Services;

/// A run that has not beaten for this long is dead.
pub const STALE_AFTER_S: f64 = 120.0;

#[derive(Debug, Clone, Serialize)]
pub struct BackupRow {
    pub id: uuid::Uuid,
    pub tenant_id: uuid::Uuid,
    pub tenant_name: String,
    pub status: String,
    pub trigger: String,
    pub pinned: bool,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub snapshot_at: Option<String>,
    pub db_bytes: i64,
    pub object_count: i64,
    pub object_bytes: i64,
    pub uploaded_bytes: i64,
    pub stored_bytes: i64,
    pub error: Option<String>,
    pub verified_at: Option<String>,
    pub verify_ok: Option<bool>,
    pub verify_error: Option<String>,
}

const TS: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'";

fn columns() -> String {
    let ts = |c: &str| format!("to_char({c} AT TIME ZONE 'UTC', {TS})");
    format!(
        "id, tenant_id, tenant_name, status, trigger, pinned, {}, {}, {}, db_bytes, object_count, object_bytes, \
         uploaded_bytes, stored_bytes, error, {}, verify_ok, verify_error",
        ts("started_at"),
        ts("finished_at"),
        ts("snapshot_at"),
        ts("verified_at")
    )
}

fn from_row(r: &Row) -> BackupRow {
    BackupRow {
        id: r.get(0),
        tenant_id: r.get(1),
        tenant_name: r.get(2),
        status: r.get(3),
        trigger: r.get(4),
        pinned: r.get(5),
        started_at: r.get(6),
        finished_at: r.get(7),
        snapshot_at: r.get(8),
        db_bytes: r.get(9),
        object_count: r.get(10),
        object_bytes: r.get(11),
        uploaded_bytes: r.get(12),
        stored_bytes: r.get(13),
        error: r.get(14),
        verified_at: r.get(15),
        verify_ok: r.get(16),
        verify_error: r.get(17),
    }
}

/// The tenant's backups, newest first (expired ones only when asked).
pub async fn list(c: &impl GenericClient, tenant: TenantId, with_expired: bool) -> Result<Vec<BackupRow>, BackupError> {
    let sql = format!(
        "SELECT {} FROM backups WHERE tenant_id = $1 AND ($2 OR status <> 'expired') ORDER BY started_at DESC",
        columns()
    );
    let rows = c.query(&sql, &[&tenant.0, &with_expired]).await.map_err(|e| BackupError::pg("list backups", e))?;
    Ok(rows.iter().map(from_row).collect())
}

/// One backup of `tenant` (`None`: any tenant's, for operators).
pub async fn get(c: &impl GenericClient, id: uuid::Uuid, tenant: Option<TenantId>) -> Result<BackupRow, BackupError> {
    let sql = format!("SELECT {} FROM backups WHERE id = $1", columns());
    let row = c.query_opt(&sql, &[&id]).await.map_err(|e| BackupError::pg("read backup", e))?;
    match row.map(|r| from_row(&r)) {
        Some(b) if tenant.is_none_or(|t| t.0 == b.tenant_id) => Ok(b),
        _ => Err(BackupError::NotFound(format!("backup {id} not found"))),
    }
}

/// The newest complete backup of the tenant.
pub async fn latest_complete(c: &impl GenericClient, tenant: TenantId) -> Result<Option<BackupRow>, BackupError> {
    let sql = format!(
        "SELECT {} FROM backups WHERE tenant_id = $1 AND status = 'complete' ORDER BY started_at DESC LIMIT 1",
        columns()
    );
    let row = c.query_opt(&sql, &[&tenant.0]).await.map_err(|e| BackupError::pg("read backups", e))?;
    Ok(row.map(|r| from_row(&r)))
}

/// The tenant's settings with the gateway defaults filled in.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub interval_s: u64,
    pub retain_days: u32,
    pub retain_min_count: u32,
    pub recipients: Vec<String>,
}

pub async fn settings(svc: &Services, c: &impl GenericClient, tenant: TenantId) -> Result<Settings, BackupError> {
    let d = &svc.config.backup;
    let row = c
        .query_opt(
            "SELECT interval_s, retain_days, retain_min_count, recipients FROM backup_settings WHERE tenant_id = $1",
            &[&tenant.0],
        )
        .await
        .map_err(|e| BackupError::pg("read backup settings", e))?;
    let Some(r) = row else {
        return Ok(Settings {
            interval_s: d.interval_s,
            retain_days: d.retain_days,
            retain_min_count: d.retain_min_count,
            recipients: Vec::new(),
        });
    };
    let num = |v: Option<i32>, default: u64| v.and_then(|v| u64::try_from(v).ok()).unwrap_or(default);
    Ok(Settings {
        interval_s: num(r.get(0), d.interval_s),
        retain_days: u32::try_from(num(r.get(1), u64::from(d.retain_days))).unwrap_or(d.retain_days),
        retain_min_count: u32::try_from(num(r.get(2), u64::from(d.retain_min_count))).unwrap_or(d.retain_min_count),
        recipients: r.get(3),
    })
}

/// A change to a tenant's settings (`None` leaves a field; `Some(None)`
/// returns it to the gateway default).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    /// Seconds between scheduled backups (0 = never, else ≥ 60); `null`: the gateway default.
    #[serde(default, deserialize_with = "serde_with_null::deserialize")]
    #[schemars(with = "Option<i32>")]
    pub interval_s: Option<Option<i32>>,
    /// Days a complete, unpinned backup is kept (≥ 1); `null`: the gateway default.
    #[serde(default, deserialize_with = "serde_with_null::deserialize")]
    #[schemars(with = "Option<i32>")]
    pub retain_days: Option<Option<i32>>,
    /// Newest complete backups kept whatever their age (≥ 0); `null`: the gateway default.
    #[serde(default, deserialize_with = "serde_with_null::deserialize")]
    #[schemars(with = "Option<i32>")]
    pub retain_min_count: Option<Option<i32>>,
    /// The tenant's own age X25519 public keys (`age1…`, at most 10): new
    /// backups are also encrypted to them. `[]` removes them.
    pub recipients: Option<Vec<String>>,
}

/// `null` as `Some(None)`, absent as `None`.
mod serde_with_null {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i32>>, D::Error> {
        Ok(Some(Option::deserialize(d)?))
    }
}

/// Apply a settings change (audited as `backup.settings`).
pub async fn set_settings(
    svc: &Services,
    tenant: &Tenant,
    patch: &SettingsPatch,
    actor: &Actor,
    request_id: Option<&str>,
) -> Result<Settings, BackupError> {
    if let Some(keys) = &patch.recipients {
        if keys.len() > 10 {
            return Err(BackupError::Invalid("at most 10 recipients".into()));
        }
        for k in keys {
            crypt::parse_recipient(k)?;
        }
    }
    let check = |v: &Option<Option<i32>>, min: i32, what: &str, zero_ok: bool| match v {
        Some(Some(n)) if *n < min && !(zero_ok && *n == 0) => {
            Err(BackupError::Invalid(format!("{what} must be at least {min}{}", if zero_ok { " (or 0)" } else { "" })))
        }
        _ => Ok(()),
    };
    check(&patch.interval_s, 60, "interval_s", true)?;
    check(&patch.retain_days, 1, "retain_days", false)?;
    check(&patch.retain_min_count, 0, "retain_min_count", false)?;
    let mut c = svc.control.client().await?;
    let tx = c.transaction().await.map_err(|e| BackupError::pg("begin", e))?;
    tx.execute("INSERT INTO backup_settings (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING", &[&tenant.id.0])
        .await
        .map_err(|e| BackupError::pg("write backup settings", e))?;
    let set = |col: &str, v: &Option<Option<i32>>| v.map(|v| (col.to_owned(), v));
    for (col, v) in [
        set("interval_s", &patch.interval_s),
        set("retain_days", &patch.retain_days),
        set("retain_min_count", &patch.retain_min_count),
    ]
    .into_iter()
    .flatten()
    {
        tx.execute(
            &format!("UPDATE backup_settings SET {col} = $2, updated_at = now() WHERE tenant_id = $1"),
            &[&tenant.id.0, &v],
        )
        .await
        .map_err(|e| BackupError::pg("write backup settings", e))?;
    }
    if let Some(keys) = &patch.recipients {
        let keys: Vec<String> = keys.iter().map(|k| k.trim().to_owned()).collect();
        tx.execute(
            "UPDATE backup_settings SET recipients = $2, updated_at = now() WHERE tenant_id = $1",
            &[&tenant.id.0, &keys],
        )
        .await
        .map_err(|e| BackupError::pg("write backup settings", e))?;
    }
    let details = json!({
        "interval_s": patch.interval_s, "retain_days": patch.retain_days,
        "retain_min_count": patch.retain_min_count, "recipients": patch.recipients,
    });
    audit_event(&tx, tenant, actor, "backup.settings", None, true, details, request_id).await?;
    tx.commit().await.map_err(|e| BackupError::pg("commit", e))?;
    settings(svc, &svc.control.client().await?, tenant.id).await
}

/// Record an audit event about a tenant's backups.
#[allow(clippy::too_many_arguments)]
pub async fn audit_event(
    c: &impl GenericClient,
    tenant: &Tenant,
    actor: &Actor,
    action: &str,
    target: Option<&str>,
    ok: bool,
    details: serde_json::Value,
    request_id: Option<&str>,
) -> Result<(), BackupError> {
    audit::record(
        c,
        &AuditEvent {
            tenant_id: Some(tenant.id),
            tenant_name: Some(tenant.name.as_str()),
            actor,
            action,
            target,
            ok,
            details,
            request_id,
        },
    )
    .await?;
    Ok(())
}

/// A session-level advisory lock on the control plane that keeps one
/// tenant's backup runs, restores and expiry apart across instances. Held
/// on a dedicated connection (not a pool one) for as long as the work runs;
/// released when dropped (the connection closes).
pub struct TenantLock {
    _client: Client,
}

impl TenantLock {
    /// Take the lock, or `None` if another run holds it.
    pub async fn try_take(svc: &Services, tenant: TenantId) -> Result<Option<Self>, BackupError> {
        let mut cfg: tokio_postgres::Config = svc
            .config
            .control
            .database_url
            .expose_secret()
            .parse()
            .map_err(|e| BackupError::pg("control-plane URL", e))?;
        cfg.application_name("sluice-backup-lock");
        cfg.connect_timeout(std::time::Duration::from_millis(svc.config.control.connect_timeout_ms));
        let (client, conn) =
            cfg.connect(NoTls).await.map_err(|e| BackupError::pg("connect to the control plane", e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let got: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended('sluice-backup:' || $1::uuid::text, 0))",
                &[&tenant.0],
            )
            .await
            .map_err(|e| BackupError::pg("take the tenant's backup lock", e))?
            .get(0);
        Ok(got.then_some(Self { _client: client }))
    }
}

/// Read and open a complete backup's manifest.
pub async fn manifest(
    b: &Backups,
    tenant: TenantId,
    id: uuid::Uuid,
) -> Result<(crypt::DataKey, Manifest), BackupError> {
    let key = data_key(b, tenant, false).await?;
    let mkey = target::manifest_key(tenant, id);
    let stored = b
        .target
        .get_bytes(&mkey, target::MAX_SMALL_PART)
        .await?
        .ok_or_else(|| BackupError::Missing(format!("the manifest of backup {id} is missing from the target")))?;
    let plain = crypt::open_bytes(&stored, &key, target::MAX_SMALL_PART)
        .map_err(|e| BackupError::Corrupt(format!("the manifest of backup {id} does not open: {e}")))?;
    let m: Manifest = serde_json::from_slice(&plain)
        .map_err(|e| BackupError::Corrupt(format!("the manifest of backup {id} is malformed: {e}")))?;
    if m.format_version > super::manifest::FORMAT_VERSION {
        return Err(BackupError::Invalid(format!(
            "backup {id} has format {} and this gateway reads up to {}; restore it with a newer gateway",
            m.format_version,
            super::manifest::FORMAT_VERSION
        )));
    }
    if m.tenant_id != tenant.0 || m.backup_id != id {
        return Err(BackupError::Corrupt(format!("the manifest of backup {id} names another backup")));
    }
    Ok((key, m))
}

/// The tenant's data key from the target; made (and stored wrapped) when
/// `create` and there is none.
pub async fn data_key(b: &Backups, tenant: TenantId, create: bool) -> Result<crypt::DataKey, BackupError> {
    let key = target::data_key_key(tenant);
    if let Some(wrapped) = b.target.get_bytes(&key, 1 << 16).await? {
        return b.keyring.unwrap(&wrapped);
    }
    if !create {
        return Err(BackupError::Missing(format!("tenant {} has no data key in the backup target", tenant.0)));
    }
    let fresh = crypt::DataKey::generate();
    b.target.put_bytes(&key, b.keyring.wrap(&fresh)?).await?;
    Ok(fresh)
}

/// Re-wrap every tenant's data key with the current operator key (after a
/// rotation); returns how many were re-wrapped.
pub async fn rewrap_all(b: &Backups) -> Result<u64, BackupError> {
    let mut n = 0;
    for (k, _) in b.target.list("tenants/").await? {
        if !k.ends_with("/data-key.age") {
            continue;
        }
        let Some(wrapped) = b.target.get_bytes(&k, 1 << 16).await? else { continue };
        let key = b.keyring.unwrap(&wrapped)?;
        b.target.put_bytes(&k, b.keyring.wrap(&key)?).await?;
        n += 1;
    }
    Ok(n)
}

/// What an expiry pass removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Expired {
    pub backups: Vec<uuid::Uuid>,
    pub abandoned: Vec<uuid::Uuid>,
    pub content_deleted: u64,
    pub parts_deleted: u64,
}

/// Retention for one tenant (caller holds its [`TenantLock`]): runs that
/// died are marked failed and their parts removed; complete, unpinned
/// backups older than `retain_days` beyond the newest `retain_min_count`
/// expire; content no remaining backup references is deleted. Audited.
pub async fn expire(svc: &Services, b: &Backups, tenant: &Tenant, actor: &Actor) -> Result<Expired, BackupError> {
    let mut out = Expired::default();
    let c = svc.control.client().await?;
    let s = settings(svc, &c, tenant.id).await?;
    let dead: Vec<uuid::Uuid> = c
        .query(
            "UPDATE backups SET status = 'failed', finished_at = now(), error = 'the run stopped (no heartbeat)'
             WHERE tenant_id = $1 AND status = 'running' AND heartbeat_at < now() - make_interval(secs => $2)
             RETURNING id",
            &[&tenant.id.0, &STALE_AFTER_S],
        )
        .await
        .map_err(|e| BackupError::pg("mark dead runs", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let failed: Vec<uuid::Uuid> = c
        .query("SELECT id FROM backups WHERE tenant_id = $1 AND status = 'failed'", &[&tenant.id.0])
        .await
        .map_err(|e| BackupError::pg("list failed runs", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expiring: Vec<uuid::Uuid> = c
        .query(
            "SELECT id FROM (SELECT id, pinned, started_at, row_number() OVER (ORDER BY started_at DESC) AS n
                             FROM backups WHERE tenant_id = $1 AND status = 'complete') b
             WHERE NOT pinned AND n > $2 AND started_at < now() - make_interval(days => $3)",
            &[&tenant.id.0, &i64::from(s.retain_min_count), &i32::try_from(s.retain_days).unwrap_or(i32::MAX)],
        )
        .await
        .map_err(|e| BackupError::pg("find expired backups", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    drop(c);
    for id in &failed {
        out.parts_deleted += b.target.delete_prefix(&target::backup_prefix(tenant.id, *id)).await?;
    }
    out.parts_deleted += expire_backups(svc, b, tenant.id, &expiring).await?;
    // Backups with parts in the target but no row (a run that died before
    // its row was written cannot exist: the row comes first), and content
    // no complete backup references.
    out.content_deleted = delete_unreferenced(svc, b, tenant.id).await?;
    out.backups = expiring;
    out.abandoned = dead;
    if !out.backups.is_empty() || !out.abandoned.is_empty() || out.content_deleted > 0 {
        let c = svc.control.client().await?;
        let details = json!({ "expired": out.backups, "abandoned": out.abandoned,
                              "content_deleted": out.content_deleted, "parts_deleted": out.parts_deleted });
        audit_event(&c, tenant, actor, "backup.expire", None, true, details, None).await?;
    }
    Ok(out)
}

/// Remove these backups of `tenant`: their parts, then their rows are
/// marked `expired` (parts first: a crash in between leaves a row whose parts
/// are gone, never parts nobody knows of). Returns the stored objects deleted.
pub(super) async fn expire_backups(
    svc: &Services,
    b: &Backups,
    tenant: TenantId,
    ids: &[uuid::Uuid],
) -> Result<u64, BackupError> {
    let mut n = 0;
    for id in ids {
        n += b.target.delete_prefix(&target::backup_prefix(tenant, *id)).await?;
    }
    if !ids.is_empty() {
        svc.control
            .client()
            .await?
            .execute("UPDATE backups SET status = 'expired' WHERE id = ANY($1)", &[&ids])
            .await
            .map_err(|e| BackupError::pg("mark expired backups", e))?;
    }
    Ok(n)
}

/// Delete the tenant's content that no complete backup references (caller
/// holds the tenant's lock); returns how many blobs went.
pub(super) async fn delete_unreferenced(svc: &Services, b: &Backups, tenant: TenantId) -> Result<u64, BackupError> {
    let keep = referenced_content(svc, b, tenant).await?;
    let prefix = format!("{}content/", target::tenant_prefix(tenant));
    let mut n = 0;
    for (k, _) in b.target.list(&prefix).await? {
        if !keep.contains(k.trim_start_matches(&prefix)) {
            b.target.delete(&k).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// Content ids referenced by the tenant's complete backups.
async fn referenced_content(svc: &Services, b: &Backups, tenant: TenantId) -> Result<HashSet<String>, BackupError> {
    let ids: Vec<uuid::Uuid> = svc
        .control
        .client()
        .await?
        .query("SELECT id FROM backups WHERE tenant_id = $1 AND status = 'complete'", &[&tenant.0])
        .await
        .map_err(|e| BackupError::pg("list backups", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut keep = HashSet::new();
    for id in ids {
        let (_, m) = manifest(b, tenant, id).await?;
        keep.extend(m.contents.into_iter().map(|c| c.id));
    }
    Ok(keep)
}

/// Delete one backup (pinned ones only with `force`). Audited.
pub async fn delete(
    svc: &Services,
    b: &Backups,
    tenant: &Tenant,
    id: uuid::Uuid,
    force: bool,
    actor: &Actor,
    request_id: Option<&str>,
) -> Result<(), BackupError> {
    let row = get(&svc.control.client().await?, id, Some(tenant.id)).await?;
    if row.pinned && !force {
        return Err(BackupError::Conflict(format!("backup {id} is pinned; unpin it first")));
    }
    let Some(_lock) = TenantLock::try_take(svc, tenant.id).await? else {
        return Err(BackupError::Conflict("a backup, restore or expiry of this tenant is running; retry later".into()));
    };
    b.target.delete_prefix(&target::backup_prefix(tenant.id, id)).await?;
    let c = svc.control.client().await?;
    c.execute("UPDATE backups SET status = 'expired' WHERE id = $1", &[&id])
        .await
        .map_err(|e| BackupError::pg("mark the backup deleted", e))?;
    audit_event(&c, tenant, actor, "backup.delete", Some(&id.to_string()), true, json!({}), request_id).await?;
    drop(c);
    // Content only this backup used goes too.
    delete_unreferenced(svc, b, tenant.id).await?;
    Ok(())
}

/// Pin or unpin a backup (pinned backups never expire). Audited.
pub async fn set_pinned(
    svc: &Services,
    tenant: &Tenant,
    id: uuid::Uuid,
    pinned: bool,
    actor: &Actor,
    request_id: Option<&str>,
) -> Result<BackupRow, BackupError> {
    let c = svc.control.client().await?;
    let n = c
        .execute(
            "UPDATE backups SET pinned = $3 WHERE id = $1 AND tenant_id = $2 AND status = 'complete'",
            &[&id, &tenant.id.0, &pinned],
        )
        .await
        .map_err(|e| BackupError::pg("pin", e))?;
    if n == 0 {
        return Err(BackupError::NotFound(format!("no complete backup {id}")));
    }
    let action = if pinned { "backup.pin" } else { "backup.unpin" };
    audit_event(&c, tenant, actor, action, Some(&id.to_string()), true, json!({}), request_id).await?;
    get(&c, id, Some(tenant.id)).await
}
