//! Multipart uploads (the S3 door's CreateMultipartUpload, UploadPart,
//! UploadPartCopy, CompleteMultipartUpload, AbortMultipartUpload, ListParts,
//! ListMultipartUploads) onto the store's own multipart uploads.
//!
//! The control plane keeps a row per upload (`s3_uploads`) and per part
//! (`s3_upload_parts`): which tenant an upload belongs to (an upload id of
//! another tenant is `NoSuchUpload`), and the bytes its parts take. Those
//! bytes count in the tenant's object usage (summed from the rows, see
//! [`crate::usage::COLUMNS_U`]) from the moment a part is stored, so uploads
//! that are never completed cannot fill the store past the storage quota; a tenant has at most `server.s3_max_uploads` open uploads, each part
//! set at most `max_object_bytes`, and uploads older than
//! `server.s3_upload_expiry_s` are aborted by [`sweeper`].
//!
//! Completing runs the same steps as any object write: pipeline admission,
//! the backup hold, and the usage count of the object it replaces. The
//! composite checksum of a completed upload is kept in
//! `s3_object_checksums` (the store's metadata is fixed at the upload's
//! start) and answered while the object keeps the upload's ETag.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::GenericClient;
use futures::Stream;
use tokio::sync::watch;

use super::{ObjectError, admit, bucket};
use crate::control::{ControlError, provision};
use crate::ids::{ObjectKey, TenantId, TenantName};
use crate::pipeline::auth::Principal;
use crate::pipeline::{Action, Door};
use crate::services::Services;
use crate::upstream::s3::{Conditions, Read, S3Error, StoredPart};
use crate::usage::{self, Resource};

/// S3's largest part.
pub const MAX_PART_BYTES: u64 = 5 << 30;
/// S3's part numbers.
pub const PART_NUMBERS: std::ops::RangeInclusive<i32> = 1..=10_000;
const TS: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'";

/// Why a multipart operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error("The specified multipart upload does not exist.")]
    NoSuchUpload,
    #[error("{0}")]
    InvalidPart(String),
    #[error("The list of parts was not in ascending order.")]
    InvalidPartOrder,
    #[error("this tenant has {limit} multipart uploads open already; complete or abort some first")]
    TooManyUploads { limit: u32 },
    #[error("{0}")]
    InvalidArgument(String),
}

impl From<S3Error> for UploadError {
    fn from(e: S3Error) -> Self {
        UploadError::Object(e.into())
    }
}

impl From<ControlError> for UploadError {
    fn from(e: ControlError) -> Self {
        UploadError::Object(e.into())
    }
}

impl From<tokio_postgres::Error> for UploadError {
    fn from(e: tokio_postgres::Error) -> Self {
        UploadError::Object(ControlError::from(e).into())
    }
}

/// An open upload.
#[derive(Debug, Clone)]
pub struct Upload {
    pub upload_id: String,
    pub key: String,
    pub content_type: String,
    /// RFC 3339, milliseconds.
    pub created_at: String,
}

/// A stored part.
#[derive(Debug, Clone)]
pub struct Part {
    pub number: i32,
    pub size: i64,
    pub etag: String,
    /// `ALGORITHM:base64` as verified, if the client sent a checksum.
    pub checksum: Option<String>,
    /// RFC 3339, milliseconds.
    pub uploaded_at: String,
}

/// A part of a CompleteMultipartUpload request.
#[derive(Debug, Clone)]
pub struct Listed {
    pub number: i32,
    pub etag: Option<String>,
}

/// Start an upload of `key`; returns its id.
pub async fn create(
    svc: &Services,
    p: &Principal,
    door: Door,
    key: &ObjectKey,
    content_type: &str,
    metadata: &HashMap<String, String>,
) -> Result<String, UploadError> {
    admit(svc, p, door, Action::ObjectPut { key: key.as_str(), size: None }).await.map_err(ObjectError::from)?;
    let limit = svc.config.server.s3_max_uploads;
    let open: i64 = svc
        .control
        .client()
        .await?
        .query_one("SELECT count(*) FROM s3_uploads WHERE tenant_id = $1", &[&p.tenant_id.0])
        .await?
        .get(0);
    if open >= i64::from(limit) {
        return Err(UploadError::TooManyUploads { limit });
    }
    let bucket = bucket(svc, p);
    let id = svc.s3.create_multipart(&bucket, key.as_str(), content_type, metadata).await?;
    let inserted = async {
        svc.control
            .client()
            .await?
            .execute(
                "INSERT INTO s3_uploads (upload_id, tenant_id, key, content_type) VALUES ($1, $2, $3, $4)",
                &[&id, &p.tenant_id.0, &key.as_str(), &content_type],
            )
            .await?;
        Ok::<_, UploadError>(())
    }
    .await;
    if let Err(e) = inserted {
        // Not recorded: no one could ever complete or count it.
        let _ = svc.s3.abort_multipart(&bucket, key.as_str(), &id).await;
        return Err(e);
    }
    Ok(id)
}

