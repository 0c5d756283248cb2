//! The hub's settings: flags, `SWITCHBOARD_*` environment variables and a TOML file,
//! in that order of precedence, over the library's defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Deserializer};
use switchboard_server::proto::Dialect;
use switchboard_server::{HistoryPolicy, HistoryRule, ServerConfig};

/// Every setting of `switchboard serve`, as the config file spells it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub name: Option<String>,
    pub path: Option<String>,
    pub max_connections: Option<usize>,
    pub max_message_size: Option<usize>,
    pub max_rooms_per_connection: Option<usize>,
    pub outbound_queue: Option<usize>,
    pub outbound_queue_bytes: Option<usize>,
    pub buffer_size: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub shutdown_grace: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub close_timeout: Option<Duration>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "duration")]
    pub auth_timeout: Option<Duration>,
    pub auth_max_failures: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    pub auth_failure_window: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub heartbeat_interval: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub heartbeat_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub room_update_interval: Option<Duration>,
    pub rate_limit: Option<u32>,
    pub rate_burst: Option<u32>,
    pub allowed_origins: Option<Vec<String>>,
    pub max_http_connections: Option<usize>,
    pub max_http_connections_per_address: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub http_write_timeout: Option<Duration>,
    pub max_pending_auth: Option<usize>,
    pub max_pending_auth_per_address: Option<usize>,
    pub trusted_proxies: Option<Vec<std::net::IpAddr>>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub echo_path: Option<String>,
    #[serde(default, deserialize_with = "dialect")]
    pub dialect: Option<Dialect>,
    pub redis: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    pub redis_node_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub redis_log_window: Option<Duration>,
    pub nats: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    pub nats_node_ttl: Option<Duration>,
    pub netconduit_port: Option<u16>,
    pub netconduit_password_hash: Option<bool>,
    pub history_size: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub history_ttl: Option<Duration>,
    pub history_memory: Option<usize>,
    pub history_rooms: Option<Vec<RoomHistory>>,
    #[serde(default, deserialize_with = "duration")]
    pub session_ttl: Option<Duration>,
    pub jwt_secret: Option<String>,
    pub jwt_secret_file: Option<PathBuf>,
    pub jwt_public_key: Option<PathBuf>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub public_rooms: Option<Vec<String>>,
    pub private_rooms: Option<Vec<String>>,
    pub clients_publish: Option<bool>,
    pub clients_message_directly: Option<bool>,
    pub api_key: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub metrics: Option<bool>,
}

/// A `[[history_rooms]]` table: the history of the rooms matching `pattern`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomHistory {
    pub pattern: String,
    pub size: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub ttl: Option<Duration>,
    #[serde(default)]
    pub latest_on_join: bool,
}

fn dialect<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Dialect>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(name) => name.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// A duration in the file: `"250ms"`, `"10s"`, `"5m"`, `"1h"`, or a number of seconds.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Secs(s)) => Ok(Some(Duration::from_secs(s))),
        Some(Raw::Text(t)) => parse_duration(&t)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// Parses `250ms`, `10s`, `5m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (try 250ms, 10s, 5m, 1h)"))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        other => Err(format!(
            "`{text}`: unknown unit `{other}` (use ms, s, m or h)"
        )),
    }
}

impl FileSettings {
    /// Reads and checks a config file; errors name the file, the key and the problem.
    pub fn load(path: &Path) -> anyhow::Result<FileSettings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Lays `over` (flags and environment, already merged by clap) on top of this file.
    pub fn merge(self, over: FileSettings) -> FileSettings {
        macro_rules! pick {
            ($($f:ident),*) => { FileSettings { $( $f: over.$f.or(self.$f), )* } };
        }
        pick!(
            host,
            port,
            name,
            path,
            max_connections,
            max_message_size,
            max_rooms_per_connection,
            outbound_queue,
            outbound_queue_bytes,
            buffer_size,
            shutdown_grace,
            close_timeout,
            password,
            password_file,
            auth_timeout,
            auth_max_failures,
            auth_failure_window,
            heartbeat_interval,
            heartbeat_timeout,
            room_update_interval,
            rate_limit,
            rate_burst,
            allowed_origins,
            max_http_connections,
            max_http_connections_per_address,
            http_write_timeout,
            max_pending_auth,
            max_pending_auth_per_address,
            trusted_proxies,
            tls_cert,
            tls_key,
            echo_path,
            dialect,
            redis,
            redis_node_ttl,
            redis_log_window,
            nats,
            nats_node_ttl,
            netconduit_port,
            netconduit_password_hash,
            history_size,
            history_ttl,
            history_memory,
            history_rooms,
            session_ttl,
            jwt_secret,
            jwt_secret_file,
            jwt_public_key,
            jwt_issuer,
            jwt_audience,
            public_rooms,
            private_rooms,
            clients_publish,
            clients_message_directly,
            api_key,
            api_key_file,
            metrics
        )
    }

