//! What each subcommand does. Commands talk to the control plane and the data
//! services directly, as the operator, and audit as actor `cli`.

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::{Cli, Command, ConfigCmd, KeyCmd, MigrateCmd, TenantCmd};
use crate::config::{self, Config};
use crate::control::audit::Actor;
use crate::control::migrate::{self, MigrationSet, RunAs};
use crate::control::provision::{self, CreateOptions};
use crate::control::{keys, quotas, tenants};
use crate::ids::TenantName;
use crate::services::Services;

fn load(cli: &Cli) -> anyhow::Result<Config> {
    config::load_file(&cli.config).map_err(anyhow::Error::new)
}

pub(super) fn services(cli: &Cli) -> anyhow::Result<Services> {
    let cfg = load(cli)?;
    crate::telemetry::init_logging(&cfg.log);
    Services::new(cfg).context("set up clients")
}

pub(super) fn print(cli: &Cli, value: serde_json::Value, human: impl FnOnce() -> String) {
    if cli.json {
        println!("{value}");
    } else {
        println!("{}", human());
    }
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Serve(args) => {
            let svc = services(&cli)?;
            let addr = args.http_addr.clone().unwrap_or_else(|| svc.config.server.http_addr.clone());
            crate::server::run(svc, &addr).await?;
            Ok(())
        }
        Command::Openapi => {
            print!("{}", crate::frontend::http::openapi::document_text());
            Ok(())
        }
        Command::Config(ConfigCmd::Schema) => {
            print!("{}", config::schema::generate());
            Ok(())
        }
        Command::Config(ConfigCmd::Check { file }) => match config::load_file(file) {
            Ok(_) => {
                print(&cli, json!({ "ok": true, "file": file }), || format!("{}: ok", file.display()));
                Ok(())
            }
            Err(e) => {
                if cli.json {
                    println!("{}", json!({ "ok": false, "file": file, "problems": e.problems() }));
                }
                Err(e.into())
            }
        },
        Command::Migrate(cmd) => migrate_cmd(&cli, cmd).await,
        Command::Tenant(cmd) => tenant_cmd(&cli, cmd).await,
        Command::Key(cmd) => key_cmd(&cli, cmd).await,
        Command::S3(super::S3Cmd::Credentials(cmd)) => super::s3::credentials_cmd(&cli, cmd).await,
        Command::Plugin(cmd) => super::plugins::plugin_cmd(&cli, cmd, &services(&cli)?).await,
        Command::Retention(cmd) => super::plugins::retention_cmd(&cli, cmd, &services(&cli)?).await,
        Command::Backup(super::BackupCmd::Keygen) => super::backup::keygen(&cli),
        Command::Backup(cmd) => super::backup::backup_cmd(&cli, cmd, &services(&cli)?).await,
    }
}

