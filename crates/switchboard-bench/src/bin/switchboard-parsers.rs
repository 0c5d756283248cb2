//! Which parser reads an envelope fastest, and what our own checks cost on top: the
//! measurement behind the choice of serde_json (docs/benchmarks.md, "Which JSON
//! parser"), and MessagePack read by our reader against rmp-serde.
//!
//! Built only on request (it brings sonic-rs and simd-json):
//!
//! ```sh
//! cargo build --release -p switchboard-bench --features parsers
//! taskset -c 1 target/release/switchboard-parsers
//! ```
//!
//! Each row is the median of 5 rounds over the same frame, the rows taken in turn.

use std::hint::black_box;
use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard_proto::{Envelope, MAX_PAYLOAD_DEPTH, msgpack};

/// The envelope as the server must read it: every field, the payload kept as text.
#[derive(Deserialize)]
struct WireSerdeJson<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(rename = "ref")]
    ref_id: Option<&'a str>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

/// The same with sonic-rs (its lazy value is its raw text).
#[derive(Deserialize)]
struct WireSonic<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(rename = "ref")]
    ref_id: Option<&'a str>,
    #[serde(borrow)]
    payload: Option<sonic_rs::LazyValue<'a>>,
}

/// Rows of one table: a name and what it times.
type Rows<'a> = Vec<(&'static str, Box<dyn FnMut() + 'a>)>;

/// Times every row over `rounds` calls, in 5 rounds taking the rows in turn (so the
/// machine's noise falls on all of them alike), and prints each row's median per call.
fn table(rounds: u32, mut rows: Rows<'_>) {
    let mut runs = vec![Vec::new(); rows.len()];
    for _ in 0..5 {
        for ((_, f), runs) in rows.iter_mut().zip(&mut runs) {
            let start = Instant::now();
            for _ in 0..rounds {
                f();
            }
            runs.push(start.elapsed().as_nanos() as f64 / f64::from(rounds));
        }
    }
    for ((name, _), mut runs) in rows.into_iter().zip(runs) {
        runs.sort_by(f64::total_cmp);
        let median = runs[2];
        if median >= 10_000.0 {
            println!("| {name} | {:.1} us |", median / 1000.0);
        } else {
            println!("| {name} | {median:.0} ns |");
        }
    }
}

