//! What a tenant's database role is held to, beyond its privileges: its
//! connection limit (both doors' pools, see [`crate::upstream::budget`]) and
//! the role-level defaults of the settings that bound what one session may
//! consume — `temp_file_limit` (superuser-only in Postgres, so the tenant
//! cannot raise it, not even from opaque code), `work_mem` and
//! `statement_timeout` (the tenant may lower these; the doors refuse raising
//! them past their ceilings, see [`crate::sql::rules`]).
//!
//! Set when a tenant is created, and again whenever one of its pools is
//! built (tenants created before, or after the config or quota changed).
//!
//! Also the second role of every tenant, the **collection owner**
//! (`<tenant role>_gw`): it owns the `sluice` schema and the collection
//! tables, and the gateway writes points through it, so tenant SQL may read
//! collections but not change them behind the gateway's back (which would
//! leave the semantic cache serving deleted points or let metadata break
//! the collection's JSON Schema). Created at provisioning; tenants created
//! before get it at the first collection write of each gateway process.

use crate::config::PostgresConfig;
use crate::control::credentials::{collection_owner_password, new_salt, postgres_verifier};
use crate::ids::TenantId;
use crate::pipeline::auth::Principal;
use crate::secret::ExposeSecret;
use crate::services::Services;
use crate::sql::rules::memory_kb;
use crate::upstream::postgres::PgAdminError;

/// Postgres's own default `work_mem`, in kB.
const POSTGRES_WORK_MEM_KB: f64 = 4096.0;

/// The role-level settings of a tenant role: `(name, value)`, values as
/// Postgres shows them back in `pg_db_role_setting`.
pub fn role_settings(cfg: &PostgresConfig, statement_timeout_ms: i32) -> Vec<(&'static str, String)> {
    let ceiling = memory_kb(&cfg.max_work_mem).unwrap_or(POSTGRES_WORK_MEM_KB);
    let work_mem_kb = ceiling.clamp(64.0, POSTGRES_WORK_MEM_KB);
    vec![
        ("temp_file_limit", cfg.temp_file_limit.clone()),
        ("work_mem", format!("{}kB", work_mem_kb as u64)),
        ("statement_timeout", statement_timeout_ms.max(0).to_string()),
    ]
}

/// When a tenant's pool is built: make sure its role's connection limit
/// covers both doors' pools and its settings defaults are current. In the
/// background; a failure is logged and tried again at the next pool build.
pub fn ensure(svc: &Services, p: &Principal) {
    let role = p.db.role.clone();
    let limit = crate::upstream::budget::role_connection_limit(p.quotas.pg_pool_size);
    let settings = role_settings(&svc.config.postgres, p.quotas.statement_timeout_ms);
    let admin = svc.pg_admin.clone();
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            if let Err(e) = admin.ensure_connection_limit(&role, limit).await {
                tracing::warn!(%role, error = %e, "raise the tenant role's connection limit");
            }
            if let Err(e) = admin.ensure_role_settings(&role, &settings).await {
                tracing::warn!(%role, error = %e, "set the tenant role's resource settings");
            }
        });
    }
}

/// The collection owner of a tenant role.
pub fn collection_owner(tenant_role: &str) -> String {
    format!("{tenant_role}_gw")
}

/// Create the tenant's collection owner if missing and hand it the `sluice`
/// schema and its tables (idempotent; see the module docs).
pub async fn ensure_collection_owner(
    svc: &Services,
    tenant: TenantId,
    db: &crate::control::tenants::TenantDb,
    pool_size: i32,
) -> Result<(), PgAdminError> {
    let password = collection_owner_password(&svc.config.auth.master_key, tenant);
    let verifier = postgres_verifier(password.expose_secret().as_bytes(), &new_salt(), 4096);
    let limit = crate::upstream::budget::role_connection_limit(pool_size);
    svc.pg_admin.ensure_collection_owner(&db.name, &db.role, &collection_owner(&db.role), &verifier, limit).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_defaults_stay_within_the_ceilings() {
        let text = "admin_url = \"postgres://a@h/d\"";
        let mut cfg: PostgresConfig = toml::from_str(text).expect("config");
        let s = role_settings(&cfg, 30_000);
        assert_eq!(
            s,
            vec![
                ("temp_file_limit", "10GB".to_owned()),
                ("work_mem", "4096kB".to_owned()),
                ("statement_timeout", "30000".to_owned())
            ]
        );
        cfg.max_work_mem = "1MB".into();
        assert_eq!(role_settings(&cfg, 0)[1], ("work_mem", "1024kB".to_owned()));
    }
}
