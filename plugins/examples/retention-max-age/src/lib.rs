//! Retention: delete objects older than N days unless their metadata says
//! `legal-hold=true`.
//!
//! Config (JSON): `{"max_age_days": 30, "kinds": ["object"]}`. Age is measured
//! from the last modification against the run's `now`.

use serde::Deserialize;

sluice_plugin_sdk::world!("retention");

use sluice::plugin::types::ItemKind;

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    max_age_days: u32,
    kinds: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self { max_age_days: 30, kinds: vec!["object".into()] }
    }
}

fn kind_name(k: ItemKind) -> &'static str {
    match k {
        ItemKind::Object => "object",
        ItemKind::Point => "point",
        ItemKind::Row => "row",
    }
}

struct MaxAge;

impl Guest for MaxAge {
    fn decide(config: String, now_ms: i64, items: Vec<Item>) -> Result<Vec<Verdict>, String> {
        let cfg: Config = sluice_plugin_sdk::config(&config)?;
        let max_age_ms = i64::from(cfg.max_age_days) * sluice_plugin_sdk::DAY_MS;
        Ok(items
            .iter()
            .map(|it| {
                let held = it
                    .metadata
                    .iter()
                    .any(|m| m.key.eq_ignore_ascii_case("legal-hold") && m.value.eq_ignore_ascii_case("true"));
                let in_scope = cfg.kinds.iter().any(|k| k == kind_name(it.kind));
                let age = now_ms.saturating_sub(it.modified_ms);
                if in_scope && !held && age > max_age_ms {
                    Verdict::Delete(format!(
                        "older than {} days ({} days)",
                        cfg.max_age_days,
                        age / sluice_plugin_sdk::DAY_MS
                    ))
                } else {
                    Verdict::Keep
                }
            })
            .collect())
    }
}

export!(MaxAge);
