//! The Postgres door is indistinguishable from Postgres for drivers: each
//! protocol script runs against the tenant's database directly and through
//! the door (with one pooled upstream connection, so clients really share
//! it) and must give the same transcript ([`crate::pg_wire`]). Behaviour
//! that cannot be compared line by line (stale statements after DDL, dead
//! upstreams, revoked keys, gateway refusals) is checked directly.

use std::time::Duration;

use sluice::secret::ExposeSecret;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use crate::pg_door::{MustFail, connect, show};
use crate::pg_wire::Raw;
use crate::support::{DirectPg, Gateway, TestTenant, unique};

/// Run `script` direct and through the door; the transcripts must match.
async fn same<F, Fut>(gw: &Gateway, t: &TestTenant, script: F)
where
    F: Fn(DirectPg) -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let direct = script(gw.direct_pg(t).await).await;
    let door = script(gw.door_pg(t)).await;
    if direct != door {
        let mut report = String::new();
        for i in 0..direct.len().max(door.len()) {
            let (d, g) = (direct.get(i).map_or("", String::as_str), door.get(i).map_or("", String::as_str));
            report.push_str(&format!("{} {d:<70} | {g}\n", if d == g { ' ' } else { '!' }));
        }
        panic!("direct (left) and door (right) differ:\n{report}");
    }
}

async fn login(to: &DirectPg) -> Raw {
    Raw::connect(to, &[]).await.unwrap_or_else(|e| panic!("login to {}:{}: {e}", to.host, to.port))
}

/// Named and unnamed statements are the client's own, across pool switches.
async fn statements_script(to: DirectPg) -> Vec<String> {
    let (mut a, mut b) = (login(&to).await, login(&to).await);
    let mut t = Vec::new();
    t.extend(a.parse("foobar", "SELECT $1::int4 + 1 AS n", &[]).sync().run().await);
    // b uses the upstream meanwhile, with statements of the same names.
    t.extend(b.parse("foobar", "SELECT 'b'::text AS who", &[]).sync().run().await);
    t.extend(b.parse("", "SELECT 'b-unnamed'::text", &[]).sync().run().await);
    t.extend(a.query("EXECUTE foobar(41)").run().await);
    t.extend(a.bind("", "foobar", &[Some("1")]).execute("", 0).sync().run().await);
    t.extend(a.describe_statement("foobar").sync().run().await);
    // The unnamed statement survives a pool switch...
    t.extend(a.parse("", "SELECT $1::text || '-a' AS v", &[]).sync().run().await);
    t.extend(b.extended("SELECT 2", &[]).sync().run().await);
    t.extend(a.bind("", "", &[Some("x")]).execute("", 0).sync().run().await);
    t.extend(a.describe_statement("").sync().run().await);
    // ...and goes where Postgres drops it: at a simple query.
    t.extend(a.query("SELECT 1").run().await);
    t.extend(a.bind("", "", &[Some("x")]).execute("", 0).sync().run().await);
    // DEALLOCATE and DISCARD act on the client's names only.
    t.extend(a.query("DEALLOCATE foobar").run().await);
    t.extend(a.query("EXECUTE foobar(1)").run().await);
    t.extend(b.query("EXECUTE foobar").run().await);
    t.extend(a.parse("foobar", "SELECT 7", &[]).sync().run().await);
    t.extend(a.parse("foobar", "SELECT 7", &[]).sync().run().await);
    t.extend(a.query("DEALLOCATE ALL").run().await);
    t.extend(a.parse("foobar", "SELECT 8", &[]).sync().run().await);
    t.extend(a.bind("", "foobar", &[]).execute("", 0).sync().run().await);
    t.extend(a.query("DISCARD ALL").run().await);
    t.extend(a.bind("", "foobar", &[]).execute("", 0).sync().run().await);
    t.extend(b.query("EXECUTE foobar").run().await);
    t.extend(a.query("DEALLOCATE nosuch").run().await);
    t.extend(a.close_statement("nosuch").sync().run().await);
    // Inside a transaction block.
    t.extend(a.query("BEGIN").run().await);
    t.extend(a.parse("tx", "SELECT $1::int4 * 2", &[]).bind("", "tx", &[Some("21")]).execute("", 0).sync().run().await);
    t.extend(a.query("EXECUTE tx(5); DEALLOCATE tx").run().await);
    t.extend(a.query("COMMIT").run().await);
    a.terminate().await;
    b.terminate().await;
    t
}

