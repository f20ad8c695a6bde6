//! Text rewrites the Postgres door needs, located with the server's own
//! lexer (libpg_query's scanner), never with text matching.
//!
//! Today one: SQL-level `EXECUTE name` and `DEALLOCATE name` of a statement
//! the client prepared over the protocol act on the door's upstream copy, so
//! the name is replaced.

use pg_query::protobuf::Token;

use super::statement::{Kind, Statement};

/// The prepared statement a top-level `EXECUTE` or `DEALLOCATE name` names.
pub fn statement_named(st: &Statement) -> Option<&str> {
    match st.kind {
        Kind::Execute => st.executes.as_deref(),
        Kind::Deallocate => st.session.iter().find_map(|e| match e {
            super::SessionEffect::Deallocate { name } => name.as_deref(),
            _ => None,
        }),
        _ => None,
    }
}

/// `text` with the statement name of every top-level `EXECUTE` and
/// `DEALLOCATE name` that `rename` maps replaced; `None` when nothing
/// changes (or the text cannot be scanned, which cannot happen for text
/// that parsed).
pub fn rename_statements(
    text: &str,
    statements: &[Statement],
    mut rename: impl FnMut(&str) -> Option<String>,
) -> Option<String> {
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    for st in statements {
        let Some(new) = statement_named(st).and_then(&mut rename) else { continue };
        // Never empty here (it is an EXECUTE or DEALLOCATE): pg_query's
        // scan_tokens must not see a text without tokens.
        if st.text.trim().is_empty() {
            continue;
        }
        let tokens = pg_query::scan_tokens(&st.text).ok()?;
        let mut words =
            tokens.iter().filter(|t| t.token != Token::SqlComment as i32 && t.token != Token::CComment as i32);
        // EXECUTE / DEALLOCATE [PREPARE] first, then the name.
        let Some(kw) = words.next() else { continue };
        if kw.token != Token::Execute as i32 && kw.token != Token::Deallocate as i32 {
            continue;
        }
        let mut name = words.next();
        if kw.token == Token::Deallocate as i32 && name.is_some_and(|t| t.token == Token::Prepare as i32) {
            name = words.next();
        }
        let Some(name) = name else { continue };
        let (start, end) = (usize::try_from(name.start).ok()?, usize::try_from(name.end).ok()?);
        edits.push((st.offset + start, st.offset + end, new));
    }
    if edits.is_empty() {
        return None;
    }
    let mut out = text.to_owned();
    for (start, end, new) in edits.into_iter().rev() {
        out.get(start..end)?;
        out.replace_range(start..end, &new);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::parser::parse_text;

    fn rewrite(sql: &str) -> Option<String> {
        let p = parse_text(sql).expect("parses");
        rename_statements(sql, &p.statements, |n| (n == "foo").then(|| "sl_9".to_owned()))
    }

    #[test]
    fn renames_only_executes_of_known_statements() {
        assert_eq!(rewrite("EXECUTE foo(1, 'foo')").as_deref(), Some("EXECUTE sl_9(1, 'foo')"));
        assert_eq!(rewrite("/* c */ execute \"foo\"").as_deref(), Some("/* c */ execute sl_9"));
        assert_eq!(
            rewrite("SELECT 1; EXECUTE foo; EXECUTE bar").as_deref(),
            Some("SELECT 1; EXECUTE sl_9; EXECUTE bar")
        );
        assert_eq!(rewrite("EXECUTE bar"), None);
        assert_eq!(rewrite("SELECT 'EXECUTE foo'"), None);
        assert_eq!(rewrite("EXPLAIN EXECUTE foo"), None);
        assert_eq!(
            rewrite("EXECUTE foo; DEALLOCATE PREPARE foo").as_deref(),
            Some("EXECUTE sl_9; DEALLOCATE PREPARE sl_9")
        );
        assert_eq!(rewrite("deallocate foo").as_deref(), Some("deallocate sl_9"));
        assert_eq!(rewrite("DEALLOCATE ALL"), None);
    }
}
