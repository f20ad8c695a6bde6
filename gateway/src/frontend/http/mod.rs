//! The HTTP door: routes, extractors, the error mapper and request context.
//!
//! | path | who | what |
//! |---|---|---|
//! | `/healthz`, `/readyz` | anyone | liveness, dependency readiness |
//! | `/metrics` | operator token (none on `server.metrics_addr`) | Prometheus; labels name tenants |
//! | `/admin/v1/tenants…`, `/admin/v1/audit` | operator token | provision tenants and keys, audit |
//! | `/v1/tenant`, `/v1/keys…`, `/v1/s3/credentials…`, `/v1/audit` | tenant API key | self-service within one tenant |
//! | `/v1/sql` | tenant API key | parameterized SQL (or a batch in one transaction) on the tenant's database |
//! | `/v1/collections…` | tenant API key | vector collections: define, upsert/get/delete points, k-NN search |
//! | `/v1/objects`, `/v1/objects/{*key}` | tenant API key | list; put/get/head/delete objects, streamed |
//! | `/v1/kv/{*key}` | tenant API key | put/get/delete key/value entries with TTL |
//! | `/v1/semcache/{namespace}…` | tenant API key | semantic cache for the tenant's own payloads |
//! | `/v1/plugins/{kind}…`, `/v1/retention/runs`, `/v1/retention/schedule` | tenant admin key | WebAssembly plugins: upload, list, activate/roll back, delete, test; retention runs |
//! | `/v1/backups…` | tenant admin key | back up the tenant (in the background), list, show, restore as a new tenant, settings |
//! | `/admin/v1/tenants/{name}/backups…`, `/admin/v1/backups/{id}…` | operator token | the same for any tenant, plus restore in place, verify, pin/unpin, delete |

pub mod admin;
pub mod backups;
pub mod collections;
pub mod context;
pub mod error;
pub mod extract;
pub mod health;
pub mod kv;
pub mod objects;
pub mod openapi;
pub mod plugins;
pub mod s3_credentials;
pub mod semcache;
pub mod sql;
pub mod tenant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use tower_http::catch_panic::CatchPanicLayer;

use crate::services::Services;

/// Body limit of a points upsert: 1000 points of up to 2000 dimensions as JSON.
const POINTS_BODY_LIMIT: usize = 64 << 20;

/// Build the router with every route and layer.
pub fn router(svc: Services) -> Router {
    let body_limit = usize::try_from(svc.config.server.max_json_body_bytes).unwrap_or(usize::MAX);
    let artifact_limit = usize::try_from(svc.config.plugins.max_artifact_bytes).unwrap_or(usize::MAX);
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::serve))
        .route("/admin/v1/tenants", get(admin::list_tenants).post(admin::create_tenant))
        .route("/admin/v1/tenants/{name}", get(admin::show_tenant).delete(admin::delete_tenant))
        .route("/admin/v1/tenants/{name}/keys", get(admin::list_keys).post(admin::create_key))
        .route("/admin/v1/tenants/{name}/keys/{prefix}", delete(admin::revoke_key))
        .route("/admin/v1/tenants/{name}/keys/{prefix}/limits", get(admin::get_key_limits).put(admin::put_key_limits))
        .route("/admin/v1/tenants/{name}/quotas", get(admin::get_quotas).put(admin::put_quotas))
        .route("/admin/v1/tenants/{name}/suspend", post(admin::suspend))
        .route("/admin/v1/tenants/{name}/resume", post(admin::resume))
        .route("/admin/v1/tenants/{name}/usage", get(admin::usage))
        .route("/admin/v1/tenants/{name}/backups", get(backups::admin_list).post(backups::admin_create))
        .route(
            "/admin/v1/tenants/{name}/backups/settings",
            get(backups::admin_get_settings).put(backups::admin_put_settings),
        )
        .route("/admin/v1/backups/{id}", get(backups::admin_show).delete(backups::admin_delete))
        .route("/admin/v1/backups/{id}/restore", post(backups::admin_restore))
        .route("/admin/v1/backups/{id}/verify", post(backups::admin_verify))
        .route("/admin/v1/backups/{id}/pin", post(backups::admin_pin))
        .route("/admin/v1/backups/{id}/unpin", post(backups::admin_unpin))
        .route("/admin/v1/audit", get(admin::list_audit))
        .route("/v1/tenant", get(tenant::whoami))
        .route("/v1/usage", get(tenant::usage))
        .route("/v1/sql", post(sql::run))
        .route("/v1/collections", get(collections::list_collections))
        .route(
            "/v1/collections/{name}",
            get(collections::get_collection).put(collections::put_collection).delete(collections::delete_collection),
        )
        .route(
            "/v1/collections/{name}/points",
            post(collections::upsert_points).layer(extract::json_limit(POINTS_BODY_LIMIT)),
        )
        .route("/v1/collections/{name}/points/delete", post(collections::delete_points))
        .route("/v1/collections/{name}/points/{id}", get(collections::get_point).delete(collections::delete_point))
        .route("/v1/collections/{name}/search", post(collections::search))
        .route("/v1/semcache/{namespace}", delete(semcache::delete_namespace))
        .route("/v1/semcache/{namespace}/lookup", post(semcache::lookup))
        .route("/v1/semcache/{namespace}/entries", post(semcache::put_entry))
        .route(
            "/v1/plugins/{kind}",
            get(plugins::list).put(plugins::upload).layer(DefaultBodyLimit::max(artifact_limit)),
        )
        .route("/v1/plugins/{kind}/activate", post(plugins::activate))
        .route("/v1/plugins/{kind}/deactivate", post(plugins::deactivate))
        .route("/v1/plugins/{kind}/versions/{version}", delete(plugins::delete_version))
        .route("/v1/plugins/{kind}/test", post(plugins::test))
        .route("/v1/retention/runs", post(plugins::retention_run))
        .route("/v1/retention/schedule", get(plugins::get_schedule).put(plugins::put_schedule))
        .route("/v1/backups", get(backups::list).post(backups::create))
        // A static segment wins over `{id}`: `settings` is never read as a backup id.
        .route("/v1/backups/settings", get(backups::get_settings).put(backups::put_settings))
        .route("/v1/backups/{id}", get(backups::show))
        .route("/v1/backups/{id}/restore", post(backups::restore))
        .route("/v1/keys", get(tenant::list_keys).post(tenant::create_key))
        .route("/v1/keys/{prefix}", delete(tenant::revoke_key))
        .route("/v1/s3/credentials", get(s3_credentials::list).post(s3_credentials::create))
        .route("/v1/s3/credentials/{id}", delete(s3_credentials::revoke))
        .route("/v1/audit", get(tenant::list_audit))
        .route("/v1/objects", get(objects::list))
        // Object bodies stream and are capped by the tenant's quota, not the JSON limit.
        .route(
            "/v1/objects/{*key}",
            get(objects::get)
                .head(objects::head)
                .put(objects::put)
                .delete(objects::delete)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/kv/{*key}", get(kv::get).put(kv::put).delete(kv::delete).layer(DefaultBodyLimit::disable()))
        .fallback(|| async { error::ApiError::not_found("no such route") })
        .layer(extract::json_limit(body_limit))
        .layer(axum::middleware::from_fn(context::request_context))
        // A panic in a handler is a bug; it becomes a 500, never a dropped connection.
        .layer(CatchPanicLayer::new())
        .with_state(svc)
}
