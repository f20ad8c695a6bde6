//! The examples in examples/ run against a real gateway and tenant.

use crate::support::{Gateway, repo_root, unique};

#[tokio::test]
async fn curl_walkthrough_runs_clean() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("walk")).await;
    let out = tokio::process::Command::new("bash")
        .arg(repo_root().join("examples/curl/walkthrough.sh"))
        .env("SLUICE_URL", &gw.base)
        .env("SLUICE_KEY", &t.service_key)
        .output()
        .await
        .expect("run walkthrough");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "walkthrough failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("all calls answered as expected"));
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}
