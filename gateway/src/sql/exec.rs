//! SQL over HTTP: run one statement, or a batch in one transaction, on a
//! tenant's own database with JSON parameters and JSON results.
//!
//! Every request runs inside a transaction opened by the gateway with
//! `SET LOCAL statement_timeout` from the tenant's quota; the row cap and the
//! result cap (`max_result_bytes`, all statements of a request together, as
//! the response holds them) come from the quota too. Each row is measured as
//! the server sent it before it is decoded (a value larger than what is left
//! of the cap is refused without being copied) and as rendered JSON after.
//! Statements are prepared (so one request is one statement; `;`-separated
//! text is refused by Postgres) and parameters bound by type ([`params`]);
//! results are rendered by type ([`values`]).

use std::time::{Duration, Instant};

use futures::{StreamExt, pin_mut};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio_postgres::error::SqlState;

use super::params::{self, Param, ParamError};
use super::values::{self, ValueError};
use crate::error::{ClientError, ErrorKind};

/// One statement of a `/v1/sql` request with its parameters.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Statement")]
pub struct StatementInput {
    pub sql: String,
    #[serde(default)]
    pub params: Vec<Value>,
    /// Runs opaque code (set by the door from the statement model): the
    /// settings the parser depends on are checked again after it.
    #[serde(skip)]
    pub opaque: bool,
}

/// Transaction isolation level of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    ReadCommitted,
    RepeatableRead,
    Serializable,
}

/// How to run a request.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub isolation: Option<Isolation>,
    pub read_only: bool,
    pub statement_timeout_ms: u32,
    pub max_rows: usize,
    /// Most bytes of rows the whole request may return (each row counted as
    /// the larger of its size as sent by the server and as rendered JSON).
    pub max_result_bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
}

/// What one statement returned.
#[derive(Debug, Clone, Serialize)]
pub struct StatementResult {
    pub columns: Vec<Column>,
    /// Each row rendered once, as a JSON array: a result is held as the text
    /// the response sends, never as a tree of JSON values.
    pub rows: Vec<Box<RawValue>>,
    /// Rows returned, or affected for INSERT/UPDATE/DELETE without RETURNING.
    pub row_count: u64,
}

/// A Postgres error as the client may see it.
#[derive(Debug, Clone, Serialize)]
pub struct DbErrorInfo {
    pub sqlstate: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{0}")]
    Invalid(String),
    #[error("statement {statement}: {source}")]
    Param { statement: usize, source: ParamError },
    #[error("statement {statement}: expected {expected} parameters, got {got}")]
    ParamCount { statement: usize, expected: usize, got: usize },
    #[error("statement {statement}: {source}")]
    Value { statement: usize, source: ValueError },
    #[error("statement {statement}: the result has more than {max} rows (the tenant's max_rows); add a LIMIT")]
    TooManyRows { statement: usize, max: usize },
    #[error(
        "statement {statement}: the result is larger than {max} bytes (the tenant's max_result_bytes); select fewer rows or columns"
    )]
    ResultTooLarge { statement: usize, max: usize },
    #[error("statement {statement}: {} (SQLSTATE {})", info.message, info.sqlstate)]
    Db { statement: usize, info: DbErrorInfo },
    #[error("tenant database connection failed: {0}")]
    Connection(String),
}

impl SqlError {
    /// The failing statement's index in the request (0 for a single statement).
    pub fn statement(&self) -> Option<usize> {
        match self {
            SqlError::Param { statement, .. }
            | SqlError::ParamCount { statement, .. }
            | SqlError::Value { statement, .. }
            | SqlError::TooManyRows { statement, .. }
            | SqlError::ResultTooLarge { statement, .. }
            | SqlError::Db { statement, .. } => Some(*statement),
            _ => None,
        }
    }

