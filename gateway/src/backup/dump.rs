//! The tenant database: a logical dump with the stack's own `pg_dump` from
//! one exported snapshot, restored with `pg_restore` into a fresh database
//! as the tenant's role, and the statistics (row counts and content hashes
//! per table) that verification compares.
//!
//! Dumps carry no owners or privileges: a restore creates every object as
//! the tenant's role, then hands the `sluice` schema to the collection owner
//! (see [`crate::control::roles`]), so a backup restores under another
//! tenant's roles as well as under its own. `sluice_meta` (template
//! migration bookkeeping) is not dumped; the manifest carries it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tokio_postgres::Client;

use super::BackupError;
use super::manifest::{DbFingerprint, TableStat, TemplateMigration};
use crate::config::Config;
use crate::secret::ExposeSecret;
use crate::upstream::postgres::{quote_ident, quote_literal};

/// Per table: row count and an order-independent hash of the rows' text
/// form (sum of the first 64 bits of each row's md5), equal for equal
/// content whatever the physical order.
const TABLE_HASH_SQL: &str =
    "SELECT count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 16))::bit(64)::bigint::numeric), 0)::text FROM ";

/// Options shared by the dump and the schema-only dump its fingerprint
/// hashes: both must describe the same objects.
const DUMP_OPTIONS: [&str; 3] = ["--no-owner", "--no-privileges", "--exclude-schema=sluice_meta"];

/// Schemas never dumped or counted.
const SKIP_SCHEMAS: &str = "('pg_catalog', 'information_schema', 'pg_toast', 'sluice_meta')";

/// Where pg_dump and pg_restore are, and how to reach the cluster.
#[derive(Clone)]
pub struct Tools {
    bin: PathBuf,
    host: String,
    port: u16,
    user: String,
    password: String,
    restore_mem: String,
}

impl Tools {
    pub fn from_config(cfg: &Config) -> Result<Self, BackupError> {
        let bin = if !cfg.backup.pg_bin_dir.is_empty() {
            PathBuf::from(&cfg.backup.pg_bin_dir)
        } else if let Ok(dir) = std::env::var("SLUICE_PG_BIN") {
            PathBuf::from(dir)
        } else {
            PathBuf::new()
        };
        let url = url::Url::parse(cfg.postgres.admin_url.expose_secret())
            .map_err(|e| BackupError::Config(format!("postgres.admin_url: {e}")))?;
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        Ok(Self {
            bin,
            host: url.host_str().unwrap_or("127.0.0.1").to_owned(),
            port: url.port().unwrap_or(5432),
            user: decode(url.username()),
            password: url.password().map(decode).unwrap_or_default(),
            restore_mem: cfg.backup.restore_maintenance_work_mem.clone(),
        })
    }

