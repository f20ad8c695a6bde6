//! SQL over HTTP against each tenant's real database.

use serde_json::{Value, json};

use crate::support::{Gateway, TestTenant, error_code, unique};

async fn sql(gw: &Gateway, t: &TestTenant, body: Value) -> (u16, Value) {
    let resp = gw.http.post(gw.url("/v1/sql")).bearer_auth(&t.service_key).json(&body).send().await.expect("req");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn ok(gw: &Gateway, t: &TestTenant, body: Value) -> Value {
    let (status, v) = sql(gw, t, body.clone()).await;
    assert_eq!(status, 200, "{body} -> {v}");
    v
}

async fn set_quota(gw: &Gateway, t: &TestTenant, column: &str, value: i64) {
    let c = gw.svc.control.client().await.expect("control");
    // `column` is a fixed identifier from the test, never input.
    let q = format!("UPDATE quotas SET {column} = $2::int8 WHERE tenant_id = (SELECT id FROM tenants WHERE name = $1)");
    let n = c.execute(&q, &[&t.name, &value]).await.expect("update quota");
    assert_eq!(n, 1);
}

#[tokio::test]
async fn types_round_trip_through_parameters() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("sql-types")).await;
    ok(
        &gw,
        &t,
        json!({ "sql": "CREATE TABLE things (
        id int8 PRIMARY KEY, flag bool, small int2, n int4, f float8, price numeric(12,4), name text,
        doc jsonb, at timestamptz, day date, uid uuid, blob bytea, tags text[], emb vector(3), naive timestamp)" }),
    )
    .await;
    let ins = ok(
        &gw,
        &t,
        json!({
            "sql": "INSERT INTO things VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15)",
            "params": [9007199254740993i64, true, 7, -42, 1.5, "12345.6789", "héllo", {"a": [1, {"b": null}]},
                       "2026-01-31T12:00:00.5+02:00", "2026-02-28", "6f1c1a1e-8c1f-4d7e-9a55-0b8a3c0e1d2f",
                       "AAEC/w==", ["x", "y"], [0.5, -1, 3], "2026-01-31T23:59:59.123456"]
        }),
    )
    .await;
    assert_eq!(ins["row_count"], 1);
    let out = ok(&gw, &t, json!({ "sql": "SELECT * FROM things WHERE id = $1", "params": ["9007199254740993"] })).await;
    let row = &out["rows"][0];
    assert_eq!(row[0], json!(9007199254740993i64));
    assert_eq!(row[1], json!(true));
    assert_eq!(row[2], json!(7));
    assert_eq!(row[3], json!(-42));
    assert_eq!(row[4], json!(1.5));
    assert_eq!(row[5], json!("12345.6789"));
    assert_eq!(row[6], json!("héllo"));
    assert_eq!(row[7], json!({"a": [1, {"b": null}]}));
    assert_eq!(row[8], json!("2026-01-31T10:00:00.5Z"));
    assert_eq!(row[9], json!("2026-02-28"));
    assert_eq!(row[10], json!("6f1c1a1e-8c1f-4d7e-9a55-0b8a3c0e1d2f"));
    assert_eq!(row[11], json!("AAEC/w=="));
    assert_eq!(row[12], json!(["x", "y"]));
    assert_eq!(row[13], json!([0.5, -1.0, 3.0]));
    assert_eq!(row[14], json!("2026-01-31T23:59:59.123456"));
    let cols: Vec<&str> = out["columns"].as_array().expect("cols").iter().filter_map(|c| c["type"].as_str()).collect();
    assert_eq!(cols[..6], ["int8", "bool", "int2", "int4", "float8", "numeric"]);
    assert_eq!(cols[13], "vector");
    assert!(out["duration_ms"].is_number());

    // NULLs for any type, and affected-row counts for writes.
    let out =
        ok(&gw, &t, json!({ "sql": "UPDATE things SET name = $1, doc = $2 WHERE id > $3", "params": [null, null, 0] }))
            .await;
    assert_eq!(out["row_count"], 1);
    assert!(out["columns"].as_array().is_some_and(Vec::is_empty));
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn bad_input_gets_precise_errors() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("sql-bad")).await;
    ok(&gw, &t, json!({ "sql": "CREATE TABLE u (id int PRIMARY KEY, name text NOT NULL)" })).await;
    ok(&gw, &t, json!({ "sql": "INSERT INTO u VALUES (1, 'a')" })).await;

    let cases = [
        (
            json!({ "sql": "SELECT * FROM u WHERE id = $1", "params": ["one"] }),
            400,
            "invalid_param",
            None,
            "parameter $1 (int4)",
        ),
        (
            json!({ "sql": "SELECT * FROM u WHERE id = $1", "params": [] }),
            400,
            "invalid_param",
            None,
            "expected 1 parameters, got 0",
        ),
        (json!({ "sql": "SELEC 1" }), 400, "sql_error", Some("42601"), "syntax error"),
        (json!({ "sql": "SELECT * FROM nope" }), 400, "sql_error", Some("42P01"), "does not exist"),
        (json!({ "sql": "INSERT INTO u VALUES (1, 'dup')" }), 409, "sql_error", Some("23505"), "duplicate key"),
        (json!({ "sql": "SELECT 1; SELECT 2" }), 400, "bad_request", None, "holds 2 statements"),
        (json!({ "sql": "SELECT interval '1 day'" }), 422, "unsupported_type", None, "cast it"),
        (json!({ "sql": "" }), 400, "bad_request", None, "empty"),
        (json!({ "sql": "SELECT 1", "statements": [] }), 400, "bad_request", None, "either"),
        (json!({ "query": "SELECT 1" }), 422, "invalid_body", None, "unknown field"),
    ];
    for (body, status, code, sqlstate, needle) in cases {
        let (s, v) = sql(&gw, &t, body.clone()).await;
        assert_eq!(s, status, "{body} -> {v}");
        assert_eq!(error_code(&v), code, "{body} -> {v}");
        assert_eq!(v["error"]["sqlstate"].as_str(), sqlstate, "{body} -> {v}");
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains(needle), "{body}: {needle:?} not in {msg:?}");
    }
    let (_, v) = sql(&gw, &t, json!({ "sql": "SELECT * FROM u WHERE idd = 1" })).await;
    assert!(v["error"]["position"].is_number(), "syntax/undefined errors carry the position: {v}");
    // Casting makes unsupported types readable.
    let v = ok(&gw, &t, json!({ "sql": "SELECT interval '1 day'::text AS i" })).await;
    assert_eq!(v["rows"][0][0], "1 day");
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn batches_are_one_transaction() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("sql-batch")).await;
    ok(&gw, &t, json!({ "sql": "CREATE TABLE acct (id int PRIMARY KEY, balance int CHECK (balance >= 0))" })).await;
    let v = ok(
        &gw,
        &t,
        json!({ "statements": [
        { "sql": "INSERT INTO acct VALUES ($1, $2)", "params": [1, 100] },
        { "sql": "INSERT INTO acct VALUES ($1, $2)", "params": [2, 0] },
        { "sql": "SELECT sum(balance)::int AS total FROM acct" }
    ], "isolation": "serializable" }),
    )
    .await;
    assert_eq!(v["results"][2]["rows"][0][0], 100);

    // The second statement fails: the first is rolled back too.
    let (s, e) = sql(
        &gw,
        &t,
        json!({ "statements": [
        { "sql": "UPDATE acct SET balance = balance + 50 WHERE id = 2" },
        { "sql": "UPDATE acct SET balance = balance - 150 WHERE id = 1" }
    ] }),
    )
    .await;
    assert_eq!(
        (s, e["error"]["statement"].as_u64(), e["error"]["sqlstate"].as_str()),
        (400, Some(1), Some("23514")),
        "{e}"
    );
    let v = ok(&gw, &t, json!({ "sql": "SELECT balance FROM acct ORDER BY id" })).await;
    assert_eq!(v["rows"], json!([[100], [0]]), "nothing half-written");

    // Read-only batches refuse writes.
    let (s, e) = sql(&gw, &t, json!({ "statements": [{ "sql": "DELETE FROM acct" }], "read_only": true })).await;
    assert_eq!((s, e["error"]["sqlstate"].as_str()), (400, Some("25006")), "{e}");
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn quotas_bound_time_and_rows() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("sql-quota")).await;
    set_quota(&gw, &t, "statement_timeout_ms", 300).await;
    set_quota(&gw, &t, "max_rows", 5).await;
    let started = std::time::Instant::now();
    let (s, e) = sql(&gw, &t, json!({ "sql": "SELECT pg_sleep(5)" })).await;
    assert_eq!((s, error_code(&e)), (504, "statement_timeout"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "timeout enforced");
    let (s, e) = sql(&gw, &t, json!({ "sql": "SELECT generate_series(1, 10)" })).await;
    assert_eq!((s, error_code(&e)), (422, "too_many_rows"), "{e}");
    let v = ok(&gw, &t, json!({ "sql": "SELECT generate_series(1, 5)" })).await;
    assert_eq!(v["row_count"], 5);
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn session_state_does_not_survive_the_request() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("sql-state")).await;
    set_quota(&gw, &t, "pg_pool_size", 1).await; // every request on the same connection
    ok(&gw, &t, json!({ "sql": "SET search_path = pg_catalog" })).await;
    ok(&gw, &t, json!({ "sql": "SET application_name = 'leaky'" })).await;
    // SQL-level PREPARE would outlive the request: refused, naming the rule.
    let (s, v) = sql(&gw, &t, json!({ "sql": "PREPARE p AS SELECT 1" })).await;
    assert_eq!((s, v["error"]["rule"].as_str()), (403, Some("http.session-state")), "{v}");
    let v = ok(&gw, &t, json!({ "sql": "SELECT current_setting('search_path'), current_setting('application_name'), pg_backend_pid()" })).await;
    assert_eq!(v["rows"][0][0], "\"$user\", public");
    assert_eq!(v["rows"][0][1], "sluice");
    let pid = v["rows"][0][2].clone();
    // A statement that drops our statement cache does not break the next request.
    ok(&gw, &t, json!({ "sql": "DEALLOCATE ALL" })).await;
    let v = ok(&gw, &t, json!({ "sql": "SELECT current_setting('search_path'), current_setting('application_name'), pg_backend_pid()" })).await;
    assert_eq!(v["rows"][0][2], pid, "same pooled connection");
    // Transaction control is the gateway's: the tenant's own BEGIN is refused.
    let (s, v) = sql(&gw, &t, json!({ "sql": "BEGIN" })).await;
    assert_eq!((s, v["error"]["rule"].as_str()), (403, Some("http.transaction-control")), "{v}");
    let v = ok(&gw, &t, json!({ "sql": "SELECT now() = statement_timestamp()" })).await;
    assert_eq!(v["rows"][0][0], false, "inside the gateway's own per-request transaction");
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn one_tenant_cannot_reach_another() {
    let gw = Gateway::start().await;
    let a = gw.create_tenant(&unique("sql-a")).await;
    let b = gw.create_tenant(&unique("sql-b")).await;
    ok(&gw, &b, json!({ "sql": "CREATE TABLE secrets (s text)" })).await;
    ok(&gw, &b, json!({ "sql": "INSERT INTO secrets VALUES ('b-only')" })).await;
    let b_db = b.body["tenant"]["db_name"].as_str().expect("db").to_owned();
    let b_role = b.body["tenant"]["db_role"].as_str().expect("role").to_owned();
    let attempts = [
        ("SELECT * FROM secrets".to_string(), "42P01"),
        (format!("SELECT * FROM \"{b_db}\".public.secrets"), "0A000"),
        ("CREATE EXTENSION dblink".to_string(), "0A000"),
        ("CREATE EXTENSION postgres_fdw".to_string(), "0A000"),
        ("COPY (SELECT 1) TO PROGRAM 'id'".to_string(), "42501"),
        ("COPY secrets FROM '/etc/passwd'".to_string(), "42P01"),
        ("SELECT pg_read_file('/etc/passwd')".to_string(), "42501"),
        (format!("SET ROLE \"{b_role}\""), "42501"),
        ("CREATE DATABASE sneaky".to_string(), "42501"),
        ("CREATE ROLE sneaky".to_string(), "42501"),
        (format!("GRANT \"{b_role}\" TO CURRENT_USER"), "42501"),
        ("ALTER SYSTEM SET log_statement = 'all'".to_string(), "42501"),
        ("SELECT * FROM sluice_meta.migrations".to_string(), "42501"),
    ];
    for (q, want) in attempts {
        let (s, e) = sql(&gw, &a, json!({ "sql": q })).await;
        assert!(s >= 400, "{q} must fail: {e}");
        let got = e["error"]["sqlstate"].as_str().unwrap_or("");
        // Different Postgres checks may fire first; what matters is that it fails
        // on permissions/availability, never succeeds.
        assert!(
            got == want || ["42501", "0A000", "42P01", "58P01", "42883", "3D000", "25001"].contains(&got),
            "{q}: sqlstate {got} ({e})"
        );
    }
    let v = ok(&gw, &b, json!({ "sql": "SELECT s FROM secrets" })).await;
    assert_eq!(v["rows"], json!([["b-only"]]));
    gw.delete_tenant(&a.name).await;
    gw.delete_tenant(&b.name).await;
    gw.stop().await;
}
