//! Configuration: typed structs (this file), loading with env overrides and JSON
//! Schema validation ([`load`]), and the schema itself ([`schema`]).
//!
//! Precedence: defaults < file < `SLUICE_SECTION__KEY` env vars < CLI flags.
//! Every field is documented here with its default; `config/sluice.toml` mirrors it.

pub mod load;
pub mod schema;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::secret::SecretString;

pub use load::{ConfigError, load_file, load_str};

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners and request handling.
    #[serde(default)]
    pub server: ServerConfig,
    /// The control-plane database (tenants, keys, quotas, plugins, audit).
    pub control: ControlConfig,
    /// The shared Postgres cluster that holds one database per tenant.
    pub postgres: PostgresConfig,
    /// Redis: rate-limit state, caches, tenant key/value.
    pub redis: RedisConfig,
    /// The S3-compatible object store: one bucket per tenant.
    pub s3: S3Config,
    /// Operator credentials and key material.
    pub auth: AuthConfig,
    /// Quotas given to new tenants.
    #[serde(default)]
    pub quotas: QuotaDefaults,
    /// Rate limiting (GCRA in Redis, local fallback).
    #[serde(default)]
    pub ratelimit: RateLimitConfig,
    /// The semantic cache (vector-search results and the tenant cache API).
    #[serde(default)]
    pub cache: CacheConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The WebAssembly plugin host: limits, deadlines, breaker.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// Retention runs: schedule and caps.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Storage metering: how often tenant usage is measured and recounted.
    #[serde(default)]
    pub usage: UsageConfig,
    /// Backups: target bucket, keys, schedules and retention.
    #[serde(default)]
    pub backup: BackupConfig,
}

/// Backups of tenants (`backup/`) to an S3-compatible bucket.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Endpoint URL of the backup target. Empty: backups are off.
    pub endpoint: String,
    /// Region the backup store expects. Default `us-east-1`.
    pub region: String,
    /// Bucket that holds every tenant's backups (created when missing).
    /// Default `sluice-backups`.
    pub bucket: String,
    /// Access key id of the backup target. Secret; `SLUICE_BACKUP__ACCESS_KEY_ID`.
    #[schemars(with = "String")]
    pub access_key_id: SecretString,
    /// Secret access key of the backup target. Secret; `SLUICE_BACKUP__SECRET_ACCESS_KEY`.
    #[schemars(with = "String")]
    pub secret_access_key: SecretString,
    /// Path-style addressing. Default true.
    pub force_path_style: bool,
    /// The operator's backup key: an age X25519 identity
    /// (`AGE-SECRET-KEY-1…`) that wraps every tenant's data key. Secret;
    /// `SLUICE_BACKUP__OPERATOR_KEY`. Generate one with `sluice backup keygen`.
    #[schemars(with = "String")]
    pub operator_key: SecretString,
    /// Earlier operator keys, still accepted to unwrap data keys after a
    /// rotation (`sluice backup rewrap` re-wraps them to the current key).
    #[schemars(with = "Vec<String>")]
    pub previous_operator_keys: Vec<SecretString>,
    /// Folder holding pg_dump and pg_restore (Postgres 16). Empty: `PATH`.
    pub pg_bin_dir: String,
    /// Local folder for restore staging (decrypted parts are checked here
    /// before anything changes). Empty: the system temp folder.
    pub staging_dir: String,
    /// Run the backup scheduler in this instance (several may; a tenant's
    /// run is claimed by one). Default true.
    pub scheduler: bool,
    /// Seconds between scheduled backups of a tenant without its own
    /// schedule; 0 = none. Default 86400 (daily).
    pub interval_s: u64,
    /// Seconds between scheduled verifications of a tenant's newest backup;
    /// 0 = none. Default 2592000 (30 days).
    pub verify_interval_s: u64,
    /// Backups younger than this many days are kept. Default 90.
    #[schemars(range(min = 1))]
    pub retain_days: u32,
    /// At least this many newest complete backups are kept whatever their
    /// age. Default 7.
    pub retain_min_count: u32,
    /// Live tenants a tenant admin may create by restoring its own tenant's
    /// backups as new (each is a database and a bucket); operators are not
    /// limited. 0 = only operators restore as new. Default 2.
    #[schemars(range(max = 1000))]
    pub tenant_copies_max: u32,
    /// Objects copied at the same time during a backup. Default 8.
    #[schemars(range(min = 1, max = 64))]
    pub object_concurrency: usize,
    /// zstd level of every part. Default 3.
    #[schemars(range(min = 1, max = 19))]
    pub zstd_level: i32,
    /// `maintenance_work_mem` of the restore's sessions: index builds (HNSW
    /// above all) are much faster when the graph fits. Default `512MB`.
    pub restore_maintenance_work_mem: String,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            region: defaults::region(),
            bucket: "sluice-backups".into(),
            access_key_id: SecretString::from(String::new()),
            secret_access_key: SecretString::from(String::new()),
            force_path_style: true,
            operator_key: SecretString::from(String::new()),
            previous_operator_keys: Vec::new(),
            pg_bin_dir: String::new(),
            staging_dir: String::new(),
            scheduler: true,
            interval_s: 86_400,
            verify_interval_s: 2_592_000,
            retain_days: 90,
            retain_min_count: 7,
            tenant_copies_max: 2,
            object_concurrency: 8,
            zstd_level: 3,
            restore_maintenance_work_mem: "512MB".into(),
        }
    }
}

