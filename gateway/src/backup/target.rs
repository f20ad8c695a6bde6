//! The backup target: one S3-compatible bucket holding every tenant's
//! backups, laid out as
//!
//! ```text
//! tenants/<tenant id>/data-key.age            the tenant's data key, wrapped by the operator key
//! tenants/<tenant id>/content/<content id>    object and plugin bytes, sealed, shared by backups
//! tenants/<tenant id>/backups/<backup id>/…   one backup's parts; `manifest.age` is written last
//! ```
//!
//! Parts are streamed: a blocking thread seals (see [`super::crypt`]) into
//! a [`ChunkSink`], whose chunks an async task uploads with bounded memory
//! (PutObject or multipart, aborted on failure).

use std::io::{self, Write};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::BackupError;
use crate::config::{BackupConfig, S3Config};
use crate::ids::{ObjectKey, TenantId};
use crate::upstream::s3::{Conditions, ListQuery, ObjectStore, PutOptions, Read, S3Error};

/// Largest manifest, records or index part read into memory.
pub const MAX_SMALL_PART: u64 = 512 << 20;

#[derive(Clone)]
pub struct Target {
    store: ObjectStore,
    bucket: String,
    ensured: std::sync::Arc<tokio::sync::OnceCell<()>>,
}

pub fn tenant_prefix(tenant: TenantId) -> String {
    format!("tenants/{}/", tenant.0)
}

pub fn data_key_key(tenant: TenantId) -> String {
    format!("{}data-key.age", tenant_prefix(tenant))
}

pub fn content_key(tenant: TenantId, content_id: &str) -> String {
    format!("{}content/{content_id}", tenant_prefix(tenant))
}

pub fn backup_prefix(tenant: TenantId, backup: uuid::Uuid) -> String {
    format!("{}backups/{backup}/", tenant_prefix(tenant))
}

pub fn manifest_key(tenant: TenantId, backup: uuid::Uuid) -> String {
    format!("{}manifest.age", backup_prefix(tenant, backup))
}

