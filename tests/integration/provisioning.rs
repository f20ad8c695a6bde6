//! Tenant provisioning against the real stack: everything a tenant owns exists
//! after create and is gone after delete; a failure at any step leaves nothing.

use serde_json::json;
use sluice::control::audit::Actor;
use sluice::control::credentials::tenant_role_password;
use sluice::control::provision::{self, CreateOptions, ProvisionError, Step, resource_names};
use sluice::ids::{TenantId, TenantName};
use sluice::services::Services;

use crate::support::{Gateway, error_code, unique};

struct Footprint {
    row: bool,
    role: bool,
    database: bool,
    bucket: bool,
}

async fn footprint(svc: &Services, id: TenantId, name: &TenantName) -> Footprint {
    let (db, role, bucket) = resource_names(svc, id, name);
    let c = svc.control.client().await.expect("control");
    let row = c
        .query_one("SELECT EXISTS (SELECT 1 FROM tenants WHERE name = $1)", &[&name.as_str()])
        .await
        .expect("q")
        .get(0);
    Footprint {
        row,
        role: svc.pg_admin.role_exists(&role).await.expect("role q"),
        database: svc.pg_admin.database_exists(&db).await.expect("db q"),
        bucket: svc.s3.bucket_exists(&bucket).await.expect("bucket q"),
    }
}

#[tokio::test]
async fn create_then_delete_leaves_nothing() {
    let gw = Gateway::start().await;
    let name = unique("prov");
    let t = gw.create_tenant(&name).await;
    let tn = TenantName::parse(&name).expect("name");
    let tid = TenantId(t.body["tenant"]["id"].as_str().expect("id").parse().expect("uuid"));
    assert_eq!(t.body["tenant"]["db_name"], json!(format!("tenant_{}", tid.0.simple())), "names carry the id");
    let fp = footprint(&gw.svc, tid, &tn).await;
    assert!(fp.row && fp.role && fp.database && fp.bucket, "everything exists after create");
    assert_eq!(t.body["tenant"]["status"], "active");
    assert!(t.admin_key.starts_with("slk_") && t.service_key.starts_with("slk_"));

    // The tenant's own role reaches its database, is no superuser, and has pgvector.
    let id: uuid::Uuid = t.body["tenant"]["id"].as_str().expect("id").parse().expect("uuid");
    let pw = tenant_role_password(&gw.svc.config.auth.master_key, TenantId(id));
    let (db, role, _) = resource_names(&gw.svc, tid, &tn);
    let (client, conn) = gw
        .svc
        .pg_admin
        .tenant_config(&db, &role, &pw)
        .connect(tokio_postgres::NoTls)
        .await
        .expect("tenant role connects");
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'vector'),
                    (SELECT rolsuper OR rolcreatedb OR rolcreaterole OR rolbypassrls OR rolreplication
                     FROM pg_roles WHERE rolname = current_user),
                    '[1,2,3]'::vector <-> '[1,2,4]'::vector",
            &[],
        )
        .await
        .expect("query as tenant");
    assert_eq!(row.get::<_, String>(0), "0.8.5");
    assert!(!row.get::<_, bool>(1), "tenant role has no superuser/createdb/createrole/bypassrls/replication");
    let err = client.batch_execute("CREATE DATABASE sneaky").await.expect_err("no CREATEDB");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    assert_eq!(row.get::<_, f64>(2), 1.0);
    client
        .batch_execute("CREATE TABLE notes (id int); INSERT INTO notes VALUES (1)")
        .await
        .expect("tenant owns public");
    drop(client);

    // Two keys, both usable.
    let (status, keys) = gw.get("/v1/keys", &t.admin_key).await;
    assert_eq!(status, 200);
    assert_eq!(keys["keys"].as_array().map(Vec::len), Some(2));

    gw.delete_tenant(&name).await;
    let fp = footprint(&gw.svc, tid, &tn).await;
    assert!(!fp.row && !fp.role && !fp.database && !fp.bucket, "everything is gone after delete");
    let (status, body) = gw.get("/v1/tenant", &t.service_key).await;
    assert_eq!((status, error_code(&body)), (401, "unauthenticated"));

    // The audit trail outlives the tenant.
    let (_, audit) = gw.get("/admin/v1/audit?limit=1000", &gw.operator_token()).await;
    let actions: Vec<(String, String)> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["tenant"] == json!(name))
        .map(|e| (e["action"].as_str().unwrap_or("").into(), e["outcome"].as_str().unwrap_or("").into()))
        .collect();
    assert!(actions.contains(&("tenant.create".into(), "ok".into())), "{actions:?}");
    assert!(actions.contains(&("tenant.delete".into(), "ok".into())), "{actions:?}");
    gw.stop().await;
}