/// Storage metering (`usage/`). Object bytes, vector points and key/value
/// bytes are kept exactly on every write; the database size can only be
/// measured, so a tenant may pass `max_db_bytes` by what it writes in one
/// `measure_interval_s` before its writes are refused.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Run the meter in this instance (at least one instance should).
    /// Default true.
    pub meter: bool,
    /// Seconds between measurements of a tenant's database size. Default 30.
    #[schemars(range(min = 1, max = 86400))]
    pub measure_interval_s: u64,
    /// Seconds between full recounts (objects listed, key/value values
    /// scanned, points counted) that correct drift such as expired keys or
    /// writes made behind the gateway's back. Default 3600.
    #[schemars(range(min = 60))]
    pub reconcile_interval_s: u64,
    /// How often each gateway instance reloads which tenants are over a
    /// storage quota (both doors refuse their writes), in ms. Default 2000.
    #[schemars(range(min = 100, max = 60000))]
    pub refresh_ms: u64,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self { meter: true, measure_interval_s: 30, reconcile_interval_s: 3_600, refresh_ms: 2_000 }
    }
}

/// The WebAssembly plugin host.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Linear-memory cap of one plugin instance, in bytes. Default 16 MiB.
    #[schemars(range(min = 1048576, max = 1073741824))]
    pub memory_limit_bytes: u64,
    /// Deadline of one policy call, in ms. Default 10.
    #[schemars(range(min = 1, max = 10000))]
    pub policy_timeout_ms: u64,
    /// Deadline of one reranker call, in ms. Default 10.
    #[schemars(range(min = 1, max = 10000))]
    pub reranker_timeout_ms: u64,
    /// Deadline of one retention batch, in ms. Default 1000.
    #[schemars(range(min = 1, max = 600000))]
    pub retention_batch_timeout_ms: u64,
    /// Largest component a tenant may upload, in bytes. Default 10 MiB.
    #[schemars(range(min = 1024, max = 104857600))]
    pub max_artifact_bytes: u64,
    /// Instances the pooling allocator keeps slots for (concurrent calls). Default 256.
    #[schemars(range(min = 1, max = 10000))]
    pub max_instances: u32,
    /// Consecutive failures after which a plugin is paused. Default 5.
    #[schemars(range(min = 1))]
    pub breaker_failures: u32,
    /// How long a paused plugin stays paused, in ms. Default 30000.
    pub breaker_cooldown_ms: u64,
    /// Log lines each plugin may write per second (the rest are counted and
    /// dropped). Default 50.
    pub log_lines_per_second: u32,
    /// How long an instance trusts its cached view of a tenant's active plugins
    /// before reading the control plane again, in ms (activations arrive sooner
    /// via LISTEN/NOTIFY). Default 30000.
    #[schemars(range(min = 100))]
    pub cache_ttl_ms: u64,
    /// Concurrent plugin calls one tenant may run on this instance (its share
    /// of `max_instances`); a call over it waits up to its deadline, then is
    /// refused as rate limited. Default 8.
    #[schemars(range(min = 1, max = 10000))]
    pub max_instances_per_tenant: u32,
    /// Where uploaded components are compiled: `process` (a child process of
    /// this binary with a CPU, memory and time budget, killed when it runs
    /// past them) or `thread` (in this process; only for tools and benches
    /// that load trusted components). Default `process`.
    pub compile_in: CompileIn,
    /// The executable run as the compile worker (`sluice __compile-plugin`);
    /// empty = this process's own executable. Default empty.
    pub compiler_path: String,
    /// Wall-clock budget of one compile, in ms; a compile past it is killed
    /// and the upload refused. Default 20000.
    #[schemars(range(min = 100, max = 600000))]
    pub compile_timeout_ms: u64,
    /// Address-space cap of the compile worker, in bytes. Default 2 GiB.
    #[schemars(range(min = 268435456))]
    pub compile_memory_bytes: u64,
    /// Compiles this instance runs at once (each tenant at most one). Default 1.
    #[schemars(range(min = 1, max = 64))]
    pub max_concurrent_compiles: u32,
    /// Checked before anything is compiled: the largest function body, in
    /// bytes. Default 256 KiB.
    #[schemars(range(min = 1024))]
    pub max_function_bytes: u32,
    /// Checked before compiling: deepest block nesting in a function. Default 512.
    #[schemars(range(min = 16))]
    pub max_nesting_depth: u32,
    /// Checked before compiling: most locals in one function. Default 10000.
    #[schemars(range(min = 16))]
    pub max_locals: u32,
    /// Checked before compiling: most functions over all modules of a
    /// component. Default 50000.
    #[schemars(range(min = 16))]
    pub max_functions: u32,
}

