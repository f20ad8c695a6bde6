//! Statement *shapes*: a text's token sequence with literal values left out,
//! from the server's own lexer (libpg_query's scanner).
//!
//! Clients that send literals inline (psql, ORMs without bind parameters,
//! `pgbench -M simple`) send a new text for every query, so the text cache
//! never hits and each one would cost a full parse and analysis (about
//! 20 µs for pgbench's SELECT). Postgres's grammar works on token types, so
//! two texts with the same tokens except for the values of literals parse to
//! trees of the same form, and their models differ only where the analysis
//! reads a literal value. A shape's cached model is reused for a new text
//! only when it reads none ([`reusable`]): one statement, no session effect
//! (those carry `SET` values and `set_config` arguments), not `EXPLAIN`
//! (its options may be literals). The scan costs a small part of a parse.
//!
//! Shapes are compared byte for byte on a hit (the hash only finds the
//! candidate), so a collision can never hand out another statement's model.

use pg_query::protobuf::Token;
use xxhash_rust::xxh3::xxh3_64;

use super::parser::Parsed;
use super::statement::{Kind, Statement};

/// Longest text whose shape is computed and cached.
pub const MAX_SHAPE_TEXT: usize = 4 << 10;

/// A text's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub hash: u64,
    /// Token types, and the text of every token that is not a literal.
    /// (A `Vec`: most shapes are only looked up; the cache shrinks the ones
    /// it keeps.)
    pub bytes: Vec<u8>,
    /// Where the statement starts (its first token: Postgres's
    /// `stmt_location`) and ends (the first of the `;` that end the text).
    pub start: usize,
    pub end: Option<usize>,
}

/// The shape of `text`; `None` for texts with more than one statement, that
/// do not scan, or are too long.
pub fn shape_of(text: &str) -> Option<Shape> {
    // No tokens at all: pg_query's scan_tokens would build a slice from a
    // null pointer (undefined behaviour), so such texts never reach it.
    if text.len() > MAX_SHAPE_TEXT || text.trim().is_empty() || text.contains('\0') {
        return None;
    }
    let tokens = std::panic::catch_unwind(|| pg_query::scan_tokens(text)).ok()?.ok()?;
    // The tokens without comments, walked a few times rather than collected.
    let words = || tokens.iter().filter(|t| !matches!(t.token, SQL_COMMENT | C_COMMENT));
    // One statement: no `;` before the last token that is not one.
    let last = words().enumerate().filter(|(_, t)| t.token != SEMICOLON).last()?.0;
    if words().take(last).any(|t| t.token == SEMICOLON) {
        return None;
    }
    // Each token adds its type (2 bytes), and one that is not a literal its
    // length (4) and text: room for all, so the vector never grows.
    let mut shape = Vec::with_capacity(text.len() + tokens.len() * 6);
    for t in words() {
        shape.extend_from_slice(&t.token.to_le_bytes()[..2]);
        if !matches!(t.token, SCONST | USCONST | ICONST | FCONST | BCONST | XCONST) {
            let word = text.get(usize::try_from(t.start).ok()?..usize::try_from(t.end).ok()?)?;
            shape.extend_from_slice(&u32::try_from(word.len()).ok()?.to_le_bytes());
            shape.extend_from_slice(word.as_bytes());
        }
    }
    let end = match words().nth(last + 1) {
        Some(t) => Some(usize::try_from(t.start).ok()?),
        None => None,
    };
    let start = usize::try_from(words().next()?.start).ok()?;
    Some(Shape { hash: xxh3_64(&shape), bytes: shape, start, end })
}

const SEMICOLON: i32 = Token::Ascii59 as i32;
const SQL_COMMENT: i32 = Token::SqlComment as i32;
const C_COMMENT: i32 = Token::CComment as i32;
// The literals, whose values a shape leaves out.
const SCONST: i32 = Token::Sconst as i32;
const USCONST: i32 = Token::Usconst as i32;
const ICONST: i32 = Token::Iconst as i32;
const FCONST: i32 = Token::Fconst as i32;
const BCONST: i32 = Token::Bconst as i32;
const XCONST: i32 = Token::Xconst as i32;

