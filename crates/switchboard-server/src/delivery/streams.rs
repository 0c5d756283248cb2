//! [`Streams`]: a node's room streams and its broadcast stream, the history budget
//! they share, and the sweep that drops what expired.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::stream::{Budget, Stream};
use crate::ServerConfig;
use crate::locks::{lock, read, write};

/// A room's stream, shared by its senders and joiners.
pub(crate) type SharedStream = Arc<Mutex<Stream>>;

pub(crate) struct Streams {
    rooms: std::sync::RwLock<HashMap<Arc<str>, SharedStream>>,
    /// Broadcasts to everyone; `None` when history is off.
    all: Option<SharedStream>,
    budget: Budget,
    /// Whether any room may keep history (so rooms without it skip the lookup).
    any_room_history: bool,
}

impl Streams {
    pub(crate) fn new(config: &ServerConfig, now_ms: u64) -> Streams {
        Streams {
            rooms: Default::default(),
            all: config
                .history
                .is_on()
                .then(|| Arc::new(Mutex::new(Stream::new(config.history, now_ms)))),
            budget: Budget::new(config.history_memory),
            any_room_history: config.history.is_on()
                || config.history_rooms.iter().any(|r| r.policy.is_on()),
        }
    }

    pub(crate) fn budget(&self) -> &Budget {
        &self.budget
    }

    pub(crate) fn all(&self) -> Option<&SharedStream> {
        self.all.as_ref()
    }

    /// Every stream: the broadcasts' and the rooms'.
    pub(crate) fn every(&self) -> Vec<SharedStream> {
        let rooms = read(&self.rooms);
        self.all.iter().chain(rooms.values()).cloned().collect()
    }

    /// The rooms whose streams are kept here.
    pub(crate) fn room_names(&self) -> Vec<String> {
        read(&self.rooms).keys().map(|k| k.to_string()).collect()
    }

    /// The stream of `room`, made when first needed; `None` when the room keeps no
    /// history.
    pub(crate) fn room(
        &self,
        room: &str,
        config: &ServerConfig,
        now_ms: u64,
    ) -> Option<SharedStream> {
        if !self.any_room_history {
            return None;
        }
        if let Some(s) = read(&self.rooms).get(room) {
            return Some(s.clone());
        }
        let policy = config.history_of(room);
        if !policy.is_on() {
            return None;
        }
        let mut rooms = write(&self.rooms);
        let stream = rooms
            .entry(Arc::from(room))
            .or_insert_with(|| Arc::new(Mutex::new(Stream::new(policy, now_ms))));
        Some(stream.clone())
    }

    /// The stream of `room` if it has one now (made by an earlier message or join).
    pub(crate) fn existing_room(&self, room: &str) -> Option<SharedStream> {
        read(&self.rooms).get(room).cloned()
    }

    /// Drops expired messages everywhere, and the room streams with nothing kept, no
    /// members (`has_members`) and nothing happening for `idle_ms`: a client that could
    /// come back to such a room has its session expired by then.
    pub(crate) fn sweep(&self, now_ms: u64, idle_ms: u64, has_members: impl Fn(&str) -> bool) {
        if let Some(all) = &self.all {
            lock(all).drop_expired(now_ms, &self.budget);
        }
        let streams: Vec<(Arc<str>, SharedStream)> = read(&self.rooms)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut idle = Vec::new();
        for (name, stream) in streams {
            let mut s = lock(&stream);
            s.drop_expired(now_ms, &self.budget);
            if s.is_idle(now_ms, idle_ms) && !has_members(&name) {
                idle.push(name);
            }
        }
        if idle.is_empty() {
            return;
        }
        let mut rooms = write(&self.rooms);
        for name in idle {
            // Check again under the map's lock: a message or a join may have come.
            let gone = rooms.get(&name).is_some_and(|s| {
                let s = lock(s);
                s.is_idle(now_ms, idle_ms)
            }) && !has_members(&name);
            if gone {
                if let Some(s) = rooms.remove(&name) {
                    lock(&s).release(&self.budget);
                }
            }
        }
    }

    pub(crate) fn room_count(&self) -> usize {
        read(&self.rooms).len()
    }
}
