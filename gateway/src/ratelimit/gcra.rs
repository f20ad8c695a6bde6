//! The generic cell rate algorithm (GCRA), twice: as the Lua script that
//! decides in Redis (shared by every instance, one round trip, Redis server
//! time), and as [`LocalGcra`], the in-process fallback with the same maths.
//!
//! State is one number per bucket, the theoretical arrival time (TAT) in
//! microseconds. A request of `cost` units is allowed when
//! `max(TAT, now) + cost·T − burst·T ≤ now` (T = emission interval = 1 s ÷ rate);
//! then TAT grows by `cost·T`. A cost larger than the burst is checked as a
//! burst-sized cost but charged in full, so one large object passes when the
//! bucket is full and later requests wait until the debt is paid.

use std::collections::HashMap;
use std::time::Instant;

/// KEYS[1] bucket; ARGV: emission interval µs, burst, cost, force (1 = charge
/// without checking). Returns {allowed, remaining, retry_after µs, reset µs}.
pub const SCRIPT: &str = r#"
local key = KEYS[1]
local ei = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local force = ARGV[4] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', key) or now) or now
if tat < now then tat = now end
local span = ei * burst
local allow_at = tat + ei * math.min(cost, burst) - span
if (not force) and allow_at > now then
  return {0, 0, math.ceil(allow_at - now), math.ceil(tat - now)}
end
local new_tat = tat + ei * cost
local ttl_ms = math.ceil((new_tat - now) / 1000)
if ttl_ms > 0 then
  redis.call('SET', key, string.format('%.0f', new_tat), 'PX', ttl_ms)
end
local remaining = math.floor((now + span - new_tat) / ei)
if remaining < 0 then remaining = 0 end
return {1, remaining, 0, math.ceil(new_tat - now)}
"#;

/// KEYS[1] bucket; ARGV: emission interval µs, burst, want. Takes as many of
/// `want` units as are available now (at least one, else a refusal) — the
/// same test as [`SCRIPT`] with cost 1, then a larger charge when the bucket
/// has room. Returns {granted, remaining, retry_after µs, reset µs}.
pub const LEASE_SCRIPT: &str = r#"
local key = KEYS[1]
local ei = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', key) or now) or now
if tat < now then tat = now end
local span = ei * burst
local avail = math.floor((now + span - tat) / ei)
if avail < 1 then
  return {0, 0, math.ceil(tat + ei - span - now), math.ceil(tat - now)}
end
local n = math.min(want, avail)
local new_tat = tat + ei * n
local ttl_ms = math.ceil((new_tat - now) / 1000)
if ttl_ms > 0 then
  redis.call('SET', key, string.format('%.0f', new_tat), 'PX', ttl_ms)
end
local remaining = math.floor((now + span - new_tat) / ei)
if remaining < 0 then remaining = 0 end
return {n, remaining, 0, math.ceil(new_tat - now)}
"#;

/// A sustained rate and a burst, in units (requests, queries, bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Units per second (> 0).
    pub rate: f64,
    /// Units that may go at once (≥ 1).
    pub burst: u64,
}

impl Limit {
    pub fn new(rate: f64, burst: u64) -> Self {
        Self { rate: if rate > 0.0 { rate } else { 1.0 }, burst: burst.max(1) }
    }

    /// Emission interval in microseconds.
    pub fn interval_us(&self) -> f64 {
        1_000_000.0 / self.rate
    }

    /// This limit split across `n` instances (at least one unit of burst).
    pub fn divided(&self, n: u32) -> Self {
        let n = f64::from(n.max(1));
        Self::new(self.rate / n, ((self.burst as f64) / n).floor().max(1.0) as u64)
    }
}

/// The outcome of one GCRA step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    /// Units still available right now.
    pub remaining: u64,
    /// When a refused request could pass, µs from now (0 when allowed).
    pub retry_after_us: u64,
    /// When the bucket is full again, µs from now.
    pub reset_us: u64,
}

