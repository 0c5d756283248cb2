//! The reader task: this node subscribes to the subjects its clients need and to
//! nothing else (interest-based routing: NATS sends a node a room's messages only
//! while it has members there, or keeps the room's stream for clients that may come
//! back), and delivers each stream's messages in order, once.
//!
//! Messages arrive as JetStream republishes them after storing them, each with its
//! sequence, epoch and offset. A node remembers, per subject, the last it delivered;
//! an older one is a duplicate, and a gap (the link dropped, or a subscriber fell
//! behind) is filled from the stream before going on. When the link comes back, every
//! followed subject is caught up the same way, so a node cut from NATS misses nothing
//! the stream still holds.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::HeaderMap;
use futures_util::StreamExt;
use switchboard_server::{Delivery, Sequence, Target};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::batch;
use crate::shared::{Shared, lock};
use crate::subjects::Received;
use crate::writer::{Tip, exclude_of, header, tip_of};

/// How often the subscriptions are matched against what the node needs.
const RECONCILE: Duration = Duration::from_millis(500);

/// How long a new subscription waits for NATS to confirm it.
const FLUSH: Duration = Duration::from_secs(1);

/// How long a caller waits for the reader to follow a subject.
const FOLLOW: Duration = Duration::from_secs(2);

/// Messages waiting between the subscriptions and the reader.
const INBOX: usize = 8192;

/// What the reader is asked to do.
pub(crate) enum Command {
    /// Follow a subject now (a join, a resume): answered once subscribed.
    Follow(String, Option<oneshot::Sender<()>>),
}

/// The reader's state.
struct Reader {
    shared: Arc<Shared>,
    inbox: mpsc::Sender<async_nats::Message>,
    /// Subscribed subjects and their forwarding tasks.
    following: HashMap<String, AbortHandle>,
    /// Per followed stream subject: the last message delivered.
    delivered: HashMap<String, Tip>,
}

impl Shared {
    pub(crate) async fn read_loop(
        self: Arc<Self>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        started: oneshot::Sender<()>,
    ) {
        let (inbox, mut messages) = mpsc::channel(INBOX);
        let mut reader = Reader {
            shared: Arc::clone(&self),
            inbox,
            following: HashMap::new(),
            delivered: HashMap::new(),
        };
        let all = self.subjects.delivered(&Target::All).unwrap_or_default();
        reader.follow(&all).await;
        reader.reconcile().await;
        let _ = started.send(());
        let mut tick = tokio::time::interval(RECONCILE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => break,
                Some(message) = messages.recv() => reader.receive(message).await,
                Some(command) = commands.recv() => match command {
                    Command::Follow(subject, done) => {
                        reader.follow(&subject).await;
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                    }
                },
                () = self.reconnected.notified() => reader.catch_up_all().await,
                _ = tick.tick() => reader.reconcile().await,
            }
        }
        for (_, task) in reader.following.drain() {
            task.abort();
        }
    }

    /// Asks the reader to follow `target`'s subject and waits until it does (so no
    /// message published after this returns is missed).
    pub(crate) async fn follow(&self, target: &Target) {
        let Some(subject) = self.subjects.delivered(target) else {
            return;
        };
        if lock(&self.followed).contains(&subject) {
            return; // followed already: nothing after now can be missed
        }
        let (done, followed) = oneshot::channel();
        if self
            .commands
            .send(Command::Follow(subject, Some(done)))
            .is_ok()
        {
            let _ = tokio::time::timeout(FOLLOW, followed).await;
        }
    }

    /// Asks the reader to follow a subject, without waiting.
    pub(crate) fn follow_soon(&self, subject: String) {
        let _ = self.commands.send(Command::Follow(subject, None));
    }
}

