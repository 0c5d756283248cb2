//! Reading a stream's kept messages after an offset, for a resume: JetStream finds a
//! subject's next message from any sequence, so the first message after the offset is
//! found by bisecting the sequences (a few requests, whatever the stream's length),
//! and only the messages the client missed are read: one by one when they are few,
//! in batches through a short-lived consumer when they are many.

/// One kept message: its sequence in the stream, its headers and its payload.
pub(crate) struct Stored {
    pub(crate) seq: u64,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
}

impl From<StreamMessage> for Stored {
    fn from(m: StreamMessage) -> Stored {
        Stored {
            seq: m.sequence,
            headers: m.headers,
            payload: m.payload,
        }
    }
}

/// Beyond this many messages to read, a consumer reads them in batches.
const ONE_BY_ONE: u64 = 8;

/// How long one batch may take.
const READ: Duration = Duration::from_secs(2);

/// Messages one batch of a consumer brings.
const BATCH: usize = 512;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::RawMessageErrorKind;
use bytes::Bytes;
use futures_util::StreamExt;
use switchboard_server::{BackplaneError, KeptMessage, Target};

use crate::batch;
use crate::sessions::nats_err;
use crate::shared::Shared;
use crate::writer::{Tip, tip_of};

impl Shared {
    /// The message on `subject` at sequence `from` or the first after it.
    pub(crate) async fn next_on(
        &self,
        subject: &str,
        from: u64,
    ) -> Result<Option<StreamMessage>, BackplaneError> {
        let link = self.link()?;
        let got = link
            .stream
            .raw_message_builder()
            .sequence(from.max(1))
            .next_by_subject(subject.to_owned())
            .send()
            .await;
        match got {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(nats_err("reading a stream", e)),
        }
    }

    /// The stream's tip and its kept messages after `since` in the tip's epoch.
    pub(crate) async fn kept_after(
        &self,
        target: &Target,
        since: u64,
    ) -> Result<Option<(Tip, Vec<KeptMessage>)>, BackplaneError> {
        let Some(subject) = self.subjects.stored(target) else {
            return Ok(None);
        };
        let tip = self
            .read_tip(&subject)
            .await
            .map_err(|e| nats_err("reading a stream", e))?;
        let Some(tip) = tip else { return Ok(None) };
        let mut kept = Vec::new();
        if tip.offset <= since {
            return Ok(Some((tip, kept)));
        }
        let missed = |m: &StreamMessage| {
            tip_of(Some(&m.headers), m.sequence)
                .is_some_and(|at| at.epoch == tip.epoch && at.offset > since)
        };
        // The smallest sequence whose next message on the subject was missed.
        let (mut lo, mut hi) = (1, tip.seq);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.next_on(&subject, mid).await? {
                Some(m) if missed(&m) => hi = mid,
                Some(m) => lo = m.sequence.max(mid) + 1,
                None => break,
            }
        }
        let messages = self
            .read_from(&subject, lo, Some(tip.seq), tip.offset - since)
            .await?;
        for m in messages {
            let Some(at) = tip_of(Some(&m.headers), m.seq) else {
                continue;
            };
            if at.epoch != tip.epoch {
                continue;
            }
            for send in batch::unpack(Some(&m.headers), &m.payload, &at) {
                if send.offset > since && send.offset <= tip.offset {
                    kept.push(KeptMessage {
                        offset: send.offset,
                        frame: send.frame,
                        exclude: send.exclude,
                    });
                }
            }
        }
        Ok(Some((tip, kept)))
    }
}

impl Shared {
    /// The messages kept on `subject` from sequence `from` (up to `until` when given,
    /// else to the end), in order; `expected` says about how many there are.
    pub(crate) async fn read_from(
        &self,
        subject: &str,
        from: u64,
        until: Option<u64>,
        expected: u64,
    ) -> Result<Vec<Stored>, BackplaneError> {
        let mut out: Vec<Stored> = Vec::new();
        let past = |seq: u64| until.is_some_and(|u| seq >= u);
        let Some(first) = self.next_on(subject, from).await? else {
            return Ok(out);
        };
        let mut next = first.sequence + 1;
        let done = past(first.sequence);
        out.push(first.into());
        if done {
            return Ok(out);
        }
        if expected <= ONE_BY_ONE {
            while let Some(m) = self.next_on(subject, next).await? {
                next = m.sequence + 1;
                let done = past(m.sequence);
                out.push(m.into());
                if done {
                    break;
                }
            }
            return Ok(out);
        }
        let link = self.link()?;
        let consumer = link
            .stream
            .create_consumer(pull::Config {
                filter_subject: subject.to_owned(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: next,
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_err("reading a stream", e))?;
        'batches: loop {
            let mut batch = consumer
                .fetch()
                .max_messages(BATCH)
                .messages()
                .await
                .map_err(|e| nats_err("reading a stream", e))?;
            let mut got = 0;
            loop {
                let m = match tokio::time::timeout(READ, batch.next()).await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(_) => return Err(BackplaneError::new("reading a stream timed out")),
                };
                let m = m.map_err(|e| nats_err("reading a stream", e))?;
                let Ok(seq) = m.info().map(|i| i.stream_sequence) else {
                    continue;
                };
                got += 1;
                let m = m.split().0;
                out.push(Stored {
                    seq,
                    headers: m.headers.unwrap_or_default(),
                    payload: m.payload,
                });
                if past(seq) {
                    break 'batches;
                }
            }
            if got == 0 {
                break;
            }
        }
        let name = consumer.cached_info().name.clone();
        let stream = link.stream.clone();
        self.tasks.spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
        Ok(out)
    }
}
