//! Compiling uploaded components under a budget.
//!
//! Cranelift cannot be interrupted, and a hostile component can make it run
//! for minutes and take gigabytes. So the compile runs in a child process of
//! this same binary (`sluice __compile-plugin`), which caps its own address
//! space and CPU time and lowers its priority; the parent gives it a
//! wall-clock budget and kills it when the budget runs out (or when the
//! request that asked for it goes away, e.g. at shutdown). The child sends
//! back the serialized component, which the parent loads with
//! `Component::deserialize`: compatible by construction, since both engines
//! come from [`super::engine::codegen_config`].
//!
//! Compiles are also rationed: at most `max_concurrent_compiles` per
//! instance and one per tenant at a time. A compile that waits longer than
//! its budget for a turn is refused as busy (retry later).
//!
//! A process is the only way to cancel a compile; no library does this, so
//! the small protocol (component bytes on stdin, serialized code on stdout,
//! a message on stderr and exit status 2 on a refusal) is written here.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::PluginError;
use super::engine::worker_engine;
use crate::config::{CompileIn, PluginsConfig};
use crate::ids::TenantId;

/// The hidden subcommand that runs the worker.
pub const WORKER_COMMAND: &str = "__compile-plugin";
/// Largest serialized component accepted from a worker.
const MAX_OUTPUT_BYTES: u64 = 512 << 20;
/// Largest component a worker reads from stdin.
const MAX_INPUT_BYTES: u64 = 128 << 20;
/// Stderr kept from a worker, for the error message.
const MAX_STDERR_BYTES: u64 = 16 << 10;
/// Exit status of a worker that refused the component (message on stderr).
const EXIT_REFUSED: u8 = 2;

/// How this instance compiles components.
pub struct Compiler {
    mode: CompileIn,
    program: Option<PathBuf>,
    memory_bytes: usize,
    timeout: Duration,
    address_space: u64,
    slots: Arc<Semaphore>,
    /// Tenants compiling now (one compile each at a time).
    busy: Mutex<HashSet<TenantId>>,
    /// Set at shutdown: running compiles are killed, new ones refused.
    stopping: tokio::sync::watch::Sender<bool>,
}

/// A tenant marked as compiling; unmarked on drop, whichever way the
/// compile (or the wait for its turn) ends, the request going away included.
struct Marked<'a> {
    compiler: &'a Compiler,
    tenant: Option<TenantId>,
}

impl Drop for Marked<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.tenant {
            self.compiler.busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&t);
        }
    }
}

/// A tenant's turn to compile: frees the tenant and the global slot on drop.
struct Turn<'a> {
    _marked: Marked<'a>,
    _slot: OwnedSemaphorePermit,
}

