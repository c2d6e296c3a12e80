//! Rooms across nodes (`[cluster]`): the hub's [`Remote`] over the
//! cluster's Redis link, and what the other nodes say, back into the hub.
//!
//! Joins, leaves and resume records go to Redis in the order the hub made
//! them, one at a time, from one task: a peer that leaves and joins again
//! at once must not have its join undone by the leave before it. That queue
//! is bounded by what can be in it: one leave per peer present, and at most
//! `max-rooms-per-connection` joins per connection. Signals and broadcasts
//! go straight to the cluster's publish backlog (`max-backlog`).

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::hub::{HeldForResume, Hub, JoinAnswer, MovedRoom, PendingJoin, Remote, RemoteEntry};
use super::protocol::LeaveReason;
use crate::cluster::{
    Cluster, ClusterEvents, ClusterMessage, JoinError, RemotePeer, ResumeRecord, ResumedPeer,
};
use crate::config::ClusterConfig;
use crate::metrics::Metrics;

/// How long after Redis is back peers missing from it are taken for gone,
/// at least: twice the longest wait between two attempts to reconnect.
const PRUNE_AFTER_AT_LEAST: Duration = Duration::from_secs(10);

/// What waits for Redis, in order.
enum Op {
    Join(PendingJoin),
    Leave(String, String, LeaveReason),
    StoreResume(String, ResumeRecord, Duration),
    DropResume(String),
    /// Redis is back: the rooms' peers elsewhere are read again, and after
    /// `node-ttl` once more, to see who is gone for good.
    Refresh {
        prune: bool,
    },
}

/// The hub's way to the other nodes.
pub(crate) struct Span {
    cluster: Arc<Cluster>,
    ops: mpsc::UnboundedSender<Op>,
}

/// A session held on another node, taken up here.
pub(crate) struct Moved {
    pub(crate) peer: String,
    pub(crate) rooms: Vec<MovedRoom>,
}

impl Span {
    /// Starts the link to Redis and joins `hub` to the other nodes.
    pub(crate) fn start(
        config: &ClusterConfig,
        hub: &Arc<Hub>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, String> {
        let (ops, queued) = mpsc::unbounded_channel();
        let events = Arc::new(Events {
            hub: Arc::downgrade(hub),
            cluster: OnceLock::new(),
            ops: ops.clone(),
            node_ttl: config.node_ttl,
        });
        let cluster = Arc::new(Cluster::start(config, metrics, events.clone())?);
        let _ = events.cluster.set(Arc::downgrade(&cluster));
        tokio::spawn(work(cluster.clone(), Arc::downgrade(hub), queued));
        let span = Arc::new(Self { cluster, ops });
        hub.connect_nodes(span.clone());
        Ok(span)
    }

    /// Takes up the session held on another node under `resume_token`, if
    /// it is `user`'s: its rooms are claimed here and its old node told.
    pub(crate) async fn take_over(&self, resume_token: &str, user: &str) -> Option<Moved> {
        let cluster = &self.cluster;
        if !cluster.is_up() {
            return None;
        }
        let record = cluster.claim_resume(resume_token).await.ok()??;
        if record.user != user || record.node == cluster.node() {
            return None;
        }
        let mut rooms = Vec::new();
        for (room, ResumedPeer { peer, metadata }) in record.rooms {
            let Ok(metadata) = RawValue::from_string(metadata) else {
                continue;
            };
            let claimed = cluster
                .claim_presence(&room, &peer, &metadata, &record.node)
                .await;
            if claimed != Ok(true) {
                continue;
            }
            let elsewhere = cluster.members(&room).await.unwrap_or_default();
            rooms.push(MovedRoom {
                room,
                peer,
                metadata,
                elsewhere: elsewhere.into_iter().map(entry).collect(),
            });
        }
        // Lost only with Redis; the old node then ends the session at its
        // grace, with `peer-left`, as if no one had come back.
        let _ = cluster.publish(ClusterMessage::Takeover {
            session: resume_token.to_owned(),
            from_node: record.node,
            to_node: cluster.node().to_owned(),
        });
        Some(Moved {
            peer: record.peer,
            rooms,
        })
    }

    /// Leaves the cluster cleanly: this node's peers are gone from every room.
    pub(crate) async fn shutdown(&self) {
        self.cluster.shutdown().await;
    }

    fn queue(&self, op: Op) {
        // Fails only once the worker stopped, at shutdown.
        let _ = self.ops.send(op);
    }
}

impl Remote for Span {
    fn node(&self) -> &str {
        self.cluster.node()
    }

    fn is_up(&self) -> bool {
        self.cluster.is_up()
    }

    fn join(&self, join: PendingJoin) {
        self.queue(Op::Join(join));
    }

    fn join_later(&self, room: &str, peer: &str, metadata: &RawValue) {
        self.cluster.join_later(room, peer, metadata);
    }

    fn leave(&self, room: &str, peer: &str, reason: LeaveReason) {
        self.queue(Op::Leave(room.to_owned(), peer.to_owned(), reason));
    }

    fn forget(&self, room: &str, peer: &str) {
        self.cluster.forget(room, peer);
    }

    fn unsubscribe(&self, room: &str) {
        self.cluster.unsubscribe(room);
    }

    fn signal(&self, room: &str, from: &str, to: &str, node: &str, data: &RawValue) -> bool {
        self.cluster
            .publish(ClusterMessage::Signal {
                room: room.to_owned(),
                from: from.to_owned(),
                to: to.to_owned(),
                to_node: node.to_owned(),
                data: data.to_owned(),
            })
            .is_ok()
    }

