//! A tenant's gateway records in a backup: quotas, per-key limits,
//! collections, plugins (every version; artifacts go to the content store),
//! the retention and backup schedules. Never key secrets.
//!
//! Rows travel as JSON objects of their control-plane columns, so a record
//! written by this version restores into the same columns; a column added
//! later keeps the restoring tenant's current value (quotas) or its default.

use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::BackupError;
use crate::ids::TenantId;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Records {
    pub quotas: Map<String, Value>,
    /// Per-key rate-limit overrides, by key prefix (restored onto the same
    /// keys in place; a new tenant has new keys).
    pub key_limits: Vec<KeyLimit>,
    pub collections: Vec<Map<String, Value>>,
    pub plugins: Vec<Map<String, Value>>,
    pub plugin_versions: Vec<PluginVersion>,
    pub retention_interval_s: Option<i32>,
    pub backup_settings: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyLimit {
    pub prefix: String,
    pub label: String,
    pub limits: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginVersion {
    pub row: Map<String, Value>,
    /// The artifact's content id in the backup's content store.
    pub content_id: String,
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

async fn rows(c: &impl GenericClient, sql: &str, tenant: TenantId) -> Result<Vec<Map<String, Value>>, BackupError> {
    let rows = c.query(sql, &[&tenant.0]).await.map_err(|e| BackupError::pg("read gateway records", e))?;
    Ok(rows.iter().map(|r| obj(r.get::<_, Value>(0))).collect())
}

/// Read the tenant's records (plugin versions without content ids yet).
pub async fn export(c: &impl GenericClient, tenant: TenantId) -> Result<Records, BackupError> {
    let quotas = rows(c, "SELECT to_jsonb(q) - 'tenant_id' - 'updated_at' FROM quotas q WHERE tenant_id = $1", tenant)
        .await?
        .pop()
        .unwrap_or_default();
    let key_limits = c
        .query(
            "SELECT k.prefix, k.label, to_jsonb(kl) - 'key_id' FROM key_limits kl JOIN api_keys k ON k.id = kl.key_id
             WHERE k.tenant_id = $1 AND k.revoked_at IS NULL ORDER BY k.prefix",
            &[&tenant.0],
        )
        .await
        .map_err(|e| BackupError::pg("read key limits", e))?
        .iter()
        .map(|r| KeyLimit { prefix: r.get(0), label: r.get(1), limits: obj(r.get(2)) })
        .collect();
    let collections =
        rows(c, "SELECT to_jsonb(x) - 'tenant_id' FROM collections x WHERE tenant_id = $1 ORDER BY name", tenant)
            .await?;
    let plugins = rows(
        c,
        "SELECT to_jsonb(p) - 'tenant_id' - 'updated_at' FROM plugins p WHERE tenant_id = $1 ORDER BY kind",
        tenant,
    )
    .await?;
    let plugin_versions = rows(
        c,
        "SELECT to_jsonb(v) - 'tenant_id' FROM plugin_versions v WHERE tenant_id = $1 ORDER BY kind, version",
        tenant,
    )
    .await?
    .into_iter()
    .map(|row| PluginVersion { row, content_id: String::new() })
    .collect();
    let retention_interval_s = c
        .query_opt("SELECT interval_s FROM retention_schedules WHERE tenant_id = $1", &[&tenant.0])
        .await
        .map_err(|e| BackupError::pg("read retention schedule", e))?
        .map(|r| r.get(0));
    let backup_settings =
        rows(c, "SELECT to_jsonb(s) - 'tenant_id' - 'updated_at' FROM backup_settings s WHERE tenant_id = $1", tenant)
            .await?
            .pop();
    Ok(Records { quotas, key_limits, collections, plugins, plugin_versions, retention_interval_s, backup_settings })
}

/// `row` as the JSON of a row for `tenant` (an `updated_at` it lacks is now).
fn with_tenant(row: &Map<String, Value>, tenant: TenantId) -> Value {
    let mut m = row.clone();
    m.insert("tenant_id".into(), Value::String(tenant.0.to_string()));
    if !m.contains_key("updated_at") {
        let now =
            time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        m.insert("updated_at".into(), Value::String(now));
    }
    Value::Object(m)
}

/// Replace the tenant's records with `r` inside `tx` (the caller commits).
/// Plugin artifacts must already be back in the artifact bucket under the
/// keys `artifact_key` names. Collections get a version past any they had,
/// so semantic-cache entries of the replaced data never match again.
/// Returns the key prefixes whose limits could not be restored (no such key).
pub async fn import(
    tx: &impl GenericClient,
    tenant: TenantId,
    r: &Records,
    artifact_key: &(dyn Fn(&Map<String, Value>) -> String + Sync),
) -> Result<Vec<String>, BackupError> {
    let e = |what: &'static str| move |err: tokio_postgres::Error| BackupError::pg(what, err);

    // Quotas: the backup's values over the current row (columns added since keep theirs).
    let cur = tx
        .query_one("SELECT to_jsonb(q) FROM quotas q WHERE tenant_id = $1", &[&tenant.0])
        .await
        .map_err(e("read quotas"))?;
    let mut q = obj(cur.get(0));
    for (k, v) in &r.quotas {
        q.insert(k.clone(), v.clone());
    }
    q.insert("tenant_id".into(), Value::String(tenant.0.to_string()));
    tx.execute("DELETE FROM quotas WHERE tenant_id = $1", &[&tenant.0]).await.map_err(e("replace quotas"))?;
    tx.execute("INSERT INTO quotas SELECT * FROM jsonb_populate_record(NULL::quotas, $1)", &[&Value::Object(q)])
        .await
        .map_err(e("replace quotas"))?;
    tx.execute("UPDATE quotas SET updated_at = now() WHERE tenant_id = $1", &[&tenant.0])
        .await
        .map_err(e("replace quotas"))?;

    // Collections, with versions past both the backup's and the current ones.
    let top: i64 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM collections WHERE tenant_id = $1", &[&tenant.0])
        .await
        .map_err(e("read collections"))?
        .get(0);
    tx.execute("DELETE FROM collections WHERE tenant_id = $1", &[&tenant.0]).await.map_err(e("replace collections"))?;
    for c in &r.collections {
        let mut row = c.clone();
        let v = row.get("version").and_then(Value::as_i64).unwrap_or(1);
        row.insert("version".into(), Value::from(v.max(top) + 1));
        tx.execute(
            "INSERT INTO collections SELECT * FROM jsonb_populate_record(NULL::collections, $1)",
            &[&with_tenant(&row, tenant)],
        )
        .await
        .map_err(e("restore a collection"))?;
    }

    // Plugins and their versions (artifacts were put back by the caller).
    tx.execute("DELETE FROM plugins WHERE tenant_id = $1", &[&tenant.0]).await.map_err(e("replace plugins"))?;
    for p in &r.plugins {
        tx.execute(
            "INSERT INTO plugins SELECT * FROM jsonb_populate_record(NULL::plugins, $1)",
            &[&with_tenant(p, tenant)],
        )
        .await
        .map_err(e("restore a plugin"))?;
    }
    for v in &r.plugin_versions {
        let mut row = v.row.clone();
        row.insert("artifact_key".into(), Value::String(artifact_key(&v.row)));
        tx.execute(
            "INSERT INTO plugin_versions SELECT * FROM jsonb_populate_record(NULL::plugin_versions, $1)",
            &[&with_tenant(&row, tenant)],
        )
        .await
        .map_err(e("restore a plugin version"))?;
    }
    tx.execute("UPDATE plugins SET updated_at = now() WHERE tenant_id = $1", &[&tenant.0])
        .await
        .map_err(e("restore plugins"))?;
    for kind in ["policy", "retention", "reranker"] {
        let payload = format!("{}:{kind}", tenant.0);
        tx.execute("SELECT pg_notify($1, $2)", &[&crate::plugins::registry::NOTIFY_CHANNEL, &payload])
            .await
            .map_err(e("announce restored plugins"))?;
    }

    // Schedules.
    tx.execute("DELETE FROM retention_schedules WHERE tenant_id = $1", &[&tenant.0])
        .await
        .map_err(e("replace the retention schedule"))?;
    if let Some(s) = r.retention_interval_s {
        tx.execute("INSERT INTO retention_schedules (tenant_id, interval_s) VALUES ($1, $2)", &[&tenant.0, &s])
            .await
            .map_err(e("restore the retention schedule"))?;
    }
    if let Some(s) = &r.backup_settings {
        tx.execute("DELETE FROM backup_settings WHERE tenant_id = $1", &[&tenant.0])
            .await
            .map_err(e("replace backup settings"))?;
        tx.execute(
            "INSERT INTO backup_settings SELECT * FROM jsonb_populate_record(NULL::backup_settings, $1)",
            &[&with_tenant(s, tenant)],
        )
        .await
        .map_err(e("restore backup settings"))?;
        tx.execute("UPDATE backup_settings SET updated_at = now() WHERE tenant_id = $1", &[&tenant.0])
            .await
            .map_err(e("restore backup settings"))?;
    }

    // Key limits, onto the keys with the same prefix (in place only).
    let mut missing = Vec::new();
    for kl in &r.key_limits {
        let key = tx
            .query_opt(
                "SELECT id FROM api_keys WHERE tenant_id = $1 AND prefix = $2 AND revoked_at IS NULL",
                &[&tenant.0, &kl.prefix],
            )
            .await
            .map_err(e("find a key"))?;
        let Some(key) = key else {
            missing.push(kl.prefix.clone());
            continue;
        };
        let id: uuid::Uuid = key.get(0);
        let mut row = kl.limits.clone();
        row.insert("key_id".into(), Value::String(id.to_string()));
        tx.execute("DELETE FROM key_limits WHERE key_id = $1", &[&id]).await.map_err(e("replace key limits"))?;
        tx.execute(
            "INSERT INTO key_limits SELECT * FROM jsonb_populate_record(NULL::key_limits, $1)",
            &[&Value::Object(row)],
        )
        .await
        .map_err(e("restore key limits"))?;
    }
    Ok(missing)
}
