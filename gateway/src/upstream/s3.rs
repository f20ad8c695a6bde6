//! The S3-compatible object store: one bucket per tenant.
//!
//! Bucket administration (create, empty and delete) for provisioning, and the
//! object operations behind `/v1/objects`: head, ranged and conditional get,
//! delete, paginated list; and (in `upload`) [`ObjectStore::put_object_stream`],
//! which writes a body of any size with bounded memory (one PutObject up to
//! [`PART_SIZE`], a multipart upload above it that is aborted on any failure).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, timeout::TimeoutConfig};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime, DateTimeFormat};
use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use crate::config::S3Config;
use crate::error::{ClientError, ErrorKind};
use crate::ids::ObjectKey;
use crate::secret::ExposeSecret;

mod multipart;
mod upload;

pub use multipart::StoredPart;

/// Size of each multipart-upload part, and the largest body written with a
/// single PutObject. Memory per upload in flight is about one part.
pub const PART_SIZE: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("object store: {op}: {message}")]
    Op { op: &'static str, code: Option<String>, message: String },
    #[error("object store: bucket {0} already exists")]
    BucketExists(String),
    /// The key (or the bucket) does not exist.
    #[error("no such object")]
    NotFound,
    /// An `If-Match` condition did not hold.
    #[error("the object's ETag does not match If-Match")]
    PreconditionFailed,
    /// The requested byte range lies outside the object.
    #[error("the requested range is not satisfiable")]
    InvalidRange,
    /// The store refused a request we made (4xx): a bug or a misconfiguration.
    #[error("object store refused {op}: {message}")]
    Refused { op: &'static str, code: Option<String>, message: String },
    /// The body grew past the caller's limit; nothing was stored.
    #[error("the object is larger than this tenant's limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// Reading the body to upload failed (the client went away or sent garbage).
    #[error("reading the request body failed: {0}")]
    Body(String),
}

impl ClientError for S3Error {
    fn kind(&self) -> ErrorKind {
        match self {
            S3Error::NotFound => ErrorKind::NotFound,
            S3Error::Op { code: Some(c), .. } if matches!(c.as_str(), "NoSuchKey" | "NoSuchBucket") => {
                ErrorKind::NotFound
            }
            S3Error::Op { .. } => ErrorKind::Upstream,
            S3Error::BucketExists(_) | S3Error::PreconditionFailed => ErrorKind::Conflict,
            S3Error::InvalidRange | S3Error::Body(_) => ErrorKind::User,
            S3Error::TooLarge { .. } => ErrorKind::TooLarge,
            S3Error::Refused { .. } => ErrorKind::Internal,
        }
    }
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

    /// Like [`S3Error::op`], but sorts out the outcomes the object API answers
    /// to a client: missing keys, failed preconditions, bad ranges, and requests
    /// the store refused (4xx other than throttling) as opposed to a store that
    /// failed or cannot be reached.
    fn classify<E>(op: &'static str, e: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = e.raw_response().map(|r| r.status().as_u16());
        let code = e.as_service_error().and_then(|s| s.code());
        match (status, code) {
            (Some(404), _) | (_, Some("NoSuchKey" | "NoSuchBucket" | "NotFound")) => S3Error::NotFound,
            (Some(412), _) | (_, Some("PreconditionFailed")) => S3Error::PreconditionFailed,
            (Some(416), _) | (_, Some("InvalidRange")) => S3Error::InvalidRange,
            (Some(s), _) if (400..500).contains(&s) && s != 408 && s != 429 => {
                S3Error::Refused { op, code: code.map(str::to_owned), message: DisplayErrorContext(&e).to_string() }
            }
            _ => S3Error::op(op, e),
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            S3Error::Op { code, .. } | S3Error::Refused { code, .. } => code.as_deref(),
            S3Error::BucketExists(_) => Some("BucketAlreadyExists"),
            S3Error::NotFound => Some("NoSuchKey"),
            S3Error::PreconditionFailed => Some("PreconditionFailed"),
            S3Error::InvalidRange => Some("InvalidRange"),
            S3Error::TooLarge { .. } => Some("EntityTooLarge"),
            S3Error::Body(_) => None,
        }
    }
}

/// What the store says about an object (from HeadObject or GetObject).
#[derive(Debug, Clone, Default)]
pub struct ObjectInfo {
    /// Bytes in this response: the whole object, or the range for a ranged get.
    pub length: u64,
    /// Quoted, as S3 sends it (`"…"`).
    pub etag: Option<String>,
    pub last_modified: Option<DateTime>,
    pub content_type: Option<String>,
    /// `Content-Range` of a ranged get (`bytes 0-99/1234`).
    pub content_range: Option<String>,
    /// User metadata (names lower-case, without `x-amz-meta-`).
    pub metadata: HashMap<String, String>,
}

impl ObjectInfo {
    /// `Last-Modified` as an HTTP date.
    pub fn last_modified_http(&self) -> Option<String> {
        self.last_modified.and_then(|t| t.fmt(DateTimeFormat::HttpDate).ok())
    }
}

/// Conditional-request headers forwarded to the store and re-checked here (so
/// a store that ignores them still answers correctly).
#[derive(Debug, Clone, Copy, Default)]
pub struct Conditions<'a> {
    pub if_match: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
}