/// One GCRA step on a TAT (µs), shared by the local limiter and the tests of
/// the script's maths. Returns the outcome and the new TAT.
pub fn step(tat: f64, now: f64, limit: &Limit, cost: u64, force: bool) -> (Outcome, f64) {
    let ei = limit.interval_us();
    let tat = tat.max(now);
    let span = ei * limit.burst as f64;
    let allow_at = tat + ei * cost.min(limit.burst) as f64 - span;
    if !force && allow_at > now {
        let out = Outcome {
            allowed: false,
            remaining: 0,
            retry_after_us: (allow_at - now).ceil() as u64,
            reset_us: (tat - now).ceil() as u64,
        };
        return (out, tat);
    }
    let new_tat = tat + ei * cost as f64;
    let remaining = ((now + span - new_tat) / ei).floor().max(0.0) as u64;
    (Outcome { allowed: true, remaining, retry_after_us: 0, reset_us: (new_tat - now).ceil() as u64 }, new_tat)
}

/// The in-process fallback: GCRA buckets by key, on this process's clock.
#[derive(Debug)]
pub struct LocalGcra {
    epoch: Instant,
    tats: HashMap<String, f64>,
}

/// Prune expired buckets once the map holds this many.
const PRUNE_AT: usize = 10_000;

impl Default for LocalGcra {
    fn default() -> Self {
        Self { epoch: Instant::now(), tats: HashMap::new() }
    }
}

impl LocalGcra {
    pub fn decide(&mut self, key: &str, limit: &Limit, cost: u64, force: bool) -> Outcome {
        let now = self.epoch.elapsed().as_micros() as f64;
        if self.tats.len() >= PRUNE_AT {
            self.tats.retain(|_, tat| *tat > now);
        }
        let tat = self.tats.get(key).copied().unwrap_or(now);
        let (out, new_tat) = step(tat, now, limit, cost, force);
        if out.allowed {
            self.tats.insert(key.to_owned(), new_tat);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let l = Limit::new(5.0, 5);
        let mut tat = 0.0;
        let mut allowed = 0;
        for _ in 0..30 {
            let (o, t) = step(tat, 0.0, &l, 1, false);
            tat = t;
            allowed += u32::from(o.allowed);
        }
        assert_eq!(allowed, 5);
        let (o, _) = step(tat, 0.0, &l, 1, false);
        assert_eq!(o.retry_after_us, 200_000, "one emission interval");
        // 200 ms later exactly one more passes.
        let (o, t) = step(tat, 200_000.0, &l, 1, false);
        assert!(o.allowed);
        assert!(!step(t, 200_000.0, &l, 1, false).0.allowed);
    }

    #[test]
    fn remaining_counts_down() {
        let l = Limit::new(10.0, 3);
        let (o, t) = step(0.0, 0.0, &l, 1, false);
        assert_eq!(o.remaining, 2);
        let (o, t) = step(t, 0.0, &l, 1, false);
        assert_eq!(o.remaining, 1);
        let (o, _) = step(t, 0.0, &l, 1, false);
        assert_eq!((o.allowed, o.remaining), (true, 0));
    }

    #[test]
    fn large_cost_passes_when_full_then_is_paid_back() {
        let l = Limit::new(100.0, 100);
        let (o, t) = step(0.0, 0.0, &l, 1000, false);
        assert!(o.allowed, "a cost above the burst passes once");
        let (o, _) = step(t, 0.0, &l, 1, false);
        assert!(!o.allowed);
        assert!(o.retry_after_us >= 9_000_000, "the debt is 9 s: {o:?}");
    }

    #[test]
    fn divided_keeps_one_unit() {
        let l = Limit::new(5.0, 5).divided(10);
        assert_eq!(l.burst, 1);
        assert!((l.rate - 0.5).abs() < 1e-9);
    }

    #[test]
    fn local_limiter_is_per_key() {
        let mut g = LocalGcra::default();
        let l = Limit::new(1.0, 2);
        assert!(g.decide("a", &l, 1, false).allowed);
        assert!(g.decide("a", &l, 1, false).allowed);
        assert!(!g.decide("a", &l, 1, false).allowed);
        assert!(g.decide("b", &l, 1, false).allowed);
    }
}
