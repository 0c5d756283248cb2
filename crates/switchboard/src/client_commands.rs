//! The client commands: `connect` (interactive), `send`, `call` and `listen`.

use std::io::IsTerminal;
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

    async fn connect(&self, reconnect: bool) -> Result<Client, ExitCode> {
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

fn fail(message: &str) -> ExitCode {
    eprintln!("switchboard: {message}");
    ExitCode::from(EXIT_FAILURE)
}

fn connect_failed(url: &str, e: &ConnectError) -> ExitCode {
    match e {
        ConnectError::Refused { code, message, .. } => {
            eprintln!("{code}: {message}");
            ExitCode::from(EXIT_REMOTE)
        }
        other => fail(&format!("{url}: {other}")),
    }
}

fn request_failed(e: &RequestError) -> ExitCode {
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

fn parse_json(what: &str, text: &str) -> Result<Value, ExitCode> {
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
fn is_noise(env: &Envelope) -> bool {
    env.kind == "ack"
        && env
            .payload_as::<Value>()
            .ok()
            .and_then(|p| p["ref"].as_str().map(str::to_owned))
            .is_some_and(|r| r.starts_with("rejoin:") || r == "auth" || r.starts_with('r'))
}

/// Prints reconnects and connection errors on stderr (and, interactively, the printer).
fn report_connection_events(client: &Client, to_stderr: bool) -> mpsc::UnboundedReceiver<String> {
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
        let msg = format!("* reconnected as {}", session.client_id);
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
fn describe(env: &Envelope) -> String {
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

const HELP: &str = "\
Type a JSON envelope, text (sent to the last room you joined), or a command:
  /join ROOM            join a room (it becomes the current room)
  /leave ROOM           leave a room
  /room ROOM TEXT       send TEXT to a room
  /to ID TEXT           send TEXT to one client
  /call METHOD {json}   call an RPC method and print its result
  /methods              list the server's RPC methods
  /rooms                the rooms you are in
  /id                   your client id
  /quit                 leave (or Ctrl-D)";

/// `switchboard connect URL`: an interactive client.
pub async fn connect(target: &Target, json_mode: bool) -> ExitCode {
    let client = match target.connect(true).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let interactive = !json_mode && std::io::stdin().is_terminal();
    let session = client.session();
    if !json_mode {
        println!(
            "connected to {} ({}) as {}. /help for commands.",
            target.url(),
            session.server,
            session.client_id
        );
    }
    // Everything printed goes through one channel, so it never tears the input line.
    let (out_tx, out_rx) = mpsc::unbounded_channel::<String>();
    let mut events = report_connection_events(&client, json_mode);
    {
        let out = out_tx.clone();
        tokio::spawn(async move {
            while let Some(line) = events.recv().await {
                if !json_mode {
                    out.send(line).ok();
                }
            }
        });
    }
    {
        let out = out_tx.clone();
        client.on_message(move |env| {
            if env.kind == "ack"
                && env
                    .payload_as::<Value>()
                    .ok()
                    .and_then(|p| p["ref"].as_str().map(str::to_owned))
                    .is_some_and(|r| r.starts_with("rejoin:") || r == "auth" || r.starts_with('r'))
                && !json_mode
            {
                return; // our own requests print their own results
            }
            out.send(if json_mode {
                env.encode()
            } else {
                describe(env)
            })
            .ok();
        });
        client.on_binary(move |data| {
            out_tx.send(format!("<binary, {} bytes>", data.len())).ok();
        });
    }

    let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
    if interactive {
        if let Err(e) = spawn_editor(lines_tx, out_rx) {
            return fail(&format!("cannot start the line editor: {e}"));
        }
    } else {
        spawn_plain_io(lines_tx, out_rx);
    }

    let mut current_room: Option<String> = None;
    let say = |line: String| {
        if json_mode {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    while let Some(line) = lines.recv().await {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match run_line(&client, target, line, &mut current_room).await {
            Step::Continue(Some(out)) => say(out),
            Step::Continue(None) => {}
            Step::Quit => break,
        }
    }
    client.close().await;
    ExitCode::SUCCESS
}

enum Step {
    Continue(Option<String>),
    Quit,
}

async fn run_line(
    client: &Client,
    target: &Target,
    line: &str,
    current_room: &mut Option<String>,
) -> Step {
    let t = target.timeout;
    let (cmd, rest) = match line.split_once(char::is_whitespace) {
        Some((c, r)) => (c, r.trim()),
        None => (line, ""),
    };
    let text_payload = |text: &str| json!({ "text": text });
    let out = match cmd {
        "/quit" | "/exit" => return Step::Quit,
        "/help" => HELP.to_owned(),
        "/id" => client.id(),
        "/rooms" => format!("rooms: {}", client.rooms().join(", ")),
        "/join" if !rest.is_empty() => match client.join(rest).await {
            Ok(()) => {
                *current_room = Some(rest.to_owned());
                format!("joined {rest}")
            }
            Err(e) => format!("! {e}"),
        },
        "/leave" if !rest.is_empty() => match client.leave(rest).await {
            Ok(()) => {
                if current_room.as_deref() == Some(rest) {
                    *current_room = None;
                }
                format!("left {rest}")
            }
            Err(e) => format!("! {e}"),
        },
        "/room" | "/to" => {
            let Some((dest, text)) = rest.split_once(char::is_whitespace) else {
                return Step::Continue(Some(format!(
                    "usage: {cmd} {} TEXT",
                    if cmd == "/to" { "ID" } else { "ROOM" }
                )));
            };
            let sent = if cmd == "/room" {
                client
                    .send_to(dest, "message", &text_payload(text.trim()))
                    .await
            } else {
                client
                    .send_direct(dest, "message", &text_payload(text.trim()))
                    .await
            };
            match sent {
                Ok(()) => return Step::Continue(None),
                Err(e) => format!("! {e}"),
            }
        }
        "/call" if !rest.is_empty() => {
            let (method, params) = match rest.split_once(char::is_whitespace) {
                Some((m, p)) => (m, p.trim()),
                None => (rest, "{}"),
            };
            match serde_json::from_str::<Value>(params) {
                Err(e) => format!("! params are not valid JSON: {e}"),
                Ok(params) => match client.call::<Value, _>(method, &params, t).await {
                    Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
                    Err(e) => format!("! {e}"),
                },
            }
        }
        "/methods" => match client.methods(t).await {
            Ok(list) => list
                .iter()
                .map(|m| {
                    format!(
                        "  {:<16} {}",
                        m["name"].as_str().unwrap_or("?"),
                        m["description"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("! {e}"),
        },
        _ if line.starts_with('{') => match serde_json::from_str::<Value>(line) {
            Err(e) => format!("! not valid JSON: {e}"),
            Ok(_) => match client.send_text(line).await {
                Ok(()) => return Step::Continue(None),
                Err(e) => format!("! {e}"),
            },
        },
        _ if line.starts_with('/') => format!("unknown command `{cmd}`; /help lists them"),
        _ => match current_room.as_deref() {
            Some(room) => match client.send_to(room, "message", &text_payload(line)).await {
                Ok(()) => return Step::Continue(None),
                Err(e) => format!("! {e}"),
            },
            None => "join a room first (/join ROOM), or type a JSON envelope; /help".to_owned(),
        },
    };
    Step::Continue(Some(out))
}

/// The line editor on its own thread: history, editing, and incoming messages printed
/// above the line being typed.
fn spawn_editor(
    lines: mpsc::UnboundedSender<String>,
    mut output: mpsc::UnboundedReceiver<String>,
) -> rustyline::Result<()> {
    use rustyline::ExternalPrinter as _;
    let mut editor = rustyline::DefaultEditor::new()?;
    let mut printer = editor.create_external_printer()?;
    tokio::spawn(async move {
        while let Some(line) = output.recv().await {
            if printer.print(format!("{line}\n")).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        loop {
            match editor.readline("switchboard> ") {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                    }
                    if lines.send(line).is_err() {
                        break;
                    }
                }
                // Ctrl-C, Ctrl-D, or the terminal went away.
                Err(_) => {
                    let _ = lines.send("/quit".to_owned());
                    break;
                }
            }
        }
    });
    Ok(())
}

/// Without a terminal (scripts, `--json`): lines from stdin, output to stdout.
fn spawn_plain_io(
    lines: mpsc::UnboundedSender<String>,
    mut output: mpsc::UnboundedReceiver<String>,
) {
    tokio::spawn(async move {
        while let Some(line) = output.recv().await {
            println!("{line}");
        }
    });
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = stdin.next_line().await {
            if lines.send(line).is_err() {
                return;
            }
        }
        let _ = lines.send("/quit".to_owned());
    });
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
