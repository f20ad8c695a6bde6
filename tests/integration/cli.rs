//! The `sluice` binary itself against the real stack: tenants, keys, plugins
//! and a retention run, each with `--json` so the output is checked exactly.

use serde_json::Value;

use crate::support::{Gateway, repo_root, unique};

/// Run `sluice --config config/dev.toml --json ARGS`; (exit success, stdout
/// JSON or Null, stderr).
pub async fn sluice(args: &[&str]) -> (bool, Value, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(repo_root())
        .args(["--config", "config/dev.toml", "--json"])
        .args(args)
        .output()
        .await
        .expect("run sluice");
    let stdout = String::from_utf8_lossy(&out.stdout);
    (
        out.status.success(),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test]
async fn tenant_key_plugin_and_retention_commands() {
    // A gateway for its migrations and to check what the CLI did over HTTP.
    let gw = Gateway::start().await;
    let name = unique("cli");
    let (ok, t, err) = sluice(&["tenant", "create", &name]).await;
    assert!(ok, "tenant create: {err}");
    let admin = t["admin_key"]["key"].as_str().expect("admin key").to_owned();
    let (ok, shown, err) = sluice(&["tenant", "show", &name]).await;
    assert!(ok, "tenant show: {err}");
    assert_eq!(shown["tenant"]["name"], name.as_str(), "{shown}");
    assert_eq!(shown["keys"].as_array().map(Vec::len), Some(2), "{shown}");

    let (ok, k, err) = sluice(&["key", "create", "--tenant", &name, "--role", "service", "--label", "ci"]).await;
    assert!(ok, "key create: {err}");
    let service = k["key"].as_str().expect("key").to_owned();
    let (s, _) = gw.get("/v1/tenant", &service).await;
    assert_eq!(s, 200, "the new key works over HTTP");

    // Plugins: upload with a JSON config and activate; list; bad input named.
    let wasm = repo_root().join("plugins/target/wasm32-wasip2/release/retention_max_age.wasm");
    let wasm = wasm.to_str().expect("utf-8 path");
    let (ok, up, err) = sluice(&[
        "plugin",
        "upload",
        "--tenant",
        &name,
        "--kind",
        "retention",
        wasm,
        "--activate",
        "--plugin-config",
        r#"{"max_age_days": 0}"#,
    ])
    .await;
    assert!(ok, "plugin upload: {err}");
    assert_eq!(up["version"], 1, "{up}");
    let (ok, list, err) = sluice(&["plugin", "list", "--tenant", &name, "--kind", "retention"]).await;
    assert!(ok, "plugin list: {err}");
    assert_eq!(list["active_version"], 1, "{list}");
    let (ok, _, err) = sluice(&[
        "plugin",
        "activate",
        "--tenant",
        &name,
        "--kind",
        "retention",
        "--version",
        "1",
        "--plugin-config",
        "{",
    ])
    .await;
    assert!(!ok && err.contains("--plugin-config is not valid JSON"), "{err}");
    let (ok, _, err) = sluice(&["plugin", "upload", "--tenant", &name, "--kind", "policy", "Cargo.toml"]).await;
    assert!(!ok && !err.is_empty() && !err.contains("panicked"), "not a component: {err}");

    // Retention: one object through the HTTP door, a dry run deletes nothing.
    let resp = gw
        .http
        .put(gw.url("/v1/objects/tmp/old.txt"))
        .bearer_auth(&service)
        .body("x")
        .send()
        .await
        .expect("put object");
    assert!(resp.status().is_success());
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (ok, run, err) = sluice(&["retention", "run", "--tenant", &name, "--dry-run"]).await;
    assert!(ok, "retention dry run: {err}");
    assert_eq!(
        (run["dry_run"].as_bool(), run["scanned"].as_u64(), run["deleted"].as_u64()),
        (Some(true), Some(1), Some(1)),
        "{run}"
    );
    let (s, _) = gw.get("/v1/objects/tmp/old.txt", &service).await;
    assert_eq!(s, 200, "a dry run deletes nothing");
    let (ok, run, err) = sluice(&["retention", "run", "--tenant", &name]).await;
    assert!(ok, "retention run: {err}");
    assert_eq!(run["deleted"], 1, "{run}");
    let (s, _) = gw.get("/v1/objects/tmp/old.txt", &service).await;
    assert_eq!(s, 404);

    let (ok, sched, err) = sluice(&["retention", "schedule", "--tenant", &name, "--interval-s", "3600"]).await;
    assert!(ok, "retention schedule: {err}");
    assert_eq!(
        (&sched["interval_s"], &sched["source"]),
        (&serde_json::json!(3600), &serde_json::json!("tenant")),
        "{sched}"
    );
    let (ok, _, err) = sluice(&["retention", "schedule", "--tenant", &name, "--interval-s", "5"]).await;
    assert!(!ok && err.contains("at least 60"), "{err}");

    let (ok, _, err) = sluice(&["plugin", "deactivate", "--tenant", &name, "--kind", "retention"]).await;
    assert!(ok, "plugin deactivate: {err}");
    let (ok, _, err) = sluice(&["tenant", "delete", &name]).await;
    assert!(!ok && err.contains("--yes"), "delete without --yes refuses: {err}");
    let (ok, _, err) = sluice(&["tenant", "delete", &name, "--yes"]).await;
    assert!(ok, "tenant delete: {err}");
    let (s, _) = gw.get("/v1/tenant", &admin).await;
    assert_eq!(s, 401, "keys die with the tenant");
    gw.stop().await;
}
