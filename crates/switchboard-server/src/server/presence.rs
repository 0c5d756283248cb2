//! Presence by user: who is in a room, grouped by authenticated user, with the `info`
//! their token carried, across the cluster. Bounded: at most [`MAX_MEMBERS`] members
//! are looked at (the answer says when it stopped there).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::Server;
use crate::ConnId;
use crate::backplane::PresenceEvent;
use crate::connection::Conn;

/// The most members of a room that [`Server::room_presence`] looks at.
pub const MAX_MEMBERS: usize = 10_000;

/// One user in a room.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserPresence {
    /// The user's id (a token's `sub`).
    pub user: String,
    /// The `info` claim of the user's token, or `null`.
    pub info: Value,
    /// How many of the user's connections are in the room.
    pub connections: usize,
}

/// Who is in a room, by user ([`Server::room_presence`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoomPresence {
    /// The room.
    pub room: String,
    /// Its authenticated users, by id.
    pub users: Vec<UserPresence>,
    /// Members that did not authenticate.
    pub anonymous: usize,
    /// True when the room had more than [`MAX_MEMBERS`] members and only that many
    /// were looked at.
    pub truncated: bool,
}

/// A room's recent messages ([`Server::room_history`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoomHistory {
    /// The room.
    pub room: String,
    /// Where the room's stream stands: its epoch and the offset of its last message.
    pub position: switchboard_proto::Position,
    /// The messages, as delivered (envelopes with their `offset`), oldest first.
    pub messages: Vec<Value>,
}

/// The user and `info` of a connection's identity.
fn tag(conn: &Conn) -> Option<(String, Value)> {
    conn.with_identity(|who| {
        who.map(|w| {
            let info = w.claims.get("info").cloned().unwrap_or(Value::Null);
            (w.id.clone(), info)
        })
    })
}

impl Server {
    /// Who is in `room`, grouped by user with their token's `info`, on every node.
    /// Costs one read of the room's members and, in a cluster, one of the other
    /// nodes' members' identities; at most [`MAX_MEMBERS`] members are looked at.
    ///
    /// ```no_run
    /// # async fn demo(server: switchboard_server::Server) {
    /// let presence = server.room_presence("chat:lobby").await;
    /// for u in &presence.users {
    ///     println!("{} ({} tabs) {}", u.user, u.connections, u.info);
    /// }
    /// # }
    /// ```
    pub async fn room_presence(&self, room: &str) -> RoomPresence {
        let mut members = self.cluster_room_members(room).await;
        let truncated = members.len() > MAX_MEMBERS;
        members.truncate(MAX_MEMBERS);
        let mut tags: Vec<Option<(String, Value)>> = Vec::with_capacity(members.len());
        let mut remote: Vec<(usize, ConnId)> = Vec::new();
        for (i, id) in members.iter().enumerate() {
            match self.connection(*id) {
                Some(conn) => tags.push(tag(&conn)),
                None => {
                    tags.push(None);
                    remote.push((i, *id));
                }
            }
        }
        if !remote.is_empty() {
            let ids: Vec<ConnId> = remote.iter().map(|(_, id)| *id).collect();
            match self.inner.backplane.identities(&ids).await {
                Ok(Some(found)) => {
                    for ((i, _), t) in remote.iter().zip(found) {
                        tags[*i] = t;
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read identities from the backplane"),
            }
        }
        let mut users: BTreeMap<String, UserPresence> = BTreeMap::new();
        let mut anonymous = 0;
        for t in tags {
            match t {
                Some((user, info)) => {
                    users
                        .entry(user.clone())
                        .or_insert(UserPresence {
                            user,
                            info,
                            connections: 0,
                        })
                        .connections += 1;
                }
                None => anonymous += 1,
            }
        }
        RoomPresence {
            room: room.to_owned(),
            users: users.into_values().collect(),
            anonymous,
            truncated,
        }
    }

    /// A room's recent messages, as its members received them (each with its
    /// `offset`), oldest first: at most `limit` of those after offset `since`, and
    /// where the room's stream stands. `None` when the room keeps no history here.
    /// In a cluster every node keeps every room's history, so any node answers.
    ///
    /// ```no_run
    /// # fn demo(server: switchboard_server::Server) {
    /// if let Some(h) = server.room_history("chat:lobby", 0, 50) {
    ///     println!("{} messages up to offset {}", h.messages.len(), h.position.offset);
    /// }
    /// # }
    /// ```
    pub fn room_history(&self, room: &str, since: u64, limit: usize) -> Option<RoomHistory> {
        let stream = self.inner.streams.existing_room(room)?;
        let stream = crate::locks::lock(&stream);
        let messages = stream
            .recent(since, limit, crate::clock::now_ms())
            .iter()
            .filter_map(|t| serde_json::from_str(t.as_str()).ok())
            .collect();
        Some(RoomHistory {
            room: room.to_owned(),
            position: stream.position(),
            messages,
        })
    }

    /// Who each identified client of this node is: its id, user and token's `info`
    /// (what [`announce_identity`](Self::announce_identity) told the cluster).
    pub(crate) fn identities_here(&self) -> Vec<(ConnId, String, Value)> {
        let mut identified = Vec::new();
        self.inner.registry.for_each(|c| {
            if let Some((user, info)) = tag(c) {
                identified.push((c.id(), user, info));
            }
        });
        identified
    }

    /// Tells the backplane who `conn` is (for presence by user on other nodes).
    pub(crate) fn announce_identity(&self, conn: &Conn) {
        if !self.inner.clustered {
            return;
        }
        if let Some((user, info)) = tag(conn) {
            self.inner
                .backplane
                .presence(&PresenceEvent::Identified(conn.id(), user, info));
        }
    }
}
