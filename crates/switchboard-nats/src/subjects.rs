//! Subject names: what is stored in JetStream (`{prefix}.s.…`), where JetStream
//! republishes what it stored (`{prefix}.d.…`, what nodes subscribe to), and the
//! plain NATS subjects for what is not kept (users, notices, heartbeats, questions).
//! Room and user names become one subject token: as they are when they are plain
//! (letters, digits, `-`, `_`, at most 64), else `~` and their bytes in hex.

use switchboard_server::{ConnId, Target};

/// The subjects of one cluster (one prefix).
#[derive(Debug, Clone)]
pub(crate) struct Subjects {
    prefix: String,
}

/// A stream's subject as a node receives it, turned back into what it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Received {
    /// A numbered stream (a room, the broadcasts, a client's direct messages).
    Stream(Target),
    /// A user's connections (not kept).
    User(String),
}

impl Subjects {
    pub(crate) fn new(prefix: &str) -> Subjects {
        Subjects {
            prefix: prefix.to_owned(),
        }
    }

    /// Every subject the stream keeps.
    pub(crate) fn stored_all(&self) -> String {
        format!("{}.s.>", self.prefix)
    }

    /// Where JetStream republishes what it keeps.
    pub(crate) fn delivered_all(&self) -> String {
        format!("{}.d.>", self.prefix)
    }

    /// The stored subject of a stream; `None` for a target that is not one stream.
    pub(crate) fn stored(&self, target: &Target) -> Option<String> {
        self.stream_tail(target)
            .map(|t| format!("{}.s.{t}", self.prefix))
    }

    /// The subject a node subscribes to for a stream's messages.
    pub(crate) fn delivered(&self, target: &Target) -> Option<String> {
        self.stream_tail(target)
            .map(|t| format!("{}.d.{t}", self.prefix))
    }

    fn stream_tail(&self, target: &Target) -> Option<String> {
        match target {
            Target::Room(room) => Some(format!("room.{}", token(room))),
            Target::All => Some("all".to_owned()),
            Target::Conns(ids) if ids.len() == 1 => Some(format!("client.{}", ids[0])),
            _ => None,
        }
    }

    /// A user's subject (plain NATS: user-addressed messages are not kept).
    pub(crate) fn user(&self, user: &str) -> String {
        format!("{}.user.{}", self.prefix, token(user))
    }

    /// Notices every node hears (a session moved, a cluster-wide disconnect).
    pub(crate) fn notices(&self) -> String {
        format!("{}.ctl", self.prefix)
    }

    pub(crate) fn heartbeats(&self) -> String {
        format!("{}.hb", self.prefix)
    }

    /// A question to every node (`count`, `members`, `idents`).
    pub(crate) fn question(&self, kind: &str) -> String {
        format!("{}.q.{kind}", self.prefix)
    }

    pub(crate) fn questions(&self) -> String {
        format!("{}.q.*", self.prefix)
    }

    /// What a received subject is for: a delivered stream's or a user's.
    pub(crate) fn parse(&self, subject: &str) -> Option<Received> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        if let Some(tail) = rest.strip_prefix("d.") {
            return parse_stream_tail(tail).map(Received::Stream);
        }
        if let Some(user) = rest.strip_prefix("user.") {
            return untoken(user).map(Received::User);
        }
        None
    }

    /// The stored subject of a delivered one (`….d.x` → `….s.x`).
    pub(crate) fn stored_of_delivered(&self, subject: &str) -> Option<String> {
        let tail = subject.strip_prefix(&self.prefix)?.strip_prefix(".d.")?;
        Some(format!("{}.s.{tail}", self.prefix))
    }
}

fn parse_stream_tail(tail: &str) -> Option<Target> {
    if tail == "all" {
        return Some(Target::All);
    }
    if let Some(room) = tail.strip_prefix("room.") {
        return untoken(room).map(Target::Room);
    }
    if let Some(id) = tail.strip_prefix("client.") {
        return id.parse::<ConnId>().ok().map(|id| Target::Conns(vec![id]));
    }
    None
}

/// A name as one subject token.
pub(crate) fn token(name: &str) -> String {
    let plain = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        return name.to_owned();
    }
    let mut out = String::with_capacity(1 + name.len() * 2);
    out.push('~');
    for b in name.bytes() {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
    }
    out
}

fn untoken(token: &str) -> Option<String> {
    let Some(hex) = token.strip_prefix('~') else {
        return (!token.is_empty()).then(|| token.to_owned());
    };
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_one_token_and_come_back() {
        let s = Subjects::new("sb");
        for room in [
            "general",
            "a.b",
            "x y",
            "*",
            ">",
            "émoji 🎉",
            "-_-",
            &"r".repeat(65),
        ] {
            let target = Target::Room(room.to_owned());
            let delivered = s.delivered(&target).unwrap();
            assert_eq!(delivered.split('.').count(), 4, "{delivered}");
            assert!(!delivered.contains(' ') && !delivered[5..].contains(['*', '>']));
            assert_eq!(s.parse(&delivered), Some(Received::Stream(target.clone())));
            assert_eq!(
                s.stored_of_delivered(&delivered),
                s.stored(&target),
                "{room}"
            );
        }
        assert_eq!(
            s.stored(&Target::Room("general".into())).unwrap(),
            "sb.s.room.general"
        );
        let client = Target::Conns(vec![ConnId::from_u64(7)]);
        assert_eq!(
            s.delivered(&client).unwrap(),
            "sb.d.client.0000000000000007"
        );
        assert_eq!(
            s.parse("sb.d.client.0000000000000007"),
            Some(Received::Stream(client))
        );
        assert_eq!(
            s.parse(&s.user("ann.b")),
            Some(Received::User("ann.b".into()))
        );
        assert_eq!(s.stored(&Target::Conns(vec![])), None);
        assert_eq!(s.parse("other.d.all"), None);
        assert_eq!(s.parse("sb.d.room.~zz"), None);
    }
}