/// The caller's open upload `upload_id` of `key`.
async fn find(c: &impl GenericClient, tenant: TenantId, upload_id: &str, key: &str) -> Result<Upload, UploadError> {
    let row = c
        .query_opt(
            &format!(
                "SELECT upload_id, key, content_type, to_char(created_at AT TIME ZONE 'UTC', {TS})
                 FROM s3_uploads WHERE upload_id = $1 AND tenant_id = $2 AND key = $3"
            ),
            &[&upload_id, &tenant.0, &key],
        )
        .await?;
    let row = row.ok_or(UploadError::NoSuchUpload)?;
    Ok(Upload { upload_id: row.get(0), key: row.get(1), content_type: row.get(2), created_at: row.get(3) })
}

/// Bytes of the upload's parts other than `number`, and of part `number`.
async fn part_bytes(c: &impl GenericClient, upload_id: &str, number: i32) -> Result<(i64, i64), UploadError> {
    let row = c
        .query_one(
            "SELECT coalesce(sum(size) FILTER (WHERE part_number <> $2), 0)::bigint,
                    coalesce(sum(size) FILTER (WHERE part_number = $2), 0)::bigint
             FROM s3_upload_parts WHERE upload_id = $1",
            &[&upload_id, &number],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Check that part `number` of `length` bytes fits: the upload under the
/// per-object cap, the tenant under its storage quota (counting the part it
/// replaces).
async fn check_room(
    svc: &Services,
    p: &Principal,
    upload_id: &str,
    number: i32,
    length: u64,
) -> Result<(), UploadError> {
    if !PART_NUMBERS.contains(&number) {
        return Err(UploadError::InvalidArgument(
            "Part number must be an integer between 1 and 10000, inclusive".into(),
        ));
    }
    let cap = u64::try_from(p.quotas.max_object_bytes).unwrap_or(0);
    if length > MAX_PART_BYTES {
        return Err(S3Error::TooLarge { limit: MAX_PART_BYTES }.into());
    }
    let (others, old) = part_bytes(&svc.control.client().await?, upload_id, number).await?;
    if u64::try_from(others).unwrap_or(0).saturating_add(length) > cap {
        return Err(S3Error::TooLarge { limit: cap }.into());
    }
    let adding = i64::try_from(length).unwrap_or(i64::MAX) - old;
    usage::check(&p.quotas, &p.usage, Resource::Objects, adding).map_err(ObjectError::from)?;
    Ok(())
}

/// Record part `number` (replacing a part of the same number). An upload
/// that was completed or aborted meanwhile is gone.
async fn record_part(
    upload_id: &str,
    number: i32,
    size: i64,
    etag: &str,
    checksum: Option<&str>,
    svc: &Services,
) -> Result<(), UploadError> {
    let inserted = svc
        .control
        .client()
        .await?
        .execute(
            "INSERT INTO s3_upload_parts (upload_id, part_number, size, etag, checksum)
             SELECT upload_id, $2, $3, $4, $5 FROM s3_uploads WHERE upload_id = $1
             ON CONFLICT (upload_id, part_number) DO UPDATE
             SET size = excluded.size, etag = excluded.etag, checksum = excluded.checksum, uploaded_at = now()",
            &[&upload_id, &number, &size, &etag, &checksum],
        )
        .await?;
    if inserted == 0 {
        return Err(UploadError::NoSuchUpload);
    }
    Ok(())
}

/// What [`upload_part`] is given.
pub struct PartUpload<'a> {
    pub key: &'a ObjectKey,
    pub upload_id: &'a str,
    pub number: i32,
    /// The part's length (S3 requires `Content-Length` on UploadPart).
    pub length: u64,
    /// Where the door's check of the body's checksum lands, if it has one.
    pub checksum: Option<super::checksum::Slot>,
}

/// Store one part, streamed. Returns its ETag.
pub async fn upload_part<S, E>(
    svc: &Services,
    p: &Principal,
    door: Door,
    part: PartUpload<'_>,
    body: S,
) -> Result<String, UploadError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Sync + 'static,
    E: std::fmt::Display,
{
    find(&svc.control.client().await?, p.tenant_id, part.upload_id, part.key.as_str()).await?;
    admit(svc, p, door, Action::ObjectPut { key: part.key.as_str(), size: Some(part.length) })
        .await
        .map_err(ObjectError::from)?;
    check_room(svc, p, part.upload_id, part.number, part.length).await?;
    let bucket = bucket(svc, p);
    let etag = svc
        .s3
        .upload_part_stream(&bucket, part.key.as_str(), part.upload_id, part.number, part.length, body)
        .await
        .map_err(no_such_upload)?;
    let size = i64::try_from(part.length).unwrap_or(i64::MAX);
    let checksum = match part.checksum.map(|s| s.get()) {
        Some(super::checksum::Outcome::Verified(v)) => Some(v),
        _ => None,
    };
    record_part(part.upload_id, part.number, size, &etag, checksum.as_deref(), svc).await?;
    Ok(etag)
}

/// What [`upload_part_copy`] is given.
pub struct PartCopy<'a> {
    pub key: &'a ObjectKey,
    pub upload_id: &'a str,
    pub number: i32,
    pub source: &'a ObjectKey,
    /// `x-amz-copy-source-range` (`bytes=first-last`).
    pub range: Option<&'a str>,
    pub if_match: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
    /// The copy-source date conditions (either failing is 412).
    pub dates: super::DateConditions,
}

