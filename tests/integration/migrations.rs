//! Migrations against a real, empty database: up → down → up, checksums,
//! concurrent starts, and the tenant template run as the tenant's role.

use sluice::control::migrate::{self, MigrateError, MigrationSet, RunAs};
use sluice::upstream::postgres::{PgAdmin, quote_ident};

use crate::support::{config, unique};

struct ScratchDb {
    admin: PgAdmin,
    name: String,
}

impl ScratchDb {
    async fn new() -> Self {
        let admin = PgAdmin::new(&config().postgres).expect("admin");
        let name = unique("mig").replace('-', "_");
        let c = admin.connect(None).await.expect("connect admin");
        c.batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name))).await.expect("create scratch db");
        Self { admin, name }
    }

    async fn client(&self) -> tokio_postgres::Client {
        self.admin.connect(Some(&self.name)).await.expect("connect scratch db")
    }

    async fn drop(self) {
        self.admin.drop_database(&self.name).await.expect("drop scratch db");
    }
}

async fn tables(c: &tokio_postgres::Client, schema: &str) -> Vec<String> {
    c.query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1", &[&schema])
        .await
        .expect("list tables")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn control_up_down_up_on_empty_database() {
    let db = ScratchDb::new().await;
    let mut c = db.client().await;
    let all = migrate::migrations(MigrationSet::Control).expect("files");

    let applied = migrate::up(&mut c, MigrationSet::Control, &RunAs::default()).await.expect("up");
    assert_eq!(applied.len(), all.len());
    let t = tables(&c, "public").await;
    for want in
        ["tenants", "api_keys", "quotas", "plugins", "plugin_versions", "collections", "audit_log", "sluice_migrations"]
    {
        assert!(t.contains(&want.to_string()), "{want} missing after up: {t:?}");
    }
    assert!(migrate::status(&mut c, MigrationSet::Control).await.expect("status").iter().all(|m| m.applied));
    // A second up is a no-op.
    assert!(migrate::up(&mut c, MigrationSet::Control, &RunAs::default()).await.expect("up again").is_empty());

    let rolled = migrate::down(&mut c, MigrationSet::Control, &RunAs::default(), None).await.expect("down");
    assert_eq!(rolled.len(), all.len());
    assert_eq!(tables(&c, "public").await, vec!["sluice_migrations".to_string()], "only bookkeeping left after down");
    assert!(migrate::status(&mut c, MigrationSet::Control).await.expect("status").iter().all(|m| !m.applied));

    let again = migrate::up(&mut c, MigrationSet::Control, &RunAs::default()).await.expect("up after down");
    assert_eq!(again.len(), all.len());
    assert!(tables(&c, "public").await.contains(&"tenants".to_string()));
    drop(c);
    db.drop().await;
}

#[tokio::test]
async fn changed_migration_file_is_refused() {
    let db = ScratchDb::new().await;
    let mut c = db.client().await;
    migrate::up(&mut c, MigrationSet::Control, &RunAs::default()).await.expect("up");
    // Simulate an edited file: the recorded checksum no longer matches.
    c.execute("UPDATE sluice_migrations SET checksum = repeat('0', 64) WHERE version = 1", &[]).await.expect("tamper");
    let err = migrate::up(&mut c, MigrationSet::Control, &RunAs::default()).await.expect_err("must refuse");
    assert!(matches!(err, MigrateError::ChecksumMismatch { version: 1, .. }), "{err}");
    assert!(err.to_string().contains("was changed after it was applied"), "{err}");
    assert!(migrate::verify_applied(&mut c, MigrationSet::Control).await.is_err());
    let st = migrate::status(&mut c, MigrationSet::Control).await.expect("status");
    assert!(st.iter().any(|m| m.changed));
    drop(c);
    db.drop().await;
}

#[tokio::test]
async fn concurrent_instances_apply_each_migration_once() {
    let db = ScratchDb::new().await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut c = db.client().await;
        tasks.push(tokio::spawn(async move {
            migrate::up(&mut c, MigrationSet::Control, &RunAs::default()).await.map(|v| v.len())
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("join").expect("up succeeds under the lock");
    }
    let n = migrate::migrations(MigrationSet::Control).expect("files").len();
    assert_eq!(total, n, "each migration applied exactly once across instances");
    let c = db.client().await;
    let rows: i64 = c.query_one("SELECT count(*) FROM sluice_migrations", &[]).await.expect("count").get(0);
    assert_eq!(rows as usize, n);
    drop(c);
    db.drop().await;
}

#[tokio::test]
async fn tenant_template_up_down_up_as_tenant_role() {
    let db = ScratchDb::new().await;
    let role = unique("migrole").replace('-', "_");
    let c0 = db.client().await;
    c0.batch_execute(&format!("CREATE ROLE {} NOLOGIN", quote_ident(&role))).await.expect("role");
    c0.batch_execute(&format!("GRANT CREATE ON DATABASE {} TO {}", quote_ident(&db.name), quote_ident(&role)))
        .await
        .expect("grant");
    let mut c = db.client().await;
    let run_as = RunAs { role: Some(role.clone()) };
    migrate::up(&mut c, MigrationSet::Tenant, &run_as).await.expect("tenant up");
    let owner: String = c
        .query_one("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'sluice'", &[])
        .await
        .expect("schema exists")
        .get(0);
    assert_eq!(owner, role, "template objects belong to the tenant role");
    migrate::down(&mut c, MigrationSet::Tenant, &run_as, None).await.expect("tenant down");
    let n: i64 =
        c.query_one("SELECT count(*) FROM pg_namespace WHERE nspname = 'sluice'", &[]).await.expect("q").get(0);
    assert_eq!(n, 0);
    migrate::up(&mut c, MigrationSet::Tenant, &run_as).await.expect("tenant up again");
    drop(c);
    drop(c0);
    db.drop().await;
    db_role_drop(&role).await;
}

async fn db_role_drop(role: &str) {
    let admin = PgAdmin::new(&config().postgres).expect("admin");
    admin.drop_role(role).await.expect("drop role");
}
