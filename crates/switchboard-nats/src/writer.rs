//! The writer task: everything this node sends to NATS, in order, off the senders'
//! path. A numbered send is stored in JetStream with the next offset of its subject:
//! the offset is the subject's last plus one, and the publish says which stored
//! message it must follow (`Nats-Expected-Last-Subject-Sequence`), so two nodes
//! sending to one room at once cannot take the same offset: the later is refused,
//! reads the room's new last message, and tries again. A retry after a lost
//! acknowledgement carries the same message id, and JetStream drops the copy.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::RawMessageErrorKind;
use bytes::Bytes;
use futures_util::future::join_all;
use switchboard_server::ConnId;
use tokio::sync::mpsc;

use crate::batch;
use crate::shared::{Out, Shared, lock, new_epoch};

/// Header: the stream's epoch.
pub(crate) const EPOCH: &str = "Sb-Epoch";
/// Header: the message's offset in its stream (0: the mark that opens a stream).
pub(crate) const OFFSET: &str = "Sb-Offset";
/// Header: who the message is not for (client ids, comma-separated).
pub(crate) const EXCLUDE: &str = "Sb-Exclude";

/// Items taken from the queue at once.
const BATCH: usize = 512;

/// Where a stored subject stands: its epoch, the offset of its last message, and
/// that message's sequence in the JetStream stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tip {
    pub(crate) epoch: String,
    pub(crate) offset: u64,
    pub(crate) seq: u64,
}

/// A numbered send waiting in a subject's group.
struct Numbered {
    frame: Bytes,
    exclude: Vec<ConnId>,
    id: u64,
}

/// How a numbered publish ended.
enum Published {
    /// Stored at this tip.
    At(Tip),
    /// Another node's message came first: read the tip again.
    Raced,
    /// Stored already (a retry after a lost acknowledgement): read the tip again.
    Duplicate,
    /// Refused for good (too large): dropped.
    Refused,
}

pub(crate) fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|v| v.as_str())
}

pub(crate) fn exclude_of(headers: Option<&HeaderMap>) -> Vec<ConnId> {
    header(headers, EXCLUDE)
        .map(|x| x.split(',').filter_map(|id| id.parse().ok()).collect())
        .unwrap_or_default()
}

/// The tip a stored message gives (`None` for a message without a position).
pub(crate) fn tip_of(headers: Option<&HeaderMap>, seq: u64) -> Option<Tip> {
    let epoch = header(headers, EPOCH)?.to_owned();
    let offset = header(headers, OFFSET)?.parse().ok()?;
    Some(Tip { epoch, offset, seq })
}

