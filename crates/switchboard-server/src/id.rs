//! Connection ids.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A connection's id: unique within a server, and across the nodes of a cluster (the
/// high 32 bits are random per server instance, the low 32 count connections).
///
/// On the wire it is 16 lowercase hex digits, e.g. `"9f1c02aa00000001"`.
///
/// ```
/// use switchboard_server::ConnId;
/// let id: ConnId = "9f1c02aa00000001".parse().unwrap();
/// assert_eq!(id.to_string(), "9f1c02aa00000001");
/// assert!("all".parse::<ConnId>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// The id's numeric value.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// An id from its numeric value.
    pub fn from_u64(v: u64) -> ConnId {
        ConnId(v)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The text was not a connection id (16 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a client id: {0:?}")]
pub struct ParseConnIdError(String);

impl FromStr for ConnId {
    type Err = ParseConnIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseConnIdError(s.chars().take(40).collect()));
        }
        u64::from_str_radix(s, 16)
            .map(ConnId)
            .map_err(|_| ParseConnIdError(s.to_owned()))
    }
}

impl Serialize for ConnId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ConnId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Hands out ids for one server instance.
#[derive(Debug)]
pub(crate) struct IdGen {
    prefix: u64,
    next: AtomicU64,
}

impl IdGen {
    pub(crate) fn new() -> IdGen {
        IdGen {
            prefix: random_u64() & 0xffff_ffff_0000_0000,
            next: AtomicU64::new(1),
        }
    }

    pub(crate) fn next(&self) -> ConnId {
        let n = self.next.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff;
        ConnId(self.prefix | n)
    }
}

pub(crate) use switchboard_proto::random_u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_round_trip() {
        let g = IdGen::new();
        let a = g.next();
        let b = g.next();
        assert_ne!(a, b);
        assert_eq!(a.to_string().parse::<ConnId>().unwrap(), a);
        assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{a}\""));
        assert_eq!(
            serde_json::from_str::<ConnId>(&format!("\"{b}\"")).unwrap(),
            b
        );
        assert!("zzzzzzzzzzzzzzzz".parse::<ConnId>().is_err());
        assert!("0123".parse::<ConnId>().is_err());
    }

    #[test]
    fn two_servers_get_different_prefixes() {
        let a = IdGen::new().next();
        let b = IdGen::new().next();
        assert_ne!(a, b);
    }
}
