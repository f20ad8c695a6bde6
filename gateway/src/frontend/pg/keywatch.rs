//! Open sessions follow their API key: they end when it stops being valid and
//! take up its tenant's new quotas. The watch also holds every session's
//! [`Alarm`] (see [`super::alarm`]): it rings them when their key stops being
//! valid or the door shuts down, and its sweeper rings those whose statement
//! passed its deadline.
//!
//! A Postgres session is authenticated once, at startup, but may live for
//! days. Every [`CHECK_INTERVAL`] one query per gateway instance reads the
//! state of every key of the open sessions ([`crate::control::keys::states_of`]).
//! Each session of a key that was revoked or deleted, or whose tenant is no
//! longer active, is told, and ends with a FATAL naming the reason; the
//! sessions of the others see their tenant's quotas and their key's limits as
//! they are now, and apply them from their next message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

use super::alarm::{self, Alarm, CoarseClock};
use crate::control::keys::{self, KeyState};
use crate::control::quotas::{KeyLimits, Quotas};
use crate::services::Services;

/// How often open sessions' keys are checked (sessions of a revoked key end
/// within about this time).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// A key's quotas and limits as last read.
pub type Limits = Arc<(Quotas, KeyLimits)>;

struct Watched {
    /// The alarms of the key's open sessions, by subscription.
    alarms: HashMap<u64, Arc<Alarm>>,
    tx: watch::Sender<Option<&'static str>>,
    limits: watch::Sender<Option<Limits>>,
}

#[derive(Default)]
struct Watching {
    keys: HashMap<Uuid, Watched>,
}

/// The keys of this instance's open sessions.
#[derive(Default)]
pub struct KeyWatch {
    state: Mutex<Watching>,
    /// The door is shutting down (set under the lock: new sessions start
    /// with their alarm rung).
    closed: AtomicBool,
    next_id: AtomicU64,
    /// The deadlines' clock (advanced by [`KeyWatch::sweep`]).
    pub clock: CoarseClock,
}

/// One session's interest in its key; dropping it ends the interest.
pub struct Subscription {
    watch: Arc<KeyWatch>,
    key: Uuid,
    id: u64,
    /// Rung when the key stops being valid, the door shuts down or the
    /// deadline set on it passes.
    pub alarm: Arc<Alarm>,
    rx: watch::Receiver<Option<&'static str>>,
    limits: watch::Receiver<Option<Limits>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut st = self.watch.lock();
        if let Some(w) = st.keys.get_mut(&self.key) {
            w.alarms.remove(&self.id);
            if w.alarms.is_empty() {
                st.keys.remove(&self.key);
            }
        }
    }
}

impl Subscription {
    /// The reason, if the key is no longer valid (no waiting).
    pub fn invalid_now(&mut self) -> Option<&'static str> {
        if !self.rx.has_changed().unwrap_or(false) {
            return None;
        }
        *self.rx.borrow_and_update()
    }

    /// The key's quotas and limits, if they were read again since the last
    /// call (they may be unchanged: compare).
    pub fn limits_now(&mut self) -> Option<Limits> {
        if !self.limits.has_changed().unwrap_or(false) {
            return None;
        }
        self.limits.borrow_and_update().clone()
    }

    /// Ring the alarm once `after` has passed (a running statement's deadline).
    pub fn set_deadline(&self, after: Duration) {
        self.alarm.set_deadline(&self.watch.clock, after);
    }

    /// Whether the deadline set last has passed.
    pub fn deadline_passed(&self) -> bool {
        self.alarm.deadline_passed(self.watch.clock.now_ms())
    }

    /// Whether the door is shutting down.
    pub fn shutting_down(&self) -> bool {
        self.watch.closed.load(Ordering::Acquire)
    }
}

