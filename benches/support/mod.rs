//! What the load programs in `benches/` share: the dev config with the
//! listeners on ephemeral ports, an in-process gateway, knobs from the
//! environment and percentiles.
#![allow(dead_code)] // each bench uses a different part

use std::time::Duration;

use sluice::config::Config;
use sluice::server::Running;
use sluice::services::Services;

/// `config/dev.toml` with env overrides, quiet logs, the Postgres door on an
/// ephemeral port and the retention scheduler off.
pub fn dev_config() -> Config {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/dev.toml");
    let text = std::fs::read_to_string(&path).expect("config/dev.toml");
    let mut cfg = sluice::config::load_str(&text, "config/dev.toml", std::env::vars()).expect("dev config");
    cfg.log.level = "warn".into();
    cfg.server.pg_addr = "127.0.0.1:0".into();
    cfg.retention.interval_s = 0;
    // Uploads compile in the worker process of the `sluice` binary.
    cfg.plugins.compiler_path = env!("CARGO_BIN_EXE_sluice").into();
    cfg
}

/// A gateway serving HTTP on an ephemeral port, in this process.
pub async fn gateway(cfg: Config) -> (Services, Running) {
    let svc = Services::new(cfg).expect("services");
    let running = sluice::server::start(svc.clone(), "127.0.0.1:0").await.expect("gateway");
    (svc, running)
}

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The `p` quantile (0..=1) of sorted latencies, in milliseconds.
pub fn pct_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}
