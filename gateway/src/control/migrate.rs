//! Reversible SQL migrations for the control plane and the per-tenant template.
//!
//! Written by hand rather than taken from a library because none of the
//! tokio-postgres migration crates does all of: `down` files, a checksum per
//! applied file that refuses a changed file, an advisory lock so several gateway
//! instances can start at once, and running a set as another role (tenant
//! template objects are owned by the tenant's role).
//!
//! Files live in `migrations/{control,tenant}/NNNN_name.{up,down}.sql` and are
//! embedded in the binary. Each migration runs in its own transaction.

use include_dir::{Dir, include_dir};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

static CONTROL_DIR: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../migrations/control");
static TENANT_DIR: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../migrations/tenant");

/// Which set of migrations, and where its bookkeeping lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationSet {
    /// The control-plane database; bookkeeping in `public.sluice_migrations`.
    Control,
    /// Each tenant database; bookkeeping in `sluice_meta.migrations`, which the
    /// tenant's role cannot read or change.
    Tenant,
}

impl MigrationSet {
    fn dir(self) -> &'static Dir<'static> {
        match self {
            MigrationSet::Control => &CONTROL_DIR,
            MigrationSet::Tenant => &TENANT_DIR,
        }
    }

    fn table(self) -> &'static str {
        match self {
            MigrationSet::Control => "public.sluice_migrations",
            MigrationSet::Tenant => "sluice_meta.migrations",
        }
    }

    /// Advisory-lock key (advisory locks are per database).
    fn lock_key(self) -> i64 {
        match self {
            MigrationSet::Control => 0x511C_E000_0001,
            MigrationSet::Tenant => 0x511C_E000_0002,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MigrationSet::Control => "control",
            MigrationSet::Tenant => "tenant",
        }
    }
}

/// One migration as embedded in the binary.
#[derive(Debug, Clone)]
pub struct Migration {
    pub version: i64,
    pub name: String,
    pub up: &'static str,
    pub down: &'static str,
    pub checksum: String,
}

/// A migration with what the database says about it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationStatus {
    pub version: i64,
    pub name: String,
    pub applied: bool,
    pub applied_at: Option<String>,
    /// Applied, but the file's checksum differs from the recorded one.
    pub changed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration file {file}: {problem}")]
    BadFile { file: String, problem: String },
    #[error(
        "{set} migration {version:04}_{name} was changed after it was applied \
         (recorded checksum {recorded}, file has {actual}); restore the file and \
         put the change in a new migration"
    )]
    ChecksumMismatch { set: &'static str, version: i64, name: String, recorded: String, actual: String },
    #[error("{set} migration {version:04}_{name}: {source}")]
    Apply { set: &'static str, version: i64, name: String, source: tokio_postgres::Error },
    #[error("migration bookkeeping: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// All migrations of a set, sorted by version. Fails on a malformed file set
/// (a missing `down`, a duplicate version) so that a bad build cannot start.
pub fn migrations(set: MigrationSet) -> Result<Vec<Migration>, MigrateError> {
    let mut out: Vec<Migration> = Vec::new();
    let mut files: Vec<_> = set.dir().files().collect();
    files.sort_by_key(|f| f.path().to_path_buf());
    for file in files {
        let fname = file.path().to_string_lossy().into_owned();
        let Some(stem) = fname.strip_suffix(".up.sql") else { continue };
        let bad = |problem: &str| MigrateError::BadFile { file: fname.clone(), problem: problem.into() };
        let (num, name) = stem.split_once('_').ok_or_else(|| bad("expected NNNN_name.up.sql"))?;
        let version: i64 = num.parse().map_err(|_| bad("version is not a number"))?;
        let up = file.contents_utf8().ok_or_else(|| bad("not UTF-8"))?;
        let down = set
            .dir()
            .get_file(format!("{stem}.down.sql"))
            .and_then(|f| f.contents_utf8())
            .ok_or_else(|| bad("has no matching .down.sql"))?;
        if out.iter().any(|m| m.version == version) {
            return Err(bad("duplicate version"));
        }
        out.push(Migration {
            version,
            name: name.to_owned(),
            up,
            down,
            checksum: hex::encode(Sha256::digest(up.as_bytes())),
        });
    }
    for file in set.dir().files() {
        let f = file.path().to_string_lossy();
        if let Some(stem) = f.strip_suffix(".down.sql")
            && !out.iter().any(|m| format!("{:04}_{}", m.version, m.name) == stem)
        {
            return Err(MigrateError::BadFile { file: f.into_owned(), problem: "has no matching .up.sql".into() });
        }
    }
    out.sort_by_key(|m| m.version);
    Ok(out)
}

/// Options for running a set against one database.
#[derive(Debug, Clone, Default)]
pub struct RunAs {
    /// `SET LOCAL ROLE` to this (already validated) role for the migration body,
    /// so what it creates is owned by that role.
    pub role: Option<String>,
}

async fn ensure_bookkeeping(client: &Client, set: MigrationSet) -> Result<(), MigrateError> {
    // Checked first so a normal start does not log "already exists" notices.
    let exists: bool = client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&set.table()]).await?.get(0);
    if exists {
        return Ok(());
    }
    let ddl = match set {
        MigrationSet::Control => {
            "CREATE TABLE IF NOT EXISTS public.sluice_migrations (
                version bigint PRIMARY KEY,
                name text NOT NULL,
                checksum text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())"
        }
        MigrationSet::Tenant => {
            "CREATE SCHEMA IF NOT EXISTS sluice_meta;
             REVOKE ALL ON SCHEMA sluice_meta FROM PUBLIC;
             CREATE TABLE IF NOT EXISTS sluice_meta.migrations (
                version bigint PRIMARY KEY,
                name text NOT NULL,
                checksum text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())"
        }
    };
    client.batch_execute(ddl).await?;
    Ok(())
}