impl Reader {
    /// Subscribes to `subject` (once), and for a stream learns where it stands.
    async fn follow(&mut self, subject: &str) {
        if self.following.contains_key(subject) {
            return;
        }
        let Ok(link) = self.shared.link() else { return };
        let mut subscriber = match link.client.subscribe(subject.to_owned()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, subject, "cannot subscribe");
                return;
            }
        };
        let inbox = self.inbox.clone();
        let task = self.shared.tasks.spawn(async move {
            while let Some(message) = subscriber.next().await {
                if inbox.send(message).await.is_err() {
                    break;
                }
            }
        });
        self.following
            .insert(subject.to_owned(), task.abort_handle());
        // Subscribed once NATS has it (bounded: a link that is down comes back later,
        // and the catch-up after it fills what was missed meanwhile).
        match tokio::time::timeout(FLUSH, link.client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot flush a subscription"),
            Err(_) => tracing::debug!("flushing a subscription timed out"),
        }
        if let Some(stored) = self.shared.subjects.stored_of_delivered(subject) {
            if !self.delivered.contains_key(subject) {
                match self.shared.read_tip(&stored).await {
                    Ok(Some(tip)) => {
                        self.delivered.insert(subject.to_owned(), tip);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, subject, "cannot read a stream's tip"),
                }
            }
        }
        lock(&self.shared.followed).insert(subject.to_owned());
    }

    fn unfollow(&mut self, subject: &str) {
        lock(&self.shared.followed).remove(subject);
        if let Some(task) = self.following.remove(subject) {
            task.abort(); // dropping the subscriber unsubscribes
        }
        self.delivered.remove(subject);
    }

    /// Subscribes to what the node needs now and unsubscribes from the rest.
    async fn reconcile(&mut self) {
        let Some(node) = self.shared.node_handle.get() else {
            return;
        };
        let interests = node.interests();
        let subjects = &self.shared.subjects;
        let mut wanted: HashSet<String> = HashSet::new();
        wanted.extend(subjects.delivered(&Target::All));
        for room in interests.rooms {
            wanted.extend(subjects.delivered(&Target::Room(room)));
        }
        for client in interests.clients {
            wanted.extend(subjects.delivered(&Target::Conns(vec![client])));
        }
        let users: HashSet<String> = lock(&self.shared.identities)
            .values()
            .map(|(user, _)| user.clone())
            .collect();
        wanted.extend(users.iter().map(|u| subjects.user(u)));
        let stale: Vec<String> = self
            .following
            .keys()
            .filter(|s| !wanted.contains(*s))
            .cloned()
            .collect();
        for subject in stale {
            self.unfollow(&subject);
        }
        for subject in wanted {
            if !self.following.contains_key(&subject) {
                self.follow(&subject).await;
            }
        }
    }

    async fn receive(&mut self, message: async_nats::Message) {
        let subject = message.subject.as_str().to_owned();
        let Some(received) = self.shared.subjects.parse(&subject) else {
            return;
        };
        let headers = message.headers.as_ref();
        let target = match received {
            Received::User(user) => Target::User(user),
            Received::Stream(target) => target,
        };
        let seq = header(headers, "Nats-Sequence").and_then(|s| s.parse().ok());
        let (Some(seq), Some(tip)) = (seq, seq.and_then(|s| tip_of(headers, s))) else {
            // Not kept: a user's message, or a client's without a session.
            if let Ok(frame) = std::str::from_utf8(&message.payload) {
                self.deliver_plain(target, headers, frame.to_owned());
            }
            return;
        };
        if let Some(last) = self
            .delivered
            .get(&subject)
            .filter(|l| l.epoch == tip.epoch)
        {
            if seq <= last.seq {
                return; // delivered already (caught up from the stream)
            }
            if batch::first_offset(headers, &tip) > last.offset + 1 {
                // A gap: what came between is in the stream.
                self.catch_up(&subject).await;
                if self.delivered.get(&subject).is_some_and(|l| seq <= l.seq) {
                    return;
                }
            }
        }
        self.deliver_numbered(&subject, target, headers, &message.payload, tip);
    }

    fn deliver_plain(&self, target: Target, headers: Option<&HeaderMap>, frame: String) {
        let Some(node) = self.shared.node_handle.get() else {
            return;
        };
        let delivery = Delivery {
            target,
            exclude: exclude_of(headers),
            frame,
        };
        self.shared.received.fetch_add(1, Ordering::Relaxed);
        node.deliver(&delivery);
    }

    /// Delivers the sends a stored message holds (one, or several stored together).
    fn deliver_numbered(
        &mut self,
        subject: &str,
        target: Target,
        headers: Option<&HeaderMap>,
        payload: &[u8],
        tip: Tip,
    ) {
        let sends = batch::unpack(headers, payload, &tip);
        if sends.is_empty() && tip.offset > 0 {
            // Not one of ours: skipped, and said (the stream's order goes on).
            tracing::warn!(
                subject,
                seq = tip.seq,
                "ignoring a malformed stored message"
            );
        }
        let epoch = tip.epoch.clone();
        if let Some(stored) = self.shared.subjects.stored_of_delivered(subject) {
            let mut seen = lock(&self.shared.seen_tips);
            if seen.len() > 100_000 {
                seen.clear();
            }
            seen.insert(stored, tip.clone());
        }
        self.delivered.insert(subject.to_owned(), tip);
        let Some(node) = self.shared.node_handle.get() else {
            return;
        };
        for send in sends {
            let delivery = Delivery {
                target: target.clone(),
                exclude: send.exclude,
                frame: send.frame,
            };
            let sequence = Sequence {
                epoch: epoch.clone(),
                offset: send.offset,
            };
            self.shared.received.fetch_add(1, Ordering::Relaxed);
            node.deliver_sequenced(&delivery, &sequence);
        }
    }

    /// Delivers, in order, what the stream holds for `subject` after the last message
    /// delivered here.
    async fn catch_up(&mut self, subject: &str) {
        let Some(stored) = self.shared.subjects.stored_of_delivered(subject) else {
            return;
        };
        let Some(Received::Stream(target)) = self.shared.subjects.parse(subject) else {
            return;
        };
        let from = self.delivered.get(subject).map_or(1, |t| t.seq + 1);
        let messages = match self.shared.read_from(&stored, from, None, u64::MAX).await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, subject, "catching up from the stream failed");
                return;
            }
        };
        for m in messages {
            let Some(tip) = tip_of(Some(&m.headers), m.seq) else {
                continue;
            };
            self.deliver_numbered(subject, target.clone(), Some(&m.headers), &m.payload, tip);
        }
    }

    /// The link came back: every followed stream catches up on what it missed. If
    /// NATS lost the stream meanwhile, what this node's clients missed cannot be known:
    /// they are all sent to resume (and hear `recovered: false`).
    async fn catch_up_all(&mut self) {
        match self.shared.ensure_stream().await {
            Ok(true) => {
                tracing::warn!(node = %self.shared.node, "NATS lost the stream of messages");
                self.delivered.clear();
                if let Some(node) = self.shared.node_handle.get() {
                    node.lost_messages();
                }
                return;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(error = %e, "cannot check the stream after a reconnect; again soon");
                let shared = Arc::clone(&self.shared);
                self.shared.tasks.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    shared.reconnected.notify_one();
                });
            }
        }
        let subjects: Vec<String> = self
            .following
            .keys()
            .filter(|s| self.shared.subjects.stored_of_delivered(s).is_some())
            .cloned()
            .collect();
        for subject in subjects {
            self.catch_up(&subject).await;
        }
    }
}
