//! Tokens from your backend ([`ClientConfig::get_token`]): fetched before every
//! connection, and again before the current one expires, sent on the open connection
//! (docs/auth.md, "Refresh in band").

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use base64::Engine;
use switchboard_proto::{Envelope, Payload, types};
use tokio_tungstenite::tungstenite::Message;

use crate::Client;
use crate::locks::lock;
use crate::state::Inner;

type Fetch = dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync;

/// Where tokens come from: an async function that asks your backend.
#[derive(Clone)]
pub struct TokenSource(Arc<Fetch>);

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSource(..)")
    }
}

impl TokenSource {
    /// A source from an async function (an `Err` is why no token came).
    pub fn new<F, Fut>(fetch: F) -> TokenSource
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        TokenSource(Arc::new(move || Box::pin(fetch())))
    }

    pub(crate) async fn fetch(&self) -> Result<String, String> {
        (self.0)().await
    }
}

/// A JWT's `exp` (seconds since the epoch), if it is a JWT with one.
///
/// ```
/// // {"alg":"HS256"}.{"sub":"a","exp":2000000000}.signature
/// let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIiwiZXhwIjoyMDAwMDAwMDAwfQ.c2ln";
/// assert_eq!(switchboard_client::token_expiry(token), Some(2_000_000_000));
/// assert_eq!(switchboard_client::token_expiry("not a jwt"), None);
/// ```
pub fn token_expiry(token: &str) -> Option<u64> {
    let claims = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&json)
        .ok()?
        .get("exp")?
        .as_u64()
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `auth` payload with this token (over the configured one's other fields).
pub(crate) fn auth_with(base: Option<&serde_json::Value>, token: &str) -> serde_json::Value {
    let mut auth = base
        .filter(|b| b.is_object())
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    auth["token"] = serde_json::Value::String(token.to_owned());
    auth
}

/// Refreshes the client's token before it expires, for as long as the client lives.
pub(crate) async fn refresh_loop(
    inner: Weak<Inner>,
    generation: u64,
    source: TokenSource,
    refresh_before: Duration,
) {
    let mut sent: u64 = 0;
    loop {
        let Some(exp) = inner
            .upgrade()
            .and_then(|i| lock(&i.token).as_deref().and_then(token_expiry))
        else {
            return;
        };
        let left = Duration::from_secs(exp.saturating_sub(unix_seconds()));
        let ahead = refresh_before.min(left / 2);
        tokio::time::sleep(left.saturating_sub(ahead).max(Duration::from_millis(100))).await;
        let token = match source.fetch().await {
            Ok(token) => token,
            Err(why) => {
                tracing::warn!(%why, "could not get a fresh token; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(inner) = inner.upgrade() else { return };
        if lock(&inner.outbox).closed || inner.opened.load(Ordering::Relaxed) != generation {
            return;
        }
        let auth = auth_with(inner.config.auth.as_ref(), &token);
        *lock(&inner.token) = Some(token);
        if !lock(&inner.outbox).online {
            continue; // the reconnect sends the new token
        }
        sent += 1;
        let Ok(payload) = Payload::from_serialize(&auth) else {
            continue;
        };
        let frame = Envelope {
            ref_id: Some(format!("refresh:{sent}")),
            ..Envelope::with_payload(types::AUTH, payload)
        };
        let client = Client { inner };
        if client
            .enqueue(Message::text(frame.encode()), None)
            .await
            .is_err()
        {
            return;
        }
    }
}
