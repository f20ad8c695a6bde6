//! The one wasmtime `Engine` of a process (per [`super::Plugins`]): component
//! model, pooling allocator sized from `[plugins]`, and epoch interruption
//! driven by a ticker thread (one tick per [`TICK`] while a call runs). Also the `Linker` with
//! everything a guest may import: `sluice:plugin/log` (0.3.0, 0.2.0 and 0.1.0) and
//! deny-all WASI whose clocks cannot be waited on, so nothing a guest calls
//! blocks outside its deadline. [`codegen_config`] is shared with the compile
//! worker's engine ([`worker_engine`]).

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::PluginError;
use super::bindings;
use super::host::HostState;
use super::limits::Limits;

/// Epoch tick period: deadlines are whole ticks.
pub const TICK: Duration = Duration::from_millis(1);

/// Engine + linker, shared by every call.
#[derive(Clone)]
pub struct PluginEngine {
    pub engine: Engine,
    pub linker: Linker<HostState>,
    ticking: Arc<Ticking>,
}

/// How many calls may run guest code now. The epoch ticker advances the
/// epoch only while some may (otherwise it waits on `wake`), so an idle
/// gateway is not woken a thousand times a second.
#[derive(Default)]
struct Ticking {
    active: Mutex<usize>,
    wake: Condvar,
}

/// Held for as long as a store exists (see [`PluginEngine::ticking`]).
pub struct TickGuard(Arc<Ticking>);

impl Drop for TickGuard {
    fn drop(&mut self) {
        let mut n = self.0.active.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
    }
}

impl PluginEngine {
    pub fn new(limits: &Limits, max_instances: u32) -> Result<Self, PluginError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(max_instances)
            .total_core_instances(max_instances.saturating_mul(8))
            .total_memories(max_instances.saturating_mul(2))
            .total_tables(max_instances.saturating_mul(4))
            .max_memories_per_component(2)
            .max_tables_per_component(4)
            .max_core_instances_per_component(16)
            .max_memory_size(limits.memory_bytes)
            // Reset a slot's memory by rewriting only the pages the last call
            // dirtied (PAGEMAP_SCAN, Linux ≥ 6.7) instead of `madvise`: the
            // next instance in the slot takes no page faults. Falls back to
            // `madvise` where the ioctl is missing.
            .linear_memory_keep_resident(limits.memory_bytes)
            .table_keep_resident(64 << 10)
            .pagemap_scan(Enabled::Auto);
        let mut cfg = codegen_config(limits.memory_bytes);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&cfg).map_err(|e| PluginError::Internal(format!("create wasm engine: {e}")))?;
        let ticking = Arc::new(Ticking::default());
        spawn_ticker(&engine, ticking.clone());
        let linker = linker(&engine)?;
        Ok(Self { engine, linker, ticking })
    }

    /// Keep the epoch advancing until the guard is dropped: take it before
    /// a store is made and drop it after the store, so that no guest code
    /// runs without its deadline ticking.
    pub fn ticking(&self) -> TickGuard {
        let mut n = self.ticking.active.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        if *n == 1 {
            self.ticking.wake.notify_one();
        }
        TickGuard(self.ticking.clone())
    }

    /// Deadline in epoch ticks for a timeout (at least one tick).
    pub fn ticks(timeout: Duration) -> u64 {
        (timeout.as_micros() / TICK.as_micros()).max(1) as u64
    }
}

/// Everything that decides what compiled code looks like, shared by the
/// serving engine and the compile worker ([`super::compiler`]) so that what
/// the worker compiles is accepted by [`wasmtime::component::Component::deserialize`].
pub fn codegen_config(memory_bytes: usize) -> Config {
    let mut cfg = Config::new();
    cfg.wasm_component_model(true)
        // Errors name the cause; a guest stack trace is not worth its cost on every trap.
        .wasm_backtrace_max_frames(None)
        .epoch_interruption(true)
        // Small reservations: a slot is the memory cap, not 4 GiB of address space.
        .memory_reservation(memory_bytes as u64)
        .memory_guard_size(64 << 10)
        .memory_reservation_for_growth(0);
    cfg
}

