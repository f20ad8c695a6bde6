//! Session state under transaction pooling.
//!
//! Policy (replay, not pinning, for settings): a client's startup parameters
//! and its plain `SET`/`RESET` statements sent with the simple query protocol
//! are recorded, in order, as the client's *session state*. Each upstream
//! connection remembers the hash of the state it carries. When a client gets
//! a connection whose state differs (or which ran a statement that may have
//! changed settings in an untracked way: a `SET` in a multi-statement query
//! with quoting, or through the extended protocol, `set_config(…)`, `DISCARD`), the
//! door runs `RESET ALL` and replays the client's state first. So nothing one
//! client sets is ever seen by another, and clients with identical state (the
//! common case) pay nothing. Untracked changes last until the end of the
//! client's transaction. `SET LOCAL` and `SET TRANSACTION` are left alone.
//!
//! Statements whose effect outlives a transaction and cannot be replayed
//! (`LISTEN`, SQL-level `PREPARE`, `DECLARE … WITH HOLD`, `CREATE TEMP …`,
//! `LOAD`) *pin* the client to its upstream connection for the rest of its
//! session; when it ends, the connection is cleaned with `DISCARD ALL`.

use std::hash::{DefaultHasher, Hash, Hasher};

use crate::upstream::postgres::quote_literal;

/// What a statement does to session state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// No session-level effect.
    None,
    /// Plain `SET`/`RESET` statements to record and replay (their text).
    Track(Vec<String>),
    /// May change settings in an untracked way.
    Dirty,
    /// Needs the client pinned to its connection.
    Pin,
}

fn words(stmt: &str) -> impl Iterator<Item = String> + '_ {
    stmt.split(|c: char| c.is_whitespace() || c == '(' || c == '"')
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_lowercase())
}

fn statement_effect(stmt: &str) -> Effect {
    let mut w = words(stmt);
    let first = w.next().unwrap_or_default();
    let second = w.next().unwrap_or_default();
    match first.as_str() {
        "set" if second == "local" || second == "transaction" => Effect::None,
        "set" | "reset" => Effect::Track(vec![stmt.trim().to_owned()]),
        "discard" => Effect::Dirty,
        "listen" | "prepare" | "load" => Effect::Pin,
        "declare" if stmt.to_ascii_lowercase().contains(" with hold") => Effect::Pin,
        "create"
            if matches!(second.as_str(), "temp" | "temporary")
                || (second == "local" && matches!(w.next().as_deref(), Some("temp" | "temporary"))) =>
        {
            Effect::Pin
        }
        _ => Effect::None,
    }
}

/// Classify a query string (possibly several statements). Conservative: it
/// splits on `;` without parsing quotes, which can only over-report.
pub fn classify(sql: &str) -> Effect {
    let stmts: Vec<&str> = sql.split(';').filter(|s| !s.trim().is_empty()).collect();
    let mut effect = match stmts.as_slice() {
        [one] => statement_effect(one),
        many => {
            let effects: Vec<Effect> = many.iter().map(|s| statement_effect(s)).collect();
            // Splitting on `;` is exact only without quoting of any kind.
            let plain = !sql.contains(['\'', '"', '$', '-', '/']);
            if effects.contains(&Effect::Pin) {
                Effect::Pin
            } else if effects.contains(&Effect::Dirty) || (!plain && effects.iter().any(|e| *e != Effect::None)) {
                Effect::Dirty
            } else {
                let sets: Vec<String> = effects
                    .into_iter()
                    .filter_map(|e| if let Effect::Track(v) = e { Some(v) } else { None })
                    .flatten()
                    .collect();
                if sets.is_empty() { Effect::None } else { Effect::Track(sets) }
            }
        }
    };
    if effect == Effect::None && sql.to_ascii_lowercase().contains("set_config") {
        effect = Effect::Dirty;
    }
    effect
}

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "replication", "options"];

