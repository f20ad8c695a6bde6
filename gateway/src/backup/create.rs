//! Taking a backup of one tenant.
//!
//! Order: row `running` (with a heartbeat) → database snapshot exported →
//! object hold set ([`super::hold`]) → database dump streamed from the
//! snapshot while its tables are counted and hashed in it → gateway records
//! and plugin artifacts → objects (only changed ones read; content already
//! in the target is not uploaded again) → object index → manifest, last.
//! Any failure removes this run's parts and marks the row `failed`; content
//! it uploaded that nothing references goes at the next expiry.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::json;
use tokio::io::AsyncReadExt;

use super::crypt::{self, DataKey, Recipients, Sealer};
use super::manifest::{ContentRef, DbFingerprint, Manifest, ObjectEntry, Part, TableStat, TemplateMigration, Totals};
use super::target::{self, ChunkSink};
use super::{BackupError, Backups, Progress, ProgressFn, catalog, dump, hold, records};
use crate::control::audit::Actor;
use crate::control::tenants::Tenant;
use crate::ids::{ObjectKey, TenantId};
use crate::services::Services;
use crate::upstream::s3::{Conditions, ListQuery, Read, S3Error};

/// Objects up to this size are read into memory to hash before sealing;
/// larger ones stream through a temporary key.
const IN_MEMORY: u64 = 8 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Manual,
    Schedule,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
        }
    }
}

/// Knobs of one run.
pub struct Options<'a> {
    pub trigger: Trigger,
    pub actor: &'a Actor,
    pub request_id: Option<&'a str>,
    pub progress: ProgressFn<'a>,
    /// Use this id (an HTTP request answers it before the run ends).
    pub id: Option<uuid::Uuid>,
}

/// Run a backup of `tenant`; returns its row once complete.
pub async fn run(
    svc: &Services,
    b: &Backups,
    tenant: &Tenant,
    opts: &Options<'_>,
) -> Result<catalog::BackupRow, BackupError> {
    let Some(lock) = catalog::TenantLock::try_take(svc, tenant.id).await? else {
        return Err(BackupError::Conflict("a backup, restore or expiry of this tenant is running; retry later".into()));
    };
    let id = opts.id.unwrap_or_else(uuid::Uuid::new_v4);
    {
        let c = svc.control.client().await?;
        // Holding the tenant's lock proves no run of it is alive: a row still
        // `running` is one whose process died (its session lock went with it).
        c.execute(
            "UPDATE backups SET status = 'failed', finished_at = now(), error = 'the run stopped (its gateway went away)'
             WHERE tenant_id = $1 AND status = 'running'",
            &[&tenant.id.0],
        )
        .await
        .map_err(|e| BackupError::pg("close dead runs", e))?;
        c.execute(
            "INSERT INTO backups (id, tenant_id, tenant_name, status, trigger) VALUES ($1, $2, $3, 'running', $4)",
            &[&id, &tenant.id.0, &tenant.name.as_str(), &opts.trigger.as_str()],
        )
        .await
        .map_err(|e| match e.code() {
            Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                BackupError::Conflict("another backup of this tenant is running".into())
            }
            _ => BackupError::pg("record the backup", e),
        })?;
    }
    let started = Instant::now();
    let beat = AbortOnDrop(heartbeat(svc.clone(), id));
    let result = write(svc, b, tenant, id, opts).await;
    drop(beat);
    let _ = hold::end(svc, tenant.id, &id.to_string()).await;
    let _ = cleanup_holds(svc, &id.to_string()).await;
    let elapsed = started.elapsed().as_secs_f64();
    let c = svc.control.client().await?;
    match result {
        Ok(m) => {
            let t = &m.totals;
            let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            c.execute(
                "UPDATE backups SET status = 'complete', finished_at = now(), snapshot_at = $2::text::timestamptz,
                        db_bytes = $3, object_count = $4, object_bytes = $5, uploaded_bytes = $6, stored_bytes = $7
                 WHERE id = $1",
                &[
                    &id,
                    &m.snapshot_at,
                    &n(t.db_dump_bytes),
                    &n(t.object_count),
                    &n(t.object_bytes),
                    &n(t.uploaded_bytes),
                    &n(t.stored_bytes),
                ],
            )
            .await
            .map_err(|e| BackupError::pg("record the finished backup", e))?;
            let details = json!({ "trigger": opts.trigger, "seconds": elapsed, "totals": m.totals });
            catalog::audit_event(
                &c,
                tenant,
                opts.actor,
                "backup.create",
                Some(&id.to_string()),
                true,
                details,
                opts.request_id,
            )
            .await?;
            let labels = [("tenant", tenant.name.to_string())];
            metrics::histogram!("sluice_backup_duration_seconds").record(elapsed);
            metrics::counter!("sluice_backup_uploaded_bytes_total").increment(t.uploaded_bytes);
            metrics::gauge!("sluice_backup_last_success_timestamp_seconds", &labels)
                .set(time::OffsetDateTime::now_utc().unix_timestamp() as f64);
            metrics::gauge!("sluice_backup_last_stored_bytes", &labels).set(t.stored_bytes as f64);
            drop(lock);
            catalog::get(&c, id, Some(tenant.id)).await
        }
        Err(e) => {
            tracing::warn!(tenant = %tenant.name, backup = %id, error = %e, "backup failed; removing its parts");
            let removed = b.target.delete_prefix(&target::backup_prefix(tenant.id, id)).await;
            c.execute(
                "UPDATE backups SET status = 'failed', finished_at = now(), error = $2 WHERE id = $1",
                &[&id, &e.to_string()],
            )
            .await
            .map_err(|e| BackupError::pg("record the failed backup", e))?;
            let details = json!({ "error": e.client_message_safe(), "parts_removed": removed.is_ok() });
            let _ = catalog::audit_event(
                &c,
                tenant,
                opts.actor,
                "backup.create",
                Some(&id.to_string()),
                false,
                details,
                opts.request_id,
            )
            .await;
            metrics::counter!("sluice_backup_failures_total").increment(1);
            Err(e)
        }
    }
}