/// Errors in pipelines: surfaced at once, the rest skipped until Sync, the
/// batch's implicit transaction rolled back.
async fn pipeline_script(to: DirectPg) -> Vec<String> {
    let mut a = login(&to).await;
    let mut t = Vec::new();
    t.extend(a.query("DROP TABLE IF EXISTS pipe_t; CREATE TABLE pipe_t (i int PRIMARY KEY)").run().await);
    a.extended("INSERT INTO pipe_t VALUES ($1)", &[Some("1")])
        .extended("SELECT 1/0", &[])
        .extended("INSERT INTO pipe_t VALUES ($1)", &[Some("2")])
        .parse("after_error", "SELECT 1", &[])
        .sync()
        .extended("INSERT INTO pipe_t VALUES ($1)", &[Some("3")])
        .sync();
    t.extend(a.answers(2).await);
    t.extend(a.query("SELECT array_agg(i ORDER BY i)::text FROM pipe_t").run().await);
    t.extend(a.bind("", "after_error", &[]).execute("", 0).sync().run().await);
    // A failing Parse and a failing Bind in the middle.
    a.extended("INSERT INTO pipe_t VALUES (10)", &[]).parse("", "SELEC 1", &[]).execute("", 0).sync();
    t.extend(a.run().await);
    a.extended("INSERT INTO pipe_t VALUES (11)", &[]).bind("", "nosuch", &[]).execute("", 0).sync();
    t.extend(a.run().await);
    // Duplicate key inside an explicit transaction: status E until ROLLBACK.
    t.extend(a.query("BEGIN").run().await);
    t.extend(a.extended("INSERT INTO pipe_t VALUES (3)", &[]).sync().run().await);
    t.extend(a.extended("SELECT 1", &[]).sync().run().await);
    t.extend(a.query("COMMIT").run().await);
    t.extend(a.query("SELECT array_agg(i ORDER BY i)::text FROM pipe_t; DROP TABLE pipe_t").run().await);
    // Portals with a row limit, and Describe of a portal.
    a.parse("", "SELECT g FROM generate_series(1, 5) g", &[]).bind("p1", "", &[]);
    a.describe_portal("p1").execute("p1", 2).execute("p1", 2).execute("p1", 2).sync();
    t.extend(a.run().await);
    a.terminate().await;
    t
}

/// Settings set over the extended protocol stay with their client.
async fn settings_script(to: DirectPg) -> Vec<String> {
    let (mut a, mut b) = (login(&to).await, login(&to).await);
    let mut t = Vec::new();
    t.extend(a.extended("SET search_path TO diff_s, public", &[]).sync().run().await);
    t.extend(b.query("SHOW search_path").run().await);
    t.extend(a.query("SHOW search_path").run().await);
    t.extend(a.extended("SELECT set_config('DateStyle', 'SQL, DMY', false)", &[]).sync().run().await);
    t.extend(b.query("SHOW DateStyle").run().await);
    t.extend(a.query("SHOW DateStyle").run().await);
    t.extend(a.extended("RESET DateStyle", &[]).sync().run().await);
    t.extend(a.query("SHOW DateStyle; SHOW application_name").run().await);
    t.extend(b.query("SET application_name = 'bee'").run().await);
    t.extend(a.query("SHOW application_name").run().await);
    t.extend(b.query("SHOW application_name").run().await);
    t.extend(a.query("DISCARD ALL").run().await);
    t.extend(a.query("SHOW search_path").run().await);
    a.terminate().await;
    b.terminate().await;
    t
}

