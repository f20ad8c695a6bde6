//! Backups and restores against the real stack: Postgres (pg_dump /
//! pg_restore of the stack's own Postgres 16), Garage (tenant buckets and
//! the backup bucket) and Redis (the object hold).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use sluice::backup::{self, Backups, catalog, create, dump, purge, restore, target, verify};
use sluice::control::audit::Actor;
use sluice::control::tenants::{self, Tenant};
use sluice::ids::{TenantId, TenantName};
use sluice::services::Services;

use crate::support::{Gateway, TestTenant, call, plugin_wasm, unique};

fn backups(svc: &Services) -> &Backups {
    backup::require(svc).expect("config/dev.toml configures backups")
}

async fn tenant_row(svc: &Services, name: &str) -> Tenant {
    let c = svc.control.client().await.expect("control");
    tenants::get_by_name(&c, &TenantName::parse(name).expect("name")).await.expect("tenant")
}

async fn take(svc: &Services, t: &Tenant) -> catalog::BackupRow {
    let opts = create::Options {
        trigger: create::Trigger::Manual,
        actor: &Actor::Cli,
        request_id: None,
        progress: &backup::no_progress,
        id: None,
    };
    create::run(svc, backups(svc), t, &opts).await.expect("backup")
}

async fn restore_in_place(svc: &Services, id: uuid::Uuid) -> Result<restore::Restored, backup::BackupError> {
    restore::run(svc, backups(svc), id, restore::Mode::InPlace, &Actor::Cli, None, &backup::no_progress).await
}

/// Restore a backup as a new tenant named `name`; the tenant with its new keys.
async fn restore_as_new(svc: &Services, id: uuid::Uuid, name: &str) -> TestTenant {
    let mode = restore::Mode::AsNew(TenantName::parse(name).expect("name"));
    let r = restore::run(svc, backups(svc), id, mode, &Actor::Cli, None, &backup::no_progress).await.expect("restore");
    let created = r.created.expect("a new tenant with keys");
    assert_eq!(created.tenant.name.as_str(), name);
    // This instance's fence book catches up within `usage.refresh_ms`.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    TestTenant {
        name: name.to_owned(),
        admin_key: created.admin_key.key.clone(),
        service_key: created.service_key.key.clone(),
        body: json!({ "tenant": { "db_name": created.tenant.db_name } }),
    }
}

/// Row counts and content hashes of every table, as the admin sees them.
async fn table_stats(svc: &Services, db: &str) -> Vec<sluice::backup::manifest::TableStat> {
    let c = svc.pg_admin.connect(Some(db)).await.expect("admin connect");
    dump::table_stats(&c).await.expect("stats")
}

async fn sql(gw: &Gateway, t: &TestTenant, statements: &[&str]) -> Value {
    let body = json!({ "statements": statements.iter().map(|s| json!({ "sql": s })).collect::<Vec<_>>() });
    let (s, v) = call(gw, t, "POST", "/v1/sql", Some(body)).await;
    assert_eq!(s, 200, "{statements:?}: {v}");
    v
}

async fn put_object(gw: &Gateway, t: &TestTenant, key: &str, body: Vec<u8>, meta: &[(&str, &str)]) {
    let mut req = gw
        .http
        .put(gw.url(&format!("/v1/objects/{key}")))
        .bearer_auth(&t.service_key)
        .header("content-type", "application/x-test");
    for (k, v) in meta {
        req = req.header(format!("x-sluice-meta-{k}"), *v);
    }
    let resp = req.body(body).send().await.expect("put");
    assert_eq!(resp.status(), 200, "put {key}: {}", resp.text().await.unwrap_or_default());
}

/// (body, content type, user metadata) of an object, or None when missing.
async fn get_object(gw: &Gateway, t: &TestTenant, key: &str) -> Option<(Vec<u8>, String, BTreeMap<String, String>)> {
    let resp = gw.http.get(gw.url(&format!("/v1/objects/{key}"))).bearer_auth(&t.service_key).send().await.ok()?;
    if resp.status() == 404 {
        return None;
    }
    assert_eq!(resp.status(), 200);
    let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let meta = resp
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().strip_prefix("x-sluice-meta-")?.to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    Some((resp.bytes().await.expect("body").to_vec(), ct, meta))
}

async fn list_keys(gw: &Gateway, t: &TestTenant) -> Vec<String> {
    let (s, v) = call(gw, t, "GET", "/v1/objects?limit=1000", None).await;
    assert_eq!(s, 200, "{v}");
    v["objects"].as_array().expect("objects").iter().map(|o| o["key"].as_str().unwrap_or_default().to_owned()).collect()
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x & 0xff) as u8
        })
        .collect()
}

async fn search(gw: &Gateway, t: &TestTenant) -> Value {
    let (s, v) =
        call(gw, t, "POST", "/v1/collections/docs/search", Some(json!({ "vector": [1, 0.2, 0], "k": 3 }))).await;
    assert_eq!(s, 200, "{v}");
    v["results"].clone()
}

