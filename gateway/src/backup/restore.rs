//! Restoring a backup, in place or as a new tenant.
//!
//! First every part and every content blob the manifest names is fetched
//! into a local staging folder and checked — stored size and sha256, then
//! authenticated decryption, then plaintext size and sha256. A flipped
//! byte, a truncated or missing part or a wrong key stops the restore here,
//! naming the part, before anything changes.
//!
//! Then the database is restored into a fresh one beside the live one
//! (template migrations newer than the backup's applied) while the tenant
//! still serves; the tenant is fenced ([`super::fence`]), the fresh
//! database swapped in by renaming, objects are put back
//! (unchanged ones skipped, ones the backup lacks deleted), plugin
//! artifacts and gateway records are restored, and the fence lifts.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use tokio::io::AsyncReadExt;

use super::crypt::{self, DataKey, HashingReader};
use super::manifest::{ContentRef, Manifest, ObjectEntry, Part};
use super::records::Records;
use super::{BackupError, Backups, Progress, ProgressFn, catalog, dump, fence};
use crate::control::audit::Actor;
use crate::control::migrate::{self, MigrationSet, RunAs};
use crate::control::provision::{self, CreateOptions, CreatedTenant};
use crate::control::tenants::{self, Tenant};
use crate::ids::{ObjectKey, TenantName};
use crate::plugins::PluginKind;
use crate::services::Services;
use crate::upstream::postgres::quote_ident;
use crate::upstream::redis::KvExported;
use crate::upstream::s3::{Conditions, ListQuery, PutOptions, Read as S3Read, S3Error};

/// Where a restore goes.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Replace the tenant's own data.
    InPlace,
    /// Create this new tenant from the backup.
    AsNew(TenantName),
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub backup_id: uuid::Uuid,
    pub tenant: String,
    /// Keys of a tenant created by the restore (shown once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<CreatedTenant>,
    pub tables: usize,
    pub objects_written: u64,
    pub objects_unchanged: u64,
    pub objects_deleted: u64,
    pub template_migrations_applied: Vec<i64>,
    /// Key prefixes whose per-key limits had no key to go to.
    pub key_limits_skipped: Vec<String>,
    pub fenced_ms: u64,
    pub elapsed_ms: u64,
}

/// A backup fetched and checked in a staging folder (removed on drop).
pub struct Staged {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub key: DataKey,
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Staged {
    pub fn part_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("part-{name}"))
    }
    pub fn content_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("content-{id}"))
    }
    pub fn records(&self) -> Result<Records, BackupError> {
        let bytes = std::fs::read(self.part_path("records.json")).map_err(|e| BackupError::Io(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| BackupError::Corrupt(format!("part records.json: {e}")))
    }
    /// The key/value entries.
    pub fn kv(&self) -> Result<Vec<KvExported>, BackupError> {
        self.json_lines("kv.jsonl")
    }
    pub fn objects(&self) -> Result<Vec<ObjectEntry>, BackupError> {
        self.json_lines("objects.jsonl")
    }
    /// A part of one JSON value per line.
    fn json_lines<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Vec<T>, BackupError> {
        let bytes = std::fs::read(self.part_path(name)).map_err(|e| BackupError::Io(e.to_string()))?;
        bytes
            .split(|&c| c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).map_err(|e| BackupError::Corrupt(format!("part {name}: {e}"))))
            .collect()
    }
}

fn staging_root(svc: &Services) -> PathBuf {
    let dir = &svc.config.backup.staging_dir;
    if dir.is_empty() { std::env::temp_dir() } else { PathBuf::from(dir) }
}

