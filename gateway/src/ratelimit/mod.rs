//! Rate limits shared by every gateway instance: GCRA buckets in Redis, one
//! Lua script and one round trip per decision, on Redis server time.
//!
//! Classes ([`Class`]) and who charges them:
//!
//! | class | unit | limit (per second, burst) | charged by |
//! |---|---|---|---|
//! | `http` | request | `quotas.http_rps`, `http_burst` (or the key's `key_limits`) | the HTTP door's `Authed` extractor, once per authenticated request |
//! | `query` | statement | `quotas.query_rps`, `query_burst` (or the key's) | [`stage::RateLimitStage`] for `Door::Pg` + `Action::Sql` |
//! | `bytes_in` | byte | `quotas.bytes_in_per_sec`, burst = one second | the stage for `Action::ObjectPut { size }` |
//! | `bytes_out` | byte | `quotas.bytes_out_per_sec`, burst = one second | the stage checks `ObjectGet` (refused while in debt); the object door calls [`RateLimiter::charge`] with the bytes sent |
//! | `pg_connections` | connection | `quotas.pg_max_connections` (concurrent) | the Postgres door: [`RateLimiter::acquire_connection`] (see [`connections`]) |
//!
//! Buckets live under the tenant's Redis prefix: `…:t:{tenant}:rl:{class}`, or
//! `…:rl:{class}:key:{key_prefix}` for a key with its own limit in `key_limits`
//! (such a key is metered only in its own bucket). Limits are read from the
//! [`Principal`] of each request, so quota changes apply on the next request.
//!
//! Only an unreachable Redis moves decisions to the local fallback: a
//! connection error at once, silence for `ratelimit.redis_timeout_ms` when
//! Redis has not answered within the last second, or for
//! `ratelimit.redis_max_wait_ms` when it has (a slow reply on a saturated
//! machine is not an outage, and falling back then would admit more than the
//! limit). The fallback is an in-process GCRA at limit ÷ live instances
//! ([`instances`]: heartbeats in Redis) with `fail_mode = "open"`, or a
//! refusal with `"closed"`; a breaker then skips Redis for
//! `ratelimit.breaker_ms`, after which the next decision tries it again.
//! Falling back and recovering are logged once each.
//! `sluice_ratelimit_decisions_total{tenant,class,outcome}` counts every
//! decision (`allowed`, `limited`, `fallback_allowed`, `fallback_limited`).
//!
//! Statements (`query`) are leased: one Redis decision may take up to
//! `ratelimit.query_lease_max` units (at most a tenth of the burst and of one
//! second's rate) when the bucket has them, and this instance spends the rest
//! locally, so most statements skip the round trip. Every unit is still
//! charged in Redis exactly once; see [`Lease`]. The S3 door's requests
//! (`http`) are leased the same way ([`RateLimiter::admit_leased`]): unlike
//! the HTTP door's, its answers carry no remaining-count headers. A
//! download's debt check (`bytes_out`, cost 0) reuses a Redis answer younger
//! than [`CLEAR_FOR`] that found the bucket out of debt.
//!
//! On the Postgres door a refusal is SQLSTATE [`SQLSTATE_RATE_LIMITED`]
//! (53400, `configuration_limit_exceeded`, the connection stays usable) and the
//! connection cap is [`SQLSTATE_TOO_MANY_CONNECTIONS`] (53300) at startup.

pub mod connections;
pub mod gcra;
pub mod instances;
pub mod stage;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{FailMode, RateLimitConfig};
use crate::pipeline::PipelineError;
use crate::pipeline::auth::Principal;
use crate::upstream::redis::{RedisError, RedisStore};
pub use gcra::{Limit, Outcome};

/// SQLSTATE of a rate-limit refusal on the Postgres door (`configuration_limit_exceeded`).
pub const SQLSTATE_RATE_LIMITED: &str = "53400";
/// SQLSTATE of the connection cap on the Postgres door (`too_many_connections`).
pub const SQLSTATE_TOO_MANY_CONNECTIONS: &str = "53300";

