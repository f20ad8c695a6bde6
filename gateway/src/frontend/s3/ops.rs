//! The operations of the S3 door. Writes go through [`crate::objects`] (the
//! same code as `/v1/objects`: pipeline, backup hold, quotas, usage); reads
//! and lists admit through the same pipeline with the same `object.*` actions.

use std::collections::HashMap;

use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, Bucket, ChecksumMode, ChecksumType, CommonPrefix,
    CompleteMultipartUploadInput, CompleteMultipartUploadOutput, CopyObjectInput, CopyObjectOutput, CopyObjectResult,
    CopyPartResult, CopySource, CreateBucketInput, CreateBucketOutput, CreateMultipartUploadInput,
    CreateMultipartUploadOutput, DeleteObjectInput, DeleteObjectOutput, DeleteObjectsInput, DeleteObjectsOutput,
    DeletedObject, ETag, ETagCondition, GetBucketLocationInput, GetBucketLocationOutput, GetObjectInput,
    GetObjectOutput, HeadBucketInput, HeadBucketOutput, HeadObjectInput, HeadObjectOutput, ListBucketsInput,
    ListBucketsOutput, ListMultipartUploadsInput, ListMultipartUploadsOutput, ListObjectsInput, ListObjectsOutput,
    ListObjectsV2Input, ListObjectsV2Output, ListPartsInput, ListPartsOutput, MetadataDirective, MultipartUpload,
    Object, Part, PutObjectInput, PutObjectOutput, StreamingBlob, Timestamp, UploadPartCopyInput, UploadPartCopyOutput,
    UploadPartInput, UploadPartOutput,
};
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use tokio_util::io::ReaderStream;

use super::auth::Caller;
use super::error::{object_error, pipeline_error, store_error, upload_error};
use crate::frontend::http::objects::MAX_META_BYTES;
use crate::ids::ObjectKey;
use crate::objects::checksum::{self, Expected, Outcome, Verify};
use crate::objects::multipart::{self, Listed, PartCopy, PartUpload, UploadError};
use crate::objects::{self, DateConditions, DateFailure, Put};
use crate::pipeline::{Action, Door as PipelineDoor};
use crate::services::Services;
use crate::upstream::s3::{Conditions, LateMetadata, ListQuery, ObjectInfo, Read, S3Error as StoreError};

/// The pipeline's door for one S3 operation (the policy plugin sees its name).
fn door(operation: &'static str) -> PipelineDoor {
    PipelineDoor::S3 { operation }
}
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";
/// Chunk size when streaming an object to the client.
const READ_CHUNK: usize = 64 << 10;
const MAX_KEYS: i32 = 1000;

/// The S3 operations Sluice serves.
pub struct Door {
    svc: Services,
}

impl Door {
    pub fn new(svc: Services) -> Self {
        Self { svc }
    }
}

/// The caller [`super::auth::Access`] put on the request.
fn caller<T>(req: &S3Request<T>) -> S3Result<Caller> {
    req.extensions.get::<Caller>().cloned().ok_or_else(|| s3_error!(AccessDenied, "requests must be signed"))
}

fn key(raw: &str) -> S3Result<ObjectKey> {
    ObjectKey::parse(raw).map_err(|e| S3Error::with_message(S3ErrorCode::InvalidArgument, format!("key: {e}")))
}

/// An `If-Match` / `If-None-Match` condition as header text for the store.
fn condition(c: Option<&ETagCondition>) -> Option<String> {
    c.and_then(|c| c.to_http_header().ok()).and_then(|v| v.to_str().ok().map(str::to_owned))
}

fn etag(raw: Option<&str>) -> Option<ETag> {
    raw.and_then(|e| ETag::parse_http_header(e.as_bytes()).ok())
}

fn timestamp(info: &ObjectInfo) -> Option<Timestamp> {
    let t = info.last_modified?;
    time::OffsetDateTime::from_unix_timestamp(t.secs()).ok().map(Timestamp::from)
}

/// `x-amz-meta-*` (s3s collects them) → stored user metadata: the same map
/// `/v1/objects` shows as `x-sluice-meta-*`. Names lower-case, values
/// printable ASCII, at most [`MAX_META_BYTES`] in all, as there.
fn metadata(m: Option<HashMap<String, String>>) -> S3Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    let mut total = 0usize;
    for (k, v) in m.unwrap_or_default() {
        if k.to_ascii_lowercase().starts_with(checksum::RESERVED_META_PREFIX) {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidArgument,
                format!("user metadata names starting with {} are the gateway's own", checksum::RESERVED_META_PREFIX),
            ));
        }
        if !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(s3_error!(InvalidArgument, "user metadata values must be printable ASCII"));
        }
        total += k.len() + v.len();
        out.insert(k.to_ascii_lowercase(), v);
    }
    if total > MAX_META_BYTES {
        return Err(s3_error!(MetadataTooLarge));
    }
    Ok(out)
}