/// Where plugin components are compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CompileIn {
    Process,
    Thread,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            memory_limit_bytes: 16 << 20,
            policy_timeout_ms: 10,
            reranker_timeout_ms: 10,
            retention_batch_timeout_ms: 1_000,
            max_artifact_bytes: 10 << 20,
            max_instances: 256,
            breaker_failures: 5,
            breaker_cooldown_ms: 30_000,
            log_lines_per_second: 50,
            cache_ttl_ms: 30_000,
            max_instances_per_tenant: 8,
            compile_in: CompileIn::Process,
            compiler_path: String::new(),
            compile_timeout_ms: 20_000,
            compile_memory_bytes: 2 << 30,
            max_concurrent_compiles: 1,
            max_function_bytes: 256 << 10,
            max_nesting_depth: 512,
            max_locals: 10_000,
            max_functions: 50_000,
        }
    }
}

/// Retention runs.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// How often the scheduler runs a tenant's active retention plugin, in
    /// seconds, unless the tenant set its own interval (`PUT
    /// /v1/retention/schedule`); 0 = only tenants with their own. Default 3600.
    pub interval_s: u64,
    /// Most deletions one run may make; a run that reaches it stops as `capped`.
    /// Default 1000.
    #[schemars(range(min = 1))]
    pub max_deletions_per_run: u64,
    /// Items per plugin call. Default 100.
    #[schemars(range(min = 1, max = 1000))]
    pub batch_size: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { interval_s: 3_600, max_deletions_per_run: 1_000, batch_size: 100 }
    }
}

