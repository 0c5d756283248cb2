//! Client settings: timeouts, queues, authentication, TLS and reconnection.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use switchboard_proto::Reconnect;

/// How the client reconnects after the connection drops.
///
/// The delay before attempt `n` (counting from 1 after each drop) is
/// `min(max_delay, initial_delay * multiplier^(n-1))`, then moved by up to `jitter`
/// (a fraction) either way so that many clients do not return at the same instant.
/// When the server closed with a "reconnect now" hint (slow consumer, heartbeat), the
/// first attempt waits only the jitter of `initial_delay`. A close that says "do not
/// reconnect" (wrong credentials, kicked) stops it, as does `max_attempts`.
///
/// ```
/// use std::time::Duration;
/// use switchboard_client::ReconnectConfig;
/// let r = ReconnectConfig { jitter: 0.0, ..ReconnectConfig::default() };
/// assert_eq!(r.delay(1), Duration::from_millis(250));
/// assert_eq!(r.delay(2), Duration::from_millis(500));
/// assert_eq!(r.delay(30), Duration::from_secs(30)); // the cap
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectConfig {
    /// Reconnect at all. Default true. Without it a dropped connection ends the client
    /// and sends fail with `NotConnected`.
    pub enabled: bool,
    /// The delay before the first attempt. Default 250 ms.
    pub initial_delay: Duration,
    /// The longest delay between attempts. Default 30 s.
    pub max_delay: Duration,
    /// How much the delay grows per failed attempt. Default 2.
    pub multiplier: f64,
    /// How far (a fraction of the delay) each delay is moved at random. Default 0.3.
    pub jitter: f64,
    /// Give up after this many failed attempts in a row. Default none (never give up).
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            enabled: true,
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.3,
            max_attempts: None,
        }
    }
}

impl ReconnectConfig {
    /// No reconnection.
    pub fn disabled() -> ReconnectConfig {
        ReconnectConfig {
            enabled: false,
            ..ReconnectConfig::default()
        }
    }

    /// Attempts at a fixed interval, with no growth and no jitter (Metafor's and
    /// netconduit's `reconnect_delay`), unlimited unless `max_attempts` is set.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchboard_client::ReconnectConfig;
    /// let r = ReconnectConfig::fixed(Duration::from_secs(2));
    /// assert_eq!(r.delay(1), Duration::from_secs(2));
    /// assert_eq!(r.delay(10), Duration::from_secs(2));
    /// assert_eq!(r.jitter, 0.0);
    /// ```
    pub fn fixed(delay: Duration) -> ReconnectConfig {
        ReconnectConfig {
            enabled: true,
            initial_delay: delay,
            max_delay: delay,
            multiplier: 1.0,
            jitter: 0.0,
            max_attempts: None,
        }
    }

    /// The delay before attempt `attempt` (from 1), before jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = i32::try_from(attempt.saturating_sub(1).min(64)).unwrap_or(64);
        let secs = self.initial_delay.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        let capped = secs.min(self.max_delay.as_secs_f64());
        Duration::try_from_secs_f64(capped).unwrap_or(self.max_delay)
    }

    /// The delay before attempt `attempt` with jitter applied, after a close with `hint`.
    pub(crate) fn jittered_delay(&self, attempt: u32, hint: Reconnect, random: f64) -> Duration {
        let base = if attempt == 1 && hint == Reconnect::Now {
            self.initial_delay.mul_f64(self.jitter.clamp(0.0, 1.0))
        } else {
            self.delay(attempt)
        };
        let jitter = self.jitter.clamp(0.0, 1.0);
        // random in [0, 1): factor in [1 - jitter, 1 + jitter).
        let factor = 1.0 - jitter + 2.0 * jitter * random.clamp(0.0, 1.0);
        base.mul_f64(factor)
    }
}

