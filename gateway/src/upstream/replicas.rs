//! Read replicas of the tenant databases' server (`postgres.replicas`):
//! where a transaction goes ([`Replicas::route`]), which replicas are fit
//! to serve reads now ([`Replicas::watch`], lag-aware), and read-your-writes.
//!
//! A replica is a hot standby of the whole cluster, so every tenant's role
//! and database are on it; the doors reach it with the tenant's own
//! credentials, through per-tenant pools per node (`tenant_pg`,
//! `pg_wire::pool`). What may go to a replica is the statement model's call
//! ([`crate::sql::Statement::replica_safe`]); the doors decide per
//! transaction and fall back to the primary when a replica fails before the
//! client has seen anything.
//!
//! **Lag.** Every `check_interval_ms` the watcher samples the primary's WAL
//! position and each replica's replay position. The byte lag is their
//! difference; the time lag is the age of the oldest primary sample the
//! replica has not replayed yet, so an idle primary never makes a replica
//! look late (unlike `now() - pg_last_xact_replay_timestamp()`). The
//! primary's position is the WAL it has written (`pg_current_wal_lsn()`):
//! under `synchronous_commit = off` a commit counts from when the WAL writer
//! writes it, at most a few `wal_writer_delay`s later. Until a replica has
//! replayed the first position this process sampled, its lag is unknown and
//! it serves no reads. A replica past either bound, unreachable, or no
//! longer in recovery (promoted) is banned until a check finds it fit again;
//! a replica a door failed to reach is banned at once.
//!
//! **Read-your-writes.** After an API key writes, on either door, its reads
//! go to the primary for `read_your_writes_ms` (kept per instance, in a
//! bounded map).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

use super::postgres::{PgAdmin, PgAdminError};
use crate::config::{PostgresConfig, ReplicaRoutingConfig};
use crate::secret::{ExposeSecret, SecretString};

/// Which server of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    Primary,
    /// Index into `postgres.replicas`.
    Replica(usize),
}

impl Node {
    /// `primary`, `replica-1`, … (metrics labels, logs).
    pub fn label(self) -> String {
        match self {
            Node::Primary => "primary".into(),
            Node::Replica(i) => format!("replica-{}", i + 1),
        }
    }
}

/// Why a replica serves no reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// Not judged yet: a new process routes reads to the primary until a
    /// check finds the replica has replayed what the primary had written
    /// when the process first asked.
    Unknown = 0,
    Fit = 1,
    Lagging = 2,
    Down = 3,
    /// Answers, but is not in recovery: promoted, or not a standby at all.
    NotStandby = 4,
}

impl Health {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Health::Fit,
            2 => Health::Lagging,
            3 => Health::Down,
            4 => Health::NotStandby,
            _ => Health::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Fit => "fit",
            Health::Lagging => "lagging",
            Health::Down => "down",
            Health::NotStandby => "not_standby",
        }
    }
}

struct Replica {
    label: String,
    /// The configured URL's settings (the watcher's login; host and port
    /// are where tenant connections go).
    base: tokio_postgres::Config,
    health: AtomicU8,
    lag_ms: AtomicU64,
    lag_bytes: AtomicU64,
}

impl Replica {
    fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    fn set_health(&self, h: Health) {
        let old = Health::from_u8(self.health.swap(h as u8, Ordering::Relaxed));
        if old == h {
            return;
        }
        metrics::gauge!("sluice_pg_replica_fit", "node" => self.label.clone())
            .set(f64::from(u8::from(h == Health::Fit)));
        if h == Health::Fit {
            tracing::info!(node = %self.label, "replica serves reads");
        } else if old == Health::Fit || old == Health::Unknown {
            metrics::counter!("sluice_pg_replica_bans_total", "node" => self.label.clone(), "reason" => h.as_str())
                .increment(1);
            tracing::warn!(node = %self.label, reason = h.as_str(), "replica serves no reads");
        }
    }
}

/// Most API keys remembered for read-your-writes (then expired ones go).
const MAX_RECENT_WRITERS: usize = 100_000;

/// The replicas and the routing state of this instance.
pub struct Replicas {
    replicas: Vec<Replica>,
    cfg: ReplicaRoutingConfig,
    next: AtomicUsize,
    recent: Mutex<HashMap<Uuid, Instant>>,
}

/// A replica's state as `/readyz` and the CLI show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaStatus {
    pub node: String,
    pub health: &'static str,
    pub lag_ms: u64,
    pub lag_bytes: u64,
}

