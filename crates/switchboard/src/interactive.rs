//! `switchboard connect`: the interactive client (a line editor on a terminal, plain
//! lines otherwise, or JSON lines with `--json`).

use std::io::IsTerminal;
use std::process::ExitCode;

use serde_json::{Value, json};
use switchboard_client::Client;
use tokio::sync::mpsc;

use crate::client_commands::{Target, describe, fail, report_connection_events};

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

/// What `/help` prints.
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
