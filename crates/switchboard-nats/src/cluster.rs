//! The cluster without a store of its own: nodes say they are alive on a heartbeat
//! subject, answer questions about their own clients (how many, who is in a room,
//! who authenticated as whom) and act on notices (a session moved, a disconnect).
//! A question goes to every node and waits for the live ones' answers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use switchboard_server::{BackplaneError, ConnId, Disconnect, UserTag};

use crate::janitor;
use crate::shared::{Shared, lock};

/// A notice every node hears.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Notice {
    /// A session was resumed on `node` in `generation`: older copies go.
    Moved {
        node: String,
        client: ConnId,
        generation: u64,
    },
    /// Disconnect every connection of a user.
    DisconnectUser {
        node: String,
        user: String,
        reason: String,
    },
    /// Disconnect one client.
    DisconnectClient {
        node: String,
        client: ConnId,
        reason: String,
    },
}

/// A question to every node.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "ask", rename_all = "snake_case")]
pub(crate) enum Question {
    Count,
    Members { room: String },
    Identities { clients: Vec<ConnId> },
}

/// One node's answer.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Answer {
    pub(crate) node: String,
    #[serde(default)]
    pub(crate) count: usize,
    #[serde(default)]
    pub(crate) members: Vec<ConnId>,
    #[serde(default)]
    pub(crate) identities: Vec<(ConnId, UserTag)>,
}

impl Shared {
    /// Heartbeats out, and the heartbeats, questions and notices of every node in.
    pub(crate) async fn cluster_loop(self: Arc<Self>) {
        let Ok(link) = self.link() else { return };
        let client = link.client.clone();
        let subs = async {
            Ok::<_, async_nats::SubscribeError>((
                client.subscribe(self.subjects.heartbeats()).await?,
                client.subscribe(self.subjects.questions()).await?,
                client.subscribe(self.subjects.notices()).await?,
            ))
        };
        let (mut beats, mut questions, mut notices) = match subs.await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot subscribe to the cluster's subjects");
                return;
            }
        };
        let mut tick = tokio::time::interval(self.config.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep: Option<Instant> = None;
        let mut sweeping: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = tick.tick() => {
                    let me = Bytes::from(self.node.clone().into_bytes());
                    let _ = client.publish(self.subjects.heartbeats(), me).await;
                    let peer_died = self.forget_dead_peers();
                    let idle = sweeping.as_ref().is_none_or(|s| s.is_finished());
                    if idle && janitor::sweep_due(last_sweep, peer_died) && self.is_janitor() {
                        last_sweep = Some(Instant::now());
                        let sweep = Arc::clone(&self).sweep_sessions();
                        sweeping = Some(self.tasks.spawn(sweep));
                    }
                }
                Some(beat) = beats.next() => {
                    if let Ok(node) = std::str::from_utf8(&beat.payload) {
                        lock(&self.peers).insert(node.to_owned(), Instant::now());
                    }
                }
                Some(question) = questions.next() => self.answer(&client, question).await,
                Some(notice) = notices.next() => self.act_on(&notice.payload),
            }
        }
    }

    /// Forgets the peers not heard within `node_ttl`; true when there were some.
    fn forget_dead_peers(&self) -> bool {
        let ttl = self.config.node_ttl;
        let mut peers = lock(&self.peers);
        let before = peers.len();
        peers.retain(|_, seen| seen.elapsed() < ttl);
        peers.len() < before
    }

    /// The nodes heard within `node_ttl`, this one included.
    pub(crate) fn live_nodes(&self) -> HashSet<String> {
        let ttl = self.config.node_ttl;
        let mut nodes: HashSet<String> = lock(&self.peers)
            .iter()
            .filter(|(_, seen)| seen.elapsed() < ttl)
            .map(|(n, _)| n.clone())
            .collect();
        nodes.insert(self.node.clone());
        nodes
    }

    async fn answer(&self, client: &async_nats::Client, question: async_nats::Message) {
        let Some(reply) = question.reply else { return };
        let Some(node) = self.node_handle.get() else {
            return;
        };
        let Ok(asked) = serde_json::from_slice::<Question>(&question.payload) else {
            return;
        };
        let mut answer = Answer {
            node: self.node.clone(),
            ..Answer::default()
        };
        match asked {
            Question::Count => answer.count = node.connection_count(),
            Question::Members { room } => answer.members = node.room_members(&room),
            Question::Identities { clients } => {
                let known = lock(&self.identities);
                answer.identities = clients
                    .iter()
                    .filter_map(|c| known.get(c).map(|tag| (*c, tag.clone())))
                    .collect();
            }
        }
        if let Ok(body) = serde_json::to_vec(&answer) {
            let _ = client.publish(reply, body.into()).await;
        }
    }

    /// Asks every live node; returns the answers that came within `query_timeout`.
    pub(crate) async fn ask(&self, question: &Question) -> Result<Vec<Answer>, BackplaneError> {
        let link = self.link()?;
        let err = |e: &dyn std::fmt::Display| BackplaneError::new(format!("NATS: {e}"));
        let body = serde_json::to_vec(question).map_err(|e| err(&e))?;
        let inbox = link.client.new_inbox();
        let mut replies = link
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| err(&e))?;
        let kind = match question {
            Question::Count => "count",
            Question::Members { .. } => "members",
            Question::Identities { .. } => "identities",
        };
        link.client
            .publish_with_reply(self.subjects.question(kind), inbox, body.into())
            .await
            .map_err(|e| err(&e))?;
        let mut waiting = self.live_nodes();
        let mut answers = Vec::new();
        let deadline = tokio::time::Instant::now() + self.config.query_timeout;
        while !waiting.is_empty() {
            let next = tokio::time::timeout_at(deadline, replies.next()).await;
            let Ok(Some(reply)) = next else { break };
            if let Ok(answer) = serde_json::from_slice::<Answer>(&reply.payload) {
                waiting.remove(&answer.node);
                answers.push(answer);
            }
        }
        if answers.is_empty() {
            return Err(BackplaneError::new("no node answered over NATS"));
        }
        Ok(answers)
    }

    /// Tells every node (this one hears it too, and ignores its own).
    pub(crate) fn notify(&self, notice: &Notice) {
        if let Ok(body) = serde_json::to_vec(notice) {
            self.enqueue(crate::shared::Out::Plain {
                subject: self.subjects.notices(),
                headers: None,
                payload: body.into(),
            });
        }
    }

    fn act_on(&self, payload: &[u8]) {
        let Some(node) = self.node_handle.get() else {
            return;
        };
        let Ok(notice) = serde_json::from_slice::<Notice>(payload) else {
            return;
        };
        match notice {
            Notice::Moved {
                node: from,
                client,
                generation,
            } if from != self.node => {
                let mut sessions = lock(&self.sessions);
                if sessions
                    .get(&client)
                    .is_some_and(|s| s.record.generation < generation)
                {
                    sessions.remove(&client);
                }
                drop(sessions);
                node.session_moved(client, generation);
            }
            Notice::DisconnectUser {
                node: from,
                user,
                reason,
            } if from != self.node => {
                node.disconnect(&Disconnect::User(user, reason));
            }
            Notice::DisconnectClient {
                node: from,
                client,
                reason,
            } if from != self.node => {
                node.disconnect(&Disconnect::Client(client, reason));
            }
            _ => {}
        }
    }
}
