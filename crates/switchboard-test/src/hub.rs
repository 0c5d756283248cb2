//! The `switchboard` binary as a child process, and temporary files for its config.

use crate::RawClient;

/// The `switchboard` binary running as a child process (killed on drop).
pub struct Hub {
    child: std::process::Child,
    /// `host:port` it listens on.
    pub addr: String,
    /// The first line it printed.
    pub line: String,
}

/// A file under the temp directory that is removed on drop.
pub struct TempFile(std::path::PathBuf);

impl TempFile {
    /// Writes `contents` to a fresh file whose name ends with `name`.
    pub fn new(name: &str, contents: &str) -> TempFile {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "switchboard-test-{}-{n}-{name}",
            std::process::id()
        ));
        std::fs::write(&path, contents).expect("io");
        TempFile(path)
    }

    /// Its path.
    pub fn path(&self) -> &str {
        self.0.to_str().expect("io")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs a binary to completion: exit success, stdout, stderr.
pub fn run(bin: &str, args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let out = std::process::Command::new(bin)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("io");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Hub {
    /// Starts the binary with exactly these arguments and extra environment, and reads
    /// the address from its first line.
    pub fn spawn(bin: &str, args: &[&str], envs: &[(&str, &str)]) -> Hub {
        use std::io::BufRead;
        let mut child = std::process::Command::new(bin)
            .args(args)
            .envs(envs.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start switchboard");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .split("://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_owned();
        Hub { child, addr, line }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The WebSocket URL.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Connects a raw client and reads its `connected`.
    pub async fn raw(&self) -> RawClient {
        let mut c = RawClient::connect(&self.url()).await;
        let hello = c.recv().await;
        assert_eq!(hello["type"], "connected");
        c.id = hello["payload"]["client_id"]
            .as_str()
            .expect("io")
            .to_owned();
        c
    }

    /// A plain HTTP GET; the whole response.
    pub fn get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.addr).expect("connect");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .expect("io");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("io");
        out
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        self.child.wait().expect("wait")
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
