//! Plugins cannot starve, slow or stall the gateway: a guest cannot sleep
//! past its deadline, a tenant gets only its share of instance slots (and
//! its failures never trip another tenant's breaker), compile bombs are
//! refused before compiling, a compile past its budget is killed, each
//! tenant compiles one upload at a time, and shutdown does not wait for a
//! compile.
//!
//! The guest components come from `scripts/build-plugins`; the hostile
//! ones that only a compiler sees are made here with `wasm-encoder`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasm_encoder::{Function, Instruction, ValType};

use crate::bombs::{component, deep_component, heavy_component};
use crate::plugins::sql;
use crate::support::{Gateway, TestTenant, config, error_code, plugin_wasm, unique};

async fn put_plugin(gw: &Gateway, t: &TestTenant, bytes: Vec<u8>, query: &str) -> (u16, Value, Duration) {
    let t0 = Instant::now();
    let resp = gw
        .http
        .put(gw.url(&format!("/v1/plugins/policy{query}")))
        .bearer_auth(&t.admin_key)
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null), t0.elapsed())
}

fn message(body: &Value) -> String {
    body["error"]["message"].as_str().unwrap_or_default().to_owned()
}

/// Tests that run long compiles take turns: they count worker processes,
/// and every gateway of this test process is their parent.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Wait up to 5 s until `want(workers)` holds (other tests' short compiles
/// come and go meanwhile).
async fn workers_until(want: impl Fn(usize) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if want(compile_workers()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Compile workers of this test process running now.
fn compile_workers() -> usize {
    workers_of(std::process::id()).len()
}

/// The pids of the compile workers whose parent is `parent`.
fn workers_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // Field 4 of /proc/PID/stat is the parent pid.
            let ppid = stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse::<u32>().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            (ppid == parent && cmd.windows(16).any(|w| w == b"__compile-plugin")).then_some(pid)
        })
        .collect()
}

