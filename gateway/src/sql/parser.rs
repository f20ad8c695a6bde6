//! Parsing SQL once, with Postgres's own grammar (libpg_query through the
//! `pg_query` crate), into [`Statement`]s, with a bounded per-tenant cache.
//!
//! Both doors call [`SqlParser::parse`] for every statement text before
//! anything reaches the upstream: a pg-door `Query` (split into its
//! statements), every `Parse`, and each `/v1/sql` statement. A syntax error
//! is returned as Postgres would report it (SQLSTATE 42601, its message and
//! 1-based character position).
//!
//! The cache is keyed by tenant and text (xxh3 of the text, confirmed by
//! comparing the text itself, so a hash collision can never hand out another
//! statement's model). Each tenant has its own LRU with an entry and a byte
//! budget, so one tenant flooding distinct statements evicts only its own
//! entries and learns nothing (not even by timing) about another tenant's.
//!
//! A text the cache has not seen is first looked up by its *shape* (its
//! tokens without literal values, [`super::shape`]): a text that differs from
//! a cached one only in its literals reuses that model when the model reads
//! no literal value, at the cost of a scan instead of a parse.
//!
//! Texts are parsed with `standard_conforming_strings = on`; the rules refuse
//! turning it off (see [`super::rules`]), so the gateway and the server never
//! read a string literal differently.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;
use xxhash_rust::xxh3::xxh3_64;

use super::analyze;
use super::shape::{self, Shape};
use super::statement::Statement;
use crate::ids::TenantId;

/// Cached parse results per tenant.
const ENTRIES_PER_TENANT: usize = 1024;
/// Bytes of statement text (plus model) a tenant's cache may hold.
const BYTES_PER_TENANT: usize = 1 << 20;
/// Tenants with a cache at once (least recently used dropped first): with
/// `BYTES_PER_TENANT`, at most about 1 GiB for the whole process.
const TENANTS: usize = 1024;
/// Longer texts are parsed but not cached.
const MAX_CACHED_TEXT: usize = 64 << 10;
/// Longer texts are parsed on a blocking thread, off the async workers.
const INLINE_PARSE_MAX: usize = 16 << 10;
/// Longer texts get an approximate error position (no bisection).
const BISECT_MAX: usize = 64 << 10;
/// Longest text the gateway analyses. The parse tree of a text costs several
/// hundred times its size in memory while it is walked, so this bounds what
/// one statement can take; large data belongs in bind parameters or COPY.
pub const MAX_TEXT: usize = 256 << 10;

/// A whole query text and its statements, in order (empty for a text with
/// only whitespace, comments or `;`).
#[derive(Debug)]
pub struct Parsed {
    pub text: Box<str>,
    pub statements: Vec<Statement>,
}

impl Parsed {
    /// Approximate bytes held: the text, each statement's copy of its text
    /// and the names in its model (about one more copy), plus fixed parts.
    fn weight(&self) -> usize {
        self.text.len() * 3 + self.statements.len() * 256
    }
}

/// A statement Postgres's grammar rejects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    pub message: String,
    /// 1-based character position in the text, as Postgres reports it.
    pub position: Option<u32>,
    /// 42601, or 54000 (`program_limit_exceeded`) for a text over [`MAX_TEXT`].
    code: &'static str,
}

impl SyntaxError {
    pub const SQLSTATE: &'static str = "42601";

    fn new(message: String, position: Option<u32>) -> Self {
        Self { message, position, code: Self::SQLSTATE }
    }

    pub fn sqlstate(&self) -> &'static str {
        self.code
    }
}

/// Shapes cached per tenant (each at most [`shape::MAX_SHAPE_TEXT`]).
const SHAPES_PER_TENANT: usize = 128;

struct ShapeEntry {
    bytes: Box<[u8]>,
    model: Statement,
}

struct Shard {
    lru: LruCache<u64, Arc<Parsed>>,
    bytes: usize,
    shapes: LruCache<u64, Arc<ShapeEntry>>,
}

/// The parser with its caches; cheap to clone.
#[derive(Clone)]
pub struct SqlParser {
    shards: Arc<Mutex<LruCache<TenantId, Arc<Mutex<Shard>>>>>,
}

impl Default for SqlParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SqlParser {
    pub fn new() -> Self {
        let tenants = NonZeroUsize::new(TENANTS).expect("TENANTS > 0");
        Self { shards: Arc::new(Mutex::new(LruCache::new(tenants))) }
    }

