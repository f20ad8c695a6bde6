//! Noisy neighbour (issue 12): tenant A runs each attack in turn while
//! tenant B runs a steady open-loop mix on both doors; B's p50/p99 and
//! errors quiet vs during each attack, and the gateway's peak RSS.
//!
//! The gateway is a separate process (the release `sluice serve`, config
//! `config/dev.toml` with free loopback ports set through
//! `SLUICE_SERVER__HTTP_ADDR` / `SLUICE_SERVER__PG_ADDR`), so the RSS
//! sampled from `/proc/<pid>/status` every 50 ms is the gateway's alone;
//! compile workers (its children) are sampled apart.
//!
//! B's load: `NN_RATE` requests/s (default 200) on a fixed schedule, each
//! request timed from the instant it was due (no coordinated omission), a
//! cycle of `/v1/sql` SELECT, object PUT and GET, key/value PUT and GET,
//! a collection search, two pg-door queries on kept connections and one
//! pg-door login + query. Every phase lasts `NN_SECONDS` (default 10);
//! quiet phases of `NN_QUIET_SECONDS` (default 5; the first 10) come
//! before the first attack and between attacks. Tenant A's statement
//! timeout quota is set to `NN_A_TIMEOUT_MS` (default 5,000) so that the
//! gateway's enforcement shows inside a phase.
//!
//! Run (stack up): `benches/noisy_neighbour.sh`, or
//! `eval "$(scripts/stack env)" && cargo bench -p sluice --bench noisy_neighbour`
//! (`SLUICE_BIN` picks another gateway binary, `NN_PLUGIN_DIR` the guest
//! plugins, default `plugins/target/wasm32-wasip2/release`; `NN_ATTACKS`
//! a comma-separated subset of `locks,plugins,compile,memory,timeout,work_mem`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{dev_config, env_u64, pct_ms};
use tokio::sync::RwLock;
use tokio::task::JoinSet;

#[path = "noisy_neighbour/attacks.rs"]
mod attacks;
#[path = "../tests/integration/bombs.rs"]
mod bombs;
#[path = "noisy_neighbour/rawpg.rs"]
mod rawpg;
mod support;

/// How long one request of B (or A) may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most B requests in flight; a request due past it counts as an error.
const MAX_IN_FLIGHT: u64 = 2_000;
/// B's load of one phase stops after this long even if its attack has not ended.
const MAX_PHASE_SECONDS: u64 = 180;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The gateway process, killed on drop.
struct GatewayProcess {
    child: Child,
    http: String,
    pg_port: u16,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local addr").port()
}

