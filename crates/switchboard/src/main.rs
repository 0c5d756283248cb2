//! `switchboard`: a ready real-time hub on the switchboard server library, and its
//! command-line clients (`connect`, `send`, `call`, `listen`).

mod access;
mod args;
mod client_commands;
mod hub;
mod interactive;
mod logs;
mod serve;
mod settings;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

/// mimalloc rather than the system's allocator: an idle connection costs about 400 bytes
/// less (docs/benchmarks.md), and RPC is a little faster. Its version 2 (the `v2`
/// feature): version 3 gives a block aligned to 128 bytes (tokio's task cells) the
/// next power of two, so each connection's 384-byte task took 512 bytes.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server logs at info; the client commands keep stderr for what matters.
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let _telemetry = logs::init(cli.log_format, default_level);
    match cli.command {
        Command::Serve(args) => match serve::serve(*args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchboard: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Config { example } => {
            if example {
                print!("{}", settings::EXAMPLE);
            } else {
                println!("switchboard config --example   prints a commented config file");
            }
            ExitCode::SUCCESS
        }
        Command::Connect { target, json } => interactive::connect(&target, json).await,
        Command::Send {
            target,
            kind,
            payload,
            room,
            to,
        } => client_commands::send(&target, &kind, &payload, room.as_deref(), to.as_deref()).await,
        Command::Call {
            target,
            method,
            params,
        } => client_commands::call(&target, &method, params.as_deref()).await,
        Command::Listen {
            target,
            rooms,
            kinds,
            count,
        } => client_commands::listen(&target, &rooms, &kinds, count).await,
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "switchboard", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
    }
}
