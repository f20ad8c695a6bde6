//! JSON values → Postgres parameters, chosen by the type Postgres inferred for
//! each `$n` when the statement was prepared. Values are always bound as real
//! parameters (binary protocol), never spliced into SQL text.
//!
//! | Postgres type | JSON accepted |
//! |---|---|
//! | bool | `true`/`false` |
//! | int2, int4, int8, oid | integer (or a string of digits for int8) |
//! | float4, float8 | number |
//! | numeric | number or decimal string |
//! | text, varchar, bpchar, name, citext | string |
//! | json, jsonb | any value |
//! | timestamptz | RFC 3339 string |
//! | timestamp | `YYYY-MM-DDTHH:MM:SS[.ffffff]` |
//! | date | `YYYY-MM-DD` |
//! | uuid | string |
//! | bytea | base64 string |
//! | vector (pgvector) | array of numbers |
//! | arrays of the above | JSON array |
//!
//! `null` binds SQL NULL for any type.

use std::error::Error;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::BytesMut;
use rust_decimal::Decimal;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use tokio_postgres::types::{IsNull, Kind, ToSql, Type, to_sql_checked};

/// A JSON value converted for one parameter type.
#[derive(Debug, Clone)]
pub enum Param {
    Null,
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    U32(u32),
    F32(f32),
    F64(f64),
    Numeric(Decimal),
    Text(String),
    Json(Value),
    Timestamptz(time::OffsetDateTime),
    Timestamp(time::PrimitiveDateTime),
    Date(time::Date),
    Uuid(uuid::Uuid),
    Bytea(Vec<u8>),
    Vector(pgvector::Vector),
    Array(Vec<Param>),
}

impl ToSql for Param {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Param::Null => Ok(IsNull::Yes),
            Param::Bool(v) => v.to_sql(ty, out),
            Param::I16(v) => v.to_sql(ty, out),
            Param::I32(v) => v.to_sql(ty, out),
            Param::I64(v) => v.to_sql(ty, out),
            Param::U32(v) => v.to_sql(ty, out),
            Param::F32(v) => v.to_sql(ty, out),
            Param::F64(v) => v.to_sql(ty, out),
            Param::Numeric(v) => v.to_sql(ty, out),
            Param::Text(v) => v.to_sql(ty, out),
            Param::Json(v) => v.to_sql(ty, out),
            Param::Timestamptz(v) => v.to_sql(ty, out),
            Param::Timestamp(v) => v.to_sql(ty, out),
            Param::Date(v) => v.to_sql(ty, out),
            Param::Uuid(v) => v.to_sql(ty, out),
            Param::Bytea(v) => v.to_sql(ty, out),
            Param::Vector(v) => v.to_sql(ty, out),
            Param::Array(v) => v.to_sql(ty, out),
        }
    }

    // Conversion already matched the value to the statement's type.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Why a JSON value does not fit a parameter. `index` is 1-based, like `$n`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter ${index} ({ty}): {problem}")]
pub struct ParamError {
    pub index: usize,
    pub ty: String,
    pub problem: String,
}

/// Convert parameter `index` (1-based) to `ty`.
pub fn convert(value: &Value, ty: &Type, index: usize) -> Result<Param, ParamError> {
    let fail = |problem: String| ParamError { index, ty: ty.name().to_owned(), problem };
    convert_inner(value, ty).map_err(fail)
}

fn found(v: &Value) -> String {
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    format!("found {kind}")
}

