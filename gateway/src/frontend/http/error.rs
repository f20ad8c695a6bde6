//! The HTTP error mapper: the one place where errors become HTTP responses.
//!
//! Handlers return [`ApiError`]. Its `IntoResponse` attaches an [`ErrorBody`] to
//! an empty response; the request-context middleware renders it as
//! `{"error":{"code","message","request_id"}}` once the request id is known. Any
//! other error response without a body (axum's 404/405) gets the same shape.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::{ClientError, ErrorKind};

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Extra fields merged into the `error` object (e.g. `sqlstate`).
    pub details: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Marker left on a response for the middleware to render.
#[derive(Debug, Clone)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
    pub details: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), headers: Vec::new(), details: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// Add `details` fields (merged with any already there).
    pub fn with_details(mut self, details: serde_json::Map<String, serde_json::Value>) -> Self {
        match &mut self.details {
            Some(d) => d.extend(details),
            None => self.details = Some(details),
        }
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Map any classified error. Internal and upstream causes are logged here
    /// (where they are handled) and replaced by a generic message.
    pub fn from_client_error<E: ClientError>(e: &E) -> Self {
        let kind = e.kind();
        let status = status_for(kind);
        if matches!(kind, ErrorKind::Internal | ErrorKind::Upstream) {
            tracing::error!(error = %e, kind = kind.code(), "request failed");
        }
        let mut err = ApiError::new(status, kind.code(), e.client_message());
        if kind == ErrorKind::Upstream {
            err = err.with_header(axum::http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        err
    }
}

pub fn status_for(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::User => StatusCode::BAD_REQUEST,
        ErrorKind::Auth => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden | ErrorKind::StorageFull => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::RateLimit | ErrorKind::Quota => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Plugin => StatusCode::FORBIDDEN,
        ErrorKind::Upstream => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Code for a bare status (responses axum made itself).
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = self.status.into_response();
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp.extensions_mut().insert(ErrorBody { code: self.code, message: self.message, details: self.details });
        resp
    }
}

macro_rules! from_client_error {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for ApiError {
            fn from(e: $t) -> Self { ApiError::from_client_error(&e) }
        }
    )*};
}
from_client_error!(
    crate::control::ControlError,
    crate::control::provision::ProvisionError,
    crate::pipeline::auth::AuthError,
    crate::ids::InvalidKey,
    crate::upstream::redis::RedisError,
    crate::cache::CacheError,
    crate::usage::QuotaExceeded,
    crate::backup::BackupError,
    crate::backup::hold::HoldError,
);

impl From<crate::objects::ObjectError> for ApiError {
    fn from(e: crate::objects::ObjectError) -> Self {
        use crate::objects::ObjectError;
        match e {
            ObjectError::Store(e) => e.into(),
            ObjectError::Quota(e) => e.into(),
            ObjectError::Pipeline(e) => e.into(),
            ObjectError::Hold(e) => e.into(),
            ObjectError::Control(e) => e.into(),
        }
    }
}

/// Object-store errors: HTTP has precise statuses for conditional and ranged
/// requests (412, 416) that the door-neutral [`ErrorKind`] does not name.
impl From<crate::upstream::s3::S3Error> for ApiError {
    fn from(e: crate::upstream::s3::S3Error) -> Self {
        use crate::upstream::s3::S3Error;
        match e {
            S3Error::PreconditionFailed => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, "precondition_failed", e.to_string())
            }
            S3Error::InvalidRange => {
                ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable", e.to_string())
            }
            e => ApiError::from_client_error(&e),
        }
    }
}

/// Rate-limit refusals carry `Retry-After` (whole seconds, rounded up) and the
/// IETF draft `RateLimit-Policy` / `RateLimit` headers.
impl From<crate::pipeline::PipelineError> for ApiError {
    fn from(e: crate::pipeline::PipelineError) -> Self {
        let mut err = ApiError::from_client_error(&e);
        if let crate::pipeline::PipelineError::Refused(r) = &e {
            let mut d = serde_json::Map::new();
            d.insert("rule".into(), r.rule.into());
            d.insert("sqlstate".into(), crate::sql::rules::Refusal::SQLSTATE.into());
            err = err.with_details(d);
        }
        if let crate::pipeline::PipelineError::RateLimited { class, retry_after_ms, limit } = e {
            let secs = retry_after_ms.div_ceil(1000).max(1);
            let policy = crate::ratelimit::policy_header(class, limit);
            let state = format!("\"{class}\";r=0;t={secs}");
            for (name, value) in [
                (axum::http::header::RETRY_AFTER, secs.to_string()),
                (HeaderName::from_static("ratelimit-policy"), policy),
                (HeaderName::from_static("ratelimit"), state),
            ] {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    err = err.with_header(name, v);
                }
            }
            let mut d = serde_json::Map::new();
            d.insert("class".into(), class.into());
            d.insert("retry_after_ms".into(), retry_after_ms.into());
            err = err.with_details(d);
        }
        err
    }
}