/// What is being metered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Http,
    Query,
    BytesIn,
    BytesOut,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Http => "http",
            Class::Query => "query",
            Class::BytesIn => "bytes_in",
            Class::BytesOut => "bytes_out",
        }
    }

    /// The principal's limit for this class, and whether it is the key's own.
    pub fn limit_for(self, p: &Principal) -> (Limit, bool) {
        let q = &p.quotas;
        let k = &p.key_limits;
        let pos = |v: i32| u64::try_from(v).unwrap_or(1).max(1);
        let pick = |own_rps: Option<i32>, own_burst: Option<i32>, rps: i32, burst: i32| {
            if own_rps.is_some() || own_burst.is_some() {
                (Limit::new(pos(own_rps.unwrap_or(rps)) as f64, pos(own_burst.unwrap_or(burst))), true)
            } else {
                (Limit::new(pos(rps) as f64, pos(burst)), false)
            }
        };
        match self {
            Class::Http => pick(k.http_rps, k.http_burst, q.http_rps, q.http_burst),
            Class::Query => pick(k.query_rps, k.query_burst, q.query_rps, q.query_burst),
            Class::BytesIn => {
                let b = u64::try_from(q.bytes_in_per_sec).unwrap_or(1).max(1);
                (Limit::new(b as f64, b), false)
            }
            Class::BytesOut => {
                let b = u64::try_from(q.bytes_out_per_sec).unwrap_or(1).max(1);
                (Limit::new(b as f64, b), false)
            }
        }
    }
}

/// Where a decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Redis,
    /// From units this instance took ahead in an earlier Redis decision.
    Lease,
    Fallback,
}

/// One rate-limit decision.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    pub class: Class,
    pub limit: Limit,
    pub outcome: Outcome,
    pub source: Source,
}

impl Decision {
    /// The refusal as a pipeline error (each door renders it).
    pub fn to_error(&self) -> PipelineError {
        PipelineError::RateLimited {
            class: self.class.as_str(),
            retry_after_ms: self.outcome.retry_after_us.div_ceil(1000),
            limit: self.limit.rate.round() as u64,
        }
    }

    /// `RateLimit-Policy` value (IETF draft syntax): `"http";q=100;w=1`.
    pub fn policy_header(&self) -> String {
        policy_header(self.class.as_str(), self.limit.rate.round() as u64)
    }

    /// `RateLimit` value: `"http";r=4;t=1` (remaining units, seconds until full).
    pub fn state_header(&self) -> String {
        format!(
            "\"{}\";r={};t={}",
            self.class.as_str(),
            self.outcome.remaining,
            self.outcome.reset_us.div_ceil(1_000_000)
        )
    }
}

/// `RateLimit-Policy` value for a class and its limit per second.
pub fn policy_header(class: &str, limit: u64) -> String {
    format!("\"{class}\";q={limit};w=1")
}

/// The shared limiter. Cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    redis: RedisStore,
    cfg: RateLimitConfig,
    gcra: redis::Script,
    lease: redis::Script,
    local: Mutex<LocalState>,
    epoch: Instant,
    /// Redis is skipped until this many ms after `epoch`.
    breaker_until_ms: AtomicU64,
    /// Last Redis answer, ms after `epoch` (+1 so 0 means never).
    last_ok_ms: AtomicU64,
    /// Deciding locally since the last failure (logged when it flips).
    in_fallback: AtomicBool,
    instances: instances::Instances,
    conns: connections::Scripts,
}

#[derive(Default)]
struct LocalState {
    gcra: gcra::LocalGcra,
    conns: std::collections::HashMap<String, u32>,
    /// Units of `query` buckets (and S3-door `http` buckets) taken ahead, by bucket.
    /// (Keys are ours, not a client's: a fast hasher, looked up per statement.)
    leases: foldhash::HashMap<LeaseKey, Lease>,
    /// When a `bytes_out` bucket was last seen out of debt in Redis.
    clear: foldhash::HashMap<LeaseKey, Instant>,
}

/// A download's debt check (`bytes_out`, cost 0) is answered from the last
/// Redis decision on the bucket when that one is younger than this and
/// found it out of debt. Downloads are still charged in full, so the rate
/// stays exact; at most this long of downloads may start after the bucket
/// went into debt.
const CLEAR_FOR: Duration = Duration::from_millis(100);

/// A bucket, without building its Redis key (spending a lease is the hot
/// path of every Postgres-door statement).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LeaseKey {
    tenant: crate::ids::TenantId,
    class: &'static str,
    /// The key's own bucket, for a key with its own limits.
    key: Option<String>,
}

/// Units already charged in Redis and not yet spent by this instance.
///
/// Leasing keeps the global count exact (every admitted statement was charged
/// once, in Redis); it only shifts *when* up to a lease's worth of units is
/// spent, which is why a lease is at most a tenth of the burst and a tenth of
/// a second of the rate, and is dropped after [`LEASE_MAX_AGE`].
struct Lease {
    units: u64,
    taken: Instant,
    /// Units spent from it and not yet counted in the decision metric (it is
    /// counted when the lease goes, not per statement), and for whom.
    spent: u64,
    tenant: String,
    class: &'static str,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.spent > 0 {
            metrics::counter!("sluice_ratelimit_decisions_total",
                "tenant" => std::mem::take(&mut self.tenant), "class" => self.class, "outcome" => "allowed")
            .increment(self.spent);
        }
    }
}

