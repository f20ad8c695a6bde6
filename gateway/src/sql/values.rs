//! Postgres result values → JSON, by column type.
//!
//! numeric is returned as a string (JSON numbers would lose precision in most
//! clients), bytea as base64, timestamps as RFC 3339, vectors as arrays. A
//! column of a type not listed here is refused with a hint to cast it (results
//! come back in the binary format, which has no generic text rendering).
//!
//! [`raw_len`] measures a row as received, before it is decoded, for the
//! tenant's `max_result_bytes`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rust_decimal::Decimal;
use serde_json::{Number, Value};
use time::format_description::well_known::Rfc3339;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, Kind, Type};

/// Why a column could not be rendered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ValueError {
    #[error("column `{column}` has type `{ty}`, which SQL over HTTP cannot return; cast it, e.g. `{column}::text`")]
    Unsupported { column: String, ty: String },
    #[error("column `{column}`: {message}")]
    Decode { column: String, message: String },
}

/// Whether a type can be rendered (checked once per statement, before rows).
pub fn supported(ty: &Type) -> bool {
    if let Kind::Array(member) = ty.kind() {
        return supported(member) && !matches!(member.kind(), Kind::Array(_));
    }
    matches!(
        *ty,
        Type::BOOL
            | Type::INT2
            | Type::INT4
            | Type::INT8
            | Type::OID
            | Type::FLOAT4
            | Type::FLOAT8
            | Type::NUMERIC
            | Type::TEXT
            | Type::VARCHAR
            | Type::BPCHAR
            | Type::NAME
            | Type::UNKNOWN
            | Type::CHAR
            | Type::JSON
            | Type::JSONB
            | Type::TIMESTAMPTZ
            | Type::TIMESTAMP
            | Type::DATE
            | Type::UUID
            | Type::BYTEA
    ) || matches!(ty.name(), "vector" | "citext" | "void")
}

/// Render column `i` of `row`.
pub fn column(row: &Row, i: usize) -> Result<Value, ValueError> {
    let col = &row.columns()[i];
    let ty = col.type_();
    let decode = |e: Box<dyn std::error::Error + Sync + Send>| ValueError::Decode {
        column: col.name().to_owned(),
        message: e.to_string(),
    };
    if let Kind::Array(member) = ty.kind() {
        return array(row, i, member).map_err(decode);
    }
    scalar(row, i, ty)
        .map_err(decode)?
        .ok_or_else(|| ValueError::Unsupported { column: col.name().to_owned(), ty: ty.name().to_owned() })
}

/// A column's bytes as the server sent them, of any type.
struct Raw(usize);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> DecodeResult<Self> {
        Ok(Raw(raw.len()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Bytes of a row's values as the server sent them (before any decoding, so
/// a value too large for the result cap is refused without being copied).
pub fn raw_len(row: &Row) -> usize {
    (0..row.len()).filter_map(|i| row.try_get::<_, Option<Raw>>(i).ok().flatten()).map(|r| r.0).sum()
}

type DecodeResult<T> = Result<T, Box<dyn std::error::Error + Sync + Send>>;

fn get<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> DecodeResult<Option<T>> {
    row.try_get::<_, Option<T>>(i).map_err(Into::into)
}

fn float(f: f64) -> Value {
    // NaN and infinities have no JSON number form.
    Number::from_f64(f).map(Value::Number).unwrap_or_else(|| Value::String(f.to_string()))
}

fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
    v.map(f).unwrap_or(Value::Null)
}

/// `Ok(None)` means "type not supported".
fn scalar(row: &Row, i: usize, ty: &Type) -> DecodeResult<Option<Value>> {
    let v = match *ty {
        Type::BOOL => opt(get::<bool>(row, i)?, Value::Bool),
        Type::INT2 => opt(get::<i16>(row, i)?, Value::from),
        Type::INT4 => opt(get::<i32>(row, i)?, Value::from),
        Type::INT8 => opt(get::<i64>(row, i)?, Value::from),
        Type::OID => opt(get::<u32>(row, i)?, Value::from),
        Type::CHAR => opt(get::<i8>(row, i)?, |v| Value::String(char::from(v as u8).to_string())),
        Type::FLOAT4 => opt(get::<f32>(row, i)?, |v| float(f64::from(v))),
        Type::FLOAT8 => opt(get::<f64>(row, i)?, float),
        Type::NUMERIC => opt(get::<Decimal>(row, i)?, |d| Value::String(d.to_string())),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            opt(get::<String>(row, i)?, Value::String)
        }
        Type::JSON | Type::JSONB => get::<Value>(row, i)?.unwrap_or(Value::Null),
        Type::TIMESTAMPTZ => match get::<time::OffsetDateTime>(row, i)? {
            Some(t) => Value::String(t.format(&Rfc3339)?),
            None => Value::Null,
        },
        Type::TIMESTAMP => match get::<time::PrimitiveDateTime>(row, i)? {
            Some(t) => Value::String(t.assume_utc().format(&Rfc3339)?.trim_end_matches('Z').to_owned()),
            None => Value::Null,
        },
        Type::DATE => opt(get::<time::Date>(row, i)?, |d| Value::String(d.to_string())),
        Type::UUID => opt(get::<uuid::Uuid>(row, i)?, |u| Value::String(u.to_string())),
        Type::BYTEA => opt(get::<Vec<u8>>(row, i)?, |b| Value::String(STANDARD.encode(b))),
        _ if ty.name() == "citext" => opt(get::<String>(row, i)?, Value::String),
        // `void` (e.g. `SELECT pg_sleep(1)`) carries no value.
        _ if ty.name() == "void" => Value::Null,
        _ if ty.name() == "vector" => opt(get::<pgvector::Vector>(row, i)?, |v| {
            Value::Array(v.to_vec().into_iter().map(|f| float(f64::from(f))).collect())
        }),
        _ => return Ok(None),
    };
    Ok(Some(v))
}

fn array(row: &Row, i: usize, member: &Type) -> DecodeResult<Value> {
    fn list<'a, T: FromSql<'a>>(row: &'a Row, i: usize, f: impl Fn(T) -> Value) -> DecodeResult<Value> {
        Ok(match row.try_get::<_, Option<Vec<Option<T>>>>(i)? {
            Some(items) => Value::Array(items.into_iter().map(|x| opt(x, &f)).collect()),
            None => Value::Null,
        })
    }
    match *member {
        Type::BOOL => list::<bool>(row, i, Value::Bool),
        Type::INT2 => list::<i16>(row, i, Value::from),
        Type::INT4 => list::<i32>(row, i, Value::from),
        Type::INT8 => list::<i64>(row, i, Value::from),
        Type::FLOAT4 => list::<f32>(row, i, |v| float(f64::from(v))),
        Type::FLOAT8 => list::<f64>(row, i, float),
        Type::NUMERIC => list::<Decimal>(row, i, |d| Value::String(d.to_string())),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => list::<String>(row, i, Value::String),
        Type::JSON | Type::JSONB => list::<Value>(row, i, |v| v),
        Type::UUID => list::<uuid::Uuid>(row, i, |u| Value::String(u.to_string())),
        Type::DATE => list::<time::Date>(row, i, |d| Value::String(d.to_string())),
        Type::BYTEA => list::<Vec<u8>>(row, i, |b| Value::String(STANDARD.encode(b))),
        _ => {
            Err(format!("arrays of `{}` are not supported; cast the column, e.g. `col::text[]`", member.name()).into())
        }
    }
}
