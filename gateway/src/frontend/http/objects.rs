//! Objects (`/v1/objects…`): put, get, head, delete and list in the calling
//! tenant's own bucket, which is derived from the authenticated tenant and never
//! from the request, so no key can reach another tenant's objects.
//!
//! Bodies stream both ways with memory bounded by about one upload part
//! ([`crate::upstream::s3::PART_SIZE`]) per request. User metadata travels as
//! `x-sluice-meta-<name>` headers (S3 user metadata in the store). Conditional
//! (`If-Match`, `If-None-Match`) and ranged (`Range`) reads are supported; a PUT
//! with `If-Match` checks the current ETag with a HEAD first, which leaves a race
//! (a write landing between the HEAD and the PUT wins silently): it guards
//! against stale clients, not against concurrent writers.
//!
//! Puts and deletes (quotas, usage, backup holds) live in [`crate::objects`],
//! which the S3 door calls too.

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::io::ReaderStream;

use super::error::ApiError;
use super::extract::{ApiQuery, Authed, KeyPath, admit, declared_length};
use crate::ids::ObjectKey;
use crate::objects;
use crate::pipeline::auth::Principal;
use crate::pipeline::{Action, Door};
use crate::services::Services;
use crate::upstream::s3::{Conditions, ListQuery, ObjectInfo, Read, S3Error};

/// Request and response headers that carry user metadata.
pub const META_PREFIX: &str = "x-sluice-meta-";
/// Largest total of user metadata (names + values), as in S3.
pub const MAX_META_BYTES: usize = 2048;
/// Chunk size when streaming an object to the client.
const READ_CHUNK: usize = 64 << 10;
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

fn bucket(svc: &Services, p: &Principal) -> String {
    objects::bucket(svc, p)
}

/// `PUT /v1/objects/{key}`: store the body, streamed, under `key`.
pub async fn put(
    Authed(p): Authed,
    State(svc): State<Services>,
    KeyPath(raw): KeyPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = ObjectKey::parse(&raw)?;
    let cap = u64::try_from(p.quotas.max_object_bytes).unwrap_or(0);
    let declared = declared_length(&headers, "the object", cap)?;
    let metadata = user_metadata(&headers)?;
    let content_type = header_str(&headers, &header::CONTENT_TYPE)?.unwrap_or(DEFAULT_CONTENT_TYPE).to_owned();
    let if_match = header_str(&headers, &header::IF_MATCH)?;
    let put = objects::Put { key: &key, declared, content_type, metadata, if_match, late_metadata: Default::default() };
    let stored = objects::put(&svc, &p, Door::Http, put, body.into_data_stream()).await?;
    let mut resp = Json(json!({ "key": key, "size": stored.size, "etag": stored.etag })).into_response();
    if let Some(etag) = stored.etag.as_deref() {
        set(resp.headers_mut(), header::ETAG, etag);
    }
    Ok(resp)
}

/// `GET /v1/objects/{key}`: stream the object (or one byte range of it).
pub async fn get(
    Authed(p): Authed,
    State(svc): State<Services>,
    KeyPath(raw): KeyPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = ObjectKey::parse(&raw)?;
    let conds = conditions(&headers)?;
    let range = headers.get(header::RANGE).map(parse_range).transpose()?;
    admit(&svc, &p, Action::ObjectGet { key: key.as_str() }).await?;
    let bucket = bucket(&svc, &p);

    let obj = match svc.s3.get_object(&bucket, &key, range.as_deref(), conds).await {
        Ok(Read::Found(obj)) => obj,
        Ok(Read::NotModified { etag }) => return Ok(not_modified(etag.as_deref())),
        Err(S3Error::InvalidRange) => return Err(unsatisfiable(&svc, &bucket, &key).await),
        Err(e) => return Err(e.into()),
    };
    let status =
        if range.is_some() && obj.info.content_range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    objects::charge_out(&svc, &p, obj.info.length);
    let stream = ReaderStream::with_capacity(obj.body.into_async_read(), READ_CHUNK);
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    object_headers(resp.headers_mut(), &obj.info);
    Ok(resp)
}

/// `HEAD /v1/objects/{key}`: the object's headers, from the store's HeadObject.
pub async fn head(
    Authed(p): Authed,
    State(svc): State<Services>,
    KeyPath(raw): KeyPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = ObjectKey::parse(&raw)?;
    let conds = conditions(&headers)?;
    admit(&svc, &p, Action::ObjectHead { key: key.as_str() }).await?;
    match svc.s3.head_object(&bucket(&svc, &p), key.as_str(), conds).await? {
        Read::Found(info) => {
            let mut resp = StatusCode::OK.into_response();
            object_headers(resp.headers_mut(), &info);
            Ok(resp)
        }
        Read::NotModified { etag } => Ok(not_modified(etag.as_deref())),
    }
}