#[tokio::test]
async fn failure_at_any_step_leaves_nothing_behind() {
    let gw = Gateway::start().await;
    let steps = [Step::ControlRow, Step::Role, Step::Database, Step::Template, Step::Bucket, Step::Activate];
    for step in steps {
        let name = TenantName::parse(&unique("fail")).expect("name");
        let opts = CreateOptions { fail_after: Some(step), ..Default::default() };
        let err = provision::create_tenant(&gw.svc, &name, &Actor::Cli, &opts).await.expect_err("injected failure");
        let ProvisionError::Failed { step: failed, undone, leftover, .. } = &err else {
            panic!("unexpected error {err}");
        };
        assert_eq!(*failed, step.as_str());
        assert!(leftover.is_empty(), "all undone at {step:?}: {err}");
        assert!(undone.contains(&"control_row"), "{err}");
        // The id the attempt used is in its audit record.
        let c = gw.svc.control.client().await.expect("control");
        let id: uuid::Uuid = c
            .query_one(
                "SELECT tenant_id FROM audit_log WHERE tenant_name = $1 AND action = 'tenant.create' AND outcome = 'failed'",
                &[&name.as_str()],
            )
            .await
            .expect("audited with its id")
            .get(0);
        let fp = footprint(&gw.svc, TenantId(id), &name).await;
        assert!(
            !fp.row && !fp.role && !fp.database && !fp.bucket,
            "failure after {step:?} left something behind: row={} role={} db={} bucket={}",
            fp.row,
            fp.role,
            fp.database,
            fp.bucket
        );
        // The failure is audited, and the name is free again.
        let c = gw.svc.control.client().await.expect("control");
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM audit_log WHERE tenant_name = $1 AND action = 'tenant.create' AND outcome = 'failed'",
                &[&name.as_str()],
            )
            .await
            .expect("q")
            .get(0);
        assert_eq!(n, 1, "failed create audited at {step:?}");
    }
    // A name whose creation failed can be created for real afterwards.
    let name = TenantName::parse(&unique("retry")).expect("name");
    let opts = CreateOptions { fail_after: Some(Step::Bucket), ..Default::default() };
    assert!(provision::create_tenant(&gw.svc, &name, &Actor::Cli, &opts).await.is_err());
    provision::create_tenant(&gw.svc, &name, &Actor::Cli, &CreateOptions::default())
        .await
        .expect("create after failure");
    provision::delete_tenant(&gw.svc, &name, &Actor::Cli, None).await.expect("delete");
    gw.stop().await;
}

#[tokio::test]
async fn tenant_role_cannot_reach_other_databases() {
    let gw = Gateway::start().await;
    let a = gw.create_tenant(&unique("iso-a")).await;
    let b = gw.create_tenant(&unique("iso-b")).await;
    let a_id: uuid::Uuid = a.body["tenant"]["id"].as_str().expect("id").parse().expect("uuid");
    let pw = tenant_role_password(&gw.svc.config.auth.master_key, TenantId(a_id));
    let a_role = a.body["tenant"]["db_role"].as_str().expect("role");
    for target in [b.body["tenant"]["db_name"].as_str().expect("db"), "sluice_control", "postgres", "template1"] {
        let res = gw.svc.pg_admin.tenant_config(target, a_role, &pw).connect(tokio_postgres::NoTls).await;
        let err = res.err().unwrap_or_else(|| panic!("tenant A's role connected to {target}"));
        let code = err.code().map(|c| c.code().to_owned());
        assert_eq!(code.as_deref(), Some("42501"), "connect to {target}: {err}");
    }
    gw.delete_tenant(&a.name).await;
    gw.delete_tenant(&b.name).await;
    gw.stop().await;
}

#[tokio::test]
async fn bad_create_and_delete_requests() {
    let gw = Gateway::start().await;
    let op = gw.operator_token();
    for (body, status) in [
        (json!({ "name": "Bad Name" }), 400),
        (json!({ "name": "ab" }), 400),
        (json!({ "name": "x--y" }), 400),
        (json!({ "nam": "typo" }), 422),
        (json!({ "name": 5 }), 422),
    ] {
        let resp = gw.http.post(gw.url("/admin/v1/tenants")).bearer_auth(&op).json(&body).send().await.expect("req");
        assert_eq!(resp.status().as_u16(), status, "{body}");
        let body: serde_json::Value = resp.json().await.expect("json");
        error_code(&body);
    }
    let t = gw.create_tenant(&unique("dup")).await;
    let resp = gw
        .http
        .post(gw.url("/admin/v1/tenants"))
        .bearer_auth(&op)
        .json(&json!({ "name": t.name }))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status().as_u16(), 409, "duplicate name is a conflict");

    let resp =
        gw.http.delete(gw.url(&format!("/admin/v1/tenants/{}", t.name))).bearer_auth(&op).send().await.expect("req");
    assert_eq!(resp.status().as_u16(), 400, "delete needs ?confirm=NAME");
    let resp = gw
        .http
        .delete(gw.url(&format!("/admin/v1/tenants/{}?confirm=other", t.name)))
        .bearer_auth(&op)
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status().as_u16(), 400);
    gw.delete_tenant(&t.name).await;
    let resp = gw
        .http
        .delete(gw.url(&format!("/admin/v1/tenants/{0}?confirm={0}", t.name)))
        .bearer_auth(&op)
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status().as_u16(), 404, "deleting twice: not found");
    gw.stop().await;
}

