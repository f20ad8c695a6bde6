//! Tenant A's attacks of issue 12, each bounded in count and time. An
//! attack issues work for the phase's length, then waits for what is in
//! flight (every request has `REQUEST_TIMEOUT`, every pg statement a
//! client-side cap) and returns one line per kind of outcome.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use crate::bombs::{deep_component, heavy_component};
use crate::{Ctx, Tenant, code, pg_error, rawpg};
use serde_json::{Value, json};

/// Most iterations of one attack worker.
const MAX_ITERATIONS: u64 = 20_000;
/// Longest a single attacking statement may run before the bench gives up on it.
const STATEMENT_CAP: Duration = Duration::from_secs(60);

#[derive(Clone, Copy)]
pub enum Attack {
    Locks,
    PluginStorm,
    CompileBomb,
    SemcacheDims,
    PointsBody,
    RepeatHttp,
    RepeatPg,
    PartialQuery,
    TimeoutEvasion,
    WorkMem,
}

pub const ALL: [Attack; 10] = [
    Attack::Locks,
    Attack::PluginStorm,
    Attack::CompileBomb,
    Attack::SemcacheDims,
    Attack::PointsBody,
    Attack::RepeatHttp,
    Attack::RepeatPg,
    Attack::PartialQuery,
    Attack::TimeoutEvasion,
    Attack::WorkMem,
];

impl Attack {
    /// For `NN_ATTACKS`.
    pub fn name(self) -> &'static str {
        match self {
            Attack::Locks => "locks",
            Attack::PluginStorm => "plugins",
            Attack::CompileBomb => "compile",
            Attack::SemcacheDims => "semcache",
            Attack::PointsBody => "points",
            Attack::RepeatHttp => "repeat_http",
            Attack::RepeatPg => "repeat_pg",
            Attack::PartialQuery => "partial_query",
            Attack::TimeoutEvasion => "timeout",
            Attack::WorkMem => "work_mem",
        }
    }

    /// The report's phase name.
    pub fn title(self) -> &'static str {
        match self {
            Attack::Locks => "1 control-plane starvation (ACCESS EXCLUSIVE lock + 8 GET collection)",
            Attack::PluginStorm => "2 plugin storm (infinite_loop policy, 64 HTTP + 8 pg clients)",
            Attack::CompileBomb => "3 compile bombs (heavy component, 2.4M nested blocks)",
            Attack::SemcacheDims => "4a semantic cache: 30 dimensions near 16,000",
            Attack::PointsBody => "4b 60 MB points body",
            Attack::RepeatHttp => "4c repeat('x', 200000000) over HTTP",
            Attack::RepeatPg => "4d repeat('x', 200000000) on the pg door",
            Attack::PartialQuery => "4e 5 pg clients × 60 MiB partial Query",
            Attack::TimeoutEvasion => "5 statement_timeout = 0 + pg_sleep(40)",
            Attack::WorkMem => "6 work_mem = '4GB' + big sort (and the sort alone)",
        }
    }

    /// Run for about `d` (plus what is in flight); lines of outcomes.
    pub async fn run(self, ctx: &Ctx, a: &Tenant, d: Duration) -> Vec<String> {
        let until = Instant::now() + d;
        match self {
            Attack::Locks => locks(ctx, a, until).await,
            Attack::PluginStorm => plugin_storm(ctx, a, until).await,
            Attack::CompileBomb => compile_bombs(ctx, a, until).await,
            Attack::SemcacheDims => {
                hammer(4, until, move |i| async move {
                    let dim = 15_970 + (i % 30) as usize;
                    let v: Vec<f32> = (0..dim).map(|j| ((j * 7 + i as usize) % 13) as f32 - 6.0).collect();
                    status_of(
                        ctx.json("POST", "/v1/semcache/bomb/lookup", &a.service_key, json!({ "vector": v })).await,
                    )
                })
                .await
            }
            Attack::PointsBody => {
                let body = bytes::Bytes::from(points_body(60 << 20));
                let body = &body;
                hammer(1, until, move |_| async move {
                    let url = ctx.url("/v1/collections/docs/points");
                    let req = ctx.http.post(url).header("content-type", "application/json").body(body.clone());
                    status_of(ctx.send(req, &a.service_key).await)
                })
                .await
            }
            Attack::RepeatHttp => {
                hammer(1, until, move |_| async move {
                    let body = json!({ "sql": "SELECT repeat('x', 200000000)" });
                    status_of(ctx.json("POST", "/v1/sql", &a.service_key, body).await)
                })
                .await
            }
            Attack::RepeatPg => {
                hammer(1, until, move |_| pg_simple(ctx, a, None, "SELECT repeat('x', 200000000)")).await
            }
            Attack::PartialQuery => {
                let clients = (0..5).map(|_| rawpg::partial_query(ctx, a, 60 << 20, until));
                tally(futures::future::join_all(clients).await.into_iter().map(|o| (o, Duration::ZERO)))
            }
            Attack::TimeoutEvasion => timeout_evasion(ctx, a).await,
            Attack::WorkMem => {
                let sort = "SELECT count(*) FROM (SELECT md5(g::text) AS m FROM generate_series(1, 5000000) g \
                            ORDER BY m DESC) s";
                hammer(3, until, move |i| async move {
                    if i % 3 == 2 {
                        // The same sort at the quota's work_mem: how long it may run.
                        format!("pg, default work_mem: {}", pg_simple(ctx, a, None, sort).await)
                    } else if i % 3 == 0 {
                        let sql = format!("SET work_mem = '4GB'; {sort}");
                        format!("pg: {}", pg_simple(ctx, a, None, &sql).await)
                    } else {
                        let body = json!({ "statements": [{ "sql": "SET LOCAL work_mem = '4GB'" }, { "sql": sort }] });
                        format!("http batch: {}", status_of(ctx.json("POST", "/v1/sql", &a.service_key, body).await))
                    }
                })
                .await
            }
        }
    }
}