/// The `checksum_<algorithm>` fields of an S3 input, by algorithm.
macro_rules! checksum_values {
    ($input:expr) => {
        [
            ("CRC32", $input.checksum_crc32.as_ref()),
            ("CRC32C", $input.checksum_crc32c.as_ref()),
            ("CRC64NVME", $input.checksum_crc64nvme.as_ref()),
            ("SHA1", $input.checksum_sha1.as_ref()),
            ("SHA256", $input.checksum_sha256.as_ref()),
        ]
    };
}

/// Set the `checksum_<algorithm>` field of an S3 output from `ALGORITHM:base64`.
macro_rules! set_checksum {
    ($out:expr, $sum:expr) => {
        if let Some((algorithm, value)) = $sum.split_once(':') {
            let value = Some(value.to_owned());
            match algorithm {
                "CRC32" => $out.checksum_crc32 = value,
                "CRC32C" => $out.checksum_crc32c = value,
                "CRC64NVME" => $out.checksum_crc64nvme = value,
                "SHA1" => $out.checksum_sha1 = value,
                "SHA256" => $out.checksum_sha256 = value,
                _ => {}
            }
        }
    };
}

impl Door {
    /// The whole-object checksum for a read with checksum mode: the one
    /// stored with the object, else the composite one its multipart upload
    /// left (with its type).
    async fn whole_checksum(
        &self,
        c: &Caller,
        key: &ObjectKey,
        info: &crate::upstream::s3::ObjectInfo,
    ) -> Option<(String, Option<ChecksumType>)> {
        if let Some(sum) = info.metadata.get(checksum::META_KEY) {
            return Some((sum.clone(), None));
        }
        let sum = multipart::stored_checksum(&self.svc, c.principal.tenant_id, key, info.etag.as_deref()).await?;
        Some((sum, Some(ChecksumType::from_static(ChecksumType::COMPOSITE))))
    }
}

#[async_trait::async_trait]
impl S3 for Door {
    async fn list_buckets(&self, req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        let c = caller(&req)?;
        let bucket = Bucket { name: Some(c.principal.tenant.to_string()), ..Default::default() };
        Ok(S3Response::new(ListBucketsOutput { buckets: Some(vec![bucket]), ..Default::default() }))
    }

