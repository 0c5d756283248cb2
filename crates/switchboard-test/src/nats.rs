//! A real `nats-server` with JetStream on a free port, stopped on drop.

use crate::TIMEOUT;
use std::time::Duration;

/// A real `nats-server -js` (Debian's package) on a free loopback port, killed on
/// drop. Its JetStream store is a directory of its own, kept across
/// [`restart`](NatsServer::restart) and removed by [`restart_empty`](NatsServer::restart_empty).
pub struct NatsServer {
    child: Option<std::process::Child>,
    /// The port it listens on.
    pub port: u16,
    dir: std::path::PathBuf,
}

impl NatsServer {
    /// Starts one on a free port; panics with a clear message when `nats-server` is
    /// not installed (`scripts/test` installs it).
    pub fn start() -> NatsServer {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("switchboard-nats-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for nats");
        for _ in 0..10 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            let mut s = NatsServer {
                child: None,
                port,
                dir: dir.clone(),
            };
            if s.spawn() {
                return s;
            }
        }
        panic!("nats-server did not start");
    }

    /// Starts the process on `self.port`; true once it says hello.
    fn spawn(&mut self) -> bool {
        let child = std::process::Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
                self.dir.to_str().expect("a UTF-8 path"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot run nats-server ({e}): install Debian's nats-server (scripts/test does)"
            ),
        };
        let deadline = std::time::Instant::now() + TIMEOUT;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false; // the port was taken meanwhile
            }
            if self.hello() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        false
    }

    fn hello(&self) -> bool {
        use std::io::Read;
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).is_ok() && &buf == b"INFO "
    }

    /// The URL for clients.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The address, for a proxy in front of it.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills it (SIGKILL: an outage, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, with what its store kept.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while !self.spawn() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not restart on port {}",
                self.port
            );
        }
    }

    /// Starts it again on the same port with an empty store (everything lost).
    pub fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).expect("a directory for nats");
        self.restart();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
