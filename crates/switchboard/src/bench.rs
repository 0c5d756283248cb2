//! `switchboard bench`: a load generator, and the servers it measures side by side.
//!
//! It starts every server itself as a child process (this binary's `serve`, the bare
//! tokio-tungstenite floor `bench-floor`, and optionally Node's Socket.IO), drives it
//! over loopback with many connections per task and pre-encoded frames, and reports
//! throughput, latency percentiles, server CPU per message and server memory, with
//! ratios to the floor. Every run is bounded in time and count.

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Ws = WebSocketStream<TcpStream>;

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
    /// switchboard (this binary's `serve`).
    Switchboard,
    /// A bare tokio-tungstenite server with 4 KiB buffers: the floor.
    Floor,
    /// Node's Socket.IO 4 (needs `npm install` in bench/socketio).
    Socketio,
}

#[derive(Debug, Clone, clap::Args)]
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
    #[arg(long, short = 'd', default_value = "5s", value_parser = crate::settings::parse_duration)]
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
    /// Total calls or messages per second to pace at (latency runs); 0 is as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Load tasks (each drives many connections).
    #[arg(long, default_value_t = 4)]
    pub tasks: usize,
    /// Run switchboard as this many nodes over Redis (fanout), with --redis.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// The Redis for --nodes.
    #[arg(long)]
    pub redis: Option<String>,
    /// Measure every target this many times, taking turns (floor, switchboard, floor,
    /// ...), and report the medians: the machine's noise moves single runs a lot.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Run each server under this command, for profiling: `--wrap "valgrind
    /// --tool=callgrind"`. Servers are then stopped with SIGTERM, so the profiler can
    /// write its data.
    #[arg(long)]
    pub wrap: Option<String>,
}

/// The servers run by this process: spawns this binary or node.
struct ServerProc {
    child: Child,
    addr: SocketAddr,
    path: &'static str,
    /// Run under a profiler: stop it gently.
    wrapped: bool,
}

impl ServerProc {
    fn spawn(
        program: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        path: &'static str,
        wrap: Option<&str>,
    ) -> anyhow::Result<ServerProc> {
        let mut words: Vec<&str> = wrap
            .map(|w| w.split_whitespace().collect())
            .unwrap_or_default();
        words.push(program);
        words.extend_from_slice(args);
        let mut child = Command::new(words[0])
            .args(&words[1..])
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut line = String::new();
        std::io::BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
        )
        .read_line(&mut line)?;
        let addr = line
            .split("://")
            .nth(1)
            .and_then(|r| r.split(['/', ' ']).next())
            .ok_or_else(|| anyhow::anyhow!("{program}: unexpected first line {line:?}"))?
            .parse()?;
        Ok(ServerProc {
            child,
            addr,
            path,
            wrapped: wrap.is_some(),
        })
    }

    fn start(target: Target, extra: &[&str], args: &BenchArgs) -> anyhow::Result<ServerProc> {
        ServerProc::start_env(target, extra, &[], args)
    }

    fn start_env(
        target: Target,
        extra: &[&str],
        envs: &[(&str, &str)],
        bench: &BenchArgs,
    ) -> anyhow::Result<ServerProc> {
        let wrap = bench.wrap.as_deref();
        let me = std::env::current_exe()?;
        let me = me.to_string_lossy().into_owned();
        match target {
            Target::Switchboard => {
                let mut args = vec![
                    "serve",
                    "--port",
                    "0",
                    "--rate-limit",
                    "0",
                    "--max-connections",
                    "1000000",
                    "--heartbeat-interval",
                    "0",
                ];
                args.extend_from_slice(extra);
                ServerProc::spawn(&me, &args, envs, "/ws", wrap)
            }
            Target::Floor => {
                ServerProc::spawn(&me, &["bench-floor", "--port", "0"], &[], "/", wrap)
            }
            Target::Socketio => {
                let script = std::env::var("SOCKETIO_SERVER")
                    .unwrap_or_else(|_| "bench/socketio/server.mjs".to_owned());
                install_socketio(&script)?;
                let path = "/socket.io/?EIO=4&transport=websocket";
                ServerProc::spawn("node", &[&script], &[], path, wrap)
            }
        }
    }

    fn url(&self) -> String {
        format!("ws://{}{}", self.addr, self.path)
    }

    /// Resident memory (bytes) and CPU time (user + system) of the server process.
    fn usage(&self) -> (u64, Duration) {
        let pid = self.child.id();
        let rss = rss_of(pid);
        let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let after = s.rsplit_once(')')?.1;
                let f: Vec<&str> = after.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0);
        // Linux reports CPU time in clock ticks of 1/100 s.
        (rss, Duration::from_millis(ticks * 10))
    }
}

