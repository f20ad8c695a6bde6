//! Per-call limits: the memory limiter every `Store` gets, the caps on what a
//! guest may hand back, and the per-plugin circuit breaker.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::PluginsConfig;

/// Longest deny/delete reason a guest may return, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;
/// Longest log line kept, in bytes (longer lines are truncated).
pub const MAX_LOG_LINE_BYTES: usize = 1024;
/// Most stderr bytes kept from a call (a panic message), for the error text.
pub const MAX_STDERR_BYTES: usize = 64 << 10;
/// Longest guest-supplied error text passed on, in bytes.
pub const MAX_GUEST_ERROR_BYTES: usize = 1024;

/// The limits the host applies, from `[plugins]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub memory_bytes: usize,
    pub policy_timeout: Duration,
    pub reranker_timeout: Duration,
    pub retention_timeout: Duration,
    pub max_artifact_bytes: u64,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub log_lines_per_second: u32,
}

impl Limits {
    pub fn from_config(c: &PluginsConfig) -> Self {
        Self {
            memory_bytes: usize::try_from(c.memory_limit_bytes).unwrap_or(16 << 20),
            policy_timeout: Duration::from_millis(c.policy_timeout_ms),
            reranker_timeout: Duration::from_millis(c.reranker_timeout_ms),
            retention_timeout: Duration::from_millis(c.retention_batch_timeout_ms),
            max_artifact_bytes: c.max_artifact_bytes,
            breaker_failures: c.breaker_failures.max(1),
            breaker_cooldown: Duration::from_millis(c.breaker_cooldown_ms),
            log_lines_per_second: c.log_lines_per_second,
        }
    }
}

/// The `ResourceLimiter` of one call: caps linear memory and tables, and
/// remembers that it refused growth so a resulting trap is reported as
/// out-of-memory rather than as a generic trap.
pub struct CallLimiter {
    memory_bytes: usize,
    pub hit_memory_cap: bool,
}

/// Table elements an instance may grow to.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl CallLimiter {
    pub fn new(memory_bytes: usize) -> Self {
        Self { memory_bytes, hit_memory_cap: false }
    }
}

impl wasmtime::ResourceLimiter for CallLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.hit_memory_cap = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Trips after `threshold` consecutive failures and stays open for `cooldown`;
/// the first call after the cooldown is a trial (half-open).
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    consecutive: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self { threshold, cooldown, state: Mutex::new(BreakerState::default()) }
    }

    /// `Err(remaining)` while the breaker is open.
    pub fn check(&self) -> Result<(), Duration> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.open_until {
            Some(until) => {
                let now = Instant::now();
                if now < until { Err(until - now) } else { Ok(()) }
            }
            None => Ok(()),
        }
    }

    pub fn success(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.consecutive = 0;
        st.open_until = None;
    }

    /// Record a failure; returns true when this failure opened the breaker.
    pub fn failure(&self) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.consecutive = st.consecutive.saturating_add(1);
        if st.consecutive >= self.threshold {
            let was_open = st.open_until.is_some_and(|u| Instant::now() < u);
            st.open_until = Some(Instant::now() + self.cooldown);
            st.consecutive = 0;
            return !was_open;
        }
        false
    }
}

/// Cut `s` to at most `max` bytes on a char boundary, marking the cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes truncated)", &s[..end], s.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_threshold_and_recovers() {
        let b = Breaker::new(3, Duration::from_millis(20));
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(b.failure());
        assert!(b.check().is_err());
        std::thread::sleep(Duration::from_millis(25));
        assert!(b.check().is_ok());
        b.success();
        assert!(b.check().is_ok());
    }

    #[test]
    fn truncates_on_char_boundary() {
        let s = "é".repeat(10);
        let t = truncate(&s, 5);
        assert!(t.starts_with("éé"));
        assert!(t.contains("truncated"));
        assert_eq!(truncate("abc", 5), "abc");
    }
}
