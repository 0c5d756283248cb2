//! A node's three tasks: the writer (publishes and membership changes, batched into one
//! pipeline per round trip), the subscriber (other nodes' deliveries, resubscribing
//! after an outage) and the heartbeat (liveness, health, reaping).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use switchboard_server::Delivery;
use tokio::sync::mpsc;

use crate::membership::{Header, Out, Shared, now_ms};

impl Shared {
    /// The writer: batches queued publishes and presence changes into one pipeline per
    /// round trip.
    pub(crate) async fn write_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Out>) {
        let mut conn: Option<redis::aio::ConnectionManager> = None;
        let mut batch = Vec::with_capacity(256);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = self.resync_now.notified() => {}
                n = rx.recv_many(&mut batch, 1024) => {
                    if n == 0 {
                        return;
                    }
                }
            }
            let c = match &conn {
                Some(c) => c.clone(),
                None => match self.client.get_connection_manager().await {
                    Ok(c) => {
                        conn = Some(c.clone());
                        c
                    }
                    Err(e) => {
                        self.dropped
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        let bytes: usize = batch.iter().map(Out::bytes).sum();
                        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                        batch.clear();
                        tracing::debug!(error = %e, "Redis unavailable; batch dropped");
                        self.resync.store(true, Ordering::Release);
                        continue;
                    }
                },
            };
            let mut pipe = redis::pipe();
            if self.resync.swap(false, Ordering::AcqRel) {
                self.resync_pipe(&mut pipe);
            }
            let channel = self.channel();
            // Counted until written: the batch in flight is part of the bound.
            let in_flight: usize = batch.iter().map(Out::bytes).sum();
            for item in batch.drain(..) {
                match item {
                    Out::Publish(bytes) => {
                        pipe.publish(&channel, bytes).ignore();
                    }
                    Out::Presence(event) => self.presence_pipe(&mut pipe, &event),
                }
            }
            if pipe.is_empty() {
                continue;
            }
            let mut c = c;
            let written = pipe.query_async::<()>(&mut c).await;
            drop(pipe);
            self.queued_bytes.fetch_sub(in_flight, Ordering::AcqRel);
            if let Err(e) = written {
                tracing::debug!(error = %e, "Redis write failed; membership will be rewritten");
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.resync.store(true, Ordering::Release);
                self.set_healthy(false);
            }
        }
    }

    /// The subscriber: delivers other nodes' sends here; reconnects when Redis goes away.
    pub(crate) async fn subscribe_loop(self: Arc<Self>) {
        let channel = self.channel();
        let mut backoff = Duration::from_millis(100);
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                redis::RedisResult::Ok(pubsub)
            };
            let pubsub = tokio::select! {
                () = self.stop.cancelled() => return,
                r = subscribed => r,
            };
            match pubsub {
                Ok(pubsub) => {
                    backoff = Duration::from_millis(100);
                    self.subscribed.store(true, Ordering::Release);
                    self.set_healthy(true);
                    // Redis may have lost (or never had) our membership: write it again.
                    self.resync.store(true, Ordering::Release);
                    self.resync_now.notify_one();
                    let mut stream = pubsub.into_on_message();
                    loop {
                        let msg = tokio::select! {
                            () = self.stop.cancelled() => return,
                            m = stream.next() => m,
                        };
                        match msg {
                            Some(msg) => self.receive(msg.get_payload_bytes()),
                            None => break,
                        }
                    }
                    self.subscribed.store(false, Ordering::Release);
                    self.set_healthy(false);
                }
                Err(e) => {
                    self.set_healthy(false);
                    tracing::debug!(error = %e, "cannot subscribe to Redis; retrying");
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One published delivery: `node \n header \n frame`.
    pub(crate) fn receive(&self, bytes: &[u8]) {
        let mut parts = bytes.splitn(3, |b| *b == b'\n');
        let (Some(origin), Some(header), Some(frame)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        if origin == self.node.as_bytes() {
            return; // delivered locally already
        }
        let (Ok(header), Ok(frame)) = (
            serde_json::from_slice::<Header>(header),
            std::str::from_utf8(frame),
        ) else {
            tracing::warn!("ignoring a malformed delivery from Redis");
            return;
        };
        if let Some(node) = self.node_handle.get() {
            node.deliver(&Delivery {
                target: header.target,
                exclude: header.exclude,
                frame: frame.to_owned(),
            });
        }
    }

    /// The heartbeat: this node is alive; dead ones are reaped.
    pub(crate) async fn heartbeat_loop(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.config.heartbeat);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let Ok(mut conn) = self.reader().await else {
                self.set_healthy(false);
                continue;
            };
            let beat: redis::RedisResult<()> =
                conn.zadd(self.nodes_key(), &self.node, now_ms()).await;
            match beat {
                Ok(()) => {
                    // Redis answers again: healthy, if the subscription held (a stall
                    // breaks the heartbeat, not always the subscription).
                    self.set_healthy(self.subscribed.load(Ordering::Acquire));
                    // A rewrite that failed (Redis was still coming back) is retried here.
                    if self.resync.load(Ordering::Acquire) {
                        self.resync_now.notify_one();
                    }
                    if let Err(e) = self.reap(&mut conn).await {
                        tracing::debug!(error = %e, "reaping dead nodes failed");
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "Redis heartbeat failed");
                    self.set_healthy(false);
                }
            }
        }
    }
}