    /// The server configuration these settings describe.
    pub fn into_config(self) -> anyhow::Result<ServerConfig> {
        let d = ServerConfig::default();
        let password = match (self.password, &self.password_file) {
            (Some(_), Some(_)) => bail!("`password` and `password_file` are both set; keep one"),
            (Some(p), None) => Some(p),
            (None, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("password_file: cannot read {}", file.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            (None, None) => None,
        };
        if password.as_deref() == Some("") {
            bail!("password: it is empty; set a real one or none");
        }
        let config = ServerConfig {
            host: self.host.unwrap_or(d.host),
            port: self.port.unwrap_or(d.port),
            name: self.name.unwrap_or(d.name),
            path: self.path.unwrap_or(d.path),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_message_size: self.max_message_size.unwrap_or(d.max_message_size),
            max_rooms_per_connection: self
                .max_rooms_per_connection
                .unwrap_or(d.max_rooms_per_connection),
            outbound_queue: self.outbound_queue.unwrap_or(d.outbound_queue),
            outbound_queue_bytes: self.outbound_queue_bytes.unwrap_or(d.outbound_queue_bytes),
            buffer_size: self.buffer_size.unwrap_or(d.buffer_size),
            shutdown_grace: self.shutdown_grace.unwrap_or(d.shutdown_grace),
            close_timeout: self.close_timeout.unwrap_or(d.close_timeout),
            password,
            auth_timeout: self.auth_timeout.unwrap_or(d.auth_timeout),
            auth_max_failures: self.auth_max_failures.unwrap_or(d.auth_max_failures),
            auth_failure_window: self.auth_failure_window.unwrap_or(d.auth_failure_window),
            heartbeat_interval: self.heartbeat_interval.unwrap_or(d.heartbeat_interval),
            heartbeat_timeout: self.heartbeat_timeout.unwrap_or(d.heartbeat_timeout),
            room_update_interval: self.room_update_interval.unwrap_or(d.room_update_interval),
            rate_limit: self.rate_limit.unwrap_or(d.rate_limit),
            rate_burst: self.rate_burst.unwrap_or(d.rate_burst),
            allowed_origins: self.allowed_origins.unwrap_or(d.allowed_origins),
            max_http_connections: self.max_http_connections.unwrap_or(d.max_http_connections),
            max_http_connections_per_address: self
                .max_http_connections_per_address
                .unwrap_or(d.max_http_connections_per_address),
            http_write_timeout: self.http_write_timeout.unwrap_or(d.http_write_timeout),
            max_pending_auth: self.max_pending_auth.unwrap_or(d.max_pending_auth),
            max_pending_auth_per_address: self
                .max_pending_auth_per_address
                .unwrap_or(d.max_pending_auth_per_address),
            trusted_proxies: self.trusted_proxies.unwrap_or(d.trusted_proxies),
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            echo_path: self.echo_path,
            default_dialect: self.dialect.unwrap_or(d.default_dialect),
            relay_unhandled: true,
            metrics: self.metrics.unwrap_or(d.metrics),
            history: HistoryPolicy {
                size: self.history_size.unwrap_or(d.history.size),
                ttl: self.history_ttl.unwrap_or(d.history.ttl),
                latest_on_join: false,
            },
            history_rooms: self
                .history_rooms
                .unwrap_or_default()
                .into_iter()
                .map(|r| {
                    let policy = HistoryPolicy {
                        size: r
                            .size
                            .unwrap_or(if r.latest_on_join { 1 } else { d.history.size }),
                        ttl: r.ttl.unwrap_or(d.history.ttl),
                        latest_on_join: r.latest_on_join,
                    };
                    HistoryRule::new(r.pattern, policy)
                })
                .collect(),
            history_memory: self.history_memory.unwrap_or(d.history_memory),
            session_ttl: self.session_ttl.unwrap_or(d.session_ttl),
            ..d
        };
        check(&config)?;
        Ok(config)
    }
}

/// Rejects settings that cannot work, naming the key.
fn check(c: &ServerConfig) -> anyhow::Result<()> {
    if !c.path.starts_with('/') {
        bail!("path: `{}` must start with `/`", c.path);
    }
    if c.max_message_size < 128 {
        bail!(
            "max_message_size: {} bytes is too small to carry a message",
            c.max_message_size
        );
    }
    if c.buffer_size < 256 {
        bail!(
            "buffer_size: {} bytes is too small for a socket buffer",
            c.buffer_size
        );
    }
    if c.max_connections == 0 {
        bail!("max_connections: must be at least 1");
    }
    if !c.heartbeat_interval.is_zero() && c.heartbeat_timeout <= c.heartbeat_interval {
        bail!(
            "heartbeat_timeout: {:?} must be longer than heartbeat_interval ({:?})",
            c.heartbeat_timeout,
            c.heartbeat_interval
        );
    }
    if c.rate_limit > 0 && c.rate_burst == 0 {
        bail!("rate_burst: must be at least 1 when rate_limit is set");
    }
    if let Some(p) = &c.echo_path {
        if !p.starts_with('/') || *p == c.path {
            bail!("echo_path: `{p}` must start with `/` and differ from `path`");
        }
    }
    if c.tls_cert.is_some() != c.tls_key.is_some() {
        bail!("tls_cert / tls_key: set both or neither");
    }
    Ok(())
}

/// The commented example printed by `switchboard config --example`.
pub const EXAMPLE: &str = include_str!("../switchboard.example.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("ten").is_err());
        assert!(
            parse_duration("10 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
    }

    #[test]
    fn the_example_file_parses_and_is_valid() {
        let settings: FileSettings = toml::from_str(EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
        settings.into_config().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = toml::from_str::<FileSettings>("prot = 80")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `prot`"), "{err}");
        let err = toml::from_str::<FileSettings>("port = \"eighty\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("port"), "{err}");
        let err = toml::from_str::<FileSettings>("auth_timeout = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("auth_timeout") && err.contains("not a duration"),
            "{err}"
        );
        let bad = FileSettings {
            heartbeat_interval: Some(Duration::from_secs(30)),
            heartbeat_timeout: Some(Duration::from_secs(10)),
            ..FileSettings::default()
        };
        assert!(
            bad.into_config()
                .unwrap_err()
                .to_string()
                .starts_with("heartbeat_timeout")
        );
    }

    #[test]
    fn history_settings_and_room_rules() {
        let text = "history_size = 50\nsession_ttl = \"30s\"\n\
                    [[history_rooms]]\npattern = \"scores:*\"\nlatest_on_join = true\n\
                    [[history_rooms]]\npattern = \"typing:*\"\nsize = 0\n";
        let settings: FileSettings = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        let c = settings.into_config().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.history.size, 50);
        assert_eq!(c.session_ttl, Duration::from_secs(30));
        let scores = c.history_of("scores:cup");
        assert_eq!((scores.size, scores.latest_on_join), (1, true));
        assert!(!c.history_of("typing:lobby").is_on());
        assert_eq!(c.history_of("general").size, 50);
    }

    #[test]
    fn buffer_size_is_a_setting_and_a_tiny_one_is_refused() {
        let c = toml::from_str::<FileSettings>("buffer_size = 65536")
            .unwrap_or_else(|e| panic!("{e}"))
            .into_config()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.buffer_size, 65536);
        let err = toml::from_str::<FileSettings>("buffer_size = 10")
            .unwrap_or_else(|e| panic!("{e}"))
            .into_config()
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("buffer_size"), "{err}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = FileSettings {
            port: Some(1),
            name: Some("file".into()),
            ..FileSettings::default()
        };
        let flags = FileSettings {
            port: Some(2),
            ..FileSettings::default()
        };
        let c = file
            .merge(flags)
            .into_config()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.port, c.name.as_str()), (2, "file"));
    }
}
