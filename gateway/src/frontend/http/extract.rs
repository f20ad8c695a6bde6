//! Extractors: who is calling (operator token or tenant API key), the request
//! context, and JSON bodies whose rejections use our error shape.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::context::RequestCtx;
use super::error::ApiError;
use crate::pipeline::auth::{AuthError, Principal, authenticate_key};
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

/// `axum::Json` with rejections in our error shape and precise messages.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

fn json_rejection(rej: JsonRejection) -> ApiError {
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
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body is larger than allowed")
        }
        other => ApiError::new(other.status(), "bad_request", other.body_text()),
    }
}
