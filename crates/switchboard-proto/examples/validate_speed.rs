//! How fast the envelope's fast path reads a value against serde_json reading the same
//! value as raw text (what it did before `validate.rs`), on four shapes of payload.
//! Best of 7 rounds, one thread; pin it for steadier figures:
//!
//! ```sh
//! cargo build --release -p switchboard-proto --example validate_speed
//! taskset -c 0 target/release/examples/validate_speed
//! ```

use std::hint::black_box;
use std::time::Instant;

use serde_json::value::RawValue;
use switchboard_proto::scan::members;

fn main() {
    let words = "lorem ipsum dolor sit amet, ".repeat(2300);
    let values = [
        (
            "an RPC call, 46 B",
            r#"{"method":"echo","params":{"message":"hello"}}"#.to_owned(),
        ),
        (
            "a chat message, 200 B",
            format!(
                r#"{{"content":"{}","n":[1,2,3],"ok":true}}"#,
                "x".repeat(150)
            ),
        ),
        ("a 64 KiB string", format!(r#"{{"content":"{words}"}}"#)),
        (
            "64 KiB of numbers",
            format!("[{}0]", "12345.678,".repeat(6500)),
        ),
    ];
    println!("| value | fast path | serde_json, raw | ratio |");
    println!("| --- | --- | --- | --- |");
    for (name, value) in &values {
        let object = format!(r#"{{"k":{value}}}"#);
        let reps = (2_000_000 / object.len()).max(20);
        let (mut ours, mut serde) = (f64::MAX, f64::MAX);
        for _ in 0..7 {
            let started = Instant::now();
            for _ in 0..reps {
                let read = members(black_box(&object), |_, v| {
                    black_box(v);
                    Some(())
                });
                assert!(read.is_some(), "the fast path reads {name}");
            }
            ours = ours.min(started.elapsed().as_secs_f64() / reps as f64);
            let started = Instant::now();
            for _ in 0..reps {
                let raw: Result<&RawValue, _> = serde_json::from_str(black_box(value));
                assert!(raw.is_ok(), "serde_json reads {name}");
            }
            serde = serde.min(started.elapsed().as_secs_f64() / reps as f64);
        }
        println!(
            "| {name} | {:.3} us | {:.3} us | {:.2} |",
            ours * 1e6,
            serde * 1e6,
            ours / serde
        );
    }
}