impl BackupError {
    fn client_message_safe(&self) -> String {
        crate::error::ClientError::client_message(self)
    }
}

/// Beat every 10 s: the row's heartbeat.
fn heartbeat(svc: Services, id: uuid::Uuid) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            if let Ok(c) = svc.control.client().await {
                let _ = c.execute("UPDATE backups SET heartbeat_at = now() WHERE id = $1", &[&id]).await;
            }
        }
    })
}

/// Keep the object hold alive every 10 s; `lost` turns true when it is no
/// longer this backup's (Redis lost it, or could not be reached long enough
/// for it to expire), and the backup then fails rather than be inconsistent.
fn keep_hold(svc: Services, tenant: TenantId, id: String, lost: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            match hold::refresh(&svc, tenant, &id).await {
                Ok(true) => {}
                Ok(false) => lost.store(true, Ordering::Relaxed),
                Err(e) => tracing::warn!(error = %e, backup = %id, "refresh the object hold"),
            }
        }
    })
}

async fn cleanup_holds(svc: &Services, backup: &str) -> Result<(), S3Error> {
    let bucket = hold::holds_bucket(svc);
    loop {
        let q =
            ListQuery { prefix: &format!("{backup}/"), delimiter: None, limit: 1000, cursor: None, start_after: None };
        let page = match svc.s3.list_objects(&bucket, &q).await {
            Ok(p) => p,
            Err(S3Error::NotFound) => return Ok(()),
            Err(e) => return Err(e),
        };
        if page.objects.is_empty() {
            return Ok(());
        }
        for o in page.objects {
            svc.s3.delete_object(&bucket, &o.key).await?;
        }
    }
}

/// Everything shared by the phases of one run.
struct Run<'a> {
    svc: &'a Services,
    b: &'a Backups,
    tenant: &'a Tenant,
    id: uuid::Uuid,
    key: DataKey,
    to: Recipients,
    level: i32,
    /// Content ids already in the target.
    existing: std::sync::Mutex<HashSet<String>>,
    contents: std::sync::Mutex<BTreeMap<String, ContentRef>>,
    uploaded: AtomicU64,
    /// The previous backup's content records (stored sizes and hashes).
    previous_contents: HashMap<String, ContentRef>,
    /// One upload per content id within the run.
    slots: std::sync::Mutex<HashMap<String, Arc<tokio::sync::OnceCell<ContentRef>>>>,
}