/// A lease older than this is dropped (its units go unused).
const LEASE_MAX_AGE: Duration = Duration::from_secs(5);

/// Redis counts as healthy (a slow reply is waited for up to
/// `redis_max_wait_ms`) this long after its last answer.
const HEALTHY_FOR_MS: u64 = 1_000;

impl RateLimiter {
    pub fn new(redis: RedisStore, cfg: RateLimitConfig) -> Self {
        let instances = instances::Instances::new(cfg.instances);
        Self {
            inner: Arc::new(Inner {
                redis,
                instances,
                cfg,
                gcra: redis::Script::new(gcra::SCRIPT),
                lease: redis::Script::new(gcra::LEASE_SCRIPT),
                local: Mutex::new(LocalState::default()),
                epoch: Instant::now(),
                breaker_until_ms: AtomicU64::new(0),
                last_ok_ms: AtomicU64::new(0),
                in_fallback: AtomicBool::new(false),
                conns: connections::Scripts::default(),
            }),
        }
    }

    pub fn config(&self) -> &RateLimitConfig {
        &self.inner.cfg
    }

    /// The live-instance count the fallback divides by (run its heartbeat
    /// with [`instances::Instances::run`]).
    pub fn instances(&self) -> &instances::Instances {
        &self.inner.instances
    }

    /// The Redis this limiter decides in.
    pub fn redis(&self) -> &RedisStore {
        &self.inner.redis
    }

    /// Decide on `cost` units of `class`; `Ok(None)` when limits are off.
    /// A refusal is [`PipelineError::RateLimited`].
    pub async fn admit(&self, p: &Principal, class: Class, cost: u64) -> Result<Option<Decision>, PipelineError> {
        if !self.inner.cfg.enabled {
            return Ok(None);
        }
        let d = self.decide(p, class, cost, false).await;
        if d.outcome.allowed { Ok(Some(d)) } else { Err(d.to_error()) }
    }

    /// Record `cost` units already spent (e.g. bytes streamed out) without
    /// refusing; later requests wait until the debt is paid.
    pub async fn charge(&self, p: &Principal, class: Class, cost: u64) {
        if self.inner.cfg.enabled && cost > 0 {
            self.decide(p, class, cost, true).await;
        }
    }

    /// One request of `class` on a door whose answers carry no rate-limit
    /// state (the S3 door): leased like statements, so most requests skip
    /// the Redis round trip. `Ok(None)` when limits are off.
    pub async fn admit_leased(&self, p: &Principal, class: Class) -> Result<Option<Decision>, PipelineError> {
        if !self.inner.cfg.enabled {
            return Ok(None);
        }
        let d = self.decide_with(p, class, 1, false, true).await;
        if d.outcome.allowed { Ok(Some(d)) } else { Err(d.to_error()) }
    }

    /// One decision: Redis within the timeout, else the fallback.
    pub async fn decide(&self, p: &Principal, class: Class, cost: u64, force: bool) -> Decision {
        self.decide_with(p, class, cost, force, class == Class::Query).await
    }

    /// [`RateLimiter::admit`] when memory can answer it: limits off, a unit
    /// of this instance's lease, or a recent "not in debt". `None` when Redis
    /// must decide (then call `admit`).
    pub fn admit_now(&self, p: &Principal, class: Class, cost: u64) -> Option<Result<Option<Decision>, PipelineError>> {
        if !self.inner.cfg.enabled {
            return Some(Ok(None));
        }
        let (limit, own) = class.limit_for(p);
        let d = self.local_decision(p, class, cost, false, class == Class::Query, limit, own)?;
        Some(if d.outcome.allowed { Ok(Some(d)) } else { Err(d.to_error()) })
    }

    /// The decision this instance makes without Redis, if it can: a unit of
    /// its lease, or a `bytes_out` debt check Redis answered recently.
    #[allow(clippy::too_many_arguments)]
    fn local_decision(
        &self,
        p: &Principal,
        class: Class,
        cost: u64,
        force: bool,
        leasing: bool,
        limit: Limit,
        own: bool,
    ) -> Option<Decision> {
        let lease = leasing && cost == 1 && !force && self.lease_size(&limit) > 1;
        let debt_check = class == Class::BytesOut && cost == 0 && !force;
        if !lease && !debt_check {
            return None;
        }
        let lease_key =
            LeaseKey { tenant: p.tenant_id, class: class.as_str(), key: own.then(|| p.key_prefix.0.clone()) };
        if lease && let Some(outcome) = self.spend_lease(&lease_key) {
            return Some(Decision { class, limit, outcome, source: Source::Lease });
        }
        if debt_check && self.recently_clear(&lease_key) {
            let outcome = Outcome { allowed: true, remaining: limit.burst, retry_after_us: 0, reset_us: 0 };
            return Some(Decision { class, limit, outcome, source: Source::Lease });
        }
        None
    }

