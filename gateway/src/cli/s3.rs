//! `sluice s3 credentials create|list|revoke`: a tenant's S3 access keys.

use serde_json::json;

use super::commands::{print, services, tenant_name};
use super::{Cli, S3CredentialsCmd};
use crate::control::audit::Actor;
use crate::control::s3_credentials::{self, NewS3Credential};
use crate::control::tenants;

pub(super) async fn credentials_cmd(cli: &Cli, cmd: &S3CredentialsCmd) -> anyhow::Result<()> {
    let svc = services(cli)?;
    crate::server::prepare_control_plane(&svc).await?;
    match cmd {
        S3CredentialsCmd::Create { tenant, read_only, prefix, label } => {
            let name = tenant_name(tenant)?;
            let new = NewS3Credential { read_only: *read_only, prefix: prefix.clone(), label: label.clone() };
            let created = s3_credentials::create_audited(&svc, &name, &new, &Actor::Cli, Some("cli")).await?;
            print(cli, json!(created), || {
                format!(
                    "created S3 access key for {name}{}{}:\n  access key id:     {}\n  secret access key: {}\n  endpoint: {}  bucket: {}\n(the secret is shown once)",
                    if *read_only { " (read-only)" } else { "" },
                    if prefix.is_empty() { String::new() } else { format!(" (prefix {prefix})") },
                    created.info.access_key_id,
                    created.secret_access_key,
                    created.endpoint,
                    created.bucket,
                )
            });
        }
        S3CredentialsCmd::List { tenant } => {
            let name = tenant_name(tenant)?;
            let c = svc.control.client().await?;
            let t = tenants::get_by_name(&c, &name).await?;
            let list = s3_credentials::list(&c, t.id).await?;
            print(cli, json!({ "credentials": list }), || {
                list.iter()
                    .map(|k| {
                        format!(
                            "{}  {:<10} prefix {:?} {:<20} created {}{}",
                            k.access_key_id,
                            if k.read_only { "read-only" } else { "read-write" },
                            k.prefix,
                            k.label,
                            k.created_at,
                            k.revoked_at.as_ref().map(|r| format!(", revoked {r}")).unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        S3CredentialsCmd::Revoke { tenant, access_key_id } => {
            let name = tenant_name(tenant)?;
            s3_credentials::revoke_audited(&svc, &name, access_key_id, &Actor::Cli, Some("cli")).await?;
            print(cli, json!({ "revoked": access_key_id }), || format!("revoked S3 access key {access_key_id}"));
        }
    }
    Ok(())
}