impl Shared {
    pub(crate) async fn write_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Out>) {
        let mut tips: HashMap<String, Tip> = HashMap::new();
        loop {
            let first = tokio::select! {
                () = self.stop.cancelled() => return,
                item = rx.recv() => item,
            };
            let Some(first) = first else { return };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            let bytes: usize = batch.iter().map(Out::bytes).sum();
            let mut groups: Vec<(String, Vec<Numbered>)> = Vec::new();
            let mut index: HashMap<String, usize> = HashMap::new();
            for item in batch {
                match item {
                    Out::Numbered {
                        subject,
                        frame,
                        exclude,
                        id,
                    } => {
                        let i = *index.entry(subject.clone()).or_insert_with(|| {
                            groups.push((subject, Vec::new()));
                            groups.len() - 1
                        });
                        groups[i].1.push(Numbered { frame, exclude, id });
                    }
                    Out::Plain {
                        subject,
                        headers,
                        payload,
                    } => self.publish_plain(subject, headers, payload).await,
                }
            }
            // Subjects in parallel, each one's sends in order.
            let runs = groups.into_iter().map(|(subject, items)| {
                let tip = tips.remove(&subject);
                let shared = &self;
                async move {
                    let tip = shared.publish_group(&subject, items, tip).await;
                    (subject, tip)
                }
            });
            let done = join_all(runs).await;
            if tips.len() > 100_000 {
                tips.clear();
            }
            for (subject, tip) in done {
                if let Some(tip) = tip {
                    tips.insert(subject, tip);
                }
            }
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    async fn publish_plain(&self, subject: String, headers: Option<HeaderMap>, payload: Bytes) {
        let Ok(link) = self.link() else { return };
        let sent = match headers {
            Some(h) => link.client.publish_with_headers(subject, h, payload).await,
            None => link.client.publish(subject, payload).await,
        };
        match sent {
            Ok(()) => {
                self.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "a NATS publish failed");
            }
        }
    }

    /// Stores a subject's sends in order; returns the subject's tip after them.
    async fn publish_group(
        &self,
        subject: &str,
        items: Vec<Numbered>,
        mut tip: Option<Tip>,
    ) -> Option<Tip> {
        let mut backoff = Duration::from_millis(50);
        let mut next = 0;
        while next < items.len() {
            if self.stop.is_cancelled() {
                return None;
            }
            let current = match tip.take() {
                Some(t) => Some(t),
                None => match self.read_tip(subject).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot read a stream's tip; retrying");
                        self.pause(&mut backoff).await;
                        continue;
                    }
                },
            };
            let Some(current) = current.or_else(|| self.opening_tip(subject)) else {
                // A client without a session in the cluster: its message is not kept.
                let item = &items[next];
                let delivered = subject.replacen(".s.", ".d.", 1);
                let mut headers = HeaderMap::new();
                headers.insert(EXCLUDE, join_ids(&item.exclude).as_str());
                self.publish_plain(delivered, Some(headers), item.frame.clone())
                    .await;
                next += 1;
                continue;
            };
            // The reader may know of a newer message (another node's): start from it.
            let current = match lock(&self.seen_tips).get(subject) {
                Some(seen) if seen.seq > current.seq && seen.epoch == current.epoch => seen.clone(),
                _ => current,
            };
            // The sends waiting for this stream go together (see batch.rs).
            let mut end = next + 1;
            let mut bytes = items[next].frame.len();
            while end < items.len()
                && end - next < batch::MOST
                && bytes + items[end].frame.len() <= batch::MOST_BYTES
            {
                bytes += items[end].frame.len();
                end += 1;
            }
            let chunk = &items[next..end];
            match self.publish_numbered(subject, chunk, &current).await {
                Ok(Published::At(t)) => {
                    self.published
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    tip = Some(t);
                    next = end;
                    backoff = Duration::from_millis(50);
                }
                Ok(Published::Raced) => {}
                Ok(Published::Duplicate) => next = end,
                Ok(Published::Refused) => {
                    self.dropped
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    tracing::warn!(
                        subject,
                        "NATS refused a message for good (too large?); dropped"
                    );
                    next = end;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "a JetStream publish failed; retrying");
                    self.pause(&mut backoff).await;
                }
            }
        }
        tip
    }

    /// The tip a stream starts from when it has no message: a room's or the
    /// broadcasts' new epoch; none for a client's (its session opens its stream).
    fn opening_tip(&self, subject: &str) -> Option<Tip> {
        let client = format!("{}.s.client.", self.config.prefix);
        (!subject.starts_with(&client)).then(|| Tip {
            epoch: new_epoch(),
            offset: 0,
            seq: 0,
        })
    }

    /// Waits `backoff` (or until the node stops), and doubles it up to a second.
    pub(crate) async fn pause(&self, backoff: &mut Duration) {
        tokio::select! {
            () = self.stop.cancelled() => {}
            () = tokio::time::sleep(*backoff) => {}
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(1));
    }

    /// Stores `chunk` (one send, or several together) after `tip`.
    async fn publish_numbered(
        &self,
        subject: &str,
        chunk: &[Numbered],
        tip: &Tip,
    ) -> Result<Published, async_nats::Error> {
        let last = tip.offset + chunk.len() as u64;
        let (payload, exclude) = match chunk {
            [one] => (one.frame.clone(), join_ids(&one.exclude)),
            _ => (
                batch::pack(chunk.iter().map(|n| (&n.frame[..], &n.exclude[..]))),
                String::new(),
            ),
        };
        let first = chunk.first().map_or(0, |n| n.id);
        let mut message = PublishMessage::build()
            .payload(payload)
            .header(EPOCH, tip.epoch.as_str())
            .header(OFFSET, last.to_string().as_str())
            .message_id(format!("{}-{first}-{}", self.node, chunk.len()))
            .expected_last_subject_sequence(tip.seq);
        if chunk.len() > 1 {
            message = message.header(batch::COUNT, chunk.len().to_string().as_str());
        }
        if !exclude.is_empty() {
            message = message.header(EXCLUDE, exclude.as_str());
        }
        self.store(subject, message, tip.epoch.clone(), last).await
    }

    /// Opens a stream that has no message with a mark (offset 0) in `epoch`, unless
    /// another node opened it first; returns its tip either way.
    pub(crate) async fn open_stream(
        &self,
        subject: &str,
        epoch: &str,
    ) -> Result<Tip, async_nats::Error> {
        for _ in 0..10 {
            if let Some(tip) = self.read_tip(subject).await? {
                return Ok(tip);
            }
            let mark = PublishMessage::build()
                .payload(Bytes::new())
                .header(EPOCH, epoch)
                .header(OFFSET, "0")
                .expected_last_subject_sequence(0);
            match self.store(subject, mark, epoch.to_owned(), 0).await? {
                Published::At(tip) => return Ok(tip),
                Published::Refused => return Err("NATS refused a stream's mark".into()),
                Published::Raced | Published::Duplicate => {}
            }
        }
        Err("a stream could not be opened: too many nodes raced".into())
    }

    async fn store(
        &self,
        subject: &str,
        message: PublishMessage,
        epoch: String,
        offset: u64,
    ) -> Result<Published, async_nats::Error> {
        let link = self.link()?;
        let ack = match link.js.send_publish(subject.to_owned(), message).await {
            Ok(pending) => pending.await,
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                self.ensure_stream().await?;
                self.reconnected.notify_one();
                return Err(e.into());
            }
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                return Ok(Published::Refused);
            }
            Err(e) => return Err(e.into()),
        };
        match ack {
            Ok(ack) if ack.duplicate => Ok(Published::Duplicate),
            Ok(ack) => Ok(Published::At(Tip {
                epoch,
                offset,
                seq: ack.sequence,
            })),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(Published::Raced),
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                self.ensure_stream().await?;
                self.reconnected.notify_one();
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Where a stored subject stands now (`None`: it has no message).
    pub(crate) async fn read_tip(&self, subject: &str) -> Result<Option<Tip>, async_nats::Error> {
        let link = self.link()?;
        match link.stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Ok(tip_of(Some(&m.headers), m.sequence)),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

pub(crate) fn join_ids(ids: &[ConnId]) -> String {
    let mut out = String::with_capacity(ids.len() * 17);
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&id.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_message_says_where_it_stands_and_who_it_is_not_for() {
        let mut h = HeaderMap::new();
        h.insert(EPOCH, "00000000000000ab");
        h.insert(OFFSET, "42");
        h.insert(
            EXCLUDE,
            join_ids(&[ConnId::from_u64(1), ConnId::from_u64(2)]).as_str(),
        );
        assert_eq!(
            tip_of(Some(&h), 7),
            Some(Tip {
                epoch: "00000000000000ab".into(),
                offset: 42,
                seq: 7
            })
        );
        assert_eq!(
            exclude_of(Some(&h)),
            [ConnId::from_u64(1), ConnId::from_u64(2)]
        );
        // A plain message (a user's, a client's without a session) has no position.
        assert_eq!(tip_of(None, 7), None);
        let mut junk = HeaderMap::new();
        junk.insert(EPOCH, "e");
        junk.insert(OFFSET, "not a number");
        junk.insert(EXCLUDE, "zz,");
        assert_eq!(tip_of(Some(&junk), 1), None);
        assert!(exclude_of(Some(&junk)).is_empty());
        assert_eq!(join_ids(&[]), "");
    }
}