fn valid_name(k: &str) -> bool {
    !k.is_empty() && k.len() <= 63 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// The settings a client asked for at startup (parameters and `-c k=v` /
/// `--k=v` in `options`), in order. Err names an invalid parameter.
pub fn startup_settings(params: &[(String, String)]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (k, v) in params {
        if k == "options" {
            let mut toks = v.split_whitespace();
            while let Some(t) = toks.next() {
                let kv = if t == "-c" { toks.next().unwrap_or_default() } else { t.strip_prefix("--").unwrap_or(t) };
                let (k, v) = kv.split_once('=').ok_or_else(|| format!("unsupported startup option \"{t}\""))?;
                out.push((k.to_ascii_lowercase().replace('-', "_"), v.to_owned()));
            }
        } else if !NOT_SETTINGS.contains(&k.as_str()) {
            out.push((k.to_ascii_lowercase(), v.clone()));
        }
    }
    for (k, _) in &out {
        if !valid_name(k) {
            return Err(format!("unrecognized configuration parameter \"{k}\""));
        }
    }
    Ok(out)
}

/// The statement that applies one startup setting (raw value, as the startup
/// packet would; `set_config` so list values like `search_path` work).
pub fn setting_statement(name: &str, value: &str) -> String {
    format!("SELECT pg_catalog.set_config({}, {}, false)", quote_literal(name), quote_literal(value))
}

/// The hash an upstream connection records for a session state. A fresh or
/// fully reset connection carries the empty state, hash 0.
pub fn state_hash(stmts: &[String]) -> u64 {
    if stmts.is_empty() {
        return 0;
    }
    let mut h = DefaultHasher::new();
    stmts.hash(&mut h);
    h.finish() | 1
}

/// `RESET ALL` followed by the state's statements, as one simple query.
pub fn replay_sql(stmts: &[String]) -> String {
    let mut sql = String::from("RESET ALL");
    for s in stmts {
        sql.push_str("; ");
        sql.push_str(s);
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_statements() {
        assert_eq!(classify("SET search_path TO a, b"), Effect::Track(vec!["SET search_path TO a, b".into()]));
        assert_eq!(classify("  reset search_path;"), Effect::Track(vec!["reset search_path".into()]));
        assert_eq!(
            classify("CREATE SCHEMA s; SET search_path TO s"),
            Effect::Track(vec!["SET search_path TO s".into()])
        );
        assert_eq!(classify("SELECT 'x;SET y=1'"), Effect::Dirty);
        assert_eq!(classify("SELECT 'x'; SET y=1"), Effect::Dirty);
        assert_eq!(classify("SET LOCAL statement_timeout = 5"), Effect::None);
        assert_eq!(classify("set transaction isolation level serializable"), Effect::None);
        assert_eq!(classify("UPDATE t SET a = 1"), Effect::None);
        assert_eq!(classify("select set_config('a.b', 'c', false)"), Effect::Dirty);
        assert_eq!(classify("SET a.b = 1; DISCARD PLANS"), Effect::Dirty);
        assert_eq!(classify("LISTEN chan"), Effect::Pin);
        assert_eq!(classify("create temp table x (a int)"), Effect::Pin);
        assert_eq!(classify("CREATE LOCAL TEMPORARY TABLE x (a int)"), Effect::Pin);
        assert_eq!(classify("declare c cursor with hold for select 1"), Effect::Pin);
        assert_eq!(classify("select 1"), Effect::None);
    }

    #[test]
    fn startup_parameters() {
        let p = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let s = startup_settings(&[
            p("user", "acme"),
            p("database", "x"),
            p("application_name", "psql"),
            p("options", "-c search_path=a,b --statement-timeout=5"),
        ])
        .expect("ok");
        assert_eq!(s, vec![p("application_name", "psql"), p("search_path", "a,b"), p("statement_timeout", "5")]);
        assert!(startup_settings(&[p("bad name", "x")]).is_err());
        assert!(startup_settings(&[p("options", "-x")]).is_err());
        assert_eq!(state_hash(&[]), 0);
        assert_ne!(state_hash(&["SET a = 1".into()]), 0);
        assert_eq!(replay_sql(&["SET a = 1".into()]), "RESET ALL; SET a = 1");
        assert_eq!(setting_statement("a", "it's"), "SELECT pg_catalog.set_config('a', 'it''s', false)");
    }
}
