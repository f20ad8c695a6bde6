//! Shared test harness: config for the local stack, an in-process gateway on a
//! random port, unique tenant names, and direct access to the services so tests
//! can check what really exists in Postgres, Redis and the object store.

#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::{Value, json};
use sluice::config::Config;
use sluice::secret::ExposeSecret;
use sluice::server::Running;
use sluice::services::Services;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `config/dev.toml` with the environment's `SLUICE_…` overrides, and an
/// ephemeral HTTP port.
pub fn config() -> Config {
    let path = repo_root().join("config/dev.toml");
    let text = std::fs::read_to_string(&path).expect("config/dev.toml exists");
    let mut cfg = sluice::config::load_str(&text, "config/dev.toml", std::env::vars())
        .unwrap_or_else(|e| panic!("dev config: {e}"));
    cfg.server.http_addr = "127.0.0.1:0".into();
    cfg.server.pg_addr = "127.0.0.1:0".into();
    cfg.server.s3_addr = "127.0.0.1:0".into();
    cfg.server.shutdown_grace_ms = 2_000;
    // Tests start retention runs themselves.
    cfg.retention.interval_s = 0;
    // Tests measure storage themselves (usage::meter::measure_tenant): a meter
    // in every test gateway would recount every tenant the shared stack holds.
    cfg.usage.meter = false;
    // Tests take backups themselves; a scheduler in every test gateway would
    // back up every tenant the shared stack holds.
    cfg.backup.scheduler = false;
    // Uploads compile in the worker process of the `sluice` binary (the test
    // binary is not one).
    cfg.plugins.compiler_path = env!("CARGO_BIN_EXE_sluice").into();
    cfg
}

/// A guest plugin built by `scripts/build-plugins`.
pub fn plugin_wasm(name: &str) -> Vec<u8> {
    let path = repo_root().join("plugins/target/wasm32-wasip2/release").join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("read {}: {e}; build the guest plugins first with scripts/build-plugins", path.display())
    })
}

pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..10])
}

/// A gateway running inside the test process.
pub struct Gateway {
    pub svc: Services,
    pub base: String,
    /// The Postgres-wire door's address.
    pub pg_addr: std::net::SocketAddr,
    /// Where `/metrics` answers without a token, when `server.metrics_addr` is set.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The S3 door's address, when `server.s3_addr` is set.
    pub s3_addr: Option<std::net::SocketAddr>,
    pub http: reqwest::Client,
    running: Option<Running>,
}

impl Gateway {
    pub async fn start() -> Self {
        Self::start_with(config()).await
    }

    pub async fn start_with(cfg: Config) -> Self {
        Self::start_services(Services::new(cfg).expect("services")).await
    }

    /// Start with prepared services (e.g. a pipeline with extra stages).
    pub async fn start_services(svc: Services) -> Self {
        let running = sluice::server::start(svc.clone(), "127.0.0.1:0").await.expect("gateway starts");
        let base = format!("http://{}", running.http_addr);
        let (pg_addr, metrics_addr, s3_addr) = (running.pg_addr, running.metrics_addr, running.s3_addr);
        Self { svc, base, pg_addr, metrics_addr, s3_addr, http: reqwest::Client::new(), running: Some(running) }
    }

    /// A libpq/tokio-postgres URL for the Postgres door.
    pub fn pg_url(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@{}:{}/{db}", self.pg_addr.ip(), self.pg_addr.port())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn operator_token(&self) -> String {
        self.svc.config.auth.operator_token.expose_secret().to_owned()
    }

    /// Create a tenant through the admin API; returns the 201 body.
    pub async fn create_tenant(&self, name: &str) -> TestTenant {
        let resp = self
            .http
            .post(self.url("/admin/v1/tenants"))
            .bearer_auth(self.operator_token())
            .json(&json!({ "name": name }))
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let body: Value = resp.json().await.expect("json body");
        assert_eq!(status, 201, "create tenant {name}: {body}");
        TestTenant {
            name: name.to_owned(),
            admin_key: body["admin_key"]["key"].as_str().expect("admin key").to_owned(),
            service_key: body["service_key"]["key"].as_str().expect("service key").to_owned(),
            body,
        }
    }

    pub async fn delete_tenant(&self, name: &str) {
        let resp = self
            .http
            .delete(self.url(&format!("/admin/v1/tenants/{name}?confirm={name}")))
            .bearer_auth(self.operator_token())
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(status, 200, "delete tenant {name}: {text}");
    }

    /// GET with a bearer token; returns (status, JSON body).
    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let resp = self.http.get(self.url(path)).bearer_auth(token).send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// `/metrics` as the operator sees it (the HTTP door wants the token).
    pub async fn metrics_text(&self) -> String {
        let resp =
            self.http.get(self.url("/metrics")).bearer_auth(self.operator_token()).send().await.expect("metrics");
        assert_eq!(resp.status(), 200, "/metrics with the operator token");
        resp.text().await.expect("metrics text")
    }