#[tokio::test]
async fn restore_in_place_brings_back_rows_objects_collections_and_plugins() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("bk-place")).await;
    let svc = &gw.svc;
    sql(&gw, &t, &[
        "CREATE TABLE notes (id int PRIMARY KEY, body text, tags jsonb, at timestamptz DEFAULT now())",
        "INSERT INTO notes SELECT g, repeat(md5(g::text), 3), jsonb_build_object('g', g) FROM generate_series(1, 2000) g",
        "CREATE INDEX notes_body ON notes (body)",
        "CREATE VIEW recent AS SELECT id FROM notes WHERE id > 1990",
    ])
    .await;
    let big = pseudo_random(9 << 20, 7); // past the in-memory limit: streamed path
    put_object(&gw, &t, "docs/big.bin", big.clone(), &[("origin", "camera")]).await;
    put_object(&gw, &t, "docs/small.txt", b"hello".to_vec(), &[("color", "blue"), ("n", "1")]).await;
    let (s, v) =
        call(&gw, &t, "PUT", "/v1/collections/docs", Some(json!({ "dimension": 3, "metric": "cosine" }))).await;
    assert_eq!(s, 201, "{v}");
    let points = json!({ "points": [
        { "id": "a", "vector": [1, 0, 0], "metadata": { "k": 1 } },
        { "id": "b", "vector": [0.8, 0.3, 0], "metadata": { "k": 2 } },
        { "id": "c", "vector": [0, 1, 0], "metadata": { "k": 3 } } ] });
    let (s, v) = call(&gw, &t, "POST", "/v1/collections/docs/points", Some(points)).await;
    assert_eq!(s, 200, "{v}");
    let resp = gw
        .http
        .put(gw.url("/v1/plugins/policy?activate=true"))
        .bearer_auth(&t.admin_key)
        .header("content-type", "application/wasm")
        .body(plugin_wasm("policy_ddl_guard"))
        .send()
        .await
        .expect("upload");
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap_or_default());
    // Key/value entries: binary, with and without a TTL.
    let kv_put = |key: &'static str, body: Vec<u8>| {
        gw.http.put(gw.url(&format!("/v1/kv/{key}"))).bearer_auth(&t.service_key).body(body).send()
    };
    assert_eq!(kv_put("bin", vec![0, 255, 7, 10]).await.expect("kv").status(), 204);
    assert_eq!(kv_put("session?ttl=3600", b"s1".to_vec()).await.expect("kv").status(), 204);
    let kv_get = |key: &'static str| gw.http.get(gw.url(&format!("/v1/kv/{key}"))).bearer_auth(&t.service_key).send();
    let row = tenant_row(svc, &t.name).await;
    let before_tables = table_stats(svc, &row.db_name).await;
    let before_search = search(&gw, &t).await;

    let b = take(svc, &row).await;
    assert_eq!(b.status, "complete");
    assert_eq!(b.object_count, 2);
    assert_eq!(kv_put("bin", b"changed".to_vec()).await.expect("kv").status(), 204);
    assert_eq!(kv_put("later", b"after".to_vec()).await.expect("kv").status(), 204);

    // Damage: the plugin, rows, objects, the collection; add an object.
    let resp = gw.http.post(gw.url("/v1/plugins/policy/deactivate")).bearer_auth(&t.admin_key).send().await;
    assert!(resp.expect("deactivate").status().is_success());
    sql(&gw, &t, &["DELETE FROM notes WHERE id > 10", "DROP VIEW recent"]).await;
    let del = gw.http.delete(gw.url("/v1/objects/docs/small.txt")).bearer_auth(&t.service_key).send().await;
    assert_eq!(del.expect("delete").status(), 204);
    put_object(&gw, &t, "docs/big.bin", b"overwritten".to_vec(), &[]).await;
    put_object(&gw, &t, "later.txt", b"after the backup".to_vec(), &[]).await;
    let (s, _) = call(&gw, &t, "DELETE", "/v1/collections/docs", None).await;
    assert_eq!(s, 204);

    let r = restore_in_place(svc, b.id).await.expect("restore in place");
    assert_eq!((r.objects_deleted, r.template_migrations_applied.len()), (1, 0), "{r:?}");
    assert!(r.objects_written >= 2, "{r:?}");

    assert_eq!(table_stats(svc, &row.db_name).await, before_tables, "every table's rows and content hash");
    let big_back = get_object(&gw, &t, "docs/big.bin").await.expect("big back");
    assert!(big_back.0 == big, "big object bytes identical");
    assert_eq!(big_back.2.get("origin").map(String::as_str), Some("camera"));
    let small = get_object(&gw, &t, "docs/small.txt").await.expect("small back");
    assert_eq!(small.0, b"hello");
    assert_eq!(small.1, "application/x-test");
    assert_eq!(small.2, BTreeMap::from([("color".into(), "blue".into()), ("n".into(), "1".into())]));
    assert!(get_object(&gw, &t, "later.txt").await.is_none(), "an object made after the backup is gone");
    // Key/value entries as they were, TTL kept; one made after the backup is gone.
    let bin = kv_get("bin").await.expect("kv get");
    assert_eq!(bin.bytes().await.expect("body").to_vec(), vec![0, 255, 7, 10]);
    let session = kv_get("session").await.expect("kv get");
    let ttl: u64 = session.headers()["x-sluice-ttl"].to_str().expect("ttl").parse().expect("ttl");
    assert!((3500..=3600).contains(&ttl), "{ttl}");
    assert_eq!(kv_get("later").await.expect("kv get").status(), 404);
    // The collection answers as before (the restored table, a new cache scope).
    tokio::time::sleep(Duration::from_millis(2500)).await; // the fence book of this instance
    assert_eq!(search(&gw, &t).await, before_search);
    // Tenant SQL may still read the collection table and not write it.
    let (s, v) =
        call(&gw, &t, "POST", "/v1/sql", Some(json!({ "statements": [{ "sql": "DELETE FROM sluice.c_docs" }] }))).await;
    assert_ne!(s, 200, "collection tables stay the gateway's after a restore: {v}");
    // The policy plugin is active again (it refuses DROP TABLE).
    let (s, v) = call(&gw, &t, "POST", "/v1/sql", Some(json!({ "statements": [{ "sql": "DROP TABLE notes" }] }))).await;
    assert_eq!(s, 403, "the restored policy is active: {v}");
    let v = sql(&gw, &t, &["SELECT count(*) AS n FROM recent"]).await;
    assert_eq!(v["results"][0]["rows"][0][0], 10, "the view is back");
    gw.delete_tenant(&t.name).await;
}

