//! The operations of the S3 door. Writes go through [`crate::objects`] (the
//! same code as `/v1/objects`: pipeline, backup hold, quotas, usage); reads
//! and lists admit through the same pipeline with the same `object.*` actions.

use std::collections::HashMap;

use s3s::dto::{
    Bucket, CommonPrefix, CopyObjectInput, CopyObjectOutput, CopyObjectResult, CopySource, DeleteObjectInput,
    DeleteObjectOutput, DeleteObjectsInput, DeleteObjectsOutput, DeletedObject, ETag, ETagCondition,
    GetBucketLocationInput, GetBucketLocationOutput, GetObjectInput, GetObjectOutput, HeadBucketInput,
    HeadBucketOutput, HeadObjectInput, HeadObjectOutput, ListBucketsInput, ListBucketsOutput, ListObjectsV2Input,
    ListObjectsV2Output, MetadataDirective, Object, PutObjectInput, PutObjectOutput, StreamingBlob, Timestamp,
};
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use tokio_util::io::ReaderStream;

use super::auth::Caller;
use super::error::{object_error, pipeline_error, store_error};
use crate::frontend::http::objects::MAX_META_BYTES;
use crate::ids::ObjectKey;
use crate::objects::{self, Put};
use crate::pipeline::{Action, Door as PipelineDoor};
use crate::services::Services;
use crate::upstream::s3::{Conditions, ListQuery, ObjectInfo, Read, S3Error as StoreError};

const DOOR: PipelineDoor = PipelineDoor::S3;
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