/// Listeners and request handling.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// HTTP door listen address. Default `127.0.0.1:8080`.
    pub http_addr: String,
    /// Postgres-wire door listen address. Default `127.0.0.1:6432`.
    pub pg_addr: String,
    /// Postgres-door pooling: `transaction` (an upstream connection per
    /// transaction) or `session` (per client session). Default `transaction`.
    pub pg_pool_mode: PgPoolMode,
    /// How long a Postgres-door client waits for a free upstream connection
    /// before its statement fails with SQLSTATE 57P03, in ms. Default 30000.
    #[schemars(range(min = 1))]
    pub pg_pool_timeout_ms: u64,
    /// Bytes all Postgres-door clients together may hold in partly received
    /// messages larger than 64 KiB (one message is at most 64 MiB); a
    /// message that finds no room is refused with FATAL 53200 before it is
    /// buffered. Default 256 MiB.
    #[schemars(range(min = 1048576))]
    pub pg_read_budget_bytes: u64,
    /// TLS for the Postgres door (SSLRequest is answered `S`). Default: off.
    pub tls: Option<TlsConfig>,
    /// Largest JSON request body in bytes (object uploads stream and are limited
    /// by quota instead). Default 1 MiB.
    #[schemars(range(min = 1024))]
    pub max_json_body_bytes: u64,
    /// How long graceful shutdown waits for in-flight requests, in ms. Default 30000.
    pub shutdown_grace_ms: u64,
    /// Timeout of each dependency check in `/readyz`, in ms. Default 1000.
    #[schemars(range(min = 1))]
    pub readiness_timeout_ms: u64,
    /// A separate listen address for `/metrics` without a token, for a
    /// private scrape network (e.g. `10.0.0.5:9090`). The metrics carry
    /// tenant names: on the HTTP door `/metrics` always needs the operator
    /// token. Default empty: no separate listener.
    pub metrics_addr: String,
    /// S3 door listen address (path-style S3 API onto each tenant's bucket,
    /// with per-tenant S3 access keys). Default `127.0.0.1:9080`; empty: off.
    pub s3_addr: String,
    /// Base domain for virtual-host-style S3 requests
    /// (`<tenant>.<base domain>`, e.g. `s3.example.com`); path-style requests
    /// keep working on any host. Default empty: path style only.
    pub s3_base_domain: String,
    /// Open multipart uploads a tenant may have on the S3 door. Default 1000.
    #[schemars(range(min = 1))]
    pub s3_max_uploads: u32,
    /// Multipart uploads not completed within this many seconds are aborted
    /// and their parts freed. Default 86400 (one day).
    #[schemars(range(min = 60))]
    pub s3_upload_expiry_s: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:8080".into(),
            pg_addr: "127.0.0.1:6432".into(),
            pg_pool_mode: PgPoolMode::Transaction,
            pg_pool_timeout_ms: 30_000,
            pg_read_budget_bytes: 256 << 20,
            tls: None,
            max_json_body_bytes: 1 << 20,
            shutdown_grace_ms: 30_000,
            readiness_timeout_ms: 1_000,
            metrics_addr: String::new(),
            s3_addr: "127.0.0.1:9080".into(),
            s3_base_domain: String::new(),
            s3_max_uploads: 1000,
            s3_upload_expiry_s: 86_400,
        }
    }
}

/// How the Postgres door shares upstream connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PgPoolMode {
    /// A client holds an upstream connection for one transaction.
    Transaction,
    /// A client holds an upstream connection for its whole session.
    Session,
}

/// TLS certificate and key (PEM files).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first. Required.
    pub cert_path: std::path::PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Required.
    pub key_path: std::path::PathBuf,
}

/// The control-plane database.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// `postgres://user:password@host:port/dbname` of the control-plane database.
    /// Secret; usually set with `SLUICE_CONTROL__DATABASE_URL`. Required.
    #[schemars(with = "String")]
    pub database_url: SecretString,
    /// Connections in the control-plane pool. Default 8.
    #[serde(default = "defaults::control_pool_size")]
    #[schemars(range(min = 1, max = 1000))]
    pub pool_size: u32,
    /// Apply pending control-plane migrations when `serve` starts. Default true.
    #[serde(default = "defaults::yes")]
    pub auto_migrate: bool,
    /// Connect timeout, in ms. Default 5000.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