#[tokio::test]
async fn restore_as_new_tenant_while_the_original_keeps_serving() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("bk-src")).await;
    let svc = &gw.svc;
    sql(
        &gw,
        &t,
        &[
            "CREATE TABLE items (id int PRIMARY KEY, v text)",
            "INSERT INTO items SELECT g, g::text FROM generate_series(1, 500) g",
        ],
    )
    .await;
    put_object(&gw, &t, "a.txt", b"alpha".to_vec(), &[("k", "v")]).await;
    let row = tenant_row(svc, &t.name).await;
    let b = take(svc, &row).await;

    // The original serves throughout the restore.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (http, url, key, stop) = (gw.http.clone(), gw.url("/v1/sql"), t.service_key.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = json!({ "statements": [{ "sql": "SELECT count(*) FROM items" }] });
                match http.post(&url).bearer_auth(&key).json(&body).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    let copy = restore_as_new(svc, b.id, &unique("bk-copy")).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.expect("load task");
    assert!(ok > 0 && failed == 0, "the original answered every request during the restore: {ok} ok, {failed} failed");
    let v = sql(&gw, &copy, &["SELECT count(*), sum(id) FROM items"]).await;
    assert_eq!(v["results"][0]["rows"][0], json!([500, 125250]));
    let a = get_object(&gw, &copy, "a.txt").await.expect("object in the copy");
    assert_eq!((a.0.as_slice(), a.2.get("k").map(String::as_str)), (&b"alpha"[..], Some("v")));
    // Different databases and buckets: a write to the copy leaves the original alone.
    sql(&gw, &copy, &["DELETE FROM items"]).await;
    let v = sql(&gw, &t, &["SELECT count(*) FROM items"]).await;
    assert_eq!(v["results"][0]["rows"][0][0], 500);
    gw.delete_tenant(&copy.name).await;
    gw.delete_tenant(&t.name).await;
}

/// Flip one byte of a stored object in the backup target.
async fn corrupt(b: &Backups, key: &str) {
    let mut bytes = b.target.get_bytes(key, 1 << 30).await.expect("get").expect("exists");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    b.target.put_bytes(key, bytes).await.expect("put back");
}

#[tokio::test]
async fn tampered_missing_or_wrongly_keyed_backups_are_refused_before_anything_changes() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("bk-tamper")).await;
    let svc = &gw.svc;
    sql(&gw, &t, &["CREATE TABLE k (id int)", "INSERT INTO k SELECT generate_series(1, 100)"]).await;
    put_object(&gw, &t, "o.bin", pseudo_random(50_000, 3), &[]).await;
    let row = tenant_row(svc, &t.name).await;
    let b = take(svc, &row).await;
    let bk = backups(svc);
    // Changes after the backup that a refused restore must leave alone.
    sql(&gw, &t, &["INSERT INTO k VALUES (1000)"]).await;
    put_object(&gw, &t, "after.bin", b"x".to_vec(), &[]).await;
    let (_, m) = catalog::manifest(bk, row.id, b.id).await.expect("manifest");
    let check_untouched = async || {
        let row = tenant_row(svc, &t.name).await;
        assert!(row_fence(svc, row.id).await.is_none(), "not left fenced");
        let v = sql(&gw, &t, &["SELECT count(*) FROM k"]).await;
        assert_eq!(v["results"][0]["rows"][0][0], 101, "rows untouched");
        assert!(list_keys(&gw, &t).await.contains(&"after.bin".to_owned()), "objects untouched");
    };

    // A flipped byte in the database part.
    let dump_key = m.part("db.dump").expect("db part").key.clone();
    corrupt(bk, &dump_key).await;
    let e = restore_in_place(svc, b.id).await.expect_err("corrupt part refused");
    assert!(e.to_string().contains("part db.dump"), "names the part: {e}");
    check_untouched().await;
    let v = verify::run(svc, bk, b.id, &Actor::Cli, None, &backup::no_progress).await.expect("verify runs");
    assert!(!v.ok && v.problems.iter().any(|p| p.contains("db.dump")), "{v:?}");
    corrupt(bk, &dump_key).await; // flip it back

    // A missing content blob.
    let content = m.contents.first().expect("content").id.clone();
    let ckey = target::content_key(row.id, &content);
    let saved = bk.target.get_bytes(&ckey, 1 << 30).await.expect("get").expect("exists");
    bk.target.delete(&ckey).await.expect("delete");
    let e = restore_in_place(svc, b.id).await.expect_err("missing content refused");
    assert!(e.to_string().contains(&format!("content {content}")) && e.to_string().contains("missing"), "{e}");
    check_untouched().await;
    bk.target.put_bytes(&ckey, saved).await.expect("restore blob");

    // A truncated records part.
    let rec_key = m.part("records.json").expect("records").key.clone();
    let rec = bk.target.get_bytes(&rec_key, 1 << 30).await.expect("get").expect("exists");
    bk.target.put_bytes(&rec_key, rec[..rec.len() - 7].to_vec()).await.expect("truncate");
    let e = restore_in_place(svc, b.id).await.expect_err("truncated part refused");
    assert!(e.to_string().contains("part records.json"), "{e}");
    check_untouched().await;
    bk.target.put_bytes(&rec_key, rec).await.expect("put back");

    // The wrong operator key: the data key does not open.
    let mut cfg = crate::support::config();
    cfg.backup.operator_key = sluice::backup::crypt::keygen().0;
    let other = Backups::from_config(&cfg).expect("config").expect("configured");
    let e = restore::run(svc, &other, b.id, restore::Mode::InPlace, &Actor::Cli, None, &backup::no_progress)
        .await
        .expect_err("wrong key refused");
    assert!(e.to_string().contains("operator"), "{e}");
    check_untouched().await;

    // Intact again: the same backup restores.
    let r = restore_in_place(svc, b.id).await.expect("restore");
    assert_eq!(r.objects_deleted, 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let v = sql(&gw, &t, &["SELECT count(*) FROM k"]).await;
    assert_eq!(v["results"][0]["rows"][0][0], 100);
    gw.delete_tenant(&t.name).await;
}

