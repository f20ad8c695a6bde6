//! Creating and deleting a tenant across the control plane, the tenant Postgres
//! cluster, the object store and Redis.
//!
//! Creation runs [`Step`]s in order and records each one it completed; if a step
//! fails, the completed ones are undone in reverse and the error says what was
//! undone (and anything that could not be). Deletion is idempotent step by step,
//! so a delete that failed half-way can simply be run again.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::ControlError;
use super::audit::{self, Actor, AuditEvent};
use super::credentials::{new_salt, postgres_verifier, tenant_role_password};
use super::keys::{self, CreatedKey};
use super::quotas::{self, Quotas};
use super::tenants::{self, Tenant, TenantStatus};
use crate::error::{ClientError, ErrorKind};
use crate::ids::{KeyRole, TenantId, TenantName};
use crate::secret::ExposeSecret;
use crate::services::Services;

/// The steps of tenant creation, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    ControlRow,
    Role,
    Database,
    Template,
    Bucket,
    Activate,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::ControlRow => "control_row",
            Step::Role => "role",
            Step::Database => "database",
            Step::Template => "template",
            Step::Bucket => "bucket",
            Step::Activate => "activate",
        }
    }
}

/// Knobs for [`create_tenant`].
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Fault injection for tests: fail right after this step completed.
    pub fail_after: Option<Step>,
    pub request_id: Option<String>,
    /// A tenant admin creates this tenant from a backup of its own tenant:
    /// (that tenant, how many such live tenants it may have).
    pub copy_of: Option<(TenantId, u32)>,
}

/// A tenant just created, with its two keys (shown once).
#[derive(Debug, Clone, Serialize)]
pub struct CreatedTenant {
    pub tenant: Tenant,
    pub quotas: Quotas,
    pub admin_key: CreatedKey,
    pub service_key: CreatedKey,
    pub elapsed_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{0}")]
    Invalid(String),
    /// A limit on creating tenants (tenant admins restoring as new).
    #[error("{0}")]
    Limit(String),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("creating tenant {tenant} failed at step {step}: {cause}; undone: [{}]{}",
        undone.join(", "),
        if leftover.is_empty() { String::new() } else { format!("; could NOT undo: [{}]", leftover.join(", ")) })]
    Failed { tenant: String, step: &'static str, cause: String, undone: Vec<&'static str>, leftover: Vec<String> },
    #[error("deleting tenant {tenant} failed at step {step}: {cause}; run the delete again")]
    DeleteFailed { tenant: String, step: &'static str, cause: String },
    #[error("renaming tenant {tenant}'s database and role failed: {cause}; run it again")]
    RenameFailed { tenant: String, cause: String },
}

impl ClientError for ProvisionError {
    fn kind(&self) -> ErrorKind {
        match self {
            ProvisionError::Invalid(_) => ErrorKind::User,
            ProvisionError::Limit(_) => ErrorKind::Forbidden,
            ProvisionError::Control(e) => e.kind(),
            ProvisionError::Failed { .. }
            | ProvisionError::DeleteFailed { .. }
            | ProvisionError::RenameFailed { .. } => ErrorKind::Upstream,
        }
    }
    fn client_message(&self) -> String {
        match self {
            // Step names and what was undone help the operator; causes may hold
            // internal detail and stay in the log.
            ProvisionError::Failed { tenant, step, undone, leftover, .. } => format!(
                "creating tenant {tenant} failed at step {step}; undone: [{}]{}",
                undone.join(", "),
                if leftover.is_empty() {
                    String::new()
                } else {
                    format!("; could not undo: [{}]", leftover.join(", "))
                }
            ),
            ProvisionError::DeleteFailed { tenant, step, .. } => {
                format!("deleting tenant {tenant} failed at step {step}; run the delete again")
            }
            ProvisionError::Control(e) => e.client_message(),
            other => other.to_string(),
        }
    }
}

/// Names of a new tenant's resources. The database and role carry the
/// tenant's id, not its name: `pg_database` and `pg_roles`, which every
/// tenant can read, show no tenant names. The bucket (seen by operators
/// only) keeps the name.
pub fn resource_names(svc: &Services, id: TenantId, name: &TenantName) -> (String, String, String) {
    let (db, role) = opaque_db(svc, id);
    (db, role, bucket_name(svc, name))
}

