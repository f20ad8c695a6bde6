//! Per-request context middleware: request id, error rendering, access metrics.
//!
//! Runs around every route. It accepts a sane incoming `x-request-id` or makes
//! one, exposes it to handlers as [`RequestCtx`], renders [`ErrorBody`] markers as
//! JSON, and records `sluice_http_requests_total` / `..._duration_seconds`.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::json;
use tracing::Instrument;

use super::error::{ErrorBody, code_for_status};

pub const REQUEST_ID: &str = "x-request-id";

/// What handlers may learn about, and tell, the request's envelope.
#[derive(Debug, Default)]
pub struct RequestCtx {
    pub request_id: String,
    /// Set by authentication; used as the metrics label.
    pub tenant: OnceLock<String>,
    /// The request's HTTP rate-limit decision, echoed as `RateLimit` headers.
    pub ratelimit: OnceLock<crate::ratelimit::Decision>,
}

fn valid_incoming(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| s.to_owned())
}

pub async fn request_context(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(valid_incoming)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let ctx = Arc::new(RequestCtx { request_id: request_id.clone(), ..Default::default() });
    req.extensions_mut().insert(ctx.clone());
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_owned();

    let span = tracing::info_span!("http", request_id = %request_id, %method, route = %route);
    let mut resp = next.run(req).instrument(span).await;

    let status = resp.status();
    let body = resp.extensions_mut().remove::<ErrorBody>().or_else(|| {
        let bodyless = resp.headers().get(header::CONTENT_TYPE).is_none();
        (bodyless && (status.is_client_error() || status.is_server_error())).then(|| ErrorBody {
            code: code_for_status(status),
            message: status.canonical_reason().unwrap_or("error").to_lowercase(),
            details: None,
        })
    });
    if let Some(ErrorBody { code, message, details }) = body {
        let mut error = details.unwrap_or_default();
        error.insert("code".into(), code.into());
        error.insert("message".into(), message.into());
        error.insert("request_id".into(), request_id.clone().into());
        let text = json!({ "error": error }).to_string();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp.headers_mut().remove(header::CONTENT_LENGTH);
        *resp.body_mut() = Body::from(text);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    if let Some(d) = ctx.ratelimit.get() {
        for (name, value) in [("ratelimit-policy", d.policy_header()), ("ratelimit", d.state_header())] {
            if let Ok(v) = HeaderValue::from_str(&value)
                && !resp.headers().contains_key(name)
            {
                resp.headers_mut().insert(name, v);
            }
        }
    }

    let tenant = ctx.tenant.get().cloned().unwrap_or_else(|| "-".into());
    let labels = [("route", route), ("method", method), ("status", status.as_u16().to_string()), ("tenant", tenant)];
    metrics::counter!("sluice_http_requests_total", &labels).increment(1);
    metrics::histogram!("sluice_http_request_duration_seconds", &labels[..2]).record(started.elapsed().as_secs_f64());
    resp
}
