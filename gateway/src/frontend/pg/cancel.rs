//! Cancel keys. Each client session gets a BackendKeyData (pid, secret) of the
//! gateway's own; while the session holds an upstream connection, its slot
//! names that connection's real key. A CancelRequest with a known key is sent
//! on to the upstream serving that client now; unknown keys are ignored (as
//! Postgres does). Keys are per gateway instance.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::Rng;

use crate::secret::ct_eq;
use crate::upstream::pg_wire::UpstreamTarget;

/// The upstream connection serving a session right now.
#[derive(Clone)]
pub struct CancelTarget {
    pub target: Arc<UpstreamTarget>,
    pub pid: i32,
    pub secret: i32,
}

pub type Slot = Arc<Mutex<Option<CancelTarget>>>;

#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<i32, (i32, Slot)>>,
}

/// Removes the session's key when the session ends.
pub struct Registration {
    registry: Arc<CancelRegistry>,
    pub pid: i32,
    pub secret: i32,
    pub slot: Slot,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.pid);
    }
}

impl Registration {
    pub fn set(&self, target: Option<CancelTarget>) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }

    /// The server the held connection is on (the primary or a replica).
    pub fn target(&self) -> Option<Arc<UpstreamTarget>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|t| t.target.clone())
    }
}

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, (i32, Slot)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh key for a new session.
    pub fn register(self: &Arc<Self>) -> Registration {
        let mut rng = rand::rng();
        let slot: Slot = Arc::default();
        let mut map = self.lock();
        loop {
            let pid = rng.random_range(1..i32::MAX);
            if let std::collections::hash_map::Entry::Vacant(v) = map.entry(pid) {
                let secret = rng.random::<i32>();
                v.insert((secret, slot.clone()));
                return Registration { registry: self.clone(), pid, secret, slot };
            }
        }
    }

    /// The upstream to cancel for a client's CancelRequest, if the key is known
    /// and the session is running something upstream.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        let map = self.lock();
        let (s, slot) = map.get(&pid)?;
        if !ct_eq(&s.to_be_bytes(), &secret.to_be_bytes()) {
            return None;
        }
        slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