async fn row_fence(svc: &Services, id: TenantId) -> Option<String> {
    let c = svc.control.client().await.expect("control");
    c.query_one("SELECT fenced_reason FROM tenants WHERE id = $1", &[&id.0]).await.expect("row").get(0)
}

/// A TCP proxy to `upstream` that cuts every connection once `budget`
/// bytes in total went towards the upstream.
async fn cutting_proxy(upstream: &str, budget: u64) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (upstream, sent) = (upstream.clone(), sent.clone());
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = async {
                    let mut buf = vec![0u8; 16 << 10];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if sent.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed) > budget {
                            return; // the store "goes away"
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = tokio::io::copy(&mut sr, &mut cw);
                tokio::select! { _ = up => {}, _ = down => {} }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_backup_that_fails_midway_leaves_nothing_that_looks_complete() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("bk-fail")).await;
    let svc = &gw.svc;
    sql(
        &gw,
        &t,
        &[
            "CREATE TABLE big (id int, pad text)",
            "INSERT INTO big SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 40000) g",
        ],
    )
    .await;
    for i in 0..3 {
        put_object(&gw, &t, &format!("o{i}.bin"), pseudo_random(3 << 20, i), &[]).await;
    }
    let row = tenant_row(svc, &t.name).await;

    // The backup store goes away after ~4 MB.
    let mut cfg = crate::support::config();
    cfg.backup.endpoint = cutting_proxy(&cfg.backup.endpoint, 4 << 20).await;
    let broken = Services::new(cfg).expect("services");
    let opts = create::Options {
        trigger: create::Trigger::Manual,
        actor: &Actor::Cli,
        request_id: None,
        progress: &backup::no_progress,
        id: None,
    };
    create::run(&broken, backups(&broken), &row, &opts).await.expect_err("store went away");

    // Postgres goes away: the dump's session is ended while it runs. A lock
    // on the table holds pg_dump at its start, so the end comes mid-dump.
    let locker = svc.pg_admin.connect(Some(&row.db_name)).await.expect("admin");
    locker.batch_execute("BEGIN; LOCK TABLE big IN ACCESS EXCLUSIVE MODE").await.expect("lock");
    let killer = {
        let (admin, db) = (svc.pg_admin.clone(), row.db_name.clone());
        tokio::spawn(async move {
            let c = admin.connect(None).await.expect("admin");
            for _ in 0..3000 {
                let n: i64 = c
                    .query_one(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                         WHERE application_name = 'sluice-pg_dump' AND wait_event_type = 'Lock' AND datname = $1",
                        &[&db],
                    )
                    .await
                    .map(|r| r.get(0))
                    .unwrap_or(0);
                if n > 0 {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        })
    };
    let backup = create::run(svc, backups(svc), &row, &opts);
    let release = async {
        let killed = killer.await.expect("killer");
        locker.batch_execute("ROLLBACK").await.expect("unlock");
        killed
    };
    let (r, killed) = tokio::join!(backup, release);
    assert!(killed, "the dump's session was seen waiting and ended");
    assert!(r.is_err(), "a backup whose dump was cut fails: {r:?}");

    // Neither left a complete backup, a manifest, or parts.
    let rows = catalog::list(&svc.control.client().await.expect("c"), row.id, true).await.expect("list");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|b| b.status == "failed" && b.error.is_some()), "{rows:?}");
    let bk = backups(svc);
    for b in &rows {
        let manifest = target::manifest_key(row.id, b.id);
        assert!(!bk.target.exists(&manifest).await.expect("head"), "failed run {} has no manifest", b.id);
        assert!(catalog::manifest(bk, row.id, b.id).await.is_err());
    }
    // A failed run removes its parts when the target lets it; expiry
    // collects whatever a run could not remove (the store was gone) and
    // the content the failed runs uploaded.
    let lock = catalog::TenantLock::try_take(svc, row.id).await.expect("lock").expect("free");
    catalog::expire(svc, bk, &row, &Actor::Cli).await.expect("expire");
    for b in &rows {
        let parts = bk.target.list(&target::backup_prefix(row.id, b.id)).await.expect("list parts");
        assert!(parts.is_empty(), "parts of failed run {} collected: {parts:?}", b.id);
    }
    let content = bk.target.list(&format!("{}content/", target::tenant_prefix(row.id))).await.expect("content");
    assert!(content.is_empty(), "unreferenced content collected: {content:?}");
    drop(lock);
    // The object hold is gone: writes go straight through again.
    put_object(&gw, &t, "o0.bin", b"new".to_vec(), &[]).await;
    gw.delete_tenant(&t.name).await;
}

