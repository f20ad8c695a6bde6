//! `sluice backup …`: the same operations as the backup API, run by the
//! operator (audited as actor `cli`), with progress bars (bytes and ETA)
//! on stderr.

use std::sync::Mutex;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::commands::{print, tenant_name};
use super::{BackupCmd, Cli};
use crate::backup::{self, Progress, catalog, create, purge, restore, verify};
use crate::control::audit::Actor;
use crate::control::tenants::{self, Tenant};
use crate::services::Services;

async fn tenant(svc: &Services, raw: &str) -> anyhow::Result<Tenant> {
    let c = svc.control.client().await.context("connect to control plane")?;
    Ok(tenants::get_by_name(&c, &tenant_name(raw)?).await?)
}

/// One bar per phase: bytes with ETA when the total is known, a spinner otherwise.
struct Bars {
    hidden: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    fn new(cli: &Cli) -> Self {
        Self { hidden: cli.json, bar: Mutex::new(None) }
    }

    fn on(&self, p: Progress) {
        if self.hidden {
            return;
        }
        let mut guard = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        match p {
            Progress::Phase { name, total_bytes } => {
                if let Some(old) = guard.take() {
                    old.finish();
                }
                let bar = match total_bytes {
                    Some(n) => {
                        let b = ProgressBar::new(n);
                        if let Ok(s) = ProgressStyle::with_template(
                            "{msg:>16} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                        ) {
                            b.set_style(s.progress_chars("=> "));
                        }
                        b
                    }
                    None => {
                        let b = ProgressBar::new_spinner();
                        if let Ok(s) = ProgressStyle::with_template("{msg:>16} {spinner} {bytes} {elapsed}") {
                            b.set_style(s);
                        }
                        b.enable_steady_tick(std::time::Duration::from_millis(200));
                        b
                    }
                };
                bar.set_message(name);
                *guard = Some(bar);
            }
            Progress::Bytes(n) => {
                if let Some(b) = guard.as_ref() {
                    b.set_position(n);
                }
            }
        }
    }

    fn done(&self) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            b.finish_and_clear();
        }
    }
}

fn mib(n: i64) -> String {
    format!("{:.1} MiB", n as f64 / 1_048_576.0)
}

/// `sluice backup keygen` needs no config.
pub fn keygen(cli: &Cli) -> anyhow::Result<()> {
    let (identity, public) = backup::crypt::keygen();
    let identity = crate::secret::ExposeSecret::expose_secret(&identity).to_owned();
    print(cli, json!({ "operator_key": identity, "public_key": public }), || {
        format!(
            "# Put this in backup.operator_key (SLUICE_BACKUP__OPERATOR_KEY); keep a copy offline.\n{identity}\n# public key: {public}"
        )
    });
    Ok(())
}

