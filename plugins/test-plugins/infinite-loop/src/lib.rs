//! Hostile test plugin (policy): never returns. The epoch deadline must stop it.

sluice_plugin_sdk::world!("policy");

struct Spin;

impl Guest for Spin {
    fn evaluate(
        _config: String,
        _request: Request,
        _statements: Vec<Statement>,
        _origin: Origin,
    ) -> Result<Decision, String> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

export!(Spin);
