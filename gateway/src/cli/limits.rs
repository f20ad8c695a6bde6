//! `sluice tenant quota|suspend|resume|usage` and `sluice key limits`: what an
//! operator changes on a running tenant (through `control::operator`).

use serde_json::json;

use super::commands::{print, tenant_name};
use super::{Cli, QuotaCmd};
use crate::control::audit::Actor;
use crate::control::quotas::{self, KeyLimits, KeyLimitsPatch, Quotas};
use crate::control::{operator, tenants};
use crate::services::Services;
use crate::usage::{self, Report};

fn quotas_text(q: &Quotas) -> String {
    serde_json::to_value(q)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .map(|m| m.iter().map(|(k, v)| format!("  {k:<22} {v}")).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

pub(super) async fn quota_cmd(cli: &Cli, svc: &Services, cmd: &QuotaCmd) -> anyhow::Result<()> {
    match cmd {
        QuotaCmd::Show { name } => {
            let name = tenant_name(name)?;
            let c = svc.control.client().await?;
            let t = tenants::get_by_name(&c, &name).await?;
            let q = quotas::get(&c, t.id).await?;
            print(cli, json!({ "quotas": q }), || format!("quotas of {name}\n{}", quotas_text(&q)));
        }
        QuotaCmd::Set { name, patch } => {
            let name = tenant_name(name)?;
            let q = operator::set_quotas(svc, &name, patch, &Actor::Cli, None).await?;
            print(cli, json!({ "quotas": q }), || format!("quotas of {name} now\n{}", quotas_text(&q)));
        }
    }
    Ok(())
}

pub(super) async fn suspend_cmd(
    cli: &Cli,
    svc: &Services,
    name: &str,
    suspend: bool,
    reason: &str,
) -> anyhow::Result<()> {
    let name = tenant_name(name)?;
    let t = operator::set_suspended(svc, &name, suspend, reason, &Actor::Cli, None).await?;
    print(cli, json!({ "tenant": t }), || format!("tenant {name} is {}", t.status.as_str()));
    Ok(())
}

fn report_text(r: &Report) -> String {
    let mut out: Vec<String> = r
        .resources
        .iter()
        .map(|x| {
            let name =
                serde_json::to_value(x.resource).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            format!(
                "  {name:<14} {:>16} of {:>16}{}",
                x.used,
                x.limit,
                if x.full { "  FULL: writes refused" } else { "" }
            )
        })
        .collect();
    out.push(format!("  objects        {:>16}", r.object_count));
    out.push(format!(
        "  measured {}  recounted {}",
        r.measured_at.as_deref().unwrap_or("never"),
        r.reconciled_at.as_deref().unwrap_or("never")
    ));
    out.join("\n")
}

pub(super) async fn usage_cmd(cli: &Cli, svc: &Services, name: &str, measure: bool) -> anyhow::Result<()> {
    let name = tenant_name(name)?;
    let t = tenants::get_by_name(&svc.control.client().await?, &name).await?;
    if measure {
        usage::meter::measure_tenant(svc, &svc.usage, &t, true).await?;
    }
    let r = usage::report(svc, t.id).await?;
    print(cli, json!(r), || format!("usage of {name}\n{}", report_text(&r)));
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn key_limits_cmd(
    cli: &Cli,
    svc: &Services,
    tenant: &str,
    prefix: &str,
    set: [Option<i32>; 4],
    clear: &[String],
) -> anyhow::Result<()> {
    let name = tenant_name(tenant)?;
    let fields = ["http_rps", "http_burst", "query_rps", "query_burst"];
    if let Some(bad) = clear.iter().find(|c| !fields.contains(&c.as_str())) {
        anyhow::bail!("--clear {bad}: expected one of {}", fields.join(", "));
    }
    let pick = |i: usize| -> Option<Option<i32>> {
        if clear.iter().any(|c| c == fields[i]) { Some(None) } else { set[i].map(Some) }
    };
    let patch = KeyLimitsPatch { http_rps: pick(0), http_burst: pick(1), query_rps: pick(2), query_burst: pick(3) };
    let changing = set.iter().any(Option::is_some) || !clear.is_empty();
    let limits: KeyLimits = if changing {
        operator::set_key_limits(svc, &name, prefix, &patch, &Actor::Cli, None).await?
    } else {
        operator::key_limits(svc, &name, prefix).await?
    };
    print(cli, json!({ "limits": limits }), || {
        let show = |v: Option<i32>| v.map_or_else(|| "tenant's".to_string(), |v| v.to_string());
        format!(
            "key {prefix}: http_rps {} http_burst {} query_rps {} query_burst {}",
            show(limits.http_rps),
            show(limits.http_burst),
            show(limits.query_rps),
            show(limits.query_burst)
        )
    });
    Ok(())
}
