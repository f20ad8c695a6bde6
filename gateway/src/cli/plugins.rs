//! `sluice plugin …` and `sluice retention run`: the same operations as the
//! tenant admin API, run by the operator (audited as actor `cli`).

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::commands::{print, tenant_name};
use super::{Cli, PluginCmd, RetentionCmd};
use crate::control::audit::Actor;
use crate::control::tenants::{self, Tenant};
use crate::plugins::registry;
use crate::plugins::runtime::Who;
use crate::retention::{self, RunOptions};
use crate::services::Services;

async fn tenant(svc: &Services, raw: &str) -> anyhow::Result<Tenant> {
    let c = svc.control.client().await.context("connect to control plane")?;
    Ok(tenants::get_by_name(&c, &tenant_name(raw)?).await?)
}

fn config(raw: Option<&String>) -> anyhow::Result<Option<Value>> {
    raw.map(|c| serde_json::from_str(c).context("--plugin-config is not valid JSON")).transpose()
}

pub async fn plugin_cmd(cli: &Cli, cmd: &PluginCmd, svc: &Services) -> anyhow::Result<()> {
    let actor = Actor::Cli;
    match cmd {
        PluginCmd::Upload { tenant: t, kind, file, activate, plugin_config: cfg } => {
            let t = tenant(svc, t).await?;
            let bytes = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
            let who = Who { tenant_name: t.name.as_str(), actor: &actor, request_id: None };
            let out = svc.plugins.upload(t.id, &who, *kind, bytes.into(), *activate, config(cfg.as_ref())?).await?;
            print(cli, out.clone(), || {
                format!(
                    "{kind} plugin version {} stored for {} (sha256 {}){}",
                    out["version"],
                    t.name,
                    out["sha256"].as_str().unwrap_or_default(),
                    if *activate { ", active" } else { "" }
                )
            });
        }
        PluginCmd::List { tenant: t, kind } => {
            let t = tenant(svc, t).await?;
            let info = registry::list(&svc.control.client().await?, t.id, *kind).await?;
            print(cli, json!(info), || {
                let mut s = format!(
                    "{kind} plugins of {} (active: {})\n",
                    t.name,
                    info.active_version.map_or("none".into(), |v| v.to_string())
                );
                for v in &info.versions {
                    s.push_str(&format!(
                        "{} v{:<4} {} {:>9} bytes  {}  {}\n",
                        if v.active { "*" } else { " " },
                        v.version,
                        &v.sha256[..12.min(v.sha256.len())],
                        v.size_bytes,
                        v.created_at,
                        v.created_by
                    ));
                }
                s.trim_end().to_owned()
            });
        }
        PluginCmd::Activate { tenant: t, kind, version, plugin_config: cfg } => {
            let t = tenant(svc, t).await?;
            let who = Who { tenant_name: t.name.as_str(), actor: &actor, request_id: None };
            let out = svc.plugins.activate(t.id, &who, *kind, *version, config(cfg.as_ref())?).await?;
            print(cli, out, || format!("{kind} plugin version {version} is active for {}", t.name));
        }
        PluginCmd::Deactivate { tenant: t, kind } => {
            let t = tenant(svc, t).await?;
            let who = Who { tenant_name: t.name.as_str(), actor: &actor, request_id: None };
            let out = svc.plugins.deactivate(t.id, &who, *kind).await?;
            print(cli, out, || format!("{kind} plugin is off for {}", t.name));
        }
        PluginCmd::Delete { tenant: t, kind, version } => {
            let t = tenant(svc, t).await?;
            let who = Who { tenant_name: t.name.as_str(), actor: &actor, request_id: None };
            svc.plugins.delete_version(t.id, &who, *kind, *version).await?;
            print(cli, json!({ "deleted": version }), || format!("{kind} plugin version {version} deleted"));
        }
    }
    Ok(())
}

pub async fn retention_cmd(cli: &Cli, cmd: &RetentionCmd, svc: &Services) -> anyhow::Result<()> {
    let (t, dry_run) = match cmd {
        RetentionCmd::Run { tenant, dry_run } => (tenant, dry_run),
        RetentionCmd::Schedule { tenant: t, interval_s, default } => {
            let t = tenant(svc, t).await?;
            let mut c = svc.control.client().await.context("connect to control plane")?;
            if interval_s.is_some() || *default {
                retention::schedule::set(&mut c, &t, *interval_s, &Actor::Cli, None).await?;
            }
            let s = retention::schedule::get(&c, &t, svc.config.retention.interval_s).await?;
            print(cli, json!(s), || match s.interval_s {
                0 => format!("{}: no scheduled retention runs ({})", t.name, s.source),
                n => format!("{}: retention runs every {n} s ({})", t.name, s.source),
            });
            return Ok(());
        }
    };
    let t = tenant(svc, t).await?;
    let bar = if cli.json { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    if let Ok(style) = ProgressStyle::with_template("{spinner} retention {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let opts = RunOptions { dry_run: *dry_run, actor: &Actor::Cli, request_id: None, run_id: None };
    let progress = |n: u64| bar.set_message(format!("{n} objects scanned"));
    let report = retention::run(svc, &t, &opts, &progress).await;
    bar.finish_and_clear();
    let report = report?;
    print(cli, json!(report), || {
        let verb = if report.dry_run { "would delete" } else { "deleted" };
        let mut s = format!(
            "retention run {} for {} ({}): {}; scanned {}, {verb} {}",
            report.id, report.tenant, report.plugin, report.status, report.scanned, report.deleted
        );
        for c in &report.items {
            s.push_str(&format!("\n  {verb} {}: {}", c.key, c.reason));
        }
        if let Some(e) = &report.error {
            s.push_str(&format!("\n  error: {e}"));
        }
        s
    });
    if report.status == "failed" {
        anyhow::bail!("retention run failed");
    }
    Ok(())
}