/// Fetch and check every part and content blob of a backup.
pub async fn stage(
    svc: &Services,
    b: &Backups,
    tenant_id: crate::ids::TenantId,
    backup: uuid::Uuid,
    progress: ProgressFn<'_>,
) -> Result<Staged, BackupError> {
    let (key, manifest) = catalog::manifest(b, tenant_id, backup).await?;
    let dir = staging_root(svc).join(format!("sluice-restore-{backup}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(|e| BackupError::Io(format!("create {}: {e}", dir.display())))?;
    let staged = Staged { dir, manifest, key };
    let total: u64 = staged.manifest.parts.iter().map(|p| p.stored_bytes).sum::<u64>()
        + staged.manifest.contents.iter().map(|c| c.stored_bytes).sum::<u64>();
    progress(Progress::Phase { name: "fetch and check", total_bytes: Some(total) });
    let mut done = 0u64;
    for p in &staged.manifest.parts {
        fetch_checked(
            b,
            &staged.key,
            &p.key,
            &format!("part {}", p.name),
            &Expect::part(p),
            &staged.part_path(&p.name),
        )
        .await?;
        done += p.stored_bytes;
        progress(Progress::Bytes(done));
    }
    let root = crate::backup::target::tenant_prefix(tenant_id);
    let concurrency = svc.config.backup.object_concurrency.max(1);
    let staged_ref = &staged;
    // Futures collected first (a stream `map` closure over borrowed data
    // makes the caller's future not `Send` for every lifetime).
    let jobs: Vec<_> = staged
        .manifest
        .contents
        .iter()
        .map(|c| fetch_content(b, staged_ref, format!("{root}content/{}", c.id), c))
        .collect();
    let mut fetches = futures::stream::iter(jobs).buffer_unordered(concurrency);
    while let Some(n) = fetches.next().await {
        done += n?;
        progress(Progress::Bytes(done));
    }
    drop(fetches);
    Ok(staged)
}

async fn fetch_content(b: &Backups, staged: &Staged, key: String, c: &ContentRef) -> Result<u64, BackupError> {
    let what = format!("content {}", c.id);
    fetch_checked(b, &staged.key, &key, &what, &Expect::content(c), &staged.content_path(&c.id)).await?;
    Ok(c.stored_bytes)
}

struct Expect {
    stored_bytes: u64,
    stored_sha256: String,
    plain_bytes: u64,
    plain_sha256: String,
}

impl Expect {
    fn part(p: &Part) -> Self {
        Self {
            stored_bytes: p.stored_bytes,
            stored_sha256: p.stored_sha256.clone(),
            plain_bytes: p.plain_bytes,
            plain_sha256: p.plain_sha256.clone(),
        }
    }
    fn content(c: &ContentRef) -> Self {
        Self {
            stored_bytes: c.stored_bytes,
            stored_sha256: c.stored_sha256.clone(),
            plain_bytes: c.plain_bytes,
            plain_sha256: c.plain_sha256.clone(),
        }
    }
}

/// Download `key`, check the stored bytes, open them and write the checked
/// plaintext to `path`.
async fn fetch_checked(
    b: &Backups,
    data: &DataKey,
    key: &str,
    what: &str,
    want: &Expect,
    path: &Path,
) -> Result<(), BackupError> {
    let (len, reader) = b.target.reader(key).await.map_err(|e| match e {
        BackupError::Missing(_) => BackupError::Missing(format!("{what} is missing from the backup target")),
        other => other,
    })?;
    if len != want.stored_bytes {
        return Err(BackupError::Corrupt(format!(
            "{what} has {len} bytes in the target, the manifest says {}",
            want.stored_bytes
        )));
    }
    let reader = tokio_util::io::SyncIoBridge::new(reader);
    let data = data.clone();
    let what_owned = what.to_owned();
    let path = path.to_owned();
    let want_stored = want.stored_sha256.clone();
    let (plain_bytes, plain_sha) = (want.plain_bytes, want.plain_sha256.clone());
    tokio::task::spawn_blocking(move || {
        let what = what_owned;
        let mut stored = HashingReader::new(reader);
        let file = std::fs::File::create(&path).map_err(|e| BackupError::Io(format!("{}: {e}", path.display())))?;
        let mut out = crypt::Hashing::new(std::io::BufWriter::new(file));
        {
            let mut opened = crypt::opener(&mut stored, &data)
                .map_err(|e| BackupError::Corrupt(format!("{what} does not open: {e}")))?;
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = opened
                    .read(&mut buf)
                    .map_err(|e| BackupError::Corrupt(format!("{what} fails authentication or is truncated: {e}")))?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n]).map_err(|e| BackupError::Io(format!("{}: {e}", path.display())))?;
            }
        }
        // Drain what the decryptor did not need, so the stored hash covers it all.
        std::io::copy(&mut stored, &mut std::io::sink()).map_err(|e| BackupError::Io(e.to_string()))?;
        let (mut w, plain) = out.finish();
        w.flush().map_err(|e| BackupError::Io(e.to_string()))?;
        let s = stored.digest();
        if s.hex() != want_stored {
            return Err(BackupError::Corrupt(format!("{what}: stored sha256 differs from the manifest")));
        }
        if plain.len != plain_bytes || plain.hex() != plain_sha {
            return Err(BackupError::Corrupt(format!("{what}: content differs from the manifest")));
        }
        Ok(())
    })
    .await
    .map_err(|e| BackupError::Io(format!("checking thread: {e}")))?
}

