//! Authentication: the password check, pluggable authenticators, and the per-address
//! throttle on failed attempts.
//!
//! A client authenticates with an `auth` message:
//! `{"type": "auth", "payload": {"password": "...", ...}}`. When the server requires
//! authentication (a password or an authenticator is configured), that must be the
//! client's first message, within [`auth_timeout`](crate::ServerConfig::auth_timeout);
//! nothing else is processed before it.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use switchboard_proto::{Payload, PayloadError};

use crate::handler::BoxFuture;
use crate::locks::lock;

/// Who a connection authenticated as; visible to handlers through
/// [`Conn::identity`](crate::Conn::identity) and the [`Identity`] extractor.
///
/// ```
/// use switchboard_server::Identity;
/// let who = Identity::new("alice").with_claims(serde_json::json!({"role": "admin"}));
/// assert_eq!(who.id, "alice");
/// assert_eq!(who.claims["role"], "admin");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// The user or service id the credentials proved.
    pub id: String,
    /// Anything else the authenticator wants handlers to see (roles, tenant, ...).
    /// `null` when there is nothing.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub claims: serde_json::Value,
}

impl Identity {
    /// An identity with no claims.
    pub fn new(id: impl Into<String>) -> Identity {
        Identity {
            id: id.into(),
            claims: serde_json::Value::Null,
        }
    }

    /// Adds claims.
    pub fn with_claims(mut self, claims: serde_json::Value) -> Identity {
        self.claims = claims;
        self
    }
}

/// What a client sent to authenticate: the payload of its `auth` message and where it
/// came from.
///
/// ```
/// # use switchboard_server::Credentials;
/// # fn demo(creds: &Credentials) {
/// let token: Option<&str> = creds.token();
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Credentials {
    payload: Payload,
    remote_addr: Option<SocketAddr>,
    password: Option<String>,
    token: Option<String>,
    username: Option<String>,
}

#[derive(Deserialize)]
struct Common {
    password: Option<String>,
    token: Option<String>,
    username: Option<String>,
}

impl Credentials {
    pub(crate) fn new(payload: Payload, remote_addr: Option<SocketAddr>) -> Credentials {
        let common: Option<Common> = payload.deserialize().ok();
        let (password, token, username) = match common {
            Some(c) => (c.password, c.token, c.username),
            None => (None, None, None),
        };
        Credentials {
            payload,
            remote_addr,
            password,
            token,
            username,
        }
    }

    /// Credentials that are only a token (`?token=` on the WebSocket URL).
    pub(crate) fn from_token(token: String, remote_addr: Option<SocketAddr>) -> Credentials {
        let payload = Payload::from_serialize(&serde_json::json!({ "token": token }))
            .unwrap_or_else(|_| Payload::empty());
        Credentials {
            payload,
            remote_addr,
            password: None,
            token: Some(token),
            username: None,
        }
    }

    /// `payload.password`, if it is a string.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// `payload.token`, if it is a string.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `payload.username`, if it is a string.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// The whole payload, deserialized into your own type.
    pub fn get<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        self.payload.deserialize()
    }

    /// The raw payload.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// The client's address, when the server knows it.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote_addr
    }
}

/// An authenticator said no. The message reaches the client with `AUTH_FAILED`; keep it
/// vague ("invalid credentials"), it is read by whoever is guessing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRejected {
    /// Why, as the client will read it.
    pub message: String,
}

impl AuthRejected {
    /// A rejection with this message.
    pub fn new(message: impl Into<String>) -> AuthRejected {
        AuthRejected {
            message: message.into(),
        }
    }
}

impl fmt::Display for AuthRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AuthRejected {}

/// Turns credentials into an identity, or rejects them. Any
/// `Fn(Credentials) -> impl Future<Output = Result<Identity, AuthRejected>>` is one.
///
/// ```
/// use switchboard_server::{AuthRejected, Credentials, Identity, Server};
///
/// let server = Server::builder()
///     .authenticator(|creds: Credentials| async move {
///         match creds.token() {
///             Some("secret-token-of-alice") => Ok(Identity::new("alice")),
///             _ => Err(AuthRejected::new("invalid token")),
///         }
///     })
///     .build();
/// ```
pub trait Authenticator: Send + Sync + 'static {
    /// Checks the credentials.
    fn authenticate(
        &self,
        credentials: Credentials,
    ) -> BoxFuture<'static, Result<Identity, AuthRejected>>;
}

