//! Retention runs: feed a tenant's objects, in batches, to its active retention
//! plugin and delete what it says to delete.
//!
//! A run is recorded in `retention_runs` (running → succeeded | capped |
//! failed). Every deletion is audited (`retention.delete`, with the plugin's
//! reason). A dry run reports what would go and deletes nothing. A run stops
//! at `retention.max_deletions_per_run` (status `capped`) and at the first
//! plugin failure (status `failed`). The [`scheduler`] starts a run for each
//! tenant with an active retention plugin every interval — the tenant's own
//! ([`schedule`]) or `retention.interval_s` — on one instance at a time (an
//! advisory lock guards the claim).

pub mod schedule;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;
use uuid::Uuid;

use crate::control::audit::{self, Actor, AuditEvent};
use crate::control::tenants::Tenant;
use crate::control::{ControlError, tenants};
use crate::error::{ClientError, ErrorKind};
use crate::plugins::bindings::types::{Item, ItemKind, MetadataEntry};
use crate::plugins::runtime::RetentionVerdict;
use crate::plugins::{PluginError, PluginKind};
use crate::services::Services;
use crate::upstream::s3::{Conditions, ListQuery, Read, S3Error};

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("tenant {0} has no active retention plugin")]
    NoPlugin(String),
    #[error("a retention run for tenant {0} started moments ago")]
    Busy(String),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Storage(#[from] S3Error),
    #[error(transparent)]
    Hold(#[from] crate::backup::hold::HoldError),
}

impl ClientError for RetentionError {
    fn kind(&self) -> ErrorKind {
        match self {
            RetentionError::NoPlugin(_) => ErrorKind::NotFound,
            RetentionError::Busy(_) => ErrorKind::Conflict,
            RetentionError::Plugin(e) => e.kind(),
            RetentionError::Control(e) => e.kind(),
            RetentionError::Storage(_) | RetentionError::Hold(_) => ErrorKind::Upstream,
        }
    }
}

/// One object the plugin chose.
#[derive(Debug, Clone, Serialize)]
pub struct Chosen {
    pub key: String,
    pub reason: String,
}

/// What a run did (or, dry, would do).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub id: Uuid,
    pub tenant: String,
    pub plugin: String,
    pub dry_run: bool,
    /// `succeeded`, `capped` or `failed`.
    pub status: &'static str,
    pub scanned: u64,
    pub deleted: u64,
    /// Deleted (or, dry, to be deleted) objects with the plugin's reasons.
    pub items: Vec<Chosen>,
    pub error: Option<String>,
}

/// How a run was started.
pub struct RunOptions<'a> {
    pub dry_run: bool,
    pub actor: &'a Actor,
    pub request_id: Option<&'a str>,
    /// A `running` row claimed beforehand (the scheduler's); else one is made.
    pub run_id: Option<Uuid>,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Run the tenant's retention plugin once. `progress` gets the running count
/// of scanned items.
pub async fn run(
    svc: &Services,
    tenant: &Tenant,
    opts: &RunOptions<'_>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<RunReport, RetentionError> {
    let active = svc
        .plugins
        .active(tenant.id, tenant.name.as_str(), PluginKind::Retention)
        .await?
        .ok_or_else(|| RetentionError::NoPlugin(tenant.name.to_string()))?;
    let id = opts.run_id.unwrap_or_else(Uuid::new_v4);
    if opts.run_id.is_none() {
        let c = svc.control.client().await?;
        c.execute(
            "INSERT INTO retention_runs (id, tenant_id, dry_run, status) VALUES ($1, $2, $3, 'running')",
            &[&id, &tenant.id.0, &opts.dry_run],
        )
        .await
        .map_err(ControlError::from)?;
    }
    let mut report = RunReport {
        id,
        tenant: tenant.name.to_string(),
        plugin: active.label(),
        dry_run: opts.dry_run,
        status: "succeeded",
        scanned: 0,
        deleted: 0,
        items: Vec::new(),
        error: None,
    };
    let result = scan(svc, tenant, opts, &active, &mut report, progress).await;
    if let Err(e) = &result {
        report.status = "failed";
        report.error = Some(e.to_string());
    }
    let c = svc.control.client().await?;
    c.execute(
        "UPDATE retention_runs SET status = $2, scanned = $3, deleted = $4, error = $5, finished_at = now() WHERE id = $1",
        &[&id, &report.status, &(report.scanned as i64), &(report.deleted as i64), &report.error],
    )
    .await
    .map_err(ControlError::from)?;
    audit::record(
        &c,
        &AuditEvent {
            tenant_id: Some(tenant.id),
            tenant_name: Some(tenant.name.as_str()),
            actor: opts.actor,
            action: "retention.run",
            target: Some(&active.label()),
            ok: result.is_ok(),
            details: json!({ "run": id, "dry_run": opts.dry_run, "status": report.status, "scanned": report.scanned,
                         "deleted": report.deleted, "error": report.error }),
            request_id: opts.request_id,
        },
    )
    .await?;
    Ok(report)
}

