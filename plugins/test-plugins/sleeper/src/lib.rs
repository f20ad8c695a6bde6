//! Hostile test plugin (policy): sleeps 20 s through the WASI clock. A
//! sleep blocks in the host, out of reach of the epoch deadline, so the host
//! refuses to wait: the call must fail at once.

use std::time::Duration;

sluice_plugin_sdk::world!("policy");

struct Sleeper;

impl Guest for Sleeper {
    fn evaluate(
        _config: String,
        _request: Request,
        _statements: Vec<Statement>,
        _origin: Origin,
    ) -> Result<Decision, String> {
        std::thread::sleep(Duration::from_secs(20));
        Ok(Decision::Allow)
    }
}

export!(Sleeper);
