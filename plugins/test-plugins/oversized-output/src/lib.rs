//! Hostile test plugin (policy): answers with a 4 MiB deny reason. The host
//! must reject the output as oversized.

sluice_plugin_sdk::world!("policy");

struct Big;

impl Guest for Big {
    fn evaluate(
        _config: String,
        _request: Request,
        _statements: Vec<Statement>,
        _origin: Origin,
    ) -> Result<Decision, String> {
        Ok(Decision::Deny("x".repeat(4 << 20)))
    }
}

export!(Big);
