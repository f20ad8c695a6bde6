//! What wakes a session apart from its two sockets: its API key stopped
//! being valid, the door is shutting down, or the statement it runs passed
//! its deadline.
//!
//! Each session waits on its own [`Alarm`]: an atomic flag and one waker
//! slot, so no session keeps a timer or waits on a channel shared with the
//! others. Between messages it looks at the flag with one atomic load; a
//! statement sets its deadline with one clock read and one atomic store. The
//! key watch rings the alarms of a revoked key and, at shutdown, all of them;
//! its sweeper advances the door's [`CoarseClock`] and rings the sessions
//! whose deadline has passed, every [`TICK`] (the deadline's precision).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;

/// How often deadlines are looked at (and the coarse clock advances).
pub const TICK: Duration = Duration::from_millis(250);

/// Milliseconds since the door started, advanced every [`TICK`].
pub struct CoarseClock {
    start: Instant,
    now_ms: AtomicU64,
}

impl Default for CoarseClock {
    fn default() -> Self {
        Self { start: Instant::now(), now_ms: AtomicU64::new(0) }
    }
}

impl CoarseClock {
    pub fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }

    /// The real clock, in the same unit.
    pub fn read(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Read the real clock and advance to it (the sweeper, once per tick).
    pub fn advance(&self) -> u64 {
        let now = self.read();
        self.now_ms.store(now, Ordering::Relaxed);
        now
    }
}

/// No deadline set.
const NONE: u64 = u64::MAX;

/// One session's alarm.
pub struct Alarm {
    rung: AtomicBool,
    waker: AtomicWaker,
    /// When the running statement's deadline passes, on the coarse clock.
    deadline_ms: AtomicU64,
}

impl Default for Alarm {
    fn default() -> Self {
        Self { rung: AtomicBool::new(false), waker: AtomicWaker::new(), deadline_ms: AtomicU64::new(NONE) }
    }
}

impl Alarm {
    /// Wake the session; it looks at what changed before its next message.
    pub fn ring(&self) {
        self.rung.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether the alarm rang and was not taken yet.
    pub fn is_rung(&self) -> bool {
        self.rung.load(Ordering::Acquire)
    }

    /// Whether the alarm rang since the last call (clears it).
    pub fn take(&self) -> bool {
        // A load first: the common answer needs no write to the cache line.
        self.rung.load(Ordering::Acquire) && self.rung.swap(false, Ordering::AcqRel)
    }

    /// Resolves once the alarm has rung (without clearing it: see [`Alarm::take`]).
    pub fn rung(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.rung.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.rung.load(Ordering::Acquire) { Poll::Ready(()) } else { Poll::Pending }
        })
    }

    /// Ring once `after` has passed. Counted from the real clock (one read
    /// per statement): the coarse clock only ever lags it, so the alarm never
    /// rings early, even when the sweeper runs late.
    pub fn set_deadline(&self, clock: &CoarseClock, after: Duration) {
        let after = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        self.deadline_ms.store(clock.read().saturating_add(after).min(NONE - 1), Ordering::Relaxed);
    }

    pub fn clear_deadline(&self) {
        self.deadline_ms.store(NONE, Ordering::Relaxed);
    }

    /// Whether a deadline is set and has passed at `now_ms`.
    pub fn deadline_passed(&self, now_ms: u64) -> bool {
        let d = self.deadline_ms.load(Ordering::Relaxed);
        d != NONE && now_ms >= d
    }

    /// The sweeper: ring if the deadline has passed.
    pub fn sweep(&self, now_ms: u64) {
        if self.deadline_passed(now_ms) {
            self.ring();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn rings_once_and_clears_on_take() {
        let a = Alarm::default();
        assert!(a.rung().now_or_never().is_none());
        assert!(!a.take());
        a.ring();
        assert!(a.rung().now_or_never().is_some());
        assert!(a.rung().now_or_never().is_some(), "waiting does not clear it");
        assert!(a.take());
        assert!(!a.take());
        assert!(a.rung().now_or_never().is_none());
    }

    #[tokio::test]
    async fn wakes_a_waiting_task() {
        let a = std::sync::Arc::new(Alarm::default());
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.rung().await }
        });
        tokio::task::yield_now().await;
        a.ring();
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").expect("task");
    }

    #[test]
    fn deadline_is_never_early_and_rings_when_passed() {
        let clock = CoarseClock::default();
        let a = Alarm::default();
        assert!(!a.deadline_passed(u64::MAX - 1), "no deadline");
        let before = clock.read();
        a.set_deadline(&clock, Duration::from_millis(1000));
        let after = clock.read();
        assert!(!a.deadline_passed(before + 999), "never early");
        assert!(a.deadline_passed(after + 1000));
        a.sweep(before + 10);
        assert!(!a.take());
        a.sweep(after + 1000);
        assert!(a.take());
        a.clear_deadline();
        a.sweep(u64::MAX - 1);
        assert!(!a.take());
    }
}
