//! Extractors: who is calling (operator token or tenant API key), the request
//! context, JSON bodies, query strings and wildcard path keys whose rejections
//! use our error shape, and helpers for size-capped raw bodies.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde::de::DeserializeOwned;

use super::context::RequestCtx;
use super::error::ApiError;
use crate::pipeline::auth::{AuthError, Principal, authenticate_key};
use crate::pipeline::{Action, Door, Operation};
use crate::ratelimit::Class;
use crate::secret::{ExposeSecret, ct_eq};
use crate::services::Services;

/// The request context (request id, tenant label).
pub struct Ctx(pub Arc<RequestCtx>);

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Arc<RequestCtx>>()
            .cloned()
            .map(Ctx)
            .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "request context missing"))
    }
}

/// The bearer credential of a request: `Authorization: Bearer X` or `X-Api-Key: X`.
fn presented_credential(parts: &Parts) -> Result<Option<&str>, AuthError> {
    if let Some(v) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let s = v.to_str().map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = s.split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        return Ok(Some(token.trim()));
    }
    if let Some(v) = parts.headers.get("x-api-key") {
        return Ok(Some(v.to_str().map_err(|_| AuthError::Malformed)?.trim()));
    }
    Ok(None)
}

/// A request made with the operator token (`/admin/v1/*`).
pub struct Operator;

impl FromRequestParts<Services> for Operator {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, svc: &Services) -> Result<Self, ApiError> {
        let token = presented_credential(parts)?.ok_or(AuthError::Missing)?;
        let expected = svc.config.auth.operator_token.expose_secret();
        if ct_eq(token.as_bytes(), expected.as_bytes()) {
            Ok(Operator)
        } else {
            // Tenant keys are not operator tokens; say so without revealing more.
            Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "this endpoint needs the operator token"))
        }
    }
}

/// A request made with a tenant API key, admitted by its `http` rate limit.
pub struct Authed(pub Principal);

impl FromRequestParts<Services> for Authed {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, svc: &Services) -> Result<Self, ApiError> {
        let key = presented_credential(parts)?.ok_or(AuthError::Missing)?;
        let principal = authenticate_key(&svc.control, key).await?;
        let ctx = parts.extensions.get::<Arc<RequestCtx>>();
        if let Some(ctx) = ctx {
            let _ = ctx.tenant.set(principal.tenant.to_string());
        }
        // Every authenticated request costs one unit of the `http` class.
        let decision = svc.ratelimit.admit(&principal, Class::Http, 1).await?;
        if let (Some(ctx), Some(d)) = (ctx, decision) {
            let _ = ctx.ratelimit.set(d);
        }
        Ok(Authed(principal))
    }
}

/// Pass a data request of an authenticated tenant through the shared pipeline
/// (rate limits, policy) before routing it.
pub async fn admit(svc: &Services, p: &Principal, action: Action<'_>) -> Result<(), ApiError> {
    svc.pipeline.admit(&Operation { door: Door::Http, principal: p, action }).await?;
    Ok(())
}

/// A tenant API key with the admin role.
pub struct TenantAdmin(pub Principal);

impl FromRequestParts<Services> for TenantAdmin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, svc: &Services) -> Result<Self, ApiError> {
        let Authed(p) = Authed::from_request_parts(parts, svc).await?;
        p.require_admin()?;
        Ok(TenantAdmin(p))
    }
}

/// The body cap of the JSON routes below the layer: `server.max_json_body_bytes`,
/// or a route's own. Set with [`json_limit`].
#[derive(Debug, Clone, Copy)]
pub struct JsonCap(pub usize);

/// The layers that cap a route's JSON bodies at `bytes`: axum's body limit
/// (a body read past it fails) and [`JsonCap`], with which [`ApiJson`]
/// refuses a larger `Content-Length` before reading anything. A route's own
/// limit replaces the router's.
pub fn json_limit(bytes: usize) -> (axum::extract::DefaultBodyLimit, axum::Extension<JsonCap>) {
    (axum::extract::DefaultBodyLimit::max(bytes), axum::Extension(JsonCap(bytes)))
}

/// 413 for a JSON body over its route's cap.
fn json_too_large(cap: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is larger than this endpoint's limit of {cap} bytes"),
    )
}

/// `axum::Json` with rejections in our error shape and precise messages. A
/// body whose `Content-Length` is over the route's [`JsonCap`] is refused
/// unread; one without (chunked) stops being read at the cap.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let cap = req.extensions().get::<JsonCap>().map(|c| c.0);
        if let Some(cap) = cap
            && content_length(req.headers())?.is_some_and(|n| n > cap as u64)
        {
            return Err(json_too_large(cap));
        }
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(json_rejection(rej, cap)),
        }
    }
}

fn json_rejection(rej: JsonRejection, cap: Option<usize>) -> ApiError {
    match rej {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected `Content-Type: application/json`",
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(format!("malformed JSON: {}", e.body_text())),
        JsonRejection::JsonDataError(e) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", e.body_text())
        }
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => match cap {
            Some(cap) => json_too_large(cap),
            None => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body is larger than allowed")
            }
        },
        other => ApiError::new(other.status(), "bad_request", other.body_text()),
    }
}

/// The `{*key}` tail of a path, percent-decoded. Not validated: each store's key
/// type does that ([`crate::ids::ObjectKey`], [`crate::ids::KvKey`]).
pub struct KeyPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for KeyPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(key)) => Ok(KeyPath(key)),
            Err(rej) => Err(ApiError::bad_request(format!("invalid key in path: {}", rej.body_text()))),
        }
    }
}

/// `axum::extract::Query` with rejections in our error shape.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(rej) => Err(ApiError::bad_request(rej.body_text())),
        }
    }
}

/// 413 for a body of `size` bytes (or more) against a `cap`.
pub fn too_large(what: &str, cap: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("{what} is larger than this tenant's limit of {cap} bytes"),
    )
}

/// The request's `Content-Length`, refused with 413 if it is above `cap`, so an
/// oversized upload is turned away before its body is read. `None` for a
/// chunked body (whose size the reader must then enforce).
pub fn declared_length(headers: &HeaderMap, what: &str, cap: u64) -> Result<Option<u64>, ApiError> {
    match content_length(headers)? {
        Some(n) if n > cap => Err(too_large(what, cap)),
        n => Ok(n),
    }
}

/// The request's `Content-Length`, if it declares one.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(header::CONTENT_LENGTH) else { return Ok(None) };
    v.to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("invalid Content-Length"))
}

/// Read a whole body of at most `cap` bytes; one that grows past it is
/// refused with 413 as soon as it does (the rest is never read).
pub async fn read_capped(body: Body, what: &str, cap: u64, declared: Option<u64>) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let hint = usize::try_from(declared.unwrap_or(0).min(cap)).unwrap_or(0);
    let mut buf = BytesMut::with_capacity(hint);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the request body failed: {e}")))?;
        if (buf.len() + chunk.len()) as u64 > cap {
            return Err(too_large(what, cap));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