/// Installs the Socket.IO server's packages from npm (`npm ci` beside its script) unless
/// they are there.
fn install_socketio(script: &str) -> anyhow::Result<()> {
    let dir = std::path::Path::new(script)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if dir.join("node_modules/socket.io").is_dir() {
        return Ok(());
    }
    eprintln!("  installing socket.io in {} (npm ci)...", dir.display());
    let ok = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--silent"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| {
            anyhow::anyhow!("cannot run npm (Node.js 20+ is needed for --target socketio): {e}")
        })?
        .success();
    anyhow::ensure!(ok, "npm ci failed in {}", dir.display());
    Ok(())
}

/// A process's resident memory in bytes (0 if it cannot be read).
fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if self.wrapped {
            // SIGTERM, so that a profiler writes what it gathered.
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A log-linear latency histogram in microseconds: no allocation per sample.
#[derive(Clone)]
struct Histogram {
    buckets: Vec<u64>,
    count: u64,
}

impl Histogram {
    const SUB: u64 = 16;

    fn new() -> Histogram {
        Histogram {
            buckets: vec![0; 64 * Self::SUB as usize],
            count: 0,
        }
    }

    fn index(us: u64) -> usize {
        if us < Self::SUB {
            return us as usize;
        }
        let exp = 63 - us.leading_zeros() as u64; // >= 4
        let sub = (us >> (exp - 4)) & (Self::SUB - 1);
        ((exp - 3) * Self::SUB + sub) as usize
    }

    fn value(index: usize) -> u64 {
        let i = index as u64;
        if i < Self::SUB {
            return i;
        }
        let exp = i / Self::SUB + 3;
        let sub = i % Self::SUB;
        (Self::SUB + sub) << (exp - 4)
    }

    fn record(&mut self, us: u64) {
        let i = Self::index(us).min(self.buckets.len() - 1);
        self.buckets[i] += 1;
        self.count += 1;
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
    }

    fn percentile(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let want = ((self.count as f64) * p).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Self::value(i);
            }
        }
        0
    }
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .max_message_size(Some(1 << 20))
}

/// Opens one WebSocket from `source` (a 127.0.0.x address, for more than 64k sockets).
async fn open(url: &str, addr: SocketAddr, source: Option<IpAddr>) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config())).await?;
    Ok(ws)
}

/// Reads until a text frame; answers Socket.IO's pings.
async fn next_text(ws: &mut Ws) -> anyhow::Result<tokio_tungstenite::tungstenite::Utf8Bytes> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if t.as_str() == "2" {
                    ws.send(Message::text("3")).await?; // Engine.IO ping
                    continue;
                }
                return Ok(t);
            }
            Some(Ok(Message::Close(f))) => anyhow::bail!("closed: {f:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("connection dropped"),
        }
    }
}