#[tokio::test]
async fn a_second_backup_of_unchanged_objects_uploads_no_object_bytes() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("bk-dedup")).await;
    let svc = &gw.svc;
    for i in 0..6 {
        put_object(&gw, &t, &format!("blob/{i}"), pseudo_random(1 << 20, 100 + i), &[("i", "x")]).await;
    }
    // Two keys with the same content are stored once.
    put_object(&gw, &t, "copy/0", pseudo_random(1 << 20, 100), &[]).await;
    let row = tenant_row(svc, &t.name).await;
    let first = take(svc, &row).await;
    assert!(first.uploaded_bytes > 6 << 20, "{first:?}");
    let bk = backups(svc);
    let content_prefix = format!("{}content/", target::tenant_prefix(row.id));
    assert_eq!(bk.target.list(&content_prefix).await.expect("list").len(), 6, "7 objects, 6 distinct contents");

    let second = take(svc, &row).await;
    assert_eq!(second.object_count, 7);
    assert!(second.uploaded_bytes < 64 << 10, "only the small parts and manifest: {} bytes", second.uploaded_bytes);
    assert_eq!(bk.target.list(&content_prefix).await.expect("list").len(), 6);

    // One changed object: only it is uploaded.
    put_object(&gw, &t, "blob/3", pseudo_random(1 << 20, 999), &[]).await;
    let third = take(svc, &row).await;
    assert!(third.uploaded_bytes > 1 << 20 && third.uploaded_bytes < (1 << 20) + (128 << 10), "{third:?}");
    // Every backup restores its own version.
    let v = verify::run(svc, bk, second.id, &Actor::Cli, None, &backup::no_progress).await.expect("verify");
    assert!(v.ok, "{v:?}");
    gw.delete_tenant(&t.name).await;
}

async fn manifest_of(svc: &Services, t: &Tenant, id: uuid::Uuid) -> sluice::backup::manifest::Manifest {
    catalog::manifest(backups(svc), t.id, id).await.expect("manifest").1
}

#[tokio::test]
async fn an_unchanged_database_is_not_dumped_again_and_every_kind_of_change_is_caught() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("bk-same")).await;
    let svc = &gw.svc;
    sql(
        &gw,
        &t,
        &[
            "CREATE TABLE items (id bigserial PRIMARY KEY, name text, score float8)",
            "INSERT INTO items (name, score) SELECT 'n' || g, g / 3.0 FROM generate_series(1, 3000) g",
        ],
    )
    .await;
    let row = tenant_row(svc, &t.name).await;
    let first = take(svc, &row).await;
    let m1 = manifest_of(svc, &row, first.id).await;
    assert_eq!(m1.totals.db_reused_from, None);
    assert!(m1.db_fingerprint.is_some());

    // Nothing changed: the dump is the first one's, copied, not uploaded.
    let second = take(svc, &row).await;
    let m2 = manifest_of(svc, &row, second.id).await;
    assert_eq!(m2.totals.db_reused_from, Some(first.id));
    let (d1, d2) = (m1.part("db.dump").expect("dump"), m2.part("db.dump").expect("dump"));
    assert_eq!((&d1.stored_sha256, d1.plain_bytes), (&d2.stored_sha256, d2.plain_bytes));
    assert_ne!(d1.key, d2.key, "a copy of its own, so expiring the first keeps it");
    assert!((second.uploaded_bytes as u64) < d1.stored_bytes, "{second:?}");
    assert_eq!(m2.tables, m1.tables);

    // Every kind of change makes a fresh dump: one value (same row count),
    // a sequence alone, a definition alone, a large object.
    let changes: [&[&str]; 4] = [
        &["UPDATE items SET name = 'changed' WHERE id = 7"],
        &["SELECT nextval('items_id_seq')"],
        &["COMMENT ON COLUMN items.score IS 'points'"],
        &["SELECT lo_from_bytea(0, '\\x0102'::bytea)"],
    ];
    let mut last = second.id;
    for change in changes {
        sql(&gw, &t, change).await;
        let b = take(svc, &row).await;
        let m = manifest_of(svc, &row, b.id).await;
        assert_eq!(m.totals.db_reused_from, None, "{change:?} must be dumped");
        last = b.id;
    }
    let again = take(svc, &row).await;
    assert_eq!(manifest_of(svc, &row, again.id).await.totals.db_reused_from, Some(last));

    // The reused dump restores what the first backup held.
    let v = verify::run(svc, backups(svc), second.id, &Actor::Cli, None, &backup::no_progress).await.expect("verify");
    assert!(v.ok, "{v:?}");
    restore_in_place(svc, second.id).await.expect("restore in place");
    tokio::time::sleep(Duration::from_millis(2500)).await; // the fence book of this instance
    let v = sql(&gw, &t, &["SELECT name FROM items WHERE id = 7", "SELECT nextval('items_id_seq') AS n"]).await;
    assert_eq!(v["results"][0]["rows"][0][0], "n7");
    assert_eq!(v["results"][1]["rows"][0][0], 3001);
    gw.delete_tenant(&t.name).await;
}

