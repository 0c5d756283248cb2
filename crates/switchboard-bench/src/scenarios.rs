//! The delivery scenarios: fan-out, rooms, the storm with stalled readers, and idle
//! memory.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::histogram::Histogram;
use crate::load::*;
use crate::report::Report;
use crate::server::{ServerProc, rss_of};
use crate::{BenchArgs, Protocol, Target};

/// What the receivers of one task saw: latencies, and how many were cut off.
pub(crate) type Received = (Histogram, u64);

/// Receivers count deliveries and record latency until `expected` or the deadline.
pub(crate) fn spawn_receivers(
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
pub(crate) async fn delivery_report(
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
pub(crate) async fn wait_count(counter: &AtomicU64, expected: u64, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    while counter.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Instant::now()
}

pub(crate) async fn fanout(
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
pub(crate) async fn connect_publisher(target: Target, server: &ServerProc) -> anyhow::Result<Ws> {
    let mut publisher = connect(target, server, None).await?;
    if target.protocol() == Protocol::Socketio {
        publisher.send(Message::text(r#"42["publisher"]"#)).await?;
    }
    Ok(publisher)
}

/// Sends `--messages` ticks of about `--size` bytes: at `--rate` a second (paced by the
/// millisecond), or as fast as the socket takes them, flushing every 64.
pub(crate) async fn publish(
    publisher: &mut Ws,
    target: Target,
    args: &BenchArgs,
) -> anyhow::Result<()> {
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
            publisher
                .feed(tick(target, &pad, args.bare_floor_frames, sent))
                .await?;
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

/// Rooms with their own members and publisher; with several nodes, room `r`'s members
/// all on node `r % nodes` (each node's clients in different rooms), and the note says
/// how many messages the nodes read from the backplane per delivery they made.
pub(crate) async fn rooms(
    target: Target,
    servers: &[ServerProc],
    args: &BenchArgs,
) -> anyhow::Result<Report> {
    let per_room = (args.connections / args.rooms.max(1)).max(2);
    let mut publishers = Vec::new();
    let mut receivers = Vec::new();
    for r in 0..args.rooms {
        let room = format!("room{r}");
        let server = &servers[r % servers.len()];
        for m in 0..per_room {
            let mut ws = connect(target, server, None).await?;
            let join = match target.protocol() {
                Protocol::Socketio => format!(r#"42["join","{room}"]"#),
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
    // Join notices drained; a cluster's subscriptions settled.
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
    let read0 = backplane_received(servers).await;
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
    let cpu = servers
        .iter()
        .map(|s| s.usage().1)
        .sum::<Duration>()
        .saturating_sub(cpu0);
    let read = backplane_received(servers).await.saturating_sub(read0);
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
    if servers.len() > 1 {
        let delivered = counter.load(Ordering::Relaxed).max(1);
        report.note += &format!(
            "; nodes read {read} messages from the backplane, {:.2} per delivery",
            read as f64 / delivered as f64
        );
    }
    Ok(report)
}

/// What the nodes read from their backplane so far, all together (their
/// `switchboard_backplane_received`).
async fn backplane_received(servers: &[ServerProc]) -> u64 {
    let mut total = 0;
    for s in servers {
        total += metric(s, "switchboard_backplane_received")
            .await
            .unwrap_or(0.0) as u64;
    }
    total
}

/// One metric's value from a server's `/metrics`.
async fn metric(server: &ServerProc, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.addr).await.ok()?;
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.addr
    );
    s.write_all(request.as_bytes()).await.ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A broadcast storm with `--stalled` clients that never read: the readers' deliveries,
/// the server's peak memory, and how the stalled clients were treated.
pub(crate) async fn storm(
    target: Target,
    server: &ServerProc,
    args: &BenchArgs,
) -> anyhow::Result<Report> {
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

/// Idle connections opened so far, by every round of this run.
static IDLE_OPENED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The source address of the next idle connection: a new 127.0.0.x every 20,000
/// connections, counted across rounds. One address has about 28k ports, and a port
/// bound before `connect` cannot be one that the round before left in `TIME_WAIT`
/// (a second round of 19,000 on the first round's address failed with `EADDRINUSE`).
fn idle_source() -> IpAddr {
    let opened = IDLE_OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (opened / 20_000 % 250) as u8))
}

pub(crate) async fn idle(
    target: Target,
    server: &ServerProc,
    args: &BenchArgs,
) -> anyhow::Result<Report> {
    let n = args.connections;
    let (rss0, _) = server.usage();
    let mut conns = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let source = idle_source();
        let mut ws = if target.protocol() == Protocol::Switchboard {
            // Authenticated, as the budget says.
            let mut ws = open(&server.url(), server.addr, Some(source), None).await?;
            ws.send(Message::text(
                r#"{"type":"auth","payload":{"password":"bench-password"}}"#,
            ))
            .await?;
            next_text(&mut ws).await?; // connected
            ws
        } else {
            connect(target, server, Some(source)).await?
        };
        if target.protocol() == Protocol::Switchboard {
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
