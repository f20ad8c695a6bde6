//! Redis Cluster (`redis.cluster_urls`) against the stack's real cluster
//! (`scripts/stack up --redis-cluster`: masters 63801-63803, a replica
//! each): key/value, the semantic cache shared by two instances, rate-limit
//! accuracy across two instances, tenant keys in one slot, and a master
//! failing over under load.
//!
//! The failover test holds [`CLUSTER`] for writing, the others for
//! reading, so only it disturbs the cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sluice::config::Config;
use sluice::secret::SecretString;

use crate::support::{Gateway, call, config, missing, repo_root, unique};

static CLUSTER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn cluster_urls() -> Option<Vec<String>> {
    match std::env::var("SLUICE_TEST_REDIS_CLUSTER_URLS") {
        Ok(u) if !u.is_empty() => Some(u.split(',').map(str::to_owned).collect()),
        _ => {
            missing("a Redis Cluster (scripts/stack up --redis-cluster)");
            None
        }
    }
}

fn cluster_config(urls: &[String]) -> Config {
    let mut cfg = config();
    cfg.redis.cluster_urls = urls.iter().map(|u| SecretString::from(u.clone())).collect();
    cfg
}

/// A plain client of the cluster, to look at what the gateway stored.
async fn cluster_client(urls: &[String]) -> redis::cluster_async::ClusterConnection {
    redis::cluster::ClusterClient::new(urls.to_vec())
        .expect("cluster client")
        .get_async_connection()
        .await
        .expect("connect to the cluster")
}

async fn kv_put(gw: &Gateway, key: &str, name: &str, value: &str) -> u16 {
    let r = gw.http.put(gw.url(&format!("/v1/kv/{name}"))).bearer_auth(key).body(value.to_owned()).send().await;
    r.map(|r| r.status().as_u16()).unwrap_or(0)
}

