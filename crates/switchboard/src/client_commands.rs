//! The one-shot client commands, `send`, `call` and `listen`, and what they share with
//! the interactive `connect` ([`crate::interactive`]): the target, the connection,
//! how messages and failures are printed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_client::{
    Client, ClientConfig, ClientError, ConnectError, ConnectionState, Envelope, ReconnectConfig,
    RequestError,
};
use tokio::sync::mpsc;

use crate::settings::parse_duration;

/// Exit code when the server answered with an error.
const EXIT_REMOTE: u8 = 1;
/// Exit code when the server could not be reached or the input was wrong.
const EXIT_FAILURE: u8 = 2;

/// How to reach and log in to a server.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The server: ws://host:port/ws, wss://..., or just host:port.
    pub url: String,
    /// Authenticate with this password.
    #[arg(long, env = "SWITCHBOARD_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Authenticate with this token (servers with an authenticator).
    #[arg(long, env = "SWITCHBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust this PEM certificate (a self-signed server, your own CA) for wss://.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// How long to wait for the server: connecting, and each answer.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl Target {
    /// The URL with a scheme and a path.
    pub fn url(&self) -> String {
        normalize_url(&self.url)
    }

    fn config(&self, reconnect: bool) -> Result<ClientConfig, String> {
        let mut config = ClientConfig {
            connect_timeout: self.timeout,
            request_timeout: self.timeout,
            ..ClientConfig::default()
        };
        if let Some(p) = &self.password {
            config = config.password(p.clone());
        }
        if let Some(t) = &self.token {
            config = config.token(t.clone());
        }
        if !reconnect {
            config.reconnect = ReconnectConfig::disabled();
        }
        if let Some(path) = &self.ca_cert {
            config.tls = Some(trust(path)?);
        }
        Ok(config)
    }

    pub(crate) async fn connect(&self, reconnect: bool) -> Result<Client, ExitCode> {
        let config = self.config(reconnect).map_err(|e| fail(&e))?;
        Client::connect_with(&self.url(), config)
            .await
            .map_err(|e| connect_failed(&self.url(), &e))
    }
}

fn trust(path: &PathBuf) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `host:port` → `ws://host:port/ws`; a URL without a path gets `/ws`.
pub fn normalize_url(url: &str) -> String {
    let with_scheme = if url.contains("://") {
        url.to_owned()
    } else {
        format!("ws://{url}")
    };
    let after_scheme = with_scheme.split_once("://").map_or("", |(_, r)| r);
    if after_scheme.contains('/') {
        with_scheme
    } else {
        format!("{with_scheme}/ws")
    }
}

pub(crate) fn fail(message: &str) -> ExitCode {
    eprintln!("switchboard: {message}");
    ExitCode::from(EXIT_FAILURE)
}

pub(crate) fn connect_failed(url: &str, e: &ConnectError) -> ExitCode {
    match e {
        ConnectError::Refused { code, message, .. } => {
            eprintln!("{code}: {message}");
            ExitCode::from(EXIT_REMOTE)
        }
        other => fail(&format!("{url}: {other}")),
    }
}

pub(crate) fn request_failed(e: &RequestError) -> ExitCode {
    match e {
        RequestError::Remote {
            code,
            message,
            details,
        } => {
            match details {
                Some(d) => eprintln!("{code}: {message}\n{d}"),
                None => eprintln!("{code}: {message}"),
            }
            ExitCode::from(EXIT_REMOTE)
        }
        other => fail(&other.to_string()),
    }
}

pub(crate) fn parse_json(what: &str, text: &str) -> Result<Value, ExitCode> {
    serde_json::from_str(text).map_err(|e| fail(&format!("{what} is not valid JSON: {e}")))
}