async fn backup_rows(svc: &Services, tenant: TenantId) -> Vec<(uuid::Uuid, String)> {
    let c = svc.control.client().await.expect("control");
    let rows = c.query("SELECT id, status FROM backups WHERE tenant_id = $1", &[&tenant.0]).await.expect("rows");
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

async fn age_backup(svc: &Services, id: uuid::Uuid) {
    let c = svc.control.client().await.expect("control");
    c.execute("UPDATE backups SET started_at = now() - interval '1000 days' WHERE id = $1", &[&id]).await.expect("age");
}

#[tokio::test]
async fn a_deleted_tenants_backups_expire_by_age_then_vanish_and_can_be_purged_at_once() {
    let gw = Gateway::start().await;
    let svc = &gw.svc;
    let bk = backups(svc);
    let a = gw.create_tenant(&unique("bk-gone")).await;
    put_object(&gw, &a, "doc", b"kept after the tenant".to_vec(), &[]).await;
    let ra = tenant_row(svc, &a.name).await;
    let (a1, a2) = (take(svc, &ra).await, take(svc, &ra).await);
    assert!(matches!(purge::find(svc, &a.name).await, Err(backup::BackupError::Conflict(_))), "a live tenant");
    gw.delete_tenant(&a.name).await;

    // Kept after the tenant went, found by its former name.
    let d = purge::find(svc, &a.name).await.expect("a deleted tenant with backups");
    assert_eq!((d.tenant_id, d.complete), (ra.id.0, 2));
    purge::expire_deleted(svc, bk, &Actor::Cli).await.expect("pass");
    assert_eq!(backup_rows(svc, ra.id).await.len(), 2, "young backups stay");
    // Minimum counts do not apply any more: an old one expires alone.
    age_backup(svc, a1.id).await;
    let pass = purge::expire_deleted(svc, bk, &Actor::Cli).await.expect("pass");
    let mine = pass.iter().find(|r| r.tenant_id == Some(ra.id.0)).expect("this tenant");
    assert_eq!((mine.backups_expired.clone(), mine.purged), (vec![a1.id], false));
    catalog::manifest(bk, ra.id, a2.id).await.expect("the younger backup still opens");
    // The last one too: then nothing of the tenant is left in the target.
    age_backup(svc, a2.id).await;
    let pass = purge::expire_deleted(svc, bk, &Actor::Cli).await.expect("pass");
    assert!(pass.iter().any(|r| r.tenant_id == Some(ra.id.0) && r.purged), "{pass:?}");
    assert_eq!(bk.target.list(&target::tenant_prefix(ra.id)).await.expect("list"), vec![]);
    assert_eq!(backup_rows(svc, ra.id).await, vec![]);

    // Purge at once, a pinned backup included.
    let p = gw.create_tenant(&unique("bk-purge")).await;
    put_object(&gw, &p, "doc", b"to be erased".to_vec(), &[]).await;
    let rp = tenant_row(svc, &p.name).await;
    let pinned = take(svc, &rp).await;
    catalog::set_pinned(svc, &rp, pinned.id, true, &Actor::Cli, None).await.expect("pin");
    gw.delete_tenant(&p.name).await;
    let d = purge::find(svc, &rp.id.0.to_string()).await.expect("by id");
    assert_eq!(d.pinned, 1);
    let out = purge::purge(svc, bk, &d, &Actor::Cli).await.expect("purge");
    assert!(out.purged && out.keys_deleted >= 5, "{out:?}");
    assert_eq!(bk.target.list(&target::tenant_prefix(rp.id)).await.expect("list"), vec![]);
    assert_eq!(backup_rows(svc, rp.id).await, vec![]);
    assert!(matches!(purge::find(svc, &p.name).await, Err(backup::BackupError::NotFound(_))));
    let c = svc.control.client().await.expect("control");
    let audited: i64 = c
        .query_one("SELECT count(*) FROM audit_log WHERE tenant_id = $1 AND action = 'backup.purge'", &[&rp.id.0])
        .await
        .expect("audit")
        .get(0);
    assert_eq!(audited, 1);
}

#[tokio::test]
async fn expiry_by_age_and_count_keeps_pinned_backups_and_deletes_unreferenced_content() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("bk-expire")).await;
    let svc = &gw.svc;
    let row = tenant_row(svc, &t.name).await;
    put_object(&gw, &t, "first", pseudo_random(10_000, 1), &[]).await;
    let b1 = take(svc, &row).await;
    put_object(&gw, &t, "first", pseudo_random(10_000, 2), &[]).await;
    let b2 = take(svc, &row).await;
    put_object(&gw, &t, "first", pseudo_random(10_000, 3), &[]).await;
    let b3 = take(svc, &row).await;
    let b4 = take(svc, &row).await;
    let patch =
        catalog::SettingsPatch { retain_days: Some(Some(1)), retain_min_count: Some(Some(1)), ..Default::default() };
    catalog::set_settings(svc, &row, &patch, &Actor::Cli, None).await.expect("settings");
    // b1..b3 are two days old; b2 is pinned; b4 is new.
    let c = svc.control.client().await.expect("c");
    c.execute(
        "UPDATE backups SET started_at = now() - interval '2 days' WHERE id = ANY($1)",
        &[&vec![b1.id, b2.id, b3.id]],
    )
    .await
    .expect("age");
    catalog::set_pinned(svc, &row, b2.id, true, &Actor::Cli, None).await.expect("pin");
    let bk = backups(svc);
    let content_prefix = format!("{}content/", target::tenant_prefix(row.id));
    assert_eq!(bk.target.list(&content_prefix).await.expect("list").len(), 3);

    let lock = catalog::TenantLock::try_take(svc, row.id).await.expect("lock").expect("free");
    let out = catalog::expire(svc, bk, &row, &Actor::Cli).await.expect("expire");
    drop(lock);
    let mut expired = out.backups.clone();
    expired.sort();
    let mut want = vec![b1.id, b3.id];
    want.sort();
    assert_eq!(expired, want, "old unpinned backups expire; the pinned one and the newest stay");
    // b1's content is referenced by no remaining backup; b2's (pinned) and b3/b4's (shared) stay.
    assert_eq!(out.content_deleted, 1, "{out:?}");
    assert_eq!(bk.target.list(&content_prefix).await.expect("list").len(), 2);
    let rows = catalog::list(&c, row.id, false).await.expect("list");
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), vec![b4.id, b2.id]);
    assert!(bk.target.list(&target::backup_prefix(row.id, b1.id)).await.expect("parts").is_empty());
    // The pinned one still restores.
    let v = verify::run(svc, bk, b2.id, &Actor::Cli, None, &backup::no_progress).await.expect("verify");
    assert!(v.ok, "{v:?}");
    let audit: i64 = c
        .query_one("SELECT count(*) FROM audit_log WHERE tenant_id = $1 AND action = 'backup.expire'", &[&row.id.0])
        .await
        .expect("audit")
        .get(0);
    assert_eq!(audit, 1, "expiry is audited");
    gw.delete_tenant(&t.name).await;
}

