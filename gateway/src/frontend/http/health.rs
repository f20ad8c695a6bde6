//! `/healthz` (the process is up), `/readyz` (each data service answers within
//! the readiness timeout; names whichever is down; shows each read replica's
//! health and lag) and `/metrics` (Prometheus:
//! behind the operator token on the HTTP door, since its labels name tenants;
//! without one on `server.metrics_addr`, see [`metrics_router`]).

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::extract::Operator;
use crate::services::Services;

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn check<F, E>(timeout: Duration, fut: F) -> Value
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    let (ok, error) = match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(())) => (true, None),
        Ok(Err(e)) => (false, Some(e.to_string())),
        Err(_) => (false, Some(format!("no answer within {} ms", timeout.as_millis()))),
    };
    let mut v = json!({ "ok": ok, "latency_ms": started.elapsed().as_secs_f64() * 1000.0 });
    if let Some(e) = error {
        // Readiness is for operators: the cause helps, and carries no secret.
        v["error"] = Value::String(e.chars().take(300).collect());
    }
    v
}

pub async fn readyz(State(svc): State<Services>) -> Response {
    let t = Duration::from_millis(svc.config.server.readiness_timeout_ms);
    let (pg, redis, s3) =
        tokio::join!(check(t, svc.control.ping()), check(t, svc.redis.ping()), check(t, svc.s3.ping()),);
    let checks = json!({ "postgres": pg, "redis": redis, "object_store": s3 });
    let down: Vec<&str> =
        ["postgres", "redis", "object_store"].into_iter().filter(|k| checks[*k]["ok"] != Value::Bool(true)).collect();
    for (name, c) in
        [("postgres", &checks["postgres"]), ("redis", &checks["redis"]), ("object_store", &checks["object_store"])]
    {
        metrics::gauge!("sluice_dependency_up", "service" => name).set(if c["ok"] == Value::Bool(true) {
            1.0
        } else {
            0.0
        });
    }
    let status = if down.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut body = json!({
        "status": if down.is_empty() { "ready" } else { "unready" },
        "down": down,
        "checks": checks,
    });
    if !svc.replicas.is_empty() {
        // Read replicas are an optimisation: reads go to the primary while
        // none is fit, so they do not decide readiness.
        body["replicas"] = json!(svc.replicas.status());
    }
    (status, Json(body)).into_response()
}

fn render_metrics() -> Response {
    let text = crate::telemetry::metrics_handle().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `/metrics` on the HTTP door: operators only.
pub async fn metrics(_: Operator) -> Response {
    render_metrics()
}

/// The router of the `server.metrics_addr` listener: `/metrics` without a
/// token (that address is for a private scrape network), nothing else.
pub fn metrics_router() -> axum::Router {
    axum::Router::new().route("/metrics", axum::routing::get(|| async { render_metrics() }))
}