    fn command(&self, tool: &str, db: &str) -> Command {
        let exe = if self.bin.as_os_str().is_empty() { PathBuf::from(tool) } else { self.bin.join(tool) };
        let mut c = Command::new(exe);
        c.env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.user)
            .env("PGPASSWORD", &self.password)
            .env("PGDATABASE", db)
            .env("PGAPPNAME", format!("sluice-{tool}"))
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null());
        c
    }

    /// `pg_dump` of `db` as of `snapshot`, in custom format without its own
    /// compression (the part is compressed with zstd), streamed to `out`.
    /// Blocking.
    pub fn dump(&self, db: &str, snapshot: &str, out: &mut dyn Write) -> Result<u64, BackupError> {
        let mut cmd = self.command("pg_dump", db);
        cmd.args(["--format=custom", "--compress=0"])
            .args(DUMP_OPTIONS)
            .arg(format!("--snapshot={snapshot}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| BackupError::Tool(format!("start pg_dump: {e}")))?;
        let stderr = collect_stderr(child.stderr.take());
        let mut stdout = child.stdout.take().ok_or_else(|| BackupError::Tool("pg_dump has no stdout".into()))?;
        let copied = std::io::copy(&mut stdout, out);
        if copied.is_err() {
            let _ = child.kill();
        }
        let status = child.wait().map_err(|e| BackupError::Tool(format!("pg_dump: {e}")))?;
        let err = stderr.join().unwrap_or_default();
        let n = copied.map_err(|e| BackupError::Io(format!("stream the dump: {e}")))?;
        if !status.success() {
            return Err(BackupError::Tool(format!("pg_dump failed ({status}): {}", err.trim())));
        }
        Ok(n)
    }

    /// sha256 of the schema-only dump of `db` as of `snapshot`, with the
    /// options of [`Tools::dump`] (so it changes exactly when the dump's
    /// definitions do). The random `\restrict` key lines pg_dump ≥ 16.10
    /// writes in plain format are left out. Blocking.
    pub fn schema_sha256(&self, db: &str, snapshot: &str) -> Result<String, BackupError> {
        use sha2::{Digest, Sha256};
        use std::io::BufRead;
        let mut cmd = self.command("pg_dump", db);
        cmd.args(["--schema-only", "--format=plain"])
            .args(DUMP_OPTIONS)
            .arg(format!("--snapshot={snapshot}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| BackupError::Tool(format!("start pg_dump: {e}")))?;
        let stderr = collect_stderr(child.stderr.take());
        let stdout = child.stdout.take().ok_or_else(|| BackupError::Tool("pg_dump has no stdout".into()))?;
        let mut hash = Sha256::new();
        let mut read = std::io::BufReader::new(stdout);
        let mut line = Vec::new();
        let streamed = loop {
            line.clear();
            match read.read_until(b'\n', &mut line) {
                Ok(0) => break Ok(()),
                Ok(_) if line.starts_with(b"\\restrict ") || line.starts_with(b"\\unrestrict ") => {}
                Ok(_) => hash.update(&line),
                Err(e) => break Err(e),
            }
        };
        if streamed.is_err() {
            let _ = child.kill();
        }
        let status = child.wait().map_err(|e| BackupError::Tool(format!("pg_dump: {e}")))?;
        let err = stderr.join().unwrap_or_default();
        streamed.map_err(|e| BackupError::Io(format!("read the schema dump: {e}")))?;
        if !status.success() {
            return Err(BackupError::Tool(format!("pg_dump --schema-only failed ({status}): {}", err.trim())));
        }
        Ok(hex::encode(hash.finalize()))
    }

    /// Restore a custom-format dump file into `db` (fresh, prepared by
    /// [`prepare_fresh`]) as `role`. Blocking.
    pub fn restore(&self, db: &str, role: &str, file: &Path, staging: &Path) -> Result<(), BackupError> {
        // The archive's table of contents, minus what the fresh database
        // already has and a tenant role may not do (comments on extensions).
        let list = self.command("pg_restore", db).arg("--list").arg(file).output();
        let list = list.map_err(|e| BackupError::Tool(format!("start pg_restore: {e}")))?;
        if !list.status.success() {
            return Err(BackupError::Tool(format!(
                "pg_restore --list failed: {}",
                String::from_utf8_lossy(&list.stderr).trim()
            )));
        }
        let toc: String = String::from_utf8_lossy(&list.stdout)
            .lines()
            .filter(|l| !l.contains(" COMMENT - EXTENSION "))
            .map(|l| format!("{l}\n"))
            .collect();
        let list_path = staging.join(format!("{db}.toc"));
        std::fs::write(&list_path, toc).map_err(|e| BackupError::Io(format!("write {}: {e}", list_path.display())))?;
        let mem = crate::sql::rules::memory_kb(&self.restore_mem).map_or(524_288, |kb| kb as u64);
        let out = self
            .command("pg_restore", db)
            .env("PGOPTIONS", format!("-c maintenance_work_mem={mem}kB -c statement_timeout=0"))
            .args(["--no-owner", "--no-privileges", "--exit-on-error", "--jobs=2"])
            .arg(format!("--role={role}"))
            .arg(format!("--dbname={db}"))
            .arg(format!("--use-list={}", list_path.display()))
            .arg(file)
            .output();
        let _ = std::fs::remove_file(&list_path);
        let out = out.map_err(|e| BackupError::Tool(format!("start pg_restore: {e}")))?;
        if !out.status.success() {
            return Err(BackupError::Tool(format!(
                "pg_restore failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}

fn collect_stderr(pipe: Option<std::process::ChildStderr>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = pipe {
            let _ = p.take(64 << 10).read_to_string(&mut s);
        }
        s
    })
}

/// Every user table: (schema, table).
pub async fn tables(c: &Client) -> Result<Vec<(String, String)>, BackupError> {
    relations(c, "('r', 'p', 'm')").await.map_err(|e| BackupError::pg("list tables", e))
}

/// The tenant's own relations of these `relkind`s (a literal SQL list),
/// outside the skipped schemas and extensions, ordered: (schema, name).
async fn relations(c: &Client, kinds: &str) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let rows = c
        .query(
            &format!(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind IN {kinds} AND n.nspname NOT IN {SKIP_SCHEMAS} AND n.nspname NOT LIKE 'pg_temp%'
                   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
                 ORDER BY 1, 2"
            ),
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Row count and content hash of one table, in `c`'s current snapshot.
async fn table_stat(c: &Client, schema: &str, table: &str) -> Result<TableStat, BackupError> {
    let sql = format!("{TABLE_HASH_SQL}{}.{} t", quote_ident(schema), quote_ident(table));
    let r = c.query_one(&sql, &[]).await.map_err(|e| BackupError::pg(&format!("hash {schema}.{table}"), e))?;
    Ok(TableStat { schema: schema.to_owned(), table: table.to_owned(), rows: r.get(0), content_hash: r.get(1) })
}

/// Row counts and content hashes of every user table, in `c`'s current
/// snapshot.
pub async fn table_stats(c: &Client) -> Result<Vec<TableStat>, BackupError> {
    let mut out = Vec::new();
    for (schema, table) in tables(c).await? {
        out.push(table_stat(c, &schema, &table).await?);
    }
    Ok(out)
}

/// Row counts and content hashes of `tables` in the exported `snapshot`,
/// over `workers` connections that share it (each table on one of them,
/// biggest first); results in the order of `tables`.
pub async fn table_stats_parallel(
    admin: &crate::upstream::postgres::PgAdmin,
    db: &str,
    snapshot: &str,
    tables: &[(String, String)],
    sizes: &[i64],
    workers: usize,
) -> Result<Vec<TableStat>, BackupError> {
    let workers = workers.clamp(1, tables.len().max(1));
    let mut order: Vec<usize> = (0..tables.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(sizes.get(i).copied().unwrap_or(0)));
    let mut load = vec![0i64; workers];
    let mut share: Vec<Vec<usize>> = vec![Vec::new(); workers];
    for i in order {
        let w = (0..workers).min_by_key(|&w| load[w]).unwrap_or(0);
        load[w] += sizes.get(i).copied().unwrap_or(0).max(1);
        share[w].push(i);
    }
    let runs = share.into_iter().map(|idx| async move {
        let c = admin.connect(Some(db)).await.map_err(BackupError::admin)?;
        c.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}; SET LOCAL statement_timeout = 0",
            quote_literal(snapshot)
        ))
        .await
        .map_err(|e| BackupError::pg("share the snapshot", e))?;
        let mut out = Vec::new();
        for i in idx {
            let (schema, table) = &tables[i];
            out.push((i, table_stat(&c, schema, table).await?));
        }
        let _ = c.batch_execute("COMMIT").await;
        Ok::<_, BackupError>(out)
    });
    let mut all: Vec<(usize, TableStat)> = futures::future::try_join_all(runs).await?.into_iter().flatten().collect();
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, t)| t).collect())
}

/// On-disk size of each of `tables`, in their order (to share the hashing).
pub async fn table_sizes(c: &Client, tables: &[(String, String)]) -> Result<Vec<i64>, BackupError> {
    let mut out = Vec::with_capacity(tables.len());
    for (schema, table) in tables {
        let name = format!("{}.{}", quote_ident(schema), quote_ident(table));
        let r = c
            .query_one("SELECT pg_total_relation_size($1::text::regclass)", &[&name])
            .await
            .map_err(|e| BackupError::pg("size a table", e))?;
        out.push(r.get(0));
    }
    Ok(out)
}

/// What the dump holds besides table rows and definitions, read in `c`'s
/// snapshot (`schema_sha256` comes from [`Tools::schema_sha256`]).
pub async fn fingerprint(c: &Client, schema_sha256: String) -> Result<DbFingerprint, BackupError> {
    use sha2::{Digest, Sha256};
    let seqs = relations(c, "('S')").await.map_err(|e| BackupError::pg("list sequences", e))?;
    let mut hash = Sha256::new();
    for (schema, name) in &seqs {
        let v = c
            .query_one(&format!("SELECT last_value, is_called FROM {}.{}", quote_ident(schema), quote_ident(name)), &[])
            .await
            .map_err(|e| BackupError::pg(&format!("read sequence {schema}.{name}"), e))?;
        let (last, called): (i64, bool) = (v.get(0), v.get(1));
        hash.update(format!("{schema}\0{name}\0{last}\0{called}\n").as_bytes());
    }
    let lo: String = c
        .query_one(
            "SELECT count(*)::text || ':' || coalesce(sum(('x' || substr(md5(loid::text || ':' || pageno::text || ':' || encode(data, 'hex')), 1, 16))::bit(64)::bigint::numeric), 0)::text FROM pg_largeobject",
            &[],
        )
        .await
        .map_err(|e| BackupError::pg("hash large objects", e))?
        .get(0);
    let ext: i64 = c
        .query_one("SELECT count(*) FROM pg_extension WHERE extconfig IS NOT NULL AND cardinality(extconfig) > 0", &[])
        .await
        .map_err(|e| BackupError::pg("list extension configuration tables", e))?
        .get(0);
    let activity: i64 = c
        .query_one(
            &format!(
                "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint FROM pg_stat_all_tables
                 WHERE schemaname NOT IN {SKIP_SCHEMAS}"
            ),
            &[],
        )
        .await
        .map_err(|e| BackupError::pg("read table statistics", e))?
        .get(0);
    Ok(DbFingerprint {
        schema_sha256,
        sequences_sha256: hex::encode(hash.finalize()),
        large_objects: lo,
        extension_config_tables: ext,
        activity,
    })
}

/// The template migrations applied in `c`'s database.
pub async fn template_migrations(c: &Client) -> Result<Vec<TemplateMigration>, BackupError> {
    let exists: bool = c
        .query_one("SELECT to_regclass('sluice_meta.migrations') IS NOT NULL", &[])
        .await
        .map_err(|e| BackupError::pg("look up template migrations", e))?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = c
        .query("SELECT version, name, checksum FROM sluice_meta.migrations ORDER BY version", &[])
        .await
        .map_err(|e| BackupError::pg("read template migrations", e))?;
    Ok(rows.iter().map(|r| TemplateMigration { version: r.get(0), name: r.get(1), checksum: r.get(2) }).collect())
}

/// Create `db` empty, owned by `role`, with pgvector, a locked-down
/// `public` and the template bookkeeping of the backup (so that only newer
/// template migrations run after the restore).
pub async fn prepare_fresh(
    admin: &crate::upstream::postgres::PgAdmin,
    db: &str,
    role: &str,
    migrations: &[TemplateMigration],
) -> Result<(), BackupError> {
    let c = admin.connect(None).await.map_err(BackupError::admin)?;
    let (dq, rq) = (quote_ident(db), quote_ident(role));
    c.batch_execute(&format!("CREATE DATABASE {dq} OWNER {rq} TEMPLATE template0 ENCODING 'UTF8'"))
        .await
        .map_err(|e| BackupError::pg("create the database to restore into", e))?;
    c.batch_execute(&format!("REVOKE ALL ON DATABASE {dq} FROM PUBLIC"))
        .await
        .map_err(|e| BackupError::pg("restrict the database to restore into", e))?;
    let t = admin.connect(Some(db)).await.map_err(BackupError::admin)?;
    let mut sql = format!(
        "CREATE EXTENSION IF NOT EXISTS vector; REVOKE ALL ON SCHEMA public FROM PUBLIC; GRANT ALL ON SCHEMA public TO {rq};
         CREATE SCHEMA sluice_meta; REVOKE ALL ON SCHEMA sluice_meta FROM PUBLIC;
         CREATE TABLE sluice_meta.migrations (version bigint PRIMARY KEY, name text NOT NULL,
             checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());"
    );
    for m in migrations {
        sql.push_str(&format!(
            "INSERT INTO sluice_meta.migrations (version, name, checksum) VALUES ({}, {}, {});",
            m.version,
            quote_literal(&m.name),
            quote_literal(&m.checksum)
        ));
    }
    t.batch_execute(&sql).await.map_err(|e| BackupError::pg("prepare the database to restore into", e))?;
    Ok(())
}