/// The database and role name of a tenant's id.
pub fn opaque_db(svc: &Services, id: TenantId) -> (String, String) {
    let c = &svc.config.postgres;
    let hex = id.0.simple();
    (format!("{}{hex}", c.database_prefix), format!("{}{hex}", c.role_prefix))
}

/// The tenant's bucket.
pub fn bucket_name(svc: &Services, name: &TenantName) -> String {
    format!("{}{}", svc.config.s3.bucket_prefix, name.as_str())
}

/// The database name tenants created before names became opaque had
/// (`tenant_<name>`); the Postgres door still accepts it from clients.
pub fn legacy_db_name(svc: &Services, name: &TenantName) -> String {
    format!("{}{}", svc.config.postgres.database_prefix, name.as_ident_fragment())
}

/// Give a tenant created with name-derived database and role names the
/// opaque ones (idempotent; `sluice migrate up` runs it for every tenant).
/// Its sessions are ended (the database cannot be renamed while in use):
/// clients reconnect, and gateway pools follow the new name at their next
/// request. Returns whether anything was renamed.
pub async fn make_names_opaque(svc: &Services, t: &Tenant) -> Result<bool, ProvisionError> {
    let (db, role) = opaque_db(svc, t.id);
    if t.db_name == db && t.db_role == role {
        return Ok(false);
    }
    let owner = |r: &str| super::roles::collection_owner(r);
    let roles = [(t.db_role.clone(), role.clone()), (owner(&t.db_role), owner(&role))];
    svc.pg_admin
        .rename_tenant(&t.db_name, &db, &roles)
        .await
        .map_err(|e| ProvisionError::RenameFailed { tenant: t.name.to_string(), cause: e.to_string() })?;
    let c = svc.control.client().await?;
    c.execute("UPDATE tenants SET db_name = $2, db_role = $3 WHERE id = $1", &[&t.id.0, &db, &role])
        .await
        .map_err(ControlError::from)?;
    tracing::info!(tenant = %t.name, database = %db, "tenant database and role renamed to opaque names");
    Ok(true)
}