/// The shared tenant-data Postgres cluster.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// URL of a role that may create roles and databases and the `vector`
    /// extension (used only to provision and drop tenants; tenant traffic uses
    /// each tenant's own role). Secret; `SLUICE_POSTGRES__ADMIN_URL`. Required.
    #[schemars(with = "String")]
    pub admin_url: SecretString,
    /// Prefix of tenant database names (`tenant_` + name with `-` → `_`). Default `tenant_`.
    #[serde(default = "defaults::db_prefix")]
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_]{0,15}$"))]
    pub database_prefix: String,
    /// Prefix of tenant role names. Default `tenant_`.
    #[serde(default = "defaults::db_prefix")]
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_]{0,15}$"))]
    pub role_prefix: String,
    /// Connect timeout, in ms. Default 5000.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// The largest `work_mem` a tenant may set (SET, `set_config`, startup
    /// options, either door), in Postgres units (`kB`, `MB`, `GB`, `TB`; a bare
    /// number is kB). Tenant roles default to the smaller of this and 4MB.
    /// Default `64MB`.
    #[serde(default = "defaults::max_work_mem")]
    #[schemars(regex(pattern = r"^[0-9]+ *(kB|MB|GB|TB)?$"))]
    pub max_work_mem: String,
    /// The largest `maintenance_work_mem` a tenant may set, as
    /// `max_work_mem`. Default `256MB`.
    #[serde(default = "defaults::max_maintenance_work_mem")]
    #[schemars(regex(pattern = r"^[0-9]+ *(kB|MB|GB|TB)?$"))]
    pub max_maintenance_work_mem: String,
    /// `temp_file_limit` of every tenant role (a superuser-only setting, so
    /// tenants cannot raise it; set when a tenant is created and when its
    /// pools are built): the temporary-file space one session may use, as
    /// `max_work_mem`, or `-1` for no limit. Needs `postgres.admin_url` to be a
    /// superuser (tenant creation fails otherwise; for existing tenants a
    /// warning is logged when their pools are built). Default `10GB`.
    #[serde(default = "defaults::temp_file_limit")]
    #[schemars(regex(pattern = r"^(-1|[0-9]+ *(kB|MB|GB|TB)?)$"))]
    pub temp_file_limit: String,
    /// Read replicas: hot standbys streaming from the server of `admin_url`,
    /// as URLs of the same kind of role as `admin_url` (the gateway uses it
    /// only to read each replica's replay position; tenant traffic logs in
    /// as the tenant's own role, which the replica has from the primary).
    /// Reads are routed to them as `[postgres.replica_routing]` says.
    /// Secret; `SLUICE_POSTGRES__REPLICAS='["postgres://…", …]'`. Default none.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub replicas: Vec<SecretString>,
    /// When a replica serves reads. Defaults as below.
    #[serde(default)]
    pub replica_routing: ReplicaRoutingConfig,
}

/// Read routing to `postgres.replicas` (lag-aware, read-your-writes).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicaRoutingConfig {
    /// A replica more than this far behind the primary (the age of the
    /// oldest change it has not replayed) serves no reads until it catches
    /// up. Default 1000 ms.
    #[schemars(range(min = 1))]
    pub max_lag_ms: u64,
    /// The same bound in bytes of WAL not replayed. Default 16 MiB.
    #[schemars(range(min = 1))]
    pub max_lag_bytes: u64,
    /// How often each replica's replay position is checked. Default 250 ms.
    #[schemars(range(min = 10))]
    pub check_interval_ms: u64,
    /// After an API key writes (a statement or transaction that is not a
    /// pure read, on either door), its reads go to the primary for this long,
    /// so a client reads its own writes. Keep it above `max_lag_ms` +
    /// `check_interval_ms`. Default 2000 ms.
    pub read_your_writes_ms: u64,
    /// Share that window across gateway instances for `/v1/sql`: a write
    /// marks its API key in Redis (before the response), and a read checks
    /// the mark, so a client whose requests are spread over instances by a
    /// load balancer still reads its own writes (one Redis round trip per
    /// routed request). Postgres-door sessions stay on one instance and use
    /// its memory. Default true.
    pub shared_read_your_writes: bool,
}