/// "200" or "403 plugin_error: <message>".
fn status_of((s, body): (u16, Value)) -> String {
    if (200..300).contains(&s) {
        return s.to_string();
    }
    match body["error"]["message"].as_str() {
        Some(m) => format!("{s} {}: {}", code(&body), m.chars().take(100).collect::<String>()),
        None => format!("{s} {}", code(&body)),
    }
}

/// Counts of each outcome with the longest time it took.
fn tally(outcomes: impl IntoIterator<Item = (String, Duration)>) -> Vec<String> {
    let mut seen: BTreeMap<String, (usize, Duration)> = BTreeMap::new();
    for (o, took) in outcomes {
        // "retry in 21 s" and "retry in 22 s" are one outcome.
        let o = match o.find("retry in ") {
            Some(at) => format!("{}retry in … s", &o[..at]),
            None => o,
        };
        let e = seen.entry(o).or_default();
        e.0 += 1;
        e.1 = e.1.max(took);
    }
    seen.into_iter().map(|(o, (n, max))| format!("{n}× {o} (longest {:.2} s)", max.as_secs_f64())).collect()
}

/// `workers` loops of `f(i)` until `until` (each at most `MAX_ITERATIONS`),
/// all on this task.
async fn hammer<F, Fut>(workers: u64, until: Instant, f: F) -> Vec<String>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = String>,
{
    let f = &f;
    let loops = (0..workers).map(|w| async move {
        let mut out = Vec::new();
        let mut i = w;
        while Instant::now() < until && i < MAX_ITERATIONS * workers {
            let t0 = Instant::now();
            out.push((f(i).await, t0.elapsed()));
            i += workers;
        }
        out
    });
    tally(futures::future::join_all(loops).await.into_iter().flatten())
}