async fn scan(
    svc: &Services,
    tenant: &Tenant,
    opts: &RunOptions<'_>,
    active: &std::sync::Arc<crate::plugins::Active>,
    report: &mut RunReport,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), RetentionError> {
    let cap = svc.config.retention.max_deletions_per_run;
    let batch = i32::try_from(svc.config.retention.batch_size).unwrap_or(100);
    let now = now_ms();
    let mut cursor: Option<String> = None;
    loop {
        let q = ListQuery { prefix: "", delimiter: None, limit: batch, cursor: cursor.as_deref(), start_after: None };
        let page = svc.s3.list_objects(&tenant.bucket, &q).await?;
        cursor = page.next_cursor;
        let mut items = Vec::new();
        for o in page.objects {
            let info = match svc.s3.head_object(&tenant.bucket, &o.key, Conditions::default()).await {
                Ok(Read::Found(info)) => info,
                // Gone since the listing, or (without conditions) never: nothing to decide.
                Ok(Read::NotModified { .. }) | Err(S3Error::NotFound) => continue,
                Err(e) => return Err(e.into()),
            };
            let modified = info.last_modified.and_then(|t| t.to_millis().ok()).unwrap_or(0);
            let mut metadata: Vec<MetadataEntry> =
                info.metadata.into_iter().map(|(key, value)| MetadataEntry { key, value }).collect();
            metadata.sort_by(|a, b| a.key.cmp(&b.key));
            items.push(Item {
                kind: ItemKind::Object,
                key: o.key,
                size: info.length,
                created_ms: None,
                modified_ms: modified,
                content_type: info.content_type,
                metadata,
            });
        }
        if items.is_empty() {
            if cursor.is_none() {
                break;
            }
            continue;
        }
        report.scanned += items.len() as u64;
        let keys: Vec<String> = items.iter().map(|i| i.key.clone()).collect();
        let verdicts = svc.plugins.decide(active, now, items).await?;
        for (key, v) in keys.into_iter().zip(verdicts) {
            let RetentionVerdict::Delete(reason) = v else { continue };
            // A dry run lists everything that would go; a real run stops at the cap.
            if !opts.dry_run && report.deleted >= cap {
                report.status = "capped";
                progress(report.scanned);
                return Ok(());
            }
            if !opts.dry_run {
                crate::backup::hold::before_write(svc, tenant.id, &tenant.bucket, &key).await?;
                svc.s3.delete_object(&tenant.bucket, &key).await?;
                // A control-plane connection per record, not across the
                // object store's deletes.
                audit::record(
                    &svc.control.client().await?,
                    &AuditEvent {
                        tenant_id: Some(tenant.id),
                        tenant_name: Some(tenant.name.as_str()),
                        actor: opts.actor,
                        action: "retention.delete",
                        target: Some(&key),
                        ok: true,
                        details: json!({ "run": report.id, "plugin": active.label(), "reason": reason }),
                        request_id: opts.request_id,
                    },
                )
                .await?;
            }
            report.deleted += 1;
            report.items.push(Chosen { key, reason });
        }
        progress(report.scanned);
        if cursor.is_none() {
            break;
        }
    }
    Ok(())
}

