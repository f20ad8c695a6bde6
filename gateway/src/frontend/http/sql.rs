//! `POST /v1/sql`: one parameterized statement, or a batch in one transaction.
//!
//! ```json
//! {"sql": "SELECT * FROM t WHERE id = $1", "params": [42]}
//! {"statements": [{"sql": "...", "params": []}, ...], "isolation": "serializable", "read_only": false}
//! ```

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::error::{ApiError, status_for};
use super::extract::{ApiJson, Authed};
use crate::error::{ClientError, ErrorKind};
use crate::pipeline::auth::Principal;
use crate::pipeline::{Action, Door, Operation};
use crate::services::Services;
use crate::sql::rules::{self, Refusal};
use crate::sql::{self, ExecOptions, Isolation, SqlError, StatementInput};
use crate::upstream::replicas::Node;
use crate::upstream::tenant_pg::TenantPoolError;

/// Most statements in one batch.
const MAX_BATCH: usize = 100;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    sql: Option<String>,
    #[serde(default)]
    params: Option<Vec<Value>>,
    statements: Option<Vec<StatementInput>>,
    isolation: Option<Isolation>,
    #[serde(default)]
    read_only: bool,
}

pub async fn run(
    Authed(p): Authed,
    State(svc): State<Services>,
    ApiJson(req): ApiJson<SqlRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let (mut statements, batch) = match (req.sql, req.statements) {
        (Some(sql), None) => {
            (vec![StatementInput { sql, params: req.params.unwrap_or_default(), opaque: false }], false)
        }
        (None, Some(list)) if req.params.is_none() => {
            if list.is_empty() || list.len() > MAX_BATCH {
                return Err(ApiError::bad_request(format!("`statements` must hold 1 to {MAX_BATCH} statements")));
            }
            (list, true)
        }
        _ => {
            return Err(ApiError::bad_request(
                "send either {\"sql\", \"params\"} or {\"statements\": [...]}, not both and not neither",
            ));
        }
    };
    let opts = ExecOptions {
        isolation: req.isolation,
        read_only: req.read_only,
        statement_timeout_ms: u32::try_from(p.quotas.statement_timeout_ms).unwrap_or(30_000),
        max_rows: usize::try_from(p.quotas.max_rows).unwrap_or(10_000),
        max_result_bytes: usize::try_from(p.quotas.max_result_bytes).unwrap_or(usize::MAX),
    };
    let ceilings = rules::Ceilings::new(&svc.config.postgres, p.quotas.statement_timeout_ms);
    // Serializable transactions cannot run on a hot standby.
    let mut reads_only = req.isolation != Some(Isolation::Serializable);
    for (i, st) in statements.iter_mut().enumerate() {
        let parsed = svc.sql.parse(p.tenant_id, &st.sql).await.map_err(|e| sql_error(SqlError::syntax(i, e)))?;
        match parsed.statements.as_slice() {
            [] => {
                return Err(ApiError::bad_request(format!(
                    "statement {i}: `sql` is empty (no statement, only whitespace or comments)"
                )));
            }
            [one] => {
                rules::http_statement(one, &ceilings).map_err(|r| refused(i, r))?;
                st.opaque = one.opaque;
                reads_only &= one.replica_safe();
            }
            many => {
                return Err(ApiError::bad_request(format!(
                    "statement {i}: `sql` holds {} statements; send each as its own entry of `statements` (they run in one transaction)",
                    many.len()
                )));
            }
        }
        let action = Action::Sql { text: &st.sql, statements: &parsed.statements };
        let op = Operation { door: Door::Http, principal: &p, action };
        svc.pipeline.admit(&op).await.map_err(|e| with_statement(ApiError::from(e), i))?;
    }
    let results = execute_routed(&svc, &p, reads_only, &statements, &opts).await?;
    let duration_ms = sql::elapsed_ms(started);
    metrics::histogram!("sluice_sql_duration_seconds", "tenant" => p.tenant.to_string()).record(duration_ms / 1000.0);
    // Serialized straight from the rendered rows (never through a `Value`).
    if batch {
        Ok(Json(Batch { results: &results, duration_ms }).into_response())
    } else {
        let r = results.first().ok_or_else(|| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "a statement ran without a result")
        })?;
        Ok(Json(One { columns: &r.columns, rows: &r.rows, row_count: r.row_count, duration_ms }).into_response())
    }
}