    /// The tenant's bucket always exists: creating it is answered as S3
    /// answers the owner (tools such as rclone create before they copy);
    /// any other name is not the caller's to create.
    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        let c = caller(&req)?;
        if req.input.bucket == c.principal.tenant.as_str() {
            Err(s3_error!(
                BucketAlreadyOwnedByYou,
                "Your previous request to create the named bucket succeeded and you already own it."
            ))
        } else {
            Err(s3_error!(AccessDenied, "each access key reaches its tenant's own bucket only"))
        }
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        caller(&req)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        caller(&req)?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        let c = caller(&req)?;
        let input = req.input;
        let max_keys = input.max_keys.unwrap_or(MAX_KEYS).clamp(0, MAX_KEYS);
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let marker = input.marker.clone().filter(|m| !m.is_empty());
        // After a common prefix (a marker ending in the delimiter) S3 skips
        // every key rolled up into it: start after the largest such key.
        let start_after = match (&marker, &delimiter) {
            (Some(m), Some(d)) if m.ends_with(d.as_str()) => Some(format!("{m}\u{10FFFF}")),
            _ => marker.clone(),
        };
        let prefix = input.prefix.clone().unwrap_or_default();
        let query = ListQuery {
            prefix: &prefix,
            delimiter: delimiter.as_deref(),
            limit: max_keys,
            cursor: None,
            start_after: start_after.as_deref(),
        };
        let page = self.list("ListObjects", &c, query).await?;
        let truncated = page.next_cursor.is_some();
        // v1 pages on by key: the last key or common prefix of the page.
        let last_key = page.contents.last().and_then(|o| o.key.clone());
        let last_prefix = page.prefixes.last().and_then(|p| p.prefix.clone());
        let next_marker = if truncated { last_key.into_iter().chain(last_prefix).max() } else { None };
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: input.prefix,
            marker: input.marker,
            delimiter: input.delimiter,
            max_keys: Some(max_keys),
            is_truncated: Some(truncated),
            next_marker,
            contents: Some(page.contents),
            common_prefixes: (!page.prefixes.is_empty()).then_some(page.prefixes),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        let c = caller(&req)?;
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let max_keys = input.max_keys.unwrap_or(MAX_KEYS).clamp(0, MAX_KEYS);
        let query = ListQuery {
            prefix: &prefix,
            delimiter: input.delimiter.as_deref().filter(|d| !d.is_empty()),
            limit: max_keys,
            cursor: input.continuation_token.as_deref().filter(|t| !t.is_empty()),
            start_after: input.start_after.as_deref().filter(|s| !s.is_empty()),
        };
        let page = self.list("ListObjectsV2", &c, query).await?;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket.clone()),
            prefix: input.prefix.clone(),
            delimiter: input.delimiter.clone(),
            max_keys: Some(max_keys),
            continuation_token: input.continuation_token.clone(),
            start_after: input.start_after.clone(),
            // Keys are returned as they are, never URL-encoded, so the
            // response names no encoding type (clients then decode nothing).
            encoding_type: None,
            key_count: Some(i32::try_from(page.contents.len() + page.prefixes.len()).unwrap_or(i32::MAX)),
            is_truncated: Some(page.next_cursor.is_some()),
            next_continuation_token: page.next_cursor,
            contents: Some(page.contents),
            common_prefixes: (!page.prefixes.is_empty()).then_some(page.prefixes),
            ..Default::default()
        }))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let c = caller(&req)?;
        let input = req.input;
        let key = key(&input.key)?;
        let (if_match, if_none_match) = (condition(input.if_match.as_ref()), condition(input.if_none_match.as_ref()));
        objects::admit(&self.svc, &c.principal, door("HeadObject"), Action::ObjectHead { key: key.as_str() })
            .await
            .map_err(pipeline_error)?;
        let conds = Conditions { if_match: if_match.as_deref(), if_none_match: if_none_match.as_deref() };
        let info = match self.svc.s3.head_object(&objects::bucket(&self.svc, &c.principal), key.as_str(), conds).await {
            Ok(Read::Found(info)) => info,
            Ok(Read::NotModified { .. }) => return Err(not_modified()),
            Err(e) => return Err(store_error(e)),
        };
        let date_conds = dates(input.if_modified_since, input.if_unmodified_since);
        check_dates(date_conds, &info, (if_match.is_some(), if_none_match.is_some()), false)?;
        let mut out = HeadObjectOutput {
            content_length: Some(i64::try_from(info.length).unwrap_or(i64::MAX)),
            content_type: Some(info.content_type.clone().unwrap_or_else(|| DEFAULT_CONTENT_TYPE.into())),
            e_tag: etag(info.etag.as_deref()),
            last_modified: timestamp(&info),
            accept_ranges: Some("bytes".into()),
            ..Default::default()
        };
        if wants_checksum(input.checksum_mode.as_ref())
            && let Some((sum, checksum_type)) = self.whole_checksum(&c, &key, &info).await
        {
            set_checksum!(out, sum);
            out.checksum_type = checksum_type;
        }
        out.metadata = user_metadata(&info.metadata);
        Ok(S3Response::new(out))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let c = caller(&req)?;
        let input = req.input;
        let key = key(&input.key)?;
        if input.part_number.is_some() {
            return Err(s3_error!(NotImplemented, "GetObject with partNumber is not supported"));
        }
        let (if_match, if_none_match) = (condition(input.if_match.as_ref()), condition(input.if_none_match.as_ref()));
        let range = input.range.map(|r| r.to_header_string());
        objects::admit(&self.svc, &c.principal, door("GetObject"), Action::ObjectGet { key: key.as_str() })
            .await
            .map_err(pipeline_error)?;
        let conds = Conditions { if_match: if_match.as_deref(), if_none_match: if_none_match.as_deref() };
        let bucket = objects::bucket(&self.svc, &c.principal);
        let obj = match self.svc.s3.get_object(&bucket, &key, range.as_deref(), conds).await {
            Ok(Read::Found(obj)) => obj,
            Ok(Read::NotModified { .. }) => return Err(not_modified()),
            Err(e) => return Err(store_error(e)),
        };
        let info = obj.info;
        let date_conds = dates(input.if_modified_since, input.if_unmodified_since);
        check_dates(date_conds, &info, (if_match.is_some(), if_none_match.is_some()), false)?;
        let partial = range.is_some() && info.content_range.is_some();
        objects::charge_out(&self.svc, &c.principal, info.length);
        let body = ReaderStream::with_capacity(obj.body.into_async_read(), READ_CHUNK);
        let mut out = GetObjectOutput {
            body: Some(StreamingBlob::wrap(body)),
            content_length: Some(i64::try_from(info.length).unwrap_or(i64::MAX)),
            content_type: Some(info.content_type.clone().unwrap_or_else(|| DEFAULT_CONTENT_TYPE.into())),
            content_range: info.content_range.clone(),
            e_tag: etag(info.etag.as_deref()),
            last_modified: timestamp(&info),
            accept_ranges: Some("bytes".into()),
            ..Default::default()
        };
        // A whole-object checksum, for a whole-object read only.
        if !partial
            && wants_checksum(input.checksum_mode.as_ref())
            && let Some((sum, checksum_type)) = self.whole_checksum(&c, &key, &info).await
        {
            set_checksum!(out, sum);
            out.checksum_type = checksum_type;
        }
        out.metadata = user_metadata(&info.metadata);
        if partial {
            Ok(S3Response::with_status(out, http::StatusCode::PARTIAL_CONTENT))
        } else {
            Ok(S3Response::new(out))
        }
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let c = caller(&req)?;
        let input = req.input;
        let key = key(&input.key)?;
        if input.if_none_match.is_some() {
            return Err(s3_error!(NotImplemented, "PutObject with If-None-Match is not supported"));
        }
        if input.sse_customer_algorithm.is_some() || input.ssekms_key_id.is_some() {
            return Err(s3_error!(NotImplemented, "server-side encryption with customer or KMS keys is not supported"));
        }
        let declared = input.content_length.and_then(|n| u64::try_from(n).ok());
        let cap = u64::try_from(c.principal.quotas.max_object_bytes).unwrap_or(0);
        if declared.is_some_and(|d| d > cap) {
            return Err(S3Error::with_message(
                S3ErrorCode::EntityTooLarge,
                format!("the object is larger than this tenant's limit of {cap} bytes"),
            ));
        }
        let sent = body_checksum(&req.headers, req.trailing_headers.as_ref(), checksum_values!(input))?;
        let if_match = condition(input.if_match.as_ref());
        let mut meta = metadata(input.metadata)?;
        let body = input
            .body
            .unwrap_or_else(|| StreamingBlob::wrap(futures::stream::empty::<Result<bytes::Bytes, std::io::Error>>()));
        // A header value is stored up front (the body is verified before the
        // store sees its end); a trailer's once the body has ended.
        let header_sum = match &sent {
            Some((algorithm, Expected::Header(v))) => Some(format!("{algorithm}:{v}")),
            _ => None,
        };
        let (body, slot) = verified(body, sent);
        let (body, md5) = with_content_md5(body, input.content_md5);
        let mut late = LateMetadata::default();
        if let Some(slot) = &slot {
            if let Some(v) = header_sum {
                meta.insert(checksum::META_KEY.into(), v);
            } else {
                let slot = slot.clone();
                late = LateMetadata(Some(std::sync::Arc::new(move || match slot.get() {
                    Outcome::Verified(v) => Some((checksum::META_KEY.to_owned(), v)),
                    _ => None,
                })));
            }
        }
        let put = Put {
            key: &key,
            declared,
            content_type: input.content_type.unwrap_or_else(|| DEFAULT_CONTENT_TYPE.into()),
            metadata: meta,
            if_match: if_match.as_deref(),
            late_metadata: late,
        };
        let stored = objects::put(&self.svc, &c.principal, door("PutObject"), put, body).await;
        let stored = stored.map_err(|e| {
            bad_digest(slot.as_ref()).or_else(|| bad_digest(md5.as_ref())).unwrap_or_else(|| object_error(e))
        })?;
        let mut out = PutObjectOutput {
            e_tag: etag(stored.etag.as_deref()),
            size: Some(i64::try_from(stored.size).unwrap_or(i64::MAX)),
            ..Default::default()
        };
        if let Some(Outcome::Verified(sum)) = slot.as_ref().map(checksum::Slot::get) {
            set_checksum!(out, &sum);
        }
        Ok(S3Response::new(out))
    }

    /// CopyObject within the tenant's bucket. The bytes stream through the
    /// gateway (GET from the store, then the same put as PutObject), so the
    /// copy is admitted, quota-checked, counted and backup-held like any
    /// write; the store's server-side copy would skip all of that.
    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        let c = caller(&req)?;
        let input = req.input;
        let src = copy_source(&c, &input.copy_source)?;
        let dest = key(&input.key)?;
        let replace = input.metadata_directive.as_ref().is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        if src == dest && !replace {
            return Err(s3_error!(
                InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing \
                 the object's metadata."
            ));
        }
        let (if_match, if_none_match) =
            (condition(input.copy_source_if_match.as_ref()), condition(input.copy_source_if_none_match.as_ref()));
        objects::admit(&self.svc, &c.principal, door("CopyObject"), Action::ObjectGet { key: src.as_str() })
            .await
            .map_err(pipeline_error)?;
        let conds = Conditions { if_match: if_match.as_deref(), if_none_match: if_none_match.as_deref() };
        let bucket = objects::bucket(&self.svc, &c.principal);
        let obj = match self.svc.s3.get_object(&bucket, &src, None, conds).await {
            Ok(Read::Found(obj)) => obj,
            // A copy's source conditions fail with 412 either way.
            Ok(Read::NotModified { .. }) => return Err(s3_error!(PreconditionFailed)),
            Err(e) => return Err(store_error(e)),
        };
        let date_conds =
            dates(input.copy_source_if_modified_since.clone(), input.copy_source_if_unmodified_since.clone());
        check_dates(date_conds, &obj.info, (if_match.is_some(), if_none_match.is_some()), true)?;
        let cap = u64::try_from(c.principal.quotas.max_object_bytes).unwrap_or(0);
        if obj.info.length > cap {
            return Err(S3Error::with_message(
                S3ErrorCode::EntityTooLarge,
                format!("the object is larger than this tenant's limit of {cap} bytes"),
            ));
        }
        let (content_type, meta) = if replace {
            (input.content_type.unwrap_or_else(|| DEFAULT_CONTENT_TYPE.into()), metadata(input.metadata)?)
        } else {
            (obj.info.content_type.unwrap_or_else(|| DEFAULT_CONTENT_TYPE.into()), obj.info.metadata)
        };
        let put = Put {
            key: &dest,
            declared: Some(obj.info.length),
            content_type,
            metadata: meta,
            if_match: None,
            late_metadata: LateMetadata::default(),
        };
        let body = ReaderStream::with_capacity(obj.body.into_async_read(), READ_CHUNK);
        let stored =
            objects::put(&self.svc, &c.principal, door("CopyObject"), put, body).await.map_err(object_error)?;
        let result = CopyObjectResult {
            e_tag: etag(stored.etag.as_deref()),
            last_modified: Some(Timestamp::from(time::OffsetDateTime::now_utc())),
            ..Default::default()
        };
        Ok(S3Response::new(CopyObjectOutput { copy_object_result: Some(result), ..Default::default() }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let c = caller(&req)?;
        let input = req.input;
        let key = key(&input.key)?;
        if input.sse_customer_algorithm.is_some() || input.ssekms_key_id.is_some() {
            return Err(s3_error!(NotImplemented, "server-side encryption with customer or KMS keys is not supported"));
        }
        let content_type = input.content_type.unwrap_or_else(|| DEFAULT_CONTENT_TYPE.into());
        let meta = metadata(input.metadata)?;
        let id = multipart::create(&self.svc, &c.principal, door("CreateMultipartUpload"), &key, &content_type, &meta)
            .await
            .map_err(upload_error)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id),
            checksum_algorithm: input.checksum_algorithm,
            ..Default::default()
        }))
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        let c = caller(&req)?;
        let input = req.input;
        let key = key(&input.key)?;
        let Some(length) = input.content_length.and_then(|n| u64::try_from(n).ok()) else {
            return Err(s3_error!(MissingContentLength, "UploadPart needs a Content-Length"));
        };
        let sent = body_checksum(&req.headers, req.trailing_headers.as_ref(), checksum_values!(input))?;
        let body = input
            .body
            .unwrap_or_else(|| StreamingBlob::wrap(futures::stream::empty::<Result<bytes::Bytes, std::io::Error>>()));
        let (body, slot) = verified(body, sent);
        let (body, md5) = with_content_md5(body, input.content_md5);
        // The part's row records the checksum once the body has passed it.
        let part = PartUpload {
            key: &key,
            upload_id: &input.upload_id,
            number: input.part_number,
            length,
            checksum: slot.clone(),
        };
        let etag_out = multipart::upload_part(&self.svc, &c.principal, door("UploadPart"), part, body).await;
        let etag_out = etag_out.map_err(|e| {
            bad_digest(slot.as_ref()).or_else(|| bad_digest(md5.as_ref())).unwrap_or_else(|| upload_error(e))
        })?;
        let mut out = UploadPartOutput { e_tag: etag(Some(&etag_out)), ..Default::default() };
        if let Some(Outcome::Verified(sum)) = slot.as_ref().map(checksum::Slot::get) {
            set_checksum!(out, &sum);
        }
        Ok(S3Response::new(out))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let c = caller(&req)?;
        let input = req.input;
        let source = copy_source(&c, &input.copy_source)?;
        let dest = key(&input.key)?;
        let (if_match, if_none_match) =
            (condition(input.copy_source_if_match.as_ref()), condition(input.copy_source_if_none_match.as_ref()));
        let copy = PartCopy {
            key: &dest,
            upload_id: &input.upload_id,
            number: input.part_number,
            source: &source,
            range: input.copy_source_range.as_deref(),
            if_match: if_match.as_deref(),
            if_none_match: if_none_match.as_deref(),
            dates: dates(input.copy_source_if_modified_since, input.copy_source_if_unmodified_since),
        };
        let etag_out = multipart::upload_part_copy(&self.svc, &c.principal, door("UploadPartCopy"), copy)
            .await
            .map_err(upload_error)?;
        let result = CopyPartResult {
            e_tag: etag(Some(&etag_out)),
            last_modified: Some(Timestamp::from(time::OffsetDateTime::now_utc())),
            ..Default::default()
        };
        Ok(S3Response::new(UploadPartCopyOutput { copy_part_result: Some(result), ..Default::default() }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let c = caller(&req)?;
        let input = req.input;
        let key = key(&input.key)?;
        if input.if_match.is_some() || input.if_none_match.is_some() {
            return Err(s3_error!(NotImplemented, "conditional CompleteMultipartUpload is not supported"));
        }
        let mut listed = Vec::new();
        for p in input.multipart_upload.and_then(|m| m.parts).unwrap_or_default() {
            let Some(number) = p.part_number else {
                return Err(s3_error!(MalformedXML, "every part needs a PartNumber"));
            };
            let etag =
                p.e_tag.as_ref().and_then(|e| e.to_http_header().ok()).and_then(|v| v.to_str().ok().map(str::to_owned));
            listed.push(Listed { number, etag });
        }
        let done = multipart::complete(
            &self.svc,
            &c.principal,
            door("CompleteMultipartUpload"),
            &key,
            &input.upload_id,
            &listed,
        )
        .await
        .map_err(upload_error)?;
        let mut out = CompleteMultipartUploadOutput {
            bucket: Some(input.bucket.clone()),
            key: Some(input.key.clone()),
            e_tag: etag(done.etag.as_deref()),
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            ..Default::default()
        };
        for sum in &done.checksums {
            set_checksum!(out, sum);
            out.checksum_type = Some(ChecksumType::from_static(ChecksumType::COMPOSITE));
        }
        Ok(S3Response::new(out))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let c = caller(&req)?;
        let key = key(&req.input.key)?;
        multipart::abort(&self.svc, &c.principal, door("AbortMultipartUpload"), &key, &req.input.upload_id)
            .await
            .map_err(upload_error)?;
        Ok(S3Response::with_status(AbortMultipartUploadOutput::default(), http::StatusCode::NO_CONTENT))
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        let c = caller(&req)?;
        let input = req.input;
        let key = key(&input.key)?;
        let max_parts = input.max_parts.unwrap_or(MAX_KEYS).clamp(0, MAX_KEYS);
        let after = input.part_number_marker.unwrap_or(0).max(0);
        let (_, mut parts) = multipart::list_parts(
            &self.svc,
            &c.principal,
            door("ListParts"),
            &key,
            &input.upload_id,
            after,
            i64::from(max_parts) + 1,
        )
        .await
        .map_err(upload_error)?;
        let truncated = parts.len() > usize::try_from(max_parts).unwrap_or(0);
        parts.truncate(usize::try_from(max_parts).unwrap_or(0));
        let next = if truncated { parts.last().map(|p| p.number) } else { None };
        let parts = parts
            .into_iter()
            .map(|p| {
                let mut part = Part {
                    part_number: Some(p.number),
                    size: Some(p.size),
                    e_tag: etag(Some(&p.etag)),
                    last_modified: rfc3339(&p.uploaded_at),
                    ..Default::default()
                };
                if let Some(sum) = &p.checksum {
                    set_checksum!(part, sum);
                }
                part
            })
            .collect();
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: next,
            max_parts: Some(max_parts),
            is_truncated: Some(truncated),
            parts: Some(parts),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let c = caller(&req)?;
        let input = req.input;
        if input.delimiter.as_deref().is_some_and(|d| !d.is_empty()) {
            return Err(s3_error!(NotImplemented, "ListMultipartUploads with a delimiter is not supported"));
        }
        let prefix = input.prefix.clone().unwrap_or_default();
        c.check_key(&prefix)?;
        objects::admit(&self.svc, &c.principal, door("ListMultipartUploads"), Action::ObjectList { prefix: &prefix })
            .await
            .map_err(pipeline_error)?;
        let max = input.max_uploads.unwrap_or(MAX_KEYS).clamp(0, MAX_KEYS);
        let client = self.svc.control.client().await.map_err(|e| upload_error(UploadError::from(e)))?;
        let mut uploads = multipart::list_uploads(
            &client,
            c.principal.tenant_id,
            &prefix,
            input.key_marker.as_deref().unwrap_or_default(),
            input.upload_id_marker.as_deref().unwrap_or_default(),
            i64::from(max) + 1,
        )
        .await
        .map_err(upload_error)?;
        let truncated = uploads.len() > usize::try_from(max).unwrap_or(0);
        uploads.truncate(usize::try_from(max).unwrap_or(0));
        let (next_key, next_id) = match uploads.last() {
            Some(u) if truncated => (Some(u.key.clone()), Some(u.upload_id.clone())),
            _ => (None, None),
        };
        let uploads = uploads
            .into_iter()
            .map(|u| MultipartUpload {
                key: Some(u.key),
                upload_id: Some(u.upload_id),
                initiated: rfc3339(&u.created_at),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            next_key_marker: next_key,
            next_upload_id_marker: next_id,
            max_uploads: Some(max),
            is_truncated: Some(truncated),
            uploads: Some(uploads),
            ..Default::default()
        }))
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        let c = caller(&req)?;
        let key = key(&req.input.key)?;
        objects::delete(&self.svc, &c.principal, door("DeleteObject"), &key).await.map_err(object_error)?;
        Ok(S3Response::with_status(DeleteObjectOutput::default(), http::StatusCode::NO_CONTENT))
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let c = caller(&req)?;
        let quiet = req.input.delete.quiet.unwrap_or(false);
        if req.input.delete.objects.len() > 1000 {
            return Err(s3_error!(MalformedXML, "at most 1000 keys per DeleteObjects"));
        }
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for o in req.input.delete.objects {
            let outcome = match (c.check_key(&o.key), ObjectKey::parse(&o.key)) {
                (Err(e), _) => Err(e),
                (_, Err(e)) => Err(S3Error::with_message(S3ErrorCode::InvalidArgument, format!("key: {e}"))),
                (Ok(()), Ok(k)) => {
                    objects::delete(&self.svc, &c.principal, door("DeleteObjects"), &k).await.map_err(object_error)
                }
            };
            match outcome {
                Ok(_) if quiet => {}
                Ok(_) => deleted.push(DeletedObject { key: Some(o.key), ..Default::default() }),
                Err(e) => errors.push(s3s::dto::Error {
                    code: Some(e.code().as_str().to_owned()),
                    message: e.message().map(str::to_owned),
                    key: Some(o.key),
                    ..Default::default()
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }
}

/// The key a copy reads: in the caller's own bucket, inside its key's prefix.
fn copy_source(c: &Caller, source: &CopySource) -> S3Result<ObjectKey> {
    let CopySource::Bucket { bucket, key: src_key, version_id } = source else {
        return Err(s3_error!(NotImplemented, "copying from an access point is not supported"));
    };
    if version_id.is_some() {
        return Err(s3_error!(NotImplemented, "versions are not supported"));
    }
    if **bucket != *c.principal.tenant.as_str() {
        return Err(s3_error!(AccessDenied, "Access Denied"));
    }
    c.check_key(src_key)?;
    key(src_key)
}

/// 304: s3s writes a bare status for this code.
fn not_modified() -> S3Error {
    let mut e = S3Error::new(S3ErrorCode::Custom("NotModified".into()));
    e.set_status_code(http::StatusCode::NOT_MODIFIED);
    e
}

/// The date conditions of a request.
fn dates(modified_since: Option<Timestamp>, unmodified_since: Option<Timestamp>) -> DateConditions {
    let secs = |t: Timestamp| time::OffsetDateTime::from(t).unix_timestamp();
    DateConditions { modified_since: modified_since.map(secs), unmodified_since: unmodified_since.map(secs) }
}

/// Check `dates` on a read: 412 or 304 (`copy`: 412 either way).
fn check_dates(dates: DateConditions, info: &ObjectInfo, etag_conds: (bool, bool), copy: bool) -> S3Result<()> {
    match dates.check(info.last_modified.map(|t| t.secs()), etag_conds.0, etag_conds.1) {
        Ok(()) => Ok(()),
        Err(DateFailure::NotModified) if !copy => Err(not_modified()),
        Err(_) => Err(s3_error!(PreconditionFailed)),
    }
}

fn wants_checksum(mode: Option<&ChecksumMode>) -> bool {
    mode.is_some_and(|m| m.as_str().eq_ignore_ascii_case(ChecksumMode::ENABLED))
}

/// User metadata for a response (without the gateway's own entries).
fn user_metadata(stored: &HashMap<String, String>) -> Option<HashMap<String, String>> {
    let m = objects::user_metadata(stored);
    (!m.is_empty()).then_some(m)
}

/// The checksum a body comes with: an `x-amz-checksum-*` header, or a
/// trailer that `x-amz-trailer` announces (aws-chunked bodies).
fn body_checksum(
    headers: &http::HeaderMap,
    trailers: Option<&s3s::TrailingHeaders>,
    values: [(&'static str, Option<&String>); 5],
) -> S3Result<Option<(&'static str, Expected)>> {
    let mut given = values.into_iter().filter_map(|(a, v)| v.map(|v| (a, v)));
    if let Some((algorithm, value)) = given.next() {
        if given.next().is_some() {
            return Err(s3_error!(
                InvalidRequest,
                "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
            ));
        }
        return Ok(Some((algorithm, Expected::Header(value.clone()))));
    }
    let Some(announced) = headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()) else { return Ok(None) };
    let Some(algorithm) = announced.split(',').find_map(checksum::algorithm_of_header) else { return Ok(None) };
    match trailers {
        Some(t) => Ok(Some((algorithm, Expected::Trailer(t.clone())))),
        None => Err(s3_error!(InvalidRequest, "x-amz-trailer names a checksum but the body is not aws-chunked")),
    }
}

type Body = std::pin::Pin<Box<dyn futures::Stream<Item = Result<bytes::Bytes, String>> + Send + Sync>>;

/// The body, checked against `sent` when the client sent a checksum.
fn verified(body: StreamingBlob, sent: Option<(&'static str, Expected)>) -> (Body, Option<checksum::Slot>) {
    use futures::TryStreamExt;
    match sent {
        Some((algorithm, expected)) => {
            let (v, slot) = Verify::new(body, algorithm, expected);
            (Box::pin(v), Some(slot))
        }
        None => (Box::pin(body.map_err(|e| e.to_string())), None),
    }
}

/// The body, also checked against `Content-MD5` when the client sent one.
fn with_content_md5(body: Body, md5: Option<String>) -> (Body, Option<checksum::Slot>) {
    match md5 {
        Some(v) => {
            let (v, slot) = Verify::new(body, checksum::CONTENT_MD5, Expected::Header(v));
            (Box::pin(v), Some(slot))
        }
        None => (body, None),
    }
}

/// `BadDigest` when the body failed its checksum.
fn bad_digest(slot: Option<&checksum::Slot>) -> Option<S3Error> {
    match slot.map(checksum::Slot::get) {
        Some(Outcome::Mismatch(msg)) => Some(S3Error::with_message(S3ErrorCode::BadDigest, msg)),
        _ => None,
    }
}

/// One page of a listing, as S3 types.
struct Page {
    contents: Vec<Object>,
    prefixes: Vec<CommonPrefix>,
    next_cursor: Option<String>,
}

impl Door {
    /// List the caller's bucket (both ListObjects versions).
    async fn list(&self, operation: &'static str, c: &Caller, query: ListQuery<'_>) -> S3Result<Page> {
        // A prefix-limited key lists only inside its prefix.
        c.check_key(query.prefix)?;
        objects::admit(&self.svc, &c.principal, door(operation), Action::ObjectList { prefix: query.prefix })
            .await
            .map_err(pipeline_error)?;
        if query.limit == 0 {
            return Ok(Page { contents: Vec::new(), prefixes: Vec::new(), next_cursor: None });
        }
        let page = match self.svc.s3.list_objects(&objects::bucket(&self.svc, &c.principal), &query).await {
            Ok(page) => page,
            Err(StoreError::Refused { .. }) if query.cursor.is_some() => {
                return Err(s3_error!(InvalidArgument, "The continuation token provided is incorrect"));
            }
            Err(e) => return Err(store_error(e)),
        };
        let contents = page
            .objects
            .into_iter()
            .map(|o| Object {
                key: Some(o.key),
                size: Some(i64::try_from(o.size).unwrap_or(i64::MAX)),
                e_tag: etag(o.etag.as_deref()),
                last_modified: o.last_modified.as_deref().and_then(rfc3339),
                ..Default::default()
            })
            .collect();
        let prefixes = page.common_prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(p) }).collect();
        Ok(Page { contents, prefixes, next_cursor: page.next_cursor })
    }
}

fn rfc3339(t: &str) -> Option<Timestamp> {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok().map(Timestamp::from)
}
