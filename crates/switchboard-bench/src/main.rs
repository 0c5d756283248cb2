//! `switchboard-bench`: a load generator, and the servers it measures side by side.
//!
//! It starts every server itself as a child process (`switchboard serve`, the bare
//! tokio-tungstenite floor `switchboard-floor`, Node's Socket.IO, or an older switchboard
//! build as the `baseline`), drives it over loopback with many connections per task and
//! pre-encoded frames, and reports throughput, latency percentiles, server CPU per
//! message and server memory, with ratios to the floor. Every run is bounded in time
//! and count. Not part of the product: this crate is never published.

#![allow(missing_docs)]

mod chart;
mod histogram;
mod load;
mod report;
mod scenarios;
mod server;
mod socket_config;
mod sweep;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use load::round_trips;
use report::{Report, print, print_medians};
use scenarios::{fanout, idle, rooms, storm};
use server::ServerProc;

/// `5s`, `250ms`, `2m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len()),
    );
    let n: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text:?}"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("not a duration: {text:?} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
}

/// What `bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Round trips per connection (ping/pong on switchboard, echo on the floor).
    Echo,
    /// Calls through the RPC path (`echo` method), one in flight per connection.
    Rpc,
    /// One publisher, N receivers: deliveries per second, latency, CPU per delivery.
    Fanout,
    /// M rooms of K members, one publisher in each: deliveries per second.
    Rooms,
    /// N idle connections (authenticated, each in a room): server memory per connection.
    Idle,
    /// A broadcast storm while `--stalled` clients stop reading: server memory stays
    /// bounded (the slow-consumer policy cuts them off), the others get everything.
    Storm,
}

/// Which servers to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// switchboard (`switchboard serve`: `--bin`, `SWITCHBOARD_BIN`, or the
    /// `switchboard` next to this program).
    Switchboard,
    /// A bare tokio-tungstenite server with 4 KiB buffers, shaped like a hub (a reader,
    /// a writer and a channel per connection; broadcasts): the floor for fan-out.
    Floor,
    /// A bare tokio-tungstenite server that only echoes, one task per connection: the
    /// floor for echo and RPC (ratios are to it when it runs).
    EchoFloor,
    /// The server a user would write by hand with tokio-tungstenite and serde_json,
    /// speaking switchboard's envelope: `ping` answered by `pong`, an `rpc` call of
    /// `echo` by its ack, each frame decoded into typed structs and nothing else
    /// checked (the floor for what a typed JSON message costs).
    JsonFloor,
    /// Node's Socket.IO 4 (needs `npm install` in bench/socketio).
    Socketio,
    /// socketioxide, the Rust Socket.IO server (`switchboard-socketioxide`, built with
    /// `--features socketioxide`): the Rust peer users would pick instead.
    Socketioxide,
    /// Another switchboard binary (`--baseline-bin`), side by side with this one: a
    /// before/after comparison in one run.
    Baseline,
    /// switchboard with the load's connections in MessagePack (the subprotocol
    /// `switchboard.v1.msgpack`): the same scenario in binary envelopes.
    SwitchboardMsgpack,
}

/// What a target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Switchboard,
    Floor,
    Socketio,
}

impl Target {
    /// The protocol this target speaks (a baseline speaks switchboard's).
    pub fn protocol(self) -> Protocol {
        match self {
            Target::Switchboard
            | Target::Baseline
            | Target::SwitchboardMsgpack
            | Target::JsonFloor => Protocol::Switchboard,
            Target::Floor | Target::EchoFloor => Protocol::Floor,
            Target::Socketio | Target::Socketioxide => Protocol::Socketio,
        }
    }