/// Does the model of `p` read no literal value, so that another text of the
/// same shape has the same model?
pub fn reusable(p: &Parsed) -> bool {
    matches!(p.statements.as_slice(), [st] if st.session.is_empty() && st.kind != Kind::Explain && st.explain.is_none())
}

/// The model of `text` (whose shape is `shape`), a text of the same shape
/// as the one `model` came from: the same statement, with its own text and
/// offset (computed as the parser computes them: Postgres ends a statement
/// at its `;`).
pub fn instantiate(model: &Statement, text: &str, shape: &Shape) -> Parsed {
    let end = shape.end.unwrap_or(text.len());
    let slice = text.get(shape.start..end).unwrap_or(text);
    let trimmed = slice.trim_start();
    let offset = shape.start + (slice.len() - trimmed.len());
    let own = trimmed.trim_end().trim_end_matches(';').trim_end();
    let mut st = model.clone();
    st.text = own.to_owned();
    st.offset = offset;
    Parsed { text: text.into(), statements: vec![st] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::parser::parse_text;

    #[test]
    fn literals_do_not_change_the_shape() {
        let a = shape_of("SELECT abalance FROM pgbench_accounts WHERE aid = 1;").expect("shape");
        let b = shape_of("SELECT abalance FROM pgbench_accounts WHERE aid = 98765;").expect("shape");
        assert_eq!((a.hash, &a.bytes), (b.hash, &b.bytes));
        let c = shape_of("SELECT abalance FROM pgbench_accounts WHERE bid = 1;").expect("shape");
        assert_ne!(a.bytes, c.bytes, "identifiers are part of the shape");
        assert_ne!(shape_of("SELECT 'a'").map(|s| s.bytes), shape_of("SELECT \"a\"").map(|s| s.bytes));
        assert_ne!(shape_of("SELECT $$x$$").map(|s| s.bytes), shape_of("SELECT $$x$$::regclass").map(|s| s.bytes));
        assert!(shape_of("SELECT 1; SELECT 2").is_none(), "one statement only");
        assert!(shape_of("SELECT 1;;").is_some());
        assert!(shape_of("SELECT 'unterminated").is_none());
        for empty in ["", "  \n ", "-- only a comment", "/* c */", ";"] {
            let _ = shape_of(empty);
        }
    }

    #[test]
    fn a_reused_model_equals_a_fresh_parse() {
        for (first, second) in [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
                "  SELECT abalance FROM pgbench_accounts WHERE aid = 2 ;",
            ),
            ("UPDATE t SET a = 'x' WHERE id = 5", "UPDATE t SET a = 'yy' WHERE id = 777"),
            ("INSERT INTO s.t VALUES (1, 2.5, E'\\n', B'101')", "INSERT INTO s.t VALUES (9, 0.1, E'x', B'0')"),
            ("DO $$BEGIN PERFORM 1; END$$", "DO $$BEGIN DROP TABLE x; END$$"),
            ("SELECT 1; -- trailing", "SELECT 2; -- trailing"),
            ("/* lead */ SELECT 1 -- x;", "/* lead */ SELECT 22 -- x;"),
        ] {
            let p = parse_text(first).expect("parses");
            let fresh = parse_text(second).expect("parses");
            let (a, b) = (shape_of(first).expect("shape"), shape_of(second).expect("shape"));
            assert_eq!(a.bytes, b.bytes, "{first} / {second}");
            assert!(reusable(&p), "{first}");
            let reused = instantiate(&p.statements[0], second, &b);
            assert_eq!(reused.statements, fresh.statements, "{second}");
        }
        assert!(!reusable(&parse_text("SET search_path = a").expect("parses")));
        assert!(!reusable(&parse_text("SELECT set_config('a.b', 'c', false)").expect("parses")));
        assert!(!reusable(&parse_text("EXPLAIN (ANALYZE 0) SELECT 1").expect("parses")));
        assert!(!reusable(&parse_text("SELECT pg_advisory_lock(1)").expect("parses")));
    }
}
