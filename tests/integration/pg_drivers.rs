//! Real drivers, direct and through the door: psycopg 3, asyncpg and
//! node-postgres each run a script of the calls applications make
//! (tests/clients/diff_*), once against the tenant's database directly and
//! once through the door with one pooled upstream connection; the JSON
//! transcripts (rows, command tags, SQLSTATEs and messages) must be equal.
//!
//! `scripts/test` installs the drivers and sets `SLUICE_DRIVERS_REQUIRED=1`,
//! so there a missing driver fails the test instead of skipping it.

use serde_json::Value;

use crate::support::{Gateway, available, missing, repo_root, unique};

async fn transcript(program: &str, script: &str, url: &str) -> Value {
    let path = repo_root().join(script);
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new(program).arg(&path).arg(url).kill_on_drop(true).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{script} finished within 120 s"))
    .expect("run the script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} against {url}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{script}: not JSON ({e}): {stdout}"))
}

async fn compare(program: &str, script: &str) {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("pgdrv")).await;
    gw.set_quota(&t.name, "pg_pool_size", 2).await;
    let direct = transcript(program, script, &gw.direct_pg(&t).await.url()).await;
    let door = transcript(program, script, &gw.door_pg(&t).url()).await;
    let (d, g) = (direct.as_array().expect("steps"), door.as_array().expect("steps"));
    let mut diffs = Vec::new();
    for i in 0..d.len().max(g.len()) {
        if d.get(i) != g.get(i) {
            diffs.push(format!(
                "direct: {}\n  door: {}",
                d.get(i).unwrap_or(&Value::Null),
                g.get(i).unwrap_or(&Value::Null)
            ));
        }
    }
    assert!(diffs.is_empty(), "{script}: {} of {} steps differ:\n{}", diffs.len(), d.len(), diffs.join("\n"));
    assert!(d.len() > 10, "the script ran: {direct}");
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn psycopg_direct_and_through_the_door() {
    if available("python3", &["-c", "import psycopg"]).await {
        compare("python3", "tests/clients/diff_psycopg.py").await;
    }
}

#[tokio::test]
async fn asyncpg_direct_and_through_the_door() {
    if available("python3", &["-c", "import asyncpg"]).await {
        compare("python3", "tests/clients/diff_asyncpg.py").await;
    }
}

#[tokio::test]
async fn node_postgres_direct_and_through_the_door() {
    let pg = repo_root().join("tests/clients/node/node_modules/pg");
    if available("node", &["--version"]).await && (pg.exists() || missing("node-postgres (tests/clients/node)")) {
        compare("node", "tests/clients/node/diff_pg.js").await;
    }
}