#[async_trait::async_trait]
impl S3 for Door {
    async fn list_buckets(&self, req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        let c = caller(&req)?;
        let bucket = Bucket { name: Some(c.principal.tenant.to_string()), ..Default::default() };
        Ok(S3Response::new(ListBucketsOutput { buckets: Some(vec![bucket]), ..Default::default() }))
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

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        let c = caller(&req)?;
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        // A prefix-limited key lists only inside its prefix.
        c.check_key(&prefix)?;
        let max_keys = input.max_keys.unwrap_or(MAX_KEYS).clamp(0, MAX_KEYS);
        let mut out = ListObjectsV2Output {
            name: Some(input.bucket.clone()),
            prefix: input.prefix.clone(),
            delimiter: input.delimiter.clone(),
            max_keys: Some(max_keys),
            continuation_token: input.continuation_token.clone(),
            start_after: input.start_after.clone(),
            // Keys are returned as they are, never URL-encoded, so the
            // response names no encoding type (clients then decode nothing).
            encoding_type: None,
            is_truncated: Some(false),
            key_count: Some(0),
            ..Default::default()
        };
        objects::admit(&self.svc, &c.principal, DOOR, Action::ObjectList { prefix: &prefix })
            .await
            .map_err(pipeline_error)?;
        if max_keys == 0 {
            return Ok(S3Response::new(out));
        }
        let query = ListQuery {
            prefix: &prefix,
            delimiter: input.delimiter.as_deref().filter(|d| !d.is_empty()),
            limit: max_keys,
            cursor: input.continuation_token.as_deref().filter(|t| !t.is_empty()),
            start_after: input.start_after.as_deref().filter(|s| !s.is_empty()),
        };
        let page = match self.svc.s3.list_objects(&objects::bucket(&self.svc, &c.principal), &query).await {
            Ok(page) => page,
            Err(StoreError::Refused { .. }) if query.cursor.is_some() => {
                return Err(s3_error!(InvalidArgument, "The continuation token provided is incorrect"));
            }
            Err(e) => return Err(store_error(e)),
        };
        let contents: Vec<Object> = page
            .objects
            .into_iter()
            .map(|o| Object {
                key: Some(o.key),
                size: Some(i64::try_from(o.size).unwrap_or(i64::MAX)),
                e_tag: etag(o.etag.as_deref()),
                last_modified: o.last_modified.and_then(|t| {
                    time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                        .ok()
                        .map(Timestamp::from)
                }),
                ..Default::default()
            })
            .collect();
        let prefixes: Vec<CommonPrefix> =
            page.common_prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(p) }).collect();
        out.key_count = Some(i32::try_from(contents.len() + prefixes.len()).unwrap_or(i32::MAX));
        out.is_truncated = Some(page.next_cursor.is_some());
        out.next_continuation_token = page.next_cursor;
        out.contents = Some(contents);
        out.common_prefixes = (!prefixes.is_empty()).then_some(prefixes);
        Ok(S3Response::new(out))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let c = caller(&req)?;
        let key = key(&req.input.key)?;
        let (if_match, if_none_match) =
            (condition(req.input.if_match.as_ref()), condition(req.input.if_none_match.as_ref()));
        objects::admit(&self.svc, &c.principal, DOOR, Action::ObjectHead { key: key.as_str() })
            .await
            .map_err(pipeline_error)?;
        let conds = Conditions { if_match: if_match.as_deref(), if_none_match: if_none_match.as_deref() };
        match self.svc.s3.head_object(&objects::bucket(&self.svc, &c.principal), key.as_str(), conds).await {
            Ok(Read::Found(info)) => Ok(S3Response::new(HeadObjectOutput {
                content_length: Some(i64::try_from(info.length).unwrap_or(i64::MAX)),
                content_type: Some(info.content_type.clone().unwrap_or_else(|| DEFAULT_CONTENT_TYPE.into())),
                e_tag: etag(info.etag.as_deref()),
                last_modified: timestamp(&info),
                accept_ranges: Some("bytes".into()),
                metadata: (!info.metadata.is_empty()).then_some(info.metadata),
                ..Default::default()
            })),
            Ok(Read::NotModified { .. }) => Err(not_modified()),
            Err(e) => Err(store_error(e)),
        }
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
        objects::admit(&self.svc, &c.principal, DOOR, Action::ObjectGet { key: key.as_str() })
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
        let partial = range.is_some() && info.content_range.is_some();
        let body = ReaderStream::with_capacity(obj.body.into_async_read(), READ_CHUNK);
        let out = GetObjectOutput {
            body: Some(StreamingBlob::wrap(body)),
            content_length: Some(i64::try_from(info.length).unwrap_or(i64::MAX)),
            content_type: Some(info.content_type.clone().unwrap_or_else(|| DEFAULT_CONTENT_TYPE.into())),
            content_range: info.content_range.clone(),
            e_tag: etag(info.etag.as_deref()),
            last_modified: timestamp(&info),
            accept_ranges: Some("bytes".into()),
            metadata: (!info.metadata.is_empty()).then_some(info.metadata),
            ..Default::default()
        };
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
        let declared = input.content_length.and_then(|n| u64::try_from(n).ok());
        let cap = u64::try_from(c.principal.quotas.max_object_bytes).unwrap_or(0);
        if declared.is_some_and(|d| d > cap) {
            return Err(S3Error::with_message(
                S3ErrorCode::EntityTooLarge,
                format!("the object is larger than this tenant's limit of {cap} bytes"),
            ));
        }
        let if_match = condition(input.if_match.as_ref());
        let put = Put {
            key: &key,
            declared,
            content_type: input.content_type.unwrap_or_else(|| DEFAULT_CONTENT_TYPE.into()),
            metadata: metadata(input.metadata)?,
            if_match: if_match.as_deref(),
        };
        let body = input
            .body
            .unwrap_or_else(|| StreamingBlob::wrap(futures::stream::empty::<Result<bytes::Bytes, std::io::Error>>()));
        let stored = objects::put(&self.svc, &c.principal, DOOR, put, body).await.map_err(object_error)?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: etag(stored.etag.as_deref()),
            size: Some(i64::try_from(stored.size).unwrap_or(i64::MAX)),
            ..Default::default()
        }))
    }

    /// CopyObject within the tenant's bucket. The bytes stream through the
    /// gateway (GET from the store, then the same put as PutObject), so the
    /// copy is admitted, quota-checked, counted and backup-held like any
    /// write; the store's server-side copy would skip all of that.
    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        let c = caller(&req)?;
        let input = req.input;
        let CopySource::Bucket { bucket: src_bucket, key: src_key, version_id } = &input.copy_source else {
            return Err(s3_error!(NotImplemented, "copying from an access point is not supported"));
        };
        if version_id.is_some() {
            return Err(s3_error!(NotImplemented, "versions are not supported"));
        }
        // The source must be the caller's own bucket, inside the key's prefix.
        if **src_bucket != *c.principal.tenant.as_str() {
            return Err(s3_error!(AccessDenied, "Access Denied"));
        }
        c.check_key(src_key)?;
        let src = key(src_key)?;
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
        objects::admit(&self.svc, &c.principal, DOOR, Action::ObjectGet { key: src.as_str() })
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
        let put = Put { key: &dest, declared: Some(obj.info.length), content_type, metadata: meta, if_match: None };
        let body = ReaderStream::with_capacity(obj.body.into_async_read(), READ_CHUNK);
        let stored = objects::put(&self.svc, &c.principal, DOOR, put, body).await.map_err(object_error)?;
        let result = CopyObjectResult {
            e_tag: etag(stored.etag.as_deref()),
            last_modified: Some(Timestamp::from(time::OffsetDateTime::now_utc())),
            ..Default::default()
        };
        Ok(S3Response::new(CopyObjectOutput { copy_object_result: Some(result), ..Default::default() }))
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        let c = caller(&req)?;
        let key = key(&req.input.key)?;
        objects::delete(&self.svc, &c.principal, DOOR, &key).await.map_err(object_error)?;
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
                (Ok(()), Ok(k)) => objects::delete(&self.svc, &c.principal, DOOR, &k).await.map_err(object_error),
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

/// 304: s3s writes a bare status for this code.
fn not_modified() -> S3Error {
    let mut e = S3Error::new(S3ErrorCode::Custom("NotModified".into()));
    e.set_status_code(http::StatusCode::NOT_MODIFIED);
    e
}
