//! The OpenAPI 3.1 document of the HTTP door, served at `/openapi.json` and
//! checked in as `docs/openapi.json` (a test fails when they drift; regenerate
//! with `sluice openapi > docs/openapi.json`).
//!
//! Request-body schemas are generated from the same Rust types the handlers
//! deserialize (`schemars`), so a changed field shows up here. Each operation
//! is listed once in [`operations`]; a test calls every listed path and method
//! against a running gateway to prove it is routed.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

/// Who may call an operation.
#[derive(Clone, Copy)]
pub enum Access {
    Public,
    Operator,
    TenantKey,
    TenantAdmin,
}

/// One documented operation.
pub struct Op {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub access: Access,
    pub body: Option<Value>,
    pub body_type: &'static str,
    /// (status, description) of the success responses.
    pub ok: &'static [(&'static str, &'static str)],
}

fn op(method: &'static str, path: &'static str, access: Access, summary: &'static str) -> Op {
    Op { method, path, summary, access, body: None, body_type: "application/json", ok: &[("200", "OK")] }
}

impl Op {
    fn json<T: JsonSchema>(mut self, g: &mut SchemaGenerator) -> Self {
        self.body = Some(g.subschema_for::<T>().to_value());
        self
    }
    fn raw(mut self, content_type: &'static str) -> Self {
        self.body = Some(json!({ "type": "string", "format": "binary" }));
        self.body_type = content_type;
        self
    }
    fn ok(mut self, ok: &'static [(&'static str, &'static str)]) -> Self {
        self.ok = ok;
        self
    }
}