/// Startup: reported parameters and the client's application_name.
async fn startup_script(to: DirectPg) -> Vec<String> {
    let mut t = Vec::new();
    let mut a = login(&to).await;
    t.extend(a.startup.iter().filter(|l| !l.starts_with("Param scram_iterations")).cloned());
    t.extend(a.query("SHOW application_name").run().await);
    a.terminate().await;
    let mut b = Raw::connect(&to, &[("application_name", "myapp"), ("DateStyle", "German")]).await.expect("login");
    t.extend(b.startup.iter().filter(|l| l.contains("application_name") || l.contains("DateStyle")).cloned());
    t.extend(b.query("SHOW application_name; SHOW DateStyle").run().await);
    b.terminate().await;
    // A client that sends Terminate before any startup packet, and one that
    // leaves after a few bytes, are not answered.
    for bytes in [&b"X\0\0\0\x04"[..], b"\0\0"] {
        let mut s = tokio::net::TcpStream::connect((to.host.as_str(), to.port)).await.expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut s, bytes).await.expect("write");
        tokio::io::AsyncWriteExt::shutdown(&mut s).await.ok();
        let mut out = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(2), tokio::io::AsyncReadExt::read_to_end(&mut s, &mut out)).await;
        t.push(format!("early close answered with {} bytes", out.len()));
    }
    t
}

async fn tenant(gw: &Gateway, prefix: &str, pool: i64) -> TestTenant {
    let t = gw.create_tenant(&unique(prefix)).await;
    gw.set_quota(&t.name, "pg_pool_size", pool).await;
    t
}