/// Run the request on a read replica when it only reads (see
/// `upstream::replicas`), else on the primary. A replica that cannot be
/// reached, or fails in a way the primary may not, hands the request to the
/// primary: it changed nothing, and the client has seen nothing yet.
async fn execute_routed(
    svc: &Services,
    p: &Principal,
    reads_only: bool,
    statements: &[StatementInput],
    opts: &ExecOptions,
) -> Result<Vec<sql::StatementResult>, ApiError> {
    // A write made through another instance keeps this key's reads on the
    // primary too (the mark is in Redis; without Redis, this instance's own
    // memory still holds).
    // Waited for as long as a rate-limit decision may wait on a slow Redis
    // (`ratelimit.redis_max_wait_ms`); an unreachable one fails at once.
    let shared = svc.config.postgres.replica_routing.shared_read_your_writes && !svc.replicas.is_empty();
    let redis_wait = Duration::from_millis(svc.config.ratelimit.redis_max_wait_ms.max(1));
    let wrote_elsewhere = shared
        && reads_only
        && matches!(
            tokio::time::timeout(redis_wait, svc.redis.wrote_lately(p.tenant_id, p.key_id)).await,
            Ok(Ok(true))
        );
    let node = svc.replicas.route("http", reads_only && !wrote_elsewhere, p.key_id);
    if node == Node::Primary {
        if !reads_only {
            svc.replicas.wrote(p.key_id);
        }
        let result = run_on(svc, p, Node::Primary, statements, opts).await;
        if !reads_only {
            // The window counts from the end of the write too, and is shared
            // before the client hears of the write.
            svc.replicas.wrote(p.key_id);
            if shared {
                let window = svc.config.postgres.replica_routing.read_your_writes_ms;
                let marked =
                    tokio::time::timeout(redis_wait, svc.redis.mark_wrote(p.tenant_id, p.key_id, window)).await;
                if !matches!(marked, Ok(Ok(()))) {
                    tracing::warn!("could not share the read-your-writes mark; other instances may read a replica");
                }
            }
        }
        return result.map_err(|e| e.into_api());
    }
    match run_on(svc, p, node, statements, opts).await {
        Ok(r) => Ok(r),
        Err(Failed::Pool(TenantPoolError::Get(e))) => {
            tracing::warn!(node = %node.label(), error = %e, "replica unreachable; reading from the primary");
            if !matches!(e, deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait)) {
                svc.replicas.failed(node);
            }
            run_on(svc, p, Node::Primary, statements, opts).await.map_err(|e| e.into_api())
        }
        Err(Failed::Sql(e)) if e.retry_on_primary() => {
            tracing::info!(node = %node.label(), error = %e, "read failed on a replica; running it on the primary");
            if matches!(e, SqlError::Connection(_)) {
                svc.replicas.failed(node);
            }
            metrics::counter!("sluice_pg_replica_retries_total", "door" => "http", "node" => node.label()).increment(1);
            run_on(svc, p, Node::Primary, statements, opts).await.map_err(|e| e.into_api())
        }
        Err(e) => Err(e.into_api()),
    }
}

enum Failed {
    Pool(TenantPoolError),
    Sql(SqlError),
}

impl Failed {
    fn into_api(self) -> ApiError {
        match self {
            Failed::Pool(e) => ApiError::from_client_error(&e),
            Failed::Sql(e) => sql_error(e),
        }
    }
}

async fn run_on(
    svc: &Services,
    p: &Principal,
    node: Node,
    statements: &[StatementInput],
    opts: &ExecOptions,
) -> Result<Vec<sql::StatementResult>, Failed> {
    let client = svc.tenant_pg.get_on(svc, p, node).await.map_err(Failed::Pool)?;
    let server = client.server();
    // The budget permit is held until the statements are done.
    let (client, _permit) = client.into_parts();
    sql::execute_with_deadline(client, &server, statements, opts).await.map_err(Failed::Sql)
}

/// The response to a batch.
#[derive(Serialize)]
struct Batch<'a> {
    results: &'a [sql::StatementResult],
    duration_ms: f64,
}

/// The response to one statement: its result and the duration.
#[derive(Serialize)]
struct One<'a> {
    columns: &'a [sql::Column],
    rows: &'a [Box<serde_json::value::RawValue>],
    row_count: u64,
    duration_ms: f64,
}

/// A rules refusal of statement `i`: 403 naming the rule.
fn refused(i: usize, r: Refusal) -> ApiError {
    with_statement(ApiError::from(crate::pipeline::PipelineError::Refused(r)), i)
}

fn with_statement(e: ApiError, i: usize) -> ApiError {
    let mut d = Map::new();
    d.insert("statement".into(), json!(i));
    e.with_details(d)
}

/// SQL errors carry the failing statement and, from Postgres, the SQLSTATE.
fn sql_error(e: SqlError) -> ApiError {
    let mut details = Map::new();
    if let Some(i) = e.statement() {
        details.insert("statement".into(), json!(i));
    }
    let kind = e.kind();
    let (status, code) = match &e {
        SqlError::Db { info, .. } => {
            details.insert("sqlstate".into(), json!(info.sqlstate));
            for (k, v) in [("detail", &info.detail), ("hint", &info.hint)] {
                if let Some(v) = v {
                    details.insert(k.into(), json!(v));
                }
            }
            if let Some(pos) = info.position {
                details.insert("position".into(), json!(pos));
            }
            match info.sqlstate.as_str() {
                "57014" => (StatusCode::GATEWAY_TIMEOUT, "statement_timeout"),
                _ => (status_for(kind), "sql_error"),
            }
        }
        SqlError::Param { .. } | SqlError::ParamCount { .. } => (StatusCode::BAD_REQUEST, "invalid_param"),
        SqlError::TooManyRows { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "too_many_rows"),
        SqlError::ResultTooLarge { max, .. } => {
            details.insert("max_result_bytes".into(), json!(max));
            details.insert("sqlstate".into(), json!("54000"));
            (status_for(kind), "result_too_large")
        }
        SqlError::Value { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "unsupported_type"),
        _ => (status_for(kind), kind.code()),
    };
    let message = match kind {
        ErrorKind::Internal | ErrorKind::Upstream => {
            tracing::error!(error = %e, "SQL request failed");
            e.client_message()
        }
        _ => e.to_string(),
    };
    let mut err = ApiError::new(status, code, message).with_details(details);
    if kind == ErrorKind::Upstream {
        err = err.with_header(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    err
}
