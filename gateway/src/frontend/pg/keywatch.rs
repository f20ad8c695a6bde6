//! Sessions end when their API key stops being valid.
//!
//! A Postgres session is authenticated once, at startup, but may live for
//! days. Every [`CHECK_INTERVAL`] one query per gateway instance asks the
//! control plane which keys of the open sessions were revoked or deleted, or
//! belong to a tenant that is no longer active
//! ([`crate::control::keys::unusable_among`]); each session of such a key is
//! told, and ends with a FATAL naming the reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

use crate::control::keys;
use crate::services::Services;

/// How often open sessions' keys are checked (sessions of a revoked key end
/// within about this time).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

struct Watched {
    sessions: usize,
    tx: watch::Sender<Option<&'static str>>,
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
        let w = keys.entry(key).or_insert_with(|| Watched { sessions: 0, tx: watch::channel(None).0 });
        w.sessions += 1;
        Subscription { watch: self.clone(), key, rx: w.tx.subscribe() }
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
        let unusable = match svc.control.client().await {
            Ok(c) => keys::unusable_among(&c, &ids).await,
            Err(e) => Err(e),
        };
        match unusable {
            Ok(list) => {
                let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
                for (id, why) in list {
                    if let Some(w) = keys.get(&id) {
                        w.tx.send_replace(Some(why));
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
