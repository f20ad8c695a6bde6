//! Hostile test plugin (policy): panics (a trap).

sluice_plugin_sdk::world!("policy");

struct Boom;

impl Guest for Boom {
    fn evaluate(
        _config: String,
        request: Request,
        _statements: Vec<Statement>,
        _origin: Origin,
    ) -> Result<Decision, String> {
        panic!("deliberate panic in test plugin for {}", request.operation);
    }
}

export!(Boom);