    /// Failed on a read replica in a way the primary may not (the replica
    /// went away, a recovery conflict cancelled the query, or the statement
    /// needs a writable server after all): as a replica changes nothing, the
    /// request may run again on the primary.
    pub fn retry_on_primary(&self) -> bool {
        match self {
            SqlError::Connection(_) => true,
            SqlError::Db { info, .. } => crate::upstream::replicas::retry_on_primary(&info.sqlstate),
            _ => false,
        }
    }

    /// The request stopped reading a result the server may still be sending
    /// (a cap was passed): the connection cannot be reused.
    pub fn leaves_rows_unread(&self) -> bool {
        matches!(self, SqlError::TooManyRows { .. } | SqlError::ResultTooLarge { .. })
    }

    /// Statement `statement` does not parse: Postgres's own 42601.
    pub fn syntax(statement: usize, e: super::SyntaxError) -> Self {
        SqlError::Db {
            statement,
            info: DbErrorInfo {
                sqlstate: e.sqlstate().to_owned(),
                message: e.message,
                detail: None,
                hint: None,
                position: e.position,
            },
        }
    }

    fn from_pg(statement: usize, e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => SqlError::Db {
                statement,
                info: DbErrorInfo {
                    sqlstate: db.code().code().to_owned(),
                    message: db.message().to_owned(),
                    detail: db.detail().map(str::to_owned),
                    hint: db.hint().map(str::to_owned),
                    position: match db.position() {
                        Some(tokio_postgres::error::ErrorPosition::Original(p)) => Some(*p),
                        _ => None,
                    },
                },
            },
            None => SqlError::Connection(e.to_string()),
        }
    }
}

impl ClientError for SqlError {
    fn kind(&self) -> ErrorKind {
        match self {
            SqlError::Connection(_) => ErrorKind::Upstream,
            SqlError::Db { info, .. } => kind_for_sqlstate(&info.sqlstate),
            SqlError::ResultTooLarge { .. } => ErrorKind::TooLarge,
            _ => ErrorKind::User,
        }
    }
}

/// Who is to blame for a SQLSTATE.
pub fn kind_for_sqlstate(code: &str) -> ErrorKind {
    match code {
        "42501" => ErrorKind::Forbidden,
        "57014" => ErrorKind::User, // statement timeout: the query was too slow
        // Unique and exclusion violations: the row exists already. Other class-23
        // violations (not null, check, foreign key) are bad data: User.
        "40001" | "40P01" | "55P03" | "23505" | "23P01" => ErrorKind::Conflict,
        c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57") || c.starts_with("58") => {
            ErrorKind::Upstream
        }
        c if c.starts_with("XX") => ErrorKind::Internal,
        _ => ErrorKind::User,
    }
}

/// Past the request's statement timeout, the gateway's own clock waits this
/// much longer for the server's timeout before it cancels the query itself.
const DEADLINE_GRACE: Duration = Duration::from_secs(1);