#[tokio::test]
async fn a_backup_taken_under_concurrent_writes_restores_to_a_consistent_state() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("bk-live")).await;
    let svc = &gw.svc;
    sql(&gw, &t, &["CREATE TABLE files (id int PRIMARY KEY, version int NOT NULL)"]).await;
    let row = tenant_row(svc, &t.name).await;
    // The writer: object first, then the row that refers to it; and one
    // object overwritten again and again, its metadata naming its body.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (http, base, key, stop) = (gw.http.clone(), gw.base.clone(), t.service_key.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let body = format!("file {i}").repeat(1000);
                let r = http
                    .put(format!("{base}/v1/objects/files/{i}"))
                    .bearer_auth(&key)
                    .header("x-sluice-meta-version", i.to_string())
                    .body(body.clone())
                    .send()
                    .await;
                assert_eq!(r.expect("put").status(), 200);
                let r = http
                    .put(format!("{base}/v1/objects/current"))
                    .bearer_auth(&key)
                    .header("x-sluice-meta-version", i.to_string())
                    .body(body)
                    .send()
                    .await;
                assert_eq!(r.expect("put").status(), 200);
                let q = json!({ "statements": [{ "sql": format!("INSERT INTO files VALUES ({i}, {i})") }] });
                let r = http.post(format!("{base}/v1/sql")).bearer_auth(&key).json(&q).send().await;
                assert_eq!(r.expect("sql").status(), 200);
                if i.is_multiple_of(10) {
                    // Some deletes too.
                    let r = http.delete(format!("{base}/v1/objects/files/{}", i - 5)).bearer_auth(&key).send().await;
                    assert_eq!(r.expect("delete").status(), 204);
                }
            }
            i
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let b = take(svc, &row).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.expect("writer");
    assert!(written > 20, "the writer kept writing ({written})");

    let copy = restore_as_new(svc, b.id, &unique("bk-live-copy")).await;
    let v = sql(&gw, &copy, &["SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM files"]).await;
    let ids: Vec<u32> = serde_json::from_value(v["results"][0]["rows"][0][0].clone()).expect("ids");
    assert!(!ids.is_empty() && ids.len() < written as usize, "a cut in the middle: {} of {written}", ids.len());
    let keys = list_keys(&gw, &copy).await;
    // Every row's object was written before the row: it is in the backup
    // (unless the writer deleted it before the snapshot).
    let top = ids.iter().copied().max().unwrap_or(0);
    for id in &ids {
        let deleted_before = (id + 5) % 10 == 0 && id + 5 <= top;
        assert!(
            deleted_before || keys.contains(&format!("files/{id}")),
            "row {id} refers to an object the backup lacks"
        );
    }
    // Every object is one whole version: its metadata names its body.
    for k in keys.iter().filter(|k| k.starts_with("files/") || *k == "current") {
        let (body, _, meta) = get_object(&gw, &copy, k).await.expect("object");
        let version = meta.get("version").expect("version metadata");
        assert_eq!(body, format!("file {version}").repeat(1000).into_bytes(), "{k} is whole");
    }
    // The backup holds no object written well after its snapshot.
    let (_, m) = catalog::manifest(backups(svc), row.id, b.id).await.expect("manifest");
    assert!(
        m.totals.object_count as usize <= ids.len() + 3,
        "{} objects for {} rows",
        m.totals.object_count,
        ids.len()
    );
    gw.delete_tenant(&copy.name).await;
    gw.delete_tenant(&t.name).await;
}