impl<F, Fut> Authenticator for F
where
    F: Fn(Credentials) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Identity, AuthRejected>> + Send + 'static,
{
    fn authenticate(
        &self,
        credentials: Credentials,
    ) -> BoxFuture<'static, Result<Identity, AuthRejected>> {
        Box::pin(self(credentials))
    }
}

/// Compares a supplied password with the configured one in time that depends only on
/// the supplied length, so timing tells an attacker nothing about the password.
pub(crate) fn password_matches(supplied: &str, expected: &str) -> bool {
    let s = supplied.as_bytes();
    let e = expected.as_bytes();
    if e.is_empty() {
        return s.is_empty();
    }
    let mut same = s.len().ct_eq(&e.len());
    for (i, byte) in s.iter().enumerate() {
        same &= byte.ct_eq(&e[i % e.len()]);
    }
    same.into()
}

/// The result of one authentication attempt.
pub(crate) enum Outcome {
    Accepted(Identity),
    Rejected(String),
    /// Too many failures from this address lately: not even checked.
    Throttled(Duration),
}

/// What a throttled address is told.
pub(crate) fn throttled_message(wait: Duration) -> String {
    format!(
        "too many failed attempts from this address; retry in {} s",
        wait.as_secs().max(1)
    )
}

/// Everything the server needs to authenticate: the password, the authenticator, and
/// the record of recent failures per address.
pub(crate) struct Auth {
    password: Option<String>,
    authenticator: Option<Arc<dyn Authenticator>>,
    throttle: Throttle,
}

impl Auth {
    pub(crate) fn new(
        password: Option<String>,
        authenticator: Option<Arc<dyn Authenticator>>,
        max_failures: u32,
        window: Duration,
    ) -> Auth {
        Auth {
            password,
            authenticator,
            throttle: Throttle::new(max_failures, window),
        }
    }

    /// The failures per address (for checks made outside [`check`](Auth::check), like
    /// netconduit's password hash).
    pub(crate) fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    /// True when there is something to check credentials against.
    pub(crate) fn is_configured(&self) -> bool {
        self.password.is_some() || self.authenticator.is_some()
    }

    pub(crate) async fn check(&self, credentials: Credentials, fallback_id: String) -> Outcome {
        let ip = credentials.remote_addr.map(|a| a.ip());
        if let Some(wait) = ip.and_then(|ip| self.throttle.blocked(ip, Instant::now())) {
            return Outcome::Throttled(wait);
        }
        let outcome = self.verify(credentials, fallback_id).await;
        if let (Outcome::Rejected(_), Some(ip)) = (&outcome, ip) {
            self.throttle.failed(ip, Instant::now());
        }
        outcome
    }

    async fn verify(&self, credentials: Credentials, fallback_id: String) -> Outcome {
        if let Some(expected) = &self.password {
            let ok = credentials
                .password()
                .is_some_and(|p| password_matches(p, expected));
            if !ok {
                return Outcome::Rejected("invalid credentials".into());
            }
        }
        match &self.authenticator {
            Some(a) => match a.authenticate(credentials).await {
                Ok(identity) => Outcome::Accepted(identity),
                Err(rejected) => Outcome::Rejected(rejected.message),
            },
            None => Outcome::Accepted(Identity::new(
                credentials
                    .username()
                    .map(str::to_owned)
                    .unwrap_or(fallback_id),
            )),
        }
    }
}