impl Replicas {
    pub fn new(cfg: &PostgresConfig) -> Result<Self, PgAdminError> {
        let mut replicas = Vec::with_capacity(cfg.replicas.len());
        for (i, url) in cfg.replicas.iter().enumerate() {
            let mut base: tokio_postgres::Config = url.expose_secret().parse().map_err(PgAdminError::Connect)?;
            base.connect_timeout(Duration::from_millis(cfg.connect_timeout_ms));
            base.application_name("sluice-replica-watch");
            replicas.push(Replica {
                label: Node::Replica(i).label(),
                base,
                health: AtomicU8::new(Health::Unknown as u8),
                lag_ms: AtomicU64::new(0),
                lag_bytes: AtomicU64::new(0),
            });
        }
        Ok(Self {
            replicas,
            cfg: cfg.replica_routing.clone(),
            next: AtomicUsize::new(0),
            recent: Mutex::new(HashMap::new()),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// Where a transaction goes: a replica fit to serve reads when it only
    /// reads and `key` has not written lately, else the primary. Counted
    /// per door and node.
    pub fn route(&self, door: &'static str, read: bool, key: Uuid) -> Node {
        let node = if read && !self.replicas.is_empty() && !self.wrote_lately(key) {
            self.pick().unwrap_or(Node::Primary)
        } else {
            Node::Primary
        };
        metrics::counter!("sluice_pg_routed_total", "door" => door, "node" => node.label(),
            "kind" => if read { "read" } else { "write" })
        .increment(1);
        node
    }

    /// The next fit replica, round robin.
    fn pick(&self) -> Option<Node> {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|k| (start + k) % n).find(|&i| self.replicas[i].health() == Health::Fit).map(Node::Replica)
    }

    /// `key` wrote (or is about to): its reads stay on the primary for the
    /// read-your-writes window.
    pub fn wrote(&self, key: Uuid) {
        if self.replicas.is_empty() {
            return;
        }
        let now = Instant::now();
        let window = Duration::from_millis(self.cfg.read_your_writes_ms);
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= MAX_RECENT_WRITERS {
            recent.retain(|_, at| now.duration_since(*at) < window);
            if recent.len() >= MAX_RECENT_WRITERS {
                // Every entry is within its window: the oldest writers lose
                // theirs first (their reads may then see a replica).
                recent.clear();
            }
        }
        recent.insert(key, now);
    }

    fn wrote_lately(&self, key: Uuid) -> bool {
        let window = Duration::from_millis(self.cfg.read_your_writes_ms);
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.get(&key).is_some_and(|at| at.elapsed() < window)
    }

    /// A door could not reach `node`: no reads go there until a check finds
    /// it fit again.
    pub fn failed(&self, node: Node) {
        if let Node::Replica(i) = node
            && let Some(r) = self.replicas.get(i)
        {
            r.set_health(Health::Down);
        }
    }

    /// Host and port of a replica (tenant connections go there).
    pub fn addr(&self, i: usize) -> Option<(String, u16)> {
        self.replicas.get(i).map(|r| super::frame_limit::server_addr(&r.base))
    }

    /// Connection settings for a tenant's own role on its own database on
    /// `node` (`admin` gives the primary's).
    pub fn tenant_config(
        &self,
        admin: &PgAdmin,
        node: Node,
        db: &str,
        role: &str,
        password: &SecretString,
    ) -> tokio_postgres::Config {
        let mut cfg = admin.tenant_config(db, role, password);
        if let Node::Replica(i) = node
            && let Some((host, port)) = self.addr(i)
        {
            let mut c = tokio_postgres::Config::new();
            c.host(&host)
                .port(port)
                .dbname(db)
                .user(role)
                .password(password.expose_secret())
                .application_name("sluice");
            if let Some(t) = cfg.get_connect_timeout() {
                c.connect_timeout(*t);
            }
            cfg = c;
        }
        cfg
    }

    pub fn status(&self) -> Vec<ReplicaStatus> {
        self.replicas
            .iter()
            .map(|r| ReplicaStatus {
                node: r.label.clone(),
                health: r.health().as_str(),
                lag_ms: r.lag_ms.load(Ordering::Relaxed),
                lag_bytes: r.lag_bytes.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Check every replica every `check_interval_ms` until shutdown (see the
    /// module doc). Each instance checks for itself.
    pub async fn watch(self: std::sync::Arc<Self>, admin: PgAdmin, mut shutdown: watch::Receiver<bool>) {
        if self.replicas.is_empty() {
            return;
        }
        let mut w = Watcher {
            primary: None,
            replicas: self.replicas.iter().map(|_| None).collect(),
            samples: VecDeque::new(),
            baseline: None,
        };
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.check_interval_ms.max(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
            self.check(&mut w, &admin).await;
        }
    }

    async fn check(&self, w: &mut Watcher, admin: &PgAdmin) {
        let now = Instant::now();
        let limit = self.query_timeout();
        if let Some(lsn) = w.primary_lsn(admin, limit).await
            && w.samples.back().is_none_or(|(last, _)| *last < lsn)
        {
            w.baseline.get_or_insert(lsn);
            w.samples.push_back((lsn, now));
            if w.samples.len() > MAX_SAMPLES {
                w.samples.pop_front();
            }
        }
        let primary = w.samples.back().map(|(lsn, _)| *lsn);
        let mut oldest_needed = u64::MAX;
        for (i, r) in self.replicas.iter().enumerate() {
            match w.replay_lsn(i, &r.base, limit).await {
                Err(()) => {
                    // Keep the samples it may need once it is back.
                    oldest_needed = 0;
                    r.set_health(Health::Down);
                }
                Ok(None) => r.set_health(Health::NotStandby),
                Ok(Some(replayed)) => {
                    oldest_needed = oldest_needed.min(replayed);
                    let bytes = primary.map_or(0, |p| p.saturating_sub(replayed));
                    // The oldest primary position this replica has not replayed.
                    let behind_since = w.samples.iter().find(|(lsn, _)| *lsn > replayed).map(|(_, at)| *at);
                    let ms = behind_since
                        .map_or(0, |at| u64::try_from(now.duration_since(at).as_millis()).unwrap_or(u64::MAX));
                    r.lag_ms.store(ms, Ordering::Relaxed);
                    r.lag_bytes.store(bytes, Ordering::Relaxed);
                    metrics::gauge!("sluice_pg_replica_lag_seconds", "node" => r.label.clone()).set(ms as f64 / 1000.0);
                    metrics::gauge!("sluice_pg_replica_lag_bytes", "node" => r.label.clone()).set(bytes as f64);
                    // Behind the first sample, the lag is at least that
                    // sample's age but may be far more: no reads yet.
                    let known = w.baseline.is_some_and(|b| replayed >= b);
                    let fit = known && ms <= self.cfg.max_lag_ms && bytes <= self.cfg.max_lag_bytes;
                    r.set_health(match (fit, r.health()) {
                        (true, _) => Health::Fit,
                        (false, Health::Unknown) if !known => Health::Unknown,
                        (false, _) => Health::Lagging,
                    });
                }
            }
        }
        // Samples every reachable replica has replayed are no longer needed
        // (keep the newest: the next comparison starts from it).
        while w.samples.len() > 1 && w.samples.front().is_some_and(|(lsn, _)| *lsn <= oldest_needed) {
            w.samples.pop_front();
        }
    }

    fn query_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.check_interval_ms.max(1_000))
    }
}

/// Primary positions kept to date a replica's lag (one per check; at the
/// default interval, about 40 minutes).
const MAX_SAMPLES: usize = 10_000;

/// The watcher's connections and samples.
struct Watcher {
    primary: Option<Client>,
    replicas: Vec<Option<Client>>,
    /// (primary WAL position, when it was first seen), ascending.
    samples: VecDeque<(u64, Instant)>,
    /// The first primary position sampled: a replica that has not replayed
    /// it yet is behind by an unknown time.
    baseline: Option<u64>,
}

impl Watcher {
    async fn primary_lsn(&mut self, admin: &PgAdmin, limit: Duration) -> Option<u64> {
        if self.primary.as_ref().is_none_or(Client::is_closed) {
            self.primary = tokio::time::timeout(limit, admin.connect(None)).await.ok().and_then(Result::ok);
        }
        let c = self.primary.as_ref()?;
        match tokio::time::timeout(limit, c.query_one("SELECT pg_current_wal_lsn()::text", &[])).await {
            Ok(Ok(row)) => row.try_get::<_, String>(0).ok().as_deref().and_then(parse_lsn),
            _ => {
                self.primary = None;
                None
            }
        }
    }

    /// Ok(None): the server is not in recovery. Err: unreachable.
    async fn replay_lsn(
        &mut self,
        i: usize,
        base: &tokio_postgres::Config,
        limit: Duration,
    ) -> Result<Option<u64>, ()> {
        let slot = self.replicas.get_mut(i).ok_or(())?;
        if slot.as_ref().is_none_or(Client::is_closed) {
            let (client, conn) = tokio::time::timeout(limit, base.connect(NoTls)).await.map_err(drop)?.map_err(drop)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            *slot = Some(client);
        }
        let c = slot.as_ref().ok_or(())?;
        let sql = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text";
        match tokio::time::timeout(limit, c.query_one(sql, &[])).await {
            Ok(Ok(row)) => {
                let in_recovery: bool = row.try_get(0).map_err(drop)?;
                let lsn: Option<String> = row.try_get(1).map_err(drop)?;
                Ok(if in_recovery { lsn.as_deref().and_then(parse_lsn) } else { None })
            }
            _ => {
                *slot = None;
                Err(())
            }
        }
    }
}

/// An error from a replica after which a read is worth running again on the
/// primary: the replica went away (08, 57P), a recovery conflict cancelled
/// the query (40001), or the statement needs a writable server after all
/// (25006 read-only transaction, 55000 recovery in progress, 0A000 not
/// supported in hot standby). A replica changes nothing, so running again
/// is safe while the client has seen nothing.
pub fn retry_on_primary(sqlstate: &str) -> bool {
    matches!(sqlstate, "25006" | "40001" | "55000" | "0A000")
        || sqlstate.starts_with("08")
        || sqlstate.starts_with("57P")
}

/// `16/B374D848` → a byte position.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::parse_lsn;

    #[test]
    fn lsns_parse() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("x"), None);
        assert_eq!(parse_lsn("1/zz"), None);
    }
}