async fn start_gateway(http: &reqwest::Client) -> GatewayProcess {
    let bin = std::env::var("SLUICE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sluice").to_owned());
    let (http_port, pg_port) = (free_port(), free_port());
    let log_path = std::env::temp_dir().join(format!("noisy-neighbour-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).expect("gateway log file");
    let child = Command::new(&bin)
        .current_dir(repo_root())
        .args(["--config", "config/dev.toml", "serve"])
        .env("SLUICE_SERVER__HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .env("SLUICE_SERVER__PG_ADDR", format!("127.0.0.1:{pg_port}"))
        .env("SLUICE_LOG__LEVEL", "warn")
        .env("SLUICE_RETENTION__INTERVAL_S", "0")
        // The meter would recount every tenant of the shared dev stack.
        .env("SLUICE_USAGE__METER", "false")
        .stdout(Stdio::null())
        .stderr(log.try_clone().expect("log fd"))
        .spawn()
        .unwrap_or_else(|e| panic!("start {bin}: {e}"));
    let gw = GatewayProcess { child, http: format!("http://127.0.0.1:{http_port}"), pg_port };
    for _ in 0..300 {
        if let Ok(r) = http.get(format!("{}/readyz", gw.http)).send().await
            && r.status().is_success()
        {
            eprintln!("gateway {bin} pid {} ready; log {}", gw.child.id(), log_path.display());
            return gw;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("gateway not ready after 30 s; see {}", log_path.display());
}

/// VmRSS of `pid` in KiB (0 once it is gone).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// VmRSS of the direct children of `pid` (compile workers), summed, in KiB:
/// every thread's `children` file (a worker is the child of the thread
/// that spawned it).
fn children_rss_kib(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(Result::ok)
        .map(|t| std::fs::read_to_string(t.path().join("children")).unwrap_or_default())
        .flat_map(|list| list.split_whitespace().filter_map(|c| c.parse().ok()).collect::<Vec<u32>>())
        .map(rss_kib)
        .sum()
}

/// Peaks since the last `take`, sampled every 50 ms on a thread of its own.
struct RssSampler {
    gateway: AtomicU64,
    children: AtomicU64,
    stop: AtomicBool,
}

impl RssSampler {
    fn start(pid: u32) -> Arc<Self> {
        let s =
            Arc::new(Self { gateway: AtomicU64::new(0), children: AtomicU64::new(0), stop: AtomicBool::new(false) });
        let me = s.clone();
        std::thread::spawn(move || {
            while !me.stop.load(Ordering::Relaxed) {
                me.gateway.fetch_max(rss_kib(pid), Ordering::Relaxed);
                me.children.fetch_max(children_rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        s
    }

    /// (gateway, children) peak KiB since the last call.
    fn take(&self) -> (u64, u64) {
        (self.gateway.swap(0, Ordering::Relaxed), self.children.swap(0, Ordering::Relaxed))
    }
}

/// What the bench needs to reach the gateway as a tenant.
#[derive(Clone)]
pub struct Tenant {
    pub name: String,
    pub admin_key: String,
    pub service_key: String,
}

/// Shared by B's load and A's attacks.
#[derive(Clone)]
pub struct Ctx {
    pub http: reqwest::Client,
    pub base: String,
    pub pg_port: u16,
    pub operator: String,
}

impl Ctx {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A tokio-postgres URL for the pg door as `t` (the API key is the password).
    pub fn pg_url(&self, t: &Tenant) -> String {
        format!("postgres://{}:{}@127.0.0.1:{}/{}", t.name, t.service_key, self.pg_port, t.name)
    }

    pub async fn pg_connect(&self, t: &Tenant, options: Option<&str>) -> Result<tokio_postgres::Client, String> {
        let mut cfg: tokio_postgres::Config = self.pg_url(t).parse().map_err(|e| format!("{e}"))?;
        if let Some(o) = options {
            cfg.options(o);
        }
        cfg.connect_timeout(REQUEST_TIMEOUT);
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(|e| pg_error(&e))?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// A request with `key`; (status, body as JSON or text). Status 0 = transport error.
    pub async fn send(&self, req: reqwest::RequestBuilder, key: &str) -> (u16, Value) {
        match req.bearer_auth(key).timeout(REQUEST_TIMEOUT).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
            }
            Err(e) => (0, Value::String(format!("{e}"))),
        }
    }

    pub async fn json(&self, method: &str, path: &str, key: &str, body: Value) -> (u16, Value) {
        let req = self.http.request(method.parse().expect("method"), self.url(path)).json(&body);
        self.send(req, key).await
    }

    async fn create_tenant(&self, name: &str) -> Tenant {
        let (s, b) = self.json("POST", "/admin/v1/tenants", &self.operator, json!({ "name": name })).await;
        must(&format!("create tenant {name}"), (s, b.clone()));
        let key = |k: &str| b[k]["key"].as_str().expect("key in the 201 body").to_owned();
        Tenant { name: name.to_owned(), admin_key: key("admin_key"), service_key: key("service_key") }
    }

    async fn set_quotas(&self, t: &Tenant, quotas: Value) {
        let path = format!("/admin/v1/tenants/{}/quotas", t.name);
        must(&format!("quotas of {}", t.name), self.json("PUT", &path, &self.operator, quotas).await);
    }

    async fn delete_tenant(&self, t: &Tenant) {
        let req = self.http.delete(self.url(&format!("/admin/v1/tenants/{0}?confirm={0}", t.name)));
        let (s, b) = self.send(req, &self.operator).await;
        if s != 200 {
            eprintln!("delete tenant {}: {s} {b}", t.name);
        }
    }
}

/// Panics unless a setup request succeeded.
fn must(what: &str, (s, body): (u16, Value)) {
    assert!((200..300).contains(&s), "{what}: {s} {body}");
}

/// A tokio-postgres error as "SQLSTATE message" (or the error's text).
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => format!("{e}"),
    }
}

/// The error code of a JSON error body (or a short form of the body).
pub fn code(body: &Value) -> String {
    match body["error"]["code"].as_str() {
        Some(c) => c.to_owned(),
        None => body.to_string().chars().take(80).collect(),
    }
}

/// A collection of 8 dimensions with 20 points, and a table of 1,000 rows.
async fn seed(ctx: &Ctx, t: &Tenant) {
    let key = &t.admin_key;
    must("collection", ctx.json("PUT", "/v1/collections/docs", key, json!({ "dimension": 8 })).await);
    let points: Vec<Value> = (0..20)
        .map(|i| {
            let mut v = vec![0.1; 8];
            v[i % 8] = 1.0 + i as f64;
            json!({ "id": format!("p{i}"), "vector": v, "metadata": { "n": i } })
        })
        .collect();
    must("points", ctx.json("POST", "/v1/collections/docs/points", key, json!({ "points": points })).await);
    let statements = json!({ "statements": [
        { "sql": "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL)" },
        { "sql": "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 1000) g" },
    ]});
    must("table", ctx.json("POST", "/v1/sql", key, statements).await);
}

/// B's pg-door connections, replaced when one breaks.
struct PgConns {
    slots: Vec<RwLock<Option<Arc<tokio_postgres::Client>>>>,
}

impl PgConns {
    async fn get(&self, ctx: &Ctx, t: &Tenant, i: usize) -> Result<Arc<tokio_postgres::Client>, String> {
        let slot = &self.slots[i % self.slots.len()];
        if let Some(c) = slot.read().await.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let mut w = slot.write().await;
        if let Some(c) = w.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = Arc::new(ctx.pg_connect(t, None).await?);
        *w = Some(c.clone());
        Ok(c)
    }
}

/// The kinds of B's requests, in the order of its cycle.
const MIX: [&str; 9] =
    ["sql", "object_put", "object_get", "kv_put", "kv_get", "search", "pg_query", "pg_query", "pg_login"];

/// One of B's requests: Ok or a short error.
async fn b_request(ctx: &Ctx, b: &Tenant, conns: &PgConns, i: u64) -> Result<(), String> {
    let key = &b.service_key;
    let n = (i % 1000 + 1) as i32;
    let ok =
        |(s, body): (u16, Value)| if (200..300).contains(&s) { Ok(()) } else { Err(format!("{s} {}", code(&body))) };
    match MIX[(i % MIX.len() as u64) as usize] {
        "sql" => ok(ctx
            .json("POST", "/v1/sql", key, json!({ "sql": "SELECT v FROM items WHERE id = $1", "params": [n] }))
            .await),
        "object_put" => {
            let req = ctx.http.put(ctx.url(&format!("/v1/objects/load/{}", i % 50))).body(vec![b'b'; 1024]);
            ok(ctx.send(req, key).await)
        }
        "object_get" => ok(ctx.send(ctx.http.get(ctx.url("/v1/objects/load/seed")), key).await),
        "kv_put" => ok(ctx.send(ctx.http.put(ctx.url(&format!("/v1/kv/load/{}", i % 50))).body("value"), key).await),
        "kv_get" => ok(ctx.send(ctx.http.get(ctx.url("/v1/kv/load/seed")), key).await),
        "search" => {
            let mut v = vec![0.1; 8];
            v[(i % 8) as usize] = 1.0;
            ok(ctx.json("POST", "/v1/collections/docs/search", key, json!({ "vector": v, "k": 5 })).await)
        }
        "pg_query" => {
            let c = conns.get(ctx, b, i as usize).await?;
            let q = async { c.query_one("SELECT v FROM items WHERE id = $1", &[&n]).await };
            match tokio::time::timeout(REQUEST_TIMEOUT, q).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(pg_error(&e)),
                Err(_) => Err("pg query timed out".into()),
            }
        }
        _ => {
            let login = async {
                let c = ctx.pg_connect(b, None).await?;
                c.query_one("SELECT 1", &[]).await.map_err(|e| pg_error(&e))
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, login).await {
                Ok(r) => r.map(|_| ()),
                Err(_) => Err("pg login timed out".into()),
            }
        }
    }
}

/// B's latencies and errors over one phase.
#[derive(Default)]
struct LoadResult {
    latencies: Vec<Duration>,
    errors: Vec<(String, String)>,
}

/// B's open-loop load until `stop`: request `i` is due at `start + i / rate`
/// and timed from then.
async fn b_load(ctx: Ctx, b: Tenant, conns: Arc<PgConns>, rate: u64, stop: Arc<AtomicBool>, first: u64) -> LoadResult {
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let total = rate * MAX_PHASE_SECONDS;
    let in_flight = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    let mut result = LoadResult::default();
    for i in 0..total {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let due = start + period * i as u32;
        tokio::time::sleep_until(due).await;
        let kind = MIX[((first + i) % MIX.len() as u64) as usize].to_owned();
        if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            result.errors.push((kind, "client: too many in flight".into()));
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (ctx, b, conns, in_flight) = (ctx.clone(), b.clone(), conns.clone(), in_flight.clone());
        set.spawn(async move {
            let r = b_request(&ctx, &b, &conns, first + i).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            (kind, due.elapsed(), r)
        });
        while let Some(Some(done)) = set.try_join_next().map(Result::ok) {
            record(&mut result, done);
        }
    }
    while let Some(done) = set.join_next().await {
        if let Ok(done) = done {
            record(&mut result, done);
        }
    }
    result.latencies.sort();
    result
}

fn record(result: &mut LoadResult, (kind, took, r): (String, Duration, Result<(), String>)) {
    result.latencies.push(took);
    if let Err(e) = r {
        result.errors.push((kind, e));
    }
}

/// One row of the report.
struct Row {
    phase: String,
    seconds: f64,
    requests: usize,
    errors: usize,
    p50: f64,
    p99: f64,
    rss_mib: f64,
    workers_mib: f64,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Distinct B errors of a phase with their counts, as one line.
fn error_summary(errors: &[(String, String)]) -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for (kind, e) in errors {
        *counts.entry(format!("{kind}: {}", e.chars().take(120).collect::<String>())).or_default() += 1;
    }
    counts.iter().map(|(e, n)| format!("{n}× {e}")).collect::<Vec<_>>().join("; ")
}

#[tokio::main]
async fn main() {
    let rate = env_u64("NN_RATE", 200);
    let seconds = env_u64("NN_SECONDS", 10);
    let quiet = env_u64("NN_QUIET_SECONDS", 5);
    let a_timeout = env_u64("NN_A_TIMEOUT_MS", 5_000);
    let wanted = std::env::var("NN_ATTACKS").unwrap_or_default();
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build().expect("http client");
    let gw = start_gateway(&http).await;
    let pid = gw.child.id();
    let operator = {
        use sluice::secret::ExposeSecret;
        dev_config().auth.operator_token.expose_secret().to_owned()
    };
    let ctx = Ctx { http, base: gw.http.clone(), pg_port: gw.pg_port, operator };

    let run = std::process::id();
    let a = ctx.create_tenant(&format!("nn-a-{run}")).await;
    let b = ctx.create_tenant(&format!("nn-b-{run}")).await;
    // B's own limits stay out of the way: the bench measures A's effect.
    ctx.set_quotas(&b, json!({ "http_rps": 10_000, "http_burst": 20_000, "query_rps": 10_000, "query_burst": 20_000 }))
        .await;
    ctx.set_quotas(&a, json!({ "statement_timeout_ms": a_timeout })).await;
    seed(&ctx, &a).await;
    seed(&ctx, &b).await;
    let req = ctx.http.put(ctx.url("/v1/objects/load/seed")).body(vec![b's'; 4096]);
    must("seed object", ctx.send(req, &b.service_key).await);
    must("seed kv", ctx.send(ctx.http.put(ctx.url("/v1/kv/load/seed")).body("seed"), &b.service_key).await);
    let conns = Arc::new(PgConns { slots: (0..4).map(|_| RwLock::new(None)).collect() });

    let sampler = RssSampler::start(pid);
    let mut rows = Vec::new();
    let mut outcomes = Vec::new();
    let mut next = 0u64;
    let mut phases: Vec<(String, Option<attacks::Attack>, u64)> = vec![("quiet (baseline)".into(), None, 10)];
    for attack in attacks::ALL {
        if !wanted.is_empty() && !wanted.split(',').any(|w| w == attack.name()) {
            continue;
        }
        if phases.len() > 1 {
            phases.push(("quiet".into(), None, quiet));
        }
        phases.push((attack.title().into(), Some(attack), seconds));
    }
    for (title, attack, secs) in phases {
        eprintln!("phase: {title} ({secs} s)");
        sampler.take();
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(b_load(ctx.clone(), b.clone(), conns.clone(), rate, stop.clone(), next));
        let started = Instant::now();
        let lines = match attack {
            Some(attack) => attack.run(&ctx, &a, Duration::from_secs(secs)).await,
            None => Vec::new(),
        };
        // B runs at least the phase's length and until the attack has ended.
        tokio::time::sleep(Duration::from_secs(secs).saturating_sub(started.elapsed())).await;
        stop.store(true, Ordering::Relaxed);
        let r = load.await.expect("load task");
        next += r.latencies.len() as u64 + r.errors.len() as u64;
        let (rss, workers) = sampler.take();
        for l in &lines {
            eprintln!("  A: {l}");
        }
        if !r.errors.is_empty() {
            eprintln!("  B errors: {}", error_summary(&r.errors));
        }
        outcomes.push((title.clone(), lines, error_summary(&r.errors)));
        rows.push(Row {
            phase: title,
            seconds: started.elapsed().as_secs_f64(),
            requests: r.latencies.len() + r.errors.iter().filter(|(_, e)| e.starts_with("client:")).count(),
            errors: r.errors.len(),
            p50: pct_ms(&r.latencies, 0.5),
            p99: pct_ms(&r.latencies, 0.99),
            rss_mib: mib(rss),
            workers_mib: mib(workers),
        });
    }
    sampler.stop.store(true, Ordering::Relaxed);
    ctx.delete_tenant(&a).await;
    ctx.delete_tenant(&b).await;
    drop(gw);
    report(&rows, &outcomes, rate);
}

fn report(rows: &[Row], outcomes: &[(String, Vec<String>, String)], rate: u64) {
    let base = rows.first().map(|r| r.p99).unwrap_or(f64::NAN);
    println!("\nB at {rate} requests/s; p99 ratio against the baseline quiet phase.\n");
    println!(
        "| phase | s | B requests | B errors | B p50 ms | B p99 ms | p99 / quiet | gateway peak RSS MiB | compile workers peak MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.0} | {} | {} | {:.1} | {:.1} | {:.2} | {:.0} | {:.0} |",
            r.phase,
            r.seconds,
            r.requests,
            r.errors,
            r.p50,
            r.p99,
            r.p99 / base,
            r.rss_mib,
            r.workers_mib
        );
    }
    println!("\nWhat each attack got, and B's errors:\n");
    for (title, lines, errors) in outcomes {
        if lines.is_empty() && errors.is_empty() {
            continue;
        }
        println!("- **{title}**");
        for l in lines {
            println!("  - A: {l}");
        }
        if !errors.is_empty() {
            println!("  - B errors: {errors}");
        }
    }
    let worst_rss = rows.iter().map(|r| r.rss_mib).fold(0.0, f64::max);
    let errors: usize = rows.iter().map(|r| r.errors).sum();
    let worst_ratio = rows.iter().map(|r| r.p99 / base).fold(0.0, f64::max);
    println!(
        "\nGoal: zero B errors ({errors}), B p99 within 2× of quiet (worst {worst_ratio:.2}×), RSS < 512 MiB (peak {worst_rss:.0} MiB)."
    );
}
