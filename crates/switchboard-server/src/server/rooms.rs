//! Room membership: join and leave (with `user_joined` / `user_left` to the other
//! members), room names, and taking a closed connection out of every room.

use serde_json::json;
use switchboard_proto::{MAX_ID_LEN, Payload, types};

use super::Server;
use super::send::frame_text;
use crate::backplane::{Disconnect, PresenceEvent, Target};
use crate::clock::now_ms;
use crate::connection::Conn;
use crate::locks::lock;
use crate::ws::Frame;
use crate::{ConnId, SendError};

/// What a join did: whether the connection was added (false: it was in already), and
/// the room stream's position at that moment when the room keeps history.
#[derive(Debug)]
pub(crate) struct Joined {
    pub(crate) added: bool,
    pub(crate) position: Option<switchboard_proto::Position>,
}

pub(crate) fn validate_room(room: &str) -> Result<(), SendError> {
    if room.is_empty() {
        return Err(SendError::InvalidRoom(
            "a room name must not be empty".into(),
        ));
    }
    if room.len() > MAX_ID_LEN {
        return Err(SendError::InvalidRoom(format!(
            "a room name is at most {MAX_ID_LEN} bytes"
        )));
    }
    Ok(())
}

impl Server {
    /// The rooms that have members on this node, sorted.
    pub fn rooms(&self) -> Vec<String> {
        self.inner.registry.room_names()
    }

    /// The members of `room` on this node, sorted.
    pub fn room_members(&self, room: &str) -> Vec<ConnId> {
        self.inner.registry.room_members(room)
    }

    /// Puts `conn` in `room` and tells the room's other members (`user_joined`).
    /// Returns false if it was already in.
    pub fn join(&self, conn: &Conn, room: &str) -> Result<bool, SendError> {
        self.join_room(conn, room).map(|joined| joined.added)
    }

    /// Joins under the room stream's lock, so that the position given back is exactly
    /// where the new member's messages start; a room that keeps its latest message
    /// gives it to the new member first.
    pub(crate) fn join_room(&self, conn: &Conn, room: &str) -> Result<Joined, SendError> {
        validate_room(room)?;
        let max = self.inner.config.max_rooms_per_connection;
        let registry = &self.inner.registry;
        let now = now_ms();
        let stream = self.inner.streams.room(room, &self.inner.config, now);
        let mut guard = stream.as_ref().map(|s| lock(s));
        let added = conn.add_room(room, max, || registry.join(room, conn).0)?;
        let position = guard.as_ref().map(|s| s.position());
        if let Some(stream) = guard.as_mut() {
            stream.touch(now);
            if added && stream.policy().latest_on_join {
                if let Some(latest) = stream.latest(now) {
                    let _ = conn.push(Frame::Text(latest));
                }
            }
        }
        drop(guard);
        if added {
            self.announce_join(conn, room);
        }
        Ok(Joined { added, position })
    }

    /// Tells the backplane and the room's other members that `conn` joined.
    pub(super) fn announce_join(&self, conn: &Conn, room: &str) {
        self.inner
            .backplane
            .presence(&PresenceEvent::Joined(conn.id(), room.to_owned()));
        self.notify_room(types::USER_JOINED, room, conn.id());
    }

    /// Takes `conn` out of `room` and tells the remaining members (`user_left`).
    /// Returns false if it was not in.
    pub fn leave(&self, conn: &Conn, room: &str) -> bool {
        if !conn.remove_room(room, || {
            self.inner.registry.leave(room, conn);
        }) {
            return false;
        }
        self.announce_leave(conn, room);
        true
    }

    /// Disconnects every connection of `user`, on every node (`KICKED`: they do not
    /// reconnect). Returns how many on this node.
    ///
    /// ```no_run
    /// # fn demo(server: switchboard_server::Server) {
    /// server.disconnect_user("mallory", "account suspended");
    /// # }
    /// ```
    pub fn disconnect_user(&self, user: &str, reason: &str) -> usize {
        let what = Disconnect::User(user.to_owned(), reason.to_owned());
        self.disconnect_everywhere(&what)
    }

    /// Disconnects a client, on whichever node it is (`KICKED`). Returns whether it was
    /// on this node.
    pub fn disconnect_client(&self, id: ConnId, reason: &str) -> bool {
        let what = Disconnect::Client(id, reason.to_owned());
        self.disconnect_everywhere(&what) > 0
    }

    fn disconnect_everywhere(&self, what: &Disconnect) -> usize {
        let here = self.disconnect_here(what);
        if self.inner.clustered {
            self.inner
                .backplane
                .presence(&PresenceEvent::Disconnect(what.clone()));
        }
        here
    }