/// Copy an object of the caller's bucket (or a range of it) into a part,
/// server-side in the store. Returns the part's ETag.
pub async fn upload_part_copy(
    svc: &Services,
    p: &Principal,
    door: Door,
    copy: PartCopy<'_>,
) -> Result<String, UploadError> {
    find(&svc.control.client().await?, p.tenant_id, copy.upload_id, copy.key.as_str()).await?;
    admit(svc, p, door, Action::ObjectGet { key: copy.source.as_str() }).await.map_err(ObjectError::from)?;
    let bucket = bucket(svc, p);
    let conds = Conditions { if_match: copy.if_match, if_none_match: copy.if_none_match };
    let size = match svc.s3.head_object(&bucket, copy.source.as_str(), conds).await? {
        Read::Found(info) => {
            let modified = info.last_modified.map(|t| t.secs());
            if copy.dates.check(modified, copy.if_match.is_some(), copy.if_none_match.is_some()).is_err() {
                return Err(S3Error::PreconditionFailed.into());
            }
            info.length
        }
        Read::NotModified { .. } => return Err(S3Error::PreconditionFailed.into()),
    };
    let (range, length) = match copy.range {
        None => (None, size),
        Some(r) => {
            let (first, last) = copy_range(r, size)?;
            (Some(format!("bytes={first}-{last}")), last - first + 1)
        }
    };
    admit(svc, p, door, Action::ObjectPut { key: copy.key.as_str(), size: Some(length) })
        .await
        .map_err(ObjectError::from)?;
    check_room(svc, p, copy.upload_id, copy.number, length).await?;
    let etag = svc
        .s3
        .upload_part_copy(&bucket, copy.key.as_str(), copy.upload_id, copy.number, copy.source.as_str(), range, conds)
        .await
        .map_err(no_such_upload)?;
    let size = i64::try_from(length).unwrap_or(i64::MAX);
    record_part(copy.upload_id, copy.number, size, &etag, None, svc).await?;
    Ok(etag)
}

/// `bytes=first-last` of an object of `size` bytes: both ends inclusive and
/// inside the object (S3 takes no open or suffix ranges here).
fn copy_range(r: &str, size: u64) -> Result<(u64, u64), UploadError> {
    let bad = || {
        UploadError::InvalidArgument(format!(
            "The x-amz-copy-source-range value must be of the form bytes=first-last: {r}"
        ))
    };
    let (first, last) = r.strip_prefix("bytes=").and_then(|s| s.split_once('-')).ok_or_else(bad)?;
    let (first, last): (u64, u64) = (first.parse().map_err(|_| bad())?, last.parse().map_err(|_| bad())?);
    if first > last || last >= size {
        return Err(S3Error::InvalidRange.into());
    }
    Ok((first, last))
}

