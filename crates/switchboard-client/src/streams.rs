//! Where the client is in each of its streams (its session's, the broadcasts', each
//! room's), and the session to resume: what drops duplicates and builds `resume`.

use std::collections::BTreeMap;

use switchboard_proto::{Envelope, Position, ResumeOutcome, ResumeRequest, StreamPositions};

/// A position whose epoch may not be known yet (a room's messages can arrive before
/// the answer to the join that gives the epoch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Seen {
    epoch: Option<String>,
    offset: u64,
}

impl Seen {
    fn from_position(p: &Position) -> Seen {
        Seen {
            epoch: Some(p.epoch.clone()),
            offset: p.offset,
        }
    }

    fn to_position(&self) -> Position {
        Position::new(self.epoch.clone().unwrap_or_default(), self.offset)
    }

    /// True when `offset` is new; moves on to it.
    fn advance(&mut self, offset: u64) -> bool {
        if offset <= self.offset {
            return false;
        }
        self.offset = offset;
        true
    }

    /// The server says where the stream is (a join's answer): its epoch, and at
    /// least that offset.
    fn settle(&mut self, p: &Position) {
        match &self.epoch {
            Some(e) if *e == p.epoch => self.offset = self.offset.max(p.offset),
            Some(_) => *self = Seen::from_position(p),
            None => {
                self.epoch = Some(p.epoch.clone());
                self.offset = self.offset.max(p.offset);
            }
        }
    }
}

/// The session to resume and the client's positions.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    session_id: Option<String>,
    token: Option<String>,
    session: Option<Seen>,
    all: Option<Seen>,
    rooms: BTreeMap<String, Seen>,
    /// The resumes of this session attempted so far.
    resume_attempts: u64,
}

/// The part of `connected` that concerns streams.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct ConnectedStreams {
    session_id: Option<String>,
    resume_token: Option<String>,
    #[serde(default)]
    streams: StreamPositions,
    resumed: Option<ResumeOutcome>,
}

impl Streams {
    /// A `connected` arrived: a fresh session (positions start where the server says),
    /// or a resumed one (recovered streams keep the client's position, since the
    /// missed messages follow; the others jump to the server's).
    pub(crate) fn connected(&mut self, c: &ConnectedStreams) {
        self.session_id = c.session_id.clone();
        self.token = c.resume_token.clone();
        let Some(outcome) = c.resumed.as_ref().filter(|o| o.resumed) else {
            self.resume_attempts = 0;
            self.session = c.streams.session.as_ref().map(Seen::from_position);
            self.all = c.streams.all.as_ref().map(Seen::from_position);
            self.rooms.clear();
            return;
        };
        let jump = |mine: &mut Option<Seen>, r: Option<&switchboard_proto::Recovery>| {
            if let Some(r) = r {
                if !r.recovered || mine.is_none() {
                    *mine = Some(Seen::from_position(&r.position));
                }
            }
        };
        jump(&mut self.session, outcome.session.as_ref());
        jump(&mut self.all, outcome.all.as_ref());
        self.rooms
            .retain(|room, _| outcome.rooms.contains_key(room));
        for (room, r) in &outcome.rooms {
            let mine = self.rooms.entry(room.clone()).or_default();
            if !r.recovered || mine.epoch.is_none() {
                *mine = Seen::from_position(&r.position);
            }
        }
    }

    /// Whether `env` is new (false: a duplicate, to drop); moves its stream on.
    pub(crate) fn accept(&mut self, env: &Envelope) -> bool {
        let Some(offset) = env.offset else {
            return true;
        };
        let seen = if let Some(room) = env.room.as_deref() {
            self.rooms.entry(room.to_owned()).or_default()
        } else if env.to.as_deref() == Some("all") {
            self.all.get_or_insert_with(Seen::default)
        } else {
            self.session.get_or_insert_with(Seen::default)
        };
        seen.advance(offset)
    }

    /// The answer to a join said where the room's stream is.
    pub(crate) fn joined(&mut self, room: &str, position: &Position) {
        self.rooms
            .entry(room.to_owned())
            .or_default()
            .settle(position);
    }

    /// Forgets a room (left, or about to be joined afresh).
    pub(crate) fn forget_room(&mut self, room: &str) {
        self.rooms.remove(room);
    }