async fn kv_get(gw: &Gateway, key: &str, name: &str) -> (u16, String) {
    match gw.http.get(gw.url(&format!("/v1/kv/{name}"))).bearer_auth(key).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_cache_and_tenant_keys_on_a_cluster() {
    let Some(urls) = cluster_urls() else { return };
    let _shared = CLUSTER.read().await;
    let gw1 = Gateway::start_with(cluster_config(&urls)).await;
    let gw2 = Gateway::start_with(cluster_config(&urls)).await;
    let (s, ready) = gw1.get("/readyz", "").await;
    assert_eq!((s, &ready["checks"]["redis"]["ok"]), (200, &json!(true)), "{ready}");
    let t = gw1.create_tenant(&unique("rc")).await;
    let k = &t.service_key;

    // Key/value: many keys (spread over no slot but the tenant's), the byte counter, TTLs.
    for i in 0..50 {
        assert_eq!(kv_put(&gw1, k, &format!("item/{i}"), &format!("value {i}")).await, 204);
    }
    assert_eq!(kv_get(&gw2, k, "item/7").await, (200, "value 7".into()));
    let r = gw1.http.put(gw1.url("/v1/kv/short?ttl=60")).bearer_auth(k).body("x").send().await.expect("put ttl");
    assert_eq!(r.status(), 204);
    let r = gw2.http.get(gw2.url("/v1/kv/short")).bearer_auth(k).send().await.expect("get ttl");
    assert!(r.headers().contains_key("x-sluice-ttl"), "the TTL comes back");
    assert_eq!(gw1.http.delete(gw1.url("/v1/kv/item/0")).bearer_auth(k).send().await.expect("del").status(), 204);
    assert_eq!(kv_get(&gw2, k, "item/0").await.0, 404);

    // Every key of the tenant is in one slot (its id is a hash tag).
    let tenant = tenant_id(&gw1, &t.name).await;
    let prefix = gw1.svc.redis.tenant_prefix(tenant);
    assert!(prefix.ends_with(&format!(":{{{tenant}}}:")), "hash-tagged prefix: {prefix}");
    let mut c = cluster_client(&urls).await;
    let used: i64 = redis::cmd("GET").arg(format!("{prefix}usage:kv_bytes")).query_async(&mut c).await.expect("get");
    assert_eq!(used, (1..50).map(|i| format!("value {i}").len() as i64).sum::<i64>() + 1, "byte counter");
    let v: Option<String> = redis::cmd("GET").arg(format!("{prefix}kv:item/9")).query_async(&mut c).await.expect("get");
    assert_eq!(v.as_deref(), Some("value 9"));

    // The semantic cache: stored through one instance, a hit on the other.
    let entry = json!({ "vector": [1.0, 0.0, 0.0, 0.5], "value": "cached" });
    let (s, b) = call(&gw1, &t, "POST", "/v1/semcache/answers/entries", Some(entry)).await;
    assert_eq!(s, 201, "{b}");
    let lookup = json!({ "vector": [1.0, 0.0, 0.0, 0.5] });
    let (s, b) = call(&gw2, &t, "POST", "/v1/semcache/answers/lookup", Some(lookup)).await;
    assert_eq!((s, &b["value"]), (200, &json!("cached")), "{b}");

    // Deleting the tenant removes its keys (a SCAN on the slot's node).
    gw1.delete_tenant(&t.name).await;
    let left = gw1.svc.redis.delete_tenant_keys(tenant).await.expect("scan");
    assert_eq!(left, 0, "no key of the deleted tenant is left");
    gw1.stop().await;
    gw2.stop().await;
}

async fn tenant_id(gw: &Gateway, name: &str) -> sluice::ids::TenantId {
    let c = gw.svc.control.client().await.expect("control");
    let id: uuid::Uuid = c.query_one("SELECT id FROM tenants WHERE name = $1", &[&name]).await.expect("tenant").get(0);
    sluice::ids::TenantId(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_accurate_across_two_instances_on_a_cluster() {
    let Some(urls) = cluster_urls() else { return };
    let _shared = CLUSTER.read().await;
    limits_across_two_instances(&urls).await;
}

/// The two-instance accuracy check (`ratelimit.rs`) with both limiters on the cluster.
async fn limits_across_two_instances(urls: &[String]) {
    let cfg = cluster_config(urls);
    let store = || sluice::upstream::redis::RedisStore::new(&cfg.redis).expect("cluster client");
    let (l1, l2) = (
        sluice::ratelimit::RateLimiter::new(store(), cfg.ratelimit.clone()),
        sluice::ratelimit::RateLimiter::new(store(), cfg.ratelimit.clone()),
    );
    crate::ratelimit::two_instance_accuracy(&l1, &l2, &store()).await;
}

/// Starts every cluster node again and makes 63801-63803 the masters once
/// more when dropped (also when the test fails).
struct RestoreCluster;

impl Drop for RestoreCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(repo_root().join("scripts/stack")).args(["up", "--redis-cluster"]).output();
    }
}

/// The port of the master serving `key`'s slot.
async fn master_of(c: &mut redis::cluster_async::ClusterConnection, key: &str) -> u16 {
    let slot: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(c).await.expect("keyslot");
    let slots: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(c).await.expect("cluster slots");
    let redis::Value::Array(ranges) = slots else { panic!("CLUSTER SLOTS: {slots:?}") };
    for r in ranges {
        let redis::Value::Array(parts) = r else { continue };
        let (Some(redis::Value::Int(lo)), Some(redis::Value::Int(hi)), Some(redis::Value::Array(master))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        if (*lo..=*hi).contains(&slot)
            && let Some(redis::Value::Int(port)) = master.get(1)
        {
            return u16::try_from(*port).expect("port");
        }
    }
    panic!("no master serves slot {slot}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failing_over_under_load_costs_no_server_errors() {
    let Some(urls) = cluster_urls() else { return };
    let _serial = CLUSTER.write().await;
    let gw = Arc::new(Gateway::start_with(cluster_config(&urls)).await);
    let t = gw.create_tenant(&unique("rcf")).await;
    for (column, value) in [("http_rps", 100_000), ("http_burst", 100_000)] {
        gw.set_quota(&t.name, column, value).await;
    }
    let prefix = gw.svc.redis.tenant_prefix(tenant_id(&gw, &t.name).await);
    let mut c = cluster_client(&urls).await;
    let victim = master_of(&mut c, &format!("{prefix}kv:x")).await;
    // A semantic-cache entry in the tenant's slot, on the master that will fail.
    let entry = json!({ "vector": [0.0, 1.0, 0.0, 0.5], "value": "before the failover" });
    let (s, b) = call(&gw, &t, "POST", "/v1/semcache/answers/entries", Some(entry)).await;
    assert_eq!(s, 201, "{b}");

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(std::sync::Mutex::new(Vec::<String>::new())));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (gw, key, stop, ok, failures) =
            (gw.clone(), t.service_key.clone(), stop.clone(), ok.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let name = format!("w{w}/{}", i % 20);
                let put = kv_put(&gw, &key, &name, &format!("v{i}")).await;
                let (got, body) = kv_get(&gw, &key, &name).await;
                if put == 204 && got == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.lock().expect("lock").push(format!("put {put}, get {got} {body}"));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let _restore = RestoreCluster;
    let before = ok.load(Ordering::Relaxed);
    let out = tokio::process::Command::new(repo_root().join("scripts/stack"))
        .args(["redis-node-stop", &victim.to_string()])
        .output()
        .await
        .expect("scripts/stack redis-node-stop");
    assert!(out.status.success(), "redis-node-stop: {}", String::from_utf8_lossy(&out.stderr));
    let stopped = Instant::now();
    // Until a replica has taken over, and a while after.
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = master_of(&mut c, &format!("{prefix}kv:x")).await;
        if now != victim {
            break;
        }
        assert!(stopped.elapsed() < Duration::from_secs(20), "no failover within 20 s");
    }
    let failover = stopped.elapsed();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("load task");
    }
    let failures = failures.lock().expect("lock").clone();
    eprintln!(
        "failover of 127.0.0.1:{victim} took {failover:?}; {} round trips ok ({before} before), {} failed",
        ok.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(ok.load(Ordering::Relaxed) > before + 20, "requests went on after the failover");
    assert!(failures.is_empty(), "{} failed, e.g. {:?}", failures.len(), &failures[..failures.len().min(3)]);

    // After the failover: the cache entry is served by another instance
    // (from the promoted replica), and rate limits are exact again.
    let other = Gateway::start_with(cluster_config(&urls)).await;
    let lookup = json!({ "vector": [0.0, 1.0, 0.0, 0.5] });
    let (s, b) = call(&other, &t, "POST", "/v1/semcache/answers/lookup", Some(lookup)).await;
    assert_eq!((s, &b["value"]), (200, &json!("before the failover")), "{b}");
    limits_across_two_instances(&urls).await;
    other.stop().await;
    gw.delete_tenant(&t.name).await;
}