    /// Set one of a tenant's quotas directly in the control plane (takes effect
    /// on the next request: quotas are read with the key).
    pub async fn set_quota(&self, tenant: &str, column: &str, value: i64) {
        assert!(
            matches!(
                column,
                "max_object_bytes"
                    | "max_kv_value_bytes"
                    | "pg_pool_size"
                    | "pg_max_connections"
                    | "query_rps"
                    | "query_burst"
                    | "http_rps"
                    | "http_burst"
                    | "statement_timeout_ms"
                    | "max_storage_bytes"
                    | "max_kv_bytes"
                    | "max_vector_points"
                    | "max_db_bytes"
                    | "max_result_bytes"
            ),
            "set_quota: add {column} to the allowlist"
        );
        let c = self.svc.control.client().await.expect("control client");
        let sql = format!(
            "UPDATE quotas SET {column} = $1::bigint WHERE tenant_id = (SELECT id FROM tenants WHERE name = $2)"
        );
        let n = c.execute(&sql, &[&value, &tenant]).await.expect("update quota");
        assert_eq!(n, 1, "quota row of {tenant}");
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("clean shutdown");
        }
    }
}

pub struct TestTenant {
    pub name: String,
    pub admin_key: String,
    pub service_key: String,
    pub body: Value,
}

impl TestTenant {
    /// The tenant's database (`tenant_<id hex>`), from its create response.
    pub fn db(&self) -> String {
        self.body["tenant"]["db_name"].as_str().expect("db_name in the create response").to_owned()
    }
}

/// A request with the tenant's service key; returns (status, JSON body).
pub async fn call(gw: &Gateway, t: &TestTenant, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = gw.http.request(method.parse().expect("method"), gw.url(path)).bearer_auth(&t.service_key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("req");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Assert an error body has our shape and return its code.
pub fn error_code(body: &Value) -> &str {
    assert!(body["error"]["message"].is_string(), "error body has a message: {body}");
    assert!(body["error"]["request_id"].is_string(), "error body has a request id: {body}");
    body["error"]["code"].as_str().expect("error code")
}

/// Where a tenant's own role reaches its own database directly, past the
/// gateway (for differential tests: the same client script direct and
/// through the door).
#[derive(Debug, Clone)]
pub struct DirectPg {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub db: String,
}

impl DirectPg {
    pub fn url(&self) -> String {
        format!("postgres://{}:{}@{}:{}/{}", self.user, self.password, self.host, self.port, self.db)
    }
}

impl Gateway {
    pub async fn direct_pg(&self, t: &TestTenant) -> DirectPg {
        let c = self.svc.control.client().await.expect("control client");
        let row = c
            .query_one("SELECT id, db_name, db_role FROM tenants WHERE name = $1", &[&t.name])
            .await
            .expect("tenant row");
        let (id, db, user): (uuid::Uuid, String, String) = (row.get(0), row.get(1), row.get(2));
        let password = sluice::control::credentials::tenant_role_password(
            &self.svc.config.auth.master_key,
            sluice::ids::TenantId(id),
        );
        let cfg = self.svc.pg_admin.tenant_config(&db, &user, &password);
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".into(),
        };
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        DirectPg { host, port, user, password: password.expose_secret().to_owned(), db }
    }

    /// The door's address in the same shape.
    pub fn door_pg(&self, t: &TestTenant) -> DirectPg {
        DirectPg {
            host: self.pg_addr.ip().to_string(),
            port: self.pg_addr.port(),
            user: t.name.clone(),
            password: t.service_key.clone(),
            db: t.db(),
        }
    }
}

/// Is an external client (`program args…` exits 0) there to drive? When not,
/// a skip, or a failure where `scripts/test` installed the clients.
pub async fn available(program: &str, args: &[&str]) -> bool {
    let ok = tokio::process::Command::new(program).args(args).output().await.is_ok_and(|o| o.status.success());
    ok || missing(&format!("{program} {args:?}"))
}

/// A client is missing: a failure where `scripts/test` installed them
/// (`SLUICE_DRIVERS_REQUIRED` set), else a skip.
pub fn missing(what: &str) -> bool {
    assert!(
        std::env::var_os("SLUICE_DRIVERS_REQUIRED").is_none(),
        "{what} is not available, and SLUICE_DRIVERS_REQUIRED is set"
    );
    eprintln!("{what} is not available; skipping (scripts/test installs it)");
    false
}

impl Gateway {
    /// An S3 access key for `t` (`POST /v1/s3/credentials` with its admin
    /// key and `body`); returns the 201 body (`access_key_id`,
    /// `secret_access_key`, `endpoint`, `bucket`, …).
    pub async fn create_s3_key(&self, t: &TestTenant, body: Value) -> Value {
        let resp = self
            .http
            .post(self.url("/v1/s3/credentials"))
            .bearer_auth(&t.admin_key)
            .json(&body)
            .send()
            .await
            .expect("create S3 key");
        let status = resp.status().as_u16();
        let key: Value = resp.json().await.expect("json");
        assert_eq!(status, 201, "create S3 key: {key}");
        key
    }
}

/// Delete a tenant of a gateway the test has stopped itself (its services
/// still reach the stack).
pub async fn delete_tenant_after_stop(svc: &Services, name: &str) {
    let tn = sluice::ids::TenantName::parse(name).expect("name");
    sluice::control::provision::delete_tenant(svc, &tn, &sluice::control::audit::Actor::Cli, None)
        .await
        .expect("cleanup");
}