struct Applied {
    version: i64,
    checksum: String,
    applied_at: String,
}

async fn applied(client: &Client, set: MigrationSet) -> Result<Vec<Applied>, MigrateError> {
    let sql = format!(
        "SELECT version, checksum, to_char(applied_at, 'YYYY-MM-DD\"T\"HH24:MI:SSOF') FROM {} ORDER BY version",
        set.table()
    );
    Ok(client
        .query(&sql, &[])
        .await?
        .iter()
        .map(|r| Applied { version: r.get(0), checksum: r.get(1), applied_at: r.get(2) })
        .collect())
}

/// Holds the set's advisory lock for the lifetime of a run.
async fn with_lock<T>(
    client: &Client,
    set: MigrationSet,
    work: impl AsyncFnOnce() -> Result<T, MigrateError>,
) -> Result<T, MigrateError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&set.lock_key()]).await?;
    let out = work().await;
    // If this fails the connection is gone, and with it the session lock.
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&set.lock_key()]).await;
    out
}

fn verify(set: MigrationSet, files: &[Migration], done: &[Applied]) -> Result<(), MigrateError> {
    for a in done {
        if let Some(m) = files.iter().find(|m| m.version == a.version)
            && m.checksum != a.checksum
        {
            return Err(MigrateError::ChecksumMismatch {
                set: set.name(),
                version: m.version,
                name: m.name.clone(),
                recorded: a.checksum.clone(),
                actual: m.checksum.clone(),
            });
        }
    }
    Ok(())
}

/// Apply every pending migration; returns the ones applied. Refuses to run when
/// an applied file has changed.
pub async fn up(client: &mut Client, set: MigrationSet, run_as: &RunAs) -> Result<Vec<Migration>, MigrateError> {
    let files = migrations(set)?;
    let client_ref: &Client = client;
    // Migrations are applied with explicit BEGIN/COMMIT on this one session (the
    // session that holds the advisory lock).
    with_lock(client_ref, set, async || {
        ensure_bookkeeping(client_ref, set).await?;
        let done = applied(client_ref, set).await?;
        verify(set, &files, &done)?;
        let mut ran = Vec::new();
        for m in files.iter().filter(|m| !done.iter().any(|a| a.version == m.version)) {
            apply_one(client_ref, set, run_as, m, m.up, true).await?;
            ran.push(m.clone());
        }
        Ok(ran)
    })
    .await
}