impl Compiler {
    pub fn new(c: &PluginsConfig, memory_bytes: usize) -> Self {
        let program = match (c.compile_in, c.compiler_path.is_empty()) {
            (CompileIn::Thread, _) => None,
            (CompileIn::Process, false) => Some(PathBuf::from(&c.compiler_path)),
            (CompileIn::Process, true) => std::env::current_exe().ok(),
        };
        Self {
            mode: c.compile_in,
            program,
            memory_bytes,
            timeout: Duration::from_millis(c.compile_timeout_ms),
            address_space: c.compile_memory_bytes,
            slots: Arc::new(Semaphore::new(c.max_concurrent_compiles.max(1) as usize)),
            busy: Mutex::new(HashSet::new()),
            stopping: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Kill running compiles and refuse new ones (the gateway is stopping).
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Compile `bytes` for `engine` within the budget. `tenant`: whose upload
    /// this is (one compile per tenant at a time); `None` for artifacts that
    /// were already accepted once (loading an active version).
    pub async fn compile(
        &self,
        engine: &Engine,
        tenant: Option<TenantId>,
        bytes: bytes::Bytes,
    ) -> Result<Component, PluginError> {
        let _turn = self.turn(tenant).await?;
        match (self.mode, &self.program) {
            (CompileIn::Process, Some(program)) => {
                let code = self.in_child(program, &bytes).await?;
                deserialize(engine, &code)
            }
            (CompileIn::Process, None) => Err(PluginError::Internal(
                "cannot find this executable to run the compile worker; set plugins.compiler_path".into(),
            )),
            (CompileIn::Thread, _) => {
                let engine = engine.clone();
                tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
                    .await
                    .map_err(|e| PluginError::Internal(format!("compile task: {e}")))?
                    .map_err(|e| PluginError::Invalid(format!("not a valid component: {}", root_message(&e))))
            }
        }
    }

    async fn turn(&self, tenant: Option<TenantId>) -> Result<Turn<'_>, PluginError> {
        if let Some(t) = tenant {
            let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
            if !busy.insert(t) {
                return Err(PluginError::Busy(
                    "another upload of this tenant is compiling; retry when it has finished".into(),
                ));
            }
        }
        let marked = Marked { compiler: self, tenant };
        match tokio::time::timeout(self.timeout, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => Ok(Turn { _marked: marked, _slot: slot }),
            _ => Err(PluginError::Busy("the plugin compiler is busy; retry later".into())),
        }
    }

    /// Run the worker, feed it `bytes`, and take its output within the budget.
    async fn in_child(&self, program: &PathBuf, bytes: &[u8]) -> Result<Vec<u8>, PluginError> {
        let cpu_seconds = self.timeout.as_secs() + 1;
        let mut child = tokio::process::Command::new(program)
            .arg(WORKER_COMMAND)
            .arg(self.memory_bytes.to_string())
            .arg(self.address_space.to_string())
            .arg(cpu_seconds.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_clear()
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| PluginError::Internal(format!("start compile worker {}: {e}", program.display())))?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(PluginError::Internal("compile worker has no pipes".into()));
        };
        let work = async {
            let feed = async {
                // A worker that dies early closes the pipe; its status says why.
                let _ = stdin.write_all(bytes).await;
                drop(stdin);
            };
            let mut out = Vec::new();
            let mut err = Vec::new();
            let (mut stdout, mut stderr) = (stdout.take(MAX_OUTPUT_BYTES + 1), stderr.take(MAX_STDERR_BYTES));
            let read_out = stdout.read_to_end(&mut out);
            let read_err = stderr.read_to_end(&mut err);
            let ((), o, e) = tokio::join!(feed, read_out, read_err);
            o.and(e).map_err(|e| PluginError::Internal(format!("read compile worker: {e}")))?;
            let status = child.wait().await.map_err(|e| PluginError::Internal(format!("wait compile worker: {e}")))?;
            Ok::<_, PluginError>((status, out, err))
        };
        let started = std::time::Instant::now();
        let mut stopping = self.stopping.subscribe();
        let work = async {
            tokio::select! {
                r = work => Some(r),
                _ = stopping.wait_for(|v| *v) => None,
            }
        };
        let (status, out, err) = match tokio::time::timeout(self.timeout, work).await {
            Ok(Some(r)) => r?,
            // `child` is dropped with the future: killed.
            Ok(None) => return Err(PluginError::Busy("the gateway is shutting down; upload again".into())),
            Err(_) => {
                // `child` is dropped with the timed-out future: killed.
                metrics::counter!("sluice_plugin_compiles_total", "result" => "timeout").increment(1);
                return Err(PluginError::Invalid(format!(
                    "compiling the component took longer than its {} ms budget (plugins.compile_timeout_ms); it is too complex",
                    self.timeout.as_millis()
                )));
            }
        };
        metrics::histogram!("sluice_plugin_compile_seconds").record(started.elapsed().as_secs_f64());
        let message = String::from_utf8_lossy(&err).trim().to_owned();
        if status.success() {
            if out.len() as u64 > MAX_OUTPUT_BYTES {
                return Err(PluginError::Invalid("compiled code is larger than the gateway accepts".into()));
            }
            metrics::counter!("sluice_plugin_compiles_total", "result" => "ok").increment(1);
            return Ok(out);
        }
        metrics::counter!("sluice_plugin_compiles_total", "result" => "refused").increment(1);
        if status.code() == Some(i32::from(EXIT_REFUSED)) {
            return Err(PluginError::Invalid(message));
        }
        // Killed by a limit (SIGXCPU, SIGKILL, an allocation failure abort).
        Err(PluginError::Invalid(format!(
            "compiling the component exceeded its CPU or memory budget (plugins.compile_memory_bytes = {}); it is too complex{}",
            self.address_space,
            if message.is_empty() { String::new() } else { format!(" ({})", super::limits::truncate(&message, 512)) }
        )))
    }
}

