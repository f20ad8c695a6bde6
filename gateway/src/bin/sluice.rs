//! The `sluice` binary: a thin shim into [`sluice::cli::run`].
//!
//! Its allocator is mimalloc rather than the system's: the gateway's hot
//! paths allocate many short-lived buffers across tokio's worker threads
//! (glibc's malloc and free were 8–13 % of the gateway's CPU in profiles of
//! the Postgres and S3 doors), and mimalloc returns freed pages to the
//! system instead of keeping them in per-thread arenas after a burst.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sluice::cli::run()
}