/// The outcome of [`complete`].
#[derive(Debug, Clone)]
pub struct Completed {
    pub etag: Option<String>,
    pub size: u64,
    /// `ALGORITHM:base64-N` of the parts' checksums, when every listed part has one of the same algorithm.
    pub checksums: Vec<String>,
}

/// Complete the upload from the client's list of parts (ascending numbers,
/// each with the ETag UploadPart returned).
pub async fn complete(
    svc: &Services,
    p: &Principal,
    door: Door,
    key: &ObjectKey,
    upload_id: &str,
    listed: &[Listed],
) -> Result<Completed, UploadError> {
    let c = svc.control.client().await?;
    find(&c, p.tenant_id, upload_id, key.as_str()).await?;
    let stored = parts(&c, upload_id, 0, i64::from(*PART_NUMBERS.end())).await?;
    drop(c);
    if listed.is_empty() {
        return Err(UploadError::InvalidArgument("You must specify at least one part".into()));
    }
    if listed.windows(2).any(|w| w[0].number >= w[1].number) {
        return Err(UploadError::InvalidPartOrder);
    }
    let by_number: HashMap<i32, &Part> = stored.iter().map(|p| (p.number, p)).collect();
    let mut chosen = Vec::with_capacity(listed.len());
    let mut total: u64 = 0;
    for l in listed {
        let part = by_number.get(&l.number).filter(|part| l.etag.as_deref().is_none_or(|e| same_etag(e, &part.etag)));
        let Some(part) = part else {
            return Err(UploadError::InvalidPart(format!(
                "One or more of the specified parts could not be found (part {}). The part may not have been \
                 uploaded, or the specified entity tag may not match the part's entity tag.",
                l.number
            )));
        };
        total += u64::try_from(part.size).unwrap_or(0);
        chosen.push(*part);
    }
    admit(svc, p, door, Action::ObjectPut { key: key.as_str(), size: Some(total) }).await.map_err(ObjectError::from)?;
    let bucket = bucket(svc, p);
    crate::backup::hold::before_write(svc, p.tenant_id, &bucket, key.as_str()).await.map_err(ObjectError::from)?;
    let replaced = match svc.s3.head_object(&bucket, key.as_str(), Conditions::default()).await {
        Ok(Read::Found(info)) => Some(info.length),
        Ok(Read::NotModified { .. }) | Err(S3Error::NotFound) => None,
        Err(e) => return Err(e.into()),
    };
    let store_parts: Vec<StoredPart> =
        chosen.iter().map(|p| StoredPart { number: p.number, etag: p.etag.clone() }).collect();
    let etag =
        svc.s3.complete_multipart(&bucket, key.as_str(), upload_id, &store_parts).await.map_err(no_such_upload)?;
    // The parts' bytes become the object's (unlisted parts are dropped).
    let replaced_bytes = replaced.map_or(0, |r| i64::try_from(r).unwrap_or(0));
    let object = i64::try_from(total).unwrap_or(i64::MAX) - replaced_bytes;
    finish(svc, p.tenant_id, upload_id, object, i64::from(replaced.is_none())).await?;
    let checksums = composite_checksums(&chosen);
    if let (Some(sum), Some(etag)) = (checksums.first(), etag.as_deref()) {
        // Kept for HEAD / GET with checksum mode; the object is complete
        // either way, so a failure here costs only the stored checksum.
        if let Err(e) = keep_checksum(svc, p.tenant_id, key, etag, sum).await {
            tracing::warn!(key = %key, error = %e, "keep the multipart object's checksum");
        }
    }
    Ok(Completed { etag, size: total, checksums })
}

/// Whether an ETag is of the multipart form (`"…-N"`).
pub fn multipart_etag(etag: Option<&str>) -> bool {
    etag.is_some_and(|e| e.trim_matches('"').rsplit_once('-').is_some_and(|(_, n)| n.parse::<u32>().is_ok()))
}

async fn keep_checksum(
    svc: &Services,
    tenant: TenantId,
    key: &ObjectKey,
    etag: &str,
    sum: &str,
) -> Result<(), ControlError> {
    svc.control
        .client()
        .await?
        .execute(
            "INSERT INTO s3_object_checksums (tenant_id, key, etag, checksum) VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_id, key) DO UPDATE SET etag = excluded.etag, checksum = excluded.checksum",
            &[&tenant.0, &key.as_str(), &etag, &sum],
        )
        .await?;
    Ok(())
}