/// [`execute`] bounded by the gateway's own clock: the statements of one
/// request share the tenant's statement timeout, and whatever the SQL did to
/// the server-side timeout (opaque code can set it), the gateway cancels the
/// running query when the deadline passes and drops the connection instead of
/// returning it to the pool.
pub async fn execute_with_deadline(
    client: deadpool_postgres::Client,
    server: &(String, u16),
    statements: &[StatementInput],
    opts: &ExecOptions,
) -> Result<Vec<StatementResult>, SqlError> {
    let budget = Duration::from_millis(u64::from(opts.statement_timeout_ms));
    match tokio::time::timeout(budget + DEADLINE_GRACE, execute(&client, statements, opts)).await {
        Ok(Err(e)) if e.leaves_rows_unread() => {
            // The query may still be sending rows: closing the connection
            // stops it (the server rolls back) without reading them all,
            // where a cancel could arrive late and hit the next request.
            drop(deadpool_postgres::Object::take(client));
            Err(e)
        }
        Ok(r) => r,
        Err(_) => {
            let token = client.cancel_token();
            // Bounded: the connection is dropped below whatever the cancel does.
            let cancel = async {
                let stream = tokio::net::TcpStream::connect((server.0.as_str(), server.1))
                    .await
                    .map_err(|e| format!("connect to {}:{}: {e}", server.0, server.1))?;
                token.cancel_query_raw(stream, tokio_postgres::NoTls).await.map_err(|e| e.to_string())
            };
            match tokio::time::timeout(DEADLINE_GRACE, cancel).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cancel a query past its deadline"),
                Err(_) => tracing::warn!("cancel a query past its deadline: no answer in time"),
            }
            drop(deadpool_postgres::Object::take(client));
            metrics::counter!("sluice_sql_deadline_cancels_total").increment(1);
            Err(SqlError::Db {
                statement: statements.len().saturating_sub(1),
                info: DbErrorInfo {
                    sqlstate: SqlState::QUERY_CANCELED.code().to_owned(),
                    message: format!(
                        "canceling statement due to statement timeout (the request ran past the tenant's {} ms, enforced by the gateway)",
                        opts.statement_timeout_ms
                    ),
                    detail: None,
                    hint: None,
                    position: None,
                },
            })
        }
    }
}

/// Run statements in one transaction and return one result each.
///
/// Statements are prepared through the connection's statement cache. If the
/// tenant's own SQL dropped server-side statements (`DEALLOCATE ALL`), the
/// stale cache shows up as SQLSTATE 26000 at execution, after which the
/// transaction is rolled back; the whole request is then retried once with a
/// clean cache (nothing was committed).
///
/// A [`SqlError::leaves_rows_unread`] error returns with the query still
/// running: the caller must not reuse the connection.
async fn execute(
    client: &deadpool_postgres::Client,
    statements: &[StatementInput],
    opts: &ExecOptions,
) -> Result<Vec<StatementResult>, SqlError> {
    match execute_once(client, statements, opts).await {
        Err(SqlError::Db { info, .. }) if info.sqlstate == SqlState::INVALID_SQL_STATEMENT_NAME.code() => {
            client.statement_cache.clear();
            execute_once(client, statements, opts).await
        }
        other => other,
    }
}

async fn execute_once(
    client: &deadpool_postgres::Client,
    statements: &[StatementInput],
    opts: &ExecOptions,
) -> Result<Vec<StatementResult>, SqlError> {
    let begin = format!(
        "BEGIN{}{}; SET LOCAL statement_timeout = {}",
        match opts.isolation {
            None => "",
            Some(Isolation::ReadCommitted) => " ISOLATION LEVEL READ COMMITTED",
            Some(Isolation::RepeatableRead) => " ISOLATION LEVEL REPEATABLE READ",
            Some(Isolation::Serializable) => " ISOLATION LEVEL SERIALIZABLE",
        },
        if opts.read_only { " READ ONLY" } else { "" },
        opts.statement_timeout_ms
    );
    client.batch_execute(&begin).await.map_err(|e| SqlError::from_pg(0, e))?;
    let mut results = Vec::with_capacity(statements.len());
    let mut room = opts.max_result_bytes;
    for (i, st) in statements.iter().enumerate() {
        let mut r = run_one(client, i, st, opts, &mut room).await;
        if r.is_ok() && st.opaque && i + 1 < statements.len() {
            r = check_parser_settings(client, i).await.and(r);
        }
        match r {
            Ok(r) => results.push(r),
            Err(e) => {
                if !e.leaves_rows_unread() {
                    // If this fails too, the connection is broken and recycling drops it.
                    let _ = client.batch_execute("ROLLBACK").await;
                }
                return Err(e);
            }
        }
    }
    // Transaction control inside the request is refused before it gets here
    // (`rules::http_statement`), so this COMMIT ends the gateway's transaction.
    client.batch_execute("COMMIT").await.map_err(|e| SqlError::from_pg(statements.len().saturating_sub(1), e))?;
    Ok(results)
}

