//! Object writes shared by every door (`/v1/objects` and the S3 door): admit
//! through the pipeline, keep a running backup's copy first, enforce the
//! object-size and storage quotas, and keep the tenant's usage counts.
//!
//! Every put and delete keeps the tenant's object usage (`usage/`): a HEAD
//! first learns the size of what it replaces or removes, and a body may grow
//! only into the room `max_storage_bytes` leaves. Concurrent uploads each see
//! the room as it was when they started, so together they may pass the quota
//! by what is in flight; the next write after them is refused.
//!
//! The bucket is always derived from the authenticated tenant, never from the
//! request.

pub mod checksum;
pub mod multipart;

use std::collections::HashMap;

use bytes::Bytes;
use futures::Stream;

use crate::control::{ControlError, provision};
use crate::ids::ObjectKey;
use crate::pipeline::auth::Principal;
use crate::pipeline::{Action, Door, Operation, PipelineError};
use crate::ratelimit::Class;
use crate::services::Services;
use crate::upstream::s3::{Conditions, LateMetadata, PutOptions, PutOutcome, Read, S3Error};
use crate::usage::{self, QuotaExceeded, Resource};

/// Why an object operation failed; each door maps it to its own protocol.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error(transparent)]
    Store(#[from] S3Error),
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Hold(#[from] crate::backup::hold::HoldError),
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// Stored metadata without the gateway's own entries ([`checksum::META_KEY`]):
/// what either door shows as user metadata.
pub fn user_metadata(stored: &HashMap<String, String>) -> HashMap<String, String> {
    stored
        .iter()
        .filter(|(k, _)| !k.starts_with(checksum::RESERVED_META_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `If-Modified-Since` / `If-Unmodified-Since` (Unix seconds), checked on
/// what the store returned (the ETag conditions are the store's). As in RFC
/// 9110, each yields to its ETag counterpart when both are sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct DateConditions {
    pub modified_since: Option<i64>,
    pub unmodified_since: Option<i64>,
}

/// Which date condition failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateFailure {
    /// `If-Unmodified-Since`: 412.
    Modified,
    /// `If-Modified-Since`: 304 on a read, 412 on a copy source.
    NotModified,
}

impl DateConditions {
    pub fn check(&self, last_modified: Option<i64>, if_match: bool, if_none_match: bool) -> Result<(), DateFailure> {
        let Some(modified) = last_modified else { return Ok(()) };
        if !if_match && self.unmodified_since.is_some_and(|t| modified > t) {
            return Err(DateFailure::Modified);
        }
        if !if_none_match && self.modified_since.is_some_and(|t| modified <= t) {
            return Err(DateFailure::NotModified);
        }
        Ok(())
    }
}

/// The tenant's own bucket in the store.
pub fn bucket(svc: &Services, p: &Principal) -> String {
    provision::bucket_name(svc, &p.tenant)
}

/// Charge `bytes` a download sends to the tenant's `bytes_out` budget:
/// admission only checked that the budget is not in debt, and the size is
/// known once the store answers. Charged off the request path; later
/// requests wait until the debt is paid.
pub fn charge_out(svc: &Services, p: &Principal, bytes: u64) {
    let (limiter, p) = (svc.ratelimit.clone(), p.clone());
    tokio::spawn(async move { limiter.charge(&p, Class::BytesOut, bytes).await });
}

/// Pass an object operation through the shared pipeline (rate limits, policy).
pub async fn admit(svc: &Services, p: &Principal, door: Door, action: Action<'_>) -> Result<(), PipelineError> {
    svc.pipeline.admit(&Operation { door, principal: p, action }).await
}

/// A put, as either door describes it.
#[derive(Debug, Clone)]
pub struct Put<'a> {
    pub key: &'a ObjectKey,
    /// `Content-Length`, when the client sent one (already checked against
    /// `max_object_bytes` by the door, which words that refusal itself).
    pub declared: Option<u64>,
    pub content_type: String,
    pub metadata: HashMap<String, String>,
    /// Store only if the current object has this ETag.
    pub if_match: Option<&'a str>,
    /// Metadata learned while the body streams (a trailer checksum).
    pub late_metadata: LateMetadata,
}

/// Store `body` under `put.key`, streamed, in the caller's bucket.
pub async fn put<S, E>(
    svc: &Services,
    p: &Principal,
    door: Door,
    put: Put<'_>,
    body: S,
) -> Result<PutOutcome, ObjectError>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    let key = put.key;
    let cap = u64::try_from(p.quotas.max_object_bytes).unwrap_or(0);
    let adding = put.declared.map_or(0, |d| i64::try_from(d).unwrap_or(i64::MAX));
    usage::check(&p.quotas, &p.usage, Resource::Objects, adding)?;
    admit(svc, p, door, Action::ObjectPut { key: key.as_str(), size: put.declared }).await?;
    let bucket = bucket(svc, p);
    // A running backup keeps the object as it is first.
    crate::backup::hold::before_write(svc, p.tenant_id, &bucket, key.as_str()).await?;

    // The object this write replaces, for the usage count (and If-Match).
    let conds = Conditions { if_match: put.if_match, if_none_match: None };
    let (replaced, replaced_multipart) = match svc.s3.head_object(&bucket, key.as_str(), conds).await {
        Ok(Read::Found(info)) => (Some(info.length), multipart::multipart_etag(info.etag.as_deref())),
        Ok(Read::NotModified { .. }) => (None, false),
        Err(S3Error::NotFound) if put.if_match.is_some() => return Err(S3Error::PreconditionFailed.into()),
        Err(S3Error::NotFound) => (None, false),
        Err(e) => return Err(e.into()),
    };

    // A body may grow to the per-object cap or to the room the storage quota
    // leaves (counting the bytes it replaces), whichever is smaller.
    let room = usage::room(&p.quotas, &p.usage, Resource::Objects)
        .saturating_add(replaced.map_or(0, |r| i64::try_from(r).unwrap_or(0)));
    let room = u64::try_from(room).unwrap_or(0);
    let max_bytes = cap.min(room.max(1));
    let opts = PutOptions {
        content_type: Some(put.content_type),
        metadata: put.metadata,
        declared_length: put.declared,
        max_bytes,
        late_metadata: put.late_metadata,
    };
    let stored = match svc.s3.put_object_stream(&bucket, key, body, &opts).await {
        Ok(s) => s,
        // Past the quota's room rather than the per-object cap: a quota refusal.
        Err(S3Error::TooLarge { .. }) if room < cap => {
            return Err(QuotaExceeded {
                resource: Resource::Objects,
                used: p.usage.object_bytes,
                limit: p.quotas.max_storage_bytes,
                adding: i64::try_from(max_bytes).unwrap_or(i64::MAX),
            }
            .into());
        }
        Err(e) => return Err(e.into()),
    };
    if put.declared.is_none() {
        // Admitted without a size: the bytes are charged now.
        svc.ratelimit.charge(p, Class::BytesIn, stored.size).await;
    }
    let delta = i64::try_from(stored.size).unwrap_or(i64::MAX) - replaced.map_or(0, |r| i64::try_from(r).unwrap_or(0));
    usage::add_objects(&svc.control.client().await?, p.tenant_id, delta, i64::from(replaced.is_none())).await?;
    if replaced_multipart {
        multipart::forget_checksum(svc, p.tenant_id, key).await?;
    }
    tracing::debug!(key = %key, size = stored.size, parts = stored.parts, "object stored");
    Ok(stored)
}

/// Delete `key` from the caller's bucket (no error when it does not exist,
/// as in S3). Returns whether it existed.
pub async fn delete(svc: &Services, p: &Principal, door: Door, key: &ObjectKey) -> Result<bool, ObjectError> {
    admit(svc, p, door, Action::ObjectDelete { key: key.as_str() }).await?;
    let bucket = bucket(svc, p);
    // Its size, for the usage count.
    let (size, was_multipart) = match svc.s3.head_object(&bucket, key.as_str(), Conditions::default()).await {
        Ok(Read::Found(info)) => (Some(info.length), multipart::multipart_etag(info.etag.as_deref())),
        Ok(Read::NotModified { .. }) | Err(S3Error::NotFound) => (None, false),
        Err(e) => return Err(e.into()),
    };
    crate::backup::hold::before_write(svc, p.tenant_id, &bucket, key.as_str()).await?;
    svc.s3.delete_object(&bucket, key.as_str()).await?;
    if let Some(size) = size {
        let bytes = -i64::try_from(size).unwrap_or(i64::MAX);
        usage::add_objects(&svc.control.client().await?, p.tenant_id, bytes, -1).await?;
    }
    if was_multipart {
        multipart::forget_checksum(svc, p.tenant_id, key).await?;
    }
    Ok(size.is_some())
}