impl Default for ReplicaRoutingConfig {
    fn default() -> Self {
        Self {
            max_lag_ms: 1_000,
            max_lag_bytes: 16 << 20,
            check_interval_ms: 250,
            read_your_writes_ms: 2_000,
            shared_read_your_writes: true,
        }
    }
}

/// Redis.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`. Secret when it holds a password;
    /// `SLUICE_REDIS__URL`. Required.
    #[schemars(with = "String")]
    pub url: SecretString,
    /// Prefix of every key the gateway writes; tenants live under
    /// `{prefix}:t:{tenant_id}:`. Default `sluice`.
    #[serde(default = "defaults::redis_prefix")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.-]{1,32}$"))]
    pub key_prefix: String,
    /// Redis Cluster: seed node URLs (`redis://host:port`, any few of the
    /// cluster's nodes; the client learns the rest and follows MOVED/ASK).
    /// When set, `url` is not used, and every tenant's keys carry a hash tag
    /// (`{prefix}:t:{tenant_id}:` with the id in braces) so each tenant's
    /// keys, and every script's, share one slot. Moving between a single
    /// Redis and a cluster starts the key/value entries and caches afresh
    /// (key/value entries are in backups). Secret;
    /// `SLUICE_REDIS__CLUSTER_URLS='["redis://…", …]'`. Default none.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub cluster_urls: Vec<SecretString>,
    /// On a cluster, how long a command keeps retrying (with backoff) while
    /// the slot it needs has no reachable master — a failover takes about
    /// the cluster's `cluster-node-timeout` plus an election — before it
    /// fails. Rate-limit decisions never wait this long (their own timeout
    /// falls back to the local limiter). Default 5000 ms.
    #[serde(default = "defaults::cluster_failover_wait_ms")]
    pub cluster_failover_wait_ms: u64,
}

/// The S3-compatible object store.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:39000`. Required.
    pub endpoint: String,
    /// Region name the store expects. Default `us-east-1`.
    #[serde(default = "defaults::region")]
    pub region: String,
    /// Access key id. Secret; `SLUICE_S3__ACCESS_KEY_ID`. Required.
    #[schemars(with = "String")]
    pub access_key_id: SecretString,
    /// Secret access key. Secret; `SLUICE_S3__SECRET_ACCESS_KEY`. Required.
    #[schemars(with = "String")]
    pub secret_access_key: SecretString,
    /// Prefix of tenant bucket names (`prefix` + tenant name). Default `sluice-`.
    #[serde(default = "defaults::bucket_prefix")]
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]{0,15}$"))]
    pub bucket_prefix: String,
    /// Use path-style addressing (needed by Garage and most MinIO setups). Default true.
    #[serde(default = "defaults::yes")]
    pub force_path_style: bool,
}

/// Operator credentials and key material.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Bearer token for `/admin/v1/*`. Secret, at least 16 characters;
    /// `SLUICE_AUTH__OPERATOR_TOKEN`. Required.
    #[schemars(with = "String", length(min = 16))]
    pub operator_token: SecretString,
    /// Key from which each tenant's Postgres role password is derived (HMAC).
    /// Every gateway instance must share it. Secret, at least 32 characters;
    /// `SLUICE_AUTH__MASTER_KEY`. Required.
    #[schemars(with = "String", length(min = 32))]
    pub master_key: SecretString,
    /// PBKDF2 iterations of the SCRAM-SHA-256 verifiers stored for API keys.
    /// Default 4096 (the Postgres default).
    #[serde(default = "defaults::scram_iterations")]
    #[schemars(range(min = 4096, max = 1000000))]
    pub scram_iterations: u32,
}