/// Start a run for every tenant whose active retention plugin has not run for
/// its interval (the tenant's schedule, else `retention.interval_s`), checking
/// every minute (or the default interval, if shorter), until shutdown.
pub async fn scheduler(svc: Services, mut shutdown: watch::Receiver<bool>) {
    let default = Duration::from_secs(svc.config.retention.interval_s);
    let minute = Duration::from_secs(60);
    let tick = if default.is_zero() { minute } else { default.clamp(Duration::from_secs(1), minute) };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        if let Err(e) = run_due(&svc, default).await {
            tracing::warn!(error = %e, "retention scheduler pass failed");
        }
    }
}

/// The interval that applies to a tenant, in SQL: its schedule or `$1`.
const INTERVAL_SQL: &str = "make_interval(secs => COALESCE(
    (SELECT s.interval_s FROM retention_schedules s WHERE s.tenant_id = p.tenant_id)::float8, $1))";

/// One scheduler pass: run every tenant that is due (`default` for tenants
/// without a schedule of their own). Returns the tenants run.
pub async fn run_due(svc: &Services, default: Duration) -> Result<Vec<uuid::Uuid>, RetentionError> {
    let mut ran = Vec::new();
    let due: Vec<(uuid::Uuid, f64)> = {
        let c = svc.control.client().await?;
        c.query(
            &format!(
                "SELECT p.tenant_id, EXTRACT(EPOCH FROM {INTERVAL_SQL})::float8
                 FROM plugins p JOIN tenants t ON t.id = p.tenant_id
                 WHERE p.kind = 'retention' AND p.active_version IS NOT NULL AND t.status = 'active'
                   AND {INTERVAL_SQL} > interval '0'
                   AND NOT EXISTS (SELECT 1 FROM retention_runs r WHERE r.tenant_id = p.tenant_id
                                   AND r.started_at > now() - {INTERVAL_SQL})"
            ),
            &[&default.as_secs_f64()],
        )
        .await
        .map_err(ControlError::from)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    };
    for (tenant_id, interval_s) in due {
        let mut c = svc.control.client().await?;
        // Claim: one instance per tenant and interval.
        let tx = c.transaction().await.map_err(ControlError::from)?;
        let claimed: bool = tx
            .query_one(
                "SELECT pg_try_advisory_xact_lock(hashtextextended('sluice-retention:' || $1::uuid::text, 0))
                    AND NOT EXISTS (SELECT 1 FROM retention_runs r WHERE r.tenant_id = $1
                                    AND r.started_at > now() - make_interval(secs => $2))",
                &[&tenant_id, &interval_s],
            )
            .await
            .map_err(ControlError::from)?
            .get(0);
        if !claimed {
            continue;
        }
        let tenant = tenants::get_by_id(&tx, crate::ids::TenantId(tenant_id)).await?;
        let run_id = Uuid::new_v4();
        tx.execute(
            "INSERT INTO retention_runs (id, tenant_id, dry_run, status) VALUES ($1, $2, false, 'running')",
            &[&run_id, &tenant_id],
        )
        .await
        .map_err(ControlError::from)?;
        tx.commit().await.map_err(ControlError::from)?;
        drop(c);
        let opts = RunOptions { dry_run: false, actor: &Actor::Cli, request_id: None, run_id: Some(run_id) };
        match run(svc, &tenant, &opts, &|_| {}).await {
            Ok(r) => {
                tracing::info!(tenant = %tenant.name, status = r.status, scanned = r.scanned, deleted = r.deleted, "scheduled retention run")
            }
            Err(e) => tracing::warn!(tenant = %tenant.name, error = %e, "scheduled retention run failed"),
        }
        ran.push(tenant_id);
    }
    Ok(ran)
}
