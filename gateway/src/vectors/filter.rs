//! Metadata filters → a parameterized SQL condition over the `metadata` jsonb
//! column. Field paths and values always travel as bind parameters; the SQL text
//! is built only from fixed fragments.
//!
//! ```json
//! {"color": "red"}                                   // eq shorthand
//! {"price": {"gte": 10, "lt": 20}}                   // range (numbers or strings)
//! {"tag": {"in": ["a", "b"]}, "shop.city": {"ne": "Oslo"}}  // dotted paths
//! {"or": [{"color": "red"}, {"not": {"size": {"exists": true}}}]}
//! ```
//! Operators: `eq`, `ne`, `in`, `nin`, `gt`, `gte`, `lt`, `lte`, `exists`;
//! combinators `and`, `or`, `not`. Sibling keys are joined with AND.

use serde_json::{Map, Value};

use crate::sql::params::Param;

const MAX_DEPTH: usize = 8;
const MAX_CONDITIONS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter{at}: {problem}")]
pub struct FilterError {
    pub at: String,
    pub problem: String,
}

/// A compiled filter: SQL text with `$n` placeholders starting at the `first`
/// number given to [`compile`], and the values to bind.
#[derive(Debug, Default)]
pub struct Compiled {
    pub sql: String,
    pub params: Vec<Param>,
}

struct Builder {
    next: usize,
    params: Vec<Param>,
    conditions: usize,
}

impl Builder {
    fn bind(&mut self, p: Param) -> String {
        self.params.push(p);
        let n = self.next;
        self.next += 1;
        format!("${n}")
    }
}

/// Compile `filter`; placeholders start at `$first`.
pub fn compile(filter: &Value, first: usize) -> Result<Compiled, FilterError> {
    let mut b = Builder { next: first, params: Vec::new(), conditions: 0 };
    let sql = node(&mut b, filter, "", 0)?;
    Ok(Compiled { sql, params: b.params })
}

fn err(at: &str, problem: impl Into<String>) -> FilterError {
    FilterError { at: if at.is_empty() { String::new() } else { format!(" at {at}") }, problem: problem.into() }
}

