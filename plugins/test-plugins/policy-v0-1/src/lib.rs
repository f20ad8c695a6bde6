//! Test plugin built against the earlier `sluice:plugin@0.1.0` policy world
//! (SQL as text only): denies SQL whose text mentions `legacy_forbidden`, so
//! the tests can show such components still load and decide.

sluice_plugin_sdk::world_v0_1!("policy");

struct Legacy;

impl Guest for Legacy {
    fn evaluate(_config: String, request: Request) -> Result<Decision, String> {
        match request.sql.as_deref() {
            Some(sql) if sql.contains("legacy_forbidden") => Ok(Decision::Deny("legacy policy says no".into())),
            _ => Ok(Decision::Allow),
        }
    }
}

export!(Legacy);
