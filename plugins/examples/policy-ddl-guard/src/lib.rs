//! Policy: deny DDL, and deny statements on tables outside an allowlist.
//!
//! Config (JSON): `{"allow_ddl": false, "allowed_tables": ["notes", "users"]}`.
//! Without `allowed_tables` every table is allowed. Only `sql` operations (both
//! doors) are checked; everything else is allowed.

use serde::Deserialize;
use sluice_plugin_sdk::sql;

sluice_plugin_sdk::world!("policy");

use sluice::plugin::log::log;
use sluice::plugin::types::LogLevel;

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Config {
    allow_ddl: bool,
    allowed_tables: Option<Vec<String>>,
}

struct DdlGuard;

impl Guest for DdlGuard {
    fn evaluate(config: String, request: Request) -> Result<Decision, String> {
        let cfg: Config = sluice_plugin_sdk::config(&config)?;
        let Some(text) = request.sql.as_deref() else {
            return Ok(Decision::Allow);
        };
        if !cfg.allow_ddl && sql::is_ddl(text) {
            let kw = sql::leading_keyword(text).unwrap_or_default();
            log(LogLevel::Info, &format!("denied {kw} for key {}", request.key_prefix));
            return Ok(Decision::Deny(format!("DDL ({kw}) is not allowed by this tenant's policy")));
        }
        if let Some(allowed) = &cfg.allowed_tables {
            for t in sql::tables(text) {
                if !allowed.iter().any(|a| a.eq_ignore_ascii_case(&t)) {
                    return Ok(Decision::Deny(format!("table {t:?} is not in the allowlist")));
                }
            }
        }
        Ok(Decision::Allow)
    }
}

export!(DdlGuard);