/// `switchboard send URL TYPE PAYLOAD [--room R | --to ID]`.
pub async fn send(
    target: &Target,
    kind: &str,
    payload: &str,
    room: Option<&str>,
    to: Option<&str>,
) -> ExitCode {
    let payload = match parse_json("PAYLOAD", payload) {
        Ok(v) => v,
        Err(code) => return code,
    };
    if !payload.is_object() {
        return fail("PAYLOAD must be a JSON object, like '{\"text\": \"hi\"}'");
    }
    let client = match target.connect(false).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let answer: Result<Value, RequestError> = client
        .request_envelope(kind, &payload, room, to, target.timeout)
        .await;
    client.close().await;
    match answer {
        Ok(v) => {
            if !v.is_null() {
                println!("{v}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => request_failed(&e),
    }
}

/// `switchboard call URL METHOD PARAMS`.
pub async fn call(target: &Target, method: &str, params: Option<&str>) -> ExitCode {
    let params = match params {
        Some(p) => match parse_json("PARAMS", p) {
            Ok(v) => v,
            Err(code) => return code,
        },
        None => json!({}),
    };
    let client = match target.connect(false).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let answer: Result<Value, RequestError> = client.call(method, &params, target.timeout).await;
    client.close().await;
    match answer {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => request_failed(&e),
    }
}

/// `switchboard listen URL [--room R] [--type T] [--count N]`.
pub async fn listen(
    target: &Target,
    rooms: &[String],
    kinds: &[String],
    count: Option<usize>,
) -> ExitCode {
    let client = match target.connect(true).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    report_connection_events(&client, true);
    let mut messages = client.messages(65_536);
    for room in rooms {
        if let Err(e) = client.join(room).await {
            client.close().await;
            return request_failed(&e);
        }
    }
    let mut printed = 0usize;
    loop {
        let next = tokio::select! {
            m = messages.next() => m,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(env) = next else { break };
        if is_noise(&env) || (!kinds.is_empty() && !kinds.contains(&env.kind)) {
            continue;
        }
        println!("{}", env.encode());
        printed += 1;
        if count.is_some_and(|n| printed >= n) {
            break;
        }
    }
    client.close().await;
    ExitCode::SUCCESS
}

/// Acks of the client's own bookkeeping (joins, rejoins, auth) are not news.
pub(crate) fn is_noise(env: &Envelope) -> bool {
    env.kind == "ack"
        && env
            .payload_as::<Value>()
            .ok()
            .and_then(|p| p["ref"].as_str().map(str::to_owned))
            .is_some_and(|r| r.starts_with("rejoin:") || r == "auth" || r.starts_with('r'))
}

/// What a reconnect recovered, in a few words.
fn describe_resume(outcome: &switchboard_client::ResumeOutcome) -> String {
    if !outcome.resumed {
        let why = outcome
            .reason
            .and_then(|r| serde_json::to_value(r).ok())
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        return format!("a new session: what was sent meanwhile is lost ({why})");
    }
    let streams = outcome
        .session
        .iter()
        .chain(outcome.all.iter())
        .chain(outcome.rooms.values());
    let (mut missed, mut lost) = (0, 0);
    for r in streams {
        if r.recovered {
            missed += r.missed;
        } else {
            lost += 1;
        }
    }
    match lost {
        0 => format!("session resumed, {missed} missed messages follow"),
        n => format!(
            "session resumed, {missed} missed messages follow; {n} streams could not be recovered"
        ),
    }
}

/// Prints reconnects and connection errors on stderr (and, interactively, the printer).
pub(crate) fn report_connection_events(
    client: &Client,
    to_stderr: bool,
) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let t = tx.clone();
    client.on_close(move |info| {
        if info.code == 1000 {
            return; // a normal close: ours, on /quit or at the end of a command
        }
        let msg = format!("* disconnected: {} {}", info.code, info.reason);
        if to_stderr {
            eprintln!("{msg}");
        }
        t.send(msg).ok();
    });
    let t = tx.clone();
    client.on_state(move |state| {
        if state == ConnectionState::Reconnecting {
            let msg = "* reconnecting...".to_owned();
            if to_stderr {
                eprintln!("{msg}");
            }
            t.send(msg).ok();
        }
    });
    let t = tx.clone();
    client.on_open(move |session| {
        let how = session
            .resumed
            .as_ref()
            .map(|o| format!(" ({})", describe_resume(o)))
            .unwrap_or_default();
        let msg = format!("* reconnected as {}{how}", session.client_id);
        if to_stderr {
            eprintln!("{msg}");
        }
        t.send(msg).ok();
    });
    client.on_error(move |e| {
        if let ClientError::Connection { .. } | ClientError::GaveUp { .. } = e {
            let msg = format!("* {e}");
            if to_stderr {
                eprintln!("{msg}");
            }
            tx.send(msg).ok();
        }
    });
    rx
}

/// How an incoming message reads for a person.
pub(crate) fn describe(env: &Envelope) -> String {
    let payload: Value = env.payload_as().unwrap_or(Value::Null);
    let from = env.from.as_deref().unwrap_or("server");
    let text = ["text", "content", "message"]
        .iter()
        .find_map(|k| payload[*k].as_str().map(str::to_owned));
    match env.kind.as_str() {
        "error" => format!(
            "! {}: {}",
            payload["code"].as_str().unwrap_or("?"),
            payload["message"].as_str().unwrap_or("")
        ),
        "ack" => match payload["status"].as_str() {
            Some("ok") => format!(
                "< ack {} ok {}",
                payload["ref"],
                payload.get("result").unwrap_or(&Value::Null)
            ),
            _ => format!(
                "< ack {} {}: {}",
                payload["ref"],
                payload["code"].as_str().unwrap_or("?"),
                payload["message"].as_str().unwrap_or("")
            ),
        },
        "user_joined" | "user_left" => format!(
            "* {} {} {}",
            payload["user_id"].as_str().unwrap_or("?"),
            if env.kind == "user_joined" {
                "joined"
            } else {
                "left"
            },
            payload["room_id"].as_str().unwrap_or("?")
        ),
        kind => {
            let body = text.unwrap_or_else(|| env.payload.get().to_owned());
            match &env.room {
                Some(room) => format!("[{room}] {from} {kind}: {body}"),
                None => format!("{from} {kind}: {body}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_a_scheme_and_a_path() {
        assert_eq!(normalize_url("localhost:8080"), "ws://localhost:8080/ws");
        assert_eq!(normalize_url("ws://h:1"), "ws://h:1/ws");
        assert_eq!(normalize_url("wss://h:1/chat"), "wss://h:1/chat");
        assert_eq!(normalize_url("ws://h:1/"), "ws://h:1/");
    }
}
