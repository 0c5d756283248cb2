//! Delivery: broadcast to all or a filtered set, to a room, to one client, and the
//! relay's fan-out. A message is encoded once; every recipient's queue gets the same
//! bytes, and in a cluster the backplane carries the same frame to the other nodes.

use std::collections::HashSet;

use serde::Serialize;
use switchboard_proto::{Parts, Payload, encode_parts};

use super::{Server, validate_room};
use crate::backplane::{Delivery, Target};
use crate::connection::Conn;
use crate::ws::Frame;
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
    /// Delivers an encoded frame to this node's connections.
    pub(crate) fn deliver_local(&self, delivery: &Delivery) -> usize {
        let frame = Frame::text(delivery.frame.clone());
        self.deliver_frame(&delivery.target, &delivery.exclude, &frame)
    }

    fn deliver_frame(&self, target: &Target, exclude: &[ConnId], frame: &Frame) -> usize {
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
            // A direct message (one id, the common case) needs no de-duplication.
            Target::Conns(ids) if ids.len() == 1 => {
                if let Some(c) = self.inner.registry.get(ids[0]) {
                    push(&c);
                }
            }
            Target::Conns(ids) => {
                let unique: HashSet<ConnId> = ids.iter().copied().collect();
                for id in unique {
                    if let Some(c) = self.inner.registry.get(id) {
                        push(&c);
                    }
                }
            }
        }
        n
    }

    /// Delivers locally, then to the other nodes. Encodes nothing more: `text` is the frame.
    pub(crate) fn send_delivery(
        &self,
        target: Target,
        exclude: Vec<ConnId>,
        text: String,
    ) -> usize {
        let frame = Frame::text(text);
        let n = self.deliver_frame(&target, &exclude, &frame);
        if self.inner.clustered {
            let Frame::Text(t) = &frame else { return n };
            self.inner.backplane.publish(&Delivery {
                target,
                exclude,
                frame: t.as_str().to_owned(),
            });
        }
        n
    }
}

pub(super) fn encode_payload<T: Serialize + ?Sized>(payload: &T) -> Result<Payload, SendError> {
    Payload::from_serialize(payload).map_err(|e| SendError::Encode(e.to_string()))
}

pub(super) fn frame_text(
    kind: &str,
    payload: &Payload,
    room: Option<&str>,
    from: Option<&str>,
) -> String {
    encode_parts(&Parts {
        kind,
        payload: payload.as_raw(),
        ref_id: None,
        room,
        to: None,
        from,
    })
}

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
        Ok(self.send_delivery(
            target,
            filter.exclude,
            frame_text(kind, &payload, None, None),
        ))
    }

    /// Sends to one client by id, on this node or (in a cluster) another.
    pub fn send_to<T: Serialize + ?Sized>(
        &self,
        id: ConnId,
        kind: &str,
        payload: &T,
    ) -> Result<(), SendError> {
        let payload = encode_payload(payload)?;
        if let Some(conn) = self.inner.registry.get(id) {
            return conn.push(Frame::text(frame_text(kind, &payload, None, None)));
        }
        if self.inner.clustered {
            self.send_delivery(
                Target::Conns(vec![id]),
                Vec::new(),
                frame_text(kind, &payload, None, None),
            );
            return Ok(());
        }
        Err(SendError::NotFound(id))
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
        Ok(self.send_delivery(
            Target::Room(room.to_owned()),
            except.to_vec(),
            frame_text(kind, &payload, Some(room), None),
        ))
    }

    /// Relays a client's message: encoded once, stamped with the sender's id in `from`.
    pub(crate) fn relay(
        &self,
        target: Target,
        exclude: Vec<ConnId>,
        kind: &str,
        payload: &Payload,
        room: Option<&str>,
        from: ConnId,
    ) -> usize {
        let from = from.to_string();
        self.send_delivery(
            target,
            exclude,
            frame_text(kind, payload, room, Some(&from)),
        )
    }

    /// Whether a client with this id could receive a direct message: connected here, or
    /// possibly on another node of a cluster.
    pub(crate) fn may_reach(&self, id: ConnId) -> bool {
        self.inner.clustered || self.inner.registry.get(id).is_some()
    }
}