impl Conditions<'_> {
    /// Decide the conditions against an object's ETag (RFC 9110 §13.2.2 order:
    /// If-Match first; If-None-Match with weak comparison).
    pub fn evaluate(&self, etag: Option<&str>) -> Result<Freshness, S3Error> {
        if let Some(list) = self.if_match
            && !etag.is_some_and(|e| etag_list_matches(list, e, false))
        {
            return Err(S3Error::PreconditionFailed);
        }
        if let Some(list) = self.if_none_match
            && etag.is_some_and(|e| etag_list_matches(list, e, true))
        {
            return Ok(Freshness::NotModified { etag: etag.map(str::to_owned) });
        }
        Ok(Freshness::Changed)
    }

    /// The outcome of a read that found `found` with this ETag.
    pub fn read<T>(&self, etag: Option<&str>, found: T) -> Result<Read<T>, S3Error> {
        match self.evaluate(etag)? {
            Freshness::Changed => Ok(Read::Found(found)),
            Freshness::NotModified { etag } => Ok(Read::NotModified { etag }),
        }
    }
}

/// Whether a conditional read has to send the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    Changed,
    /// `If-None-Match` matched: answer 304 with this ETag.
    NotModified {
        etag: Option<String>,
    },
}

/// Does an `If-Match` / `If-None-Match` list (`*` or `"a", W/"b"`) match `etag`?
/// Strong comparison refuses weak tags on either side.
pub fn etag_list_matches(list: &str, etag: &str, weak: bool) -> bool {
    let (etag_weak, etag_opaque) = split_weak(etag.trim());
    list.split(',').map(str::trim).any(|candidate| {
        if candidate == "*" {
            return true;
        }
        let (cand_weak, cand_opaque) = split_weak(candidate);
        cand_opaque == etag_opaque && (weak || !(cand_weak || etag_weak))
    })
}

fn split_weak(tag: &str) -> (bool, &str) {
    match tag.strip_prefix("W/") {
        Some(rest) => (true, rest),
        None => (false, tag),
    }
}

/// A successful GetObject: what the store said, then the body as it arrives.
pub struct ObjectBody {
    pub info: ObjectInfo,
    pub body: ByteStream,
}

/// The result of a conditional read.
pub enum Read<T> {
    Found(T),
    NotModified { etag: Option<String> },
}

/// How to store an uploaded object.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub content_type: Option<String>,
    pub metadata: HashMap<String, String>,
    /// `Content-Length` of the request, if it was declared (sizes the first buffer).
    pub declared_length: Option<u64>,
    /// Refuse (and store nothing) once the body grows past this many bytes.
    pub max_bytes: u64,
    /// Metadata known only once the body has been read (a checksum sent as
    /// a trailer): added when the store write starts after the body ended,
    /// i.e. a body of at most one part.
    pub late_metadata: LateMetadata,
}

/// One metadata entry, if known by now.
pub type MetadataSource = dyn Fn() -> Option<(String, String)> + Send + Sync;

/// See [`PutOptions::late_metadata`].
#[derive(Clone, Default)]
pub struct LateMetadata(pub Option<std::sync::Arc<MetadataSource>>);

impl std::fmt::Debug for LateMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "LateMetadata(Some)" } else { "LateMetadata(None)" })
    }
}

impl LateMetadata {
    /// `base` plus what is known now.
    pub fn merged(&self, base: &HashMap<String, String>) -> HashMap<String, String> {
        let mut m = base.clone();
        if let Some((k, v)) = self.0.as_ref().and_then(|f| f()) {
            m.insert(k, v);
        }
        m
    }
}

/// What an upload stored.
#[derive(Debug, Clone)]
pub struct PutOutcome {
    pub size: u64,
    pub etag: Option<String>,
    /// How many parts were uploaded (0: a single PutObject).
    pub parts: u32,
}

/// One page of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ListedObject>,
    pub common_prefixes: Vec<String>,
    /// Continuation token for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    /// RFC 3339.
    pub last_modified: Option<String>,
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct ListQuery<'a> {
    pub prefix: &'a str,
    pub delimiter: Option<&'a str>,
    /// 1..=1000.
    pub limit: i32,
    pub cursor: Option<&'a str>,
    /// List keys after this one (S3 `start-after`; ignored with a cursor).
    pub start_after: Option<&'a str>,
}

/// [`ObjectInfo`] from a HeadObject or GetObject output (different types with
/// the same getters).
macro_rules! object_info {
    ($out:expr, $content_range:expr) => {
        ObjectInfo {
            length: non_negative($out.content_length()),
            etag: $out.e_tag().map(str::to_owned),
            last_modified: $out.last_modified().copied(),
            content_type: $out.content_type().map(str::to_owned),
            content_range: $content_range,
            metadata: $out.metadata().cloned().unwrap_or_default(),
        }
    };
}