/// A simple-protocol query on a new pg-door connection: "ok", or its error.
async fn pg_simple(ctx: &Ctx, a: &Tenant, options: Option<&str>, sql: &str) -> String {
    let c = match ctx.pg_connect(a, options).await {
        Ok(c) => c,
        Err(e) => return format!("login: {e}"),
    };
    match tokio::time::timeout(STATEMENT_CAP, c.simple_query(sql)).await {
        Ok(Ok(_)) => "ok".into(),
        Ok(Err(e)) => pg_error(&e),
        Err(_) => format!("still running after {} s, abandoned", STATEMENT_CAP.as_secs()),
    }
}

/// (1) A holds an ACCESS EXCLUSIVE lock on its collection table in an open
/// pg-door transaction while 8 clients GET that collection.
async fn locks(ctx: &Ctx, a: &Tenant, until: Instant) -> Vec<String> {
    let c = match ctx.pg_connect(a, None).await {
        Ok(c) => c,
        Err(e) => return vec![format!("lock session login: {e}")],
    };
    let lock = "BEGIN; LOCK TABLE sluice.\"c_docs\" IN ACCESS EXCLUSIVE MODE";
    let mut lines = vec![match c.batch_execute(lock).await {
        Ok(()) => "LOCK TABLE: granted, held in an open transaction".to_owned(),
        Err(e) => format!("LOCK TABLE: {}", pg_error(&e)),
    }];
    lines.extend(
        hammer(8, until, move |_| async move {
            let req = ctx.http.get(ctx.url("/v1/collections/docs"));
            format!("GET collection: {}", status_of(ctx.send(req, &a.service_key).await))
        })
        .await,
    );
    let t0 = Instant::now();
    let rb = match tokio::time::timeout(STATEMENT_CAP, c.batch_execute("ROLLBACK")).await {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => pg_error(&e),
        Err(_) => "no answer".into(),
    };
    lines.push(format!("ROLLBACK: {rb} after {:.2} s", t0.elapsed().as_secs_f64()));
    lines
}

/// A guest plugin from `NN_PLUGIN_DIR`.
fn plugin(name: &str) -> Result<Vec<u8>, String> {
    let dir = std::env::var("NN_PLUGIN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| crate::repo_root().join("plugins/target/wasm32-wasip2/release"));
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path)
        .map_err(|e| format!("read {}: {e} (scripts/build-plugins, or set NN_PLUGIN_DIR)", path.display()))
}

/// `PUT /v1/plugins/policy{query}` as A's admin: outcome and time.
async fn upload(ctx: &Ctx, a: &Tenant, bytes: Vec<u8>, query: &str) -> (String, Duration) {
    let t0 = Instant::now();
    let req = ctx.http.put(ctx.url(&format!("/v1/plugins/policy{query}"))).header("content-type", "application/wasm");
    (status_of(ctx.send(req.body(bytes), &a.admin_key).await), t0.elapsed())
}

/// (2) A's policy loops forever; 64 HTTP and 8 pg-door clients call through it.
async fn plugin_storm(ctx: &Ctx, a: &Tenant, until: Instant) -> Vec<String> {
    let wasm = match plugin("infinite_loop") {
        Ok(w) => w,
        Err(e) => return vec![format!("skipped: {e}")],
    };
    let (up, took) = upload(ctx, a, wasm, "?activate=true").await;
    let mut lines = vec![format!("upload + activate infinite_loop: {up} ({:.2} s)", took.as_secs_f64())];
    lines.extend(
        hammer(72, until, move |i| async move {
            if i % 9 == 8 {
                format!("pg: {}", pg_simple(ctx, a, None, "SELECT 1").await)
            } else {
                let r = ctx.json("POST", "/v1/sql", &a.service_key, json!({ "sql": "SELECT 1" })).await;
                format!("http: {}", status_of(r))
            }
        })
        .await,
    );
    let (s, b) = ctx.json("POST", "/v1/plugins/policy/deactivate", &a.admin_key, json!({})).await;
    lines.push(format!("deactivate: {}", status_of((s, b))));
    lines
}