    fn shard(&self, tenant: TenantId) -> Arc<Mutex<Shard>> {
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        shards
            .get_or_insert(tenant, || {
                let n = NonZeroUsize::new(ENTRIES_PER_TENANT).expect("ENTRIES_PER_TENANT > 0");
                let shapes = NonZeroUsize::new(SHAPES_PER_TENANT).expect("SHAPES_PER_TENANT > 0");
                Arc::new(Mutex::new(Shard { lru: LruCache::new(n), bytes: 0, shapes: LruCache::new(shapes) }))
            })
            .clone()
    }

    /// The cached parse of `text` for `tenant`, if any.
    pub fn cached(&self, tenant: TenantId, text: &str) -> Option<Arc<Parsed>> {
        let key = xxh3_64(text.as_bytes());
        let shard = self.shard(tenant);
        let mut sh = shard.lock().unwrap_or_else(|p| p.into_inner());
        sh.lru.get(&key).filter(|p| &*p.text == text).cloned()
    }

    /// The model of a text whose shape is cached (see [`super::shape`]).
    fn by_shape(&self, tenant: TenantId, text: &str, shape: &Shape) -> Option<Parsed> {
        let shard = self.shard(tenant);
        let entry = {
            let mut sh = shard.lock().unwrap_or_else(|p| p.into_inner());
            sh.shapes.get(&shape.hash).filter(|e| *e.bytes == *shape.bytes).cloned()
        }?;
        Some(shape::instantiate(&entry.model, text, shape))
    }

    fn insert_shape(&self, tenant: TenantId, shape: Shape, parsed: &Parsed) {
        if !shape::reusable(parsed) {
            return;
        }
        let Some(model) = parsed.statements.first().cloned() else { return };
        let shard = self.shard(tenant);
        let mut sh = shard.lock().unwrap_or_else(|p| p.into_inner());
        sh.shapes.push(shape.hash, Arc::new(ShapeEntry { bytes: shape.bytes.into_boxed_slice(), model }));
    }

    fn insert(&self, tenant: TenantId, parsed: &Arc<Parsed>) {
        if parsed.text.len() > MAX_CACHED_TEXT {
            return;
        }
        let key = xxh3_64(parsed.text.as_bytes());
        let shard = self.shard(tenant);
        let mut sh = shard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, old)) = sh.lru.push(key, parsed.clone()) {
            sh.bytes = sh.bytes.saturating_sub(old.weight());
        }
        sh.bytes += parsed.weight();
        while sh.bytes > BYTES_PER_TENANT {
            match sh.lru.pop_lru() {
                Some((_, old)) => sh.bytes = sh.bytes.saturating_sub(old.weight()),
                None => break,
            }
        }
    }

    /// Parse `text` (from the cache when seen before). Long texts are parsed
    /// on a blocking thread so they never stall other sessions.
    pub async fn parse(&self, tenant: TenantId, text: &str) -> Result<Arc<Parsed>, SyntaxError> {
        let shape = match self.lookup(tenant, text) {
            Ok(p) => return Ok(p),
            Err(shape) => shape,
        };
        // Short texts that parse are the common case: inline. Long texts, and
        // the bisection that positions a syntax error, run off the async workers.
        let inline = if text.len() <= INLINE_PARSE_MAX { Some(parse_text_fast(text)) } else { None };
        let parsed = if let Some(Some(p)) = inline {
            p
        } else {
            let owned = text.to_owned();
            tokio::task::spawn_blocking(move || parse_text(&owned))
                .await
                .map_err(|e| SyntaxError::new(format!("internal error while parsing: {e}"), None))??
        };
        Ok(self.remember(tenant, parsed, shape))
    }

    /// [`SqlParser::parse`] without the async wrapper (tests, benches, tools).
    pub fn parse_blocking(&self, tenant: TenantId, text: &str) -> Result<Arc<Parsed>, SyntaxError> {
        let shape = match self.lookup(tenant, text) {
            Ok(p) => return Ok(p),
            Err(shape) => shape,
        };
        Ok(self.remember(tenant, parse_text(text)?, shape))
    }

    /// From the text cache, else by shape; Err: not cached, with the text's
    /// shape if it has one.
    fn lookup(&self, tenant: TenantId, text: &str) -> Result<Arc<Parsed>, Option<Shape>> {
        if let Some(p) = self.cached(tenant, text) {
            crate::telemetry::hot_counter!("sluice_sql_parse_cache_hits_total").increment(1);
            return Ok(p);
        }
        let shape = shape::shape_of(text);
        if let Some(sh) = &shape
            && let Some(p) = self.by_shape(tenant, text, sh)
        {
            crate::telemetry::hot_counter!("sluice_sql_parse_shape_hits_total").increment(1);
            // Not added to the text cache: such texts rarely repeat.
            return Ok(Arc::new(p));
        }
        crate::telemetry::hot_counter!("sluice_sql_parse_cache_misses_total").increment(1);
        Err(shape)
    }

    /// Cache a fresh parse (and its shape, when its model can be reused).
    fn remember(&self, tenant: TenantId, parsed: Parsed, shape: Option<Shape>) -> Arc<Parsed> {
        if let Some(sh) = shape {
            self.insert_shape(tenant, sh, &parsed);
        }
        let parsed = Arc::new(parsed);
        self.insert(tenant, &parsed);
        parsed
    }
}

