//! Test plugin (policy, `sluice:plugin@0.3.0`): denies the S3 operations its
//! config names (`{"deny": ["DeleteObject", "UploadPart"]}`) on the S3 door
//! only, and says in the reason what it saw, so the tests can show a policy
//! learns the door and the S3 operation from `origin`.

use serde::Deserialize;

sluice_plugin_sdk::world!("policy");

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Config {
    deny: Vec<String>,
}

struct S3Ops;

impl Guest for S3Ops {
    fn evaluate(
        config: String,
        request: Request,
        _statements: Vec<Statement>,
        origin: Origin,
    ) -> Result<Decision, String> {
        let cfg: Config = sluice_plugin_sdk::config(&config)?;
        match origin.s3_operation.as_deref() {
            Some(op) if origin.door == "s3" && cfg.deny.iter().any(|d| d == op) => Ok(Decision::Deny(format!(
                "{op} is not allowed on the {} door ({} of {})",
                origin.door,
                request.operation,
                request.object_key.as_deref().unwrap_or("")
            ))),
            _ => Ok(Decision::Allow),
        }
    }
}

export!(S3Ops);