    async fn decide_with(&self, p: &Principal, class: Class, cost: u64, force: bool, leasing: bool) -> Decision {
        let (limit, own) = class.limit_for(p);
        if let Some(d) = self.local_decision(p, class, cost, force, leasing, limit, own) {
            return d;
        }
        let lease = if leasing && cost == 1 && !force { self.lease_size(&limit) } else { 1 };
        let lease_key =
            LeaseKey { tenant: p.tenant_id, class: class.as_str(), key: own.then(|| p.key_prefix.0.clone()) };
        let key = bucket_key(&self.inner.redis, p, class.as_str(), own);
        let tenant = p.tenant.to_string();
        if self.redis_allowed() {
            let timeout = self.redis_wait();
            let step = async {
                if lease > 1 {
                    self.redis_lease(&key, &lease_key, &tenant, &limit, lease).await
                } else {
                    self.redis_step(&key, &limit, cost, force).await
                }
            };
            let result = tokio::time::timeout(timeout, step).await;
            match result {
                Ok(Ok(outcome)) => {
                    self.answered();
                    if class == Class::BytesOut {
                        // Room left after this decision (a charge into debt leaves none).
                        self.note_clear(&lease_key, outcome.allowed && outcome.remaining > 0);
                    }
                    let label = if outcome.allowed { "allowed" } else { "limited" };
                    record(&tenant, class.as_str(), label);
                    return Decision { class, limit, outcome, source: Source::Redis };
                }
                Ok(Err(e)) => self.trip(&e.to_string()),
                Err(_) => self.trip(&format!("no answer within {timeout:?}")),
            }
        }
        let outcome = if self.inner.cfg.fail_mode == FailMode::Closed && !force {
            Outcome { allowed: false, remaining: 0, retry_after_us: self.retry_after_closed_us(), reset_us: 0 }
        } else {
            let local = limit.divided(self.inner.instances.live());
            match self.inner.local.lock() {
                Ok(mut l) => l.gcra.decide(&key, &local, cost, force),
                // A panic while holding the lock: admit rather than fail every request.
                Err(_) => Outcome { allowed: true, remaining: 0, retry_after_us: 0, reset_us: 0 },
            }
        };
        record(&tenant, class.as_str(), if outcome.allowed { "fallback_allowed" } else { "fallback_limited" });
        Decision { class, limit, outcome, source: Source::Fallback }
    }

    /// Units to take ahead per Redis decision for a `query` bucket (1 = none).
    fn lease_size(&self, limit: &Limit) -> u64 {
        let by_rate = (limit.rate / 10.0).floor() as u64;
        self.inner.cfg.query_lease_max.min(limit.burst / 10).min(by_rate).max(1)
    }

    /// Whether Redis found the `bytes_out` bucket out of debt within [`CLEAR_FOR`].
    fn recently_clear(&self, key: &LeaseKey) -> bool {
        self.inner.local.lock().is_ok_and(|l| l.clear.get(key).is_some_and(|at| at.elapsed() < CLEAR_FOR))
    }

    fn note_clear(&self, key: &LeaseKey, clear: bool) {
        if let Ok(mut l) = self.inner.local.lock() {
            if clear {
                if l.clear.len() > 100_000 {
                    l.clear.retain(|_, at| at.elapsed() < CLEAR_FOR);
                }
                l.clear.insert(key.clone(), Instant::now());
            } else {
                l.clear.remove(key);
            }
        }
    }

    /// Spend one unit of this instance's lease on `key`, if it has one.
    fn spend_lease(&self, key: &LeaseKey) -> Option<Outcome> {
        let mut local = self.inner.local.lock().ok()?;
        let lease = local.leases.get_mut(key)?;
        if lease.units == 0 || lease.taken.elapsed() > LEASE_MAX_AGE {
            local.leases.remove(key);
            return None;
        }
        lease.units -= 1;
        lease.spent += 1;
        let remaining = lease.units;
        if remaining == 0 {
            local.leases.remove(key);
        }
        Some(Outcome { allowed: true, remaining, retry_after_us: 0, reset_us: 0 })
    }