/// The frames measured: an RPC call, a chat message in a room, a 6.5 KB payload.
fn frames() -> Vec<(&'static str, String)> {
    let items: Vec<String> = (0..100)
        .map(|i| {
            format!(
                r#"{{"id":{i},"name":"item number {i}","score":{}.5,"tags":["a","b"]}}"#,
                i * 7
            )
        })
        .collect();
    vec![
        ("ping", r#"{"type":"ping"}"#.to_owned()),
        (
            "RPC call",
            r#"{"type":"rpc","ref":"1","payload":{"method":"echo","params":{"message":"hello"}}}"#
                .to_owned(),
        ),
        (
            "chat in a room",
            r#"{"type":"chat","payload":{"content":"Hello everyone, the meeting moves to 3pm"},"room":"general","from":"0f3a9c2e71b4d805","offset":1042}"#
                .to_owned(),
        ),
        (
            "a 6.5 KB payload",
            format!(
                r#"{{"type":"doc","ref":"r9","payload":{{"items":[{}]}}}}"#,
                items.join(",")
            ),
        ),
    ]
}

fn json(name: &str, frame: &str) -> anyhow::Result<()> {
    let rounds = if frame.len() > 1000 { 20_000 } else { 300_000 };
    println!(
        "\n{name}, {} bytes of JSON\n\n| parser | per frame |\n| --- | --- |",
        frame.len()
    );
    let payload = Envelope::decode(frame)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .payload;
    let rows: Rows<'_> = vec![
        (
            "`Envelope::decode` (the fast path for plain envelopes, every check)",
            Box::new(|| {
                black_box(Envelope::decode(black_box(frame)).ok());
            }),
        ),
        (
            "`Envelope::decode_general` (serde_json + every check)",
            Box::new(|| {
                black_box(Envelope::decode_general(black_box(frame)).ok());
            }),
        ),
        (
            "serde_json, struct with a raw payload",
            Box::new(|| {
                let w: Option<WireSerdeJson> = serde_json::from_str(black_box(frame)).ok();
                black_box(w.map(|w| (w.kind, w.ref_id, w.payload)));
            }),
        ),
        (
            "sonic-rs, struct with a lazy payload",
            Box::new(|| {
                let w: Option<WireSonic> = sonic_rs::from_str(black_box(frame)).ok();
                black_box(w.map(|w| (w.kind, w.ref_id, w.payload)));
            }),
        ),
        (
            "sonic-rs, `get(\"type\")` alone",
            Box::new(|| {
                black_box(sonic_rs::get_from_str(black_box(frame), ["type"]).ok());
            }),
        ),
        (
            "simd-json, a whole tree (it keeps no raw payload)",
            Box::new(|| {
                let mut bytes = frame.as_bytes().to_vec();
                black_box(simd_json::to_borrowed_value(black_box(&mut bytes)).is_ok());
            }),
        ),
        (
            "serde_json, a whole tree (`Value`)",
            Box::new(|| {
                black_box(serde_json::from_str::<serde_json::Value>(black_box(frame)).ok());
            }),
        ),
        (
            "the payload's depth check alone",
            Box::new(|| {
                black_box(switchboard_proto::envelope::nests_deeper_than(
                    black_box(payload.get()),
                    MAX_PAYLOAD_DEPTH,
                ));
            }),
        ),
    ];
    table(rounds, rows);
    Ok(())
}

fn messagepack(name: &str, frame: &str) -> anyhow::Result<()> {
    let rounds = if frame.len() > 1000 { 20_000 } else { 300_000 };
    let packed = msgpack::from_json(frame).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "\n{name}, {} bytes of MessagePack\n\n| reader | per frame |\n| --- | --- |",
        packed.len()
    );
    let limit = frame.len() * 4;
    let packed = &packed[..];
    let rows: Rows<'_> = vec![
        (
            "`msgpack::to_json` (ours: one pass, every bound)",
            Box::new(|| {
                black_box(msgpack::to_json(black_box(packed), limit).ok());
            }),
        ),
        (
            "rmp-serde (borrowing) through serde-transcode to JSON",
            Box::new(|| {
                let de = rmp_serde::Deserializer::from_read_ref(black_box(packed));
                black_box(transcoded(de, packed.len() * 2));
            }),
        ),
        (
            "rmp-serde (reading) through serde-transcode to JSON",
            Box::new(|| {
                let de = rmp_serde::Deserializer::new(black_box(packed));
                black_box(transcoded(de, packed.len() * 2));
            }),
        ),
        (
            "`msgpack::decode` (to JSON, then `Envelope::decode`)",
            Box::new(|| {
                black_box(msgpack::decode(black_box(packed), limit).ok());
            }),
        ),
    ];
    table(rounds, rows);
    Ok(())
}

/// What rmp-serde's deserializer `de` reads, written as JSON by serde-transcode into a
/// buffer of `capacity` bytes to start with (as ours starts).
fn transcoded<'de, D>(mut de: D, capacity: usize) -> Option<Vec<u8>>
where
    for<'a> &'a mut D: serde::Deserializer<'de>,
{
    let mut out = Vec::with_capacity(capacity);
    let mut ser = serde_json::Serializer::new(&mut out);
    serde_transcode::transcode(&mut de, &mut ser).ok()?;
    Some(out)
}

fn main() -> anyhow::Result<()> {
    for (name, frame) in frames() {
        json(name, &frame)?;
    }
    for (name, frame) in frames() {
        messagepack(name, &frame)?;
    }
    Ok(())
}