/// `DELETE /v1/objects/{key}`: 204, whether or not the key existed (as in S3).
pub async fn delete(
    Authed(p): Authed,
    State(svc): State<Services>,
    KeyPath(raw): KeyPath,
) -> Result<StatusCode, ApiError> {
    let key = ObjectKey::parse(&raw)?;
    objects::delete(&svc, &p, Door::Http, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    #[serde(default)]
    prefix: String,
    delimiter: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// `GET /v1/objects?prefix=&delimiter=&limit=&cursor=`: one page of keys in
/// lexicographic order. `next_cursor` (opaque) fetches the next page; it is
/// `null` on the last one.
pub async fn list(
    Authed(p): Authed,
    State(svc): State<Services>,
    ApiQuery(q): ApiQuery<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit must be 1..={MAX_LIMIT}")));
    }
    check_param("prefix", &q.prefix, ObjectKey::MAX_BYTES)?;
    let delimiter = q.delimiter.as_deref().filter(|d| !d.is_empty());
    let cursor = q.cursor.as_deref().filter(|c| !c.is_empty());
    if let Some(d) = delimiter {
        check_param("delimiter", d, 16)?;
    }
    if let Some(c) = cursor {
        check_param("cursor", c, 2048)?;
    }
    admit(&svc, &p, Action::ObjectList { prefix: &q.prefix }).await?;
    let query = ListQuery {
        prefix: &q.prefix,
        delimiter,
        limit: i32::try_from(limit).unwrap_or(1000),
        cursor,
        start_after: None,
    };
    let page = match svc.s3.list_objects(&bucket(&svc, &p), &query).await {
        Ok(page) => page,
        // The only free-form input the store can refuse is the cursor.
        Err(S3Error::Refused { .. }) if cursor.is_some() => return Err(ApiError::bad_request("invalid cursor")),
        Err(e) => return Err(e.into()),
    };
    Ok(Json(json!({
        "objects": page.objects,
        "common_prefixes": page.common_prefixes,
        "next_cursor": page.next_cursor,
    })))
}

fn check_param(name: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.len() > max {
        return Err(ApiError::bad_request(format!("{name} is longer than {max} bytes")));
    }
    if v.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!("{name} contains a control character")));
    }
    Ok(())
}

/// A header as text; present but not visible ASCII is a 400.
fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| v.to_str().map_err(|_| ApiError::bad_request(format!("header {name} is not visible ASCII"))))
        .transpose()
}

fn conditions(headers: &HeaderMap) -> Result<Conditions<'_>, ApiError> {
    Ok(Conditions {
        if_match: header_str(headers, &header::IF_MATCH)?,
        if_none_match: header_str(headers, &header::IF_NONE_MATCH)?,
    })
}

/// `x-sluice-meta-<name>: <value>` headers → S3 user metadata. Names are
/// `[a-z0-9_-]+` (header names arrive lower-cased), values printable ASCII, each
/// name once, at most [`MAX_META_BYTES`] in all.
pub fn user_metadata(headers: &HeaderMap) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    let mut total = 0usize;
    for (name, value) in headers {
        let Some(meta) = name.as_str().strip_prefix(META_PREFIX) else { continue };
        let name_ok = !meta.is_empty() && meta.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(ApiError::bad_request(format!(
                "metadata header {name}: the name after {META_PREFIX} must be letters, digits, '-' or '_'"
            )));
        }
        if meta.starts_with(crate::objects::checksum::RESERVED_META_PREFIX) {
            return Err(ApiError::bad_request(format!(
                "metadata header {name}: names starting with {}{} are the gateway's own",
                META_PREFIX,
                crate::objects::checksum::RESERVED_META_PREFIX
            )));
        }
        let text = value.to_str().ok().filter(|v| v.bytes().all(|b| (0x20..0x7f).contains(&b))).ok_or_else(|| {
            ApiError::bad_request(format!("metadata header {name}: the value must be printable ASCII"))
        })?;
        total += meta.len() + text.len();
        if out.insert(meta.to_owned(), text.to_owned()).is_some() {
            return Err(ApiError::bad_request(format!("metadata header {name} is given more than once")));
        }
    }
    if total > MAX_META_BYTES {
        return Err(ApiError::bad_request(format!(
            "user metadata is {total} bytes (names + values); the limit is {MAX_META_BYTES}"
        )));
    }
    Ok(out)
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// The headers GET and HEAD share.
fn object_headers(h: &mut HeaderMap, info: &ObjectInfo) {
    set(h, header::CONTENT_LENGTH, &info.length.to_string());
    set(h, header::CONTENT_TYPE, info.content_type.as_deref().unwrap_or(DEFAULT_CONTENT_TYPE));
    set(h, header::ACCEPT_RANGES, "bytes");
    if let Some(etag) = info.etag.as_deref() {
        set(h, header::ETAG, etag);
    }
    if let Some(lm) = info.last_modified_http() {
        set(h, header::LAST_MODIFIED, &lm);
    }
    if let Some(cr) = info.content_range.as_deref() {
        set(h, header::CONTENT_RANGE, cr);
    }
    for (k, v) in crate::objects::user_metadata(&info.metadata) {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(format!("{META_PREFIX}{k}")), HeaderValue::from_str(&v)) {
            h.insert(name, value);
        }
    }
}

