//! Session state under transaction pooling, read from the statement model
//! ([`crate::sql::Statement::session`]) whichever protocol carried the statement.
//!
//! Policy (replay, not pinning, for settings): a client's startup parameters
//! and its `SET`/`RESET` statements and `set_config(name, value, false)`
//! calls with literal arguments are recorded, in order, as the client's
//! *session state* once the server has run them. Each upstream connection
//! remembers the hash of the state it carries. When a client gets a
//! connection whose state differs (or which ran something that may have
//! changed settings in a way the model cannot follow: opaque code, a
//! `set_config` with computed arguments, `DISCARD ALL`), the door runs
//! `RESET ALL` and replays the client's state first. So nothing one client
//! sets is ever seen by another, and clients with identical state (the
//! common case) pay nothing. `SET LOCAL` and `SET TRANSACTION` end with the
//! transaction and are left alone.
//!
//! Statements whose effect outlives a transaction and cannot be replayed
//! (`LISTEN`, SQL-level `PREPARE`, `DECLARE … WITH HOLD`, temporary objects,
//! `LOAD`, session-level advisory locks) *pin* the client to its upstream
//! connection for the rest of its session; when it ends, the connection is
//! cleaned with `DISCARD ALL`.

use std::hash::{DefaultHasher, Hash, Hasher};

use crate::sql::{SessionEffect, Statement};
use crate::upstream::postgres::quote_literal;

/// What a statement does to session state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// No session-level effect.
    None,
    /// Statements to record and replay once the server has run them.
    Track(Vec<String>),
    /// May change settings in an untracked way.
    Dirty,
    /// Needs the client pinned to its connection.
    Pin,
}

impl Effect {
    fn rank(&self) -> u8 {
        match self {
            Effect::None => 0,
            Effect::Track(_) => 1,
            Effect::Dirty => 2,
            Effect::Pin => 3,
        }
    }
}

/// The session effect of one statement.
fn statement_effect(st: &Statement) -> Effect {
    let mut out = if st.opaque { Effect::Dirty } else { Effect::None };
    let mut track = Vec::new();
    for e in &st.session {
        let this = match e {
            SessionEffect::Set { local: true, .. } => Effect::None,
            SessionEffect::Set { local: false, .. }
            | SessionEffect::Reset { .. }
            | SessionEffect::SessionCharacteristics => {
                track.push(st.text.clone());
                Effect::None
            }
            SessionEffect::SetConfig { name: Some(n), value: Some(v), local: Some(false) } => {
                track.push(setting_statement(n, v));
                Effect::None
            }
            SessionEffect::SetConfig { local: Some(true), .. } => Effect::None,
            SessionEffect::SetConfig { .. } | SessionEffect::Discard(crate::sql::statement::DiscardTarget::All) => {
                Effect::Dirty
            }
            SessionEffect::Listen { .. }
            | SessionEffect::TempObject
            | SessionEffect::Prepare { .. }
            | SessionEffect::HoldCursor
            | SessionEffect::Load
            | SessionEffect::AdvisoryLock => Effect::Pin,
            SessionEffect::Discard(_)
            | SessionEffect::Unlisten { .. }
            | SessionEffect::Deallocate { .. }
            | SessionEffect::AdvisoryUnlock => Effect::None,
        };
        if this.rank() > out.rank() {
            out = this;
        }
    }
    match out {
        Effect::None if !track.is_empty() => Effect::Track(track),
        other => other,
    }
}

/// The combined session effect of a query's statements: the strongest one,
/// with every tracked statement in order when all are trackable.
pub fn effect(statements: &[Statement]) -> Effect {
    let mut out = Effect::None;
    let mut track = Vec::new();
    for st in statements {
        match statement_effect(st) {
            Effect::Track(t) => track.extend(t),
            e if e.rank() > out.rank() => out = e,
            _ => {}
        }
    }
    match out {
        Effect::None if !track.is_empty() => Effect::Track(track),
        other => other,
    }
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

    fn effect_of(sql: &str) -> Effect {
        effect(&crate::sql::parser::parse_text(sql).expect("parses").statements)
    }

    #[test]
    fn effects_from_the_model() {
        assert_eq!(effect_of("SET search_path TO a, b"), Effect::Track(vec!["SET search_path TO a, b".into()]));
        assert_eq!(effect_of("  reset search_path;"), Effect::Track(vec!["reset search_path".into()]));
        assert_eq!(
            effect_of("CREATE SCHEMA s; SET search_path TO s"),
            Effect::Track(vec!["SET search_path TO s".into()])
        );
        assert_eq!(effect_of("SELECT 'x;SET y=1'"), Effect::None);
        assert_eq!(effect_of("SELECT 'x'; SET y.z=1"), Effect::Track(vec!["SET y.z=1".into()]));
        assert_eq!(effect_of("SET LOCAL statement_timeout = 5"), Effect::None);
        assert_eq!(effect_of("set transaction isolation level serializable"), Effect::None);
        assert_eq!(effect_of("UPDATE t SET a = 1"), Effect::None);
        assert_eq!(
            effect_of("select set_config('a.b', 'c', false)"),
            Effect::Track(vec!["SELECT pg_catalog.set_config('a.b', 'c', false)".into()])
        );
        assert_eq!(effect_of("select set_config('a.b', 'c', true)"), Effect::None);
        assert_eq!(effect_of("select set_config(k, 'c', false) from t"), Effect::Dirty);
        assert_eq!(effect_of("SET a.b = 1; DISCARD ALL"), Effect::Dirty);
        assert_eq!(effect_of("select my_function()"), Effect::Dirty);
        assert_eq!(effect_of("LISTEN chan"), Effect::Pin);
        assert_eq!(effect_of("create temp table x (a int)"), Effect::Pin);
        assert_eq!(effect_of("CREATE LOCAL TEMPORARY TABLE x (a int)"), Effect::Pin);
        assert_eq!(effect_of("create temp table x (a int) on commit drop"), Effect::None);
        assert_eq!(effect_of("declare c cursor with hold for select 1"), Effect::Pin);
        assert_eq!(effect_of("select pg_advisory_lock(1)"), Effect::Pin);
        assert_eq!(effect_of("select pg_advisory_xact_lock(1)"), Effect::None);
        assert_eq!(effect_of("select 1"), Effect::None);
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
