//! The hub's logs: no terminal escape codes in a file, and one JSON object per line
//! with `--log-format json`.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// Starts `switchboard serve` on port 0 with stderr piped (not a terminal) and returns
/// its first log line.
fn first_log_line(extra: &[&str]) -> String {
    let mut child = Command::new(BIN)
        .args(["serve", "--port", "0", "--host", "127.0.0.1"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let read = BufReader::new(child.stderr.take().unwrap()).read_line(&mut line);
    let _ = child.kill();
    let _ = child.wait();
    read.unwrap();
    line
}

#[test]
fn logs_to_a_file_carry_no_colour_codes() {
    let line = first_log_line(&[]);
    assert!(line.contains("switchboard listening"), "{line}");
    assert!(!line.contains('\u{1b}'), "an escape code in {line:?}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let line = first_log_line(&["--log-format", "json"]);
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["fields"]["message"], "switchboard listening", "{v}");
}