    /// The subprotocol its connections offer.
    pub fn subprotocol(self) -> Option<&'static str> {
        (self == Target::SwitchboardMsgpack).then_some(switchboard_proto::msgpack::SUBPROTOCOL)
    }
}

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "switchboard-bench",
    version,
    about = "Measures switchboard side by side with a bare tokio-tungstenite floor, Socket.IO, or an older build.",
    long_about = "Measures switchboard side by side with a bare tokio-tungstenite floor, Socket.IO, or an older build (the baseline). Every run is bounded, targets loopback only, and starts its own servers.",
    after_help = "Examples:
  switchboard-bench echo -n 100 -d 3s --rounds 3     # targets take turns; medians
  switchboard-bench rpc -n 100 --rate 40000          # latency at a fixed rate
  switchboard-bench fanout -n 1000 --messages 2000
  switchboard-bench rooms -n 1000 --rooms 50 --messages 200
  switchboard-bench idle -n 10000
  switchboard-bench idle --sweep 1000,5000,19000 --chart docs/scaling   # PNG curves
  switchboard-bench storm -n 100 --stalled 10 --messages 10000 --size 4096 --rate 1000
  switchboard-bench fanout -n 1000 --nodes 3 --redis redis://127.0.0.1:6379
  switchboard-bench rooms -n 300 --rooms 30 --nodes 3 --nats nats://127.0.0.1:4222
  switchboard-bench echo --target switchboard --target floor --target socketio
  switchboard-bench echo --rounds 5 --target switchboard --target baseline --baseline-bin old/switchboard
  taskset -c 1 switchboard-bench rpc --wrap \"taskset -c 0\"   # server and load apart
  switchboard-bench echo -d 3s --wrap \"valgrind --tool=callgrind\"   # profile"
)]
pub struct BenchArgs {
    /// The scenario.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// The servers to compare (repeat; default switchboard and the floor).
    #[arg(long = "target", value_enum)]
    pub targets: Vec<Target>,
    /// Connections (receivers for fanout; total for idle).
    #[arg(long, short = 'n', default_value_t = 100)]
    pub connections: usize,
    /// How long each measurement lasts.
    #[arg(long, short = 'd', default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Messages per publisher (fanout, rooms).
    #[arg(long, default_value_t = 1000)]
    pub messages: usize,
    /// Rooms (rooms scenario).
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Clients that stop reading (storm scenario).
    #[arg(long, default_value_t = 10)]
    pub stalled: usize,
    /// About how many bytes each broadcast message has (fanout, storm).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Fan-out: the floor broadcasts only the payload (`{"t":…,"p":…}`, about 45 bytes
    /// at the default size). Without it, the publisher sends the floor a frame with the
    /// fields switchboard's deliveries carry (`type`, `payload`, `to`, `from`, `offset`:
    /// about 120 bytes), which the floor relays as it is, so both servers' receivers
    /// read the same bytes and the rates compare the servers, not the load's parsing.
    #[arg(long)]
    pub bare_floor_frames: bool,
    /// Total calls or messages per second to pace at (latency runs); 0 is as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Load tasks (each drives many connections).
    #[arg(long, default_value_t = 4)]
    pub tasks: usize,
    /// Run switchboard as this many nodes (fanout, rooms), with --redis or --nats.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// The Redis for --nodes.
    #[arg(long)]
    pub redis: Option<String>,
    /// The NATS (with JetStream) for --nodes.
    #[arg(long, conflicts_with = "redis")]
    pub nats: Option<String>,
    /// Measure every target this many times, taking turns (floor, switchboard, floor,
    /// ...), and report the medians: the machine's noise moves single runs a lot.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Run each server under this command, for profiling: `--wrap "valgrind
    /// --tool=callgrind"`. Servers are then stopped with SIGTERM, so the profiler can
    /// write its data.
    #[arg(long)]
    pub wrap: Option<String>,
    /// The `switchboard` binary to measure (default: `SWITCHBOARD_BIN`, else the one
    /// next to this program).
    #[arg(long = "bin")]
    pub switchboard_bin: Option<String>,
    /// The binary of the `baseline` target (an older build, for before/after runs).
    #[arg(long)]
    pub baseline_bin: Option<String>,
    /// Measure at each of these sizes instead of `-n` (comma-separated: connections, or
    /// a fan-out's receivers), to see how the cost grows.
    #[arg(long, value_delimiter = ',')]
    pub sweep: Vec<usize>,
    /// With `--sweep`: write the curves as PNG charts, `PREFIX-memory.png` (idle) or
    /// `PREFIX-rate.png` and `PREFIX-cpu.png` (the others).
    #[arg(long, requires = "sweep")]
    pub chart: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(BenchArgs::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs `switchboard bench`.
async fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    if args.targets.is_empty() {
        let floor = match args.scenario {
            Scenario::Echo | Scenario::Rpc => Target::EchoFloor,
            _ => Target::Floor,
        };
        args.targets = vec![floor, Target::Switchboard];
    }
    if !matches!(
        args.scenario,
        Scenario::Echo | Scenario::Rpc | Scenario::Idle
    ) && args.targets.contains(&Target::EchoFloor)
    {
        eprintln!(
            "(the echo floor only echoes; skipped for {:?})",
            args.scenario
        );
        args.targets.retain(|t| *t != Target::EchoFloor);
    }
    if !matches!(args.scenario, Scenario::Echo | Scenario::Rpc)
        && args.targets.contains(&Target::JsonFloor)
    {
        eprintln!(
            "(the JSON floor answers `ping` and `rpc` only; skipped for {:?})",
            args.scenario
        );
        args.targets.retain(|t| *t != Target::JsonFloor);
    }
    if matches!(args.scenario, Scenario::Rooms) && args.targets.contains(&Target::Floor) {
        eprintln!("(the floor has no rooms; skipped for `rooms`)");
        args.targets.retain(|t| *t != Target::Floor);
    }
    if !args.sweep.is_empty() {
        return sweep::run(&args).await;
    }
    let reports = measure_rounds(&args).await?;
    print_tables(&args, &reports);
    Ok(())
}

/// A run's table, and the medians' when there were rounds.
pub(crate) fn print_tables(args: &BenchArgs, reports: &[Report]) {
    print(args.scenario, reports);
    if args.rounds > 1 {
        print_medians(args.scenario, &args.targets, reports);
    }
}

/// Every target measured `--rounds` times, taking turns.
pub(crate) async fn measure_rounds(args: &BenchArgs) -> anyhow::Result<Vec<Report>> {
    let rounds = args.rounds.max(1);
    let mut reports = Vec::new();
    for round in 1..=rounds {
        for &target in &args.targets {
            eprintln!(
                "== {:?}: {:?}, {} connections{}",
                args.scenario,
                target,
                args.connections,
                if rounds > 1 {
                    format!(" (round {round} of {rounds})")
                } else {
                    String::new()
                }
            );
            let mut report = measure(target, args).await?;
            report.round = round;
            reports.push(report);
        }
    }
    Ok(reports)
}

/// The servers of a fanout or rooms run: one, or `--nodes` over Redis or NATS.
fn start_nodes(target: Target, args: &BenchArgs) -> anyhow::Result<Vec<ServerProc>> {
    if target.protocol() != Protocol::Switchboard || args.nodes <= 1 {
        return Ok(vec![ServerProc::start(target, &[], args)?]);
    }
    let link = match (&args.redis, &args.nats) {
        (Some(url), _) => ["--redis", url.as_str()],
        (None, Some(url)) => ["--nats", url.as_str()],
        (None, None) => anyhow::bail!("--nodes needs --redis or --nats"),
    };
    (0..args.nodes)
        .map(|_| ServerProc::start(target, &link, args))
        .collect()
}

fn broker(args: &BenchArgs) -> &'static str {
    if args.nats.is_some() { "NATS" } else { "Redis" }
}