    /// The `resume` for the next attempt, when there is a session to resume (each
    /// attempt counted, see [`ResumeRequest::attempt`]).
    pub(crate) fn resume_request(&mut self, resend: Vec<String>) -> Option<ResumeRequest> {
        let (Some(session_id), Some(token)) = (&self.session_id, &self.token) else {
            return None;
        };
        self.resume_attempts += 1;
        Some(ResumeRequest {
            session_id: session_id.clone(),
            token: token.clone(),
            streams: StreamPositions {
                session: self.session.as_ref().map(Seen::to_position),
                all: self.all.as_ref().map(Seen::to_position),
                rooms: self
                    .rooms
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_position()))
                    .collect(),
            },
            resend,
            attempt: self.resume_attempts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Envelope {
        Envelope::decode(text).unwrap()
    }

    fn connected(json: serde_json::Value) -> ConnectedStreams {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn duplicates_are_dropped_per_stream() {
        let mut s = Streams::default();
        s.connected(&connected(serde_json::json!({
            "session_id": "s", "resume_token": "t",
            "streams": {"session": {"epoch": "e1", "offset": 0}, "all": {"epoch": "e2", "offset": 5}}
        })));
        assert!(s.accept(&frame(r#"{"type":"dm","offset":1}"#)));
        assert!(!s.accept(&frame(r#"{"type":"dm","offset":1}"#)), "seen");
        assert!(
            !s.accept(&frame(r#"{"type":"news","to":"all","offset":5}"#)),
            "before the start"
        );
        assert!(s.accept(&frame(r#"{"type":"news","to":"all","offset":6}"#)));
        assert!(s.accept(&frame(r#"{"type":"chat","room":"a","offset":9}"#)));
        assert!(
            s.accept(&frame(r#"{"type":"chat","room":"b","offset":9}"#)),
            "another stream"
        );
        assert!(
            s.accept(&frame(r#"{"type":"pong"}"#)),
            "no offset: no stream"
        );
        // The join's answer comes after a first message: the epoch is learnt, the offset kept.
        s.joined("a", &Position::new("ea", 8));
        let r = s.resume_request(vec!["r1".into()]).unwrap();
        assert_eq!(r.streams.rooms["a"], Position::new("ea", 9));
        assert_eq!(r.streams.session, Some(Position::new("e1", 1)));
        assert_eq!(r.streams.all, Some(Position::new("e2", 6)));
        assert_eq!(r.resend, ["r1"]);
        assert_eq!(r.attempt, 1, "each attempt to resume is counted");
        let again = s.resume_request(Vec::new()).unwrap();
        assert_eq!(again.attempt, 2);
    }

    #[test]
    fn a_resume_keeps_recovered_positions_and_jumps_the_others() {
        let mut s = Streams::default();
        s.connected(&connected(serde_json::json!({
            "session_id": "s", "resume_token": "t",
            "streams": {"session": {"epoch": "e1", "offset": 0}, "all": {"epoch": "e2", "offset": 0}}
        })));
        s.joined("a", &Position::new("ea", 3));
        s.joined("b", &Position::new("eb", 3));
        s.connected(&connected(serde_json::json!({
            "session_id": "s", "resume_token": "t2",
            "resumed": {"resumed": true,
                "session": {"recovered": true, "missed": 2, "position": {"epoch": "e1", "offset": 2}},
                "all": {"recovered": false, "reason": "history_gap", "position": {"epoch": "e2", "offset": 50}},
                "rooms": {"a": {"recovered": true, "missed": 1, "position": {"epoch": "ea", "offset": 4}}}}
        })));
        // The replay follows: the session's messages 1 and 2 are new.
        assert!(s.accept(&frame(r#"{"type":"dm","offset":1}"#)));
        assert!(s.accept(&frame(r#"{"type":"chat","room":"a","offset":4}"#)));
        assert!(
            !s.accept(&frame(r#"{"type":"news","to":"all","offset":50}"#)),
            "jumped"
        );
        let r = s.resume_request(vec![]).unwrap();
        assert_eq!(r.token, "t2");
        assert!(
            !r.streams.rooms.contains_key("b"),
            "not restored: forgotten"
        );
        // A fresh session starts over.
        s.connected(&connected(serde_json::json!({
            "session_id": "s2", "resume_token": "t3",
            "resumed": {"resumed": false, "reason": "session_expired"},
            "streams": {"session": {"epoch": "f1", "offset": 0}}
        })));
        let r = s.resume_request(vec![]).unwrap();
        assert_eq!(r.session_id, "s2");
        assert_eq!(r.attempt, 1, "a fresh session counts from 1");
        assert!(r.streams.rooms.is_empty() && r.streams.all.is_none());
    }
}