/// (3) One heavy upload at a time for the phase, and beside it a second
/// heavy upload and the deep-nesting bomb in turn.
async fn compile_bombs(ctx: &Ctx, a: &Tenant, until: Instant) -> Vec<String> {
    let heavy = heavy_component();
    let deep = deep_component(2_400_000);
    let mut lines = vec![format!(
        "heavy component {:.1} MB, deep bomb {:.1} MB",
        heavy.len() as f64 / 1e6,
        deep.len() as f64 / 1e6
    )];
    // One heavy upload after another…
    let first = async {
        let mut out = Vec::new();
        while Instant::now() < until && out.len() < 20 {
            let (o, took) = upload(ctx, a, heavy.clone(), "").await;
            out.push((format!("heavy upload: {o}"), took));
        }
        out
    };
    // …and beside them the deep bomb and another heavy upload in turn.
    let beside = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut out = Vec::new();
        while Instant::now() < until && out.len() < 200 {
            let (o, took) = upload(ctx, a, deep.clone(), "").await;
            out.push((format!("deep bomb: {o}"), took));
            let (o, took) = upload(ctx, a, heavy.clone(), "").await;
            out.push((format!("second heavy upload: {o}"), took));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        out
    };
    let (first, mut beside) = tokio::join!(first, beside);
    beside.extend(first);
    lines.extend(tally(beside));
    lines
}

/// A JSON points body of about `bytes`: 8-dimension points with padding metadata.
fn points_body(bytes: usize) -> Vec<u8> {
    let pad = "x".repeat(4_000);
    let mut out = Vec::with_capacity(bytes + 8_192);
    out.extend_from_slice(b"{\"points\":[");
    let mut i = 0;
    while out.len() < bytes {
        if i > 0 {
            out.push(b',');
        }
        let p = json!({ "id": format!("big{i}"), "vector": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], "metadata": { "pad": pad } });
        out.extend_from_slice(p.to_string().as_bytes());
        i += 1;
    }
    out.extend_from_slice(b"]}");
    out
}

/// (5) Four ways around the statement timeout at once, each with
/// `pg_sleep(40)`: how long each ran and how it ended.
async fn timeout_evasion(ctx: &Ctx, a: &Tenant) -> Vec<String> {
    async fn timed(label: &str, fut: impl Future<Output = String>) -> String {
        let t0 = Instant::now();
        let o = fut.await;
        format!("{label}: {o} after {:.2} s", t0.elapsed().as_secs_f64())
    }
    let batch = |first: &'static str| {
        let body = json!({ "statements": [{ "sql": first }, { "sql": "SELECT pg_sleep(40)" }] });
        async move { status_of(ctx.json("POST", "/v1/sql", &a.service_key, body).await) }
    };
    let set_then_sleep = async {
        let c = match ctx.pg_connect(a, None).await {
            Ok(c) => c,
            Err(e) => return format!("login: {e}"),
        };
        let set = match c.batch_execute("SET statement_timeout = 0").await {
            Ok(()) => "SET accepted".to_owned(),
            Err(e) => format!("SET {}", pg_error(&e)),
        };
        let sleep = match tokio::time::timeout(STATEMENT_CAP, c.batch_execute("SELECT pg_sleep(40)")).await {
            Ok(Ok(())) => "sleep ran to the end".to_owned(),
            Ok(Err(e)) => format!("sleep {}", pg_error(&e)),
            Err(_) => "sleep still running, abandoned".into(),
        };
        format!("{set}; {sleep}")
    };
    let (x, y, z, w) = tokio::join!(
        timed("pg: SET statement_timeout = 0; SELECT pg_sleep(40)", set_then_sleep),
        timed(
            "pg: options -c statement_timeout=0; SELECT pg_sleep(40)",
            pg_simple(ctx, a, Some("-c statement_timeout=0"), "SELECT pg_sleep(40)")
        ),
        timed("http batch [SET LOCAL statement_timeout = 0, pg_sleep(40)]", batch("SET LOCAL statement_timeout = 0")),
        timed("http batch [COMMIT, pg_sleep(40)]", batch("COMMIT")),
    );
    vec![x, y, z, w]
}
