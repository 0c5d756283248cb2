//! JWT authentication: [`JwtAuthenticator`] checks a token a backend signed (HS256 with
//! a shared secret, RS256 or ES256 with the backend's public key) and turns its claims
//! into the connection's [`Identity`]: `sub` is the user id, and the whole claims
//! object (`rooms`, `publish`, `info`, `exp`, ...) is what handlers and the
//! [`ClaimsPolicy`](crate::ClaimsPolicy) read.
//!
//! Only the algorithm of the configured key is accepted: a token signed with another
//! (`none`, or HS256 with a public RSA key as its secret) is refused before its
//! signature is looked at. `exp` and `sub` are required; `nbf`, `iss` and `aud` are
//! checked when present or configured; the clock may be off by [`JwtAuthenticator::leeway`].

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::auth::{AuthRejected, Authenticator, Credentials, Identity};
use crate::handler::BoxFuture;

/// The clock difference tolerated on `exp` and `nbf` by default.
const LEEWAY: Duration = Duration::from_secs(5);

/// A key that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid JWT key: {0}")]
pub struct JwtKeyError(String);

/// Checks JWTs (see the module documentation).
///
/// ```
/// use switchboard_server::{JwtAuthenticator, Server};
/// let server = Server::builder()
///     .authenticator(JwtAuthenticator::hs256(b"a secret of at least 32 bytes, really").issuer("my-backend"))
///     .build();
/// ```
#[derive(Clone)]
pub struct JwtAuthenticator {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl JwtAuthenticator {
    /// Tokens signed with HS256 and this shared secret.
    pub fn hs256(secret: impl AsRef<[u8]>) -> JwtAuthenticator {
        JwtAuthenticator::with(DecodingKey::from_secret(secret.as_ref()), Algorithm::HS256)
    }

    /// Tokens signed with RS256; `pem` is the backend's RSA public key.
    pub fn rs256_pem(pem: &[u8]) -> Result<JwtAuthenticator, JwtKeyError> {
        let key = DecodingKey::from_rsa_pem(pem).map_err(|e| JwtKeyError(e.to_string()))?;
        Ok(JwtAuthenticator::with(key, Algorithm::RS256))
    }

    /// Tokens signed with ES256; `pem` is the backend's P-256 public key.
    pub fn es256_pem(pem: &[u8]) -> Result<JwtAuthenticator, JwtKeyError> {
        let key = DecodingKey::from_ec_pem(pem).map_err(|e| JwtKeyError(e.to_string()))?;
        Ok(JwtAuthenticator::with(key, Algorithm::ES256))
    }

    fn with(key: DecodingKey, algorithm: Algorithm) -> JwtAuthenticator {
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.leeway = LEEWAY.as_secs();
        JwtAuthenticator { key, validation }
    }

    /// Only tokens whose `iss` is this.
    pub fn issuer(mut self, issuer: &str) -> JwtAuthenticator {
        self.validation.set_issuer(&[issuer]);
        self
    }

    /// Only tokens whose `aud` names this.
    pub fn audience(mut self, audience: &str) -> JwtAuthenticator {
        self.validation.set_audience(&[audience]);
        self.validation.validate_aud = true;
        self
    }

    /// The clock difference tolerated on `exp` and `nbf` (5 s by default).
    pub fn leeway(mut self, leeway: Duration) -> JwtAuthenticator {
        self.validation.leeway = leeway.as_secs();
        self
    }

    /// The identity a token proves, or why not (vaguely: the client reads it).
    ///
    /// ```
    /// use switchboard_server::JwtAuthenticator;
    /// let jwt = JwtAuthenticator::hs256(b"a secret of at least 32 bytes, really");
    /// assert!(jwt.verify("not.a.token").is_err());
    /// ```
    pub fn verify(&self, token: &str) -> Result<Identity, AuthRejected> {
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &self.key, &self.validation)
            .map_err(|e| AuthRejected::new(reason(e.kind())))?;
        let claims = data.claims;
        let Some(sub) = claims["sub"].as_str().filter(|s| !s.is_empty()) else {
            return Err(AuthRejected::new("invalid token: no subject"));
        };
        Ok(Identity::new(sub).with_claims(claims.clone()))
    }
}