impl KeyWatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, Watching> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(self: &Arc<Self>, key: Uuid) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let alarm = Arc::new(Alarm::default());
        let mut st = self.lock();
        if self.closed.load(Ordering::Acquire) {
            alarm.ring();
        }
        let w = st.keys.entry(key).or_insert_with(|| Watched {
            alarms: HashMap::new(),
            tx: watch::channel(None).0,
            limits: watch::channel(None).0,
        });
        w.alarms.insert(id, alarm.clone());
        Subscription { watch: self.clone(), key, id, alarm, rx: w.tx.subscribe(), limits: w.limits.subscribe() }
    }

    fn watched(&self) -> Vec<Uuid> {
        self.lock().keys.keys().copied().collect()
    }

    /// The door is shutting down: wake every session (and every later one).
    pub fn ring_all(&self) {
        let st = self.lock();
        self.closed.store(true, Ordering::Release);
        st.keys.values().flat_map(|w| w.alarms.values()).for_each(|a| a.ring());
    }

    /// Advance the clock and ring every session whose deadline has passed.
    pub fn sweep(&self) {
        let now = self.clock.advance();
        self.lock().keys.values().flat_map(|w| w.alarms.values()).for_each(|a| a.sweep(now));
    }

    /// Sweep every [`alarm::TICK`], until aborted (the door stops it once
    /// its sessions have drained: deadlines hold while they finish).
    pub async fn run_sweeper(self: Arc<Self>) {
        let mut tick = tokio::time::interval(alarm::TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sweep();
        }
    }

    /// One check of every watched key.
    pub async fn check(&self, svc: &Services) {
        let ids = self.watched();
        if ids.is_empty() {
            return;
        }
        let states = match svc.control.client().await {
            Ok(c) => keys::states_of(&c, &ids).await,
            Err(e) => Err(e),
        };
        match states {
            Ok(list) => {
                let st = self.lock();
                for (id, state) in list {
                    let Some(w) = st.keys.get(&id) else { continue };
                    match state {
                        KeyState::Unusable(why) => {
                            w.tx.send_replace(Some(why));
                            w.alarms.values().for_each(|a| a.ring());
                        }
                        KeyState::Usable { quotas, key_limits } => {
                            // Sessions are woken only when something changed.
                            w.limits.send_if_modified(|cur| {
                                if cur.as_ref().is_some_and(|l| l.0 == quotas && l.1 == key_limits) {
                                    return false;
                                }
                                *cur = Some(Arc::new((quotas, key_limits)));
                                true
                            });
                        }
                    }
                }
            }
            // The control plane is unreachable: keep sessions (they were
            // valid), check again next time.
            Err(e) => tracing::warn!(error = %e, "check the keys of open Postgres sessions"),
        }
    }

    /// Check every [`CHECK_INTERVAL`] until the door shuts down.
    pub async fn run(self: Arc<Self>, svc: Services, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stop = tokio::select! {
                _ = tick.tick() => false,
                _ = shutdown.wait_for(|v| *v) => true,
            };
            if stop {
                return;
            }
            self.check(&svc).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_rings_every_session_and_each_later_one() {
        let w = Arc::new(KeyWatch::default());
        let (a, b) = (w.subscribe(Uuid::new_v4()), w.subscribe(Uuid::new_v4()));
        assert!(!a.alarm.take() && !b.alarm.take() && !a.shutting_down());
        w.ring_all();
        assert!(a.alarm.take() && b.alarm.take() && a.shutting_down());
        let late = w.subscribe(Uuid::new_v4());
        assert!(late.alarm.take() && late.shutting_down(), "a session that starts during shutdown sees it at once");
    }

    #[test]
    fn the_sweeper_rings_passed_deadlines_only() {
        let w = Arc::new(KeyWatch::default());
        let key = Uuid::new_v4();
        let (due, later, none) = (w.subscribe(key), w.subscribe(key), w.subscribe(key));
        due.set_deadline(Duration::ZERO);
        later.set_deadline(Duration::from_secs(3600));
        std::thread::sleep(alarm::TICK + Duration::from_millis(20));
        w.sweep();
        assert!(due.alarm.take() && due.deadline_passed());
        assert!(!later.alarm.take() && !later.deadline_passed());
        assert!(!none.alarm.take());
    }

    #[test]
    fn subscriptions_leave_no_trace() {
        let w = Arc::new(KeyWatch::default());
        let key = Uuid::new_v4();
        let (a, b) = (w.subscribe(key), w.subscribe(key));
        drop(a);
        assert_eq!(w.watched(), vec![key]);
        drop(b);
        assert!(w.watched().is_empty());
    }
}
