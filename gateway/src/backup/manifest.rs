//! The manifest: what one backup holds and how to check it. Written last,
//! sealed like every part; a backup without one does not exist.

use serde::{Deserialize, Serialize};

/// Bumped when the layout changes incompatibly; restores refuse newer ones.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub backup_id: uuid::Uuid,
    pub tenant_id: uuid::Uuid,
    pub tenant_name: String,
    pub started_at: String,
    pub finished_at: String,
    /// The moment of the database snapshot (objects are copied as of it).
    pub snapshot_at: String,
    pub gateway_version: String,
    /// Tenant template migrations applied in the backed-up database.
    pub template_migrations: Vec<TemplateMigration>,
    /// Public keys (besides the tenant's data key) the parts are encrypted to.
    pub tenant_recipients: Vec<String>,
    /// The database dump, the records and the object index.
    pub parts: Vec<Part>,
    /// Per-table row counts and content hashes, from the snapshot.
    pub tables: Vec<TableStat>,
    /// Object and plugin content referenced by this backup.
    pub contents: Vec<ContentRef>,
    pub totals: Totals,
    /// What the dump holds besides the tables' rows, from the snapshot: the
    /// next backup reuses this dump when it finds the same (absent in
    /// backups made before it existed).
    #[serde(default)]
    pub db_fingerprint: Option<DbFingerprint>,
}

/// Everything a logical dump contains, condensed: with equal table stats
/// and template migrations, equal fingerprints mean an equal dump.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DbFingerprint {
    /// sha256 of the schema-only dump (same options as the dump).
    pub schema_sha256: String,
    /// sha256 of every sequence's `last_value` and `is_called`.
    pub sequences_sha256: String,
    /// Count and content hash of the large objects.
    pub large_objects: String,
    /// Extensions with configuration tables (whose rows pg_dump dumps and
    /// the table stats do not cover); a dump is reused only when 0.
    pub extension_config_tables: i64,
    /// Rows inserted, updated and deleted since the statistics were reset:
    /// only a hint of whether hashing the tables first is worth it (the
    /// statistics are not transactional), never part of the decision.
    pub activity: i64,
}

impl DbFingerprint {
    /// Whether a dump with fingerprint `self` holds what one with `other`
    /// would, provided the table stats and migrations are also equal.
    pub fn same_dump(&self, other: &DbFingerprint) -> bool {
        self.schema_sha256 == other.schema_sha256
            && self.sequences_sha256 == other.sequences_sha256
            && self.large_objects == other.large_objects
            && self.extension_config_tables == 0
            && other.extension_config_tables == 0
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TemplateMigration {
    pub version: i64,
    pub name: String,
    pub checksum: String,
}

/// One stored part: its key under the backup, and size and sha256 of both
/// its plaintext and its stored (compressed, encrypted) bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Part {
    pub name: String,
    pub key: String,
    pub plain_bytes: u64,
    pub plain_sha256: String,
    pub stored_bytes: u64,
    pub stored_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableStat {
    pub schema: String,
    pub table: String,
    pub rows: i64,
    /// Order-independent hash of the rows' text form (see `dump::TABLE_HASH_SQL`).
    pub content_hash: String,
}

/// A deduplicated content blob (an object body or a plugin artifact).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContentRef {
    pub id: String,
    pub plain_bytes: u64,
    pub plain_sha256: String,
    pub stored_bytes: u64,
    pub stored_sha256: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    pub db_dump_bytes: u64,
    pub object_count: u64,
    pub object_bytes: u64,
    /// Key/value entries (part `kv.jsonl`; 0 in backups made before it).
    #[serde(default)]
    pub kv_entries: u64,
    /// The database part is a server-side copy of this earlier backup's
    /// dump: nothing in the database changed since it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_reused_from: Option<uuid::Uuid>,
    /// Bytes this run uploaded (parts and new content).
    pub uploaded_bytes: u64,
    /// Stored bytes of everything the backup references.
    pub stored_bytes: u64,
}

/// One object of the tenant's bucket, as backed up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectEntry {
    pub key: String,
    pub size: u64,
    pub sha256: String,
    pub content_id: String,
    pub content_type: Option<String>,
    pub metadata: std::collections::BTreeMap<String, String>,
    /// The store's ETag when copied: an unchanged object is not read again
    /// by the next backup.
    pub etag: Option<String>,
}

impl Manifest {
    pub fn part(&self, name: &str) -> Option<&Part> {
        self.parts.iter().find(|p| p.name == name)
    }

    pub fn content(&self, id: &str) -> Option<&ContentRef> {
        self.contents.iter().find(|c| c.id == id)
    }
}