pub async fn backup_cmd(cli: &Cli, cmd: &BackupCmd, svc: &Services) -> anyhow::Result<()> {
    let b = backup::require(svc)?;
    let actor = Actor::Cli;
    let bars = Bars::new(cli);
    let progress = |p: Progress| bars.on(p);
    match cmd {
        BackupCmd::Create { tenant: t } => {
            let t = tenant(svc, t).await?;
            let opts = create::Options {
                trigger: create::Trigger::Manual,
                actor: &actor,
                request_id: None,
                progress: &progress,
                id: None,
            };
            let row = create::run(svc, b, &t, &opts).await;
            bars.done();
            let row = row?;
            print(cli, json!(row), || {
                format!(
                    "backup {} of {} complete: database {}, {} objects ({}), uploaded {}, stored {}",
                    row.id,
                    t.name,
                    mib(row.db_bytes),
                    row.object_count,
                    mib(row.object_bytes),
                    mib(row.uploaded_bytes),
                    mib(row.stored_bytes)
                )
            });
        }
        BackupCmd::List { tenant: t, all } => {
            let (id, name) = match tenant(svc, t).await {
                Ok(t) => (t.id, t.name.to_string()),
                Err(live) => match purge::find(svc, t).await {
                    Ok(d) => (crate::ids::TenantId(d.tenant_id), format!("{} (deleted)", d.tenant_name)),
                    Err(_) => return Err(live),
                },
            };
            let rows = catalog::list(&svc.control.client().await?, id, *all).await?;
            print(cli, json!({ "backups": rows }), || {
                let mut s = format!("backups of {name}:\n");
                for r in &rows {
                    s.push_str(&format!(
                        "{} {:<8} {:<8} {}{} db {} objects {} ({}) verified {}\n",
                        r.id,
                        r.status,
                        r.trigger,
                        r.started_at,
                        if r.pinned { " pinned" } else { "" },
                        mib(r.db_bytes),
                        r.object_count,
                        mib(r.object_bytes),
                        match r.verify_ok {
                            Some(true) => "ok",
                            Some(false) => "FAILED",
                            None => "never",
                        }
                    ));
                }
                s.trim_end().to_owned()
            });
        }
        BackupCmd::Show { id } => {
            let row = catalog::get(&svc.control.client().await?, *id, None).await?;
            let manifest = if row.status == "complete" {
                let (_, m) = catalog::manifest(b, crate::ids::TenantId(row.tenant_id), *id).await?;
                Some(json!({ "format_version": m.format_version, "snapshot_at": m.snapshot_at,
                    "template_migrations": m.template_migrations, "parts": m.parts, "tables": m.tables,
                    "contents": m.contents.len(), "totals": m.totals, "tenant_recipients": m.tenant_recipients }))
            } else {
                None
            };
            let out = json!({ "backup": row, "manifest": manifest });
            print(cli, out.clone(), || serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        BackupCmd::Verify { id } => {
            let v = verify::run(svc, b, *id, &actor, None, &progress).await;
            bars.done();
            let v = v?;
            print(cli, json!(v), || {
                if v.ok {
                    format!(
                        "backup {} verified: {} tables, {} objects, {} checked in {} ms",
                        v.backup_id,
                        v.tables_checked,
                        v.objects_checked,
                        mib(i64::try_from(v.bytes_checked).unwrap_or(i64::MAX)),
                        v.elapsed_ms
                    )
                } else {
                    format!("backup {} FAILED verification:\n  {}", v.backup_id, v.problems.join("\n  "))
                }
            });
            if !v.ok {
                anyhow::bail!("verification failed");
            }
        }
        BackupCmd::Restore { id, as_new, yes } => {
            let mode = match as_new {
                Some(n) => restore::Mode::AsNew(tenant_name(n)?),
                None if *yes => restore::Mode::InPlace,
                None => anyhow::bail!("a restore in place replaces the tenant's data: pass --yes (or --as NAME)"),
            };
            let r = restore::run(svc, b, *id, mode, &actor, None, &progress).await;
            bars.done();
            let r = r?;
            print(cli, json!(r), || {
                let mut s = format!(
                    "restored backup {} into {}: {} tables, {} objects written, {} unchanged, {} deleted; fenced {} ms, {} ms in all",
                    r.backup_id,
                    r.tenant,
                    r.tables,
                    r.objects_written,
                    r.objects_unchanged,
                    r.objects_deleted,
                    r.fenced_ms,
                    r.elapsed_ms
                );
                if let Some(c) = &r.created {
                    s.push_str(&format!(
                        "\nnew tenant {}; keys (shown once):\n  admin   {}\n  service {}",
                        c.tenant.name, c.admin_key.key, c.service_key.key
                    ));
                }
                s
            });
        }
        BackupCmd::Delete { id, force } => {
            let row = catalog::get(&svc.control.client().await?, *id, None).await?;
            let t = tenants::get_by_id(&svc.control.client().await?, crate::ids::TenantId(row.tenant_id)).await?;
            catalog::delete(svc, b, &t, *id, *force, &actor, None).await?;
            print(cli, json!({ "deleted": id }), || format!("backup {id} deleted"));
        }
        BackupCmd::Pin { id, off } => {
            let row = catalog::get(&svc.control.client().await?, *id, None).await?;
            let t = tenants::get_by_id(&svc.control.client().await?, crate::ids::TenantId(row.tenant_id)).await?;
            let row = catalog::set_pinned(svc, &t, *id, !off, &actor, None).await?;
            print(cli, json!(row), || format!("backup {id} {}", if *off { "unpinned" } else { "pinned" }));
        }
        BackupCmd::Deleted => {
            let rows = purge::deleted_tenants(svc).await?;
            print(cli, json!({ "deleted_tenants": rows }), || {
                let mut s = String::from("deleted tenants with backups:\n");
                for d in &rows {
                    s.push_str(&format!(
                        "{} {:<40} {} complete, {} pinned\n",
                        d.tenant_id, d.tenant_name, d.complete, d.pinned
                    ));
                }
                s.trim_end().to_owned()
            });
        }
        BackupCmd::Purge { tenant: t, yes } => {
            let d = purge::find(svc, t).await?;
            if !yes {
                anyhow::bail!(
                    "this removes all {} backups of deleted tenant {} ({}) for good; add --yes",
                    d.complete,
                    d.tenant_name,
                    d.tenant_id
                );
            }
            let out = purge::purge(svc, b, &d, &actor).await?;
            print(cli, json!(out), || {
                format!(
                    "purged deleted tenant {} ({}): {} backups, {} stored objects removed",
                    d.tenant_name,
                    d.tenant_id,
                    out.backups_expired.len(),
                    out.keys_deleted
                )
            });
        }
        BackupCmd::Expire { tenant: t } => {
            let t = tenant(svc, t).await?;
            let Some(_lock) = catalog::TenantLock::try_take(svc, t.id).await? else {
                anyhow::bail!("a backup, restore or expiry of {} is running; retry later", t.name);
            };
            let out = catalog::expire(svc, b, &t, &actor).await?;
            print(cli, json!(out), || {
                format!(
                    "{}: {} backups expired, {} dead runs collected, {} content blobs deleted",
                    t.name,
                    out.backups.len(),
                    out.abandoned.len(),
                    out.content_deleted
                )
            });
        }
        BackupCmd::Settings { tenant: t, interval_s, retain_days, retain_min_count, recipients } => {
            let t = tenant(svc, t).await?;
            let patch = catalog::SettingsPatch {
                interval_s: interval_s.map(Some),
                retain_days: retain_days.map(Some),
                retain_min_count: retain_min_count.map(Some),
                recipients: recipients.as_ref().map(|r| r.iter().filter(|k| !k.is_empty()).cloned().collect()),
            };
            let s = if interval_s.is_none()
                && retain_days.is_none()
                && retain_min_count.is_none()
                && recipients.is_none()
            {
                catalog::settings(svc, &svc.control.client().await?, t.id).await?
            } else {
                catalog::set_settings(svc, &t, &patch, &actor, None).await?
            };
            print(cli, json!(s), || {
                format!(
                    "{}: every {} s, keep {} days (at least {}), recipients: {}",
                    t.name,
                    s.interval_s,
                    s.retain_days,
                    s.retain_min_count,
                    if s.recipients.is_empty() { "none".into() } else { s.recipients.join(", ") }
                )
            });
        }
        BackupCmd::Rewrap => {
            let n = catalog::rewrap_all(b).await?;
            print(cli, json!({ "rewrapped": n }), || format!("{n} tenant data keys re-wrapped"));
        }
        BackupCmd::RunDue => {
            let (backups, verifies) = backup::schedule::run_due(svc).await?;
            print(cli, json!({ "backups": backups, "verifications": verifies }), || {
                format!("{backups} backups and {verifies} verifications run")
            });
        }
        BackupCmd::Keygen => return keygen(cli),
    }
    Ok(())
}
