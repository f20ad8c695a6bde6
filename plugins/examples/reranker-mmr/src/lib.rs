//! Reranker: maximal marginal relevance (diversity), plus an optional metadata
//! boost.
//!
//! Config (JSON): `{"lambda": 0.7, "boost_field": "pinned", "boost": 1.0}`.
//! Relevance is cosine similarity to the query; each pick maximizes
//! `lambda * relevance - (1 - lambda) * max similarity to what was picked`,
//! plus `boost` when the candidate's metadata has `boost_field` = true.

use serde::Deserialize;
use sluice_plugin_sdk::vector::{dot, unit};

sluice_plugin_sdk::world!("reranker");

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    lambda: f64,
    boost_field: Option<String>,
    boost: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self { lambda: 0.7, boost_field: None, boost: 1.0 }
    }
}

struct Mmr;

impl Guest for Mmr {
    fn rerank(config: String, query: Vec<f32>, k: u32, candidates: Vec<Candidate>) -> Result<Vec<Scored>, String> {
        let cfg: Config = sluice_plugin_sdk::config(&config)?;
        if !(0.0..=1.0).contains(&cfg.lambda) {
            return Err("`lambda` must be between 0 and 1".into());
        }
        let boosts: Vec<f64> = candidates
            .iter()
            .map(|c| match &cfg.boost_field {
                Some(f) => match serde_json::from_str::<serde_json::Value>(&c.metadata) {
                    Ok(v) if v.get(f) == Some(&serde_json::Value::Bool(true)) => cfg.boost,
                    _ => 0.0,
                },
                None => 0.0,
            })
            .collect();
        // Unit vectors once, so every similarity below is one dot product.
        let units: Vec<Vec<f32>> = candidates.iter().map(|c| unit(&c.vector)).collect();
        let q = unit(&query);
        let relevance: Vec<f64> = candidates
            .iter()
            .zip(&units)
            .map(|(c, u)| if c.vector.is_empty() || u.len() != q.len() { -c.distance } else { dot(&q, u) })
            .collect();
        let want = (k as usize).min(candidates.len());
        let mut out = Vec::with_capacity(want);
        // Each candidate's highest similarity to anything picked so far,
        // updated against the newest pick only: O(k · n · d) in all.
        let mut redundancy = vec![0.0f64; candidates.len()];
        let mut left: Vec<usize> = (0..candidates.len()).collect();
        while out.len() < want {
            let mut best: Option<(usize, f64)> = None;
            for (pos, &i) in left.iter().enumerate() {
                let s = cfg.lambda * relevance[i] - (1.0 - cfg.lambda) * redundancy[i] + boosts[i];
                if best.is_none_or(|(_, b)| s > b) {
                    best = Some((pos, s));
                }
            }
            let Some((pos, _)) = best else { break };
            let i = left.remove(pos);
            for &j in &left {
                if units[j].len() == units[i].len() {
                    redundancy[j] = redundancy[j].max(dot(&units[i], &units[j]));
                }
            }
            // Scores descend with the pick order so the host keeps it.
            out.push(Scored { index: i as u32, score: (want - out.len()) as f64 });
        }
        Ok(out)
    }
}

export!(Mmr);
