//! How long the janitor's read of the sessions bucket takes, two ways: a request per
//! record (`keys()` then `entry()` for each, as the sweep did) and one ordered
//! consumer delivering every record's last value (`watch_with_history(">")`, as it does
//! now). Runs a real nats-server (Debian's package) on a free port.
//!
//! ```sh
//! cargo run --release -p switchboard-nats --example sweep_speed -- 20000
//! ```

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, stream};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let records: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let nats = switchboard_test::NatsServer::start();
    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "KV_speed".into(),
        subjects: vec!["$KV.speed.>".into()],
        max_messages_per_subject: 1,
        storage: stream::StorageType::Memory,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    })
    .await?;
    let bucket: kv::Store = js.get_key_value("speed").await?;
    // A record the size of a session's (about 300 bytes of JSON).
    let value = format!(
        r#"{{"record":{{"pad":"{}"}},"node":"n1"}}"#,
        "x".repeat(260)
    );
    let mut puts = Vec::with_capacity(records);
    for i in 0..records {
        puts.push(bucket.put(format!("{i:016x}"), value.clone().into()));
        if puts.len() == 512 {
            futures_util::future::try_join_all(puts.drain(..)).await?;
        }
    }
    futures_util::future::try_join_all(puts).await?;

    for round in 0..3 {
        let start = Instant::now();
        let mut keys = bucket.keys().await?;
        let mut read = 0usize;
        while let Some(Ok(key)) = keys.next().await {
            if let Ok(Some(entry)) = bucket.entry(key.as_str()).await {
                read += entry.value.len().min(1);
            }
        }
        let by_request = start.elapsed();

        let start = Instant::now();
        let mut all = bucket.watch_with_history(">").await?;
        let mut streamed = 0usize;
        while let Ok(Some(Ok(entry))) =
            tokio::time::timeout(Duration::from_secs(5), all.next()).await
        {
            streamed += entry.value.len().min(1);
            if entry.delta == 0 {
                break;
            }
        }
        let by_consumer = start.elapsed();
        println!(
            "round {round}: {read} records by request in {by_request:?}, {streamed} by one consumer in {by_consumer:?} ({:.1}x)",
            by_request.as_secs_f64() / by_consumer.as_secs_f64()
        );
    }
    Ok(())
}