/// Catalogs every tenant can read (`pg_database`, `pg_roles`) show no tenant
/// names: databases and roles are named by tenant id.
#[tokio::test]
async fn catalogs_show_no_tenant_names() {
    let gw = Gateway::start().await;
    let a = gw.create_tenant(&unique("seer")).await;
    let b = gw.create_tenant(&unique("hidden")).await;
    let direct = gw.direct_pg(&a).await;
    let (client, conn) = tokio_postgres::connect(&direct.url(), tokio_postgres::NoTls).await.expect("connect as A");
    tokio::spawn(conn);
    let names: Vec<String> = client
        .query("SELECT datname FROM pg_database UNION ALL SELECT rolname FROM pg_roles", &[])
        .await
        .expect("catalogs")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for t in [&a, &b] {
        let frag = t.name.replace('-', "_");
        assert!(!names.iter().any(|n| n.contains(&frag) || n.contains(&t.name)), "{} visible in {names:?}", t.name);
        assert!(names.contains(&t.db()), "{} listed under its opaque name", t.db());
    }
    // Clients still name the database by the tenant's name on the door.
    let door = gw.door_pg(&a);
    let url = format!("postgres://{}:{}@{}:{}/{}", door.user, door.password, door.host, door.port, a.name);
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("door by tenant name");
    tokio::spawn(conn);
    let db: String = client.query_one("SELECT current_database()", &[]).await.expect("q").get(0);
    assert_eq!(db, a.db());
    gw.delete_tenant(&a.name).await;
    gw.delete_tenant(&b.name).await;
    gw.stop().await;
}

/// A tenant created when names were derived from the tenant's name keeps
/// working, and `make_names_opaque` (run by `sluice migrate up`) renames it
/// while its sessions are open; both doors follow.
#[tokio::test]
async fn name_derived_databases_are_renamed_opaque() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("legacy")).await;
    let tn = TenantName::parse(&t.name).expect("name");
    let (opaque_db, opaque_role) = (t.db(), t.body["tenant"]["db_role"].as_str().expect("role").to_owned());
    // Make it look like a tenant of the earlier scheme.
    let (legacy_db, legacy_role) =
        (provision::legacy_db_name(&gw.svc, &tn), format!("tenant_{}", tn.as_ident_fragment()));
    let roles =
        [(opaque_role.clone(), legacy_role.clone()), (format!("{opaque_role}_gw"), format!("{legacy_role}_gw"))];
    gw.svc.pg_admin.rename_tenant(&opaque_db, &legacy_db, &roles).await.expect("rename back");
    let c = gw.svc.control.client().await.expect("control");
    c.execute("UPDATE tenants SET db_name = $2, db_role = $3 WHERE name = $1", &[&t.name, &legacy_db, &legacy_role])
        .await
        .expect("row");
    let sql = |text: &'static str| {
        let (http, url, key) = (gw.http.clone(), gw.url("/v1/sql"), t.service_key.clone());
        async move {
            let r = http.post(url).bearer_auth(key).json(&json!({ "sql": text })).send().await.expect("send");
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let (s, b) = sql("SELECT current_database() AS db").await;
    assert_eq!((s, b["rows"][0][0].as_str()), (200, Some(legacy_db.as_str())), "{b}");
    // A pg-door session by the legacy database name, open during the rename.
    let door = gw.door_pg(&t);
    let url = format!("postgres://{}:{}@{}:{}/{}", door.user, door.password, door.host, door.port, legacy_db);
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("door by legacy name");
    tokio::spawn(conn);
    client.query_one("SELECT 1", &[]).await.expect("query");

    let tenant = sluice::control::tenants::get_by_name(&c, &tn).await.expect("tenant");
    assert!(provision::make_names_opaque(&gw.svc, &tenant).await.expect("rename"));
    let tenant = sluice::control::tenants::get_by_name(&c, &tn).await.expect("tenant");
    assert_eq!((tenant.db_name.as_str(), tenant.db_role.as_str()), (opaque_db.as_str(), opaque_role.as_str()));
    assert!(!provision::make_names_opaque(&gw.svc, &tenant).await.expect("rerun"), "idempotent");
    assert!(!gw.svc.pg_admin.database_exists(&legacy_db).await.expect("q"));

    // HTTP follows at once; the pg door's next session too (the open one was ended).
    let (s, b) = sql("SELECT current_database() AS db").await;
    assert_eq!((s, b["rows"][0][0].as_str()), (200, Some(opaque_db.as_str())), "{b}");
    assert!(client.query_one("SELECT 1", &[]).await.is_err(), "the open session was ended by the rename");
    let (client, conn) =
        tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("legacy name still accepted");
    tokio::spawn(conn);
    let db: String = client.query_one("SELECT current_database()", &[]).await.expect("q").get(0);
    assert_eq!(db, opaque_db);
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}
