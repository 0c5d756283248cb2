//! [`Sessions`]: the node's sessions that no connection serves now, waiting for a
//! resume until they expire.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::session::Session;
use super::stream::Budget;
use crate::ConnId;
use crate::locks::{read, write};

/// The node's sessions that no connection serves now, by client id, until they are
/// resumed or expire.
#[derive(Default)]
pub(crate) struct Sessions {
    detached: RwLock<HashMap<ConnId, Arc<Session>>>,
}

impl Sessions {
    pub(crate) fn keep(&self, session: Arc<Session>) {
        write(&self.detached).insert(session.client(), session);
    }

    pub(crate) fn get(&self, client: ConnId) -> Option<Arc<Session>> {
        read(&self.detached).get(&client).cloned()
    }

    /// Takes `session` out (it was resumed).
    pub(crate) fn take(&self, session: &Arc<Session>) {
        let mut map = write(&self.detached);
        if map
            .get(&session.client())
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            map.remove(&session.client());
        }
    }

    /// Drops the sessions past `ttl_ms`; returns how many remain.
    pub(crate) fn sweep(&self, now_ms: u64, ttl_ms: u64, budget: &Budget) -> usize {
        let expired: Vec<Arc<Session>> = read(&self.detached)
            .values()
            .filter(|s| s.expired(now_ms, ttl_ms))
            .cloned()
            .collect();
        let mut gone = Vec::new();
        let mut map = write(&self.detached);
        for s in expired {
            // A session resumed since was taken out; one detached again since is
            // not expired.
            if s.surely_expired(now_ms, ttl_ms)
                && map.get(&s.client()).is_some_and(|k| Arc::ptr_eq(k, &s))
            {
                map.remove(&s.client());
                gone.push(s);
            }
        }
        let left = map.len();
        drop(map);
        for s in gone {
            s.release(budget);
        }
        left
    }

    pub(crate) fn len(&self) -> usize {
        read(&self.detached).len()
    }

    /// Every session waiting for a resume.
    pub(crate) fn all(&self) -> Vec<Arc<Session>> {
        read(&self.detached).values().cloned().collect()
    }
}