/// Create a tenant: control-plane row, role, database with pgvector and the
/// template, bucket, and one admin and one service key.
pub async fn create_tenant(
    svc: &Services,
    name: &TenantName,
    actor: &Actor,
    opts: &CreateOptions,
) -> Result<CreatedTenant, ProvisionError> {
    let started = Instant::now();
    let id = TenantId::new_random();
    let (db_name, db_role, bucket) = resource_names(svc, id, name);
    let tenant = Tenant {
        id,
        name: name.clone(),
        status: TenantStatus::Provisioning,
        db_name,
        db_role,
        bucket,
        scram_salt: new_salt(),
        scram_iterations: svc.config.auth.scram_iterations,
        created_at: String::new(),
        suspended_reason: None,
    };
    let quotas = Quotas::from(&svc.config.quotas);

    // Step 1 on its own: a name conflict has nothing to undo.
    {
        let mut c = svc.control.client().await?;
        let tx = c.transaction().await.map_err(ControlError::from)?;
        if let Some((source, max)) = opts.copy_of {
            // Counted and inserted under one lock per source tenant, so
            // concurrent restores cannot pass the limit together.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('sluice-copies:' || $1::uuid::text, 0))",
                &[&source.0],
            )
            .await
            .map_err(ControlError::from)?;
            let n: i64 = tx
                .query_one("SELECT count(*) FROM tenants WHERE created_by_tenant = $1", &[&source.0])
                .await
                .map_err(ControlError::from)?
                .get(0);
            if n >= i64::from(max) {
                return Err(ProvisionError::Limit(format!(
                    "this tenant already has {n} tenants restored from its backups (at most {max}); \
                     delete one, or ask the operator"
                )));
            }
        }
        tenants::insert(&tx, &tenant).await?;
        if let Some((source, _)) = opts.copy_of {
            tx.execute("UPDATE tenants SET created_by_tenant = $2 WHERE id = $1", &[&tenant.id.0, &source.0])
                .await
                .map_err(ControlError::from)?;
        }
        quotas::insert(&tx, tenant.id, &quotas).await?;
        crate::usage::insert(&tx, tenant.id).await?;
        tx.commit().await.map_err(ControlError::from)?;
    }
    let mut done = vec![Step::ControlRow];

    let result = run_steps(svc, &tenant, &quotas, actor, opts, &mut done).await;
    match result {
        Ok((admin_key, service_key)) => {
            let elapsed = started.elapsed();
            metrics::histogram!("sluice_tenant_provision_seconds").record(elapsed.as_secs_f64());
            let tenant = tenants::get_by_id(&svc.control.client().await?, tenant.id).await?;
            Ok(CreatedTenant { tenant, quotas, admin_key, service_key, elapsed_ms: duration_ms(elapsed) })
        }
        Err((step, cause)) => {
            tracing::warn!(tenant = %name, step = step.as_str(), error = %cause, "provision tenant failed; undoing");
            let (undone, leftover) = undo(svc, &tenant, &done).await;
            let _ = record_audit(
                svc,
                &tenant,
                actor,
                "tenant.create",
                false,
                json!({
                    "failed_step": step.as_str(), "undone": undone, "leftover": leftover,
                }),
                opts.request_id.as_deref(),
            )
            .await;
            Err(ProvisionError::Failed { tenant: name.to_string(), step: step.as_str(), cause, undone, leftover })
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn run_steps(
    svc: &Services,
    t: &Tenant,
    quotas: &Quotas,
    actor: &Actor,
    opts: &CreateOptions,
    done: &mut Vec<Step>,
) -> Result<(CreatedKey, CreatedKey), (Step, String)> {
    let inject = |step: Step| -> Result<(), (Step, String)> {
        if opts.fail_after == Some(step) { Err((step, "injected failure (test)".into())) } else { Ok(()) }
    };
    inject(Step::ControlRow)?;

    let password = tenant_role_password(&svc.config.auth.master_key, t.id);
    let verifier = postgres_verifier(password.expose_secret().as_bytes(), &new_salt(), 4096);
    // The role's own connection cap: both doors' pools plus room for admin sessions.
    let conn_limit = crate::upstream::budget::role_connection_limit(quotas.pg_pool_size);
    svc.pg_admin.create_role(&t.db_role, &verifier, conn_limit).await.map_err(|e| (Step::Role, e.to_string()))?;
    done.push(Step::Role);
    let settings = super::roles::role_settings(&svc.config.postgres, quotas.statement_timeout_ms);
    svc.pg_admin.ensure_role_settings(&t.db_role, &settings).await.map_err(|e| (Step::Role, e.to_string()))?;
    inject(Step::Role)?;

    svc.pg_admin.create_database(&t.db_name, &t.db_role).await.map_err(|e| (Step::Database, e.to_string()))?;
    done.push(Step::Database);
    inject(Step::Database)?;

    svc.pg_admin.prepare_tenant_database(&t.db_name, &t.db_role).await.map_err(|e| (Step::Template, e.to_string()))?;
    done.push(Step::Template);
    let db = tenants::TenantDb { name: t.db_name.clone(), role: t.db_role.clone() };
    super::roles::ensure_collection_owner(svc, t.id, &db, quotas.pg_pool_size)
        .await
        .map_err(|e| (Step::Template, e.to_string()))?;
    inject(Step::Template)?;

    svc.s3.create_bucket(&t.bucket).await.map_err(|e| (Step::Bucket, e.to_string()))?;
    done.push(Step::Bucket);
    inject(Step::Bucket)?;

    // Keys, activation and the audit record commit together.
    let activate = async {
        let mut c = svc.control.client().await?;
        let tx = c.transaction().await?;
        let admin = keys::create(&tx, t, KeyRole::Admin, "initial admin key").await?;
        let service = keys::create(&tx, t, KeyRole::Service, "initial service key").await?;
        tenants::set_status(&tx, t.id, TenantStatus::Active).await?;
        audit::record(
            &tx,
            &AuditEvent {
                tenant_id: Some(t.id),
                tenant_name: Some(t.name.as_str()),
                actor,
                action: "tenant.create",
                target: Some(t.name.as_str()),
                ok: true,
                details: json!({ "database": t.db_name, "role": t.db_role, "bucket": t.bucket,
                             "keys": [admin.info.prefix, service.info.prefix] }),
                request_id: opts.request_id.as_deref(),
            },
        )
        .await?;
        if opts.fail_after == Some(Step::Activate) {
            // Dropping the transaction rolls it back, as a real failure would.
            return Err(ControlError::Invalid("injected failure (test)".into()));
        }
        tx.commit().await?;
        Ok::<_, ControlError>((admin, service))
    };
    activate.await.map_err(|e| (Step::Activate, e.to_string()))
}

/// Drop a tenant's collection owner and its role (after its database).
async fn drop_roles(svc: &Services, role: &str) -> Result<(), String> {
    svc.pg_admin.drop_role(&super::roles::collection_owner(role)).await.map_err(|e| e.to_string())?;
    svc.pg_admin.drop_role(role).await.map_err(|e| e.to_string())
}

/// Undo completed steps in reverse. Returns (undone, could-not-undo).
async fn undo(svc: &Services, t: &Tenant, done: &[Step]) -> (Vec<&'static str>, Vec<String>) {
    let mut undone = Vec::new();
    let mut leftover = Vec::new();
    for step in done.iter().rev() {
        let r: Result<(), String> = match step {
            Step::Bucket => svc.s3.delete_bucket_and_contents(&t.bucket).await.map(|_| ()).map_err(|e| e.to_string()),
            // The template lives inside the database; dropping that undoes both.
            Step::Template => Ok(()),
            Step::Database => svc.pg_admin.drop_database(&t.db_name).await.map_err(|e| e.to_string()),
            Step::Role => drop_roles(svc, &t.db_role).await,
            Step::ControlRow => match svc.control.client().await {
                Ok(c) => tenants::delete_row(&c, t.id).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            Step::Activate => Ok(()),
        };
        match r {
            Ok(()) => undone.push(step.as_str()),
            Err(e) => {
                tracing::error!(tenant = %t.name, step = step.as_str(), error = %e, "undo provisioning step failed");
                leftover.push(format!("{} ({e})", step.as_str()));
            }
        }
    }
    (undone, leftover)
}

async fn record_audit(
    svc: &Services,
    t: &Tenant,
    actor: &Actor,
    action: &str,
    ok: bool,
    details: serde_json::Value,
    request_id: Option<&str>,
) -> Result<(), ControlError> {
    let c = svc.control.client().await?;
    audit::record(
        &c,
        &AuditEvent {
            tenant_id: Some(t.id),
            tenant_name: Some(t.name.as_str()),
            actor,
            action,
            target: Some(t.name.as_str()),
            ok,
            details,
            request_id,
        },
    )
    .await
}

/// What a delete removed.
#[derive(Debug, Clone, Serialize)]
pub struct DeletedTenant {
    pub name: String,
    pub objects_deleted: u64,
    pub redis_keys_deleted: u64,
    pub elapsed_ms: u64,
}

/// Delete a tenant and everything it owns: bucket (with all objects), database,
/// role, Redis keys, control-plane rows. Each step tolerates "already gone".
pub async fn delete_tenant(
    svc: &Services,
    name: &TenantName,
    actor: &Actor,
    request_id: Option<&str>,
) -> Result<DeletedTenant, ProvisionError> {
    let started = Instant::now();
    let t = {
        let c = svc.control.client().await?;
        let t = tenants::get_by_name(&c, name).await?;
        tenants::set_status(&c, t.id, TenantStatus::Deleting).await?;
        t
    };
    let fail = |step: &'static str| {
        let tenant = name.to_string();
        move |e: String| ProvisionError::DeleteFailed { tenant, step, cause: e }
    };
    svc.tenant_pg.evict(t.id);
    svc.budgets.evict(t.id);
    let objects = svc.s3.delete_bucket_and_contents(&t.bucket).await.map_err(|e| fail("bucket")(e.to_string()))?;
    svc.pg_admin.drop_database(&t.db_name).await.map_err(|e| fail("database")(e.to_string()))?;
    drop_roles(svc, &t.db_role).await.map_err(fail("role"))?;
    let redis_keys = svc.redis.delete_tenant_keys(t.id).await.map_err(|e| fail("redis")(e.to_string()))?;
    {
        let mut c = svc.control.client().await?;
        let tx = c.transaction().await.map_err(ControlError::from)?;
        tenants::delete_row(&tx, t.id).await?;
        audit::record(
            &tx,
            &AuditEvent {
                tenant_id: Some(t.id),
                tenant_name: Some(t.name.as_str()),
                actor,
                action: "tenant.delete",
                target: Some(t.name.as_str()),
                ok: true,
                details: json!({ "objects_deleted": objects, "redis_keys_deleted": redis_keys }),
                request_id,
            },
        )
        .await?;
        tx.commit().await.map_err(ControlError::from)?;
    }
    Ok(DeletedTenant {
        name: name.to_string(),
        objects_deleted: objects,
        redis_keys_deleted: redis_keys,
        elapsed_ms: duration_ms(started.elapsed()),
    })
}