    /// Take up to `want` units in one Redis decision: one is spent now, the
    /// rest kept as this instance's lease.
    async fn redis_lease(
        &self,
        key: &str,
        lease_key: &LeaseKey,
        tenant: &str,
        limit: &Limit,
        want: u64,
    ) -> Result<Outcome, RedisError> {
        let mut conn = self.inner.redis.conn().await?;
        let r: Vec<i64> = self
            .inner
            .lease
            .key(key)
            .arg(format!("{:.3}", limit.interval_us()))
            .arg(limit.burst)
            .arg(want)
            .invoke_async(&mut conn)
            .await?;
        let at = |i: usize| r.get(i).copied().unwrap_or(0).max(0) as u64;
        let granted = at(0);
        if granted > 1
            && let Ok(mut local) = self.inner.local.lock()
        {
            if local.leases.len() > 100_000 {
                local.leases.retain(|_, l| l.taken.elapsed() <= LEASE_MAX_AGE);
            }
            // Concurrent decisions may each have taken a lease: add them up.
            let now = Instant::now();
            let lease = local.leases.entry(lease_key.clone()).or_insert_with(|| Lease {
                units: 0,
                taken: now,
                spent: 0,
                tenant: tenant.to_owned(),
                class: lease_key.class,
            });
            lease.units += granted - 1;
            lease.taken = now;
        }
        Ok(Outcome { allowed: granted >= 1, remaining: at(1), retry_after_us: at(2), reset_us: at(3) })
    }

    async fn redis_step(&self, key: &str, limit: &Limit, cost: u64, force: bool) -> Result<Outcome, RedisError> {
        let mut conn = self.inner.redis.conn().await?;
        let r: Vec<i64> = self
            .inner
            .gcra
            .key(key)
            .arg(format!("{:.3}", limit.interval_us()))
            .arg(limit.burst)
            .arg(cost)
            .arg(u8::from(force))
            .invoke_async(&mut conn)
            .await?;
        let at = |i: usize| r.get(i).copied().unwrap_or(0).max(0) as u64;
        Ok(Outcome { allowed: at(0) == 1, remaining: at(1), retry_after_us: at(2), reset_us: at(3) })
    }

    fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64
    }

    /// Whether the breaker lets this decision try Redis.
    fn redis_allowed(&self) -> bool {
        self.now_ms() >= self.inner.breaker_until_ms.load(Ordering::Relaxed)
    }

    /// How long this decision waits for Redis: long when Redis answered
    /// lately (it is up, the machine is busy), short when it has not.
    pub(crate) fn redis_wait(&self) -> Duration {
        let last = self.inner.last_ok_ms.load(Ordering::Relaxed);
        let healthy = last != 0 && self.now_ms() + 1 < last + HEALTHY_FOR_MS;
        let ms = if healthy {
            self.inner.cfg.redis_max_wait_ms.max(self.inner.cfg.redis_timeout_ms)
        } else {
            self.inner.cfg.redis_timeout_ms
        };
        Duration::from_millis(ms)
    }

    /// Redis answered: note it, and say once that shared limits resumed.
    pub(crate) fn answered(&self) {
        self.inner.last_ok_ms.store(self.now_ms() + 1, Ordering::Relaxed);
        if self.inner.in_fallback.load(Ordering::Relaxed) && self.inner.in_fallback.swap(false, Ordering::Relaxed) {
            tracing::info!("rate limiter: Redis answers again; deciding in Redis");
        }
    }

    /// Open the breaker; say once that decisions are now local.
    fn trip(&self, why: &str) {
        let now = self.now_ms();
        self.inner.breaker_until_ms.store(now + self.inner.cfg.breaker_ms, Ordering::Relaxed);
        // Not healthy any more: the next try waits only the short timeout.
        self.inner.last_ok_ms.store(0, Ordering::Relaxed);
        if !self.inner.in_fallback.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = why,
                fail_mode = ?self.inner.cfg.fail_mode,
                live_instances = self.inner.instances.live(),
                "rate limiter: Redis unreachable, deciding locally"
            );
        }
    }

    fn retry_after_closed_us(&self) -> u64 {
        self.inner.cfg.breaker_ms.max(1000) * 1000
    }
}

fn bucket_key(redis: &RedisStore, p: &Principal, class: &str, own: bool) -> String {
    let base = redis.tenant_prefix(p.tenant_id);
    if own { format!("{base}rl:{class}:key:{}", p.key_prefix.0) } else { format!("{base}rl:{class}") }
}

fn record(tenant: &str, class: &'static str, outcome: &'static str) {
    metrics::counter!("sluice_ratelimit_decisions_total",
        "tenant" => tenant.to_owned(), "class" => class, "outcome" => outcome)
    .increment(1);
}
