//! The S3-compatible object store: one bucket per tenant.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, timeout::TimeoutConfig};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use crate::config::S3Config;
use crate::secret::ExposeSecret;

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("object store: {op}: {message}")]
    Op { op: &'static str, code: Option<String>, message: String },
    #[error("object store: bucket {0} already exists")]
    BucketExists(String),
}

impl S3Error {
    fn op<E, R>(op: &'static str, e: aws_sdk_s3::error::SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let code = e.as_service_error().and_then(|s| s.code()).map(str::to_owned);
        S3Error::Op { op, code, message: DisplayErrorContext(&e).to_string() }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            S3Error::Op { code, .. } => code.as_deref(),
            S3Error::BucketExists(_) => Some("BucketAlreadyExists"),
        }
    }
}

#[derive(Clone)]
pub struct ObjectStore {
    client: Client,
    bucket_prefix: String,
}

impl ObjectStore {
    pub fn new(cfg: &S3Config) -> Self {
        let creds = Credentials::new(
            cfg.access_key_id.expose_secret(),
            cfg.secret_access_key.expose_secret(),
            None,
            None,
            "sluice-config",
        );
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&cfg.endpoint)
            .region(Region::new(cfg.region.clone()))
            .credentials_provider(creds)
            .force_path_style(cfg.force_path_style)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .build(),
            )
            .build();
        Self { client: Client::from_conf(conf), bucket_prefix: cfg.bucket_prefix.clone() }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket_prefix(&self) -> &str {
        &self.bucket_prefix
    }

    /// A cheap authenticated round trip, for readiness.
    pub async fn ping(&self) -> Result<(), S3Error> {
        self.client.list_buckets().max_buckets(1).send().await.map_err(|e| S3Error::op("list buckets", e))?;
        Ok(())
    }

    /// Create a bucket. One that exists already (even if ours) is an error, so a
    /// failed provisioning never deletes a bucket it did not create.
    pub async fn create_bucket(&self, bucket: &str) -> Result<(), S3Error> {
        match self.client.create_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = S3Error::op("create bucket", e);
                match err.code() {
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists") => {
                        Err(S3Error::BucketExists(bucket.into()))
                    }
                    _ => Err(err),
                }
            }
        }
    }

    pub async fn bucket_exists(&self, bucket: &str) -> Result<bool, S3Error> {
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => Err(S3Error::op("head bucket", e)),
        }
    }

    /// Delete every object and unfinished upload in a bucket, then the bucket.
    /// A missing bucket is fine. Returns how many objects were deleted.
    pub async fn delete_bucket_and_contents(&self, bucket: &str) -> Result<u64, S3Error> {
        if !self.bucket_exists(bucket).await? {
            return Ok(0);
        }
        let mut deleted = 0u64;
        let mut pages = self.client.list_objects_v2().bucket(bucket).max_keys(1000).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| S3Error::op("list objects", e))?;
            let ids: Vec<ObjectIdentifier> = page
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let n = ids.len() as u64;
            let delete = Delete::builder().set_objects(Some(ids)).quiet(true).build().map_err(|e| S3Error::Op {
                op: "delete objects",
                code: None,
                message: e.to_string(),
            })?;
            self.client
                .delete_objects()
                .bucket(bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| S3Error::op("delete objects", e))?;
            deleted += n;
        }
        let uploads = self
            .client
            .list_multipart_uploads()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| S3Error::op("list uploads", e))?;
        for u in uploads.uploads() {
            if let (Some(key), Some(id)) = (u.key(), u.upload_id()) {
                self.client
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await
                    .map_err(|e| S3Error::op("abort upload", e))?;
            }
        }
        match self.client.delete_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(deleted),
            Err(e) => {
                let err = S3Error::op("delete bucket", e);
                if err.code() == Some("NoSuchBucket") { Ok(deleted) } else { Err(err) }
            }
        }
    }
}