async fn write(
    svc: &Services,
    b: &Backups,
    tenant: &Tenant,
    id: uuid::Uuid,
    opts: &Options<'_>,
) -> Result<Manifest, BackupError> {
    let started_at = now_text();
    b.target.ensure_bucket().await?;
    hold::ensure_bucket(svc).await?;
    let key = catalog::data_key(b, tenant.id, true).await?;
    let settings = catalog::settings(svc, &svc.control.client().await?, tenant.id).await?;
    let to = Recipients::new(&key, &settings.recipients)?;

    // What the previous backup holds: unchanged objects are not read again,
    // an unchanged database is not dumped again.
    let previous = previous(svc, b, tenant.id, &to).await.unwrap_or_else(|e| {
        tracing::warn!(tenant = %tenant.name, error = %e, "previous backup unreadable; copying everything");
        Previous::default()
    });
    let content_prefix = format!("{}content/", target::tenant_prefix(tenant.id));
    let existing: HashSet<String> =
        b.target.list(&content_prefix).await?.into_iter().map(|(k, _)| k[content_prefix.len()..].to_owned()).collect();
    let run = Run {
        svc,
        b,
        tenant,
        id,
        key,
        to,
        level: svc.config.backup.zstd_level,
        existing: std::sync::Mutex::new(existing),
        contents: Default::default(),
        uploaded: AtomicU64::new(0),
        previous_contents: previous.contents,
        slots: Default::default(),
    };

    // The database snapshot, then the hold right after it.
    let snap = svc.pg_admin.connect(Some(&tenant.db_name)).await.map_err(BackupError::admin)?;
    snap.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL statement_timeout = 0")
        .await
        .map_err(|e| BackupError::pg("open the snapshot", e))?;
    let row = snap
        .query_one(
            "SELECT pg_export_snapshot(), to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await
        .map_err(|e| BackupError::pg("export the snapshot", e))?;
    let (snapshot, snapshot_at): (String, String) = (row.get(0), row.get(1));
    if !hold::begin(svc, tenant.id, &id.to_string()).await? {
        return Err(BackupError::Conflict("another backup of this tenant holds its objects".into()));
    }
    let lost = Arc::new(AtomicBool::new(false));
    let keeper = AbortOnDrop(keep_hold(svc.clone(), tenant.id, id.to_string(), lost.clone()));
    tokio::time::sleep(hold::GRACE).await;

    // Database: its fingerprint first, then either the previous dump again
    // (same fingerprint, same table stats) or a dump streamed while the
    // tables are hashed in the same snapshot.
    (opts.progress)(Progress::Phase { name: "database", total_bytes: None });
    let schema_sha256 = {
        let (tools, db, snapshot) = (b.tools.clone(), tenant.db_name.clone(), snapshot.clone());
        tokio::task::spawn_blocking(move || tools.schema_sha256(&db, &snapshot))
            .await
            .map_err(|e| BackupError::Io(format!("schema dump thread: {e}")))??
    };
    let fingerprint = dump::fingerprint(&snap, schema_sha256).await?;
    let template_migrations = dump::template_migrations(&snap).await?;
    let (dump_part, tables, db_reused_from) =
        match run.reuse_dump(previous.db.as_ref(), &fingerprint, &template_migrations, &snap, &snapshot).await? {
            (Some(part), Some(tables), reused) => {
                (opts.progress)(Progress::Bytes(part.plain_bytes));
                (part, tables, reused)
            }
            (_, Some(tables), _) => {
                // Hashed first and found changed: dump now.
                let (tools, db) = (b.tools.clone(), tenant.db_name.clone());
                let part =
                    run.seal_stream("db.dump", move |out| tools.dump(&db, &snapshot, out), opts.progress).await?;
                (part, tables, None)
            }
            (_, None, _) => {
                let (tools, db) = (b.tools.clone(), tenant.db_name.clone());
                let dump_part = run.seal_stream("db.dump", move |out| tools.dump(&db, &snapshot, out), opts.progress);
                let (dump_part, tables) = tokio::join!(dump_part, dump::table_stats(&snap));
                (dump_part?, tables?, None)
            }
        };
    let _ = snap.batch_execute("COMMIT").await;
    drop(snap);

    // Gateway records, with plugin artifacts in the content store.
    (opts.progress)(Progress::Phase { name: "records", total_bytes: None });
    let mut recs = records::export(&svc.control.client().await?, tenant.id).await?;
    for v in &mut recs.plugin_versions {
        let akey = v.row.get("artifact_key").and_then(|k| k.as_str()).unwrap_or_default().to_owned();
        let bytes = svc
            .plugins
            .artifacts()
            .get(&akey)
            .await
            .map_err(|e| BackupError::Io(format!("read plugin artifact {akey}: {e}")))?;
        v.content_id = run.put_content_bytes(&bytes).await?.id;
    }
    let records_json = serde_json::to_vec(&recs).map_err(|e| BackupError::Io(e.to_string()))?;
    let records_part = run.seal_small("records.json", &records_json).await?;

    // Key/value entries, as of now (Redis has no snapshot to share with the
    // database's; entries keep their remaining TTL).
    let kv =
        svc.redis.kv_export(tenant.id).await.map_err(|e| BackupError::Io(format!("read key/value entries: {e}")))?;
    let mut kv_json = Vec::new();
    for e in &kv {
        serde_json::to_writer(&mut kv_json, e).map_err(|e| BackupError::Io(e.to_string()))?;
        kv_json.push(b'\n');
    }
    let kv_part = run.seal_small("kv.jsonl", &kv_json).await?;
    drop(kv_json);

    // Objects as of the hold.
    let index = run.copy_objects(&previous.index, opts.progress).await?;
    let object_bytes = index.iter().map(|o| o.size).sum();
    let mut index_json = Vec::new();
    for o in &index {
        serde_json::to_writer(&mut index_json, o).map_err(|e| BackupError::Io(e.to_string()))?;
        index_json.push(b'\n');
    }
    let index_part = run.seal_small("objects.jsonl", &index_json).await?;

    let contents: Vec<ContentRef> = run.contents.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
    let parts = vec![dump_part, records_part, index_part, kv_part];
    let stored_bytes =
        parts.iter().map(|p| p.stored_bytes).sum::<u64>() + contents.iter().map(|c| c.stored_bytes).sum::<u64>();
    let mut m = Manifest {
        format_version: super::manifest::FORMAT_VERSION,
        backup_id: id,
        tenant_id: tenant.id.0,
        tenant_name: tenant.name.to_string(),
        started_at,
        finished_at: String::new(),
        snapshot_at,
        gateway_version: env!("CARGO_PKG_VERSION").to_owned(),
        template_migrations,
        tenant_recipients: settings.recipients.clone(),
        totals: Totals {
            db_dump_bytes: parts[0].plain_bytes,
            object_count: index.len() as u64,
            object_bytes,
            kv_entries: kv.len() as u64,
            db_reused_from,
            uploaded_bytes: 0,
            stored_bytes,
        },
        parts,
        tables,
        contents,
        db_fingerprint: Some(fingerprint),
    };
    m.finished_at = now_text();
    // Last check before the backup exists: the hold held throughout.
    if lost.load(Ordering::Relaxed) || !hold::refresh(svc, tenant.id, &id.to_string()).await? {
        return Err(BackupError::Conflict(
            "the object hold was lost during the backup (Redis restarted or was unreachable); run it again".into(),
        ));
    }
    drop(keeper);
    let manifest_json = serde_json::to_vec(&m).map_err(|e| BackupError::Io(e.to_string()))?;
    let (sealed, _) = crypt::seal_bytes(&manifest_json, &run.to, run.level)?;
    let n = b.target.put_bytes(&target::manifest_key(tenant.id, id), sealed).await?;
    run.uploaded.fetch_add(n, Ordering::Relaxed);
    m.totals.uploaded_bytes = run.uploaded.load(Ordering::Relaxed);
    Ok(m)
}

fn now_text() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// What the newest complete backup holds, when it was sealed for the same
/// recipients (content ids and parts depend on them).
#[derive(Default)]
struct Previous {
    /// Key → object entry.
    index: HashMap<String, ObjectEntry>,
    contents: HashMap<String, ContentRef>,
    db: Option<PreviousDb>,
}

/// The previous backup's database part and what it was dumped from.
struct PreviousDb {
    backup: uuid::Uuid,
    part: Part,
    tables: Vec<TableStat>,
    migrations: Vec<TemplateMigration>,
    fingerprint: DbFingerprint,
}

async fn previous(svc: &Services, b: &Backups, tenant: TenantId, to: &Recipients) -> Result<Previous, BackupError> {
    let Some(prev) = catalog::latest_complete(&svc.control.client().await?, tenant).await? else {
        return Ok(Previous::default());
    };
    let (key, m) = catalog::manifest(b, tenant, prev.id).await?;
    let same = Recipients::new(&key, &m.tenant_recipients)?.fingerprint() == to.fingerprint();
    if !same {
        return Ok(Previous::default());
    }
    let db = match (m.part("db.dump"), &m.db_fingerprint) {
        (Some(part), Some(fp)) => Some(PreviousDb {
            backup: m.backup_id,
            part: part.clone(),
            tables: m.tables.clone(),
            migrations: m.template_migrations.clone(),
            fingerprint: fp.clone(),
        }),
        _ => None,
    };
    let Some(part) = m.part("objects.jsonl") else { return Ok(Previous { db, ..Previous::default() }) };
    let stored = b
        .target
        .get_bytes(&part.key, target::MAX_SMALL_PART)
        .await?
        .ok_or_else(|| BackupError::Missing(format!("part {} of backup {}", part.name, prev.id)))?;
    let plain = crypt::open_bytes(&stored, &key, target::MAX_SMALL_PART)?;
    let mut index = HashMap::new();
    for line in plain.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
        let e: ObjectEntry = serde_json::from_slice(line).map_err(|e| BackupError::Corrupt(e.to_string()))?;
        // Only entries whose content is also in the manifest (and so kept).
        if m.content(&e.content_id).is_some() {
            index.insert(e.key.clone(), e);
        }
    }
    let contents = m.contents.into_iter().map(|c| (c.id.clone(), c)).collect();
    Ok(Previous { index, contents, db })
}

