//! Who may connect and what they may do, from the hub's settings: JWT verification
//! (`jwt_secret` / `jwt_secret_file` for HS256, `jwt_public_key` for RS256 or ES256),
//! the room rules ([`RulesPolicy`]), and the server API's key. docs/auth.md.

use std::path::Path;

use anyhow::{Context, bail};
use switchboard_server::{JwtAuthenticator, RulesPolicy};

use crate::settings::FileSettings;

/// The hub's access settings, checked.
#[derive(Debug, Default)]
pub(crate) struct Access {
    /// Verifies clients' tokens, when a key is set.
    pub(crate) jwt: Option<JwtAuthenticator>,
    /// What clients may do, when any rule is set (or a JWT key is).
    pub(crate) policy: Option<RulesPolicy>,
    /// The server API's key.
    pub(crate) api_key: Option<String>,
}

fn read_secret(file: &Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("{what}: cannot read {}", file.display()))?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// A secret from the setting or its file (not both), refused when empty or short.
fn secret(
    value: Option<&String>,
    file: Option<&std::path::PathBuf>,
    what: &str,
    min: usize,
) -> anyhow::Result<Option<String>> {
    let secret = match (value, file) {
        (Some(_), Some(_)) => bail!("`{what}` and `{what}_file` are both set; keep one"),
        (Some(s), None) => Some(s.clone()),
        (None, Some(f)) => Some(read_secret(f, &format!("{what}_file"))?),
        (None, None) => None,
    };
    if let Some(s) = &secret {
        if s.len() < min {
            bail!(
                "{what}: at least {min} bytes, please (it is {} now)",
                s.len()
            );
        }
    }
    Ok(secret)
}

impl Access {
    /// Reads the access settings; refuses contradictions (two JWT keys, a password and
    /// a JWT key) and weak secrets.
    pub(crate) fn from_settings(s: &FileSettings) -> anyhow::Result<Access> {
        let hs = secret(
            s.jwt_secret.as_ref(),
            s.jwt_secret_file.as_ref(),
            "jwt_secret",
            32,
        )?;
        let mut jwt = match (hs, &s.jwt_public_key) {
            (Some(_), Some(_)) => {
                bail!("`jwt_secret` and `jwt_public_key` are both set; keep one")
            }
            (Some(secret), None) => Some(JwtAuthenticator::hs256(secret)),
            (None, Some(file)) => {
                let pem = std::fs::read(file)
                    .with_context(|| format!("jwt_public_key: cannot read {}", file.display()))?;
                let key = JwtAuthenticator::rs256_pem(&pem)
                    .or_else(|_| JwtAuthenticator::es256_pem(&pem))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "jwt_public_key: {} is not an RSA or P-256 public key in PEM",
                            file.display()
                        )
                    })?;
                Some(key)
            }
            (None, None) => None,
        };
        if jwt.is_some() && (s.password.is_some() || s.password_file.is_some()) {
            bail!("a password and a JWT key are both set: clients authenticate with one");
        }
        if let Some(j) = jwt.take() {
            let mut j = j;
            if let Some(iss) = &s.jwt_issuer {
                j = j.issuer(iss);
            }
            if let Some(aud) = &s.jwt_audience {
                j = j.audience(aud);
            }
            jwt = Some(j);
        }
        let any_rule = s.public_rooms.is_some()
            || s.private_rooms.is_some()
            || s.clients_publish.is_some()
            || s.clients_message_directly.is_some();
        let policy = (jwt.is_some() || any_rule).then(|| RulesPolicy {
            public: s.public_rooms.clone().unwrap_or_default(),
            // With tokens, rooms are private unless listed public.
            private: s.private_rooms.clone().unwrap_or_else(|| {
                if jwt.is_some() {
                    vec!["*".into()]
                } else {
                    Vec::new()
                }
            }),
            clients_publish: s.clients_publish.unwrap_or(true),
            clients_message_directly: s.clients_message_directly.unwrap_or(true),
        });
        let api_key = secret(s.api_key.as_ref(), s.api_key_file.as_ref(), "api_key", 16)?;
        Ok(Access {
            jwt,
            policy,
            api_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contradictions_and_weak_secrets_are_refused() {
        let short = FileSettings {
            jwt_secret: Some("short".into()),
            ..FileSettings::default()
        };
        assert!(Access::from_settings(&short).is_err());
        let both = FileSettings {
            jwt_secret: Some("x".repeat(32)),
            password: Some("pw".into()),
            ..FileSettings::default()
        };
        assert!(Access::from_settings(&both).is_err());
        let good = FileSettings {
            jwt_secret: Some("x".repeat(32)),
            public_rooms: Some(vec!["lobby".into()]),
            api_key: Some("k".repeat(16)),
            ..FileSettings::default()
        };
        let access = Access::from_settings(&good).unwrap_or_default();
        let policy = access.policy.unwrap_or_default();
        assert_eq!(
            policy.private,
            ["*"],
            "with tokens, rooms are private by default"
        );
        assert_eq!(policy.public, ["lobby"]);
        assert!(access.jwt.is_some() && access.api_key.is_some());
    }
}
