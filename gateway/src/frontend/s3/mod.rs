//! The S3 door: the S3 API (path-style) onto each tenant's own bucket.
//!
//! The `s3s` crate does the protocol: routing, XML, SigV4 (header auth,
//! presigned URLs, `aws-chunked` signed bodies) and S3 error documents.
//! Sluice supplies the secret of an access key ([`auth::KeyStore`]), turns the
//! key into the tenant's [`Principal`](crate::pipeline::auth::Principal) and
//! checks the bucket, read-only and prefix limits ([`auth::Access`]), and
//! serves the operations ([`ops::Door`]) through the same pipeline and domain
//! code as `/v1/objects` ([`crate::objects`]). Operations not served here
//! answer s3s's default, `NotImplemented`.
//!
//! Requests are path-style; with `server.s3_base_domain` set, also
//! virtual-host style ([`host::BaseDomain`]). Clients name the tenant's
//! bucket by the tenant's name; the store's bucket
//! is [`crate::control::provision::bucket_name`].

pub mod auth;
mod error;
pub mod host;
mod ops;

use axum::error_handling::HandleError;
use axum::http::StatusCode;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::services::Services;

/// Who made a request and which S3 operation it was, filled in by
/// [`auth::Access`] once the signature checks out; read by [`tally`].
#[derive(Clone, Default)]
pub struct Tally(std::sync::Arc<std::sync::Mutex<Option<(String, String)>>>);

impl Tally {
    pub fn set(&self, tenant: &str, operation: &str) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some((tenant.to_owned(), operation.to_owned()));
        }
    }
}

/// Per-tenant request metrics of the S3 door:
/// `sluice_s3_requests_total{operation, status, tenant}` and
/// `sluice_s3_request_duration_seconds{operation}` (until the response
/// head; bodies stream after).
async fn tally(mut req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let started = std::time::Instant::now();
    let t = Tally::default();
    req.extensions_mut().insert(t.clone());
    let resp = next.run(req).await;
    let (tenant, operation) = t.0.lock().ok().and_then(|g| g.clone()).unwrap_or_else(|| ("-".into(), "-".into()));
    let status = resp.status().as_u16().to_string();
    let labels = [("operation", operation), ("status", status), ("tenant", tenant)];
    metrics::counter!("sluice_s3_requests_total", &labels).increment(1);
    metrics::histogram!("sluice_s3_request_duration_seconds", &labels[..1]).record(started.elapsed().as_secs_f64());
    resp
}

/// The S3 service for this gateway.
pub fn service(svc: Services) -> S3Service {
    let mut b = S3ServiceBuilder::new(ops::Door::new(svc.clone()));
    let handoff = auth::Handoff::default();
    b.set_auth(auth::KeyStore::new(svc.clone(), handoff.clone()));
    if !svc.config.server.s3_base_domain.is_empty() {
        b.set_host(host::BaseDomain::new(&svc.config.server.s3_base_domain));
    }
    b.set_access(auth::Access::new(svc, handoff));
    b.build()
}

/// Serve the S3 door on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, svc: Services, mut stop: watch::Receiver<bool>) {
    // s3s answers S3 errors itself; what reaches here is a broken request
    // (e.g. a body that failed mid-read).
    let s3 = HandleError::new(service(svc), |e: s3s::HttpError| async move {
        tracing::debug!(error = ?e, "S3 door: request failed");
        StatusCode::BAD_REQUEST
    });
    let app = axum::Router::new().fallback_service(s3).layer(axum::middleware::from_fn(tally));
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop.wait_for(|v| *v).await;
    });
    if let Err(e) = server.await {
        tracing::error!(error = %e, "serve the S3 door");
    }
}
