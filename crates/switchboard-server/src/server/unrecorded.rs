//! Sessions this node serves that the cluster does not know as this node's: fresh ones
//! whose record could not be written (the backplane was away when the client
//! connected), and ones resumed from this node's own copy without a claim (the
//! backplane was away, or the copy's changes were not yet written). Each is opened or
//! claimed as soon as the backplane answers again, while its client is still served
//! here, so the client may resume on any node when it drops.
//!
//! A copy resumed unclaimed may be older than the cluster's record: the session lived
//! on another node meanwhile, and this node, cut off, missed the notice. Such a copy is
//! not served on: its connection is closed with `STREAM_RESET`, so the client resumes
//! again, from the record, and its changes made on the old copy (written under its old
//! generation) are refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use switchboard_proto::{ErrorCode, ResumeRequest};

use super::Server;
use crate::ConnId;
use crate::backplane::PresenceEvent;
use crate::delivery::Session;
use crate::locks::lock;

/// The first wait before a claim is tried again; it doubles up to [`MOST`].
const FIRST: Duration = Duration::from_millis(100);

/// The longest wait between two tries.
const MOST: Duration = Duration::from_secs(1);

/// Why a connection served from an old copy is closed.
pub(crate) const OLDER_COPY: &str =
    "this node's copy of the session was older than the cluster's: resume again";

/// The sessions waiting to be claimed or written, and whether a task is trying.
#[derive(Default)]
pub(crate) struct Unrecorded {
    waiting: Mutex<HashMap<ConnId, Waiting>>,
    trying: AtomicBool,
}

/// A session waiting for the cluster: what it needs, the copy served here, and that
/// copy's generation then.
#[derive(Clone)]
struct Waiting {
    wanted: Wanted,
    session: Weak<Session>,
    generation: u64,
}

/// What a waiting session needs of the cluster.
#[derive(Clone)]
enum Wanted {
    /// Its record written (a fresh session's; the cluster has none).
    Open,
    /// A claim, with the resume that found it here (its session id, token, attempt).
    Claim(ResumeRequest),
}

impl Unrecorded {
    fn snapshot(&self) -> Vec<(ConnId, Waiting)> {
        lock(&self.waiting)
            .iter()
            .map(|(client, w)| (*client, w.clone()))
            .collect()
    }

    /// Forgets `client`'s wait if it is still the one for `generation`.
    fn settle(&self, client: ConnId, generation: u64) {
        let mut waiting = lock(&self.waiting);
        if waiting
            .get(&client)
            .is_some_and(|w| w.generation == generation)
        {
            waiting.remove(&client);
        }
    }

    /// Whether `client`'s session waits for the cluster (a claim of the copy its
    /// connection is served from, or its first write); it no longer waits after this.
    pub(crate) fn take(&self, client: ConnId) -> bool {
        lock(&self.waiting).remove(&client).is_some()
    }

    /// Stops trying when nothing waits; true when it stopped. A wait added meanwhile
    /// finds no task trying and starts one.
    fn stop_if_done(&self) -> bool {
        let waiting = lock(&self.waiting);
        if waiting.is_empty() {
            self.trying.store(false, Ordering::Release);
            return true;
        }
        false
    }
}

impl Server {
    /// Claims later `session`, served from this node's copy for `request` without
    /// being claimed in the cluster.
    pub(crate) fn claim_later(&self, session: &Arc<Session>, request: &ResumeRequest) {
        let resume = ResumeRequest {
            session_id: request.session_id.clone(),
            token: request.token.clone(),
            streams: Default::default(),
            resend: Vec::new(),
            attempt: request.attempt,
        };
        self.wait_for_cluster(session, Wanted::Claim(resume));
    }

    /// Writes later the record of `session`, a fresh one the backplane could not keep.
    pub(crate) fn open_later(&self, session: &Arc<Session>) {
        self.wait_for_cluster(session, Wanted::Open);
    }

    fn wait_for_cluster(&self, session: &Arc<Session>, wanted: Wanted) {
        let waiting = Waiting {
            wanted,
            session: Arc::downgrade(session),
            generation: session.generation(),
        };
        let unrecorded = &self.inner.unrecorded;
        lock(&unrecorded.waiting).insert(session.client(), waiting);
        if !unrecorded.trying.swap(true, Ordering::AcqRel) {
            let server = self.clone();
            self.spawn_tracked(async move { server.claim_waiting().await });
        }
    }

    /// Tries the waiting claims, less often as it goes, until none waits or the
    /// server stops.
    async fn claim_waiting(self) {
        let stop = self.inner.stop_accepting.clone();
        let mut wait = FIRST;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            for (client, waiting) in self.inner.unrecorded.snapshot() {
                self.claim_one(client, waiting).await;
            }
            if self.inner.unrecorded.stop_if_done() {
                return;
            }
            wait = (wait * 2).min(MOST);
        }
    }

    /// One try at opening or claiming `client`'s session (see the module's doc).
    async fn claim_one(&self, client: ConnId, waiting: Waiting) {
        let unrecorded = &self.inner.unrecorded;
        let Waiting {
            wanted,
            session,
            generation,
        } = waiting;
        let Some(session) = session.upgrade() else {
            return unrecorded.settle(client, generation);
        };
        if session.generation() != generation || session.lock().is_ended() {
            return unrecorded.settle(client, generation); // claimed since, or over
        }
        // Only a session a connection serves here is claimed for: one whose client went
        // away is claimed by its next resume, wherever it lands (and one still being
        // resumed is tried again later).
        let Some(conn) = session.lock().live().cloned() else {
            return;
        };
        let backplane = &self.inner.backplane;
        if !backplane.is_healthy() || self.changes_written_of(client).await.is_none() {
            return;
        }
        let resume = match wanted {
            Wanted::Claim(resume) => resume,
            Wanted::Open => {
                let ttl = self.inner.config.session_ttl;
                let record = session.record(conn.identity().as_deref().cloned(), ttl);
                if let Err(e) = backplane.open_session(&record).await {
                    return tracing::debug!(error = %e, %client, "keeping a session in the cluster failed again");
                }
                unrecorded.settle(client, generation);
                // Its rooms, joined before the record was there, are written now.
                for room in conn.rooms() {
                    backplane.presence(&PresenceEvent::Joined(client, room));
                }
                return;
            }
        };
        match backplane.claim_session(client, &resume).await {
            Err(e) => tracing::debug!(error = %e, %client, "claiming a session again failed"),
            Ok(Some((record, rooms))) => {
                unrecorded.settle(client, generation);
                if record.generation > generation + 1 {
                    // Its detachment, in the old generation, is refused: the record
                    // keeps the rooms the session had where it lived meanwhile.
                    tracing::info!(%client, "a session resumed from an older copy here: sent to resume again");
                    conn.close(ErrorCode::StreamReset, OLDER_COPY);
                } else {
                    session.claimed(record.generation, rooms);
                }
            }
            // No such record (it was never written, or it ended), or the client's
            // attempt is one it gave up on (it went on elsewhere, and this connection
            // is a leftover the notice of that claim closes).
            Ok(None) => unrecorded.settle(client, generation),
        }
    }
}
