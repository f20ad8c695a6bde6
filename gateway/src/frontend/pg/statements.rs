//! A client's own prepared statements, under the client's own names.
//!
//! Under transaction pooling a client's statements must outlive the
//! upstream connection it prepared them on. The door keeps each statement's
//! query, parameter types and the sequence number of the client's Parse
//! ([`ClientStatement::since`]); on whichever connection the client lands,
//! it uses that connection's copy when the copy was prepared at or after the
//! client's Parse, and prepares a new copy otherwise (see
//! [`crate::upstream::pg_wire::prepared`]). So a statement is never planned
//! against a catalog older than the one the client's own Parse saw, and
//! `Describe` always reaches a server copy that fresh.
//!
//! Names are the client's: `Close`, `DEALLOCATE name|ALL` and `DISCARD ALL`
//! act on this registry only; the upstream copies stay for other clients.
//! The unnamed statement is kept too, so `Parse ""` in one transaction and
//! `Bind ""` in a later one work across a pool switch, and it is dropped
//! where Postgres drops it (the next unnamed Parse, a simple Query).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::messages::error::PgError;
use crate::upstream::pg_wire::prepared::StatementKey;

/// Most named statements one session may hold.
pub const MAX_STATEMENTS: usize = 10_000;
/// Most bytes of statement text (and parameter types) one session may hold.
pub const MAX_STATEMENT_BYTES: usize = 64 << 20;

/// One statement the client prepared over the protocol.
#[derive(Debug)]
pub struct ClientStatement {
    pub key: StatementKey,
    pub query: Bytes,
    pub param_types: Bytes,
    /// Sequence number of the client's Parse: copies older than this are
    /// not used for it.
    pub since: u64,
    /// Session state to record when an execution of it completes.
    pub track: Option<Vec<String>>,
    /// It is `DISCARD ALL`: an execution resets the session.
    pub discards_all: bool,
    /// Its executions pin the session or dirty the connection they run on.
    pub pins: bool,
    pub dirties: bool,
    /// It may run on a read replica ([`crate::sql::Statement::replica_safe`]).
    pub reads_only: bool,
}

impl ClientStatement {
    fn size(&self) -> usize {
        self.query.len() + self.param_types.len() + 64
    }
}

/// The statements of one session.
#[derive(Debug, Default)]
pub struct Registry {
    named: HashMap<Box<[u8]>, Arc<ClientStatement>>,
    bytes: usize,
    /// The unnamed statement, and its generation (bumped by every unnamed
    /// Parse, so a connection can tell whether it holds the current one).
    unnamed: Option<Arc<ClientStatement>>,
    unnamed_gen: u64,
}

impl Registry {
    pub fn get(&self, name: &[u8]) -> Option<Arc<ClientStatement>> {
        self.named.get(name).cloned()
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.named.contains_key(name)
    }

    /// Is there room for one more named statement of `size` bytes?
    pub fn check_room(&self, query: &[u8], param_types: &[u8]) -> Result<(), PgError> {
        if self.named.len() >= MAX_STATEMENTS || self.bytes + query.len() + param_types.len() > MAX_STATEMENT_BYTES {
            return Err(PgError::error(
                "54000",
                format!(
                    "too many prepared statements in this session (the gateway keeps at most {MAX_STATEMENTS}, {} MiB of text)",
                    MAX_STATEMENT_BYTES >> 20
                ),
            )
            .with_hint("close or DEALLOCATE statements that are no longer used"));
        }
        Ok(())
    }

    pub fn insert(&mut self, name: &[u8], st: Arc<ClientStatement>) {
        self.bytes += st.size();
        if let Some(old) = self.named.insert(name.into(), st) {
            self.bytes -= old.size();
        }
    }

    /// Remove `name`; true if it existed.
    pub fn remove(&mut self, name: &[u8]) -> bool {
        match self.named.remove(name) {
            Some(old) => {
                self.bytes -= old.size();
                true
            }
            None => false,
        }
    }

    /// `DEALLOCATE ALL`: every named statement (the unnamed one stays).
    pub fn clear_named(&mut self) {
        self.named.clear();
        self.bytes = 0;
    }

    /// Set the unnamed statement; returns its generation.
    pub fn set_unnamed(&mut self, st: Option<Arc<ClientStatement>>) -> u64 {
        self.unnamed_gen += 1;
        self.unnamed = st;
        self.unnamed_gen
    }

    pub fn unnamed(&self) -> Option<(Arc<ClientStatement>, u64)> {
        self.unnamed.clone().map(|s| (s, self.unnamed_gen))
    }

    /// Drop the unnamed statement if it is still generation `generation`.
    pub fn drop_unnamed_gen(&mut self, generation: u64) {
        if self.unnamed_gen == generation {
            self.unnamed = None;
        }
    }

    /// `DISCARD ALL`.
    pub fn clear(&mut self) {
        self.clear_named();
        self.set_unnamed(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(q: &str) -> Arc<ClientStatement> {
        Arc::new(ClientStatement {
            key: StatementKey::of(q.as_bytes(), b""),
            query: Bytes::copy_from_slice(q.as_bytes()),
            param_types: Bytes::new(),
            since: 1,
            track: None,
            discards_all: false,
            pins: false,
            dirties: false,
            reads_only: true,
        })
    }

    #[test]
    fn names_bytes_and_unnamed_generations() {
        let mut r = Registry::default();
        r.insert(b"a", st("select 1"));
        assert!(r.contains(b"a"));
        assert!(r.check_room(b"x", b"").is_ok());
        assert!(r.check_room(&vec![b'x'; MAX_STATEMENT_BYTES], b"").is_err());
        assert!(r.remove(b"a"));
        assert!(!r.remove(b"a"));
        assert_eq!(r.bytes, 0);
        let g = r.set_unnamed(Some(st("select 2")));
        assert_eq!(r.unnamed().map(|(_, g)| g), Some(g));
        r.drop_unnamed_gen(g - 1);
        assert!(r.unnamed().is_some(), "an older generation's failure does not drop the current one");
        r.drop_unnamed_gen(g);
        assert!(r.unnamed().is_none());
    }
}
