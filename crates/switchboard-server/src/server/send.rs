//! Delivery: broadcast to all or a filtered set, to a room, to one client, and the
//! relay's fan-out. A message is encoded once; every recipient's queue gets the same
//! bytes, and in a cluster the backplane carries the same frame to the other nodes.

use std::collections::HashSet;

use serde::Serialize;
use switchboard_proto::{Envelope, Parts, Payload, encode_parts, stamp_offset};

use super::{Server, validate_room};
use crate::backplane::{Delivery, Target};
use crate::clock::now_ms;
use crate::connection::Conn;
use crate::delivery::Stream;
use crate::delivery::stream::Budget;
use crate::locks::lock;
use crate::ws::{Frame, Text};
use crate::{ConnId, SendError};

/// Which connections a broadcast reaches: all of them, or only `include`, less `exclude`.
///
/// ```
/// use switchboard_server::{ConnId, Filter};
/// let (a, b) = (ConnId::from_u64(1), ConnId::from_u64(2));
/// let everyone_but_a = Filter::exclude([a]);
/// let only_b = Filter::include([a, b]).and_exclude([a]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    include: Option<Vec<ConnId>>,
    exclude: Vec<ConnId>,
}

impl Filter {
    /// Everyone.
    pub fn all() -> Filter {
        Filter::default()
    }

    /// Only these connections.
    pub fn include(ids: impl IntoIterator<Item = ConnId>) -> Filter {
        Filter {
            include: Some(ids.into_iter().collect()),
            exclude: Vec::new(),
        }
    }

    /// Everyone but these connections.
    pub fn exclude(ids: impl IntoIterator<Item = ConnId>) -> Filter {
        Filter {
            include: None,
            exclude: ids.into_iter().collect(),
        }
    }

    /// Also leaves out these connections.
    pub fn and_exclude(mut self, ids: impl IntoIterator<Item = ConnId>) -> Filter {
        self.exclude.extend(ids);
        self
    }
}

impl Server {
    /// Delivers a delivery (from this node or another) to this node's connections.
    pub(crate) fn deliver_local(&self, delivery: &Delivery) -> usize {
        self.deliver_in_streams(&delivery.target, &delivery.exclude, &delivery.frame)
    }

    /// Delivers `text` (encoded without an offset) to this node's connections, in its
    /// stream: a room's or the broadcasts' (stamped once, under the stream's lock so
    /// offsets reach every member in order), or each recipient's session.
    fn deliver_in_streams(&self, target: &Target, exclude: &[ConnId], text: &str) -> usize {
        let now = now_ms();
        let budget = self.inner.streams.budget();
        match target {
            Target::Room(room) => {
                if let Some(stream) = self.inner.streams.room(room, &self.inner.config, now) {
                    let mut stream = lock(&stream);
                    return self.deliver_stamped(&mut stream, target, exclude, text, now);
                }
            }
            Target::All => {
                if let Some(all) = self.inner.streams.all() {
                    let mut stream = lock(all);
                    return self.deliver_stamped(&mut stream, target, exclude, text, now);
                }
            }
            Target::Conns(ids) => {
                let mut seen = HashSet::new();
                let mut n = 0;
                for &id in ids {
                    if exclude.contains(&id) || (ids.len() > 1 && !seen.insert(id)) {
                        continue;
                    }
                    if self.deliver_direct(id, text, now, budget).is_ok() {
                        n += 1;
                    }
                }
                return n;
            }
            // A user's connections: in no stream (at most once), see `send_to_user`.
            Target::User(_) => {}
        }
        self.deliver_frame(target, exclude, &Frame::text(text.to_owned()))
    }

    /// Takes the stream's next offset, stamps the frame with it, queues it for the
    /// target and keeps it in the stream's history.
    fn deliver_stamped(
        &self,
        stream: &mut Stream,
        target: &Target,
        exclude: &[ConnId],
        text: &str,
        now: u64,
    ) -> usize {
        let offset = stream.next_offset();
        self.deliver_at(stream, offset, target, exclude, text, now)
    }

    /// Stamps the frame with `offset` (the stream's newest), queues it for the target
    /// and keeps it in the stream's history.
    pub(super) fn deliver_at(
        &self,
        stream: &mut Stream,
        offset: u64,
        target: &Target,
        exclude: &[ConnId],
        text: &str,
        now: u64,
    ) -> usize {
        let frame = Text::from(stamp_offset(text, offset));
        let n = self.deliver_frame(target, exclude, &Frame::Text(frame.clone()));
        stream.keep(offset, frame, exclude, now, self.inner.streams.budget());
        n
    }