    /// Disconnects what `what` names among this node's connections.
    pub(crate) fn disconnect_here(&self, what: &Disconnect) -> usize {
        let (conns, reason) = match what {
            Disconnect::User(user, reason) => (self.inner.registry.user_conns(user), reason),
            Disconnect::Client(id, reason) => {
                (self.inner.registry.get(*id).into_iter().collect(), reason)
            }
        };
        for conn in &conns {
            conn.close(switchboard_proto::ErrorCode::Kicked, reason);
        }
        conns.len()
    }

    /// Counts `conn` among its user's connections (it authenticated after it connected).
    pub(crate) fn index_user(&self, conn: &Conn) {
        self.inner.registry.index_user(conn);
    }

    /// Takes `conn` out of the rooms its identity no longer allows (after a token
    /// refresh); returns them.
    pub(crate) fn leave_rooms_not_allowed(&self, conn: &Conn) -> Vec<String> {
        let mut left = Vec::new();
        for room in conn.rooms() {
            if self.permit(conn, crate::Action::Join(&room)).is_err() && self.leave(conn, &room) {
                left.push(room);
            }
        }
        left
    }

    /// Tells the backplane and the room's remaining members that `conn` left.
    pub(super) fn announce_leave(&self, conn: &Conn, room: &str) {
        self.announce_departure(conn, room, PresenceEvent::Left(conn.id(), room.to_owned()));
    }

    /// Tells the backplane and the room's remaining members that `conn`, closing, is
    /// out of `room` (its session keeps the room: [`PresenceEvent::LeftOnClose`]).
    pub(super) fn announce_leave_on_close(&self, conn: &Conn, room: &str) {
        let event = PresenceEvent::LeftOnClose(conn.id(), room.to_owned());
        self.announce_departure(conn, room, event);
    }

    fn announce_departure(&self, conn: &Conn, room: &str, event: PresenceEvent) {
        if let Some(stream) = self.inner.streams.existing_room(room) {
            lock(&stream).touch(now_ms());
        }
        self.inner.backplane.presence(&event);
        self.notify_room(types::USER_LEFT, room, conn.id());
    }

    fn notify_room(&self, kind: &str, room: &str, user: ConnId) {
        if !self.inner.config.room_notifications {
            return;
        }
        let payload = json!({ "user_id": user, "room_id": room });
        // A JSON object always encodes.
        if let Ok(payload) = Payload::from_serialize(&payload) {
            let target = Target::Room(room.to_owned());
            let text = frame_text(kind, &payload, &target, None);
            self.send_delivery(target, vec![user], text);
        }
        if self.inner.config.room_updates {
            self.update_room(room, user);
        }
    }

    /// `room_update {room_id, users}` to the room's members after `user` joined or left:
    /// at once for a room's first change, then at most once per
    /// `ServerConfig::room_update_interval`, carrying the count at the interval's end
    /// (`room_updates.rs`).
    fn update_room(&self, room: &str, user: ConnId) {
        let interval = self.inner.config.room_update_interval;
        if !self.inner.clustered && self.inner.registry.room_size_except(room, &[user]) == 0 {
            // Nobody else here to tell (a cluster's other nodes may have members).
            return;
        }
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !interval.is_zero() => runtime,
            // No interval, or no runtime to time one: every change is counted.
            _ => return self.count_room(room, Some(user)),
        };
        if !self.inner.room_updates.changed(room) {
            return;
        }
        self.count_room(room, Some(user));
        let (server, room) = (self.clone(), room.to_owned());
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                if !server.inner.room_updates.interval_ended(&room) {
                    break;
                }
                server.count_room(&room, None);
            }
        });
    }

    /// Sends the room's members (but `except`) how many it has now (in a cluster,
    /// counted across nodes first).
    fn count_room(&self, room: &str, except: Option<ConnId>) {
        if !self.inner.clustered {
            let users = self.inner.registry.room_size(room);
            self.send_room_update(room, users, except);
            return;
        }
        let (server, room) = (self.clone(), room.to_owned());
        tokio::spawn(async move {
            let users = server.cluster_room_members(&room).await.len();
            server.send_room_update(&room, users, except);
        });
    }

    fn send_room_update(&self, room: &str, users: usize, except: Option<ConnId>) {
        let payload = json!({ "room_id": room, "users": users });
        if let Ok(payload) = Payload::from_serialize(&payload) {
            let target = Target::Room(room.to_owned());
            let text = frame_text(types::ROOM_UPDATE, &payload, &target, None);
            self.send_delivery(target, except.into_iter().collect(), text);
        }
    }
}