/// The whole-object checksum (`ALGORITHM:value-N`) a multipart upload left
/// for `key`, while the object is still that upload's (same ETag). Only
/// multipart ETags are looked up; a failed lookup answers none.
pub async fn stored_checksum(svc: &Services, tenant: TenantId, key: &ObjectKey, etag: Option<&str>) -> Option<String> {
    let etag = etag.filter(|e| multipart_etag(Some(e)))?;
    let c = svc.control.client().await.ok()?;
    let row = c
        .query_opt(
            "SELECT checksum FROM s3_object_checksums WHERE tenant_id = $1 AND key = $2 AND etag = $3",
            &[&tenant.0, &key.as_str(), &etag],
        )
        .await;
    match row {
        Ok(r) => r.map(|r| r.get(0)),
        Err(e) => {
            tracing::warn!(key = %key, error = %e, "look up a multipart object's checksum");
            None
        }
    }
}

/// Forget the checksum of `key` (its multipart object was replaced or
/// deleted).
pub async fn forget_checksum(svc: &Services, tenant: TenantId, key: &ObjectKey) -> Result<(), ControlError> {
    svc.control
        .client()
        .await?
        .execute("DELETE FROM s3_object_checksums WHERE tenant_id = $1 AND key = $2", &[&tenant.0, &key.as_str()])
        .await?;
    Ok(())
}

/// Abort the upload and free its parts.
pub async fn abort(
    svc: &Services,
    p: &Principal,
    door: Door,
    key: &ObjectKey,
    upload_id: &str,
) -> Result<(), UploadError> {
    find(&svc.control.client().await?, p.tenant_id, upload_id, key.as_str()).await?;
    admit(svc, p, door, Action::ObjectPut { key: key.as_str(), size: Some(0) }).await.map_err(ObjectError::from)?;
    svc.s3.abort_multipart(&bucket(svc, p), key.as_str(), upload_id).await?;
    finish(svc, p.tenant_id, upload_id, 0, 0).await?;
    Ok(())
}

