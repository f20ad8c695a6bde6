//! Small, dependency-free SQL inspection for policies: the statement's leading
//! keyword, whether it is DDL, and the tables it names. A lexer, not a parser:
//! good enough for allowlists, and it errs on the side of reporting more tables.

/// Keywords that start a schema-changing statement.
const DDL: &[&str] = &["CREATE", "ALTER", "DROP", "TRUNCATE", "COMMENT", "GRANT", "REVOKE", "REINDEX", "CLUSTER", "VACUUM"];

/// Keywords after which a table name follows.
const TABLE_BEFORE: &[&str] = &["FROM", "JOIN", "INTO", "UPDATE", "TABLE"];

/// Split SQL into upper-cased words and identifiers, skipping comments and
/// string literals. Quoted identifiers keep their case and lose their quotes.
pub fn tokens(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == '-' && b.get(i + 1) == Some(&'-') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && b.get(i + 1) == Some(&'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == '\'' {
            i += 1;
            while i < b.len() {
                if b[i] == '\'' {
                    if b.get(i + 1) == Some(&'\'') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
            out.push("'".into());
        } else if c == '"' {
            let start = i + 1;
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += 1;
            }
            out.push(b[start..i.min(b.len())].iter().collect());
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == '$') {
                i += 1;
            }
            out.push(b[start..i].iter().collect::<String>().to_uppercase());
        } else {
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
            i += 1;
        }
    }
    out
}

/// The statement's first keyword, upper-cased (`SELECT`, `CREATE`, …).
pub fn leading_keyword(sql: &str) -> Option<String> {
    tokens(sql).into_iter().find(|t| t != "(")
}

/// Whether the statement changes the schema or permissions.
pub fn is_ddl(sql: &str) -> bool {
    leading_keyword(sql).is_some_and(|k| DDL.contains(&k.as_str()))
}

/// Tables the statement names after FROM/JOIN/INTO/UPDATE/TABLE, lower-cased,
/// without a schema qualifier.
pub fn tables(sql: &str) -> Vec<String> {
    let t = tokens(sql);
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        if TABLE_BEFORE.contains(&t[i].as_str()) {
            let mut j = i + 1;
            while j < t.len() && matches!(t[j].as_str(), "ONLY" | "LATERAL") {
                j += 1;
            }
            if let Some(name) = t.get(j)
                && name != "("
                && name != "'"
            {
                let mut name = name.clone();
                if t.get(j + 1).map(String::as_str) == Some(".")
                    && let Some(n) = t.get(j + 2)
                {
                    name = n.clone();
                }
                out.push(name.to_lowercase());
            }
        }
        i += 1;
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert!(is_ddl("  create table t (a int)"));
        assert!(is_ddl("DROP TABLE x"));
        assert!(!is_ddl("select 1"));
        assert_eq!(tables("SELECT * FROM public.notes n JOIN \"Users\" u ON true"), vec!["notes", "users"]);
        assert_eq!(tables("insert into notes values ('from x')"), vec!["notes"]);
    }
}
