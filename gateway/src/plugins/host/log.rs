//! `sluice:plugin/log`: plugin log lines into `tracing`, tagged with tenant and
//! plugin, each cut to 1 KiB, rate-limited per plugin (a token bucket shared by
//! all calls of one plugin version) and capped per call. Dropped lines are
//! counted and reported once per call.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::plugins::bindings::log::Host;
use crate::plugins::bindings::types::{self, LogLevel};
use crate::plugins::limits::{MAX_LOG_LINE_BYTES, truncate};

/// Most lines one call may write, whatever the bucket holds.
const MAX_LINES_PER_CALL: u32 = 32;

/// A per-plugin token bucket of log lines.
#[derive(Debug)]
pub struct LogBudget {
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl LogBudget {
    pub fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second);
        Self { per_second: rate, state: Mutex::new((rate, Instant::now())) }
    }

    fn take(&self) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(st.1).as_secs_f64() * self.per_second;
        st.0 = (st.0 + refill).min(self.per_second.max(1.0));
        st.1 = now;
        if st.0 >= 1.0 {
            st.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Where one call's log lines go.
pub struct LogSink {
    tenant: String,
    plugin: String,
    budget: Arc<LogBudget>,
    written: u32,
    pub dropped: u64,
}

impl LogSink {
    pub fn new(tenant: &str, plugin: String, budget: Arc<LogBudget>) -> Self {
        Self { tenant: tenant.to_owned(), plugin, budget, written: 0, dropped: 0 }
    }

    fn write(&mut self, level: LogLevel, message: &str) {
        if self.written >= MAX_LINES_PER_CALL || !self.budget.take() {
            self.dropped += 1;
            return;
        }
        self.written += 1;
        let line = truncate(message, MAX_LOG_LINE_BYTES);
        let (tenant, plugin) = (self.tenant.as_str(), self.plugin.as_str());
        match level {
            LogLevel::Trace => tracing::trace!(target: "sluice::plugin", tenant, plugin, "{line}"),
            LogLevel::Debug => tracing::debug!(target: "sluice::plugin", tenant, plugin, "{line}"),
            LogLevel::Info => tracing::info!(target: "sluice::plugin", tenant, plugin, "{line}"),
            LogLevel::Warn => tracing::warn!(target: "sluice::plugin", tenant, plugin, "{line}"),
            LogLevel::Error => tracing::error!(target: "sluice::plugin", tenant, plugin, "{line}"),
        }
    }

    /// Report dropped lines (once per call).
    pub fn finish(&self) {
        if self.dropped > 0 {
            metrics::counter!("sluice_plugin_log_lines_dropped_total", "tenant" => self.tenant.clone())
                .increment(self.dropped);
            tracing::warn!(target: "sluice::plugin", tenant = %self.tenant, plugin = %self.plugin,
                dropped = self.dropped, "plugin log lines dropped (rate limit)");
        }
    }
}

impl Host for super::HostState {
    fn log(&mut self, level: LogLevel, message: String) {
        self.log.write(level, &message);
    }
}

impl types::Host for super::HostState {}

/// `sluice:plugin/log@0.1.0`, for components built against the earlier package.
impl crate::plugins::bindings::v0_1::log::Host for super::HostState {
    fn log(&mut self, level: LogLevel, message: String) {
        self.log.write(level, &message);
    }
}

/// `sluice:plugin/log@0.2.0`, likewise.
impl crate::plugins::bindings::v0_2::log::Host for super::HostState {
    fn log(&mut self, level: LogLevel, message: String) {
        self.log.write(level, &message);
    }
}
