//! The prepared statements one upstream connection holds on behalf of the
//! door's clients.
//!
//! A client statement is identified by its [`StatementKey`] (hash of query
//! text and parameter types). A connection holds at most one *copy* of each
//! key, under an upstream name unique in this process (`sl_<seq>`); `seq`
//! orders copies in time, so the door can tell whether a copy was prepared
//! after a client's own Parse (fresh enough to serve it) or before (possibly
//! planned against a catalog that has changed since; the door prepares a
//! new one). Copies are kept in LRU order, at most [`MAX_COPIES`] per
//! connection; evicted and replaced copies are queued in `to_close` and
//! closed on the server when the connection is next taken from the pool,
//! never in the middle of a transaction (closing a statement would close
//! the portals bound from it).

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;
use sha2::{Digest, Sha256};

/// Most statement copies one upstream connection holds (like PgBouncer's
/// `max_prepared_statements`; each costs server memory).
pub const MAX_COPIES: usize = 250;

/// Query text and parameter types of a statement, hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatementKey([u8; 16]);

impl StatementKey {
    /// For the unnamed statement, which is never shared between clients.
    pub const UNNAMED: StatementKey = StatementKey([0; 16]);

    pub fn of(query: &[u8], param_types: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update((query.len() as u64).to_le_bytes());
        h.update(query);
        h.update(param_types);
        let d = h.finalize();
        let mut k = [0u8; 16];
        k.copy_from_slice(&d[..16]);
        StatementKey(k)
    }
}

/// A process-wide increasing sequence number: copy names and freshness.
pub fn next_seq() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(1);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// The upstream name of copy `seq`.
pub fn copy_name(seq: u64) -> Box<[u8]> {
    format!("sl_{seq}").into_bytes().into_boxed_slice()
}

/// One prepared statement on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub name: Box<[u8]>,
    pub seq: u64,
}

/// The copies a connection holds.
pub struct Prepared {
    copies: LruCache<StatementKey, Copy>,
    /// Names to close on the server at the next checkout.
    pub to_close: Vec<Box<[u8]>>,
}

impl Default for Prepared {
    fn default() -> Self {
        Prepared {
            copies: LruCache::new(NonZeroUsize::new(MAX_COPIES).unwrap_or(NonZeroUsize::MIN)),
            to_close: Vec::new(),
        }
    }
}

impl Prepared {
    /// The copy of `key` if it was prepared at or after `since` (marks it
    /// recently used).
    pub fn fresh(&mut self, key: &StatementKey, since: u64) -> Option<&Copy> {
        self.copies.get(key).filter(|c| c.seq >= since)
    }

    /// Record a new copy of `key` (its Parse is being sent); an older copy
    /// of the same key, or the least recently used one when full, is queued
    /// for closing.
    pub fn insert(&mut self, key: StatementKey, copy: Copy) {
        let name = copy.name.clone();
        if let Some((_, old)) = self.copies.push(key, copy)
            && old.name != name
        {
            self.to_close.push(old.name);
        }
    }

    /// Forget a copy whose Parse failed or was skipped (it does not exist on
    /// the server).
    pub fn forget(&mut self, key: &StatementKey, name: &[u8]) {
        if self.copies.peek(key).is_some_and(|c| &*c.name == name) {
            self.copies.pop(key);
        }
    }

    /// Forget everything (after `DISCARD ALL` / `DEALLOCATE ALL` on the server).
    pub fn clear(&mut self) {
        self.copies.clear();
        self.to_close.clear();
    }

    pub fn len(&self) -> usize {
        self.copies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.copies.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_replacement_and_eviction() {
        let mut p = Prepared::default();
        let k = StatementKey::of(b"select $1", b"");
        assert_ne!(k, StatementKey::of(b"select $1", b"\0\0\0\x17"));
        p.insert(k, Copy { name: copy_name(5), seq: 5 });
        assert!(p.fresh(&k, 5).is_some());
        assert!(p.fresh(&k, 6).is_none(), "prepared before the client's Parse");
        p.insert(k, Copy { name: copy_name(7), seq: 7 });
        assert_eq!(p.to_close, vec![copy_name(5)]);
        assert_eq!(p.fresh(&k, 6).map(|c| c.seq), Some(7));
        p.forget(&k, &copy_name(7));
        assert!(p.is_empty());
        for i in 0..(MAX_COPIES as u64 + 3) {
            p.insert(
                StatementKey::of(format!("select {i}").as_bytes(), b""),
                Copy { name: copy_name(100 + i), seq: 100 + i },
            );
        }
        assert_eq!(p.len(), MAX_COPIES);
        assert_eq!(p.to_close.len(), 4, "the replaced copy and three evicted ones");
        assert_eq!(p.to_close[1], copy_name(100), "least recently used goes first");
    }
}