fn non_negative(v: Option<i64>) -> u64 {
    v.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
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

    /// HeadObject under `conds`. `key` as stored (the doors pass an
    /// [`ObjectKey`]'s text; retention passes listed keys).
    pub async fn head_object(
        &self,
        bucket: &str,
        key: &str,
        conds: Conditions<'_>,
    ) -> Result<Read<ObjectInfo>, S3Error> {
        let out = self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .set_if_match(conds.if_match.map(str::to_owned))
            .set_if_none_match(conds.if_none_match.map(str::to_owned))
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) => return not_modified(&e).ok_or_else(|| S3Error::classify("head object", e)),
        };
        let info = object_info!(out, None);
        conds.read(info.etag.clone().as_deref(), info)
    }

    /// GetObject, optionally ranged (`range` is an HTTP `Range` value such as
    /// `bytes=0-99`) and conditional. The body streams from the store as the
    /// caller reads it.
    pub async fn get_object(
        &self,
        bucket: &str,
        key: &ObjectKey,
        range: Option<&str>,
        conds: Conditions<'_>,
    ) -> Result<Read<ObjectBody>, S3Error> {
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key.as_str())
            .set_range(range.map(str::to_owned))
            .set_if_match(conds.if_match.map(str::to_owned))
            .set_if_none_match(conds.if_none_match.map(str::to_owned))
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) => return not_modified(&e).ok_or_else(|| S3Error::classify("get object", e)),
        };
        let info = object_info!(out, out.content_range().map(str::to_owned));
        // On NotModified the body is dropped, closing the store connection
        // early; only a store that ignored the condition gets there.
        conds.read(info.etag.clone().as_deref(), ObjectBody { info, body: out.body })
    }

    /// DeleteObject. Deleting a missing key succeeds, as in S3.
    pub async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), S3Error> {
        match self.client.delete_object().bucket(bucket).key(key).send().await {
            Ok(_) => Ok(()),
            Err(e) => match S3Error::classify("delete object", e) {
                S3Error::NotFound => Ok(()),
                other => Err(other),
            },
        }
    }

    /// One page of ListObjectsV2.
    pub async fn list_objects(&self, bucket: &str, q: &ListQuery<'_>) -> Result<ListPage, S3Error> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(q.prefix)
            .set_delimiter(q.delimiter.map(str::to_owned))
            .max_keys(q.limit)
            .set_continuation_token(q.cursor.map(str::to_owned))
            .set_start_after(q.start_after.map(str::to_owned))
            .send()
            .await
            .map_err(|e| S3Error::classify("list objects", e))?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ListedObject {
                    key: o.key()?.to_owned(),
                    size: non_negative(o.size()),
                    etag: o.e_tag().map(str::to_owned),
                    last_modified: o.last_modified().and_then(|t| t.fmt(DateTimeFormat::DateTime).ok()),
                })
            })
            .collect();
        let common_prefixes = out.common_prefixes().iter().filter_map(|p| p.prefix().map(str::to_owned)).collect();
        let truncated = out.is_truncated().unwrap_or(false);
        let next_cursor = if truncated { out.next_continuation_token().map(str::to_owned) } else { None };
        Ok(ListPage { objects, common_prefixes, next_cursor })
    }
}

/// A store's 304 is an error to the SDK but an answer to us.
fn not_modified<T, E>(e: &SdkError<E, HttpResponse>) -> Option<Read<T>> {
    let raw = e.raw_response().filter(|r| r.status().as_u16() == 304)?;
    Some(Read::NotModified { etag: raw.headers().get("etag").map(str::to_owned) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_lists() {
        let tag = "\"abc\"";
        assert!(etag_list_matches("*", tag, false));
        assert!(etag_list_matches("\"abc\"", tag, false));
        assert!(etag_list_matches("\"x\", \"abc\"", tag, false));
        assert!(!etag_list_matches("\"abcd\"", tag, false));
        assert!(!etag_list_matches("abc", tag, false));
        // Weak tags match only under weak comparison (If-None-Match).
        assert!(etag_list_matches("W/\"abc\"", tag, true));
        assert!(!etag_list_matches("W/\"abc\"", tag, false));
    }

    #[test]
    fn conditions() {
        let tag = Some("\"abc\"");
        let none = Conditions::default();
        assert_eq!(none.evaluate(tag).ok(), Some(Freshness::Changed));
        let im = Conditions { if_match: Some("\"zzz\""), if_none_match: None };
        assert!(matches!(im.evaluate(tag), Err(S3Error::PreconditionFailed)));
        assert!(matches!(Conditions { if_match: Some("*"), ..none }.evaluate(None), Err(S3Error::PreconditionFailed)));
        let inm = Conditions { if_match: None, if_none_match: Some("\"abc\"") };
        assert_eq!(inm.evaluate(tag).ok(), Some(Freshness::NotModified { etag: tag.map(str::to_owned) }));
        assert_eq!(inm.evaluate(Some("\"other\"")).ok(), Some(Freshness::Changed));
    }
}
