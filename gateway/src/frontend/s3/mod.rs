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
//! Clients name the tenant's bucket by the tenant's name; the store's bucket
//! is [`crate::control::provision::bucket_name`].

pub mod auth;
mod error;
mod ops;

use axum::error_handling::HandleError;
use axum::http::StatusCode;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::services::Services;

/// The S3 service for this gateway.
pub fn service(svc: Services) -> S3Service {
    let mut b = S3ServiceBuilder::new(ops::Door::new(svc.clone()));
    b.set_auth(auth::KeyStore::new(svc.clone()));
    b.set_access(auth::Access::new(svc));
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
    let app = axum::Router::new().fallback_service(s3);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop.wait_for(|v| *v).await;
    });
    if let Err(e) = server.await {
        tracing::error!(error = %e, "serve the S3 door");
    }
}