/// Settings for [`Client::connect_with`](crate::Client::connect_with).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How long to wait for the server to confirm the connection. Default 10 s.
    pub connect_timeout: Duration,
    /// The default timeout of [`Client::join`](crate::Client::join) and
    /// [`Client::leave`](crate::Client::leave). Default 10 s.
    pub request_timeout: Duration,
    /// How many outgoing messages may wait for the socket while connected; past that,
    /// sends wait. Default 1,024.
    pub send_queue: usize,
    /// How many messages may be queued while reconnecting; past that, sends fail with
    /// [`SendError::QueueFull`](crate::SendError::QueueFull) and the queue keeps what it
    /// has. Default 1,024.
    pub offline_queue: usize,
    /// How many bytes may be queued while reconnecting. Default 1 MiB.
    pub offline_queue_bytes: usize,
    /// The largest incoming message. Default 16 MiB.
    pub max_message_size: usize,
    /// Offer MessagePack (the subprotocol `switchboard.v1.msgpack`): envelopes then
    /// travel in binary frames, smaller and without JSON's escaping. A server that does
    /// not speak it answers without the subprotocol and the connection uses JSON (see
    /// [`Session::msgpack`](crate::Session::msgpack)). Nothing else changes: the
    /// API, payloads and errors are the same. Default false.
    pub msgpack: bool,
    /// How long [`Client::close`](crate::Client::close) waits for the server to answer
    /// the close frame before dropping the socket. Default 5 s.
    pub close_timeout: Duration,
    /// The payload of the `auth` message sent first thing on every connection, e.g.
    /// `{"password": "..."}` or `{"token": "..."}`. Default none (no `auth` is sent).
    /// A refusal is [`ConnectError::Refused`](crate::ConnectError::Refused) with code
    /// `AUTH_FAILED`.
    pub auth: Option<serde_json::Value>,
    /// The TLS settings for `wss://` URLs (your own root certificates, client
    /// certificates). Default none: the Web PKI roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Reconnection. Default on, with backoff and jitter, unlimited attempts.
    pub reconnect: ReconnectConfig,
    /// After a reconnect, resume the session: the same client id and rooms, and the
    /// messages missed meanwhile, without duplicates (see
    /// [`Client::on_resume`](crate::Client::on_resume)). Default true.
    pub resume: bool,
    /// A request already written when the connection dropped is sent again after the
    /// reconnect (the server answers one it had handled with its first answer, so it
    /// takes effect once when the session resumes). False: it fails with
    /// [`RequestError::ConnectionLost`](crate::RequestError::ConnectionLost), as the
    /// server may or may not have handled it. Default true.
    pub retry_in_flight: bool,
    /// Where tokens come from ([`get_token`](Self::get_token)). Default none.
    pub token_source: Option<crate::TokenSource>,
    /// With a token source: how long before a token's `exp` a fresh one is fetched and
    /// sent on the open connection (at most half the token's life). Default 30 s.
    pub refresh_before: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            send_queue: 1024,
            offline_queue: 1024,
            offline_queue_bytes: 1024 * 1024,
            max_message_size: 16 * 1024 * 1024,
            msgpack: false,
            close_timeout: Duration::from_secs(5),
            auth: None,
            tls: None,
            reconnect: ReconnectConfig::default(),
            resume: true,
            retry_in_flight: true,
            token_source: None,
            refresh_before: Duration::from_secs(30),
        }
    }
}

impl ClientConfig {
    /// Offers MessagePack for the envelopes ([`msgpack`](Self::msgpack)).
    ///
    /// ```
    /// let config = switchboard_client::ClientConfig::default().msgpack(true);
    /// assert!(config.msgpack);
    /// ```
    pub fn msgpack(mut self, on: bool) -> ClientConfig {
        self.msgpack = on;
        self
    }

    /// Authenticates with this password (`{"password": ...}`).
    ///
    /// ```
    /// let config = switchboard_client::ClientConfig::default().password("secret123");
    /// assert_eq!(config.auth.unwrap()["password"], "secret123");
    /// ```
    pub fn password(mut self, password: impl Into<String>) -> ClientConfig {
        self.auth = Some(json!({ "password": password.into() }));
        self
    }

    /// Gets tokens from your backend: `fetch` is called before every connection (so a
    /// reconnect never presents an expired token) and again before the current token's
    /// `exp`, whose result is sent on the open connection (docs/auth.md).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use switchboard_client::{Client, ClientConfig};
    /// let config = ClientConfig::default().get_token(|| async {
    ///     // Ask your backend; here, a fixed one.
    ///     Ok::<_, String>("eyJ...".to_owned())
    /// });
    /// let client = Client::connect_with("ws://127.0.0.1:8080/ws", config).await?;
    /// # Ok(()) }
    /// ```
    pub fn get_token<F, Fut>(mut self, fetch: F) -> ClientConfig
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<String, String>> + Send + 'static,
    {
        self.token_source = Some(crate::TokenSource::new(fetch));
        self
    }

    /// Authenticates with this token (`{"token": ...}`), for servers with an authenticator.
    pub fn token(mut self, token: impl Into<String>) -> ClientConfig {
        self.auth = Some(json!({ "token": token.into() }));
        self
    }

    /// Sets the reconnection settings.
    pub fn reconnect(mut self, reconnect: ReconnectConfig) -> ClientConfig {
        self.reconnect = reconnect;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap() {
        let r = ReconnectConfig {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.0,
            ..ReconnectConfig::default()
        };
        let ms: Vec<u128> = (1..=6).map(|n| r.delay(n).as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(r.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let r = ReconnectConfig {
            initial_delay: Duration::from_millis(1000),
            jitter: 0.25,
            ..ReconnectConfig::default()
        };
        for i in 0..100 {
            let d = r.jittered_delay(1, Reconnect::Backoff, f64::from(i) / 100.0);
            assert!(
                d >= Duration::from_millis(750) && d < Duration::from_millis(1250),
                "{d:?}"
            );
        }
        // "Reconnect now": only the jitter of the initial delay.
        let d = r.jittered_delay(1, Reconnect::Now, 0.5);
        assert_eq!(d, Duration::from_millis(250));
        // ... for the first attempt only.
        assert!(r.jittered_delay(2, Reconnect::Now, 0.5) >= Duration::from_millis(1500));
    }
}