/// libpg_query's parse, with its protobuf tree as JSON. A panic inside the
/// crate (it indexes into the tree it builds) becomes an error, never a crash.
fn raw_parse(text: &str) -> Result<serde_json::Value, String> {
    let r = std::panic::catch_unwind(|| match pg_query::parse(text, 0) {
        Ok(r) => serde_json::to_value(&r.protobuf.stmts).map_err(|e| format!("internal error: parse tree: {e}")),
        Err(pg_query::Error::Parse(m)) => Err(m),
        Err(pg_query::Error::Conversion(_)) => Err("invalid message format: the query contains a NUL byte".into()),
        Err(e) => Err(format!("statement too complex to analyze: {e}")),
    });
    r.unwrap_or_else(|_| Err("internal error: the SQL parser failed on this statement".into()))
}

/// Parse without the cache; `None` when the text does not parse (then
/// [`parse_text`] computes the error and its position).
fn parse_text_fast(text: &str) -> Option<Parsed> {
    if text.len() > MAX_TEXT {
        return None;
    }
    let tree = raw_parse(text).ok()?;
    Some(build(text, &tree))
}

/// Parse without the cache.
pub fn parse_text(text: &str) -> Result<Parsed, SyntaxError> {
    if text.len() > MAX_TEXT {
        return Err(SyntaxError {
            code: "54000",
            message: format!(
                "statement too long for the gateway's SQL analysis ({} bytes; the limit is {} KiB): send large values as bind parameters or with COPY",
                text.len(),
                MAX_TEXT >> 10
            ),
            position: None,
        });
    }
    let tree = raw_parse(text).map_err(|message| {
        let position = error_position(text, &message);
        SyntaxError::new(message, position)
    })?;
    Ok(build(text, &tree))
}

fn build(text: &str, tree: &serde_json::Value) -> Parsed {
    let mut statements = Vec::new();
    for raw in tree.as_array().into_iter().flatten() {
        let loc = raw.get("stmt_location").and_then(serde_json::Value::as_u64).unwrap_or(0) as usize;
        let len = raw.get("stmt_len").and_then(serde_json::Value::as_u64).unwrap_or(0) as usize;
        let start = loc.min(text.len());
        let end = if len == 0 { text.len() } else { (start + len).min(text.len()) };
        let slice = text.get(start..end).unwrap_or(text);
        let trimmed = slice.trim_start();
        let offset = start + (slice.len() - trimmed.len());
        let own = trimmed.trim_end().trim_end_matches(';').trim_end();
        if let Some(stmt) = raw.get("stmt") {
            statements.push(analyze::statement(stmt, own, offset));
        }
    }
    Parsed { text: text.into(), statements }
}

/// Where Postgres would put the error cursor (1-based characters). libpg_query
/// knows it, but the crate only hands out the message, so it is recovered
/// here: `at end of input` is one past the end; for `at or near "tok"` the
/// failing token is the first whose prefix of the text no longer parses as a
/// (possibly incomplete) statement, found by bisection over the scanner's tokens.
fn error_position(text: &str, message: &str) -> Option<u32> {
    let chars = |byte: usize| u32::try_from(text[..byte.min(text.len())].chars().count() + 1).ok();
    if message.ends_with("at end of input") {
        return chars(text.len());
    }
    let near = message.split_once(" at or near \"")?.1.strip_suffix('"')?;
    let scanned = pg_query::scan(text).ok().filter(|_| text.len() <= BISECT_MAX);
    let Some(scanned) = scanned else {
        return text.find(near).and_then(chars);
    };
    let tokens: Vec<(usize, usize)> = scanned
        .tokens
        .iter()
        .filter_map(|t| Some((usize::try_from(t.start).ok()?, usize::try_from(t.end).ok()?)))
        .collect();
    let fails_at_token = |end: usize| match text.get(..end).map(raw_parse) {
        Some(Err(m)) => !m.ends_with("at end of input"),
        _ => false,
    };
    let (mut lo, mut hi) = (0usize, tokens.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fails_at_token(tokens[mid].1) { hi = mid } else { lo = mid + 1 }
    }
    match tokens.get(lo) {
        Some((start, _)) => chars(*start),
        None => text.find(near).and_then(chars),
    }
}
