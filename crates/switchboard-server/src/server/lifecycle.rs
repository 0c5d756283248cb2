//! A server's life: start (backplane, startup hooks, heartbeats), and the graceful
//! shutdown.

use std::sync::atomic::Ordering;
use std::time::Duration;

use switchboard_proto::ErrorCode;

use super::Server;
use crate::ServeError;
use crate::backplane::NodeHandle;
use crate::clock::now_ms;
use crate::connection::Closing;
use crate::ws::Frame;

impl Server {
    /// Starts the backplane and runs the startup hooks. [`serve`](Server::serve) and
    /// [`run`](Server::run) call it; call it yourself when you mount
    /// [`router`](Server::router) in your own app.
    pub async fn start(&self) -> Result<(), ServeError> {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return Err(ServeError::AlreadyStarted);
        }
        if self.inner.config.password.as_deref() == Some("") {
            return Err(ServeError::Config(
                "`password` is empty; set a real one or none".into(),
            ));
        }
        self.inner
            .backplane
            .start(NodeHandle::new(self.downgrade()))
            .await
            .map_err(ServeError::Backplane)?;
        self.learn_positions([crate::backplane::Target::All]).await;
        self.inner.running.store(true, Ordering::Release);
        self.start_heartbeats();
        self.start_housekeeping();
        for hook in &self.inner.hooks.startup {
            hook(self.clone()).await;
        }
        Ok(())
    }

    /// Every `heartbeat_interval`: ping the clients idle that long, close those silent
    /// past `heartbeat_timeout`. One task for the whole server, not a timer per connection.
    fn start_heartbeats(&self) {
        let interval = self.inner.config.heartbeat_interval;
        let timeout = self.inner.config.heartbeat_timeout;
        if interval.is_zero() || timeout.is_zero() {
            return;
        }
        let tick = interval.min(timeout / 2).max(Duration::from_millis(10));
        let weak = self.downgrade();
        let stop = self.inner.stop_accepting.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(tick);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let ping_after = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
            let dead_after = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let Some(server) = weak.upgrade() else { return };
                let now = now_ms();
                let wall = crate::jwt::unix_seconds();
                server.inner.registry.for_each(|c| {
                    let idle = c.idle_ms(now);
                    let expired = c.with_identity(|who| {
                        who.and_then(crate::jwt::expires_at)
                            .is_some_and(|exp| exp < wall)
                    });
                    if expired {
                        tracing::info!(conn = %c.id(), "token expired");
                        c.close(ErrorCode::TokenExpired, "get a new token, then reconnect");
                    } else if idle >= dead_after {
                        tracing::info!(conn = %c.id(), idle_ms = idle, "heartbeat timeout");
                        let message = format!("nothing heard for {idle} ms");
                        c.outbox().begin_close(Closing::abort_with_code(
                            ErrorCode::HeartbeatTimeout,
                            &message,
                        ));
                    } else if idle >= ping_after {
                        let _ = c.push(Frame::Ping);
                    }
                });
            }
        });
    }
    /// Every second or so: expire sessions and history, drop room streams nobody can
    /// come back to. One task for the whole server.
    fn start_housekeeping(&self) {
        let config = &self.inner.config;
        let shortest = config
            .history_rooms
            .iter()
            .map(|r| r.policy.ttl)
            .chain([config.history.ttl, config.session_ttl])
            .filter(|d| !d.is_zero())
            .min();
        let Some(shortest) = shortest else { return };
        let tick = (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        let weak = self.downgrade();
        let stop = self.inner.stop_accepting.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(tick);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let Some(server) = weak.upgrade() else { return };
                server.sweep_history();
            }
        });
    }

    /// Waits until shutdown has completed.
    pub async fn stopped(&self) {
        let mut rx = self.inner.stopped.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    /// Shuts down gracefully: stop accepting, run the shutdown hooks, close every client
    /// with 1001 (`SHUTTING_DOWN`, reconnect after backoff) once its in-flight handler
    /// finishes and its queue is flushed, wait for them up to
    /// [`shutdown_grace`](crate::ServerConfig::shutdown_grace) (then cancel the handlers still
    /// running and close those clients too), then stop the backplane.
    /// Calling it again waits for the first call to finish.
    pub async fn shutdown(&self) {
        if self.inner.shutting_down.swap(true, Ordering::AcqRel) {
            self.stopped().await;
            return;
        }
        self.inner.stop_accepting.cancel();
        for hook in &self.inner.hooks.shutdown {
            hook(self.clone()).await;
        }
        self.inner.registry.for_each(|c| {
            c.close(ErrorCode::ShuttingDown, "server shutting down");
        });
        self.inner.tracker.close();
        if tokio::time::timeout(self.inner.config.shutdown_grace, self.inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.inner.tracker.len(),
                "shutdown grace period over; aborting in-flight handlers"
            );
            self.inner.registry.for_each(|c| {
                c.outbox().begin_close(Closing::abort_with_code(
                    ErrorCode::ShuttingDown,
                    "server shutting down",
                ));
            });
            // Each connection now only sends its close frame (bounded by its own timeouts).
            let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.tracker.wait()).await;
        }
        self.inner.backplane.shutdown().await;
        self.inner.running.store(false, Ordering::Release);
        self.inner.stopped.send_replace(true);
        tracing::info!("switchboard stopped");
    }
}