/// Quotas given to a new tenant (each can be changed per tenant later).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaDefaults {
    /// Upstream connections in the tenant's Postgres pool. Default 10.
    #[schemars(range(min = 1, max = 1000))]
    pub pg_pool_size: u32,
    /// Concurrent client connections on the Postgres door. Default 100.
    #[schemars(range(min = 1))]
    pub pg_max_connections: u32,
    /// HTTP requests per second (sustained). Default 1000.
    #[schemars(range(min = 1))]
    pub http_rps: u32,
    /// HTTP burst. Default 2000.
    pub http_burst: u32,
    /// Postgres-door queries per second. Default 1000.
    #[schemars(range(min = 1))]
    pub query_rps: u32,
    /// Query burst. Default 2000.
    pub query_burst: u32,
    /// Object bytes in per second. Default 100 MiB.
    pub bytes_in_per_sec: u64,
    /// Object bytes out per second. Default 100 MiB.
    pub bytes_out_per_sec: u64,
    /// Statement timeout for tenant SQL, in ms. Default 30000.
    #[schemars(range(min = 1))]
    pub statement_timeout_ms: u32,
    /// Most rows one SQL-over-HTTP statement may return. Default 10000.
    pub max_rows: u32,
    /// Largest single object, in bytes. Default 5 GiB.
    pub max_object_bytes: u64,
    /// Largest key/value value, in bytes. Default 1 MiB.
    pub max_kv_value_bytes: u32,
    /// Database size beyond which writes are refused (reads and deletes keep
    /// working), in bytes. Default 10 GiB.
    #[schemars(range(min = 1))]
    pub max_db_bytes: u64,
    /// Total bytes of the tenant's objects. Default 100 GiB.
    #[schemars(range(min = 1))]
    pub max_storage_bytes: u64,
    /// Total bytes of the tenant's key/value values. Default 1 GiB.
    #[schemars(range(min = 1))]
    pub max_kv_bytes: u64,
    /// Vector points over all of the tenant's collections. Default 10,000,000.
    #[schemars(range(min = 1))]
    pub max_vector_points: u64,
    /// Largest result through either door, in bytes: per statement on the
    /// Postgres door (DataRow and COPY TO STDOUT data as sent), per request
    /// on `/v1/sql` (each row as received or as rendered JSON, whichever is
    /// larger). Default 64 MiB.
    #[schemars(range(min = 1))]
    pub max_result_bytes: u64,
}

impl Default for QuotaDefaults {
    fn default() -> Self {
        Self {
            pg_pool_size: 10,
            pg_max_connections: 100,
            http_rps: 1000,
            http_burst: 2000,
            query_rps: 1000,
            query_burst: 2000,
            bytes_in_per_sec: 100 << 20,
            bytes_out_per_sec: 100 << 20,
            statement_timeout_ms: 30_000,
            max_rows: 10_000,
            max_object_bytes: 5 << 30,
            max_kv_value_bytes: 1 << 20,
            max_db_bytes: 10 << 30,
            max_storage_bytes: 100 << 30,
            max_kv_bytes: 1 << 30,
            max_vector_points: 10_000_000,
            max_result_bytes: 64 << 20,
        }
    }
}

/// Rate limiting. Limits themselves are per tenant (`quotas`) and per key
/// (`key_limits`); this section says how decisions are made.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Enforce rate limits at all. Default true.
    pub enabled: bool,
    /// How long one decision waits for a Redis that has not answered lately
    /// before the local fallback decides, in ms. Default 50.
    #[schemars(range(min = 1, max = 5000))]
    pub redis_timeout_ms: u64,
    /// How long one decision waits for a Redis that answered within the last
    /// second (a slow reply on a busy machine is not an outage), in ms;
    /// past it, the fallback decides. Default 1000.
    #[schemars(range(min = 1, max = 30000))]
    pub redis_max_wait_ms: u64,
    /// Gateway instances assumed to share the limits until the heartbeats in
    /// Redis say how many are live; the local fallback allows limit ÷ live
    /// instances while Redis is unreachable. Default 1.
    #[schemars(range(min = 1, max = 10000))]
    pub instances: u32,
    /// While Redis is unreachable: `open` admits within the local fallback
    /// limit, `closed` refuses every limited request. Default `open`.
    pub fail_mode: FailMode,
    /// After a failed Redis decision, skip Redis for this long (a circuit
    /// breaker), in ms; the next decision after it tries Redis again. Default 1000.
    pub breaker_ms: u64,
    /// Lease of one Postgres-door connection slot in Redis, in ms; holders
    /// renew it every third of that, so a crashed instance frees its slots
    /// within one lease. Default 30000.
    #[schemars(range(min = 1000))]
    pub connection_lease_ms: u64,
    /// Most statements (`query` class) — or S3-door requests (`http`) — one
    /// Redis decision may take ahead for this instance, so most of them skip
    /// the Redis round trip. Also capped at a tenth of the burst and a tenth
    /// of a second of the rate; 1 turns leasing off. Default 32.
    #[schemars(range(min = 1, max = 10000))]
    pub query_lease_max: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            redis_timeout_ms: 50,
            redis_max_wait_ms: 1_000,
            instances: 1,
            fail_mode: FailMode::Open,
            breaker_ms: 1_000,
            connection_lease_ms: 30_000,
            query_lease_max: 32,
        }
    }
}

