//! A node's writer (appends to the cluster's logs and membership changes, batched into one
//! pipeline per round trip, retried until Redis takes them) and its heartbeat
//! (liveness, health, reaping). The logs' reader is in `reader.rs`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::AsyncCommands;
use tokio::sync::mpsc;

use crate::log::APPEND;
use crate::membership::{LEAVE_ROOM_SCRIPT, Out, Shared, now_ms};
use crate::sessions::{CHANGE_SCRIPT, FORGET_IDENTITY_SCRIPT, KEEP_CONNECTED_SCRIPT};

impl Shared {
    /// The writer: batches queued sends (appended to the cluster log) and presence
    /// changes into one pipeline per round trip. A batch that fails is kept and tried
    /// again, in order, until Redis takes it (each append is numbered, so a retry never
    /// appends twice); meanwhile new sends wait in the queue, within its bounds. When
    /// the node stops, what is queued is written once more before the writer ends.
    pub(crate) async fn write_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Out>) {
        let append = redis::Script::new(APPEND);
        let mut conn: Option<redis::aio::ConnectionManager> = None;
        let mut loaded = false;
        let mut incoming = Vec::with_capacity(256);
        let mut batch: Vec<(u64, Out)> = Vec::with_capacity(256);
        let mut number: u64 = 0;
        let mut backoff = Duration::from_millis(50);
        let mut stopping = false;
        // Every join and leave since the last mark was made (see `Out::Written`).
        let mut all_made = true;
        loop {
            if batch.is_empty() {
                if stopping {
                    return;
                }
                tokio::select! {
                    () = self.stop.cancelled() => {
                        // The last sends of a node shutting down still go out.
                        stopping = true;
                        rx.close();
                        while let Ok(item) = rx.try_recv() {
                            incoming.push(item);
                        }
                    }
                    () = self.resync_now.notified() => {}
                    n = rx.recv_many(&mut incoming, 1024) => {
                        if n == 0 {
                            return;
                        }
                    }
                }
                for item in incoming.drain(..) {
                    number += 1;
                    batch.push((number, item));
                }
            }
            let written = match &conn {
                Some(c) => {
                    let mut c = c.clone();
                    if !loaded {
                        loaded = load_scripts(&mut c, &append).await.is_ok();
                    }
                    self.write_batch(&mut c, append.get_hash(), &batch).await
                }
                None => match self.client.get_connection_manager().await {
                    Ok(c) => {
                        conn = Some(c);
                        continue;
                    }
                    Err(e) => Err(e),
                },
            };
            match written {
                Ok(made) => {
                    all_made &= made;
                    let bytes: usize = batch.iter().map(|(_, o)| o.bytes()).sum();
                    self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                    self.published
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    for (_, item) in batch.drain(..) {
                        if let Out::Written(waiting) = item {
                            let _ = waiting.send(std::mem::replace(&mut all_made, true));
                        }
                    }
                    backoff = Duration::from_millis(50);
                }
                Err(e) if !worth_retrying(&e) => {
                    // Redis refused a command for good (a key of the wrong type, a
                    // script error): retrying would stall every send behind it. The
                    // rest of the pipeline ran; what failed is dropped, and counted.
                    let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(error = %e, dropped = n, "Redis refused a write; dropped");
                    let bytes: usize = batch.iter().map(|(_, o)| o.bytes()).sum();
                    self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                    batch.clear();
                }
                Err(e) if stopping => {
                    tracing::warn!(error = %e, lost = batch.len(), "Redis write failed while stopping");
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "Redis write failed; retrying the batch");
                    // Redis may have restarted without our script: load it again.
                    loaded = false;
                    self.resync.store(true, Ordering::Release);
                    self.set_healthy(false);
                    tokio::select! {
                        () = self.stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// One round trip: the membership rewrite if one is due, then the batch. True when
    /// Redis made every join and leave in it (their changes' only answers read).
    async fn write_batch(
        &self,
        conn: &mut redis::aio::ConnectionManager,
        sha: &str,
        batch: &[(u64, Out)],
    ) -> redis::RedisResult<bool> {
        let mut pipe = redis::pipe();
        let resync = self.resync.swap(false, Ordering::AcqRel);
        if resync {
            self.resync_pipe(&mut pipe);
        }
        for (number, item) in batch {
            match item {
                Out::Publish { data, log, keys } => {
                    self.append_pipe(&mut pipe, sha, *number, data, (log, keys));
                }
                Out::Presence(event, generation) => {
                    self.presence_pipe(&mut pipe, event, *generation);
                }
                Out::Written(_) => {}
            }
        }
        if pipe.is_empty() {
            return Ok(true);
        }
        let written = pipe.query_async::<Vec<i64>>(conn).await;
        if written.is_err() && resync {
            self.resync.store(true, Ordering::Release);
        }
        written.map(|changes| !changes.contains(&0))
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
            // How many nodes the beat added: 1 when this node was not listed, because a
            // peer took it for dead (its link down longer than `node_ttl`) and removed
            // its keys, or because Redis restarted empty.
            let beat: redis::RedisResult<i64> =
                conn.zadd(self.nodes_key(), &self.node, now_ms()).await;
            match beat {
                Ok(added) => {
                    // Redis answers again: healthy, if the subscription held (a stall
                    // breaks the heartbeat, not always the subscription).
                    self.set_healthy(self.subscribed.load(Ordering::Acquire));
                    if added > 0 {
                        // Listed anew: this node's membership is written again, or its
                        // clients would count in no room across the cluster.
                        tracing::info!(node = %self.node, "not listed in Redis: writing this node's membership again");
                        self.resync.store(true, Ordering::Release);
                    }
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

/// Loads the scripts the writer sends by their hash: the append, a session's change,
/// a connected session's life, a leave of a room, an identity forgotten.
async fn load_scripts(
    conn: &mut redis::aio::ConnectionManager,
    append: &redis::Script,
) -> redis::RedisResult<()> {
    append.load_async(conn).await?;
    CHANGE_SCRIPT.load_async(conn).await?;
    KEEP_CONNECTED_SCRIPT.load_async(conn).await?;
    LEAVE_ROOM_SCRIPT.load_async(conn).await?;
    FORGET_IDENTITY_SCRIPT.load_async(conn).await?;
    Ok(())
}

/// Whether a failed write may succeed if written again: the link failed, or Redis was
/// busy, loading, or had lost the script; not when it refused a command itself (the
/// errors of a pipeline are each a server's answer).
fn worth_retrying(e: &redis::RedisError) -> bool {
    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
        return true;
    }
    match e.clone().into_server_errors() {
        Some(errors) => errors.iter().all(|(_, error)| {
            matches!(
                error.code(),
                "NOSCRIPT" | "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY"
            )
        }),
        None => true,
    }
}