/// After opaque code (statement `i`): the settings the gateway's parser
/// depends on must still be safe before the next statement's text is sent.
async fn check_parser_settings(client: &deadpool_postgres::Client, i: usize) -> Result<(), SqlError> {
    let row = client
        .query_one("SELECT current_setting('client_encoding'), current_setting('standard_conforming_strings')", &[])
        .await
        .map_err(|e| SqlError::from_pg(i, e))?;
    for (name, col) in [("client_encoding", 0), ("standard_conforming_strings", 1)] {
        let value: String = row.get(col);
        if let Some(r) = super::rules::unsafe_setting(name, &value) {
            return Err(SqlError::Invalid(format!("statement {i} changed {name} to {value}: {r}")));
        }
    }
    Ok(())
}

async fn prepare(
    client: &deadpool_postgres::Client,
    i: usize,
    sql: &str,
) -> Result<tokio_postgres::Statement, SqlError> {
    client.prepare_cached(sql).await.map_err(|e| SqlError::from_pg(i, e))
}

async fn run_one(
    client: &deadpool_postgres::Client,
    i: usize,
    st: &StatementInput,
    opts: &ExecOptions,
    room: &mut usize,
) -> Result<StatementResult, SqlError> {
    let too_large = || SqlError::ResultTooLarge { statement: i, max: opts.max_result_bytes };
    if st.sql.trim().is_empty() {
        return Err(SqlError::Invalid(format!("statement {i}: `sql` is empty")));
    }
    let stmt = prepare(client, i, &st.sql).await?;
    let types = stmt.params();
    if types.len() != st.params.len() {
        return Err(SqlError::ParamCount { statement: i, expected: types.len(), got: st.params.len() });
    }
    let params: Vec<Param> = st
        .params
        .iter()
        .zip(types)
        .enumerate()
        .map(|(n, (v, ty))| params::convert(v, ty, n + 1))
        .collect::<Result<_, _>>()
        .map_err(|source| SqlError::Param { statement: i, source })?;
    let columns: Vec<Column> =
        stmt.columns().iter().map(|c| Column { name: c.name().to_owned(), ty: c.type_().name().to_owned() }).collect();
    if let Some(c) = stmt.columns().iter().find(|c| !values::supported(c.type_())) {
        return Err(SqlError::Value {
            statement: i,
            source: ValueError::Unsupported { column: c.name().to_owned(), ty: c.type_().name().to_owned() },
        });
    }
    let stream = client.query_raw(&stmt, params.iter()).await.map_err(|e| SqlError::from_pg(i, e))?;
    pin_mut!(stream);
    let mut rows = Vec::new();
    while let Some(row) = stream.next().await {
        let row = row.map_err(|e| {
            if crate::upstream::frame_limit::is_too_large(&e) { too_large() } else { SqlError::from_pg(i, e) }
        })?;
        if rows.len() == opts.max_rows {
            return Err(SqlError::TooManyRows { statement: i, max: opts.max_rows });
        }
        let raw = values::raw_len(&row);
        if raw > *room {
            return Err(too_large());
        }
        let values = (0..row.len())
            .map(|c| values::column(&row, c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| SqlError::Value { statement: i, source })?;
        let rendered = serde_json::value::to_raw_value(&values).map_err(|e| SqlError::Value {
            statement: i,
            source: ValueError::Decode { column: "(row)".into(), message: e.to_string() },
        })?;
        *room = room.checked_sub(raw.max(rendered.get().len())).ok_or_else(too_large)?;
        rows.push(rendered);
    }
    let row_count = if columns.is_empty() { stream.rows_affected().unwrap_or(0) } else { rows.len() as u64 };
    Ok(StatementResult { columns, rows, row_count })
}

/// Milliseconds since `started`, for responses.
pub fn elapsed_ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}