    /// A message for one client, in its session's stream: queued on its connection,
    /// or (between connections) kept for its resume.
    fn deliver_direct(
        &self,
        id: ConnId,
        text: &str,
        now: u64,
        budget: &Budget,
    ) -> Result<(), SendError> {
        match self.session_of(id) {
            Some(session) => session.deliver(text, now, budget, &self.inner.config.history),
            None => Err(SendError::NotFound(id)),
        }
    }

    /// The generation of the session of client `id` here, if it has one.
    pub(crate) fn session_generation(&self, id: ConnId) -> Option<u64> {
        self.session_of(id).map(|s| s.generation())
    }

    /// The session of client `id` here: its connection's, or one waiting for a resume.
    pub(super) fn session_of(
        &self,
        id: ConnId,
    ) -> Option<std::sync::Arc<crate::delivery::Session>> {
        match self.inner.registry.get(id) {
            Some(conn) => Some(conn.session().clone()),
            None => self.inner.sessions.get(id),
        }
    }

    pub(super) fn deliver_frame(
        &self,
        target: &Target,
        exclude: &[ConnId],
        frame: &Frame,
    ) -> usize {
        let big: Option<HashSet<ConnId>> =
            (exclude.len() > 8).then(|| exclude.iter().copied().collect());
        let excluded = |id: ConnId| match &big {
            Some(set) => set.contains(&id),
            None => exclude.contains(&id),
        };
        let mut n = 0;
        let mut push = |c: &Conn| {
            if !excluded(c.id()) && c.push(frame.clone()).is_ok() {
                n += 1;
            }
        };
        match target {
            Target::All => self.inner.registry.for_each(&mut push),
            Target::Room(room) => self.inner.registry.for_each_in_room(room, &mut push),
            Target::Conns(ids) => {
                let unique: HashSet<ConnId> = ids.iter().copied().collect();
                for id in unique {
                    if let Some(c) = self.inner.registry.get(id) {
                        push(&c);
                    }
                }
            }
            Target::User(user) => {
                for c in self.inner.registry.user_conns(user) {
                    push(&c);
                }
            }
        }
        n
    }

    /// Delivers locally, then to the other nodes. Encodes nothing more: `text` is the
    /// frame, without an offset (each node stamps its own streams' offsets).
    pub(crate) fn send_delivery(
        &self,
        target: Target,
        exclude: Vec<ConnId>,
        text: String,
    ) -> usize {
        if self.inner.sequenced {
            // Every node, this one included, delivers it in the backplane's order.
            let n = self.local_recipients(&target, &exclude);
            self.inner.backplane.publish(&Delivery {
                target,
                exclude,
                frame: text,
            });
            return n;
        }
        let n = self.deliver_in_streams(&target, &exclude, &text);
        if self.inner.clustered {
            self.inner.backplane.publish(&Delivery {
                target,
                exclude,
                frame: text,
            });
        }
        n
    }
}

pub(super) fn encode_payload<T: Serialize + ?Sized>(payload: &T) -> Result<Payload, SendError> {
    Payload::from_serialize(payload).map_err(|e| SendError::Encode(e.to_string()))
}

/// A delivered message's frame: `room` for a room's, `to: "all"` for a broadcast's
/// (so a client knows the stream), `from` for a relayed one's. No offset yet: each
/// node stamps its own.
pub(super) fn frame_text(
    kind: &str,
    payload: &Payload,
    target: &Target,
    from: Option<&str>,
) -> String {
    traced_frame_text(kind, payload, target, from, None)
}

/// [`frame_text`] carrying the sender's `trace` (a relayed message keeps its trace).
fn traced_frame_text(
    kind: &str,
    payload: &Payload,
    target: &Target,
    from: Option<&str>,
    trace: Option<&str>,
) -> String {
    let (room, to) = match target {
        Target::Room(room) => (Some(room.as_str()), None),
        Target::All => (None, Some(ALL)),
        Target::Conns(_) | Target::User(_) => (None, None),
    };
    encode_parts(&Parts {
        kind,
        payload,
        ref_id: None,
        room,
        to,
        from,
        trace,
        offset: None,
    })
}

/// The `to` of a broadcast to everyone.
const ALL: &str = "all";

