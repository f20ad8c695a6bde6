//! Backups over HTTP (`/v1/backups…`, `/admin/v1/…backups…`) against the
//! real stack: a backup started in the background and polled to `complete`,
//! isolation between tenants, restore as a new tenant (whose keys read what
//! was backed up) and in place, verify, pin / delete, settings.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Gateway, TestTenant, call, error_code, unique};

/// A request with any bearer token; returns (status, JSON body).
async fn req(gw: &Gateway, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = gw.http.request(method.parse().expect("method"), gw.url(path)).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn admin(gw: &Gateway, t: &TestTenant, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    req(gw, &t.admin_key, method, path, body).await
}

async fn operator(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    req(gw, &gw.operator_token(), method, path, body).await
}

/// Poll a backup (with `token` at `path`) until it leaves `running`; it must
/// end `complete` within 60 s.
async fn wait_complete(gw: &Gateway, token: &str, path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, row) = req(gw, token, "GET", path, None).await;
        assert_eq!(s, 200, "GET {path}: {row}");
        match row["status"].as_str() {
            Some("running") if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(250)).await,
            Some("complete") => return row,
            _ => panic!("backup at {path} did not complete within 60 s: {row}"),
        }
    }
}

/// A table with one row and one object, through the tenant's service key.
async fn seed(gw: &Gateway, t: &TestTenant, body: &[u8]) {
    let (s, b) =
        call(gw, t, "POST", "/v1/sql", Some(json!({ "sql": "CREATE TABLE notes (id int PRIMARY KEY, body text)" })))
            .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = call(
        gw,
        t,
        "POST",
        "/v1/sql",
        Some(json!({ "sql": "INSERT INTO notes VALUES (1, $1)", "params": ["backed up"] })),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let resp = gw
        .http
        .put(gw.url("/v1/objects/docs/a.txt"))
        .bearer_auth(&t.service_key)
        .body(body.to_vec())
        .send()
        .await
        .expect("put object");
    assert!(resp.status().is_success(), "put object: {}", resp.status());
}

async fn note(gw: &Gateway, service_key: &str) -> (u16, Value) {
    req(gw, service_key, "POST", "/v1/sql", Some(json!({ "sql": "SELECT body FROM notes WHERE id = 1" }))).await
}

#[tokio::test]
async fn tenant_backs_up_restores_as_new_and_operator_verifies_pins_and_deletes() {
    let started = Instant::now();
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("bk-api")).await;
    let other = gw.create_tenant(&unique("bk-other")).await;
    let object = b"object in the backup".repeat(100);
    seed(&gw, &t, &object).await;

    // Started in the background: 202 with an id that can be read at once.
    let (s, b) = admin(&gw, &t, "POST", "/v1/backups", None).await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b["status"], "running", "{b}");
    let id = b["id"].as_str().expect("backup id").to_owned();
    let path = format!("/v1/backups/{id}");
    let (s, row) = admin(&gw, &t, "GET", &path, None).await;
    assert_eq!((s, row["id"].as_str()), (200, Some(id.as_str())), "{row}");
    // One backup of a tenant at a time.
    let (s, b) = admin(&gw, &t, "POST", "/v1/backups", None).await;
    assert_eq!((s, error_code(&b)), (409, "conflict"), "{b}");
    assert_eq!(b["error"]["backup_id"], json!(id), "{b}");

    let row = wait_complete(&gw, &t.admin_key, &path).await;
    assert_eq!(row["trigger"], "manual", "{row}");
    assert_eq!(row["object_count"], 1, "{row}");
    assert_eq!(row["tenant_name"], json!(t.name), "{row}");
    let backed_up_in = started.elapsed();

    let (s, list) = admin(&gw, &t, "GET", "/v1/backups", None).await;
    assert_eq!(s, 200, "{list}");
    let ids: Vec<&str> = list["backups"].as_array().expect("backups").iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, vec![id.as_str()], "{list}");

    // Another tenant does not see it, cannot restore it; a service key is no admin.
    let (s, b) = admin(&gw, &other, "GET", &path, None).await;
    assert_eq!((s, error_code(&b)), (404, "not_found"), "{b}");
    let (s, b) = admin(&gw, &other, "GET", "/v1/backups", None).await;
    assert_eq!((s, b["backups"].as_array().map(Vec::len)), (200, Some(0)), "{b}");
    let stolen = unique("bk-stolen");
    let (s, b) = admin(&gw, &other, "POST", &format!("{path}/restore"), Some(json!({ "as": stolen }))).await;
    assert_eq!((s, error_code(&b)), (404, "not_found"), "{b}");
    let (s, b) = gw.get(&path, &t.service_key).await;
    assert_eq!(s, 403, "a service key cannot read backups: {b}");

    // Tenant keys restore as a new tenant only.
    for body in [json!({}), json!({ "in_place": true }), json!({ "as": unique("bk-x"), "in_place": true })] {
        let (s, b) = admin(&gw, &t, "POST", &format!("{path}/restore"), Some(body.clone())).await;
        assert_eq!((s, error_code(&b)), (400, "bad_request"), "{body}: {b}");
        assert!(b["error"]["message"].as_str().unwrap_or("").contains("operator"), "{b}");
    }
    let (s, b) = admin(&gw, &t, "POST", &format!("{path}/restore"), Some(json!({ "as": "Not A Name" }))).await;
    assert_eq!(s, 400, "{b}");

    let restore_started = Instant::now();
    let copy = unique("bk-copy");
    let (s, r) = admin(&gw, &t, "POST", &format!("{path}/restore"), Some(json!({ "as": copy }))).await;
    assert_eq!(s, 201, "{r}");
    let restored_in = restore_started.elapsed();
    assert_eq!((r["backup_id"].as_str(), r["tenant"].as_str()), (Some(id.as_str()), Some(copy.as_str())), "{r}");
    let copy_service = r["created"]["service_key"]["key"].as_str().expect("new service key").to_owned();
    // The new tenant's key reads the row and the object of the backup.
    let (s, b) = note(&gw, &copy_service).await;
    assert_eq!((s, &b["rows"]), (200, &json!([["backed up"]])), "{b}");
    let resp =
        gw.http.get(gw.url("/v1/objects/docs/a.txt")).bearer_auth(&copy_service).send().await.expect("get object");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.expect("body").as_ref(), object.as_slice());
    // The new tenant's admin key does not see the source's backups.
    let copy_admin = r["created"]["admin_key"]["key"].as_str().unwrap_or_default();
    let (s, b) = req(&gw, copy_admin, "GET", &path, None).await;
    assert_eq!(s, 404, "{b}");
    // A tenant admin's copies are limited (`backup.tenant_copies_max`, 2);
    // the operator's are not.
    let copy2 = unique("bk-copy");
    let (s, r) = admin(&gw, &t, "POST", &format!("{path}/restore"), Some(json!({ "as": copy2 }))).await;
    assert_eq!(s, 201, "{r}");
    let third = unique("bk-copy");
    let (s, b) = admin(&gw, &t, "POST", &format!("{path}/restore"), Some(json!({ "as": third }))).await;
    assert_eq!((s, error_code(&b)), (403, "forbidden"), "{b}");
    assert!(b["error"]["message"].as_str().unwrap_or("").contains("at most 2"), "{b}");
    let copy3 = unique("bk-copy");
    let (s, r) = operator(&gw, "POST", &format!("/admin/v1/backups/{id}/restore"), Some(json!({ "as": copy3 }))).await;
    assert_eq!(s, 201, "{r}");

    // Operator: verify, pin, delete.
    let verify_started = Instant::now();
    let (s, v) = operator(&gw, "POST", &format!("/admin/v1/backups/{id}/verify"), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["tables_checked"].as_u64().unwrap_or(0) >= 1, "{v}");
    let verified_in = verify_started.elapsed();
    let (s, row) = operator(&gw, "GET", &format!("/admin/v1/backups/{id}"), None).await;
    assert_eq!((s, &row["verify_ok"]), (200, &json!(true)), "{row}");
    // In the background: 202 at once, the result lands on the backup's row.
    let before = row["verified_at"].clone();
    let (s, b) = operator(&gw, "POST", &format!("/admin/v1/backups/{id}/verify?wait=false"), None).await;
    assert_eq!((s, &b["status"]), (202, &json!("verifying")), "{b}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, row) = operator(&gw, "GET", &format!("/admin/v1/backups/{id}"), None).await;
        if row["verified_at"] != before {
            assert_eq!(row["verify_ok"], true, "{row}");
            break;
        }
        assert!(Instant::now() < deadline, "no result of the background verification: {row}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, b) = operator(&gw, "POST", &format!("/admin/v1/backups/{id}/verify?wait=maybe"), None).await;
    assert_eq!(s, 400, "{b}");
    // Tenant keys are not operator tokens.
    let (s, b) = admin(&gw, &t, "POST", &format!("/admin/v1/backups/{id}/verify"), None).await;
    assert_eq!(s, 401, "{b}");

    let (s, row) = operator(&gw, "POST", &format!("/admin/v1/backups/{id}/pin"), None).await;
    assert_eq!((s, &row["pinned"]), (200, &json!(true)), "{row}");
    let (s, b) = operator(&gw, "DELETE", &format!("/admin/v1/backups/{id}"), None).await;
    assert_eq!((s, error_code(&b)), (409, "conflict"), "{b}");
    assert!(b["error"]["message"].as_str().unwrap_or("").contains("pinned"), "{b}");
    let (s, b) = operator(&gw, "DELETE", &format!("/admin/v1/backups/{id}?force=false"), None).await;
    assert_eq!(s, 409, "{b}");
    let (s, row) = operator(&gw, "POST", &format!("/admin/v1/backups/{id}/unpin"), None).await;
    assert_eq!((s, &row["pinned"]), (200, &json!(false)), "{row}");
    let (s, row) = operator(&gw, "POST", &format!("/admin/v1/backups/{id}/pin"), None).await;
    assert_eq!((s, &row["pinned"]), (200, &json!(true)), "{row}");
    let (s, b) = operator(&gw, "DELETE", &format!("/admin/v1/backups/{id}?force=true"), None).await;
    assert_eq!((s, &b["deleted"]), (200, &json!(id)), "{b}");
    let (s, list) = admin(&gw, &t, "GET", "/v1/backups", None).await;
    assert_eq!((s, list["backups"].as_array().map(Vec::len)), (200, Some(0)), "deleted backups are not listed: {list}");
    let (s, all) = operator(&gw, "GET", &format!("/admin/v1/tenants/{}/backups?all=true", t.name), None).await;
    assert_eq!((s, &all["backups"][0]["status"]), (200, &json!("expired")), "{all}");
    // Nothing left to restore.
    let (s, b) = admin(&gw, &t, "POST", &format!("{path}/restore"), Some(json!({ "as": unique("bk-late") }))).await;
    assert_eq!((s, error_code(&b)), (409, "conflict"), "{b}");

    eprintln!(
        "backup_api timings: backup {:.1} s, restore as new {:.1} s, verify {:.1} s",
        backed_up_in.as_secs_f64(),
        restored_in.as_secs_f64(),
        verified_in.as_secs_f64()
    );
    for name in [&t.name, &other.name, &copy, &copy2, &copy3] {
        gw.delete_tenant(name).await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn operator_backs_up_a_tenant_and_restores_it_in_place() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("bk-inplace")).await;
    seed(&gw, &t, b"first version").await;

    let (s, b) = operator(&gw, "POST", &format!("/admin/v1/tenants/{}/backups", t.name), None).await;
    assert_eq!((s, &b["status"]), (202, &json!("running")), "{b}");
    let id = b["id"].as_str().expect("backup id").to_owned();
    let row = wait_complete(&gw, &gw.operator_token(), &format!("/admin/v1/backups/{id}")).await;
    assert_eq!(row["tenant_name"], json!(t.name), "{row}");
    let (s, list) = operator(&gw, "GET", &format!("/admin/v1/tenants/{}/backups", t.name), None).await;
    assert_eq!((s, &list["backups"][0]["id"]), (200, &json!(id)), "{list}");
    // The tenant sees the operator's backup of it.
    let (s, row) = admin(&gw, &t, "GET", &format!("/v1/backups/{id}"), None).await;
    assert_eq!((s, &row["status"]), (200, &json!("complete")), "{row}");

    // Change the data, then put the backup back.
    let (s, b) = call(&gw, &t, "POST", "/v1/sql", Some(json!({ "sql": "UPDATE notes SET body = 'changed'" }))).await;
    assert_eq!(s, 200, "{b}");
    let resp = gw
        .http
        .put(gw.url("/v1/objects/docs/a.txt"))
        .bearer_auth(&t.service_key)
        .body("second version")
        .send()
        .await
        .expect("put object");
    assert!(resp.status().is_success());

    for body in [json!({}), json!({ "in_place": false }), json!({ "as": unique("bk-x"), "in_place": true })] {
        let (s, b) = operator(&gw, "POST", &format!("/admin/v1/backups/{id}/restore"), Some(body.clone())).await;
        assert_eq!((s, error_code(&b)), (400, "bad_request"), "{body}: {b}");
    }
    let (s, r) =
        operator(&gw, "POST", &format!("/admin/v1/backups/{id}/restore"), Some(json!({ "in_place": true }))).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["tenant"], json!(t.name), "{r}");
    assert!(r.get("created").is_none(), "no keys for an in-place restore: {r}");
    let (s, b) = note(&gw, &t.service_key).await;
    assert_eq!((s, &b["rows"]), (200, &json!([["backed up"]])), "{b}");
    let resp = gw.http.get(gw.url("/v1/objects/docs/a.txt")).bearer_auth(&t.service_key).send().await.expect("get");
    assert_eq!(resp.bytes().await.expect("body").as_ref(), b"first version");

    // Unknown backups are 404 on every operator route.
    let missing = uuid::Uuid::new_v4();
    for (method, path) in [
        ("GET", format!("/admin/v1/backups/{missing}")),
        ("POST", format!("/admin/v1/backups/{missing}/pin")),
        ("POST", format!("/admin/v1/backups/{missing}/verify")),
        ("DELETE", format!("/admin/v1/backups/{missing}")),
    ] {
        let (s, b) = operator(&gw, method, &path, None).await;
        assert_eq!((s, error_code(&b)), (404, "not_found"), "{method} {path}: {b}");
    }
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn settings_round_trip_and_are_checked() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("bk-settings")).await;
    let defaults = &gw.svc.config.backup;

    // `/v1/backups/settings` is the settings, not a backup called "settings".
    let (s, b) = admin(&gw, &t, "GET", "/v1/backups/settings", None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b,
        json!({ "interval_s": defaults.interval_s, "retain_days": defaults.retain_days,
                "retain_min_count": defaults.retain_min_count, "recipients": [] })
    );

    let (_, public) = sluice::backup::crypt::keygen();
    let (s, b) = admin(
        &gw,
        &t,
        "PUT",
        "/v1/backups/settings",
        Some(json!({ "interval_s": 7200, "retain_days": 3, "recipients": [public] })),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!((&b["interval_s"], &b["retain_days"], &b["recipients"]), (&json!(7200), &json!(3), &json!([public])));
    assert_eq!(b["retain_min_count"], json!(defaults.retain_min_count), "{b}");
    let (s, read) = admin(&gw, &t, "GET", "/v1/backups/settings", None).await;
    assert_eq!((s, &read), (200, &b));
    let (s, read) = operator(&gw, "GET", &format!("/admin/v1/tenants/{}/backups/settings", t.name), None).await;
    assert_eq!((s, &read), (200, &b));

    // Refused: a recipient that is no age key, too short an interval, unknown fields.
    for body in [json!({ "recipients": ["not-an-age-key"] }), json!({ "interval_s": 30 }), json!({ "retain_days": 0 })]
    {
        let (s, e) = admin(&gw, &t, "PUT", "/v1/backups/settings", Some(body.clone())).await;
        assert_eq!((s, error_code(&e)), (400, "bad_request"), "{body}: {e}");
    }
    let (s, e) = admin(&gw, &t, "PUT", "/v1/backups/settings", Some(json!({ "interval": 60 }))).await;
    assert_eq!(s, 422, "{e}");
    let (s, read) = admin(&gw, &t, "GET", "/v1/backups/settings", None).await;
    assert_eq!((s, &read), (200, &b), "refused changes changed nothing");

    // The operator sets them too; `null` goes back to the default, 0 turns scheduling off.
    let (s, b) = operator(
        &gw,
        "PUT",
        &format!("/admin/v1/tenants/{}/backups/settings", t.name),
        Some(json!({ "interval_s": 0, "retain_days": null, "recipients": [] })),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (&b["interval_s"], &b["retain_days"], &b["recipients"]),
        (&json!(0), &json!(defaults.retain_days), &json!([]))
    );
    let (s, read) = admin(&gw, &t, "GET", "/v1/backups/settings", None).await;
    assert_eq!((s, &read), (200, &b));

    // Audited.
    let (s, audit) = admin(&gw, &t, "GET", "/v1/audit", None).await;
    assert_eq!(s, 200, "{audit}");
    let n = audit["entries"].as_array().into_iter().flatten().filter(|e| e["action"] == "backup.settings").count();
    assert_eq!(n, 2, "{audit}");

    // Service keys and tenant keys on operator routes are refused.
    let (s, _) = gw.get("/v1/backups/settings", &t.service_key).await;
    assert_eq!(s, 403);
    let (s, _) = admin(&gw, &t, "GET", &format!("/admin/v1/tenants/{}/backups/settings", t.name), None).await;
    assert_eq!(s, 401);
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn malformed_ids_and_unknown_tenants_are_refused() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("bk-ids")).await;
    for path in ["/v1/backups/nope", "/v1/backups/12345"] {
        let (s, b) = admin(&gw, &t, "GET", path, None).await;
        assert_eq!((s, error_code(&b)), (400, "bad_request"), "{path}: {b}");
    }
    let (s, b) = admin(&gw, &t, "GET", &format!("/v1/backups/{}", uuid::Uuid::new_v4()), None).await;
    assert_eq!((s, error_code(&b)), (404, "not_found"), "{b}");
    let (s, b) = operator(&gw, "POST", "/admin/v1/backups/nope/pin", None).await;
    assert_eq!((s, error_code(&b)), (400, "bad_request"), "{b}");
    let ghost = unique("bk-ghost");
    let (s, b) = operator(&gw, "POST", &format!("/admin/v1/tenants/{ghost}/backups"), None).await;
    assert_eq!((s, error_code(&b)), (404, "not_found"), "{b}");
    let (s, b) = operator(&gw, "GET", "/admin/v1/tenants/Bad_Name/backups", None).await;
    assert_eq!(s, 400, "{b}");
    // `settings` under the admin routes is no backup id either.
    let (s, b) = operator(&gw, "GET", "/admin/v1/backups/settings", None).await;
    assert_eq!(s, 400, "{b}");
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}