#[tokio::test]
async fn a_sleeping_plugin_fails_at_once() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("sleepy")).await;
    let (s, b, _) = put_plugin(&gw, &t, plugin_wasm("sleeper"), "?activate=true").await;
    assert_eq!(s, 201, "{b}");
    for _ in 0..3 {
        let t0 = Instant::now();
        let (s, b) = sql(&gw, &t.service_key, "SELECT 1").await;
        let took = t0.elapsed();
        assert_eq!((s, error_code(&b)), (403, "plugin_error"), "{b}");
        assert!(message(&b).contains("cannot sleep"), "{b}");
        assert!(took < Duration::from_secs(2), "a 20 s sleep must not hold the request: {took:?}");
    }
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_tenant_gets_only_its_share_of_plugin_slots() {
    let mut cfg = config();
    cfg.plugins.max_instances = 4;
    cfg.plugins.max_instances_per_tenant = 2;
    cfg.plugins.policy_timeout_ms = 300;
    cfg.plugins.breaker_failures = 1_000;
    let gw = Gateway::start_with(cfg).await;
    let hog = gw.create_tenant(&unique("hog")).await;
    let calm = gw.create_tenant(&unique("calm")).await;
    let (s, b, _) = put_plugin(&gw, &hog, plugin_wasm("infinite_loop"), "?activate=true").await;
    assert_eq!(s, 201, "{b}");
    let (s, b, _) = put_plugin(&gw, &calm, plugin_wasm("policy_ddl_guard"), "?activate=true").await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(sql(&gw, &calm.service_key, "SELECT 1").await.0, 200);

    // 12 of the hog's requests at once, each holding a slot for 300 ms…
    let mut storm = Vec::new();
    for _ in 0..12 {
        let (http, url, key) = (gw.http.clone(), gw.url("/v1/sql"), hog.service_key.clone());
        storm.push(tokio::spawn(async move {
            let r = http.post(&url).bearer_auth(&key).json(&json!({ "sql": "SELECT 1" })).send().await.expect("send");
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // …while the calm tenant's policy keeps answering.
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let t0 = Instant::now();
        let (s, b) = sql(&gw, &calm.service_key, "SELECT 1").await;
        assert_eq!(s, 200, "the calm tenant is refused while the hog fills its slots: {b}");
        worst = worst.max(t0.elapsed());
    }
    let mut limited = 0;
    for h in storm {
        let (s, b) = h.await.expect("task");
        match s {
            429 => {
                assert_eq!(error_code(&b), "rate_limited", "{b}");
                limited += 1;
            }
            403 => assert!(message(&b).contains("deadline"), "{b}"),
            other => panic!("hog got {other}: {b}"),
        }
    }
    assert!(limited > 0, "the hog ran more calls at once than its share");
    let hog_id = hog.body["tenant"]["id"].as_str().and_then(|s| s.parse().ok()).map(sluice::ids::TenantId);
    assert_eq!(gw.svc.plugins.slots_in_use(hog_id.expect("tenant id")), 0, "slots are given back");
    // Busy refusals are not failures: the calm tenant's breaker never moved,
    // and neither did its latency much.
    assert_eq!(sql(&gw, &calm.service_key, "SELECT 1").await.0, 200);
    assert!(worst < Duration::from_secs(1), "calm tenant slowed to {worst:?}");
    gw.delete_tenant(&hog.name).await;
    gw.delete_tenant(&calm.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn compile_bombs_are_refused_before_compiling() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("bomb")).await;
    // 1 MB of straight-line code in one function.
    let mut long = Function::new([]);
    for _ in 0..1_000_000 {
        long.instruction(&Instruction::Nop);
    }
    long.instruction(&Instruction::End);
    // A million locals.
    let mut wide = Function::new([(1_000_000, ValType::I64)]);
    wide.instruction(&Instruction::End);
    // 20,000 nested blocks in one function.
    let deep = deep_component(20_000);
    for (bytes, limit) in
        [(deep, "max_nesting_depth"), (component(&[long]), "max_function_bytes"), (component(&[wide]), "max_locals")]
    {
        let (s, b, took) = put_plugin(&gw, &t, bytes, "").await;
        assert_eq!((s, error_code(&b)), (422, "invalid_plugin"), "{b}");
        assert!(message(&b).contains(limit), "{limit}: {b}");
        assert!(took < Duration::from_secs(2), "{limit}: refused after {took:?}");
    }
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_compile_past_its_budget_is_killed_and_tenants_compile_one_at_a_time() {
    let _turn = HEAVY.lock().await;
    let mut cfg = config();
    cfg.plugins.compile_timeout_ms = 1_500;
    let gw = Gateway::start_with(cfg).await;
    let a = gw.create_tenant(&unique("heavy")).await;
    let b = gw.create_tenant(&unique("other")).await;
    let heavy = heavy_component();
    assert!(heavy.len() < 10 << 20, "{} bytes", heavy.len());

    assert!(workers_until(|n| n == 0).await, "no worker left by earlier tests");
    let first = {
        let (http, url, key, body) =
            (gw.http.clone(), gw.url("/v1/plugins/policy"), a.admin_key.clone(), heavy.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            let r = http.put(&url).bearer_auth(&key).body(body).send().await.expect("send");
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null), t0.elapsed())
        })
    };
    if !workers_until(|n| n >= 1).await {
        panic!("no compile worker started; the upload ended with {:?}", first.await);
    }
    // The same tenant's second upload is refused while the first compiles.
    let (s, body, took) = put_plugin(&gw, &a, heavy.clone(), "").await;
    assert_eq!((s, error_code(&body)), (429, "rate_limited"), "{body}");
    assert!(message(&body).contains("another upload of this tenant"), "{body}");
    // Refused once its body is read and checked, not after the first compile.
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Other tenants' requests are served meanwhile.
    for _ in 0..5 {
        let t0 = Instant::now();
        assert_eq!(sql(&gw, &b.service_key, "SELECT 1").await.0, 200);
        assert!(t0.elapsed() < Duration::from_secs(1));
    }
    let (s, body, took) = first.await.expect("task");
    assert_eq!((s, error_code(&body)), (422, "invalid_plugin"), "{body}");
    assert!(message(&body).contains("budget"), "{body}");
    assert!(took < Duration::from_secs(4), "refused after {took:?}");
    assert!(workers_until(|n| n == 0).await, "the worker was killed");
    // The compiler is free again: a real plugin of the other tenant compiles.
    let (s, body, _) = put_plugin(&gw, &b, plugin_wasm("policy_ddl_guard"), "").await;
    assert_eq!(s, 201, "{body}");
    gw.delete_tenant(&a.name).await;
    gw.delete_tenant(&b.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_compile() {
    let _turn = HEAVY.lock().await;
    let mut cfg = config();
    cfg.plugins.compile_timeout_ms = 120_000;
    // Room for the upload's answer on a loaded machine: the gateway shares
    // this test's one-thread runtime, and other tests run beside it (2.5 s
    // was not always enough). The compile itself would take up to its 120 s
    // budget.
    cfg.server.shutdown_grace_ms = 5_000;
    let gw = Gateway::start_with(cfg).await;
    let t = gw.create_tenant(&unique("late")).await;
    let upload = {
        let (http, url, key, body) =
            (gw.http.clone(), gw.url("/v1/plugins/policy"), t.admin_key.clone(), heavy_component());
        tokio::spawn(
            async move { http.put(&url).bearer_auth(&key).body(body).send().await.map(|r| r.status().as_u16()) },
        )
    };
    assert!(workers_until(|n| n >= 1).await, "the compile is running");
    let name = t.name.clone();
    let t0 = Instant::now();
    gw.stop().await;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(7), "shutdown took {took:?} with a compile in flight");
    // The upload is answered (retry later) and its worker killed.
    assert_eq!(upload.await.expect("task").ok(), Some(429));
    assert!(workers_until(|n| n == 0).await, "the worker was killed at shutdown");
    // Clean up through a fresh gateway.
    let gw = Gateway::start().await;
    gw.delete_tenant(&name).await;
    gw.stop().await;
}

/// A free loopback port (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Whether process `pid` is gone (or only a zombie waiting to be reaped).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()) == Some("Z"),
        Err(_) => true,
    }
}