fn node(b: &mut Builder, v: &Value, at: &str, depth: usize) -> Result<String, FilterError> {
    if depth > MAX_DEPTH {
        return Err(err(at, format!("nested deeper than {MAX_DEPTH} levels")));
    }
    let Value::Object(map) = v else { return Err(err(at, "expected an object")) };
    if map.is_empty() {
        return Ok("TRUE".into());
    }
    let mut parts = Vec::new();
    for (key, val) in map {
        let here = format!("{at}/{key}");
        let part = match key.as_str() {
            "and" | "or" => {
                let Value::Array(items) = val else { return Err(err(&here, "expected an array of filters")) };
                if items.is_empty() {
                    return Err(err(&here, "needs at least one filter"));
                }
                let subs = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| node(b, item, &format!("{here}/{i}"), depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                format!("({})", subs.join(if key == "and" { " AND " } else { " OR " }))
            }
            "not" => format!("(NOT {})", node(b, val, &here, depth + 1)?),
            field => field_condition(b, field, val, &here)?,
        };
        parts.push(part);
    }
    Ok(if parts.len() == 1 { parts.remove(0) } else { format!("({})", parts.join(" AND ")) })
}

fn path(field: &str, at: &str) -> Result<Vec<String>, FilterError> {
    let segs: Vec<String> = field.split('.').map(str::to_owned).collect();
    if field.is_empty() || field.len() > 256 || segs.iter().any(String::is_empty) {
        return Err(err(at, "field names are non-empty dotted paths of at most 256 bytes"));
    }
    Ok(segs)
}

/// `{"a": {"b": value}}` for a containment test on path a.b.
fn nest(path: &[String], value: Value) -> Value {
    path.iter().rev().fold(value, |inner, seg| {
        let mut m = Map::new();
        m.insert(seg.clone(), inner);
        Value::Object(m)
    })
}

fn field_condition(b: &mut Builder, field: &str, val: &Value, at: &str) -> Result<String, FilterError> {
    let segs = path(field, at)?;
    let ops = match val {
        Value::Object(ops) if ops.keys().all(|k| OPS.contains(&k.as_str())) && !ops.is_empty() => ops.clone(),
        Value::Object(_) => {
            return Err(err(
                at,
                format!("operators are {}; to match a nested object use dotted paths", OPS.join(", ")),
            ));
        }
        literal => {
            let mut m = Map::new();
            m.insert("eq".into(), literal.clone());
            m
        }
    };
    let mut parts = Vec::new();
    for (op, arg) in &ops {
        b.conditions += 1;
        if b.conditions > MAX_CONDITIONS {
            return Err(err(at, format!("more than {MAX_CONDITIONS} conditions")));
        }
        let here = format!("{at}/{op}");
        parts.push(op_condition(b, &segs, op, arg, &here)?);
    }
    Ok(if parts.len() == 1 { parts.remove(0) } else { format!("({})", parts.join(" AND ")) })
}

const OPS: &[&str] = &["eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "exists"];

fn op_condition(b: &mut Builder, segs: &[String], op: &str, arg: &Value, at: &str) -> Result<String, FilterError> {
    let path_param = |b: &mut Builder| b.bind(Param::Array(segs.iter().cloned().map(Param::Text).collect()));
    Ok(match op {
        // Containment uses the GIN index on metadata.
        "eq" => format!("(metadata @> {}::jsonb)", b.bind(Param::Json(nest(segs, arg.clone())))),
        "ne" => format!("(NOT (metadata @> {}::jsonb))", b.bind(Param::Json(nest(segs, arg.clone())))),
        "in" | "nin" => {
            let Value::Array(items) = arg else { return Err(err(at, "expected an array of values")) };
            if items.is_empty() || items.len() > 1000 {
                return Err(err(at, "expected 1 to 1000 values"));
            }
            let p = path_param(b);
            let list = b.bind(Param::Array(items.iter().cloned().map(Param::Json).collect()));
            if op == "in" {
                format!("((metadata #> {p}::text[]) = ANY({list}::jsonb[]))")
            } else {
                format!("(COALESCE((metadata #> {p}::text[]) <> ALL({list}::jsonb[]), TRUE))")
            }
        }
        "gt" | "gte" | "lt" | "lte" => {
            let sym = match op {
                "gt" => ">",
                "gte" => ">=",
                "lt" => "<",
                _ => "<=",
            };
            match arg {
                Value::Number(n) => {
                    let f = n.as_f64().ok_or_else(|| err(at, "number out of range"))?;
                    let p = path_param(b);
                    let v = b.bind(Param::F64(f));
                    format!(
                        "(CASE WHEN jsonb_typeof(metadata #> {p}::text[]) = 'number' \
                         THEN (metadata #>> {p}::text[])::float8 END {sym} {v}::float8)"
                    )
                }
                Value::String(s) => {
                    let p = path_param(b);
                    let v = b.bind(Param::Text(s.clone()));
                    format!(
                        "(CASE WHEN jsonb_typeof(metadata #> {p}::text[]) = 'string' \
                         THEN metadata #>> {p}::text[] END {sym} {v}::text COLLATE \"C\")"
                    )
                }
                _ => return Err(err(at, "expected a number or a string")),
            }
        }
        "exists" => {
            let Value::Bool(want) = arg else { return Err(err(at, "expected true or false")) };
            let p = path_param(b);
            format!("((metadata #> {p}::text[]) IS {}NULL)", if *want { "NOT " } else { "" })
        }
        other => return Err(err(at, format!("unknown operator {other:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn compiles_with_numbered_params() {
        let c = compile(&json!({"color": "red", "price": {"gte": 10, "lt": 20}}), 3).expect("ok");
        assert_eq!(c.params.len(), 5);
        assert!(c.sql.contains("metadata @> $3::jsonb"), "{}", c.sql);
        assert!(c.sql.contains("$7::float8"), "{}", c.sql);
        assert!(!c.sql.contains("red"), "values are never in the SQL text");
    }

    #[test]
    fn combinators_and_paths() {
        let c = compile(&json!({"or": [{"a.b": {"in": [1, 2]}}, {"not": {"c": {"exists": true}}}]}), 1).expect("ok");
        assert!(c.sql.starts_with("(("), "{}", c.sql);
        assert!(c.sql.contains(" OR "));
        assert!(c.sql.contains("NOT"));
        assert_eq!(compile(&json!({}), 1).expect("ok").sql, "TRUE");
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = compile(&json!({"price": {"between": [1, 2]}}), 1).expect_err("bad op");
        assert!(e.to_string().contains("at /price"), "{e}");
        let e = compile(&json!({"and": {}}), 1).expect_err("bad and");
        assert!(e.to_string().contains("/and"), "{e}");
        let e = compile(&json!({"x": {"gt": true}}), 1).expect_err("bad gt");
        assert!(e.to_string().contains("/x/gt"), "{e}");
        assert!(compile(&json!({"": 1}), 1).is_err());
        assert!(compile(&json!([1]), 1).is_err());
        let mut deep = json!({"a": 1});
        for _ in 0..10 {
            deep = json!({ "not": deep });
        }
        assert!(compile(&deep, 1).is_err());
    }
}