/// What the rate limiter does while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    Open,
    Closed,
}

/// The semantic cache.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Serve searches with `"cache": true` and the `/v1/semcache` API. Default true.
    pub enabled: bool,
    /// Lifetime of an entry when the writer gives none, in seconds. Default 3600.
    #[schemars(range(min = 1))]
    pub default_ttl_secs: u64,
    /// Longest lifetime a writer may ask for, in seconds. Default 86400.
    #[schemars(range(min = 1))]
    pub max_ttl_secs: u64,
    /// Cache memory one tenant may use (vectors + values + bookkeeping, as
    /// counted by the gateway), in bytes; past it the entries closest to
    /// expiry are evicted. Default 64 MiB.
    #[schemars(range(min = 1024))]
    pub max_bytes_per_tenant: u64,
    /// Largest value of one `/v1/semcache` entry (its JSON text), in bytes.
    /// Default 256 KiB.
    #[schemars(range(min = 16))]
    pub max_value_bytes: u64,
    /// Similarity threshold of `/v1/semcache` lookups that give none. Default 0.95.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub default_threshold: f32,
    /// LSH hash tables (more: better recall, more Redis work). Default 16.
    #[schemars(range(min = 1, max = 64))]
    pub lsh_tables: u32,
    /// Hyperplanes (bits) per LSH table (more: smaller buckets, lower recall). Default 12.
    #[schemars(range(min = 1, max = 30))]
    pub lsh_bits: u32,
    /// Most candidates whose vectors one lookup fetches and compares. Default 256.
    #[schemars(range(min = 1, max = 10000))]
    pub max_candidates: u32,
    /// How long one cache operation may wait for Redis, in ms; a search then
    /// runs uncached. Default 250.
    #[schemars(range(min = 1))]
    pub redis_timeout_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            default_ttl_secs: 3_600,
            max_ttl_secs: 86_400,
            max_bytes_per_tenant: 64 << 20,
            max_value_bytes: 256 << 10,
            default_threshold: 0.95,
            lsh_tables: 16,
            lsh_bits: 12,
            max_candidates: 256,
            redis_timeout_ms: 250,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `sluice=debug,info`. Default `info`.
    /// `RUST_LOG` wins when set.
    pub level: String,
    /// `text` for people, `json` for log pipelines. Default `text`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: LogFormat::Text }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

mod defaults {
    pub fn yes() -> bool {
        true
    }
    pub fn control_pool_size() -> u32 {
        8
    }
    pub fn cluster_failover_wait_ms() -> u64 {
        5_000
    }
    pub fn connect_timeout_ms() -> u64 {
        5_000
    }
    pub fn max_work_mem() -> String {
        "64MB".into()
    }
    pub fn max_maintenance_work_mem() -> String {
        "256MB".into()
    }
    pub fn temp_file_limit() -> String {
        "10GB".into()
    }
    pub fn db_prefix() -> String {
        "tenant_".into()
    }
    pub fn redis_prefix() -> String {
        "sluice".into()
    }
    pub fn region() -> String {
        "us-east-1".into()
    }
    pub fn bucket_prefix() -> String {
        "sluice-".into()
    }
    pub fn scram_iterations() -> u32 {
        4096
    }
}
