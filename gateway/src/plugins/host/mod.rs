//! What a plugin instance can reach: one `host/<interface>.rs` per WIT
//! interface we implement ([`log`], [`sql`]), plus a deny-all WASI context for guests
//! built with `std` (no preopens, env, args or sockets; a fixed clock and a
//! deterministic RNG, so a plugin's answer depends only on its input).
//!
//! [`HostState`] is the per-call state of one `Store`; nothing outlives a call.

pub mod log;
pub mod sql;

use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{Deterministic, HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::limits::{CallLimiter, MAX_STDERR_BYTES};

/// Per-call state of a plugin `Store`.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: CallLimiter,
    pub log: log::LogSink,
    stderr: MemoryOutputPipe,
}

impl HostState {
    pub fn new(memory_bytes: usize, log: log::LogSink) -> Self {
        let stderr = MemoryOutputPipe::new(MAX_STDERR_BYTES);
        Self {
            wasi: deny_all_wasi(stderr.clone()),
            table: ResourceTable::new(),
            limiter: CallLimiter::new(memory_bytes),
            log,
            stderr,
        }
    }

    /// What the guest wrote to stderr (a panic message), lossily decoded.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents()).trim().to_owned()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// A clock stuck at the Unix epoch: guests get `now` as input instead.
struct FixedClock;

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FixedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// WASI with nothing in it: no files, env, args, network, stdin; stdout is
/// discarded; stderr is captured (bounded) for error messages.
fn deny_all_wasi(stderr: MemoryOutputPipe) -> WasiCtx {
    WasiCtxBuilder::new()
        .stderr(stderr)
        .wall_clock(FixedClock)
        .monotonic_clock(FixedClock)
        .secure_random(Deterministic::new(vec![0x5a, 0x17, 0xc3, 0x42]))
        .insecure_random(Deterministic::new(vec![0x42, 0xc3, 0x17, 0x5a]))
        .insecure_random_seed(0)
        .max_random_size(4096)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}