fn not_modified(etag: Option<&str>) -> Response {
    let mut resp = StatusCode::NOT_MODIFIED.into_response();
    if let Some(etag) = etag {
        set(resp.headers_mut(), header::ETAG, etag);
    }
    resp
}

/// 416 with `Content-Range: bytes */<size>` when the size can be learned.
async fn unsatisfiable(svc: &Services, bucket: &str, key: &ObjectKey) -> ApiError {
    let err = ApiError::from(S3Error::InvalidRange);
    match svc.s3.head_object(bucket, key.as_str(), Conditions::default()).await {
        Ok(Read::Found(info)) => match HeaderValue::from_str(&format!("bytes */{}", info.length)) {
            Ok(v) => err.with_header(header::CONTENT_RANGE, v),
            Err(_) => err,
        },
        _ => err,
    }
}

/// One byte range (`bytes=a-b`, `bytes=a-`, `bytes=-n`), normalized for the
/// store. Anything else (several ranges, other units, `a > b`, `-0`) is a 416.
pub fn parse_range(v: &HeaderValue) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
            "invalid Range: expected one range such as bytes=0-99, bytes=100- or bytes=-100",
        )
    };
    let num = |t: &str| -> Result<u64, ApiError> {
        let t = t.trim();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        t.parse().map_err(|_| invalid())
    };
    let text = v.to_str().map_err(|_| invalid())?.trim();
    let spec = text.strip_prefix("bytes=").ok_or_else(invalid)?;
    if spec.contains(',') {
        return Err(invalid());
    }
    let (first, last) = spec.split_once('-').ok_or_else(invalid)?;
    match (first.trim(), last.trim()) {
        ("", n) => match num(n)? {
            0 => Err(invalid()),
            n => Ok(format!("bytes=-{n}")),
        },
        (a, "") => Ok(format!("bytes={}-", num(a)?)),
        (a, b) => {
            let (a, b) = (num(a)?, num(b)?);
            if a > b { Err(invalid()) } else { Ok(format!("bytes={a}-{b}")) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> Result<String, u16> {
        parse_range(&HeaderValue::from_str(s).expect("test header")).map_err(|e| e.status.as_u16())
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-99"), Ok("bytes=0-99".into()));
        assert_eq!(range("bytes=5-5"), Ok("bytes=5-5".into()));
        assert_eq!(range("bytes=100-"), Ok("bytes=100-".into()));
        assert_eq!(range("bytes=-100"), Ok("bytes=-100".into()));
        assert_eq!(range(" bytes= 1 - 2 "), Ok("bytes=1-2".into()));
        for bad in
            ["", "bytes=", "bytes=-", "bytes=-0", "bytes=9-1", "bytes=0-1,5-6", "items=0-1", "bytes=a-1", "bytes=+1-2"]
        {
            assert_eq!(range(bad), Err(416), "{bad:?}");
        }
        assert_eq!(range("bytes=99999999999999999999-"), Err(416));
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::try_from(*k).expect("name"), HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn metadata() {
        let m = user_metadata(&headers(&[
            ("x-sluice-meta-owner", "ann"),
            ("x-sluice-meta-a_b-c", "x y"),
            ("x-other", "no"),
        ]))
        .expect("valid");
        assert_eq!(m.len(), 2);
        assert_eq!(m["owner"], "ann");
        assert_eq!(m["a_b-c"], "x y");

        let too_big = "v".repeat(MAX_META_BYTES);
        for bad in [
            headers(&[("x-sluice-meta-", "v")]),
            headers(&[("x-sluice-meta-a.b", "v")]),
            headers(&[("x-sluice-meta-a", "tab\there")]),
            headers(&[("x-sluice-meta-a", "1"), ("x-sluice-meta-a", "2")]),
            headers(&[("x-sluice-meta-big", &too_big)]),
        ] {
            assert_eq!(user_metadata(&bad).map_err(|e| e.status.as_u16()).err(), Some(400), "{bad:?}");
        }
        // Exactly at the limit is fine.
        let fits = "v".repeat(MAX_META_BYTES - 3);
        assert!(user_metadata(&headers(&[("x-sluice-meta-big", &fits)])).is_ok());
    }
}
