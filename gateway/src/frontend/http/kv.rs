//! Key/value (`/v1/kv/{key}`): raw byte values in Redis under the tenant's own
//! key prefix (`…:t:<tenant uuid>:kv:<key>`), with an optional TTL.
//!
//! `PUT ?ttl=SECONDS` stores the request body as is (a PUT without `ttl` keeps
//! the value forever, clearing any earlier TTL); `GET` returns the bytes as
//! `application/octet-stream` with `x-sluice-ttl` (seconds left) when the entry
//! expires; `DELETE` is 204, or 404 if there was nothing to delete. Values are
//! capped by the tenant's `max_kv_value_bytes` quota, and all of a tenant's
//! values together by `max_kv_bytes` (counted in Redis by the write scripts).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{ApiQuery, Authed, KeyPath, admit, declared_length, read_capped};
use crate::ids::KvKey;
use crate::pipeline::Action;
use crate::services::Services;
use crate::usage::{QuotaExceeded, Resource};

/// Response header with the seconds an entry has left.
pub const TTL_HEADER: &str = "x-sluice-ttl";
/// Longest TTL: one year.
pub const MAX_TTL_SECS: u64 = 31_536_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutParams {
    ttl: Option<u64>,
}

/// `PUT /v1/kv/{key}?ttl=SECONDS`: 204 once stored.
pub async fn put(
    Authed(p): Authed,
    State(svc): State<Services>,
    KeyPath(raw): KeyPath,
    ApiQuery(q): ApiQuery<PutParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let key = KvKey::parse(&raw)?;
    if let Some(ttl) = q.ttl
        && !(1..=MAX_TTL_SECS).contains(&ttl)
    {
        return Err(ApiError::bad_request(format!("ttl must be 1..={MAX_TTL_SECS} seconds")));
    }
    let cap = u64::try_from(p.quotas.max_kv_value_bytes).unwrap_or(0);
    let declared = declared_length(&headers, "the value", cap)?;
    // A chunked body's size is unknown until read; the stages see the cap,
    // an upper bound.
    admit(&svc, &p, Action::KvPut { key: key.as_str(), size: declared.unwrap_or(cap) }).await?;
    let value = read_capped(body, "the value", cap, declared).await?;
    if let Err((used, limit)) = svc.redis.kv_set(p.tenant_id, &key, &value, q.ttl, p.quotas.max_kv_bytes).await? {
        let adding = i64::try_from(value.len()).unwrap_or(i64::MAX);
        return Err(ApiError::from_client_error(&QuotaExceeded { resource: Resource::Kv, used, limit, adding }));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/kv/{key}`: the value, or 404.
pub async fn get(Authed(p): Authed, State(svc): State<Services>, KeyPath(raw): KeyPath) -> Result<Response, ApiError> {
    let key = KvKey::parse(&raw)?;
    admit(&svc, &p, Action::KvGet { key: key.as_str() }).await?;
    let entry = svc.redis.kv_get(p.tenant_id, &key).await?.ok_or_else(|| ApiError::not_found("no such key"))?;
    let mut resp = Body::from(entry.value).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Some(ttl) = entry.ttl_secs {
        resp.headers_mut().insert(TTL_HEADER, HeaderValue::from(ttl));
    }
    Ok(resp)
}

/// `DELETE /v1/kv/{key}`: 204, or 404 if there was no such key.
pub async fn delete(
    Authed(p): Authed,
    State(svc): State<Services>,
    KeyPath(raw): KeyPath,
) -> Result<StatusCode, ApiError> {
    let key = KvKey::parse(&raw)?;
    admit(&svc, &p, Action::KvDelete { key: key.as_str() }).await?;
    if svc.redis.kv_delete(p.tenant_id, &key).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such key"))
    }
}