#[tokio::test]
async fn differential_protocol_scripts() {
    let gw = Gateway::start().await;
    let t = tenant(&gw, "pgdiff", 1).await;
    same(&gw, &t, statements_script).await;
    same(&gw, &t, pipeline_script).await;
    same(&gw, &t, settings_script).await;
    same(&gw, &t, startup_script).await;
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// Session advisory locks stay with the client that took them and go when
/// it leaves.
#[tokio::test]
async fn advisory_locks_stay_with_their_client() {
    async fn script(to: DirectPg) -> Vec<String> {
        let (mut a, mut b) = (login(&to).await, login(&to).await);
        let mut t = Vec::new();
        t.extend(a.extended("SELECT pg_advisory_lock(4242)", &[]).sync().run().await);
        t.extend(b.query("SELECT pg_try_advisory_lock(4242)").run().await);
        t.extend(b.query("SELECT pg_advisory_unlock(4242)").run().await);
        t.extend(a.query("SELECT pg_try_advisory_lock(4242)").run().await);
        a.terminate().await;
        // The lock goes with its client (the door cleans up in the background).
        for _ in 0..50 {
            let r = b.query("SELECT pg_try_advisory_lock(4242)").run().await;
            if r.iter().any(|l| l == "Data t") {
                t.extend(r);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        t.extend(b.query("SELECT pg_advisory_unlock_all()").run().await);
        b.terminate().await;
        t
    }
    let gw = Gateway::start().await;
    let t = tenant(&gw, "pglock", 2).await;
    same(&gw, &t, script).await;
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// A statement prepared after DDL sees the new catalog, whoever prepared the
/// same text before.
#[tokio::test]
async fn statements_are_never_stale_after_ddl() {
    let gw = Gateway::start().await;
    let t = tenant(&gw, "pgstale", 1).await;
    let a = connect(&gw, &t).await;
    let b = connect(&gw, &t).await;
    a.batch_execute("SET search_path TO public; CREATE TYPE mood AS ENUM ('ok'); CREATE TABLE t (d date, m mood)")
        .await
        .expect("setup");
    let insert = "INSERT INTO public.t VALUES ($1, $2)";
    let old = a.prepare(insert).await.expect("prepare before DDL");
    assert_eq!(old.params()[0], Type::DATE);
    a.batch_execute(
        "DROP TABLE public.t; DROP TYPE public.mood; CREATE TYPE public.mood AS ENUM ('ok', 'great');
         CREATE TABLE public.t (d text, m public.mood)",
    )
    .await
    .expect("DDL");
    for round in 0..3 {
        let fresh = b.prepare(insert).await.expect("prepare after DDL");
        assert_eq!(fresh.params()[0], Type::TEXT, "round {round}: Describe answered from the new catalog");
        let oid: u32 = b.query_one("SELECT 'public.mood'::regtype::oid", &[]).await.expect("oid").get(0);
        assert_eq!(fresh.params()[1].oid(), oid, "round {round}: the new type, not the dropped one");
        b.execute("INSERT INTO public.t VALUES ($1, 'great')", &[&format!("row {round}")]).await.expect("insert");
    }
    let n: i64 = b.query_one("SELECT count(*) FROM public.t", &[]).await.expect("count").get(0);
    assert!(n >= 3);
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// Connections that died idle never reach a client; a connection that dies
/// under a client ends that client's session with the server's own error.
#[tokio::test]
async fn dead_upstreams_are_never_handed_out() {
    let gw = Gateway::start().await;
    let t = tenant(&gw, "pgdead", 3).await;
    let direct = gw.direct_pg(&t).await;
    let clients: Vec<_> = futures::future::join_all((0..3).map(|_| connect(&gw, &t))).await;
    for c in &clients {
        c.simple_query("SELECT 1").await.expect("warm the pool");
    }
    let (admin, conn) =
        tokio_postgres::connect(gw.svc.config.postgres.admin_url.expose_secret(), tokio_postgres::NoTls)
            .await
            .expect("admin");
    tokio::spawn(conn);
    let kill = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{}' AND usename = '{}'",
        direct.db, direct.user
    );
    let killed: i64 = admin.query_one(&kill, &[]).await.expect("terminate idle").get(0);
    assert!(killed >= 1, "pooled connections existed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, c) in clients.iter().enumerate() {
        let v: i32 = c.query_one("SELECT $1::int4", &[&(i as i32)]).await.expect("fresh connection").get(0);
        assert_eq!(v, i as i32);
    }
    // Mid-transaction: 57P01 from the server, then the connection closes.
    let a = &clients[0];
    a.batch_execute("BEGIN; SELECT 1").await.expect("begin");
    let pid: i32 = a.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
    admin.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.expect("terminate");
    let e = a.simple_query("SELECT 2").await.must_fail("upstream died");
    assert!(
        e.code() == Some(&SqlState::ADMIN_SHUTDOWN) || e.is_closed(),
        "the server's own error or a closed connection, as direct: {e:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a.is_closed() || a.simple_query("SELECT 1").await.is_err(), "the session ended");
    let again = connect(&gw, &t).await;
    assert_eq!(again.query_one("SELECT 5::int4", &[]).await.expect("new session").get::<_, i32>(0), 5);
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// A gateway refusal inside a pipeline or transaction fails it as Postgres
/// would fail it for an error at that point: nothing of it commits.
#[tokio::test]
async fn refusals_fail_the_transaction() {
    let gw = Gateway::start().await;
    let t = tenant(&gw, "pgrefuse", 1).await;
    let to = gw.door_pg(&t);
    let mut a = login(&to).await;
    a.query("CREATE TABLE public.r (i int)").run().await;
    a.extended("INSERT INTO public.r VALUES (1)", &[])
        .extended("LOAD 'plpgsql'", &[])
        .extended("INSERT INTO public.r VALUES (2)", &[])
        .sync();
    let out = a.run().await;
    assert!(out.iter().any(|l| l.starts_with("Error ERROR 42501")), "{out:?}");
    assert_eq!(out.last().map(String::as_str), Some("Ready I"), "{out:?}");
    let out = a.query("BEGIN; INSERT INTO public.r VALUES (3)").run().await;
    assert_eq!(out.last().map(String::as_str), Some("Ready T"), "{out:?}");
    let out = a.query("ALTER ROLE CURRENT_USER CONNECTION LIMIT 1").run().await;
    assert!(out.iter().any(|l| l.starts_with("Error ERROR 42501")), "{out:?}");
    assert_eq!(out.last().map(String::as_str), Some("Ready E"), "the transaction failed, as on an error: {out:?}");
    let out = a.query("COMMIT").run().await;
    assert!(out.contains(&"Complete ROLLBACK".to_owned()), "{out:?}");
    let out = a.query("SELECT count(*) FROM public.r").run().await;
    assert!(out.contains(&"Data 0".to_owned()), "nothing committed: {out:?}");
    a.terminate().await;
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// Sessions of a revoked key end within seconds, naming the reason.
#[tokio::test]
async fn revoked_keys_end_their_sessions() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("pgrevoke")).await;
    let (client, conn) = tokio_postgres::connect(&gw.pg_url(&t.name, &t.service_key, &t.db()), tokio_postgres::NoTls)
        .await
        .expect("connect");
    let ended = tokio::spawn(conn);
    client.simple_query("SELECT 1").await.expect("works");
    // A second session of the key, inside a transaction (it holds an
    // upstream connection), ends too.
    let (busy, busy_conn) =
        tokio_postgres::connect(&gw.pg_url(&t.name, &t.service_key, &t.db()), tokio_postgres::NoTls)
            .await
            .expect("connect");
    let busy_ended = tokio::spawn(busy_conn);
    busy.batch_execute("BEGIN; SELECT 1").await.expect("begin");
    // Revoke the service key with the admin key.
    let prefix = t.body["service_key"]["prefix"].as_str().expect("prefix").to_owned();
    let resp =
        gw.http.delete(gw.url(&format!("/v1/keys/{prefix}"))).bearer_auth(&t.admin_key).send().await.expect("revoke");
    assert!(resp.status().is_success(), "revoke: {}", resp.status());
    let started = std::time::Instant::now();
    let r =
        tokio::time::timeout(Duration::from_secs(6), ended).await.expect("the session ended within 5 s").expect("task");
    assert!(started.elapsed() < Duration::from_secs(5));
    let e = r.must_fail("a FATAL");
    assert_eq!(e.code(), Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION), "{e:?}");
    assert!(format!("{e:?}").contains("revoked"), "{e:?}");
    let r = tokio::time::timeout(Duration::from_secs(6), busy_ended).await.expect("mid-transaction too").expect("task");
    let e = r.must_fail("a FATAL");
    assert_eq!(e.code(), Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION), "{e:?}");
    // Other keys go on.
    let admin = crate::pg_door::try_connect(&gw, &t.name, &t.admin_key, &t.db()).await.expect("admin key still works");
    assert_eq!(show(&admin, "application_name").await.as_deref(), Some(""));
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// At shutdown a session between transactions ends at once with 57P01; one
/// inside a transaction finishes it first, then ends the same way.
#[tokio::test]
async fn shutdown_ends_sessions_between_transactions() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("pgstop")).await;
    let url = gw.pg_url(&t.name, &t.service_key, &t.db());
    let (idle, idle_conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    let idle_ended = tokio::spawn(idle_conn);
    let (busy, busy_conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    let busy_ended = tokio::spawn(busy_conn);
    idle.simple_query("SELECT 1").await.expect("works");
    busy.batch_execute("BEGIN; CREATE TABLE kept (n int)").await.expect("begin");
    let (svc, name) = (gw.svc.clone(), t.name.clone());
    let stopping = tokio::spawn(gw.stop());
    let r = tokio::time::timeout(Duration::from_secs(3), idle_ended).await.expect("idle session ended").expect("task");
    let e = r.must_fail("a FATAL");
    assert_eq!(e.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{e:?}");
    assert!(!stopping.is_finished(), "shutdown waits for the open transaction");
    busy.batch_execute("INSERT INTO kept VALUES (1); COMMIT").await.expect("the transaction finishes");
    let r = tokio::time::timeout(Duration::from_secs(3), busy_ended).await.expect("then it ends").expect("task");
    let e = r.must_fail("a FATAL");
    assert_eq!(e.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{e:?}");
    tokio::time::timeout(Duration::from_secs(5), stopping).await.expect("shutdown done").expect("task");
    // The committed transaction stayed.
    let db = t.db();
    let admin = svc.pg_admin.connect(Some(&db)).await.expect("admin");
    let n: i64 = admin.query_one("SELECT count(*) FROM kept", &[]).await.expect("count").get(0);
    assert_eq!(n, 1);
    drop(admin);
    crate::support::delete_tenant_after_stop(&svc, &name).await;
}

/// Open a transaction in which opaque code (a function) has switched the
/// server's own statement timeout off: only the gateway's clock is left.
async fn begin_without_server_timeout(c: &tokio_postgres::Client) {
    c.batch_execute(
        "CREATE FUNCTION public.sneaky() RETURNS void LANGUAGE plpgsql AS
         $$BEGIN PERFORM set_config('statement_timeout', '0', false); END$$",
    )
    .await
    .expect("function");
    c.batch_execute("BEGIN").await.expect("begin");
    c.simple_query("SELECT public.sneaky()").await.expect("switch the server's timeout off");
}

/// While the door drains at shutdown, a statement past the tenant's timeout
/// (whose server-side timeout opaque code switched off) is still cancelled
/// by the gateway's clock.
#[tokio::test]
async fn deadlines_hold_while_the_door_drains() {
    let mut cfg = crate::support::config();
    cfg.server.shutdown_grace_ms = 6_000;
    let gw = Gateway::start_with(cfg).await;
    let t = gw.create_tenant(&unique("pgdrain")).await;
    gw.set_quota(&t.name, "statement_timeout_ms", 500).await;
    let c = connect(&gw, &t).await;
    begin_without_server_timeout(&c).await;
    let started = std::time::Instant::now();
    let sleeping = tokio::spawn(async move {
        let r = c.simple_query("SELECT pg_sleep(20)").await;
        (r.map(drop), c)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (svc, name) = (gw.svc.clone(), t.name.clone());
    let stopping = tokio::spawn(gw.stop());
    let (r, c) =
        tokio::time::timeout(Duration::from_secs(5), sleeping).await.expect("cancelled in time").expect("task");
    let e = r.must_fail("cancelled by the gateway");
    assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "{e:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "cancelled near quota + grace, not at the drain's end: {took:?}");
    drop(c);
    tokio::time::timeout(Duration::from_secs(10), stopping).await.expect("shutdown done").expect("task");
    crate::support::delete_tenant_after_stop(&svc, &name).await;
}

/// The two doors share one connection budget per tenant and queue fairly
/// within it: HTTP requests wait for Postgres-door transactions to end
/// instead of failing on the role's connection limit, and the reverse.
#[tokio::test]
async fn doors_share_one_connection_budget() {
    const POOL: usize = 10;
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("pgbudget")).await;
    assert_eq!(t.body["quotas"]["pg_pool_size"], POOL as i64, "the default pool: {}", t.body);
    let holders: Vec<_> = futures::future::join_all((0..POOL).map(|_| connect(&gw, &t))).await;
    for h in &holders {
        h.batch_execute("BEGIN; SELECT 1").await.expect("hold a connection");
    }
    let started = std::time::Instant::now();
    let texts: Vec<String> = (0..POOL).map(|i| format!("SELECT {i} AS n")).collect();
    let http = futures::future::join_all(texts.iter().map(|q| crate::plugins::sql(&gw, &t.service_key, q)));
    let release = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        for h in &holders {
            h.batch_execute("COMMIT").await.expect("commit");
        }
    };
    let (results, ()) = tokio::join!(http, release);
    for (status, body) in &results {
        assert_eq!(*status, 200, "queued, not failed: {body}");
    }
    assert!(started.elapsed() >= Duration::from_millis(600), "the HTTP requests waited for the budget");
    // And the Postgres door waits for HTTP in the same way: a slow HTTP
    // statement holds the last permit.
    let slow = crate::plugins::sql(&gw, &t.service_key, "SELECT pg_sleep(0.5)");
    let pg = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        for h in &holders[1..] {
            h.batch_execute("BEGIN; SELECT 1").await.expect("permits left");
        }
        let r = tokio::time::timeout(Duration::from_secs(5), holders[0].simple_query("SELECT 2")).await;
        for h in &holders[1..] {
            h.batch_execute("COMMIT").await.expect("commit");
        }
        r
    };
    let ((status, body), r) = tokio::join!(slow, pg);
    assert_eq!(status, 200, "{body}");
    r.expect("waited, then served").expect("query");
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// What code the door cannot see into leaves behind (here a session
/// advisory lock taken inside a function) never stays held by an idle
/// pooled connection.
#[tokio::test]
async fn opaque_leftovers_are_wiped_when_the_transaction_ends() {
    let gw = Gateway::start().await;
    let t = tenant(&gw, "pgwipe", 2).await;
    let a = connect(&gw, &t).await;
    let b = connect(&gw, &t).await;
    a.batch_execute(
        "CREATE FUNCTION public.lock_it() RETURNS bool LANGUAGE sql AS 'SELECT pg_try_advisory_lock(4343)'",
    )
    .await
    .expect("function");
    let got: bool = a.query_one("SELECT public.lock_it()", &[]).await.expect("lock").get(0);
    assert!(got);
    let mut free = false;
    for _ in 0..30 {
        if b.query_one("SELECT pg_try_advisory_lock(4343)", &[]).await.expect("try").get::<_, bool>(0) {
            free = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(free, "the lock left by opaque code was released with its connection's wipe");
    b.simple_query("SELECT pg_advisory_unlock_all()").await.expect("unlock");
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// More statements than an upstream connection keeps copies of: the oldest
/// copies are closed (between transactions) and re-prepared when used again,
/// for pooled and for pinned sessions alike.
#[tokio::test]
async fn statement_copies_are_bounded_per_connection() {
    let gw = Gateway::start().await;
    let t = tenant(&gw, "pgevict", 1).await;
    let pooled = connect(&gw, &t).await;
    let pinned = connect(&gw, &t).await;
    pinned.batch_execute("LISTEN evict_chan").await.expect("pin");
    let n = sluice::upstream::pg_wire::prepared::MAX_COPIES + 50;
    for c in [&pinned, &pooled] {
        let mut stmts = Vec::new();
        for i in 0..n {
            let st = c.prepare(&format!("SELECT {i}::int4 AS v")).await.expect("prepare");
            stmts.push(st);
        }
        for round in 0..2 {
            for (i, st) in stmts.iter().enumerate() {
                let v: i32 = c.query_one(st, &[]).await.expect("execute").get(0);
                assert_eq!(v, i as i32, "round {round}");
            }
        }
        if std::ptr::eq(c, &pinned) {
            drop(stmts);
            // Give the pinned session's connection back for the pooled client.
            pinned.batch_execute("UNLISTEN *").await.expect("unlisten");
            pinned.batch_execute("DISCARD ALL").await.expect("unpin");
        }
    }
    let count: i64 = pooled.query_one("SELECT count(*) FROM pg_prepared_statements", &[]).await.expect("count").get(0);
    assert!(
        count <= sluice::upstream::pg_wire::prepared::MAX_COPIES as i64 + 64,
        "{count} statements on the connection"
    );
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// The tenant's statement timeout holds on the Postgres door: time limits
/// cannot be lifted by SET, set_config or startup options, and a statement
/// whose server-side timeout opaque code switched off is cancelled by the
/// gateway's own clock.
#[tokio::test]
async fn statement_timeout_is_enforced_on_the_door() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("pgtimeout")).await;
    gw.set_quota(&t.name, "statement_timeout_ms", 1_000).await;
    let c = connect(&gw, &t).await;
    for sql in [
        "SET statement_timeout = 0",
        "SET LOCAL statement_timeout = '1h'",
        "SELECT set_config('statement_timeout', '0', false)",
        "SET lock_timeout = 0",
        "SET work_mem = '4GB'",
    ] {
        let e = c.simple_query(sql).await.must_fail(sql);
        assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{sql}: {e:?}");
    }
    c.simple_query("SET statement_timeout = '500ms'").await.expect("lowering is fine");
    c.simple_query("RESET statement_timeout").await.expect("RESET returns to the quota");
    assert_eq!(show(&c, "statement_timeout").await.as_deref(), Some("1s"));
    // Startup options.
    let url = format!("{}?options=-c%20statement_timeout%3D0", gw.pg_url(&t.name, &t.service_key, &t.db()));
    let e = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.must_fail("startup option over the quota");
    assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e:?}");
    // Opaque code switching the server's timeout off for the statements
    // that follow in its transaction: the gateway's clock cancels them.
    begin_without_server_timeout(&c).await;
    assert_eq!(show(&c, "statement_timeout").await.as_deref(), Some("0"));
    let started = std::time::Instant::now();
    let e = c.simple_query("SELECT pg_sleep(8)").await.must_fail("cancelled by the gateway");
    assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "{e:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1_500) && took < Duration::from_secs(5),
        "cancelled near quota + grace: {took:?}"
    );
    c.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(c.query_one("SELECT 1::int4", &[]).await.expect("still usable").get::<_, i32>(0), 1);
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// Session state grows with distinct settings only, and is bounded.
#[tokio::test]
async fn session_state_is_bounded() {
    let gw = Gateway::start().await;
    let t = tenant(&gw, "pgsets", 1).await;
    let a = connect(&gw, &t).await;
    let b = connect(&gw, &t).await;
    for i in 0..1_200 {
        a.simple_query(&format!("SET application_name = 'app-{i}'")).await.expect("set");
    }
    // Pool switches replay the state: one entry, the last value.
    assert_eq!(show(&b, "application_name").await.as_deref(), Some(""));
    assert_eq!(show(&a, "application_name").await.as_deref(), Some("app-1199"));
    let mut ended = None;
    for i in 0..1_100 {
        if let Err(e) = a.simple_query(&format!("SET sluice_x{i}.y = 1")).await {
            ended = Some(e);
            break;
        }
    }
    let e = ended.expect("the session ends past the bound");
    assert!(e.code() == Some(&SqlState::PROGRAM_LIMIT_EXCEEDED) || a.is_closed(), "{e:?}");
    assert_eq!(b.query_one("SELECT 1::int4", &[]).await.expect("others unaffected").get::<_, i32>(0), 1);
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}

/// A tenant created when the role's connection limit covered one pool only
/// gets room for both doors' pools when its pools are built.
#[tokio::test]
async fn role_connection_limits_cover_both_pools() {
    let gw = Gateway::start().await;
    let t = gw.create_tenant(&unique("pglimit")).await;
    let direct = gw.direct_pg(&t).await;
    let (admin, conn) =
        tokio_postgres::connect(gw.svc.config.postgres.admin_url.expose_secret(), tokio_postgres::NoTls)
            .await
            .expect("admin");
    tokio::spawn(conn);
    async fn limit(admin: &tokio_postgres::Client, role: String) -> i32 {
        admin.query_one("SELECT rolconnlimit FROM pg_roles WHERE rolname = $1", &[&role]).await.expect("limit").get(0)
    }
    assert_eq!(limit(&admin, direct.user.clone()).await, 24, "new tenants: 2 × pool + 4");
    admin.batch_execute(&format!("ALTER ROLE \"{}\" CONNECTION LIMIT 14", direct.user)).await.expect("as before");
    let c = connect(&gw, &t).await;
    c.simple_query("SELECT 1").await.expect("query");
    let mut got = 0;
    for _ in 0..50 {
        got = limit(&admin, direct.user.clone()).await;
        if got == 24 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, 24, "raised when the pool was built");
    gw.delete_tenant(&t.name).await;
    gw.stop().await;
}
