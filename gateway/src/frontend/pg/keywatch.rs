//! Open sessions follow their API key: they end when it stops being valid and
//! take up its tenant's new quotas.
//!
//! A Postgres session is authenticated once, at startup, but may live for
//! days. Every [`CHECK_INTERVAL`] one query per gateway instance reads the
//! state of every key of the open sessions ([`crate::control::keys::states_of`]).
//! Each session of a key that was revoked or deleted, or whose tenant is no
//! longer active, is told, and ends with a FATAL naming the reason; the
//! sessions of the others see their tenant's quotas and their key's limits as
//! they are now, and apply them from their next message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

use crate::control::keys::{self, KeyState};
use crate::control::quotas::{KeyLimits, Quotas};
use crate::services::Services;

/// How often open sessions' keys are checked (sessions of a revoked key end
/// within about this time).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// A key's quotas and limits as last read.
pub type Limits = Arc<(Quotas, KeyLimits)>;

struct Watched {
    sessions: usize,
    tx: watch::Sender<Option<&'static str>>,
    limits: watch::Sender<Option<Limits>>,
}

/// The keys of this instance's open sessions.
#[derive(Default)]
pub struct KeyWatch {
    keys: Mutex<HashMap<Uuid, Watched>>,
}

/// One session's interest in its key; dropping it ends the interest.
pub struct Subscription {
    watch: Arc<KeyWatch>,
    key: Uuid,
    rx: watch::Receiver<Option<&'static str>>,
    limits: watch::Receiver<Option<Limits>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut keys = self.watch.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = keys.get_mut(&self.key) {
            w.sessions = w.sessions.saturating_sub(1);
            if w.sessions == 0 {
                keys.remove(&self.key);
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

    /// Resolves with the reason once the key is no longer valid.
    pub async fn invalidated(&mut self) -> &'static str {
        let why = self.rx.wait_for(Option::is_some).await.map(|r| r.unwrap_or("its API key is no longer valid"));
        match why {
            Ok(why) => why,
            // The watch is gone (the door is shutting down): never resolves.
            Err(_) => std::future::pending().await,
        }
    }
}

impl KeyWatch {
    pub fn subscribe(self: &Arc<Self>, key: Uuid) -> Subscription {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let w = keys.entry(key).or_insert_with(|| Watched {
            sessions: 0,
            tx: watch::channel(None).0,
            limits: watch::channel(None).0,
        });
        w.sessions += 1;
        Subscription { watch: self.clone(), key, rx: w.tx.subscribe(), limits: w.limits.subscribe() }
    }

    fn watched(&self) -> Vec<Uuid> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).keys().copied().collect()
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
                let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
                for (id, state) in list {
                    let Some(w) = keys.get(&id) else { continue };
                    match state {
                        KeyState::Unusable(why) => {
                            w.tx.send_replace(Some(why));
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
