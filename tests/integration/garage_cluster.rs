//! A multi-node object store: the stack's 3-node Garage cluster
//! (`scripts/stack up --garage-nodes 3`, replication factor 3, consistent
//! mode) behind the gateway's `s3.endpoint` (node 1). With any other node
//! stopped, objects written before stay readable and new ones can be written,
//! listed and deleted. (In production the endpoint is a load balancer over
//! all nodes, so node 1 is not special; see docs/scaling.md.)

use std::time::Duration;

use crate::support::{Gateway, config, missing, repo_root, unique};

fn endpoints() -> Option<Vec<String>> {
    match std::env::var("SLUICE_TEST_GARAGE_CLUSTER_ENDPOINTS") {
        Ok(u) if !u.is_empty() => Some(u.split(',').map(str::to_owned).collect()),
        _ => {
            missing("a 3-node Garage cluster (scripts/stack up --garage-nodes 3)");
            None
        }
    }
}

async fn stack(args: &[&str]) {
    let out = tokio::process::Command::new(repo_root().join("scripts/stack"))
        .args(args)
        .output()
        .await
        .expect("scripts/stack");
    assert!(out.status.success(), "scripts/stack {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Starts every node again when dropped (also when the test fails).
struct StartNodes;

impl Drop for StartNodes {
    fn drop(&mut self) {
        for n in ["2", "3"] {
            let _ =
                std::process::Command::new(repo_root().join("scripts/stack")).args(["garage-node-start", n]).output();
        }
    }
}

async fn put(gw: &Gateway, key: &str, name: &str, body: Vec<u8>) -> u16 {
    let r = gw.http.put(gw.url(&format!("/v1/objects/{name}"))).bearer_auth(key).body(body).send().await;
    r.expect("put").status().as_u16()
}

async fn get(gw: &Gateway, key: &str, name: &str) -> (u16, bytes::Bytes) {
    let r = gw.http.get(gw.url(&format!("/v1/objects/{name}"))).bearer_auth(key).send().await.expect("get");
    (r.status().as_u16(), r.bytes().await.expect("body"))
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_stay_available_with_one_node_down() {
    let Some(endpoints) = endpoints() else { return };
    let mut cfg = config();
    cfg.s3.endpoint = endpoints[0].clone();
    let gw = Gateway::start_with(cfg).await;
    let t = gw.create_tenant(&unique("gc")).await;
    let k = &t.service_key;
    let large = pattern(7, 12 << 20); // past 8 MiB: the streamed multipart path
    assert_eq!(put(&gw, k, "small", pattern(1, 1000)).await, 200);
    assert_eq!(put(&gw, k, "large", large.clone()).await, 200);

    let _restart = StartNodes;
    for node in ["3", "2"] {
        stack(&["garage-node-stop", node]).await;
        // Written with every node up: still there.
        let (s, body) = get(&gw, k, "small").await;
        assert!(
            s == 200 && body == pattern(1, 1000),
            "small object with node {node} down: {s} {:?}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
        let (s, body) = get(&gw, k, "large").await;
        assert!(s == 200 && body == large, "large object with node {node} down: {s}, {} bytes", body.len());
        // Written with the node down: readable, listed, deletable.
        let name = format!("while-{node}-down");
        assert_eq!(put(&gw, k, &name, pattern(2, 5000)).await, 200, "put with node {node} down");
        assert_eq!(get(&gw, k, &name).await, (200, pattern(2, 5000).into()));
        let (s, list) = gw.get("/v1/objects?prefix=while-", k).await;
        assert_eq!(s, 200, "{list}");
        assert!(list.to_string().contains(&name), "listed: {list}");
        stack(&["garage-node-start", node]).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Written while node 2 was down, read with node 3 down now that 2 is back.
    stack(&["garage-node-stop", "3"]).await;
    assert_eq!(get(&gw, k, "while-2-down").await, (200, pattern(2, 5000).into()));
    stack(&["garage-node-start", "3"]).await;
    let r = gw.http.delete(gw.url("/v1/objects/while-3-down")).bearer_auth(k).send().await.expect("delete");
    assert_eq!(r.status(), 204);
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}