#[tokio::test]
async fn a_backup_from_an_older_template_restores_and_gets_the_newer_migrations() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("bk-old")).await;
    let svc = &gw.svc;
    sql(&gw, &t, &["CREATE TABLE keep (id int)", "INSERT INTO keep VALUES (1), (2)"]).await;
    let row = tenant_row(svc, &t.name).await;
    // Make the database look as it did before template migration 1.
    let c = svc.pg_admin.connect(Some(&row.db_name)).await.expect("admin");
    c.batch_execute("DROP SCHEMA sluice CASCADE; DELETE FROM sluice_meta.migrations").await.expect("age the template");
    let b = take(svc, &row).await;
    let (_, m) = catalog::manifest(backups(svc), row.id, b.id).await.expect("manifest");
    assert!(m.template_migrations.is_empty());

    let r = restore_in_place(svc, b.id).await.expect("restore");
    assert_eq!(r.template_migrations_applied, vec![1], "the newer migration ran after the restore");
    let c = svc.pg_admin.connect(Some(&row.db_name)).await.expect("admin");
    let owner: String = c
        .query_one("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'sluice'", &[])
        .await
        .expect("schema")
        .get(0);
    assert_eq!(owner, format!("{}_gw", row.db_role), "the collection owner holds the new schema");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let v = sql(&gw, &t, &["SELECT count(*) FROM keep"]).await;
    assert_eq!(v["results"][0]["rows"][0][0], 2);
    // Collections work on the migrated database.
    let (s, v) = call(&gw, &t, "PUT", "/v1/collections/after", Some(json!({ "dimension": 2 }))).await;
    assert_eq!(s, 201, "{v}");
    gw.delete_tenant(&t.name).await;
}

#[tokio::test]
async fn both_doors_refuse_a_tenant_being_restored_with_a_retryable_error() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("bk-fence")).await;
    let svc = gw.svc.clone();
    sql(&gw, &t, &["CREATE TABLE f (id int)", "INSERT INTO f SELECT generate_series(1, 50000)"]).await;
    let row = tenant_row(&svc, &t.name).await;
    let b = take(&svc, &row).await;
    // A session opened before the restore.
    let (early, conn) = tokio_postgres::connect(&gw.door_pg(&t).url(), tokio_postgres::NoTls).await.expect("door");
    tokio::spawn(conn);

    let restoring = {
        let svc = svc.clone();
        tokio::spawn(async move { restore_in_place(&svc, b.id).await })
    };
    let mut fenced = false;
    for _ in 0..3000 {
        if row_fence(&svc, row.id).await.is_some() {
            fenced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(fenced, "the restore fences the tenant");
    // HTTP: 503 with Retry-After and a message that says why.
    let resp = gw
        .http
        .post(gw.url("/v1/sql"))
        .bearer_auth(&t.service_key)
        .json(&json!({ "statements": [{ "sql": "SELECT 1" }] }))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.expect("json");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("fenced"), "{body}");
    // Postgres door: a new login is refused with 57P03.
    let e = tokio_postgres::connect(&gw.door_pg(&t).url(), tokio_postgres::NoTls).await.err().expect("refused");
    assert_eq!(e.code().map(|c| c.code()), Some("57P03"), "{e}");
    // The open session's next statement too, once this instance's book has it.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    if row_fence(&svc, row.id).await.is_some() {
        let e = early.simple_query("SELECT 1").await.expect_err("refused while fenced");
        assert_eq!(e.code().map(|c| c.code()), Some("57P03"), "{e}");
    }
    restoring.await.expect("task").expect("restore");
    assert!(row_fence(&svc, row.id).await.is_none(), "the fence lifts");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let v = sql(&gw, &t, &["SELECT count(*) FROM f"]).await;
    assert_eq!(v["results"][0]["rows"][0][0], 50000);
    let (fresh, conn) = tokio_postgres::connect(&gw.door_pg(&t).url(), tokio_postgres::NoTls).await.expect("door");
    tokio::spawn(conn);
    fresh.simple_query("SELECT 1").await.expect("served again");
    gw.delete_tenant(&t.name).await;
}