/// Connects and completes the target's own handshake.
async fn connect(
    target: Target,
    server: &ServerProc,
    source: Option<IpAddr>,
) -> anyhow::Result<Ws> {
    let mut ws = open(&server.url(), server.addr, source).await?;
    match target {
        Target::Switchboard => {
            next_text(&mut ws).await?; // connected
        }
        Target::Floor => {}
        Target::Socketio => {
            next_text(&mut ws).await?; // 0{sid...}
            ws.send(Message::text("40")).await?;
            next_text(&mut ws).await?; // 40{sid}
        }
    }
    Ok(ws)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The `"t":<micros>` stamp in a frame, found without parsing it.
fn stamp(frame: &str) -> Option<u64> {
    let at = frame.find("\"t\":")? + 4;
    let digits: &str = &frame[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

struct Report {
    target: Target,
    ops: u64,
    seconds: f64,
    latency: Histogram,
    cpu: Duration,
    rss_delta: i64,
    note: String,
    /// Which round of `--rounds` (1-based).
    round: usize,
}

impl Report {
    fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ops as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Round trips: each connection sends `request` and waits for any answer, until the deadline.
async fn round_trips(
    target: Target,
    server: &ServerProc,
    n: usize,
    tasks: usize,
    duration: Duration,
    rate: u64,
    request: Message,
) -> anyhow::Result<Report> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(connect(target, server, None).await?);
    }
    let (_, cpu0) = server.usage();
    let start = Instant::now();
    let deadline = start + duration;
    let pace = (rate > 0).then(|| Pacer::start(rate, deadline));
    let tasks = tasks.clamp(1, n.max(1));
    let mut groups: Vec<Vec<Ws>> = (0..tasks).map(|_| Vec::new()).collect();
    for (i, c) in conns.into_iter().enumerate() {
        groups[i % tasks].push(c);
    }
    let mut handles = Vec::new();
    for group in groups {
        let request = request.clone();
        let tokens = pace.as_ref().map(|p| p.tokens.clone());
        handles.push(tokio::spawn(async move {
            let runs = group.into_iter().map(|mut ws| {
                let (request, tokens) = (request.clone(), tokens.clone());
                async move {
                    let mut hist = Histogram::new();
                    let mut ops = 0u64;
                    while Instant::now() < deadline {
                        if let Some(tokens) = &tokens {
                            match tokens.acquire().await {
                                Ok(permit) => permit.forget(),
                                Err(_) => break,
                            }
                        }
                        let sent = Instant::now();
                        if ws.send(request.clone()).await.is_err()
                            || next_text(&mut ws).await.is_err()
                        {
                            break;
                        }
                        hist.record(sent.elapsed().as_micros() as u64);
                        ops += 1;
                    }
                    let _ = ws.close(None).await;
                    (ops, hist)
                }
            });
            drive(runs).await
        }));
    }
    let mut report = Report {
        target,
        ops: 0,
        seconds: 0.0,
        latency: Histogram::new(),
        cpu: Duration::ZERO,
        rss_delta: 0,
        note: String::new(),
        round: 0,
    };
    for h in handles {
        for (ops, hist) in h.await? {
            report.ops += ops;
            report.latency.merge(&hist);
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.cpu = server.usage().1.saturating_sub(cpu0);
    drop(pace);
    Ok(report)
}

/// Paces requests at a fixed rate: a thread hands out send tokens every 100 us (tokio's
/// timers tick by the millisecond, which would send each millisecond's requests in one
/// burst, and measure the burst's queueing rather than the server). Connections wait
/// for a token, send, and wait for the answer; latency counts from the send.
struct Pacer {
    tokens: Arc<tokio::sync::Semaphore>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pacer {
    fn start(rate: u64, deadline: Instant) -> Pacer {
        let tokens = Arc::new(tokio::sync::Semaphore::new(0));
        let handed = tokens.clone();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut given = 0u64;
            while Instant::now() < deadline {
                let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                if due > given {
                    handed.add_permits((due - given) as usize);
                    given = due;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            // Let waiting connections see the deadline.
            handed.close();
        });
        Pacer {
            tokens,
            thread: Some(thread),
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.tokens.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The frame a publisher sends, stamped with the send time.
fn tick(target: Target, pad: &str) -> Message {
    let t = now_us();
    match target {
        Target::Switchboard => Message::text(format!(
            r#"{{"type":"tick","to":"others","payload":{{"t":{t},"p":"{pad}"}}}}"#
        )),
        Target::Floor => Message::text(format!(r#"{{"t":{t},"p":"{pad}"}}"#)),
        Target::Socketio => Message::text(format!(r#"42["tick",{{"t":{t},"p":"{pad}"}}]"#)),
    }
}

/// The padding that makes a `tick` about `size` bytes on the wire.
fn padding(size: usize) -> String {
    "x".repeat(size.saturating_sub(48).max(1))
}

fn room_tick(target: Target, room: &str) -> Message {
    let t = now_us();
    match target {
        Target::Socketio => Message::text(format!(r#"42["room",{{"room":"{room}","t":{t}}}]"#)),
        _ => Message::text(format!(
            r#"{{"type":"tick","room":"{room}","payload":{{"t":{t}}}}}"#
        )),
    }
}

/// Drives many futures in one task, polling only those that were woken (a plain
/// `join_all` of a few dozen polls them all on every wake-up).
async fn drive<F: std::future::Future>(runs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut runs: futures_util::stream::FuturesUnordered<F> = runs.into_iter().collect();
    let mut done = Vec::with_capacity(runs.len());
    while let Some(out) = runs.next().await {
        done.push(out);
    }
    done
}

/// What the receivers of one task saw: latencies, and how many were cut off.
type Received = (Histogram, u64);

/// Receivers count deliveries and record latency until `expected` or the deadline.
fn spawn_receivers(
    receivers: Vec<Ws>,
    tasks: usize,
    counter: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Received>> {
    let tasks = tasks.clamp(1, receivers.len().max(1));
    let mut groups: Vec<Vec<Ws>> = (0..tasks).map(|_| Vec::new()).collect();
    for (i, c) in receivers.into_iter().enumerate() {
        groups[i % tasks].push(c);
    }
    groups
        .into_iter()
        .map(|group| {
            let (counter, stop) = (counter.clone(), stop.clone());
            tokio::spawn(async move {
                let runs = group.into_iter().map(|mut ws| {
                    let (counter, stop) = (counter.clone(), stop.clone());
                    async move {
                        let mut hist = Histogram::new();
                        let mut cut_off = 0;
                        while !stop.load(Ordering::Relaxed) {
                            let next = tokio::time::timeout(
                                Duration::from_millis(100),
                                next_text(&mut ws),
                            )
                            .await;
                            match next {
                                Ok(Ok(t)) => {
                                    if let Some(sent) = stamp(t.as_str()) {
                                        hist.record(now_us().saturating_sub(sent));
                                        counter.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                Ok(Err(_)) => {
                                    cut_off = 1;
                                    break;
                                }
                                Err(_) => {}
                            }
                        }
                        (hist, cut_off)
                    }
                });
                let mut total = (Histogram::new(), 0);
                for (h, cut) in drive(runs).await {
                    total.0.merge(&h);
                    total.1 += cut;
                }
                total
            })
        })
        .collect()
}

/// Stops the receivers and builds the report of a fan-out or rooms run.
async fn delivery_report(
    target: Target,
    counter: &AtomicU64,
    stop: &AtomicBool,
    handles: Vec<tokio::task::JoinHandle<Received>>,
    took: Duration,
    cpu: Duration,
    expected: u64,
) -> Report {
    stop.store(true, Ordering::Relaxed);
    let mut latency = Histogram::new();
    let mut cut_off = 0;
    for h in handles {
        if let Ok((hist, cut)) = h.await {
            latency.merge(&hist);
            cut_off += cut;
        }
    }
    let ops = counter.load(Ordering::Relaxed);
    let mut note = String::new();
    if cut_off > 0 {
        note += &format!("{cut_off} receivers cut off. ");
    }
    if ops < expected {
        note += &format!("{ops} of {expected} delivered. ");
    }
    Report {
        target,
        ops,
        seconds: took.as_secs_f64(),
        latency,
        cpu,
        rss_delta: 0,
        note,
        round: 0,
    }
}

/// Waits until `counter` reaches `expected` or `limit` passes; returns when the last one came.
async fn wait_count(counter: &AtomicU64, expected: u64, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    while counter.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Instant::now()
}

async fn fanout(
    target: Target,
    servers: &[ServerProc],
    args: &BenchArgs,
) -> anyhow::Result<Report> {
    let n = args.connections;
    let mut receivers = Vec::with_capacity(n);
    for i in 0..n {
        receivers.push(connect(target, &servers[i % servers.len()], None).await?);
    }
    let mut publisher = connect_publisher(target, &servers[0]).await?;
    // Everyone connected: settle cluster membership before measuring.
    tokio::time::sleep(Duration::from_millis(if servers.len() > 1 {
        500
    } else {
        50
    }))
    .await;
    let counter = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handles = spawn_receivers(receivers, args.tasks, counter.clone(), stop.clone());
    let cpu0: Duration = servers.iter().map(|s| s.usage().1).sum();
    let start = Instant::now();
    publish(&mut publisher, target, args).await?;
    let expected = args.messages as u64 * n as u64;
    let end = wait_count(
        &counter,
        expected,
        args.duration.max(Duration::from_secs(10)),
    )
    .await;
    let cpu = servers
        .iter()
        .map(|s| s.usage().1)
        .sum::<Duration>()
        .saturating_sub(cpu0);
    Ok(delivery_report(
        target,
        &counter,
        &stop,
        handles,
        end.duration_since(start),
        cpu,
        expected,
    )
    .await)
}

/// The connection that broadcasts `tick`s to every other one.
async fn connect_publisher(target: Target, server: &ServerProc) -> anyhow::Result<Ws> {
    let mut publisher = connect(target, server, None).await?;
    if target == Target::Socketio {
        publisher.send(Message::text(r#"42["publisher"]"#)).await?;
    }
    Ok(publisher)
}

/// Sends `--messages` ticks of about `--size` bytes: at `--rate` a second (paced by the
/// millisecond), or as fast as the socket takes them, flushing every 64.
async fn publish(publisher: &mut Ws, target: Target, args: &BenchArgs) -> anyhow::Result<()> {
    let pad = padding(args.size);
    let start = Instant::now();
    let messages = args.messages as u64;
    let mut sent = 0u64;
    let mut told = 0u64;
    while sent < messages {
        let due = if args.rate > 0 {
            ((start.elapsed().as_secs_f64() * args.rate as f64) as u64).clamp(sent + 1, messages)
        } else {
            (sent + 64).min(messages)
        };
        while sent < due {
            publisher.feed(tick(target, &pad)).await?;
            sent += 1;
        }
        publisher.flush().await?;
        if args.rate > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if messages >= 10_000 && sent >= told + messages / 10 {
            told = sent;
            eprintln!("  {sent} of {messages} sent...");
        }
    }
    Ok(())
}

async fn rooms(target: Target, server: &ServerProc, args: &BenchArgs) -> anyhow::Result<Report> {
    let per_room = (args.connections / args.rooms.max(1)).max(2);
    let mut publishers = Vec::new();
    let mut receivers = Vec::new();
    for r in 0..args.rooms {
        let room = format!("room{r}");
        for m in 0..per_room {
            let mut ws = connect(target, server, None).await?;
            let join = match target {
                Target::Socketio => format!(r#"42["join","{room}"]"#),
                _ => format!(r#"{{"type":"join_room","payload":{{"room_id":"{room}"}}}}"#),
            };
            ws.send(Message::text(join)).await?;
            next_text(&mut ws).await?; // the join's answer
            if m == 0 {
                publishers.push((ws, room.clone()));
            } else {
                receivers.push(ws);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Drain join notices.
    let counter = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handles = spawn_receivers(receivers, args.tasks, counter.clone(), stop.clone());
    let (_, cpu0) = server.usage();
    let start = Instant::now();
    let messages = args.messages;
    let pubs: Vec<_> = publishers
        .into_iter()
        .map(|(mut ws, room)| {
            tokio::spawn(async move {
                for _ in 0..messages {
                    if ws.feed(room_tick(target, &room)).await.is_err() {
                        break;
                    }
                }
                let _ = ws.flush().await;
                ws
            })
        })
        .collect();
    let mut keep = Vec::new();
    for p in pubs {
        keep.push(p.await?);
    }
    let expected = (messages * args.rooms * (per_room - 1)) as u64;
    let end = wait_count(
        &counter,
        expected,
        args.duration.max(Duration::from_secs(10)),
    )
    .await;
    let cpu = server.usage().1.saturating_sub(cpu0);
    let mut report = delivery_report(
        target,
        &counter,
        &stop,
        handles,
        end.duration_since(start),
        cpu,
        expected,
    )
    .await;
    report.note += &format!("{} rooms x {per_room} members", args.rooms);
    Ok(report)
}

/// A broadcast storm with `--stalled` clients that never read: the readers' deliveries,
/// the server's peak memory, and how the stalled clients were treated.
async fn storm(target: Target, server: &ServerProc, args: &BenchArgs) -> anyhow::Result<Report> {
    let n = args.connections;
    let mut receivers = Vec::with_capacity(n);
    for _ in 0..n {
        receivers.push(connect(target, server, None).await?);
    }
    let mut stalled = Vec::with_capacity(args.stalled);
    for _ in 0..args.stalled {
        stalled.push(connect(target, server, None).await?);
    }
    let mut publisher = connect_publisher(target, server).await?;
    let (rss0, cpu0) = server.usage();
    // Sample the server's memory through the storm.
    let peak = Arc::new(AtomicU64::new(rss0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling, pid) = (peak.clone(), sampling.clone(), server.child.id());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_of(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let counter = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handles = spawn_receivers(receivers, args.tasks, counter.clone(), stop.clone());
    let start = Instant::now();
    publish(&mut publisher, target, args).await?;
    let expected = args.messages as u64 * n as u64;
    let end = wait_count(
        &counter,
        expected,
        args.duration.max(Duration::from_secs(20)),
    )
    .await;
    let cpu = server.usage().1.saturating_sub(cpu0);
    let rss_end = server.usage().0;
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let mut report = delivery_report(
        target,
        &counter,
        &stop,
        handles,
        end.duration_since(start),
        cpu,
        expected,
    )
    .await;
    // What each stalled client finds when it reads at last: everything (buffered
    // without bound), or a close from the server. They read at once, for at most a
    // few seconds after the last frame.
    let verdicts = drive(stalled.into_iter().map(|mut ws| async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
                Err(_) => return "still open".to_owned(),
                Ok(Some(Ok(Message::Close(Some(f))))) => {
                    return format!("closed {}", u16::from(f.code));
                }
                Ok(Some(Ok(Message::Close(None)))) => return "closed".to_owned(),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => return "cut off".to_owned(),
            }
        }
    }))
    .await;
    let mut closes: std::collections::BTreeMap<String, usize> = Default::default();
    for verdict in verdicts {
        *closes.entry(verdict).or_default() += 1;
    }
    let stalled: Vec<String> = closes.iter().map(|(v, k)| format!("{k} {v}")).collect();
    report.rss_delta = peak.load(Ordering::Relaxed) as i64 - rss0 as i64;
    report.note += &format!(
        "peak server memory +{:.1} MiB (+{:.1} MiB at the end); stalled clients: {}",
        report.rss_delta as f64 / 1048576.0,
        (rss_end as i64 - rss0 as i64) as f64 / 1048576.0,
        stalled.join(", "),
    );
    Ok(report)
}

async fn idle(target: Target, server: &ServerProc, args: &BenchArgs) -> anyhow::Result<Report> {
    let n = args.connections;
    let (rss0, _) = server.usage();
    let mut conns = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        // A new 127.0.0.x source every 20,000 connections: one address has ~28k ports.
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i / 20_000) as u8));
        let mut ws = if target == Target::Switchboard {
            // Authenticated, as the budget says.
            let mut ws = open(&server.url(), server.addr, Some(source)).await?;
            ws.send(Message::text(
                r#"{"type":"auth","payload":{"password":"bench-password"}}"#,
            ))
            .await?;
            next_text(&mut ws).await?; // connected
            ws
        } else {
            connect(target, server, Some(source)).await?
        };
        if target == Target::Switchboard {
            let join = format!(
                r#"{{"type":"join_room","payload":{{"room_id":"room{}"}}}}"#,
                i % 100
            );
            ws.send(Message::text(join)).await?;
            next_text(&mut ws).await?;
        }
        conns.push(ws);
        if n >= 10_000 && (i + 1) % 5_000 == 0 {
            eprintln!("  {} connections...", i + 1);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss1, _) = server.usage();
    let secs = start.elapsed().as_secs_f64();
    drop(conns);
    Ok(Report {
        target,
        ops: n as u64,
        seconds: secs,
        latency: Histogram::new(),
        cpu: Duration::ZERO,
        rss_delta: rss1 as i64 - rss0 as i64,
        note: String::new(),
        round: 0,
    })
}

impl Report {
    /// Bytes of server memory per connection (idle).
    fn per_connection(&self) -> f64 {
        self.rss_delta as f64 / self.ops.max(1) as f64
    }

    fn cpu_per_op_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }

    /// The row's name: the target, and its round when there are several.
    fn name(&self, rounds: bool) -> String {
        if rounds {
            format!("{:?} #{}", self.target, self.round)
        } else {
            format!("{:?}", self.target)
        }
    }
}

/// This report's rate over the floor's in the same round.
fn ratio_to_floor(r: &Report, reports: &[Report]) -> Option<f64> {
    reports
        .iter()
        .find(|f| f.target == Target::Floor && f.round == r.round)
        .map(|f| r.rate() / f.rate().max(1.0))
}

fn print(scenario: Scenario, reports: &[Report]) {
    let rounds = reports.iter().any(|r| r.round > 1);
    println!();
    match scenario {
        Scenario::Idle => {
            println!("| server | connections | RSS growth | per connection |");
            println!("| --- | --- | --- | --- |");
            for r in reports {
                println!(
                    "| {} | {} | {:.1} MiB | {:.0} B |",
                    r.name(rounds),
                    r.ops,
                    r.rss_delta as f64 / 1048576.0,
                    r.per_connection()
                );
            }
        }
        _ => {
            let unit = match scenario {
                Scenario::Fanout | Scenario::Rooms | Scenario::Storm => "deliveries/s",
                _ => "round trips/s",
            };
            println!(
                "| server | {unit} | vs floor | p50 | p99 | p99.9 | server CPU per op | note |"
            );
            println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
            for r in reports {
                let ratio =
                    ratio_to_floor(r, reports).map_or("-".to_owned(), |x| format!("{x:.2}x"));
                println!(
                    "| {} | {:.0} | {} | {} us | {} us | {} us | {:.2} us | {} |",
                    r.name(rounds),
                    r.rate(),
                    ratio,
                    r.latency.percentile(0.5),
                    r.latency.percentile(0.99),
                    r.latency.percentile(0.999),
                    r.cpu_per_op_us(),
                    r.note
                );
            }
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The medians over the rounds, per target; ratios are the median of each round's ratio.
fn print_medians(scenario: Scenario, targets: &[Target], reports: &[Report]) {
    println!();
    match scenario {
        Scenario::Idle => {
            println!(
                "| server (median of {} rounds) | per connection |",
                reports.iter().map(|r| r.round).max().unwrap_or(0)
            );
            println!("| --- | --- |");
            for &t in targets {
                let mine: Vec<&Report> = reports.iter().filter(|r| r.target == t).collect();
                let per = median(mine.iter().map(|r| r.per_connection()).collect());
                println!("| {t:?} | {per:.0} B |");
            }
        }
        _ => {
            println!(
                "| server (median of {} rounds) | rate | vs floor | p99 | server CPU per op |",
                reports.iter().map(|r| r.round).max().unwrap_or(0)
            );
            println!("| --- | --- | --- | --- | --- |");
            for &t in targets {
                let mine: Vec<&Report> = reports.iter().filter(|r| r.target == t).collect();
                let ratios: Vec<f64> = mine
                    .iter()
                    .filter_map(|r| ratio_to_floor(r, reports))
                    .collect();
                let ratio = if ratios.is_empty() {
                    "-".to_owned()
                } else {
                    format!("{:.2}x", median(ratios))
                };
                println!(
                    "| {t:?} | {:.0} | {ratio} | {:.0} us | {:.2} us |",
                    median(mine.iter().map(|r| r.rate()).collect()),
                    median(
                        mine.iter()
                            .map(|r| r.latency.percentile(0.99) as f64)
                            .collect()
                    ),
                    median(mine.iter().map(|r| r.cpu_per_op_us()).collect()),
                );
            }
        }
    }
}

/// Runs `switchboard bench`.
pub async fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    if args.targets.is_empty() {
        args.targets = vec![Target::Floor, Target::Switchboard];
    }
    if matches!(args.scenario, Scenario::Rooms) && args.targets.contains(&Target::Floor) {
        eprintln!("(the floor has no rooms; skipped for `rooms`)");
        args.targets.retain(|t| *t != Target::Floor);
    }
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
            let mut report = measure(target, &args).await?;
            report.round = round;
            reports.push(report);
        }
    }
    print(args.scenario, &reports);
    if rounds > 1 {
        print_medians(args.scenario, &args.targets, &reports);
    }
    Ok(())
}

/// One measurement of one target: starts its server(s), drives them, stops them.
async fn measure(target: Target, args: &BenchArgs) -> anyhow::Result<Report> {
    Ok(match args.scenario {
        Scenario::Echo | Scenario::Rpc => {
            let server = ServerProc::start(target, &[], args)?;
            let request = match (args.scenario, target) {
                (Scenario::Echo, Target::Switchboard) => Message::text(r#"{"type":"ping"}"#),
                (Scenario::Rpc, Target::Switchboard) => Message::text(
                    r#"{"type":"rpc","ref":"1","payload":{"method":"echo","params":{"message":"hello"}}}"#,
                ),
                (_, Target::Socketio) => Message::text(r#"42["echo","hello"]"#),
                _ => Message::text(r#"{"type":"ping","payload":{"p":"hello"}}"#),
            };
            round_trips(
                target,
                &server,
                args.connections,
                args.tasks,
                args.duration,
                args.rate,
                request,
            )
            .await?
        }
        Scenario::Fanout => {
            let mut servers = Vec::new();
            if target == Target::Switchboard && args.nodes > 1 {
                let redis = args
                    .redis
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("--nodes needs --redis"))?;
                for _ in 0..args.nodes {
                    servers.push(ServerProc::start(target, &["--redis", &redis], args)?);
                }
            } else {
                servers.push(ServerProc::start(target, &[], args)?);
            }
            let mut r = fanout(target, &servers, args).await?;
            if servers.len() > 1 {
                r.note = format!("{} nodes over Redis. {}", servers.len(), r.note);
            }
            r
        }
        Scenario::Rooms => {
            let server = ServerProc::start(target, &[], args)?;
            rooms(target, &server, args).await?
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

/// `switchboard bench-floor`: a bare tokio-tungstenite server with 4 KiB buffers. It
/// echoes every text frame to its sender, except frames starting with `{"t":`, which it
/// broadcasts to every other connection (the floor for fan-out).
pub async fn floor(port: u16) -> anyhow::Result<()> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use tokio::sync::mpsc;
    type Peers = Arc<Mutex<HashMap<u64, mpsc::Sender<Message>>>>;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("floor listening on ws://{}/", listener.local_addr()?);
    let peers: Peers = Arc::default();
    let mut next = 0u64;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        next += 1;
        let id = next;
        let peers = peers.clone();
        tokio::spawn(async move {
            let Ok(ws) =
                tokio_tungstenite::accept_async_with_config(stream, Some(ws_config())).await
            else {
                return;
            };
            let (mut sink, mut stream) = ws.split();
            let (tx, mut rx) = mpsc::channel::<Message>(8192);
            if let Ok(mut p) = peers.lock() {
                p.insert(id, tx.clone());
            }
            let writer = tokio::spawn(async move {
                while let Some(m) = rx.recv().await {
                    if sink.feed(m).await.is_err() {
                        return;
                    }
                    while let Ok(m) = rx.try_recv() {
                        if sink.feed(m).await.is_err() {
                            return;
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
            });
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Text(t) = &msg {
                    if t.as_str().starts_with("{\"t\":") {
                        let targets: Vec<_> = peers
                            .lock()
                            .map(|p| {
                                p.iter()
                                    .filter(|(k, _)| **k != id)
                                    .map(|(_, v)| v.clone())
                                    .collect()
                            })
                            .unwrap_or_default();
                        for t2 in targets {
                            let _ = t2.try_send(msg.clone());
                        }
                        continue;
                    }
                }
                if msg.is_text() || msg.is_binary() {
                    let _ = tx.send(msg).await;
                }
            }
            if let Ok(mut p) = peers.lock() {
                p.remove(&id);
            }
            writer.abort();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_percentiles_are_close() {
        let mut h = Histogram::new();
        for us in 1..=10_000u64 {
            h.record(us);
        }
        let p50 = h.percentile(0.5) as f64;
        let p99 = h.percentile(0.99) as f64;
        assert!((p50 - 5000.0).abs() / 5000.0 < 0.07, "{p50}");
        assert!((p99 - 9900.0).abs() / 9900.0 < 0.07, "{p99}");
        assert_eq!(Histogram::index(5), 5);
        for v in [16u64, 17, 100, 1000, 123_456] {
            let back = Histogram::value(Histogram::index(v));
            assert!(
                back <= v && (v - back) as f64 / v as f64 <= 1.0 / 16.0,
                "{v} -> {back}"
            );
        }
    }

    #[test]
    fn stamps_are_found_without_parsing() {
        assert_eq!(
            stamp(r#"{"type":"tick","payload":{"t":1234,"p":"x"}}"#),
            Some(1234)
        );
        assert_eq!(stamp(r#"42["tick",{"t":99}]"#), Some(99));
        assert_eq!(stamp("nothing"), None);
    }
}