fn convert_inner(v: &Value, ty: &Type) -> Result<Param, String> {
    if v.is_null() {
        return Ok(Param::Null);
    }
    if let Kind::Array(member) = ty.kind() {
        let Value::Array(items) = v else { return Err(format!("expected an array, {}", found(v))) };
        return items
            .iter()
            .enumerate()
            .map(|(i, item)| convert_inner(item, member).map_err(|e| format!("element {i}: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Param::Array);
    }
    let int = |v: &Value| -> Result<i64, String> {
        match v {
            Value::Number(n) => n.as_i64().ok_or_else(|| format!("expected an integer, found {n}")),
            Value::String(s) => s.trim().parse::<i64>().map_err(|_| format!("expected an integer, found string {s:?}")),
            other => Err(format!("expected an integer, {}", found(other))),
        }
    };
    let text = |v: &Value| -> Result<String, String> {
        v.as_str().map(str::to_owned).ok_or_else(|| format!("expected a string, {}", found(v)))
    };
    match *ty {
        Type::BOOL => v.as_bool().map(Param::Bool).ok_or_else(|| format!("expected true or false, {}", found(v))),
        Type::INT2 => i16::try_from(int(v)?).map(Param::I16).map_err(|_| "out of range for int2".into()),
        Type::INT4 => i32::try_from(int(v)?).map(Param::I32).map_err(|_| "out of range for int4".into()),
        Type::INT8 => int(v).map(Param::I64),
        Type::OID => u32::try_from(int(v)?).map(Param::U32).map_err(|_| "out of range for oid".into()),
        Type::FLOAT4 => {
            v.as_f64().map(|f| Param::F32(f as f32)).ok_or_else(|| format!("expected a number, {}", found(v)))
        }
        Type::FLOAT8 => v.as_f64().map(Param::F64).ok_or_else(|| format!("expected a number, {}", found(v))),
        Type::NUMERIC => {
            let s = match v {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                other => return Err(format!("expected a number or decimal string, {}", found(other))),
            };
            s.trim()
                .parse::<Decimal>()
                .or_else(|_| Decimal::from_scientific(s.trim()))
                .map(Param::Numeric)
                .map_err(|_| format!("{s:?} is not a decimal number (at most 28 significant digits)"))
        }
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => text(v).map(Param::Text),
        Type::JSON | Type::JSONB => Ok(Param::Json(v.clone())),
        Type::TIMESTAMPTZ => {
            let s = text(v)?;
            time::OffsetDateTime::parse(&s, &Rfc3339)
                .map(Param::Timestamptz)
                .map_err(|_| format!("{s:?} is not an RFC 3339 timestamp like 2026-01-31T12:00:00Z"))
        }
        Type::TIMESTAMP => {
            let s = text(v)?;
            let with_frac = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]");
            let without = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
            time::PrimitiveDateTime::parse(&s, &with_frac)
                .or_else(|_| time::PrimitiveDateTime::parse(&s, &without))
                .map(Param::Timestamp)
                .map_err(|_| format!("{s:?} is not a timestamp like 2026-01-31T12:00:00"))
        }
        Type::DATE => {
            let s = text(v)?;
            time::Date::parse(&s, format_description!("[year]-[month]-[day]"))
                .map(Param::Date)
                .map_err(|_| format!("{s:?} is not a date like 2026-01-31"))
        }
        Type::UUID => {
            let s = text(v)?;
            s.parse::<uuid::Uuid>().map(Param::Uuid).map_err(|_| format!("{s:?} is not a UUID"))
        }
        Type::BYTEA => {
            let s = text(v)?;
            STANDARD
                .decode(s.as_bytes())
                .map(Param::Bytea)
                .map_err(|_| "expected base64 (standard alphabet, padded)".into())
        }
        _ if ty.name() == "citext" => text(v).map(Param::Text),
        _ if ty.name() == "vector" => vector(v).map(Param::Vector),
        _ => Err("this type cannot be bound from JSON; cast the parameter in SQL, e.g. `$1::text::interval`".into()),
    }
}

/// A pgvector value from a JSON array of finite numbers.
pub fn vector(v: &Value) -> Result<pgvector::Vector, String> {
    let Value::Array(items) = v else { return Err(format!("expected an array of numbers, {}", found(v))) };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let f = item.as_f64().ok_or_else(|| format!("element {i}: expected a number, {}", found(item)))?;
        out.push(vector_element(i, f)?);
    }
    vector_from(out)
}

/// Element `i` of a vector: a finite 32-bit float.
pub fn vector_element(i: usize, f: f64) -> Result<f32, String> {
    let f = f as f32;
    if f.is_finite() { Ok(f) } else { Err(format!("element {i}: not a finite 32-bit float")) }
}

/// A pgvector value from checked elements (at least one).
pub fn vector_from(elements: Vec<f32>) -> Result<pgvector::Vector, String> {
    if elements.is_empty() {
        return Err("a vector needs at least one element".into());
    }
    Ok(pgvector::Vector::from(elements))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ok(v: Value, ty: Type) -> Param {
        convert(&v, &ty, 1).unwrap_or_else(|e| panic!("{v} as {ty}: {e}"))
    }

    fn err(v: Value, ty: Type) -> String {
        convert(&v, &ty, 2).expect_err("must fail").to_string()
    }

    #[test]
    fn scalars() {
        assert!(matches!(ok(json!(true), Type::BOOL), Param::Bool(true)));
        assert!(matches!(ok(json!(7), Type::INT4), Param::I32(7)));
        assert!(matches!(ok(json!("9007199254740993"), Type::INT8), Param::I64(9007199254740993)));
        assert!(matches!(ok(json!(1.5), Type::FLOAT8), Param::F64(_)));
        assert!(matches!(ok(json!("12.345"), Type::NUMERIC), Param::Numeric(_)));
        assert!(matches!(ok(json!("x"), Type::TEXT), Param::Text(_)));
        assert!(matches!(ok(json!({"a": 1}), Type::JSONB), Param::Json(_)));
        assert!(matches!(ok(json!("2026-01-31T12:00:00Z"), Type::TIMESTAMPTZ), Param::Timestamptz(_)));
        assert!(matches!(ok(json!("2026-01-31T12:00:00.25"), Type::TIMESTAMP), Param::Timestamp(_)));
        assert!(matches!(ok(json!("2026-01-31"), Type::DATE), Param::Date(_)));
        assert!(matches!(ok(json!("aGk="), Type::BYTEA), Param::Bytea(ref b) if b == b"hi"));
        assert!(matches!(ok(json!(null), Type::INT4), Param::Null));
        assert!(matches!(ok(json!([1, 2]), Type::INT4_ARRAY), Param::Array(ref a) if a.len() == 2));
    }

    #[test]
    fn mismatches_name_the_parameter_and_type() {
        assert_eq!(err(json!("x"), Type::INT4), "parameter $2 (int4): expected an integer, found string \"x\"");
        assert!(err(json!(1), Type::TEXT).contains("expected a string, found number"));
        assert!(err(json!(70000), Type::INT2).contains("out of range"));
        assert!(err(json!(1.5), Type::INT4).contains("expected an integer"));
        assert!(err(json!("nope"), Type::UUID).contains("not a UUID"));
        assert!(err(json!("%%"), Type::BYTEA).contains("base64"));
        assert!(err(json!("yesterday"), Type::TIMESTAMPTZ).contains("RFC 3339"));
        assert!(err(json!([1, "a"]), Type::INT4_ARRAY).contains("element 1"));
        assert!(err(json!(true), Type::INTERVAL).contains("cannot be bound"));
    }

    #[test]
    fn vectors() {
        assert_eq!(vector(&json!([1, 2.5])).map(|v| v.to_vec()), Ok(vec![1.0, 2.5]));
        assert!(vector(&json!([])).is_err());
        assert!(vector(&json!([1, "x"])).is_err());
        assert!(vector(&json!([1e300])).is_err());
    }
}