impl Server {
    /// Sends to every connection. Returns how many connections on this node it was
    /// queued for.
    ///
    /// ```no_run
    /// # fn demo(server: switchboard_server::Server) {
    /// let count = server.broadcast("notification", &serde_json::json!({"text": "maintenance in 10 minutes"})).unwrap();
    /// println!("sent to {count} clients");
    /// # }
    /// ```
    pub fn broadcast<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        payload: &T,
    ) -> Result<usize, SendError> {
        self.broadcast_with(kind, payload, Filter::all())
    }

    /// Sends to the connections `filter` selects (netconduit's `include` / `exclude`).
    pub fn broadcast_with<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        payload: &T,
        filter: Filter,
    ) -> Result<usize, SendError> {
        let payload = encode_payload(payload)?;
        let target = match filter.include {
            Some(ids) => Target::Conns(ids),
            None => Target::All,
        };
        let text = frame_text(kind, &payload, &target, None);
        Ok(self.send_delivery(target, filter.exclude, text))
    }

    /// Sends to one client by id, on this node or (in a cluster) another.
    pub fn send_to<T: Serialize + ?Sized>(
        &self,
        id: ConnId,
        kind: &str,
        payload: &T,
    ) -> Result<(), SendError> {
        let payload = encode_payload(payload)?;
        let target = Target::Conns(vec![id]);
        let text = frame_text(kind, &payload, &target, None);
        if self.inner.sequenced {
            self.send_delivery(target, Vec::new(), text);
            return Ok(());
        }
        let budget = self.inner.streams.budget();
        match self.deliver_direct(id, &text, now_ms(), budget) {
            Err(SendError::NotFound(_)) => {}
            done => return done,
        }
        if self.inner.clustered {
            self.inner.backplane.publish(&Delivery {
                target,
                exclude: Vec::new(),
                frame: text,
            });
            return Ok(());
        }
        Err(SendError::NotFound(id))
    }

    /// Sends to every connection of `user` (an authenticated identity's id), on every
    /// node. Returns how many on this node it was queued for. A user's messages belong
    /// to no stream: they are not kept for a client that is away (at most once);
    /// address a client ([`send_to`](Self::send_to)) for exactly once.
    ///
    /// ```no_run
    /// # fn demo(server: switchboard_server::Server) {
    /// server.send_to_user("alice", "notification", &serde_json::json!({"text": "hi"})).ok();
    /// # }
    /// ```
    pub fn send_to_user<T: Serialize + ?Sized>(
        &self,
        user: &str,
        kind: &str,
        payload: &T,
    ) -> Result<usize, SendError> {
        let payload = encode_payload(payload)?;
        let target = Target::User(user.to_owned());
        let text = frame_text(kind, &payload, &target, None);
        Ok(self.send_delivery(target, Vec::new(), text))
    }

    /// Sends to every member of `room`. Returns how many on this node it was queued for.
    pub fn send_to_room<T: Serialize + ?Sized>(
        &self,
        room: &str,
        kind: &str,
        payload: &T,
    ) -> Result<usize, SendError> {
        self.send_to_room_except(room, kind, payload, &[])
    }

    /// Sends to the members of `room` except `except` (usually the sender).
    pub fn send_to_room_except<T: Serialize + ?Sized>(
        &self,
        room: &str,
        kind: &str,
        payload: &T,
        except: &[ConnId],
    ) -> Result<usize, SendError> {
        validate_room(room)?;
        let payload = encode_payload(payload)?;
        let target = Target::Room(room.to_owned());
        let text = frame_text(kind, &payload, &target, None);
        Ok(self.send_delivery(target, except.to_vec(), text))
    }

    /// Relays a client's message: encoded once, stamped with the sender's id in `from`,
    /// its `trace` kept.
    pub(crate) fn relay(
        &self,
        target: Target,
        exclude: Vec<ConnId>,
        env: &Envelope,
        from: ConnId,
    ) -> usize {
        let from = from.to_string();
        let text = traced_frame_text(
            &env.kind,
            &env.payload,
            &target,
            Some(&from),
            env.trace.as_deref(),
        );
        self.send_delivery(target, exclude, text)
    }

    /// Whether a client with this id could receive a direct message: connected here,
    /// its session waiting here for a resume, or possibly on another node of a cluster.
    pub(crate) fn may_reach(&self, id: ConnId) -> bool {
        self.inner.clustered
            || self.inner.registry.get(id).is_some()
            || self.inner.sessions.get(id).is_some()
    }
}
