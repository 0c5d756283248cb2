//! Room membership: join and leave (with `user_joined` / `user_left` to the other
//! members), room names, and taking a closed connection out of every room.

use std::sync::Arc;

use serde_json::json;
use switchboard_proto::{MAX_ID_LEN, Payload, types};

use super::Server;
use super::send::frame_text;
use crate::backplane::{PresenceEvent, Target};
use crate::connection::Conn;
use crate::{ConnId, SendError};

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
        validate_room(room)?;
        let max = self.inner.config.max_rooms_per_connection;
        let registry = &self.inner.registry;
        if !conn.add_room(room, max, || registry.join(room, conn).0)? {
            return Ok(false);
        }
        self.inner
            .backplane
            .presence(&PresenceEvent::Joined(conn.id(), room.to_owned()));
        self.notify_room(types::USER_JOINED, room, conn.id());
        Ok(true)
    }

    /// Takes `conn` out of `room` and tells the remaining members (`user_left`).
    /// Returns false if it was not in.
    pub fn leave(&self, conn: &Conn, room: &str) -> bool {
        if !conn.remove_room(room, || {
            self.inner.registry.leave(room, conn.id());
        }) {
            return false;
        }
        self.inner
            .backplane
            .presence(&PresenceEvent::Left(conn.id(), room.to_owned()));
        self.notify_room(types::USER_LEFT, room, conn.id());
        true
    }

    fn notify_room(&self, kind: &str, room: &str, user: ConnId) {
        if !self.inner.config.room_notifications {
            return;
        }
        let payload = json!({ "user_id": user, "room_id": room });
        // A JSON object always encodes.
        if let Ok(payload) = Payload::from_serialize(&payload) {
            self.send_delivery(
                Target::Room(room.to_owned()),
                vec![user],
                frame_text(kind, &payload, Some(room), None),
            );
        }
    }
    /// Takes a closed connection out of the registry and its rooms.
    pub(crate) fn remove_connection(&self, conn: &Conn) {
        self.inner.registry.remove(conn.id());
        let rooms: Vec<Arc<str>> = conn.leave_all_rooms();
        for room in &rooms {
            self.inner.registry.leave(room, conn.id());
            self.inner
                .backplane
                .presence(&PresenceEvent::Left(conn.id(), room.to_string()));
            self.notify_room(types::USER_LEFT, room, conn.id());
        }
        self.inner
            .backplane
            .presence(&PresenceEvent::Disconnected(conn.id()));
        self.release_admission();
    }
}