/// Counts failed attempts per IP address in a sliding window; an address over the limit
/// is refused until its window ends. Bounded: old entries are swept, and when the table
/// is full the oldest window is forgotten first.
pub(crate) struct Throttle {
    max_failures: u32,
    window: Duration,
    table: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

const THROTTLE_TABLE_MAX: usize = 65_536;

impl Throttle {
    pub(crate) fn new(max_failures: u32, window: Duration) -> Throttle {
        Throttle {
            max_failures,
            window,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// How long until this address may try again, if it is blocked now.
    pub(crate) fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.max_failures == 0 {
            return None;
        }
        let table = lock(&self.table);
        let (count, since) = table.get(&ip)?;
        let elapsed = now.saturating_duration_since(*since);
        (*count >= self.max_failures && elapsed < self.window).then(|| self.window - elapsed)
    }

    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) {
        if self.max_failures == 0 {
            return;
        }
        let mut table = lock(&self.table);
        if table.len() >= THROTTLE_TABLE_MAX {
            let window = self.window;
            table.retain(|_, (_, since)| now.saturating_duration_since(*since) < window);
            if table.len() >= THROTTLE_TABLE_MAX {
                // Forget the oldest eighth at once: one pass over the table frees room
                // for the next 8,192 failures, instead of a pass per failure.
                let mut by_age: Vec<(Instant, IpAddr)> =
                    table.iter().map(|(ip, (_, since))| (*since, *ip)).collect();
                let cut = THROTTLE_TABLE_MAX / 8;
                by_age.select_nth_unstable(cut);
                for (_, ip) in &by_age[..cut] {
                    table.remove(ip);
                }
            }
        }
        let entry = table.entry(ip).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= self.window {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_throttle_table_forgets_its_oldest_eighth_at_once() {
        let t = Throttle::new(5, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..THROTTLE_TABLE_MAX as u32 {
            t.failed(
                IpAddr::from(i.to_be_bytes()),
                t0 + Duration::from_micros(u64::from(i)),
            );
        }
        assert_eq!(lock(&t.table).len(), THROTTLE_TABLE_MAX);
        let newcomer = IpAddr::from([255, 255, 255, 255]);
        t.failed(newcomer, t0 + Duration::from_secs(1));
        let table = lock(&t.table);
        assert_eq!(table.len(), THROTTLE_TABLE_MAX - THROTTLE_TABLE_MAX / 8 + 1);
        assert!(table.contains_key(&newcomer));
        assert!(
            !table.contains_key(&IpAddr::from([0, 0, 0, 0])),
            "the oldest went first"
        );
        assert!(table.contains_key(&IpAddr::from((THROTTLE_TABLE_MAX as u32 - 1).to_be_bytes())));
    }

    #[test]
    fn passwords_compare_by_value() {
        assert!(password_matches("secret123", "secret123"));
        assert!(!password_matches("secret12", "secret123"));
        assert!(!password_matches("secret1234", "secret123"));
        assert!(!password_matches("Secret123", "secret123"));
        assert!(!password_matches("", "secret123"));
        assert!(password_matches("", ""));
        assert!(!password_matches("x", ""));
    }

    #[test]
    fn a_repeated_prefix_is_not_the_password() {
        // The loop wraps around the expected password; a repetition must still fail.
        assert!(!password_matches("abcabc", "abc"));
    }

    #[test]
    fn throttle_blocks_after_the_limit_and_forgets_after_the_window() {
        let t = Throttle::new(3, Duration::from_secs(60));
        let ip: IpAddr = [127, 0, 0, 9].into();
        let start = Instant::now();
        for _ in 0..2 {
            t.failed(ip, start);
        }
        assert!(t.blocked(ip, start).is_none());
        t.failed(ip, start);
        assert_eq!(t.blocked(ip, start), Some(Duration::from_secs(60)));
        let other: IpAddr = [127, 0, 0, 10].into();
        assert!(t.blocked(other, start).is_none());
        let later = start + Duration::from_secs(61);
        assert!(t.blocked(ip, later).is_none());
        // A failure after the window starts a new count.
        t.failed(ip, later);
        assert!(t.blocked(ip, later).is_none());
    }

    #[test]
    fn zero_disables_the_throttle() {
        let t = Throttle::new(0, Duration::from_secs(60));
        let ip: IpAddr = [127, 0, 0, 9].into();
        for _ in 0..100 {
            t.failed(ip, Instant::now());
        }
        assert!(t.blocked(ip, Instant::now()).is_none());
    }
}
