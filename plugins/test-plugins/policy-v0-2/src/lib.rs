//! Test plugin built against the earlier `sluice:plugin@0.2.0` policy world
//! (request and statements, no `origin`): denies DDL, so the tests can show
//! such components still load and get the statement model.

sluice_plugin_sdk::world_v0_2!("policy");

struct Legacy;

impl Guest for Legacy {
    fn evaluate(_config: String, request: Request, statements: Vec<Statement>) -> Result<Decision, String> {
        match statements.iter().find(|s| s.changes_schema()) {
            Some(s) => Ok(Decision::Deny(format!("0.2.0 policy says no to {} ({})", s.label(), request.operation))),
            None => Ok(Decision::Allow),
        }
    }
}

export!(Legacy);
