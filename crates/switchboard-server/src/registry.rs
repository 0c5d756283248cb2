//! Connections by id, rooms to their members, and users (authenticated identities)
//! to their connections.
//!
//! Both maps sit behind short std locks that are never held across an `.await`:
//! lookups clone the `Conn` handles they need and release the lock before sending.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::locks::{read, write};
use crate::{Conn, ConnId};

#[derive(Default)]
pub(crate) struct Registry {
    conns: RwLock<HashMap<ConnId, Conn>>,
    rooms: RwLock<HashMap<Arc<str>, HashMap<ConnId, Conn>>>,
    /// The connections of each authenticated user (exactly as many ids as it has: most
    /// users have one connection, and a `Vec` would reserve four).
    users: RwLock<HashMap<Arc<str>, Box<[ConnId]>>>,
}

impl Registry {
    pub(crate) fn insert(&self, conn: Conn) {
        self.index_user(&conn);
        write(&self.conns).insert(conn.id(), conn);
    }

    /// Counts `conn` among its user's connections (once it has an identity).
    pub(crate) fn index_user(&self, conn: &Conn) {
        conn.with_identity(|who| {
            if let Some(who) = who {
                let mut users = write(&self.users);
                let ids = users.entry(Arc::from(who.id.as_str())).or_default();
                if !ids.contains(&conn.id()) {
                    *ids = ids.iter().copied().chain([conn.id()]).collect();
                }
            }
        });
    }

    fn unindex_user(&self, conn: &Conn) {
        conn.with_identity(|who| {
            if let Some(who) = who {
                let mut users = write(&self.users);
                if let Some(ids) = users.get_mut(who.id.as_str()) {
                    *ids = ids.iter().copied().filter(|id| *id != conn.id()).collect();
                    if ids.is_empty() {
                        users.remove(who.id.as_str());
                    }
                }
            }
        });
    }

    /// The connections of `user` here.
    pub(crate) fn user_conns(&self, user: &str) -> Vec<Conn> {
        let ids = read(&self.users).get(user).cloned().unwrap_or_default();
        let conns = read(&self.conns);
        ids.iter().filter_map(|id| conns.get(id).cloned()).collect()
    }

    /// Takes `conn` out, unless a resumed connection with its id has replaced it;
    /// true if it was in.
    pub(crate) fn remove(&self, conn: &Conn) -> bool {
        let mut conns = write(&self.conns);
        if conns.get(&conn.id()) == Some(conn) {
            conns.remove(&conn.id());
            drop(conns);
            self.unindex_user(conn);
            return true;
        }
        false
    }

    pub(crate) fn get(&self, id: ConnId) -> Option<Conn> {
        read(&self.conns).get(&id).cloned()
    }

    pub(crate) fn len(&self) -> usize {
        read(&self.conns).len()
    }

    pub(crate) fn ids(&self) -> Vec<ConnId> {
        read(&self.conns).keys().copied().collect()
    }

    /// Calls `f` on every connection while holding the read lock: `f` must not block.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Conn)) {
        for c in read(&self.conns).values() {
            f(c);
        }
    }

    /// Calls `f` on every member of `room` while holding the read lock.
    pub(crate) fn for_each_in_room(&self, room: &str, mut f: impl FnMut(&Conn)) {
        if let Some(members) = read(&self.rooms).get(room) {
            for c in members.values() {
                f(c);
            }
        }
    }

    /// Adds `conn` to `room` (in place of a connection it resumes); returns the room's
    /// interned name, and false if already in.
    pub(crate) fn join(&self, room: &str, conn: &Conn) -> (Arc<str>, bool) {
        let mut rooms = write(&self.rooms);
        if let Some((name, members)) = rooms.get_key_value(room) {
            let name = name.clone();
            let added = members.get(&conn.id()) != Some(conn);
            if added {
                rooms
                    .get_mut(room)
                    .map(|m| m.insert(conn.id(), conn.clone()));
            }
            return (name, added);
        }
        let name: Arc<str> = Arc::from(room);
        rooms.insert(name.clone(), HashMap::from([(conn.id(), conn.clone())]));
        (name, true)
    }

    /// Takes `conn` out of `room` (unless a resumed connection with its id has
    /// replaced it there), dropping the room when it empties; true if it was in.
    pub(crate) fn leave(&self, room: &str, conn: &Conn) -> bool {
        let mut rooms = write(&self.rooms);
        let Some(members) = rooms.get_mut(room) else {
            return false;
        };
        let removed = members.get(&conn.id()) == Some(conn);
        if removed {
            members.remove(&conn.id());
        }
        if members.is_empty() {
            rooms.remove(room);
        }
        removed
    }

    /// Every room here with its member count, largest first (at most `limit`).
    pub(crate) fn room_sizes(&self, limit: usize) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = read(&self.rooms)
            .iter()
            .map(|(name, members)| (name.to_string(), members.len()))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(limit);
        v
    }

    /// How many rooms have members here.
    pub(crate) fn room_count(&self) -> usize {
        read(&self.rooms).len()
    }

    /// The frames waiting in every connection's outbound queue.
    pub(crate) fn queued_frames(&self) -> usize {
        read(&self.conns)
            .values()
            .map(|c| c.outbox().queued())
            .sum()
    }

    pub(crate) fn room_names(&self) -> Vec<String> {
        let mut v: Vec<String> = read(&self.rooms).keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    pub(crate) fn room_members(&self, room: &str) -> Vec<ConnId> {
        let mut v: Vec<ConnId> = read(&self.rooms)
            .get(room)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    pub(crate) fn room_size(&self, room: &str) -> usize {
        read(&self.rooms).get(room).map_or(0, HashMap::len)
    }

    /// The members of `room` here, less those of `exclude` (in time linear in
    /// `exclude`, not in the room).
    pub(crate) fn room_size_except(&self, room: &str, exclude: &[ConnId]) -> usize {
        let rooms = read(&self.rooms);
        let Some(members) = rooms.get(room) else {
            return 0;
        };
        let out = exclude.iter().filter(|id| members.contains_key(id)).count();
        members.len().saturating_sub(out)
    }

    /// The connections here, less those of `exclude`.
    pub(crate) fn len_except(&self, exclude: &[ConnId]) -> usize {
        let conns = read(&self.conns);
        let out = exclude.iter().filter(|id| conns.contains_key(id)).count();
        conns.len().saturating_sub(out)
    }
}
