//! Names of the functions Postgres 16 ships in `pg_catalog`
//! (`builtin_functions.txt`, one per line, from `pg_proc` of the stack's own
//! server; the integration test `sql_model::builtins_match_server` checks it).
//! A call of any other function is opaque to the statement model.

use std::collections::HashSet;
use std::sync::LazyLock;

static BUILTINS: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| include_str!("builtin_functions.txt").lines().map(str::trim).filter(|l| !l.is_empty()).collect());

/// Whether `name` (unqualified, as the parser folded it) is a built-in function.
pub fn is_builtin(name: &str) -> bool {
    BUILTINS.contains(name)
}

/// Every built-in name (for the check against a live server).
pub fn all() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().copied()
}
