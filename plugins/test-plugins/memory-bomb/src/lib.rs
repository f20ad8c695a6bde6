//! Hostile test plugin (policy): allocates until memory runs out. The memory
//! cap must stop it.

sluice_plugin_sdk::world!("policy");

struct Bomb;

impl Guest for Bomb {
    fn evaluate(
        _config: String,
        _request: Request,
        _statements: Vec<Statement>,
        _origin: Origin,
    ) -> Result<Decision, String> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Zeroed pages cost nothing to fill: the cap, not the deadline, must stop this.
            hoard.push(std::hint::black_box(vec![0u8; 4 << 20]));
            if hoard.len() > 1 << 20 {
                return Ok(Decision::Allow);
            }
        }
    }
}

export!(Bomb);