/// Drop the upload's rows (its parts' bytes leave the usage with them) and
/// count `object_bytes` / `objects` for what it became. Whoever deletes the
/// row does the accounting, so a completion racing an abort or the sweeper
/// counts once.
async fn finish(
    svc: &Services,
    tenant: TenantId,
    upload_id: &str,
    object_bytes: i64,
    objects: i64,
) -> Result<(), UploadError> {
    let mut c = svc.control.client().await?;
    let tx = c.transaction().await?;
    let gone = tx.execute("DELETE FROM s3_uploads WHERE upload_id = $1", &[&upload_id]).await?;
    if gone > 0 {
        usage::add_objects(&tx, tenant, object_bytes, objects).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The caller's open uploads whose key starts with `prefix`, ordered by key
/// then upload id, after the (`key_marker`, `upload_id_marker`) position;
/// at most `limit` (one more tells the caller the list is truncated).
pub async fn list_uploads(
    c: &impl GenericClient,
    tenant: TenantId,
    prefix: &str,
    key_marker: &str,
    upload_id_marker: &str,
    limit: i64,
) -> Result<Vec<Upload>, UploadError> {
    let rows = c
        .query(
            &format!(
                "SELECT upload_id, key, content_type, to_char(created_at AT TIME ZONE 'UTC', {TS})
                 FROM s3_uploads
                 WHERE tenant_id = $1 AND starts_with(key, $2)
                   AND (key COLLATE \"C\" > $3 OR (key = $3 AND $4 <> '' AND upload_id COLLATE \"C\" > $4))
                 ORDER BY key COLLATE \"C\", upload_id COLLATE \"C\" LIMIT $5"
            ),
            &[&tenant.0, &prefix, &key_marker, &upload_id_marker, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Upload { upload_id: r.get(0), key: r.get(1), content_type: r.get(2), created_at: r.get(3) })
        .collect())
}

/// The caller's upload `upload_id` of `key` and its parts numbered above
/// `after`, at most `limit`.
pub async fn list_parts(
    svc: &Services,
    p: &Principal,
    door: Door,
    key: &ObjectKey,
    upload_id: &str,
    after: i32,
    limit: i64,
) -> Result<(Upload, Vec<Part>), UploadError> {
    admit(svc, p, door, Action::ObjectHead { key: key.as_str() }).await.map_err(ObjectError::from)?;
    let c = svc.control.client().await?;
    let upload = find(&c, p.tenant_id, upload_id, key.as_str()).await?;
    let parts = parts(&c, upload_id, after, limit).await?;
    Ok((upload, parts))
}

async fn parts(c: &impl GenericClient, upload_id: &str, after: i32, limit: i64) -> Result<Vec<Part>, UploadError> {
    let rows = c
        .query(
            &format!(
                "SELECT part_number, size, etag, checksum, to_char(uploaded_at AT TIME ZONE 'UTC', {TS})
                 FROM s3_upload_parts WHERE upload_id = $1 AND part_number > $2
                 ORDER BY part_number LIMIT $3"
            ),
            &[&upload_id, &after, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Part { number: r.get(0), size: r.get(1), etag: r.get(2), checksum: r.get(3), uploaded_at: r.get(4) })
        .collect())
}

/// ETags compare without their quotes (clients send them either way).
fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

/// S3's composite checksum of a multipart object: the checksum (same
/// algorithm) of the parts' binary checksums, then `-N`. Only when every part
/// has a checksum of one algorithm.
fn composite_checksums(parts: &[&Part]) -> Vec<String> {
    let Some(first) = parts.first().and_then(|p| p.checksum.as_deref()) else { return Vec::new() };
    let Some((algorithm, _)) = first.split_once(':') else { return Vec::new() };
    let mut raw = Vec::new();
    for p in parts {
        let Some((a, value)) = p.checksum.as_deref().and_then(|c| c.split_once(':')) else { return Vec::new() };
        let Ok(bytes) = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, value) else {
            return Vec::new();
        };
        if a != algorithm {
            return Vec::new();
        }
        raw.extend_from_slice(&bytes);
    }
    match crate::objects::checksum::digest(algorithm, &raw) {
        Some(sum) => vec![format!("{algorithm}:{sum}-{}", parts.len())],
        None => Vec::new(),
    }
}

/// A store error that says the upload is gone (aborted or completed
/// meanwhile) is `NoSuchUpload`; a refusal with an S3 code keeps it.
fn no_such_upload(e: S3Error) -> UploadError {
    match e.code() {
        Some("NoSuchUpload") => UploadError::NoSuchUpload,
        Some("InvalidPart") => UploadError::InvalidPart(e.to_string()),
        Some("InvalidPartOrder") => UploadError::InvalidPartOrder,
        _ => e.into(),
    }
}

/// Abort uploads older than `server.s3_upload_expiry_s`, every few minutes,
/// until `shutdown`. Safe with many instances: aborting is idempotent in the
/// store and [`finish`] counts each upload once.
pub async fn sweeper(svc: Services, mut shutdown: watch::Receiver<bool>) {
    let expiry = svc.config.server.s3_upload_expiry_s;
    let every = Duration::from_secs((expiry / 4).clamp(1, 600));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        match sweep(&svc, expiry, None).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(uploads = n, "aborted expired multipart uploads"),
            Err(e) => tracing::warn!(error = %e, "sweep expired multipart uploads"),
        }
    }
}

/// One sweep: abort up to 100 uploads older than `expiry_s` (of one tenant
/// with `only`). Returns how many.
pub async fn sweep(svc: &Services, expiry_s: u64, only: Option<TenantId>) -> Result<usize, UploadError> {
    let rows = svc
        .control
        .client()
        .await?
        .query(
            "SELECT u.upload_id, u.key, u.tenant_id, t.name FROM s3_uploads u JOIN tenants t ON t.id = u.tenant_id
             WHERE u.created_at < now() - make_interval(secs => $1) AND ($2::uuid IS NULL OR u.tenant_id = $2)
             ORDER BY u.created_at LIMIT 100",
            &[&(expiry_s as f64), &only.map(|t| t.0)],
        )
        .await?;
    let mut n = 0;
    for r in &rows {
        let (upload_id, key, tenant): (String, String, uuid::Uuid) = (r.get(0), r.get(1), r.get(2));
        let Ok(name) = TenantName::parse(r.get::<_, &str>(3)) else { continue };
        svc.s3.abort_multipart(&provision::bucket_name(svc, &name), &key, &upload_id).await?;
        finish(svc, TenantId(tenant), &upload_id, 0, 0).await?;
        n += 1;
    }
    Ok(n)
}