/// The real binary: `sluice serve` ends within its grace period on SIGTERM
/// while a compile is running, and takes the compile worker with it.
#[tokio::test]
async fn serve_exits_on_sigterm_during_a_compile() {
    let _turn = HEAVY.lock().await;
    let (http_port, pg_port) = (free_port(), free_port());
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(crate::support::repo_root())
        .args(["--config", "config/dev.toml", "serve"])
        .env("SLUICE_SERVER__HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .env("SLUICE_SERVER__PG_ADDR", format!("127.0.0.1:{pg_port}"))
        .env("SLUICE_SERVER__SHUTDOWN_GRACE_MS", "1000")
        .env("SLUICE_PLUGINS__COMPILE_TIMEOUT_MS", "120000")
        .env("SLUICE_USAGE__METER", "false")
        .env("SLUICE_RETENTION__INTERVAL_S", "0")
        .env("SLUICE_LOG__LEVEL", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start sluice serve");
    let pid = serve.id().expect("pid");
    let base = format!("http://127.0.0.1:{http_port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "sluice serve did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cfg = config();
    let token = sluice::secret::ExposeSecret::expose_secret(&cfg.auth.operator_token).to_owned();
    let name = unique("sigterm");
    let created: Value = http
        .post(format!("{base}/admin/v1/tenants"))
        .bearer_auth(&token)
        .json(&json!({ "name": name }))
        .send()
        .await
        .expect("create tenant")
        .json()
        .await
        .expect("json");
    let admin = created["admin_key"]["key"].as_str().expect("admin key").to_owned();
    let upload = {
        let (http, url, body) = (http.clone(), format!("{base}/v1/plugins/policy"), heavy_component());
        tokio::spawn(
            async move { http.put(url).bearer_auth(admin).body(body).send().await.map(|r| r.status().as_u16()) },
        )
    };
    // The serving process's own worker.
    let mut worker = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while worker.is_none() && Instant::now() < deadline {
        worker = workers_of(pid).first().copied();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let worker = worker.expect("a compile worker of the serving process");
    let t0 = Instant::now();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), serve.wait()).await;
    let took = t0.elapsed();
    assert!(status.is_ok(), "sluice serve still running 10 s after SIGTERM");
    assert!(took < Duration::from_secs(4), "exit took {took:?} (grace 1 s)");
    let deadline = Instant::now() + Duration::from_secs(2);
    while !gone(worker) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone(worker), "the compile worker outlived the gateway");
    let _ = upload.await;
    let gw = Gateway::start().await;
    gw.delete_tenant(&name).await;
    gw.stop().await;
}