/// Load code the worker compiled.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, code: &[u8]) -> Result<Component, PluginError> {
    // SAFETY: `code` is what `Engine::precompile_component` of our own
    // compile worker (this binary, `worker_engine`) wrote to a pipe only we
    // read; it is never taken from a tenant or from storage. wasmtime checks
    // its header and that the engine settings match before loading it.
    unsafe { Component::deserialize(engine, code) }
        .map_err(|e| PluginError::Internal(format!("load compiled component: {}", root_message(&e))))
}

/// The error chain in one line.
pub fn root_message(e: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    parts.dedup();
    parts.join(": ")
}

/// `sluice __compile-plugin MEMORY_BYTES ADDRESS_SPACE CPU_SECONDS`: the
/// worker. Caps itself, reads a component on stdin, writes the serialized
/// compiled component on stdout. Exit 0 = compiled; 2 = refused (message on
/// stderr); anything else = killed by a limit.
pub fn worker_main(args: &[String]) -> ExitCode {
    let parse = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok());
    let (Some(memory_bytes), Some(address_space), Some(cpu_seconds)) = (parse(0), parse(1), parse(2)) else {
        eprintln!("usage: sluice {WORKER_COMMAND} MEMORY_BYTES ADDRESS_SPACE CPU_SECONDS");
        return ExitCode::from(EXIT_REFUSED);
    };
    use rustix::process::{Resource, Rlimit, setpriority_process, setrlimit};
    let cap = |r, n| setrlimit(r, Rlimit { current: Some(n), maximum: Some(n) });
    if let Err(e) = cap(Resource::As, address_space).and(cap(Resource::Cpu, cpu_seconds)) {
        eprintln!("compile worker: set resource limits: {e}");
        return ExitCode::FAILURE;
    }
    // Serving comes first: the compile gets what CPU is left over.
    let _ = setpriority_process(None, 15);
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().take(MAX_INPUT_BYTES).read_to_end(&mut bytes) {
        eprintln!("compile worker: read component: {e}");
        return ExitCode::from(EXIT_REFUSED);
    }
    let engine = match worker_engine(usize::try_from(memory_bytes).unwrap_or(usize::MAX)) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match engine.precompile_component(&bytes) {
        Ok(code) => {
            let mut out = std::io::stdout().lock();
            if out.write_all(&code).and_then(|()| out.flush()).is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("not a valid component: {}", root_message(&e));
            ExitCode::from(EXIT_REFUSED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::engine::PluginEngine;
    use crate::plugins::limits::Limits;

    #[test]
    fn worker_code_is_compatible_with_the_serving_engine() {
        let cfg = PluginsConfig::default();
        let limits = Limits::from_config(&cfg);
        let serving = PluginEngine::new(&limits, 4).expect("engine");
        let worker = worker_engine(limits.memory_bytes).expect("worker engine");
        // A component with one empty core module.
        let wat = wasm_encoder::Component::new().finish();
        let code = worker.precompile_component(&wat).expect("compiles");
        deserialize(&serving.engine, &code).expect("the serving engine loads the worker's code");
    }
}
