//! Verification: fetch and check every part and content blob (as a
//! restore does), restore the database into a scratch database, compare
//! its row counts and per-table content hashes with the manifest, check
//! that every object's content is present with the recorded sha256, then
//! drop the scratch database. The result is recorded on the backup's row.
//!
//! Object bytes are checked in the staging folder (sha256 after
//! authenticated decryption); writing them to a scratch bucket prefix
//! would prove nothing more about the backup.

use serde::Serialize;
use serde_json::json;

use super::{BackupError, Backups, Progress, ProgressFn, catalog, dump, restore};
use crate::control::audit::Actor;
use crate::control::tenants::{self, Tenant};
use crate::ids::TenantId;
use crate::services::Services;

#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub backup_id: uuid::Uuid,
    pub ok: bool,
    pub tables_checked: usize,
    pub objects_checked: usize,
    pub bytes_checked: u64,
    /// What differs (empty when `ok`).
    pub problems: Vec<String>,
    pub elapsed_ms: u64,
}

/// Verify one backup and record the result.
pub async fn run(
    svc: &Services,
    b: &Backups,
    backup: uuid::Uuid,
    actor: &Actor,
    request_id: Option<&str>,
    progress: ProgressFn<'_>,
) -> Result<Verified, BackupError> {
    let started = std::time::Instant::now();
    let row = catalog::get(&svc.control.client().await?, backup, None).await?;
    if row.status != "complete" {
        return Err(BackupError::Conflict(format!("backup {backup} is {}, not complete", row.status)));
    }
    let tenant_id = TenantId(row.tenant_id);
    let result = check(svc, b, tenant_id, backup, progress).await;
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let v = match result {
        Ok(mut v) => {
            v.elapsed_ms = elapsed_ms;
            v
        }
        // A part that fails its checks is a failed verification, not an error.
        Err(e @ (BackupError::Corrupt(_) | BackupError::Missing(_) | BackupError::Crypto(_))) => Verified {
            backup_id: backup,
            ok: false,
            tables_checked: 0,
            objects_checked: 0,
            bytes_checked: 0,
            problems: vec![e.to_string()],
            elapsed_ms,
        },
        Err(e) => return Err(e),
    };
    let c = svc.control.client().await?;
    let problems = (!v.ok).then(|| v.problems.join("; "));
    c.execute(
        "UPDATE backups SET verified_at = now(), verify_ok = $2, verify_error = $3 WHERE id = $1",
        &[&backup, &v.ok, &problems],
    )
    .await
    .map_err(|e| BackupError::pg("record the verification", e))?;
    if let Ok(t) = tenants::get_by_id(&c, tenant_id).await {
        let details = json!({ "ok": v.ok, "problems": v.problems, "elapsed_ms": v.elapsed_ms });
        catalog::audit_event(&c, &t, actor, "backup.verify", Some(&backup.to_string()), v.ok, details, request_id)
            .await?;
        metrics::gauge!("sluice_backup_last_verify_ok", &[("tenant", t.name.to_string())]).set(if v.ok {
            1.0
        } else {
            0.0
        });
    }
    Ok(v)
}

async fn check(
    svc: &Services,
    b: &Backups,
    tenant_id: TenantId,
    backup: uuid::Uuid,
    progress: ProgressFn<'_>,
) -> Result<Verified, BackupError> {
    let staged = restore::stage(svc, b, tenant_id, backup, progress).await?;
    let m = &staged.manifest;
    let mut problems = Vec::new();

    // Objects: every entry's content is staged (so checked) with its sha256.
    let objects = staged.objects()?;
    for o in &objects {
        match m.content(&o.content_id) {
            Some(c) if c.plain_sha256 == o.sha256 && c.plain_bytes == o.size => {}
            Some(_) => problems.push(format!("object {}: content differs from its index entry", o.key)),
            None => problems.push(format!("object {}: its content is not in the manifest", o.key)),
        }
    }

    // Database: restore into scratch, compare, drop.
    progress(Progress::Phase { name: "scratch restore", total_bytes: m.part("db.dump").map(|p| p.plain_bytes) });
    // The restore runs under the tenant's roles when the tenant exists, else
    // under a scratch role made for it.
    let tenant = tenants::get_by_id(&svc.control.client().await?, tenant_id).await.ok();
    let scratch = format!(
        "{}{}_v{}",
        svc.config.postgres.database_prefix,
        tenant_id.0.simple(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let Some(tenant) = tenant else {
        return Err(BackupError::Conflict(format!(
            "tenant {} no longer exists; verify by restoring the backup as a new tenant",
            m.tenant_name
        )));
    };
    let db_result = compare_database(svc, &tenant, &staged, &scratch).await;
    let _ = svc.pg_admin.drop_database(&scratch).await;
    problems.extend(db_result?);
    let bytes_checked =
        m.parts.iter().map(|p| p.stored_bytes).sum::<u64>() + m.contents.iter().map(|c| c.stored_bytes).sum::<u64>();
    Ok(Verified {
        backup_id: backup,
        ok: problems.is_empty(),
        tables_checked: m.tables.len(),
        objects_checked: objects.len(),
        bytes_checked,
        problems,
        elapsed_ms: 0,
    })
}

async fn compare_database(
    svc: &Services,
    tenant: &Tenant,
    staged: &restore::Staged,
    scratch: &str,
) -> Result<Vec<String>, BackupError> {
    let migrated = !restore::restore_database(svc, tenant, staged, scratch).await?.is_empty();
    let c = svc.pg_admin.connect(Some(scratch)).await.map_err(BackupError::admin)?;
    let got = dump::table_stats(&c).await?;
    let mut problems = Vec::new();
    for want in &staged.manifest.tables {
        match got.iter().find(|g| g.schema == want.schema && g.table == want.table) {
            None => problems.push(format!("table {}.{} is missing after the restore", want.schema, want.table)),
            Some(g) if g.rows != want.rows => problems.push(format!(
                "table {}.{}: {} rows restored, {} backed up",
                want.schema, want.table, g.rows, want.rows
            )),
            Some(g) if g.content_hash != want.content_hash => {
                problems.push(format!("table {}.{}: content hash differs", want.schema, want.table))
            }
            Some(_) => {}
        }
    }
    // Tables a newer template migration made are expected.
    for g in got.iter().filter(|_| !migrated) {
        if !staged.manifest.tables.iter().any(|w| w.schema == g.schema && w.table == g.table) {
            problems.push(format!("table {}.{} appeared in the restore only", g.schema, g.table));
        }
    }
    Ok(problems)
}
