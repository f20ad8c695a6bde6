//! Hostile test plugin (reranker): traps on every call. Rerankers fail open,
//! so searches must keep their original order.

sluice_plugin_sdk::world!("reranker");

struct Boom;

impl Guest for Boom {
    fn rerank(_config: String, _query: Vec<f32>, _k: u32, _candidates: Vec<Candidate>) -> Result<Vec<Scored>, String> {
        panic!("deliberate reranker panic");
    }
}

export!(Boom);
