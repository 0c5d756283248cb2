//! A real `redis-server` on a free port, stopped on drop.

use crate::TIMEOUT;
use std::time::Duration;

/// A real `redis-server` (Debian's package) on a free loopback port, killed on drop.
pub struct RedisServer {
    child: Option<std::process::Child>,
    /// The port it listens on.
    pub port: u16,
    dir: std::path::PathBuf,
}

impl RedisServer {
    /// Starts one on a free port; panics with a clear message when `redis-server` is
    /// not installed (`scripts/test` installs it).
    pub fn start() -> RedisServer {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("switchboard-redis-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for redis");
        for _ in 0..10 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            let mut r = RedisServer {
                child: None,
                port,
                dir: dir.clone(),
            };
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server did not start");
    }

    /// Starts the process on `self.port`; true once it answers PING.
    fn spawn(&mut self) -> bool {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir.to_str().expect("a UTF-8 path"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot run redis-server ({e}): install Debian's redis-server (scripts/test does)"
            ),
        };
        let deadline = std::time::Instant::now() + TIMEOUT;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false; // the port was taken meanwhile
            }
            if self.ping() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        false
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// The URL for clients.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: an outage, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops it without ending it (SIGSTOP): connections stay open and nothing answers,
    /// as when Redis stalls.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let pid = self.child.as_ref().expect("a running redis-server").id();
        let ok = std::process::Command::new("kill")
            .args([which, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {which} {pid}");
    }

    /// Starts it again on the same port (empty: Redis keeps nothing here).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while !self.spawn() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
