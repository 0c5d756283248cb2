//! The servers under test, each a child process: started on port 0, measured
//! (memory, CPU), stopped.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{BenchArgs, Target};

/// The servers run by this process: spawns this binary or node.
pub(crate) struct ServerProc {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) path: &'static str,
    /// Run under a profiler: stop it gently.
    pub(crate) wrapped: bool,
}

impl ServerProc {
    pub(crate) fn spawn(
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

    pub(crate) fn start(
        target: Target,
        extra: &[&str],
        args: &BenchArgs,
    ) -> anyhow::Result<ServerProc> {
        ServerProc::start_env(target, extra, &[], args)
    }

    pub(crate) fn start_env(
        target: Target,
        extra: &[&str],
        envs: &[(&str, &str)],
        bench: &BenchArgs,
    ) -> anyhow::Result<ServerProc> {
        let wrap = bench.wrap.as_deref();
        let me = std::env::current_exe()?;
        let _me = me.to_string_lossy().into_owned();
        match target {
            Target::Switchboard | Target::Baseline | Target::SwitchboardMsgpack => {
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
                let bin = switchboard_bin(target, bench)?;
                ServerProc::spawn(&bin, &args, envs, "/ws", wrap)
            }
            Target::Floor => {
                let floor = sibling("switchboard-floor")?;
                ServerProc::spawn(&floor, &["--port", "0"], &[], "/", wrap)
            }
            Target::EchoFloor => {
                let floor = sibling("switchboard-floor")?;
                ServerProc::spawn(&floor, &["--port", "0", "--plain"], &[], "/", wrap)
            }
            Target::JsonFloor => {
                let floor = sibling("switchboard-floor")?;
                ServerProc::spawn(&floor, &["--port", "0", "--json"], &[], "/", wrap)
            }
            Target::Socketioxide => {
                let server = sibling("switchboard-socketioxide").map_err(|e| {
                    e.context("build it with `cargo build --release -p switchboard-bench --features socketioxide`")
                })?;
                let path = "/socket.io/?EIO=4&transport=websocket";
                ServerProc::spawn(&server, &[], &[], path, wrap)
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

    pub(crate) fn url(&self) -> String {
        format!("ws://{}{}", self.addr, self.path)
    }

    /// Resident memory (bytes) and CPU time (user + system) of the server process.
    pub(crate) fn usage(&self) -> (u64, Duration) {
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
pub(crate) fn install_socketio(script: &str) -> anyhow::Result<()> {
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
pub(crate) fn rss_of(pid: u32) -> u64 {
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

/// A program next to this one (cargo builds a workspace's binaries side by side).
pub(crate) fn sibling(name: &str) -> anyhow::Result<String> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name(name);
    anyhow::ensure!(
        path.exists(),
        "{} not found (cargo build -p switchboard)",
        path.display()
    );
    Ok(path.to_string_lossy().into_owned())
}

/// The switchboard binary a target runs.
pub(crate) fn switchboard_bin(target: Target, bench: &BenchArgs) -> anyhow::Result<String> {
    if target == Target::Baseline {
        return bench
            .baseline_bin
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--target baseline needs --baseline-bin PATH"));
    }
    match bench
        .switchboard_bin
        .clone()
        .or_else(|| std::env::var("SWITCHBOARD_BIN").ok())
    {
        Some(bin) => Ok(bin),
        None => sibling("switchboard"),
    }
}
