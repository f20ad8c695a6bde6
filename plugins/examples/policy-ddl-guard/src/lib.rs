//! Policy: deny schema changes and opaque code, and deny statements that name
//! tables outside an allowlist. Reads the gateway's statement model (Postgres's
//! own parser), not the SQL text, so `SELECT … INTO`, `CREATE TABLE … AS` under
//! `EXPLAIN ANALYZE`, DDL inside `DO` blocks and `COPY` are all seen.
//!
//! Config (JSON):
//! `{"allow_ddl": false, "allow_opaque": false, "allowed_tables": ["notes", "users"]}`.
//! - `allow_ddl`: allow CREATE/ALTER/DROP… (and `SELECT … INTO`). Default false.
//! - `allow_opaque`: allow code the gateway cannot see into: `DO` blocks,
//!   `CALL`, SQL-level `EXECUTE`, functions that are not Postgres built-ins.
//!   Default false (such code could run DDL or read any table).
//! - `allowed_tables`: without it every table is allowed; with it, every
//!   relation a statement names (including `COPY`'s) must be listed, as `name`
//!   (matching it unqualified or in `public`) or `schema.name`, compared
//!   exactly as Postgres folds names. An unqualified name resolves through the
//!   session's `search_path`; deny `SET search_path` yourself if the tenant
//!   keeps same-named tables in other schemas.
//!
//! Only `sql` operations (both doors) are checked; everything else is allowed.

use serde::Deserialize;

sluice_plugin_sdk::world!("policy");

use sluice::plugin::log::log;
use sluice::plugin::sql::{Relation, StatementKind};
use sluice::plugin::types::LogLevel;

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Config {
    allow_ddl: bool,
    allow_opaque: bool,
    allowed_tables: Option<Vec<String>>,
}

fn allowed(allowlist: &[String], r: &Relation) -> bool {
    allowlist.iter().any(|a| match (a.split_once('.'), &r.schema) {
        // Names arrive case-folded as Postgres resolves them: compare exactly
        // (`"NOTES"` is another table than `notes`).
        (Some((s, n)), Some(rs)) => s == rs && n == r.name,
        (Some(_), None) => false,
        (None, schema) => *a == r.name && schema.as_deref().is_none_or(|s| s == "public"),
    })
}

struct DdlGuard;

impl Guest for DdlGuard {
    fn evaluate(
        config: String,
        request: Request,
        statements: Vec<Statement>,
        _origin: Origin,
    ) -> Result<Decision, String> {
        let cfg: Config = sluice_plugin_sdk::config(&config)?;
        for st in &statements {
            if !cfg.allow_ddl && st.changes_schema() {
                let what = st.label();
                log(LogLevel::Info, &format!("denied {what} for key {}", request.key_prefix));
                return Ok(Decision::Deny(format!("DDL ({what}) is not allowed by this tenant's policy")));
            }
            if !cfg.allow_opaque && st.opaque {
                let what = match st.functions.iter().find(|f| !f.starts_with("pg_catalog.")) {
                    Some(f) if !matches!(st.kind, StatementKind::Do | StatementKind::Execute) => {
                        format!("{} calling {f}", st.label())
                    }
                    _ => st.label(),
                };
                log(LogLevel::Info, &format!("denied opaque {what} for key {}", request.key_prefix));
                return Ok(Decision::Deny(format!(
                    "code the gateway cannot inspect ({what}) is not allowed by this tenant's policy"
                )));
            }
            if let Some(list) = &cfg.allowed_tables {
                if let Some(r) = st.relations.iter().find(|r| !allowed(list, r)) {
                    let name = st.tables().find(|t| t.ends_with(&r.name)).unwrap_or_else(|| r.name.clone());
                    return Ok(Decision::Deny(format!("table {name:?} is not in the allowlist")));
                }
            }
        }
        Ok(Decision::Allow)
    }
}

export!(DdlGuard);
