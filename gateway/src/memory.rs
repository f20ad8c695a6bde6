//! Returning freed heap memory to the operating system.
//!
//! glibc's malloc keeps memory a program frees inside its arenas for reuse: after
//! a request that briefly held hundreds of megabytes (a large result refused by
//! its cap, a big request body, several large Postgres-door messages), the
//! process's resident size stays at that peak, and the next such request adds
//! to it. [`trimmer`] checks once a second how much free memory the allocator
//! holds (`mallinfo2`) and, when it is large and resident memory has grown since
//! the last trim, calls `malloc_trim(0)`, which hands the free pages back
//! (`MADV_DONTNEED`) wherever they lie in the heap. This is glibc-only (other
//! allocators and C libraries return memory by their own means), so it is
//! written here against `libc` rather than taken from a crate: no maintained
//! crate wraps these two calls.

use std::time::Duration;

use tokio::sync::watch;

/// How often the allocator is asked how much free memory it holds.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Trim only when the allocator holds at least this much free memory …
const FREE_AT_LEAST: usize = 64 << 20;
/// … and resident memory grew by at least this much since the last trim (so
/// memory that was handed back and stays free does not cause a trim a second).
const GROWN_AT_LEAST: u64 = 32 << 20;

/// Below this size glibc serves allocations from its arenas (above, from
/// their own mapping, returned at `free`): the HTTP server's read buffers
/// (~400 KiB), streaming frames and 8 MiB upload parts fall below it. It is
/// the ceiling glibc's own dynamic threshold stops at (on 64-bit).
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory an arena keeps at its top before `free` hands it back on its
/// own (2× the mmap threshold, as glibc's dynamic setting ends up); the
/// [`trimmer`] returns large free memory wherever it lies.
const TRIM_THRESHOLD: i32 = 64 << 20;

/// Settings for a server that streams. glibc's thresholds start low and
/// follow the largest mapping freed so far, and until they have grown an
/// arena hands memory back whenever twice that much is free at its top: a
/// streamed body's buffers were handed back and faulted in again every few
/// hundred kilobytes, some 6 % of the CPU of a 64 MiB upload through the S3
/// door. Fixed at the values the dynamic thresholds grow to, buffers are
/// reused from the start. An operator's own `MALLOC_MMAP_THRESHOLD_` or
/// `MALLOC_TRIM_THRESHOLD_` is left as set.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn tune_allocator() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() || std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_some() {
        return;
    }
    // SAFETY: mallopt only changes the allocator's parameters; it may be
    // called at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_allocator() {}

/// Resident set size of this process in bytes, from `/proc/self/statm`.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

#[allow(unsafe_code)]
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// Free bytes the allocator holds in its arenas.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn allocator_free_bytes() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's own statistics.
    unsafe { libc::mallinfo2() }.fordblks
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim may be called at any time from any thread.
    unsafe { libc::malloc_trim(0) };
}

/// Whether to trim now, given the allocator's free bytes, the resident size
/// and the resident size right after the last trim.
fn should_trim(free: usize, resident: u64, after_last_trim: u64) -> bool {
    free >= FREE_AT_LEAST && resident >= after_last_trim.saturating_add(GROWN_AT_LEAST)
}

/// Trim the allocator whenever [`should_trim`] says so, until shutdown.
pub async fn trimmer(mut shutdown: watch::Receiver<bool>) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut after_last_trim = resident_bytes().unwrap_or(0);
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
            let Some(resident) = resident_bytes() else { return };
            // Both calls walk the arenas under their locks: off the async workers.
            let outcome = tokio::task::spawn_blocking(move || {
                let free = allocator_free_bytes();
                if !should_trim(free, resident, after_last_trim) {
                    return None;
                }
                trim();
                Some((free, resident_bytes().unwrap_or(resident)))
            })
            .await;
            match outcome {
                Ok(Some((free, after))) => {
                    metrics::counter!("sluice_memory_trims_total").increment(1);
                    tracing::debug!(
                        free_mib = free >> 20,
                        before_mib = resident >> 20,
                        after_mib = after >> 20,
                        "returned free heap memory to the OS"
                    );
                    after_last_trim = after;
                }
                // Resident memory may also have shrunk by itself (large blocks
                // are unmapped on free): follow it down.
                Ok(None) => after_last_trim = after_last_trim.min(resident),
                Err(_) => return,
            }
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = shutdown.wait_for(|v| *v).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_when_much_is_free_and_resident_memory_grew() {
        let mib = 1u64 << 20;
        assert!(should_trim(100 << 20, 400 * mib, 100 * mib));
        // Little free: the memory is in use, trimming would not help.
        assert!(!should_trim(10 << 20, 400 * mib, 100 * mib));
        // Free, but already handed back at the last trim.
        assert!(!should_trim(300 << 20, 110 * mib, 100 * mib));
    }

    #[test]
    fn reads_its_own_resident_size() {
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }
}
