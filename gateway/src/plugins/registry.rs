//! Where plugins live: versions and the active pointer in the control plane
//! (`plugins`, `plugin_versions`), component bytes in the object store under a
//! system bucket `{s3.bucket_prefix}sys--plugins` (tenant names cannot contain
//! `--`, so it never collides with a tenant bucket), keyed by tenant, kind and
//! sha256. Loading verifies the digest.

use bytes::Bytes;
use deadpool_postgres::GenericClient;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{PluginError, PluginKind};
use crate::ids::TenantId;
use crate::upstream::s3::{ObjectStore, S3Error};

/// The notification channel activations are announced on (payload `tenant_uuid:kind`).
pub const NOTIFY_CHANNEL: &str = "sluice_plugins";

/// One stored version.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub version: i32,
    pub sha256: String,
    pub size_bytes: i64,
    pub created_by: String,
    pub created_at: String,
    pub active: bool,
}

/// A version with where its bytes are.
#[derive(Debug, Clone)]
pub struct VersionRef {
    pub version: i32,
    pub sha256: String,
    pub artifact_key: String,
    /// The plugin's config (JSON text) — the kind's, not the version's.
    pub config: String,
}

/// A tenant's plugin of one kind: the active version, its config and every version.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    pub kind: PluginKind,
    pub active_version: Option<i32>,
    pub config: serde_json::Value,
    pub versions: Vec<VersionInfo>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn artifact_key(tenant: TenantId, kind: PluginKind, sha256: &str) -> String {
    format!("{}/{}/{sha256}.wasm", tenant.0, kind.as_str())
}

/// Artifact storage in the system bucket.
pub struct Artifacts {
    s3: ObjectStore,
    bucket: String,
    ensured: tokio::sync::OnceCell<()>,
}

impl Artifacts {
    pub fn new(s3: ObjectStore) -> Self {
        let bucket = format!("{}sys--plugins", s3.bucket_prefix());
        Self { s3, bucket, ensured: tokio::sync::OnceCell::new() }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Create the system bucket once per process (an existing one is fine).
    pub async fn ensure_bucket(&self) -> Result<(), PluginError> {
        self.ensured
            .get_or_try_init(|| async {
                match self.s3.create_bucket(&self.bucket).await {
                    Ok(()) | Err(S3Error::BucketExists(_)) => Ok(()),
                    Err(e) => Err(PluginError::Storage(e)),
                }
            })
            .await
            .map(|_| ())
    }

    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), PluginError> {
        self.ensure_bucket().await?;
        self.s3
            .client()
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/wasm")
            .body(bytes.into())
            .send()
            .await
            .map_err(|e| S3Error::Op { op: "put plugin artifact", code: None, message: e.to_string() })?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, PluginError> {
        let out =
            self.s3.client().get_object().bucket(&self.bucket).key(key).send().await.map_err(|e| S3Error::Op {
                op: "get plugin artifact",
                code: None,
                message: e.to_string(),
            })?;
        let data = out.body.collect().await.map_err(|e| S3Error::Op {
            op: "read plugin artifact",
            code: None,
            message: e.to_string(),
        })?;
        Ok(data.into_bytes())
    }

    pub async fn delete(&self, key: &str) -> Result<(), PluginError> {
        self.s3.client().delete_object().bucket(&self.bucket).key(key).send().await.map_err(|e| S3Error::Op {
            op: "delete plugin artifact",
            code: None,
            message: e.to_string(),
        })?;
        Ok(())
    }
}

/// The active version of a tenant's plugin of `kind`, if any.
pub async fn active(
    c: &impl GenericClient,
    tenant: TenantId,
    kind: PluginKind,
) -> Result<Option<VersionRef>, PluginError> {
    let row = c
        .query_opt(
            "SELECT v.version, v.sha256, v.artifact_key, p.config::text
             FROM plugins p JOIN plugin_versions v
               ON v.tenant_id = p.tenant_id AND v.kind = p.kind AND v.version = p.active_version
             WHERE p.tenant_id = $1 AND p.kind = $2",
            &[&tenant.0, &kind.as_str()],
        )
        .await
        .map_err(crate::control::ControlError::from)?;
    Ok(row.map(|r| VersionRef { version: r.get(0), sha256: r.get(1), artifact_key: r.get(2), config: r.get(3) }))
}

/// One version (and the kind's config).
pub async fn version(
    c: &impl GenericClient,
    tenant: TenantId,
    kind: PluginKind,
    version: i32,
) -> Result<VersionRef, PluginError> {
    let row = c
        .query_opt(
            "SELECT v.version, v.sha256, v.artifact_key, p.config::text
             FROM plugin_versions v JOIN plugins p ON p.tenant_id = v.tenant_id AND p.kind = v.kind
             WHERE v.tenant_id = $1 AND v.kind = $2 AND v.version = $3",
            &[&tenant.0, &kind.as_str(), &version],
        )
        .await
        .map_err(crate::control::ControlError::from)?;
    row.map(|r| VersionRef { version: r.get(0), sha256: r.get(1), artifact_key: r.get(2), config: r.get(3) })
        .ok_or_else(|| PluginError::NotFound(format!("{kind} plugin version {version}")))
}

/// Every version of a tenant's plugin of `kind`, newest first.
pub async fn list(c: &impl GenericClient, tenant: TenantId, kind: PluginKind) -> Result<PluginInfo, PluginError> {
    let head = c
        .query_opt(
            "SELECT active_version, config FROM plugins WHERE tenant_id = $1 AND kind = $2",
            &[&tenant.0, &kind.as_str()],
        )
        .await
        .map_err(crate::control::ControlError::from)?;
    let (active_version, config) = match head {
        Some(r) => (r.get::<_, Option<i32>>(0), r.get::<_, serde_json::Value>(1)),
        None => (None, serde_json::json!({})),
    };
    let rows = c
        .query(
            "SELECT version, sha256, size_bytes, created_by,
                    to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')
             FROM plugin_versions WHERE tenant_id = $1 AND kind = $2 ORDER BY version DESC",
            &[&tenant.0, &kind.as_str()],
        )
        .await
        .map_err(crate::control::ControlError::from)?;
    let versions = rows
        .iter()
        .map(|r| {
            let version: i32 = r.get(0);
            VersionInfo {
                version,
                sha256: r.get(1),
                size_bytes: r.get(2),
                created_by: r.get(3),
                created_at: r.get(4),
                active: active_version == Some(version),
            }
        })
        .collect();
    Ok(PluginInfo { kind, active_version, config, versions })
}
