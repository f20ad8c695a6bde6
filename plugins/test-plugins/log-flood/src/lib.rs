//! Hostile test plugin (policy): writes 2 000 log lines of 4 KiB each, then
//! allows. The host must truncate and rate-limit them.

sluice_plugin_sdk::world!("policy");

use sluice::plugin::log::log;
use sluice::plugin::types::LogLevel;

struct Flood;

impl Guest for Flood {
    fn evaluate(
        _config: String,
        _request: Request,
        _statements: Vec<Statement>,
        _origin: Origin,
    ) -> Result<Decision, String> {
        let line = "flood ".repeat(700);
        for _ in 0..2_000 {
            log(LogLevel::Error, &line);
        }
        Ok(Decision::Allow)
    }
}

export!(Flood);