/// What a refused token is told: which check failed, never anything about the key.
fn reason(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "token expired",
        K::ImmatureSignature => "token not valid yet",
        K::InvalidIssuer => "token from another issuer",
        K::InvalidAudience => "token for another audience",
        K::MissingRequiredClaim(_) => "invalid token: a required claim is missing",
        _ => "invalid token",
    }
}

impl Authenticator for JwtAuthenticator {
    fn authenticate(
        &self,
        credentials: Credentials,
    ) -> BoxFuture<'static, Result<Identity, AuthRejected>> {
        let verified = match credentials.token() {
            Some(token) => self.verify(token),
            None => Err(AuthRejected::new("a token is required")),
        };
        Box::pin(std::future::ready(verified))
    }
}

/// Seconds since the Unix epoch, as `exp` counts them.
pub(crate) fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// When a verified identity's token expires (its `exp` claim, in seconds since the
/// epoch), if it has one.
pub(crate) fn expires_at(identity: &Identity) -> Option<u64> {
    identity
        .claims
        .get("exp")
        .and_then(serde_json::Value::as_u64)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"a secret of at least 32 bytes, really";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn sign(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap_or_default()
    }

    #[test]
    fn a_good_token_gives_its_subject_and_claims() {
        let jwt = JwtAuthenticator::hs256(SECRET);
        let token = sign(json!({"sub": "alice", "exp": now() + 60, "rooms": ["chat:*"]}));
        let who = jwt
            .verify(&token)
            .map_err(|e| e.message)
            .unwrap_or_else(|m| panic!("{m}"));
        assert_eq!(who.id, "alice");
        assert_eq!(who.claims["rooms"][0], "chat:*");
        assert!(expires_at(&who).is_some_and(|e| e > now()));
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason_that_gives_nothing_away() {
        let jwt = JwtAuthenticator::hs256(SECRET).issuer("backend");
        let refused = |token: &str| jwt.verify(token).err().map(|e| e.message);
        let t = now();
        assert_eq!(
            refused(&sign(json!({"sub": "a", "exp": t - 60, "iss": "backend"}))).as_deref(),
            Some("token expired")
        );
        assert_eq!(
            refused(&sign(
                json!({"sub": "a", "exp": t + 60, "nbf": t + 60, "iss": "backend"})
            ))
            .as_deref(),
            Some("token not valid yet")
        );
        assert_eq!(
            refused(&sign(
                json!({"sub": "a", "exp": t + 60, "iss": "elsewhere"})
            ))
            .as_deref(),
            Some("token from another issuer")
        );
        assert!(refused(&sign(json!({"exp": t + 60, "iss": "backend"}))).is_some());
        assert!(
            refused(&sign(json!({"sub": "a", "iss": "backend"}))).is_some(),
            "no exp"
        );
        // Signed with another secret.
        let forged = encode(
            &Header::default(),
            &json!({"sub": "a", "exp": t + 60, "iss": "backend"}),
            &EncodingKey::from_secret(b"another secret, also 32 bytes long!"),
        )
        .unwrap_or_default();
        assert_eq!(refused(&forged).as_deref(), Some("invalid token"));
        // `alg: none`: a header and claims with no signature.
        use base64::Engine;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(json!({"sub": "a", "exp": t + 60, "iss": "backend"}))
        );
        assert_eq!(refused(&none).as_deref(), Some("invalid token"));
        assert_eq!(refused("garbage").as_deref(), Some("invalid token"));
    }

    #[test]
    fn an_rs256_key_never_accepts_hs256_tokens_made_with_it() {
        // The key confusion attack: the public key used as an HMAC secret.
        let (_, public) = test_keys::rsa();
        let jwt = JwtAuthenticator::rs256_pem(public.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "a", "exp": now() + 60}),
            &EncodingKey::from_secret(public.as_bytes()),
        )
        .unwrap_or_default();
        assert_eq!(
            jwt.verify(&confused).err().map(|e| e.message).as_deref(),
            Some("invalid token")
        );
    }

    /// A fixed RSA key pair for tests (generated once with openssl).
    mod test_keys {
        pub(super) fn rsa() -> (&'static str, &'static str) {
            (
                include_str!("../tests/keys/rsa-private.pem"),
                include_str!("../tests/keys/rsa-public.pem"),
            )
        }
    }
}
