//! Permissions: one [`Policy`] decides whether an identity may join a room, publish to
//! it, message a client directly, or call an RPC method. A refusal reaches the client
//! as a typed error, `FORBIDDEN`, naming what was refused; the connection stays.
//!
//! Three policies come with the crate: [`OpenPolicy`] (everything allowed; the
//! default), [`ClaimsPolicy`] (what a JWT's claims grant) and [`RulesPolicy`] (public
//! and private room patterns, whether clients may publish and message each other; the
//! hub's, from its settings).

use crate::auth::Identity;

/// What a connection asks to do, for a [`Policy`] to allow or refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action<'a> {
    /// Join a room.
    Join(&'a str),
    /// Send a message to a room's members.
    Publish(&'a str),
    /// Send a message to one client (by id) or to everyone (`"all"`).
    Direct(&'a str),
    /// Call an RPC method.
    Call(&'a str),
}

impl Action<'_> {
    /// What a refusal says it refused.
    pub fn describe(&self) -> String {
        match self {
            Action::Join(room) => format!("joining room {room:?} is not allowed"),
            Action::Publish(room) => format!("publishing to room {room:?} is not allowed"),
            Action::Direct(to) if *to == "all" => "messaging everyone is not allowed".into(),
            Action::Direct(_) => "messaging other clients directly is not allowed".into(),
            Action::Call(method) => format!("calling {method:?} is not allowed"),
        }
    }
}

/// Decides what an identity (`None`: not authenticated) may do. Checked on every join,
/// relayed message and RPC call of a client; the server's own sends are not checked.
///
/// ```
/// use switchboard_server::{Action, Identity, Policy, Server};
///
/// struct AdminsOnlyInAdmin;
/// impl Policy for AdminsOnlyInAdmin {
///     fn allows(&self, who: Option<&Identity>, action: Action<'_>) -> bool {
///         match action {
///             Action::Join(room) if room.starts_with("admin:") => {
///                 who.is_some_and(|w| w.claims["role"] == "admin")
///             }
///             _ => true,
///         }
///     }
/// }
/// let server = Server::builder().policy(AdminsOnlyInAdmin).build();
/// ```
pub trait Policy: Send + Sync + 'static {
    /// Whether `who` may do `action`.
    fn allows(&self, who: Option<&Identity>, action: Action<'_>) -> bool;
}

/// Everything is allowed (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenPolicy;

impl Policy for OpenPolicy {
    fn allows(&self, _who: Option<&Identity>, _action: Action<'_>) -> bool {
        true
    }
}

/// What a token's claims grant ([`JwtAuthenticator`](crate::JwtAuthenticator)):
/// `rooms` lists the rooms (names, or patterns ending in `*`) it may join, `publish`
/// those it may publish to. Direct messages and RPC calls are allowed to any
/// authenticated identity. No identity, no rooms.
///
/// ```
/// use serde_json::json;
/// use switchboard_server::{Action, ClaimsPolicy, Identity, Policy};
/// let alice = Identity::new("alice").with_claims(json!({"rooms": ["chat:*", "news"], "publish": ["chat:*"]}));
/// let p = ClaimsPolicy;
/// assert!(p.allows(Some(&alice), Action::Join("chat:lobby")));
/// assert!(p.allows(Some(&alice), Action::Join("news")));
/// assert!(!p.allows(Some(&alice), Action::Publish("news")));
/// assert!(!p.allows(Some(&alice), Action::Join("admin")));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ClaimsPolicy;

impl Policy for ClaimsPolicy {
    fn allows(&self, who: Option<&Identity>, action: Action<'_>) -> bool {
        let Some(who) = who else {
            return false;
        };
        match action {
            Action::Join(room) => claim_matches(who, "rooms", room),
            Action::Publish(room) => claim_matches(who, "publish", room),
            Action::Direct(_) | Action::Call(_) => true,
        }
    }
}

/// Whether the claim `name` (a list of room names or patterns) names `room`.
fn claim_matches(who: &Identity, name: &str, room: &str) -> bool {
    who.claims
        .get(name)
        .and_then(serde_json::Value::as_array)
        .is_some_and(|patterns| {
            patterns
                .iter()
                .filter_map(serde_json::Value::as_str)
                .any(|p| pattern_matches(p, room))
        })
}

/// `chat:*` matches every name that starts with `chat:`; other patterns match exactly.
pub(crate) fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Rules from configuration (the hub's): rooms matching `public` anyone may join;
/// rooms matching `private` need the token's claim ([`ClaimsPolicy`]); rooms matching
/// neither are refused when `private` is `["*"]`, else public. Whether clients may
/// publish at all (or only the backend, through the server's API), and whether they
/// may message each other directly.
///
/// ```
/// use switchboard_server::{Action, Policy, RulesPolicy};
/// let rules = RulesPolicy {
///     public: vec!["lobby".into()],
///     private: vec!["team:*".into()],
///     clients_publish: true,
///     clients_message_directly: false,
/// };
/// assert!(rules.allows(None, Action::Join("lobby")));
/// assert!(!rules.allows(None, Action::Join("team:red")));
/// assert!(!rules.allows(None, Action::Direct("0000000000000001")));
/// ```
#[derive(Debug, Clone, Default)]
pub struct RulesPolicy {
    /// Room patterns anyone may join and publish to.
    pub public: Vec<String>,
    /// Room patterns that need the token's `rooms` (join) or `publish` claim.
    pub private: Vec<String>,
    /// Whether clients may publish to rooms (else only the server and its API do).
    pub clients_publish: bool,
    /// Whether clients may message other clients (and everyone) directly.
    pub clients_message_directly: bool,
}

impl RulesPolicy {
    fn is_private(&self, room: &str) -> bool {
        let public = self.public.iter().any(|p| pattern_matches(p, room));
        !public && self.private.iter().any(|p| pattern_matches(p, room))
    }
}

impl Policy for RulesPolicy {
    fn allows(&self, who: Option<&Identity>, action: Action<'_>) -> bool {
        match action {
            Action::Join(room) => !self.is_private(room) || ClaimsPolicy.allows(who, action),
            Action::Publish(room) => {
                self.clients_publish && (!self.is_private(room) || ClaimsPolicy.allows(who, action))
            }
            Action::Direct(_) => self.clients_message_directly,
            Action::Call(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn patterns_match_prefixes_or_exact_names() {
        assert!(pattern_matches("chat:*", "chat:"));
        assert!(pattern_matches("chat:*", "chat:a:b"));
        assert!(!pattern_matches("chat:*", "chatroom"));
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("news", "news"));
        assert!(!pattern_matches("news", "news2"));
    }

    #[test]
    fn rules_keep_private_rooms_to_their_claims_and_public_ones_open() {
        let rules = RulesPolicy {
            public: vec!["lobby".into(), "public:*".into()],
            private: vec!["*".into()],
            clients_publish: true,
            clients_message_directly: true,
        };
        let bob = Identity::new("bob").with_claims(json!({"rooms": ["team:*"], "publish": []}));
        assert!(rules.allows(None, Action::Join("public:x")));
        assert!(rules.allows(None, Action::Publish("lobby")));
        assert!(
            !rules.allows(None, Action::Join("team:red")),
            "no identity, no claim"
        );
        assert!(rules.allows(Some(&bob), Action::Join("team:red")));
        assert!(
            !rules.allows(Some(&bob), Action::Publish("team:red")),
            "join only"
        );
        assert!(!rules.allows(Some(&bob), Action::Join("other")));
        let backend_only = RulesPolicy {
            clients_publish: false,
            ..rules
        };
        assert!(!backend_only.allows(Some(&bob), Action::Publish("lobby")));
    }
}