/// Restore backup `backup` of `source` (a tenant id; the tenant may be gone
/// when restoring as new).
pub async fn run(
    svc: &Services,
    b: &Backups,
    backup: uuid::Uuid,
    mode: Mode,
    actor: &Actor,
    request_id: Option<&str>,
    progress: ProgressFn<'_>,
) -> Result<Restored, BackupError> {
    let started = std::time::Instant::now();
    let row = catalog::get(&svc.control.client().await?, backup, None).await?;
    if row.status != "complete" {
        return Err(BackupError::Conflict(format!("backup {backup} is {}, not complete", row.status)));
    }
    let source = crate::ids::TenantId(row.tenant_id);
    let staged = stage(svc, b, source, backup, progress).await?;

    // The tenant to restore into.
    let (tenant, created) = match &mode {
        Mode::InPlace => (tenants::get_by_id(&svc.control.client().await?, source).await?, None),
        Mode::AsNew(name) => {
            // A tenant admin's copies of its own tenant count against its limit.
            let copy_of = matches!(actor, Actor::Key(_)).then_some((source, svc.config.backup.tenant_copies_max));
            let opts = CreateOptions { fail_after: None, request_id: request_id.map(str::to_owned), copy_of };
            let created = provision::create_tenant(svc, name, actor, &opts).await?;
            (created.tenant.clone(), Some(created))
        }
    };
    let Some(_lock) = catalog::TenantLock::try_take(svc, tenant.id).await? else {
        return Err(BackupError::Conflict("a backup, restore or expiry of this tenant is running; retry later".into()));
    };

    let mut fenced_at = None;
    let reason = format!("restoring backup {backup}");
    let result = apply(svc, &tenant, &staged, &reason, &mut fenced_at, progress).await;
    let outcome = match result {
        Ok(mut r) => {
            fence::set(svc, &tenant, None).await?;
            r.backup_id = backup;
            r.created = created;
            r.fenced_ms =
                fenced_at.map_or(0, |t: std::time::Instant| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
            r.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            Ok(r)
        }
        Err((e, swapped)) => {
            // Before the database swap nothing changed: lift the fence. After
            // it, stay fenced so nobody works on half-restored data; running
            // the restore again finishes it.
            if !swapped && fenced_at.is_some() {
                let _ = fence::set(svc, &tenant, None).await;
            }
            Err(e)
        }
    };
    let c = svc.control.client().await?;
    let (ok, details) = match &outcome {
        Ok(r) => (
            true,
            json!({ "mode": mode_name(&mode), "source_tenant": staged.manifest.tenant_name, "objects_written": r.objects_written,
                    "objects_deleted": r.objects_deleted, "fenced_ms": r.fenced_ms, "elapsed_ms": r.elapsed_ms }),
        ),
        Err(e) => (false, json!({ "mode": mode_name(&mode), "error": crate::error::ClientError::client_message(e) })),
    };
    catalog::audit_event(&c, &tenant, actor, "backup.restore", Some(&backup.to_string()), ok, details, request_id)
        .await?;
    outcome
}

fn mode_name(m: &Mode) -> String {
    match m {
        Mode::InPlace => "in_place".into(),
        Mode::AsNew(n) => format!("as_new:{n}"),
    }
}

/// The restore proper. The database is restored beside the live one while
/// the tenant still serves (what it writes meanwhile is replaced by the
/// backup's data anyway); the fence goes up only then, for the swap, the
/// objects and the records (`fenced_at` says when). The flag of an error
/// says whether the database was already swapped.
async fn apply(
    svc: &Services,
    tenant: &Tenant,
    staged: &Staged,
    reason: &str,
    fenced_at: &mut Option<std::time::Instant>,
    progress: ProgressFn<'_>,
) -> Result<Restored, (BackupError, bool)> {
    let early = |e: BackupError| (e, false);
    let late = |e: BackupError| (e, true);
    let m = &staged.manifest;
    let recs = staged.records().map_err(early)?;
    let objects = staged.objects().map_err(early)?;

    // Database into a fresh one beside the live one.
    progress(Progress::Phase { name: "database", total_bytes: m.part("db.dump").map(|p| p.plain_bytes) });
    let fresh = format!("{}_r{}", tenant.db_name, &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let applied = restore_database(svc, tenant, staged, &fresh).await.map_err(|e| {
        let admin = svc.pg_admin.clone();
        let fresh = fresh.clone();
        tokio::spawn(async move {
            let _ = admin.drop_database(&fresh).await;
        });
        early(e)
    })?;
    let tables = m.tables.len();
    if let Err(e) = fence::set(svc, tenant, Some(reason)).await {
        let _ = svc.pg_admin.drop_database(&fresh).await;
        return Err(early(e));
    }
    *fenced_at = Some(std::time::Instant::now());

    // Swap it in: wait for in-flight work, then rename.
    wait_for_idle(svc, tenant).await;
    svc.tenant_pg.evict(tenant.id);
    swap_database(svc, &tenant.db_name, &fresh).await.map_err(early)?;
    svc.tenant_pg.evict(tenant.id);

    // Objects.
    let (written, unchanged, deleted) = restore_objects(svc, tenant, staged, &objects, progress).await.map_err(late)?;

    // Plugin artifacts, then the records that name them.
    for v in &recs.plugin_versions {
        let Some(kind) = v.row.get("kind").and_then(|k| k.as_str()).and_then(PluginKind::parse) else { continue };
        let sha = v.row.get("sha256").and_then(|s| s.as_str()).unwrap_or_default();
        let bytes =
            std::fs::read(staged.content_path(&v.content_id)).map_err(|e| late(BackupError::Io(e.to_string())))?;
        let akey = crate::plugins::registry::artifact_key(tenant.id, kind, sha);
        svc.plugins
            .artifacts()
            .put(&akey, bytes.into())
            .await
            .map_err(|e| late(BackupError::Io(format!("put plugin artifact back: {e}"))))?;
    }
    let tid = tenant.id;
    let artifact_key = move |row: &serde_json::Map<String, serde_json::Value>| {
        let kind = row.get("kind").and_then(|k| k.as_str()).and_then(PluginKind::parse).unwrap_or(PluginKind::Policy);
        let sha = row.get("sha256").and_then(|s| s.as_str()).unwrap_or_default();
        crate::plugins::registry::artifact_key(tid, kind, sha)
    };
    let mut c = svc.control.client().await.map_err(|e| late(e.into()))?;
    let tx = c.transaction().await.map_err(|e| late(BackupError::pg("begin", e)))?;
    let skipped = super::records::import(&tx, tenant.id, &recs, &artifact_key).await.map_err(late)?;
    // Usage as restored (the meter re-measures the database).
    let bytes: i64 = objects.iter().map(|o| i64::try_from(o.size).unwrap_or(i64::MAX)).sum();
    tx.execute(
        "UPDATE tenant_usage SET object_bytes = $2, object_count = $3 WHERE tenant_id = $1",
        &[&tenant.id.0, &bytes, &i64::try_from(objects.len()).unwrap_or(i64::MAX)],
    )
    .await
    .map_err(|e| late(BackupError::pg("record usage", e)))?;
    tx.commit().await.map_err(|e| late(BackupError::pg("commit records", e)))?;
    // Key/value entries (each TTL counted again from now). A backup made
    // before they were kept leaves the live ones as they are.
    if m.part("kv.jsonl").is_some() {
        let kv = staged.kv().map_err(late)?;
        svc.redis
            .kv_replace(tenant.id, &kv)
            .await
            .map_err(|e| late(BackupError::Io(format!("restore key/value entries: {e}"))))?;
    }

    Ok(Restored {
        backup_id: m.backup_id,
        tenant: tenant.name.to_string(),
        created: None,
        tables,
        objects_written: written,
        objects_unchanged: unchanged,
        objects_deleted: deleted,
        template_migrations_applied: applied,
        key_limits_skipped: skipped,
        fenced_ms: 0,
        elapsed_ms: 0,
    })
}

/// Restore the dump into the fresh database `fresh` under the tenant's
/// roles; returns the template migrations applied after it.
pub async fn restore_database(
    svc: &Services,
    tenant: &Tenant,
    staged: &Staged,
    fresh: &str,
) -> Result<Vec<i64>, BackupError> {
    let m = &staged.manifest;
    dump::prepare_fresh(&svc.pg_admin, fresh, &tenant.db_role, &m.template_migrations).await?;
    let tools = super::require(svc)?.tools.clone();
    let (db, role, file, dir) =
        (fresh.to_owned(), tenant.db_role.clone(), staged.part_path("db.dump"), staged.dir.clone());
    tokio::task::spawn_blocking(move || tools.restore(&db, &role, &file, &dir))
        .await
        .map_err(|e| BackupError::Io(format!("restore thread: {e}")))??;
    // Template migrations newer than the backup, then the collection owner
    // takes the `sluice` schema (which a migration may have just made).
    let mut c = svc.pg_admin.connect(Some(fresh)).await.map_err(BackupError::admin)?;
    let ran = migrate::up(&mut c, MigrationSet::Tenant, &RunAs { role: Some(tenant.db_role.clone()) })
        .await
        .map_err(|e| BackupError::Tool(format!("template migrations after the restore: {e}")))?;
    let quotas = crate::control::quotas::get(&svc.control.client().await?, tenant.id).await?;
    let db = tenants::TenantDb { name: fresh.to_owned(), role: tenant.db_role.clone() };
    crate::control::roles::ensure_collection_owner(svc, tenant.id, &db, quotas.pg_pool_size)
        .await
        .map_err(BackupError::admin)?;
    c.batch_execute("ANALYZE").await.map_err(|e| BackupError::pg("analyze the restored database", e))?;
    Ok(ran.iter().map(|m| m.version).collect())
}

/// Wait (at most the tenant's statement timeout, 30 s by default) until
/// the tenant's database has no transaction in progress.
async fn wait_for_idle(svc: &Services, tenant: &Tenant) {
    // Every instance sees the fence within its refresh period.
    tokio::time::sleep(std::time::Duration::from_millis(svc.config.usage.refresh_ms.min(5_000))).await;
    let limit = crate::control::quotas::get(
        &match svc.control.client().await {
            Ok(c) => c,
            Err(_) => return,
        },
        tenant.id,
    )
    .await
    .map(|q| q.statement_timeout_ms)
    .unwrap_or(30_000);
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(u64::try_from(limit).unwrap_or(30_000));
    while std::time::Instant::now() < deadline {
        let Ok(c) = svc.pg_admin.connect(None).await else { return };
        let busy: i64 = match c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()
                   AND state IS NOT NULL AND state NOT IN ('idle')",
                &[&tenant.db_name],
            )
            .await
        {
            Ok(r) => r.get(0),
            Err(_) => return,
        };
        if busy == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Put `fresh` in the place of `live` (both renamed while nobody is
/// connected); the old database is dropped.
async fn swap_database(svc: &Services, live: &str, fresh: &str) -> Result<(), BackupError> {
    let c = svc.pg_admin.connect(None).await.map_err(BackupError::admin)?;
    let old = format!("{live}_o{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (l, f, o) = (quote_ident(live), quote_ident(fresh), quote_ident(old.as_str()));
    let terminate =
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()";
    // New sessions may race in between; a few attempts.
    let mut last = None;
    for _ in 0..20 {
        c.execute(terminate, &[&live]).await.map_err(|e| BackupError::pg("end sessions", e))?;
        c.execute(terminate, &[&fresh]).await.map_err(|e| BackupError::pg("end sessions", e))?;
        match c.batch_execute(&format!("ALTER DATABASE {l} RENAME TO {o}")).await {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if let Some(e) = last {
        return Err(BackupError::pg("move the live database aside", e));
    }
    if let Err(e) = c.batch_execute(&format!("ALTER DATABASE {f} RENAME TO {l}")).await {
        // Put the live one back.
        let _ = c.batch_execute(&format!("ALTER DATABASE {o} RENAME TO {l}")).await;
        return Err(BackupError::pg("move the restored database in", e));
    }
    c.batch_execute(&format!("DROP DATABASE {o} WITH (FORCE)"))
        .await
        .map_err(|e| BackupError::pg("drop the replaced database", e))?;
    Ok(())
}

/// Objects back into the tenant's bucket: changed or missing ones written
/// from staged content, ones the backup lacks deleted.
async fn restore_objects(
    svc: &Services,
    tenant: &Tenant,
    staged: &Staged,
    objects: &[ObjectEntry],
    progress: ProgressFn<'_>,
) -> Result<(u64, u64, u64), BackupError> {
    let bucket = &tenant.bucket;
    let total: u64 = objects.iter().map(|o| o.size).sum();
    progress(Progress::Phase { name: "objects", total_bytes: Some(total) });
    let (mut written, mut unchanged, mut done) = (0u64, 0u64, 0u64);
    let concurrency = svc.config.backup.object_concurrency.max(1);
    let jobs: Vec<_> = objects.iter().map(|o| put_back(svc, bucket, staged, o)).collect();
    let mut puts = futures::stream::iter(jobs).buffer_unordered(concurrency);
    while let Some(r) = puts.next().await {
        let (was_written, size) = r?;
        if was_written {
            written += 1;
        } else {
            unchanged += 1;
        }
        done += size;
        progress(Progress::Bytes(done));
    }
    drop(puts);
    // Objects the backup does not have.
    let keep: HashSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    let mut deleted = 0u64;
    let mut cursor: Option<String> = None;
    let mut doomed = Vec::new();
    loop {
        let q = ListQuery { prefix: "", delimiter: None, limit: 1000, cursor: cursor.as_deref(), start_after: None };
        let page = svc.s3.list_objects(bucket, &q).await?;
        doomed.extend(page.objects.into_iter().filter(|o| !keep.contains(o.key.as_str())).map(|o| o.key));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    for k in doomed {
        svc.s3.delete_object(bucket, &k).await?;
        deleted += 1;
    }
    Ok((written, unchanged, deleted))
}

/// Put one object back unless the bucket has it as backed up (same ETag,
/// size, content type and metadata); returns whether it was written, and its size.
async fn put_back(svc: &Services, bucket: &str, staged: &Staged, o: &ObjectEntry) -> Result<(bool, u64), BackupError> {
    let key = ObjectKey::parse(&o.key).map_err(|e| BackupError::Corrupt(format!("object key {}: {e}", o.key)))?;
    let same = match svc.s3.head_object(bucket, &o.key, Conditions::default()).await {
        Ok(S3Read::Found(h)) => {
            h.etag.is_some()
                && h.etag == o.etag
                && h.length == o.size
                && h.content_type == o.content_type
                && h.metadata.iter().collect::<std::collections::BTreeMap<_, _>>()
                    == o.metadata.iter().collect::<std::collections::BTreeMap<_, _>>()
        }
        Ok(S3Read::NotModified { .. }) | Err(S3Error::NotFound) => false,
        Err(e) => return Err(e.into()),
    };
    if same {
        return Ok((false, o.size));
    }
    let mut file = tokio::fs::File::open(staged.content_path(&o.content_id))
        .await
        .map_err(|e| BackupError::Io(format!("staged content of {}: {e}", o.key)))?;
    let body = async_stream(&mut file);
    let opts = PutOptions {
        content_type: o.content_type.clone(),
        metadata: o.metadata.clone().into_iter().collect(),
        declared_length: Some(o.size),
        max_bytes: u64::MAX,
        ..Default::default()
    };
    svc.s3.put_object_stream(bucket, &key, body, &opts).await?;
    Ok((true, o.size))
}

/// A file as a stream of 256 KiB chunks.
fn async_stream(
    file: &mut tokio::fs::File,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + '_ {
    futures::stream::unfold(file, |f| async move {
        let mut buf = vec![0u8; 256 << 10];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}