/// Roll back the newest `steps` applied migrations (all of them when `None`).
pub async fn down(
    client: &mut Client,
    set: MigrationSet,
    run_as: &RunAs,
    steps: Option<usize>,
) -> Result<Vec<Migration>, MigrateError> {
    let files = migrations(set)?;
    let client_ref: &Client = client;
    with_lock(client_ref, set, async || {
        ensure_bookkeeping(client_ref, set).await?;
        let done = applied(client_ref, set).await?;
        verify(set, &files, &done)?;
        let mut rolled = Vec::new();
        for a in done.iter().rev().take(steps.unwrap_or(usize::MAX)) {
            let m = files.iter().find(|m| m.version == a.version).ok_or_else(|| MigrateError::BadFile {
                file: format!("{:04}", a.version),
                problem: "is applied but this binary does not have it; roll back with the binary that applied it"
                    .into(),
            })?;
            apply_one(client_ref, set, run_as, m, m.down, false).await?;
            rolled.push(m.clone());
        }
        Ok(rolled)
    })
    .await
}

/// Every known migration and whether it is applied; also reports changed files.
pub async fn status(client: &mut Client, set: MigrationSet) -> Result<Vec<MigrationStatus>, MigrateError> {
    let files = migrations(set)?;
    let client_ref: &Client = client;
    let done = with_lock(client_ref, set, async || {
        ensure_bookkeeping(client_ref, set).await?;
        applied(client_ref, set).await
    })
    .await?;
    Ok(files
        .iter()
        .map(|m| {
            let a = done.iter().find(|a| a.version == m.version);
            MigrationStatus {
                version: m.version,
                name: m.name.clone(),
                applied: a.is_some(),
                applied_at: a.map(|a| a.applied_at.clone()),
                changed: a.is_some_and(|a| a.checksum != m.checksum),
            }
        })
        .collect())
}

/// Fail if any applied migration's file changed (used at startup).
pub async fn verify_applied(client: &mut Client, set: MigrationSet) -> Result<(), MigrateError> {
    let files = migrations(set)?;
    let client_ref: &Client = client;
    let done = with_lock(client_ref, set, async || {
        ensure_bookkeeping(client_ref, set).await?;
        applied(client_ref, set).await
    })
    .await?;
    verify(set, &files, &done)
}

async fn apply_one(
    client: &Client,
    set: MigrationSet,
    run_as: &RunAs,
    m: &Migration,
    sql: &str,
    is_up: bool,
) -> Result<(), MigrateError> {
    let err = |source| MigrateError::Apply { set: set.name(), version: m.version, name: m.name.clone(), source };
    client.batch_execute("BEGIN").await.map_err(err)?;
    let result = async {
        if let Some(role) = &run_as.role {
            client.batch_execute(&format!("SET LOCAL ROLE {}", crate::upstream::postgres::quote_ident(role))).await?;
        }
        client.batch_execute(sql).await?;
        if run_as.role.is_some() {
            client.batch_execute("RESET ROLE").await?;
        }
        if is_up {
            let q = format!("INSERT INTO {} (version, name, checksum) VALUES ($1, $2, $3)", set.table());
            client.execute(&q, &[&m.version, &m.name, &m.checksum]).await?;
        } else {
            let q = format!("DELETE FROM {} WHERE version = $1", set.table());
            client.execute(&q, &[&m.version]).await?;
        }
        client.batch_execute("COMMIT").await
    }
    .await;
    if let Err(e) = result {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(err(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_sets_are_well_formed() {
        for set in [MigrationSet::Control, MigrationSet::Tenant] {
            let ms = migrations(set).expect("well-formed");
            assert!(!ms.is_empty(), "{} has migrations", set.name());
            assert!(ms.windows(2).all(|w| w[0].version < w[1].version));
        }
    }
}