    fn broadcast(&self, room: &str, from: &str, data: &RawValue) -> bool {
        self.cluster
            .publish(ClusterMessage::Broadcast {
                room: room.to_owned(),
                from: from.to_owned(),
                data: data.to_owned(),
            })
            .is_ok()
    }

    fn hold_for_resume(&self, held: HeldForResume, grace: Duration) {
        let record = ResumeRecord {
            node: self.cluster.node().to_owned(),
            user: held.user,
            peer: held.peer,
            rooms: held
                .rooms
                .into_iter()
                .map(|(room, peer, metadata)| {
                    let metadata = metadata.get().to_owned();
                    (room, ResumedPeer { peer, metadata })
                })
                .collect(),
        };
        self.queue(Op::StoreResume(held.token, record, grace));
    }

    fn resumed_here(&self, token: &str) {
        self.queue(Op::DropResume(token.to_owned()));
    }
}

/// Does what waits for Redis, in order, until the hub is gone.
async fn work(cluster: Arc<Cluster>, hub: Weak<Hub>, mut queued: mpsc::UnboundedReceiver<Op>) {
    while let Some(op) = queued.recv().await {
        match op {
            Op::Join(join) => {
                let answer = match cluster
                    .join(&join.room, &join.peer, &join.metadata, join.max_members)
                    .await
                {
                    Ok(elsewhere) => JoinAnswer::Joined(elsewhere.into_iter().map(entry).collect()),
                    Err(JoinError::Taken) => JoinAnswer::Taken,
                    Err(JoinError::Full) => JoinAnswer::Full,
                    Err(JoinError::Unavailable) => JoinAnswer::Unavailable,
                };
                let Some(hub) = hub.upgrade() else { return };
                hub.joined_across(join, answer);
            }
            Op::Leave(room, peer, reason) => {
                // While Redis is away the cluster does it when Redis is back.
                let _ = cluster.leave(&room, &peer, reason).await;
            }
            Op::StoreResume(token, record, grace) => {
                let _ = cluster.store_resume(&token, &record, grace).await;
            }
            Op::DropResume(token) => {
                let _ = cluster.claim_resume(&token).await;
            }
            Op::Refresh { prune } => {
                let Some(rooms) = hub.upgrade().map(|hub| hub.local_rooms()) else {
                    return;
                };
                for room in rooms {
                    let Ok(elsewhere) = cluster.members(&room).await else {
                        break;
                    };
                    let Some(hub) = hub.upgrade() else { return };
                    let elsewhere = elsewhere.into_iter().map(entry).collect();
                    hub.refresh_room(&room, elsewhere, prune);
                }
            }
        }
    }
}

fn entry(peer: RemotePeer) -> RemoteEntry {
    RemoteEntry {
        peer: peer.peer,
        node: peer.node,
        metadata: peer.metadata,
    }
}

/// The cluster's events, into the hub.
struct Events {
    hub: Weak<Hub>,
    /// Set right after the cluster starts; its events need it only later.
    cluster: OnceLock<Weak<Cluster>>,
    ops: mpsc::UnboundedSender<Op>,
    node_ttl: Duration,
}

impl Events {
    fn reply_undeliverable(&self, room: String, from: String, to: String, sender_node: &str) {
        let Some(cluster) = self.cluster.get().and_then(Weak::upgrade) else {
            return;
        };
        let _ = cluster.publish(ClusterMessage::Undeliverable {
            room,
            from,
            to,
            sender_node: sender_node.to_owned(),
        });
    }
}

impl ClusterEvents for Events {
    fn on_message(&self, from_node: &str, msg: ClusterMessage) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        match msg {
            ClusterMessage::PeerJoined {
                room,
                peer,
                metadata,
            } => hub.peer_joined_elsewhere(from_node, &room, &peer, metadata),
            ClusterMessage::PeerLeft { room, peer, reason } => {
                hub.peer_left_elsewhere(from_node, &room, &peer, reason);
            }
            ClusterMessage::Signal {
                room,
                from,
                to,
                to_node,
                data,
            } => {
                // Every node with peers in the room hears it; the one it is
                // for answers for it.
                let mine = self
                    .cluster
                    .get()
                    .and_then(Weak::upgrade)
                    .is_some_and(|c| c.node() == to_node);
                let now = tokio::time::Instant::now().into_std();
                if mine && !hub.signal_from_elsewhere(&room, &from, &to, &data, now) {
                    self.reply_undeliverable(room, from, to, from_node);
                }
            }
            ClusterMessage::Broadcast { room, from, data } => {
                hub.broadcast_from_elsewhere(&room, &from, &data);
            }
            ClusterMessage::Undeliverable { room, from, to, .. } => {
                hub.not_delivered(&room, &from, Some(&to));
            }
            ClusterMessage::Takeover {
                session, to_node, ..
            } => hub.moved_away(&session, &to_node),
        }
    }

    fn on_redis_up(&self) {
        let _ = self.ops.send(Op::Refresh { prune: false });
        // By then every live node has put its peers back (each retries at
        // least every 5 s); a peer still missing left, or its node died.
        let ops = self.ops.clone();
        let wait = self.node_ttl.max(PRUNE_AFTER_AT_LEAST);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = ops.send(Op::Refresh { prune: true });
        });
    }

    fn on_redis_down(&self) {}

    fn on_undelivered(&self, msg: ClusterMessage) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        match msg {
            ClusterMessage::Signal { room, from, to, .. } => {
                hub.not_delivered(&room, &from, Some(&to));
            }
            ClusterMessage::Broadcast { room, from, .. } => hub.not_delivered(&room, &from, None),
            _ => {}
        }
    }

    fn on_presence_lost(&self, room: &str, peer: &str) {
        if let Some(hub) = self.hub.upgrade() {
            hub.presence_lost(room, peer);
        }
    }
}