async fn migrate_cmd(cli: &Cli, cmd: &MigrateCmd) -> anyhow::Result<()> {
    let svc = services(cli)?;
    let mut c = svc.control.client().await.context("connect to control plane")?;
    match cmd {
        MigrateCmd::Up { control_only } => {
            let applied = migrate::up(&mut c, MigrationSet::Control, &RunAs::default()).await?;
            let names: Vec<String> = applied.iter().map(|m| format!("{:04}_{}", m.version, m.name)).collect();
            let mut tenant_report = Vec::new();
            if !control_only {
                let list = tenants::list(&c).await?;
                let bar = progress(cli, list.len() as u64, "migrating tenant databases");
                for t in list.iter().filter(|t| t.status == tenants::TenantStatus::Active) {
                    // Tenants created with name-derived database names get opaque ones.
                    let renamed = crate::control::provision::make_names_opaque(&svc, t).await?;
                    let t = &tenants::get_by_id(&c, t.id).await?;
                    let mut tc = svc.pg_admin.connect(Some(&t.db_name)).await?;
                    let ran = migrate::up(&mut tc, MigrationSet::Tenant, &RunAs { role: Some(t.db_role.clone()) })
                        .await
                        .with_context(|| format!("migrate tenant {}", t.name))?;
                    tenant_report.push(json!({ "tenant": t.name, "applied": ran.len(), "renamed": renamed }));
                    bar.inc(1);
                }
                bar.finish_and_clear();
            }
            print(cli, json!({ "control_applied": names, "tenants": tenant_report }), || {
                format!(
                    "control plane: {} applied{}; tenant databases migrated: {}",
                    names.len(),
                    if names.is_empty() { String::new() } else { format!(" ({})", names.join(", ")) },
                    tenant_report.len()
                )
            });
        }
        MigrateCmd::Down { steps, all } => {
            let n = if *all { None } else { Some(*steps) };
            let rolled = migrate::down(&mut c, MigrationSet::Control, &RunAs::default(), n).await?;
            let names: Vec<String> = rolled.iter().map(|m| format!("{:04}_{}", m.version, m.name)).collect();
            print(cli, json!({ "rolled_back": names }), || format!("rolled back: {}", names.join(", ")));
        }
        MigrateCmd::Status => {
            let st = migrate::status(&mut c, MigrationSet::Control).await?;
            print(cli, json!({ "control": st }), || {
                st.iter()
                    .map(|m| {
                        let state = if m.changed {
                            "CHANGED since applied".to_string()
                        } else if m.applied {
                            format!("applied {}", m.applied_at.clone().unwrap_or_default())
                        } else {
                            "pending".into()
                        };
                        format!("{:04}_{:<30} {state}", m.version, m.name)
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(())
}

fn progress(cli: &Cli, len: u64, msg: &'static str) -> ProgressBar {
    if cli.json || len == 0 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_message(msg);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

pub(super) fn tenant_name(raw: &str) -> anyhow::Result<TenantName> {
    Ok(TenantName::parse(raw)?)
}

async fn tenant_cmd(cli: &Cli, cmd: &TenantCmd) -> anyhow::Result<()> {
    let svc = services(cli)?;
    crate::server::prepare_control_plane(&svc).await?;
    match cmd {
        TenantCmd::Create { name } => {
            let name = tenant_name(name)?;
            let created = provision::create_tenant(&svc, &name, &Actor::Cli, &CreateOptions::default()).await?;
            print(cli, json!(created), || {
                format!(
                    "created tenant {} in {} ms\n  database: {}  role: {}  bucket: {}\n  admin key:   {}\n  service key: {}\n(keys are shown once; store them now)",
                    created.tenant.name,
                    created.elapsed_ms,
                    created.tenant.db_name,
                    created.tenant.db_role,
                    created.tenant.bucket,
                    created.admin_key.key,
                    created.service_key.key
                )
            });
        }
        TenantCmd::List => {
            let list = tenants::list(&svc.control.client().await?).await?;
            print(cli, json!({ "tenants": list }), || {
                if list.is_empty() {
                    return "no tenants".into();
                }
                list.iter()
                    .map(|t| format!("{:<40} {:<12} {}", t.name, t.status.as_str(), t.created_at))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        TenantCmd::Show { name } => {
            let name = tenant_name(name)?;
            let c = svc.control.client().await?;
            let t = tenants::get_by_name(&c, &name).await?;
            let q = quotas::get(&c, t.id).await?;
            let k = keys::list(&c, t.id).await?;
            print(cli, json!({ "tenant": t, "quotas": q, "keys": k }), || {
                format!(
                    "tenant {} ({}) {}\n  database {}  role {}  bucket {}\n  keys: {}",
                    t.name,
                    t.id,
                    t.status.as_str(),
                    t.db_name,
                    t.db_role,
                    t.bucket,
                    k.iter()
                        .map(|k| format!(
                            "{}({}{})",
                            k.prefix,
                            k.role.as_str(),
                            if k.revoked_at.is_some() { ", revoked" } else { "" }
                        ))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            });
        }
        TenantCmd::Delete { name, yes } => {
            let name = tenant_name(name)?;
            if !yes {
                bail!("deleting tenant {name} removes its database, bucket and keys for good; pass --yes to confirm");
            }
            let spinner = if cli.json { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
            spinner.set_message(format!("deleting tenant {name}"));
            spinner.enable_steady_tick(std::time::Duration::from_millis(120));
            let deleted = provision::delete_tenant(&svc, &name, &Actor::Cli, None).await;
            spinner.finish_and_clear();
            let deleted = deleted?;
            print(cli, json!(deleted), || {
                format!(
                    "deleted tenant {} ({} objects, {} redis keys) in {} ms",
                    deleted.name, deleted.objects_deleted, deleted.redis_keys_deleted, deleted.elapsed_ms
                )
            });
        }
        TenantCmd::Quota(q) => super::limits::quota_cmd(cli, &svc, q).await?,
        TenantCmd::Suspend { name, reason } => super::limits::suspend_cmd(cli, &svc, name, true, reason).await?,
        TenantCmd::Resume { name } => super::limits::suspend_cmd(cli, &svc, name, false, "").await?,
        TenantCmd::Usage { name, measure } => super::limits::usage_cmd(cli, &svc, name, *measure).await?,
    }
    Ok(())
}

async fn key_cmd(cli: &Cli, cmd: &KeyCmd) -> anyhow::Result<()> {
    let svc = services(cli)?;
    crate::server::prepare_control_plane(&svc).await?;
    match cmd {
        KeyCmd::Create { tenant, role, label } => {
            let name = tenant_name(tenant)?;
            let created =
                crate::frontend::http::tenant::create_key_audited(&svc, &name, *role, label, &Actor::Cli, "cli")
                    .await?;
            print(cli, json!(created), || {
                format!(
                    "created {} key {} for {name}:\n  {}\n(shown once)",
                    role.as_str(),
                    created.info.prefix,
                    created.key
                )
            });
        }
        KeyCmd::List { tenant } => {
            let name = tenant_name(tenant)?;
            let c = svc.control.client().await?;
            let t = tenants::get_by_name(&c, &name).await?;
            let list = keys::list(&c, t.id).await?;
            print(cli, json!({ "keys": list }), || {
                list.iter()
                    .map(|k| {
                        format!(
                            "{}  {:<8} {:<20} created {}{}",
                            k.prefix,
                            k.role.as_str(),
                            k.label,
                            k.created_at,
                            k.revoked_at.as_ref().map(|r| format!(", revoked {r}")).unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        KeyCmd::Revoke { tenant, prefix } => {
            let name = tenant_name(tenant)?;
            crate::frontend::http::tenant::revoke_key_audited(&svc, &name, prefix, &Actor::Cli, "cli").await?;
            print(cli, json!({ "revoked": prefix }), || format!("revoked key {prefix}"));
        }
        KeyCmd::Limits { tenant, prefix, http_rps, http_burst, query_rps, query_burst, clear } => {
            let set = [*http_rps, *http_burst, *query_rps, *query_burst];
            super::limits::key_limits_cmd(cli, &svc, tenant, prefix, set, clear).await?;
        }
    }
    Ok(())
}