/// The compile worker's engine: the same code generation, one thread, no
/// instance pool (it never instantiates).
pub fn worker_engine(memory_bytes: usize) -> Result<Engine, PluginError> {
    let mut cfg = codegen_config(memory_bytes);
    cfg.parallel_compilation(false);
    Engine::new(&cfg).map_err(|e| PluginError::Internal(format!("create wasm engine: {e}")))
}

/// What a guest may import: `sluice:plugin/log` (0.3.0, 0.2.0 and 0.1.0), `types`,
/// `sql`, and deny-all WASI whose clocks cannot be waited on.
fn linker(engine: &Engine) -> Result<Linker<HostState>, PluginError> {
    let mut linker = Linker::<HostState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| PluginError::Internal(format!("link WASI: {e}")))?;
    forbid_waiting(&mut linker)?;
    bindings::log::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
        .map_err(|e| PluginError::Internal(format!("link sluice:plugin/log: {e}")))?;
    bindings::types::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
        .map_err(|e| PluginError::Internal(format!("link sluice:plugin/types: {e}")))?;
    bindings::sql::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
        .map_err(|e| PluginError::Internal(format!("link sluice:plugin/sql: {e}")))?;
    // sluice:plugin@0.2.0: the same log function, and its types-only interfaces.
    bindings::v0_2::log::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
        .map_err(|e| PluginError::Internal(format!("link sluice:plugin/log@0.2.0: {e}")))?;
    for name in ["sluice:plugin/types@0.2.0", "sluice:plugin/sql@0.2.0"] {
        linker.instance(name).map_err(|e| PluginError::Internal(format!("link {name}: {e}")))?;
    }
    // sluice:plugin@0.1.0: the same log function, and its types-only interface.
    bindings::v0_1::log::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
        .map_err(|e| PluginError::Internal(format!("link sluice:plugin/log@0.1.0: {e}")))?;
    linker
        .instance("sluice:plugin/types@0.1.0")
        .map_err(|e| PluginError::Internal(format!("link sluice:plugin/types@0.1.0: {e}")))?;
    Ok(linker)
}

/// The WASI interface whose subscriptions block a thread in the host, out
/// of reach of the epoch deadline (which fires only in guest code).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Message of the trap a guest gets when it tries to sleep.
pub const NO_WAITING: &str = "plugins cannot sleep or wait on a clock (wasi:clocks/monotonic-clock subscribe-duration/subscribe-instant); every call has a deadline";

/// Replace the clock subscriptions with functions that trap at once: with
/// no files, sockets or stdin, a guest's only way to block in the host is
/// to sleep, and time spent there would not count against its deadline.
/// Guests built against any 0.2.x of WASI link to these (semver matching).
fn forbid_waiting(linker: &mut Linker<HostState>) -> Result<(), PluginError> {
    linker.allow_shadowing(true);
    let mut clock =
        linker.instance(MONOTONIC_CLOCK).map_err(|e| PluginError::Internal(format!("link {MONOTONIC_CLOCK}: {e}")))?;
    for name in ["subscribe-duration", "subscribe-instant"] {
        clock
            .func_new(name, |_, _, _, _| Err(wasmtime::Error::msg(NO_WAITING)))
            .map_err(|e| PluginError::Internal(format!("link {MONOTONIC_CLOCK}/{name}: {e}")))?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

/// Advance the engine's epoch every tick while a call may run guest code,
/// until the engine is dropped. Idle, the thread waits for the first call
/// (checking once a second whether the engine is gone).
fn spawn_ticker(engine: &Engine, ticking: Arc<Ticking>) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("sluice-wasm-epoch".into()).spawn(move || {
        loop {
            {
                let mut n = ticking.active.lock().unwrap_or_else(|p| p.into_inner());
                while *n == 0 {
                    n = ticking.wake.wait_timeout(n, Duration::from_secs(1)).unwrap_or_else(|p| p.into_inner()).0;
                    if weak.upgrade().is_none() {
                        return;
                    }
                }
            }
            std::thread::sleep(TICK);
            match weak.upgrade() {
                Some(e) => e.increment_epoch(),
                None => break,
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "start wasm epoch ticker; plugin deadlines will not fire");
    }
}