impl Run<'_> {
    /// The previous backup's dump, copied server-side into this backup, when
    /// nothing it holds changed: same fingerprint and template migrations,
    /// and — hashed in this snapshot over two connections — the same rows in
    /// every table. Hashing first only pays when the statistics hint that
    /// nothing was written; otherwise `(None, None, None)` and the caller
    /// dumps while hashing. Returns the part, the table stats when hashed,
    /// and the backup whose dump was reused.
    async fn reuse_dump(
        &self,
        prev: Option<&PreviousDb>,
        fingerprint: &DbFingerprint,
        migrations: &[TemplateMigration],
        snap: &tokio_postgres::Client,
        snapshot: &str,
    ) -> Result<(Option<Part>, Option<Vec<TableStat>>, Option<uuid::Uuid>), BackupError> {
        let Some(prev) = prev else { return Ok((None, None, None)) };
        if !prev.fingerprint.same_dump(fingerprint)
            || prev.migrations != migrations
            || prev.fingerprint.activity != fingerprint.activity
        {
            return Ok((None, None, None));
        }
        let list = dump::tables(snap).await?;
        let sizes = dump::table_sizes(snap, &list).await?;
        let db = &self.tenant.db_name;
        let tables = dump::table_stats_parallel(&self.svc.pg_admin, db, snapshot, &list, &sizes, 2).await?;
        if tables != prev.tables {
            return Ok((None, Some(tables), None));
        }
        let key = self.part_key("db.dump");
        match self.b.target.copy(&prev.part.key, &key).await {
            Ok(()) => Ok((Some(Part { key, ..prev.part.clone() }), Some(tables), Some(prev.backup))),
            Err(e) => {
                tracing::warn!(tenant = %self.tenant.name, error = %e, "copy the unchanged dump; dumping again");
                Ok((None, Some(tables), None))
            }
        }
    }

    fn part_key(&self, name: &str) -> String {
        format!("{}{name}", target::backup_prefix(self.tenant.id, self.id))
    }

    /// Seal what `produce` writes (on a blocking thread) into the part `name`.
    async fn seal_stream<F>(&self, name: &str, produce: F, progress: ProgressFn<'_>) -> Result<Part, BackupError>
    where
        F: FnOnce(&mut dyn std::io::Write) -> Result<u64, BackupError> + Send + 'static,
    {
        let key = self.part_key(name);
        let (sink, rx) = ChunkSink::new();
        let to = self.to.clone();
        let level = self.level;
        let sealing = tokio::task::spawn_blocking(move || {
            let mut sealer = match Sealer::new(sink, &to, level) {
                Ok(s) => s,
                Err(e) => return Err(e),
            };
            let produced = produce(&mut sealer);
            match produced {
                Ok(_) => {
                    let (sink, sealed) = sealer.finish()?;
                    sink.close().map_err(|e| BackupError::Io(format!("upload stopped: {e}")))?;
                    Ok(sealed)
                }
                Err(e) => {
                    if let Ok((sink, _)) = sealer.finish() {
                        sink.fail(e.to_string());
                    }
                    Err(e)
                }
            }
        });
        let upload = self.b.target.put_chunks(&key, rx);
        let (sealed, uploaded) = tokio::join!(sealing, upload);
        let sealed = sealed.map_err(|e| BackupError::Io(format!("sealing thread: {e}")))??;
        let uploaded = uploaded?;
        self.uploaded.fetch_add(uploaded, Ordering::Relaxed);
        progress(Progress::Bytes(sealed.plain.len));
        Ok(part(name, key, &sealed))
    }

    async fn seal_small(&self, name: &str, plain: &[u8]) -> Result<Part, BackupError> {
        let key = self.part_key(name);
        let (stored, sealed) = crypt::seal_bytes(plain, &self.to, self.level)?;
        let n = self.b.target.put_bytes(&key, stored).await?;
        self.uploaded.fetch_add(n, Ordering::Relaxed);
        Ok(part(name, key, &sealed))
    }

    fn note_content(&self, c: ContentRef) -> ContentRef {
        self.existing.lock().unwrap_or_else(|p| p.into_inner()).insert(c.id.clone());
        self.contents.lock().unwrap_or_else(|p| p.into_inner()).entry(c.id.clone()).or_insert(c).clone()
    }

    fn known_content(&self, id: &str) -> Option<ContentRef> {
        self.contents.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// Store bytes as content (unless the target has them); returns the ref.
    async fn put_content_bytes(&self, bytes: &[u8]) -> Result<ContentRef, BackupError> {
        let sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(bytes).into();
        let id = self.key.content_id(&self.to, &sha);
        if let Some(c) = self.known_content(&id) {
            return Ok(c);
        }
        // One upload per content id, also when two objects with the same
        // content are copied at once (each sealing differs: the manifest
        // must describe the bytes that stay).
        let slot = self.slot(&id);
        let c = slot
            .get_or_try_init(|| async {
                let ckey = target::content_key(self.tenant.id, &id);
                if self.in_target(&id) {
                    let (stored_bytes, stored_sha256) = self.stored_of(&id, &ckey).await?;
                    return Ok::<_, BackupError>(ContentRef {
                        id: id.clone(),
                        plain_bytes: bytes.len() as u64,
                        plain_sha256: hex::encode(sha),
                        stored_bytes,
                        stored_sha256,
                    });
                }
                let (stored, sealed) = crypt::seal_bytes(bytes, &self.to, self.level)?;
                let n = self.b.target.put_bytes(&ckey, stored).await?;
                self.uploaded.fetch_add(n, Ordering::Relaxed);
                Ok(content(id.clone(), &sealed))
            })
            .await?
            .clone();
        Ok(self.note_content(c))
    }

    fn slot(&self, id: &str) -> Arc<tokio::sync::OnceCell<ContentRef>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).entry(id.to_owned()).or_default().clone()
    }

    fn in_target(&self, id: &str) -> bool {
        self.existing.lock().unwrap_or_else(|p| p.into_inner()).contains(id)
    }

    /// Stored size and sha256 of content an earlier backup put in the
    /// target: from the previous manifest, or read back.
    async fn stored_of(&self, id: &str, ckey: &str) -> Result<(u64, String), BackupError> {
        match self.previous_contents.get(id) {
            Some(c) => Ok((c.stored_bytes, c.stored_sha256.clone())),
            None => self.stored_digest(ckey).await,
        }
    }

    /// Size and sha256 of content already in the target, from the previous
    /// manifests' records (kept in the run's map) or by reading it.
    async fn stored_digest(&self, ckey: &str) -> Result<(u64, String), BackupError> {
        let (len, mut r) = self.b.target.reader(ckey).await?;
        let mut hash = <sha2::Sha256 as sha2::Digest>::new();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = r.read(&mut buf).await.map_err(|e| BackupError::Io(format!("read {ckey}: {e}")))?;
            if n == 0 {
                break;
            }
            sha2::Digest::update(&mut hash, &buf[..n]);
        }
        Ok((len, hex::encode(sha2::Digest::finalize(hash))))
    }

    /// Copy the tenant's objects as of the hold; returns the index.
    async fn copy_objects(
        &self,
        previous: &HashMap<String, ObjectEntry>,
        progress: ProgressFn<'_>,
    ) -> Result<Vec<ObjectEntry>, BackupError> {
        let svc = self.svc;
        let bucket = self.tenant.bucket.clone();
        // Everything listed now, plus what writers deleted since the hold.
        let mut keys: Vec<(String, Option<String>, u64)> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let q =
                ListQuery { prefix: "", delimiter: None, limit: 1000, cursor: cursor.as_deref(), start_after: None };
            let page = svc.s3.list_objects(&bucket, &q).await?;
            keys.extend(page.objects.into_iter().map(|o| (o.key, o.etag, o.size)));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let listed: HashSet<String> = keys.iter().map(|k| k.0.clone()).collect();
        for k in hold::held_keys(svc, self.tenant.id).await? {
            if !listed.contains(&k) {
                keys.push((k, None, 0));
            }
        }
        let total: u64 = keys.iter().map(|k| k.2).sum();
        progress(Progress::Phase { name: "objects", total_bytes: Some(total) });
        let done = Arc::new(AtomicU64::new(0));
        let concurrency = svc.config.backup.object_concurrency.max(1);
        let bucket = bucket.as_str();
        let entries: Vec<Option<ObjectEntry>> = futures::stream::iter(keys)
            .map(|(key, etag, size)| {
                let prev = previous.get(&key);
                let unchanged =
                    prev.is_some_and(|p| etag.is_some() && p.etag == etag && p.size == size && self.kept_content(p));
                let done = done.clone();
                async move {
                    let e = self.copy_one(bucket, &key, unchanged, prev).await?;
                    let n = done.fetch_add(size, Ordering::Relaxed) + size;
                    progress(Progress::Bytes(n));
                    Ok::<_, BackupError>(e)
                }
            })
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;
        let mut out: Vec<ObjectEntry> = entries.into_iter().flatten().collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Whether a previous entry's content is still in the target.
    fn kept_content(&self, prev: &ObjectEntry) -> bool {
        self.existing.lock().unwrap_or_else(|p| p.into_inner()).contains(&prev.content_id)
    }

    async fn copy_one(
        &self,
        bucket: &str,
        key: &str,
        unchanged: bool,
        prev: Option<&ObjectEntry>,
    ) -> Result<Option<ObjectEntry>, BackupError> {
        let svc = self.svc;
        // Headers first: a key unchanged since the previous backup is
        // settled as `kept` only if no writer claimed it in between.
        let head = if unchanged {
            match svc.s3.head_object(bucket, key, Conditions::default()).await {
                Ok(Read::Found(h)) => Some(h),
                Ok(Read::NotModified { .. }) | Err(S3Error::NotFound) => None,
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        let unchanged = unchanged && head.as_ref().is_some_and(|h| prev.is_some_and(|p| p.etag == h.etag));
        let settled = hold::take(svc, self.tenant.id, bucket, key, unchanged).await?;
        match (settled, prev, head) {
            (hold::Settled::Absent, _, _) => Ok(None),
            (hold::Settled::Kept, Some(p), Some(h)) => {
                let c = self.reuse_content(p).await?;
                Ok(Some(ObjectEntry {
                    key: key.to_owned(),
                    size: h.length,
                    sha256: c.plain_sha256.clone(),
                    content_id: c.id,
                    content_type: h.content_type,
                    metadata: h.metadata.into_iter().collect(),
                    etag: h.etag,
                }))
            }
            (hold::Settled::Kept, _, _) => {
                Err(BackupError::Io(format!("object {key} was settled as unchanged without a previous copy")))
            }
            (hold::Settled::Held, _, _) => self.copy_held(key).await.map(Some),
        }
    }

    /// A previous backup's content, carried into this manifest.
    async fn reuse_content(&self, prev: &ObjectEntry) -> Result<ContentRef, BackupError> {
        if let Some(c) = self.known_content(&prev.content_id) {
            return Ok(c);
        }
        let ckey = target::content_key(self.tenant.id, &prev.content_id);
        let (stored_bytes, stored_sha256) = self.stored_of(&prev.content_id, &ckey).await?;
        Ok(self.note_content(ContentRef {
            id: prev.content_id.clone(),
            plain_bytes: prev.size,
            plain_sha256: prev.sha256.clone(),
            stored_bytes,
            stored_sha256,
        }))
    }

    /// Read a held copy, seal it into the content store (once per content).
    async fn copy_held(&self, key: &str) -> Result<ObjectEntry, BackupError> {
        let svc = self.svc;
        let hbucket = hold::holds_bucket(svc);
        let hkey = ObjectKey::parse(&hold::held_key(&self.id.to_string(), key))
            .map_err(|e| BackupError::Invalid(e.to_string()))?;
        let obj = match svc.s3.get_object(&hbucket, &hkey, None, Conditions::default()).await? {
            Read::Found(o) => o,
            Read::NotModified { .. } => return Err(BackupError::Io(format!("held copy of {key}: not modified"))),
        };
        let info = obj.info.clone();
        let entry = |c: &ContentRef| ObjectEntry {
            key: key.to_owned(),
            size: c.plain_bytes,
            sha256: c.plain_sha256.clone(),
            content_id: c.id.clone(),
            content_type: info.content_type.clone(),
            metadata: info.metadata.clone().into_iter().collect(),
            etag: info.etag.clone(),
        };
        if info.length <= IN_MEMORY {
            let mut bytes = Vec::with_capacity(usize::try_from(info.length).unwrap_or(0));
            obj.body
                .into_async_read()
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| BackupError::Io(format!("read object {key}: {e}")))?;
            let c = self.put_content_bytes(&bytes).await?;
            return Ok(entry(&c));
        }
        // Large: seal while streaming to a temporary key, then move it.
        let tmp = self.part_key(&format!("tmp-{}", uuid::Uuid::new_v4()));
        let reader = tokio_util::io::SyncIoBridge::new(obj.body.into_async_read());
        let (sink, rx) = ChunkSink::new();
        let to = self.to.clone();
        let level = self.level;
        let sealing = tokio::task::spawn_blocking(move || {
            let mut reader = reader;
            let mut sealer = Sealer::new(sink, &to, level)?;
            let mut hashing = crypt::Hashing::new(std::io::sink());
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = std::io::Read::read(&mut reader, &mut buf).map_err(|e| BackupError::Io(e.to_string()));
                let n = match n {
                    Ok(n) => n,
                    Err(e) => {
                        if let Ok((sink, _)) = sealer.finish() {
                            sink.fail(e.to_string());
                        }
                        return Err(e);
                    }
                };
                if n == 0 {
                    break;
                }
                std::io::Write::write_all(&mut sealer, &buf[..n]).map_err(|e| BackupError::Io(e.to_string()))?;
                std::io::Write::write_all(&mut hashing, &buf[..n]).map_err(|e| BackupError::Io(e.to_string()))?;
            }
            let (sink, sealed) = sealer.finish()?;
            sink.close().map_err(|e| BackupError::Io(e.to_string()))?;
            Ok::<_, BackupError>(sealed)
        });
        let upload = self.b.target.put_chunks(&tmp, rx);
        let (sealed, uploaded) = tokio::join!(sealing, upload);
        let sealed = sealed.map_err(|e| BackupError::Io(format!("sealing thread: {e}")))??;
        let uploaded = uploaded?;
        let id = self.key.content_id(&self.to, &sealed.plain.sha256);
        let mine = content(id.clone(), &sealed);
        let used = AtomicBool::new(false);
        let c = self
            .slot(&id)
            .get_or_try_init(|| async {
                used.store(true, Ordering::Relaxed);
                let ckey = target::content_key(self.tenant.id, &id);
                if self.in_target(&id) {
                    self.b.target.delete(&tmp).await?;
                    let (stored_bytes, stored_sha256) = self.stored_of(&id, &ckey).await?;
                    return Ok::<_, BackupError>(ContentRef { stored_bytes, stored_sha256, ..mine.clone() });
                }
                self.b.target.copy(&tmp, &ckey).await?;
                self.b.target.delete(&tmp).await?;
                self.uploaded.fetch_add(uploaded, Ordering::Relaxed);
                Ok(mine.clone())
            })
            .await?
            .clone();
        if !used.load(Ordering::Relaxed) {
            // Another copy of the same content got there first.
            self.b.target.delete(&tmp).await?;
        }
        Ok(entry(&self.note_content(c)))
    }
}

/// Aborts its task when dropped (any early return of the run).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn part(name: &str, key: String, s: &crypt::Sealed) -> Part {
    Part {
        name: name.to_owned(),
        key,
        plain_bytes: s.plain.len,
        plain_sha256: s.plain.hex(),
        stored_bytes: s.stored.len,
        stored_sha256: s.stored.hex(),
    }
}

fn content(id: String, s: &crypt::Sealed) -> ContentRef {
    ContentRef {
        id,
        plain_bytes: s.plain.len,
        plain_sha256: s.plain.hex(),
        stored_bytes: s.stored.len,
        stored_sha256: s.stored.hex(),
    }
}