/// One measurement of one target: starts its server(s), drives them, stops them.
pub(crate) async fn measure(target: Target, args: &BenchArgs) -> anyhow::Result<Report> {
    Ok(match args.scenario {
        Scenario::Echo | Scenario::Rpc => {
            let server = ServerProc::start(target, &[], args)?;
            let request = match (args.scenario, target.protocol()) {
                (Scenario::Echo, Protocol::Switchboard) => r#"{"type":"ping"}"#,
                (Scenario::Rpc, Protocol::Switchboard) => {
                    r#"{"type":"rpc","ref":"{n}","payload":{"method":"echo","params":{"message":"hello"}}}"#
                }
                // An RPC is an event answered by its ack.
                (Scenario::Rpc, Protocol::Socketio) => r#"42{n}["rpc","hello"]"#,
                (_, Protocol::Socketio) => r#"42["echo","hello"]"#,
                _ => r#"{"type":"ping","payload":{"p":"hello"}}"#,
            };
            round_trips(
                target,
                &server,
                args.connections,
                args.tasks,
                args.duration,
                args.rate,
                load::Request::new(target, request),
            )
            .await?
        }
        Scenario::Fanout => {
            let servers = start_nodes(target, args)?;
            let mut r = fanout(target, &servers, args).await?;
            if servers.len() > 1 {
                r.note = format!("{} nodes over {}. {}", servers.len(), broker(args), r.note);
            }
            r
        }
        Scenario::Rooms => {
            let servers = start_nodes(target, args)?;
            let mut r = rooms(target, &servers, args).await?;
            if servers.len() > 1 {
                r.note = format!("{} nodes over {}. {}", servers.len(), broker(args), r.note);
            }
            r
        }
        Scenario::Storm => {
            let server = ServerProc::start(target, &[], args)?;
            storm(target, &server, args).await?
        }
        Scenario::Idle => {
            // switchboard's connections authenticate, as the budget says.
            let server = ServerProc::start_env(
                target,
                &[],
                &[("SWITCHBOARD_PASSWORD", "bench-password")],
                args,
            )?;
            idle(target, &server, args).await?
        }
    })
}