/// Every operation of the HTTP door.
pub fn operations(g: &mut SchemaGenerator) -> Vec<Op> {
    use super::{collections as c, tenant as t};
    use Access::*;
    vec![
        op("get", "/healthz", Public, "Liveness: the process is up"),
        op("get", "/readyz", Public, "Readiness: Postgres, Redis and the object store answer; names what is down")
            .ok(&[("200", "All dependencies up"), ("503", "Some dependency down")]),
        op(
            "get",
            "/metrics",
            Operator,
            "Prometheus metrics (text format; labels name tenants). Without a token only on `server.metrics_addr`",
        ),
        op("get", "/openapi.json", Public, "This document"),
        op("get", "/admin/v1/tenants", Operator, "List tenants"),
        op("post", "/admin/v1/tenants", Operator, "Create a tenant (database, role, bucket, admin and service keys)")
            .json::<super::admin::CreateTenant>(g)
            .ok(&[("201", "Created; the two keys are shown once")]),
        op("get", "/admin/v1/tenants/{name}", Operator, "Show a tenant with its quotas and keys"),
        op(
            "delete",
            "/admin/v1/tenants/{name}",
            Operator,
            "Delete a tenant and all its data (`?confirm={name}` required)",
        ),
        op("get", "/admin/v1/tenants/{name}/keys", Operator, "List a tenant's keys"),
        op("post", "/admin/v1/tenants/{name}/keys", Operator, "Create a key for a tenant")
            .json::<t::CreateKey>(g)
            .ok(&[("201", "Created; the key is shown once")]),
        op("delete", "/admin/v1/tenants/{name}/keys/{prefix}", Operator, "Revoke a tenant's key")
            .ok(&[("204", "Revoked")]),
        op("get", "/admin/v1/tenants/{name}/keys/{prefix}/limits", Operator, "A key's own rate limits"),
        op(
            "put",
            "/admin/v1/tenants/{name}/keys/{prefix}/limits",
            Operator,
            "Change a key's own rate limits (`null` removes an override; audited)",
        )
        .json::<crate::control::quotas::KeyLimitsPatch>(g),
        op("get", "/admin/v1/tenants/{name}/quotas", Operator, "A tenant's quotas"),
        op(
            "put",
            "/admin/v1/tenants/{name}/quotas",
            Operator,
            "Change some of a tenant's quotas (audited; no restart)",
        )
        .json::<crate::control::quotas::QuotaPatch>(g),
        op(
            "post",
            "/admin/v1/tenants/{name}/suspend",
            Operator,
            "Suspend a tenant: both doors refuse it, open sessions end, data is kept (audited)",
        )
        .json::<super::admin::Suspend>(g)
        .ok(&[("200", "Suspended (also when it already was)"), ("409", "Being created or deleted")]),
        op("post", "/admin/v1/tenants/{name}/resume", Operator, "Resume a suspended tenant (audited)")
            .ok(&[("200", "Active again (also when it already was)"), ("409", "Being created or deleted")]),
        op("get", "/admin/v1/tenants/{name}/usage", Operator, "What a tenant stores against its storage quotas"),
        op("get", "/admin/v1/audit", Operator, "Audit log, newest first (`?tenant=&limit=&before=`)"),
        op("get", "/v1/tenant", TenantKey, "The calling key's tenant, role and quotas"),
        op("get", "/v1/usage", TenantKey, "What this tenant stores against its storage quotas"),
        op("get", "/v1/keys", TenantAdmin, "List this tenant's keys"),
        op("post", "/v1/keys", TenantAdmin, "Create a key for this tenant")
            .json::<t::CreateKey>(g)
            .ok(&[("201", "Created; the key is shown once")]),
        op("delete", "/v1/keys/{prefix}", TenantAdmin, "Revoke one of this tenant's keys").ok(&[("204", "Revoked")]),
        op("get", "/v1/s3/credentials", TenantAdmin, "List this tenant's S3 access keys (never their secrets)"),
        op(
            "post",
            "/v1/s3/credentials",
            TenantAdmin,
            "Create an S3 access key (optionally read-only or limited to a prefix)",
        )
        .json::<super::s3_credentials::CreateS3Credential>(g)
        .ok(&[("201", "Created; access_key_id, secret_access_key (shown once), endpoint and bucket")]),
        op("delete", "/v1/s3/credentials/{id}", TenantAdmin, "Revoke an S3 access key, with immediate effect")
            .ok(&[("204", "Revoked")]),
        op("get", "/v1/audit", TenantAdmin, "This tenant's audit log"),
        op("post", "/v1/sql", TenantKey, "Run one parameterized statement, or a batch in one transaction")
            .json::<super::sql::SqlRequest>(g),
        op("get", "/v1/collections", TenantKey, "List vector collections"),
        op("put", "/v1/collections/{name}", TenantKey, "Create a collection (idempotent for the same definition)")
            .json::<crate::vectors::collections::CollectionSpec>(g)
            .ok(&[("201", "Created"), ("200", "Exists with the same definition")]),
        op("get", "/v1/collections/{name}", TenantKey, "Show a collection and its point count"),
        op("delete", "/v1/collections/{name}", TenantKey, "Delete a collection and its points")
            .ok(&[("204", "Deleted")]),
        op("post", "/v1/collections/{name}/points", TenantKey, "Upsert up to 1000 points (all validated first)")
            .json::<c::Upsert>(g),
        op("post", "/v1/collections/{name}/points/delete", TenantKey, "Delete points by id").json::<c::DeletePoints>(g),
        op("get", "/v1/collections/{name}/points/{id}", TenantKey, "Get one point"),
        op("delete", "/v1/collections/{name}/points/{id}", TenantKey, "Delete one point").ok(&[("204", "Deleted")]),
        op("post", "/v1/collections/{name}/search", TenantKey, "k-NN search with metadata filter")
            .json::<crate::vectors::search::SearchRequest>(g),
        op("get", "/v1/objects", TenantKey, "List objects (`?prefix=&delimiter=&limit=&cursor=`), stable pagination"),
        op(
            "put",
            "/v1/objects/{key}",
            TenantKey,
            "Upload an object (streamed; multipart above 8 MiB; `x-sluice-meta-*` metadata; `If-Match`)",
        )
        .raw("application/octet-stream"),
        op(
            "get",
            "/v1/objects/{key}",
            TenantKey,
            "Download an object (streamed; `Range` → 206; `If-None-Match` → 304; `If-Match` → 412)",
        )
        .ok(&[("200", "The object"), ("206", "A byte range"), ("304", "Not modified")]),
        op("head", "/v1/objects/{key}", TenantKey, "Object metadata: size, type, ETag, user metadata"),
        op("delete", "/v1/objects/{key}", TenantKey, "Delete an object (missing is fine)").ok(&[("204", "Deleted")]),
        op("put", "/v1/kv/{key}", TenantKey, "Store a value (raw body) with optional `?ttl=SECONDS`")
            .raw("application/octet-stream")
            .ok(&[("204", "Stored")]),
        op("get", "/v1/kv/{key}", TenantKey, "Read a value; `x-sluice-ttl` gives the remaining TTL"),
        op("delete", "/v1/kv/{key}", TenantKey, "Delete a value").ok(&[("204", "Deleted")]),
        op(
            "post",
            "/v1/semcache/{namespace}/lookup",
            TenantKey,
            "Semantic lookup: a cached value whose vector is similar enough, or a miss",
        )
        .json::<super::semcache::LookupBody>(g),
        op("post", "/v1/semcache/{namespace}/entries", TenantKey, "Store a value under a vector, with a TTL")
            .json::<super::semcache::EntryBody>(g)
            .ok(&[("201", "Stored")]),
        op("delete", "/v1/semcache/{namespace}", TenantKey, "Drop a namespace"),
        op("get", "/v1/plugins/{kind}", TenantAdmin, "List a plugin kind's versions and the active one"),
        op(
            "put",
            "/v1/plugins/{kind}",
            TenantAdmin,
            "Upload a component (≤ 10 MiB) as a new version; validated against the kind's world \
             (`?activate=true`, config as `?config=` or `X-Sluice-Plugin-Config`)",
        )
        .raw("application/wasm")
        .ok(&[("201", "Stored as a new version")]),
        op("post", "/v1/plugins/{kind}/activate", TenantAdmin, "Activate (or roll back to) a version")
            .json::<super::plugins::ActivateRequest>(g),
        op("post", "/v1/plugins/{kind}/deactivate", TenantAdmin, "Turn the plugin of this kind off"),
        op("delete", "/v1/plugins/{kind}/versions/{version}", TenantAdmin, "Delete a version that is not active")
            .ok(&[("204", "Deleted")]),
        op("post", "/v1/plugins/{kind}/test", TenantAdmin, "Run a sample input through a version")
            .json::<super::plugins::TestRequest>(g),
        op("post", "/v1/retention/runs", TenantAdmin, "Run the retention plugin now (or a dry run)")
            .json::<super::plugins::RetentionRunRequest>(g),
        op(
            "get",
            "/v1/retention/schedule",
            TenantAdmin,
            "The tenant's retention interval (own or the gateway default)",
        ),
        op(
            "put",
            "/v1/retention/schedule",
            TenantAdmin,
            "Set the tenant's retention interval (0 = never, null = default)",
        )
        .json::<super::plugins::ScheduleRequest>(g),
        op("get", "/v1/backups", TenantAdmin, "This tenant's backups, newest first"),
        op(
            "post",
            "/v1/backups",
            TenantAdmin,
            "Back up this tenant: answered with the id once the run is recorded; the run goes on in the \
             background (poll `GET /v1/backups/{id}` until `complete` or `failed`)",
        )
        .ok(&[
            ("202", "Started: `{id, status: \"running\"}`"),
            ("409", "A backup or restore of the tenant is running"),
        ]),
        op("get", "/v1/backups/{id}", TenantAdmin, "One of this tenant's backups"),
        op(
            "post",
            "/v1/backups/{id}/restore",
            TenantAdmin,
            "Restore one of this tenant's backups as a new tenant (`{\"as\": NAME}`; in place is operator-only). \
             A tenant has at most `backup.tenant_copies_max` live tenants made this way (403 beyond)",
        )
        .json::<super::backups::RestoreRequest>(g)
        .ok(&[("201", "Restored; the new tenant's keys are shown once")]),
        op("get", "/v1/backups/settings", TenantAdmin, "This tenant's backup settings (own or the gateway defaults)"),
        op(
            "put",
            "/v1/backups/settings",
            TenantAdmin,
            "Change this tenant's backup interval, retention and extra recipients (`null` = default; audited)",
        )
        .json::<crate::backup::catalog::SettingsPatch>(g),
        op(
            "get",
            "/admin/v1/tenants/{name}/backups",
            Operator,
            "A tenant's backups, newest first (`?all=true` with expired ones)",
        ),
        op(
            "post",
            "/admin/v1/tenants/{name}/backups",
            Operator,
            "Back up a tenant (in the background, as `POST /v1/backups`)",
        )
        .ok(&[
            ("202", "Started: `{id, status: \"running\"}`"),
            ("409", "A backup or restore of the tenant is running"),
        ]),
        op("get", "/admin/v1/tenants/{name}/backups/settings", Operator, "A tenant's backup settings"),
        op("put", "/admin/v1/tenants/{name}/backups/settings", Operator, "Change a tenant's backup settings (audited)")
            .json::<crate::backup::catalog::SettingsPatch>(g),
        op("get", "/admin/v1/backups/{id}", Operator, "Any tenant's backup"),
        op(
            "delete",
            "/admin/v1/backups/{id}",
            Operator,
            "Delete a backup and the content only it used (`?force=true` for a pinned one; audited)",
        )
        .ok(&[("200", "Deleted"), ("409", "Pinned, or a run of the tenant holds its lock")]),
        op(
            "post",
            "/admin/v1/backups/{id}/restore",
            Operator,
            "Restore a backup as a new tenant (`{\"as\": NAME}`) or in place (`{\"in_place\": true}`, the tenant \
             fenced meanwhile); every part is checked first",
        )
        .json::<super::backups::RestoreRequest>(g)
        .ok(&[("201", "Restored as a new tenant; its keys are shown once"), ("200", "Restored in place")]),
        op(
            "post",
            "/admin/v1/backups/{id}/verify",
            Operator,
            "Restore a backup into a scratch database and compare (`ok: false` with the problems when it differs); \
             `?wait=false` answers 202 at once and records the result on the backup (`verified_at`, `verify_ok`)",
        )
        .ok(&[("200", "Verified (see `ok`)"), ("202", "Verifying in the background (`wait=false`)")]),
        op("post", "/admin/v1/backups/{id}/pin", Operator, "Pin a complete backup: it never expires (audited)"),
        op("post", "/admin/v1/backups/{id}/unpin", Operator, "Unpin a backup (audited)"),
    ]
}

fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12().with(|s| s.definitions_path = "#/components/schemas/".into()).into_generator()
}

fn parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect()
}

/// The whole document.
pub fn document() -> Value {
    let mut g = generator();
    let ops = operations(&mut g);
    let mut paths = Map::new();
    for o in &ops {
        let mut operation = json!({
            "summary": o.summary,
            "operationId": format!("{}_{}", o.method, o.path.trim_start_matches('/').replace(['/', '{', '}', '.'], "_")),
            "responses": {},
        });
        let params = parameters(o.path);
        if !params.is_empty() {
            operation["parameters"] = Value::Array(params);
        }
        if let Some(schema) = &o.body {
            operation["requestBody"] = json!({ "required": true, "content": { o.body_type: { "schema": schema } } });
        }
        operation["security"] = match o.access {
            Access::Public => json!([]),
            Access::Operator => json!([{ "operatorToken": [] }]),
            Access::TenantKey | Access::TenantAdmin => json!([{ "apiKey": [] }]),
        };
        if matches!(o.access, Access::TenantAdmin) {
            operation["description"] = json!("Needs a tenant key with the `admin` role.");
        }
        let responses = operation["responses"].as_object_mut().expect("responses is an object");
        for (status, desc) in o.ok {
            responses.insert((*status).into(), json!({ "description": desc }));
        }
        responses.insert(
            "default".into(),
            json!({
                "description": "Error",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
            }),
        );
        let entry = paths.entry(o.path.to_owned()).or_insert_with(|| json!({}));
        entry[o.method] = operation;
    }
    let mut schemas: Map<String, Value> = g.take_definitions(true).into_iter().collect();
    schemas.insert("Error".into(), json!({
        "type": "object",
        "required": ["error"],
        "properties": { "error": {
            "type": "object",
            "required": ["code", "message", "request_id"],
            "properties": {
                "code": { "type": "string", "description": "Stable machine-readable code, e.g. `not_found`, `rate_limited`, `sql_error`" },
                "message": { "type": "string" },
                "request_id": { "type": "string", "description": "Also in the `x-request-id` header" },
                "sqlstate": { "type": "string", "description": "Postgres SQLSTATE, for SQL errors" },
                "statement": { "type": "integer", "description": "Index of the failing statement in a batch" },
                "point": { "type": "integer", "description": "Index of the failing point in an upsert" },
                "pointer": { "type": "string", "description": "JSON pointer into the failing point's metadata" }
            },
            "additionalProperties": true
        }}
    }));
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Sluice HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Multi-tenant storage gateway: SQL, objects, vector collections and a cache per tenant."
        },
        "servers": [{ "url": "http://127.0.0.1:8080" }],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": { "type": "http", "scheme": "bearer", "description": "A tenant API key `slk_<prefix>_<secret>` (also accepted as `X-Api-Key`)" },
                "operatorToken": { "type": "http", "scheme": "bearer", "description": "The operator token from `auth.operator_token`" }
            }
        }
    })
}

/// The document as pretty JSON with a trailing newline (the checked-in form).
pub fn document_text() -> String {
    let mut s = serde_json::to_string_pretty(&document()).expect("document serializes");
    s.push('\n');
    s
}

pub async fn serve() -> axum::Json<Value> {
    axum::Json(document())
}

#[cfg(test)]
mod tests {
    #[test]
    fn checked_in_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == super::document_text(),
            "docs/openapi.json is stale: run `sluice openapi > docs/openapi.json`"
        );
    }

    #[test]
    fn every_operation_has_a_unique_id() {
        let doc = super::document();
        let mut ids: Vec<String> = doc["paths"]
            .as_object()
            .into_iter()
            .flat_map(|p| p.values())
            .flat_map(|m| m.as_object().into_iter().flat_map(|m| m.values()))
            .filter_map(|o| o["operationId"].as_str().map(str::to_owned))
            .collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n);
    }
}
