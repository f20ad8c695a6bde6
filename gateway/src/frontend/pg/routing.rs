//! Which server a Postgres-door transaction starts on, when read replicas
//! are configured (`upstream::replicas`).
//!
//! The door decides when it checks a connection out, from what the client
//! has sent so far — it never guesses ahead of the client:
//! - a simple Query goes to a replica when every statement in it is
//!   [`crate::sql::Statement::replica_safe`] (autocommit reads, or a
//!   `BEGIN READ ONLY` whose transaction the server then holds to reads);
//! - an extended-protocol batch (Parse/Bind/Describe/Execute … Sync) goes to
//!   a replica only when its Sync is already buffered and every statement
//!   it binds or parses up to that Sync may: a batch still arriving, or one
//!   that writes anywhere before its Sync, starts on the primary. Drivers
//!   (libpq, psycopg, asyncpg, node-postgres, pgbench) write a batch in one
//!   go, so their reads are routed; a pipeline longer than the buffer is not.
//!
//! Everything after the checkout runs where the transaction started, until
//! it ends.

use std::collections::HashMap;

use super::messages::{FrontendMessage, decode};
use super::statements::Registry;
use crate::ids::TenantId;
use crate::sql::SqlParser;

/// Does the rest of an extended-protocol batch — `frames`, the messages the
/// client has sent after the one being handled — only read, up to its Sync?
/// `parsed` names a statement parsed by the message being handled (its
/// name, and whether it only reads), which the batch's Binds may use.
pub async fn batch_reads_only<'a>(
    frames: impl Iterator<Item = (u8, &'a [u8])>,
    parsed: Option<(&[u8], bool)>,
    registry: &Registry,
    sql: &SqlParser,
    tenant: TenantId,
) -> bool {
    // Statements parsed within the batch shadow the registry.
    let mut local: HashMap<Vec<u8>, bool> = HashMap::new();
    if let Some((name, reads)) = parsed {
        local.insert(name.to_vec(), reads);
    }
    for (tag, body) in frames {
        let Ok(msg) = decode(tag, body) else { return false };
        match msg {
            FrontendMessage::Sync => return true,
            FrontendMessage::Parse(p) => {
                let Ok(text) = std::str::from_utf8(p.query) else { return false };
                let reads = match sql.parse(tenant, text).await {
                    Ok(parsed) => parsed.statements.iter().all(crate::sql::Statement::replica_safe),
                    Err(_) => false,
                };
                if !reads {
                    return false;
                }
                local.insert(p.name.to_vec(), true);
            }
            FrontendMessage::Bind(b) => {
                let reads = match local.get(b.statement) {
                    Some(r) => *r,
                    None if b.statement.is_empty() => registry.unnamed().is_some_and(|(s, _)| s.reads_only),
                    None => registry.get(b.statement).is_some_and(|s| s.reads_only),
                };
                if !reads {
                    return false;
                }
            }
            FrontendMessage::Describe(_)
            | FrontendMessage::Execute { .. }
            | FrontendMessage::Close(_)
            | FrontendMessage::Flush => {}
            _ => return false,
        }
    }
    false
}