impl Target {
    /// The configured target, or `None` when backups are off.
    pub fn from_config(cfg: &BackupConfig) -> Option<Self> {
        if cfg.endpoint.trim().is_empty() {
            return None;
        }
        let s3 = S3Config {
            endpoint: cfg.endpoint.clone(),
            region: cfg.region.clone(),
            access_key_id: cfg.access_key_id.clone(),
            secret_access_key: cfg.secret_access_key.clone(),
            bucket_prefix: String::new(),
            force_path_style: cfg.force_path_style,
        };
        Some(Self {
            store: ObjectStore::new(&s3),
            bucket: cfg.bucket.clone(),
            ensured: std::sync::Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Create the bucket once per process (an existing one is fine).
    pub async fn ensure_bucket(&self) -> Result<(), BackupError> {
        self.ensured
            .get_or_try_init(|| async {
                match self.store.create_bucket(&self.bucket).await {
                    Ok(()) | Err(S3Error::BucketExists(_)) => Ok(()),
                    Err(e) => match e.code() {
                        Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists") => Ok(()),
                        _ => Err(BackupError::Target(e)),
                    },
                }
            })
            .await
            .map(|_| ())
    }

    fn key(key: &str) -> Result<ObjectKey, BackupError> {
        ObjectKey::parse(key).map_err(|e| BackupError::Invalid(format!("backup key {key}: {e}")))
    }

    pub async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<u64, BackupError> {
        let len = bytes.len() as u64;
        let body = futures::stream::once(async move { Ok::<_, io::Error>(Bytes::from(bytes)) });
        let opts = PutOptions {
            content_type: Some("application/octet-stream".into()),
            metadata: Default::default(),
            declared_length: Some(len),
            max_bytes: u64::MAX,
            ..Default::default()
        };
        self.store.put_object_stream(&self.bucket, &Self::key(key)?, body, &opts).await?;
        Ok(len)
    }

    /// Upload the chunks a [`ChunkSink`] sends, until it is dropped.
    pub async fn put_chunks(&self, key: &str, rx: mpsc::Receiver<io::Result<Bytes>>) -> Result<u64, BackupError> {
        let body = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
        let opts = PutOptions {
            content_type: Some("application/octet-stream".into()),
            metadata: Default::default(),
            declared_length: None,
            max_bytes: u64::MAX,
            ..Default::default()
        };
        let out = self.store.put_object_stream(&self.bucket, &Self::key(key)?, body, &opts).await?;
        Ok(out.size)
    }

    /// The whole object, at most `max` bytes; `None` when missing.
    pub async fn get_bytes(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>, BackupError> {
        use tokio::io::AsyncReadExt;
        let obj = match self.store.get_object(&self.bucket, &Self::key(key)?, None, Conditions::default()).await {
            Ok(Read::Found(o)) => o,
            Ok(Read::NotModified { .. }) | Err(S3Error::NotFound) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if obj.info.length > max {
            return Err(BackupError::Invalid(format!("{key} is larger than {max} bytes")));
        }
        let mut out = Vec::with_capacity(usize::try_from(obj.info.length).unwrap_or(0));
        obj.body
            .into_async_read()
            .take(max + 1)
            .read_to_end(&mut out)
            .await
            .map_err(|e| BackupError::Io(format!("read {key}: {e}")))?;
        Ok(Some(out))
    }

    /// A streaming reader of the object and its size.
    pub async fn reader(
        &self,
        key: &str,
    ) -> Result<(u64, impl tokio::io::AsyncRead + Send + Unpin + use<>), BackupError> {
        match self.store.get_object(&self.bucket, &Self::key(key)?, None, Conditions::default()).await {
            Ok(Read::Found(o)) => Ok((o.info.length, o.body.into_async_read())),
            Ok(Read::NotModified { .. }) | Err(S3Error::NotFound) => {
                Err(BackupError::Missing(format!("part {key} is missing from the backup target")))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn exists(&self, key: &str) -> Result<bool, BackupError> {
        match self.store.head_object(&self.bucket, key, Conditions::default()).await {
            Ok(_) => Ok(true),
            Err(S3Error::NotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Every key under `prefix` with its size.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, BackupError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let q = ListQuery { prefix, delimiter: None, limit: 1000, cursor: cursor.as_deref(), start_after: None };
            let page = match self.store.list_objects(&self.bucket, &q).await {
                Ok(p) => p,
                Err(S3Error::NotFound) => return Ok(out),
                Err(e) => return Err(e.into()),
            };
            out.extend(page.objects.into_iter().map(|o| (o.key, o.size)));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// Server-side copy of `from` to `to` inside the bucket.
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), BackupError> {
        self.store
            .client()
            .copy_object()
            .bucket(&self.bucket)
            .key(to)
            .copy_source(format!("{}/{from}", self.bucket))
            .send()
            .await
            .map_err(|e| S3Error::Op { op: "copy in the backup target", code: None, message: e.to_string() })?;
        Ok(())
    }

    pub async fn delete(&self, key: &str) -> Result<(), BackupError> {
        Ok(self.store.delete_object(&self.bucket, key).await?)
    }

    /// Delete every key under `prefix`; returns how many.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, BackupError> {
        let keys = self.list(prefix).await?;
        for (k, _) in &keys {
            self.delete(k).await?;
        }
        Ok(keys.len() as u64)
    }
}

/// Size of the chunks a [`ChunkSink`] hands to the uploader.
const CHUNK: usize = 1 << 20;

/// A blocking writer that hands 1 MiB chunks to an async uploader.
pub struct ChunkSink {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChunkSink {
    /// The sink and the receiver to give [`Target::put_chunks`]. At most a
    /// few chunks wait in between.
    pub fn new() -> (Self, mpsc::Receiver<io::Result<Bytes>>) {
        let (tx, rx) = mpsc::channel(4);
        (Self { tx, buf: Vec::with_capacity(CHUNK) }, rx)
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "upload stopped"))
    }

    /// Send what is left; dropping the sink then ends the upload.
    pub fn close(mut self) -> io::Result<()> {
        self.send()
    }

    /// Make the upload fail (nothing is stored).
    pub fn fail(self, why: String) {
        let _ = self.tx.blocking_send(Err(io::Error::other(why)));
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
