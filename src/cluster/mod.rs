//! Signaling across nodes (`[cluster] redis`): presence (who is in which room, on which
//! node), room messages over Redis pub/sub, node liveness and resume records.
//!
//! The signal hub calls a [`Cluster`] and hears back through [`ClusterEvents`]; this module
//! knows nothing of sessions or clients. Redis going away never stops a node: operations fail
//! at once with [`ClusterError::Unavailable`] (so the hub answers its client with an error)
//! while the link (`link`) reconnects with backoff, logs the outage once, and on recovery
//! re-subscribes the rooms and restores this node's presence. Every queue is bounded: the
//! backlog of messages to publish by `max-backlog`, everything else by a constant here.
//!
//! How the hub is meant to use it:
//! - a room gains its first local member: [`Cluster::join`] (it subscribes the room first,
//!   so no `peer-joined` is missed between the two), and it gets the room's peers on other
//!   nodes; [`Cluster::unsubscribe`] once the room has no local member left;
//! - a local peer leaves: [`Cluster::leave`] (it publishes `peer-left` with the reason);
//! - a signal or broadcast for peers on other nodes: [`Cluster::publish`]; an error means it
//!   will not cross, and so does [`ClusterEvents::on_undelivered`] for one that was accepted;
//! - [`ClusterEvents::on_redis_up`] after an outage: refresh rooms with [`Cluster::members`]
//!   (peers that left meanwhile sent nothing that arrived).
//! - a client's session held for resume: [`Cluster::store_resume`]; a node where it resumes:
//!   [`Cluster::claim_resume`], [`Cluster::claim_presence`] for each room, then
//!   [`ClusterMessage::Takeover`] to the node that held it.

mod link;
mod message;
mod store;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{ClusterConfig, MAX_NODE_NAME_CHARS, is_node_name};
use crate::metrics::{ClusterMetrics, Limit, Metrics};

pub(crate) use message::ClusterMessage;

use crate::presence::LeaveReason;

/// How long one Redis command may take before the link is taken for broken.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// Entries of a room returned at most (rooms are kept small by `max-peers-per-room`; this
/// bounds what a corrupted hash could make a node parse).
const MAX_ROOM_ENTRIES: usize = 10_000;
/// Resume records larger than this are refused and, read back, dropped.
const MAX_RESUME_RECORD_BYTES: usize = 64 * 1024;

/// What the hub hears from the cluster. Called from the link's task: each must return
/// quickly and never wait on the cluster.
pub(crate) trait ClusterEvents: Send + Sync {
    /// A message from another node (never one of this node's own).
    fn on_message(&self, from_node: &str, msg: ClusterMessage);
    /// Redis is reachable (at start, and after each outage once the rooms are subscribed
    /// and this node's presence is restored).
    fn on_redis_up(&self);
    /// Redis went away (or could not be reached at start); once per outage.
    fn on_redis_down(&self);
    /// A message [`Cluster::publish`] accepted could not be published: its sender should
    /// get an error.
    fn on_undelivered(&self, msg: ClusterMessage);
    /// Restoring presence after an outage found the peer id taken by another node meanwhile:
    /// the local peer must leave the room (no `peer-left` was or will be published for it).
    fn on_presence_lost(&self, room: &str, peer: &str);
}

/// Redis cannot be reached now, or did not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClusterError {
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinError {
    /// A peer on this or another node has the id in the room.
    Taken,
    /// The room has `max_members` peers across the nodes.
    Full,
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PublishError {
    Unavailable,
    /// `max-backlog` messages wait for Redis already (counted as a hit of that limit).
    BacklogFull,
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the cluster's Redis is unavailable")
    }
}

impl From<ClusterError> for JoinError {
    fn from(_: ClusterError) -> Self {
        Self::Unavailable
    }
}

/// A peer in a room on another node.
#[derive(Debug)]
pub(crate) struct RemotePeer {
    pub(crate) peer: String,
    pub(crate) node: String,
    pub(crate) metadata: Box<RawValue>,
}

/// What a node needs to take over a session held for resume on another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ResumeRecord {
    /// The node that holds the session.
    pub(crate) node: String,
    pub(crate) user: String,
    /// The session's own peer id (its `welcome`'s).
    pub(crate) peer: String,
    /// Room → the session's peer id and metadata in it.
    pub(crate) rooms: BTreeMap<String, ResumedPeer>,
}

/// A session's place in one room, as its resume record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ResumedPeer {
    pub(crate) peer: String,
    /// The peer's metadata as JSON text.
    pub(crate) metadata: String,
}

/// This node's presence entry, as it should be in Redis.
#[derive(Clone)]
enum Owned {
    Present(Box<RawValue>),
    /// Left locally; the entry goes when Redis answers.
    Leaving(LeaveReason),
}

/// The handle the hub holds; dropping it stops the link without cleaning up (as a crash
/// would: the other nodes sweep this node's presence after `node-ttl`).
pub(crate) struct Cluster {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// What the handle and the link's tasks share.
struct Shared {
    node: String,
    /// Tells this run's heartbeats from those of an earlier run under the same name.
    instance: String,
    ttl: Duration,
    client: redis::Client,
    metrics: Arc<Metrics>,
    events: Arc<dyn ClusterEvents>,
    /// Set while connected, with the number of the connection (counted from 1).
    connection: Mutex<Option<(u64, MultiplexedConnection)>>,
    up: AtomicBool,
    /// `cluster-node-name-in-use` was logged (once a run: a twin would trigger it at every
    /// heartbeat).
    name_clash_told: AtomicBool,
    /// The number of a connection a command saw break: the link reconnects if it is the
    /// current one (a failure seen on an older one is stale).
    broken: watch::Sender<u64>,
    /// Rooms with local members; the link subscribes exactly these (and the inbox).
    wanted: Mutex<BTreeSet<String>>,
    /// `wanted` changed.
    resubscribe: Notify,
    /// Rooms Redis confirmed the subscription of.
    subscribed: watch::Sender<BTreeSet<String>>,
    owned: Mutex<BTreeMap<(String, String), Owned>>,
    backlog: mpsc::Sender<ClusterMessage>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cluster {
    /// Starts the link to `config.redis` (which must be set) on the current tokio runtime: it
    /// connects in the background, so this returns at once. Fails only on a URL or TLS
    /// setting the client refuses.
    pub(crate) fn start(
        config: &ClusterConfig,
        metrics: Arc<Metrics>,
        events: Arc<dyn ClusterEvents>,
    ) -> Result<Self, String> {
        let url = config.redis.as_deref().ok_or("cluster.redis is not set")?;
        let client = link::client(
            url,
            config.redis_ca.as_ref(),
            config.redis_password.as_deref(),
        )
        .map_err(|e| format!("cluster.redis: {e}"))?;
        let node = config.node_name.clone().unwrap_or_else(default_node_name);
        let backlog = usize::try_from(config.max_backlog).unwrap_or(usize::MAX);
        let (queue, queued) = mpsc::channel(backlog.max(1));
        let shared = Arc::new(Shared {
            node,
            instance: random_suffix(12),
            ttl: config.node_ttl,
            client,
            metrics,
            events,
            connection: Mutex::new(None),
            up: AtomicBool::new(false),
            name_clash_told: AtomicBool::new(false),
            broken: watch::Sender::new(0),
            wanted: Mutex::new(BTreeSet::new()),
            resubscribe: Notify::new(),
            subscribed: watch::Sender::new(BTreeSet::new()),
            owned: Mutex::new(BTreeMap::new()),
            backlog: queue,
        });
        shared
            .metrics
            .cluster
            .enabled
            .store(true, Ordering::Relaxed);
        let tasks = vec![
            tokio::spawn(link::supervise(shared.clone())),
            tokio::spawn(link::publish_backlog(shared.clone(), queued)),
        ];
        Ok(Self {
            shared,
            tasks: Mutex::new(tasks),
        })
    }

    /// This node's name in the cluster.
    pub(crate) fn node(&self) -> &str {
        &self.shared.node
    }

    pub(crate) fn is_up(&self) -> bool {
        self.shared.is_up()
    }

    /// Receives the room's messages from now on (and after every reconnect).
    pub(crate) fn subscribe(&self, room: &str) {
        if lock(&self.shared.wanted).insert(room.to_owned()) {
            self.shared.resubscribe.notify_one();
        }
    }

    /// Stops receiving the room's messages: it has no local member left.
    pub(crate) fn unsubscribe(&self, room: &str) {
        if lock(&self.shared.wanted).remove(room) {
            self.shared.resubscribe.notify_one();
        }
    }

    /// Puts `peer` into `room` across the nodes (announced with `peer-joined`) unless the id
    /// is taken there or the room holds `max_members` peers; returns the room's peers on
    /// other nodes. Subscribes the room first.
    pub(crate) async fn join(
        &self,
        room: &str,
        peer: &str,
        metadata: &RawValue,
        max_members: u32,
    ) -> Result<Vec<RemotePeer>, JoinError> {
        let shared = &self.shared;
        check_names(room, peer)?;
        self.subscribe(room);
        shared.until_subscribed(room).await?;
        let announce = message::encode(
            &shared.node,
            &ClusterMessage::PeerJoined {
                room: room.to_owned(),
                peer: peer.to_owned(),
                metadata: metadata.to_owned(),
            },
        );
        let mut script = redis::cmd("EVAL");
        script
            .arg(store::JOIN)
            .arg(2)
            .arg(store::presence_key(room))
            .arg(store::peers_key(&shared.node))
            .arg(peer)
            .arg(store::presence_entry(&shared.node, metadata.get()))
            .arg(store::owned_member(room, peer))
            .arg(max_members)
            .arg(store::room_channel(room))
            .arg(announce);
        let key = (room.to_owned(), peer.to_owned());
        let reply: redis::Value = match shared.query(&script).await {
            Ok(reply) => reply,
            Err(e) => {
                // The join may have happened without its answer arriving: undo it once
                // Redis is back, lest the id stay taken by no one.
                lock(&shared.owned)
                    .entry(key)
                    .or_insert(Owned::Leaving(LeaveReason::Left));
                return Err(e.into());
            }
        };
        let (status, entries) = match reply {
            redis::Value::Array(mut items) if !items.is_empty() => {
                let status = items.remove(0);
                (status, items.pop())
            }
            _ => (redis::Value::Nil, None),
        };
        match redis::from_redis_value::<String>(status).as_deref() {
            Ok("taken") => Err(JoinError::Taken),
            Ok("full") => Err(JoinError::Full),
            Ok("ok") => {
                lock(&shared.owned).insert(key, Owned::Present(metadata.to_owned()));
                Ok(shared.remote_peers(entries, peer))
            }
            _ => {
                ClusterMetrics::count(&shared.metrics.cluster.malformed);
                Err(JoinError::Unavailable)
            }
        }
    }

    /// Puts `peer` into `room` without asking Redis, which is away now: the link claims it
    /// when Redis is back, and [`ClusterEvents::on_presence_lost`] says if another node had
    /// taken the id meanwhile.
    pub(crate) fn join_later(&self, room: &str, peer: &str, metadata: &RawValue) {
        if check_names(room, peer).is_err() {
            return;
        }
        self.subscribe(room);
        lock(&self.shared.owned).insert(
            (room.to_owned(), peer.to_owned()),
            Owned::Present(metadata.to_owned()),
        );
    }

    /// Forgets `peer` in `room` without touching Redis: its presence belongs to another node
    /// now (the session resumed there).
    pub(crate) fn forget(&self, room: &str, peer: &str) {
        lock(&self.shared.owned).remove(&(room.to_owned(), peer.to_owned()));
    }

    /// Takes `peer` out of `room` across the nodes, with `peer-left` for `reason`. While Redis
    /// is away, it happens when Redis is back.
    pub(crate) async fn leave(
        &self,
        room: &str,
        peer: &str,
        reason: LeaveReason,
    ) -> Result<(), ClusterError> {
        let key = (room.to_owned(), peer.to_owned());
        lock(&self.shared.owned).insert(key.clone(), Owned::Leaving(reason));
        self.shared.leave(room, peer, reason).await?;
        let mut owned = lock(&self.shared.owned);
        if matches!(owned.get(&key), Some(Owned::Leaving(_))) {
            owned.remove(&key);
        }
        Ok(())
    }

    /// The room's peers on other nodes, as Redis has them now.
    pub(crate) async fn members(&self, room: &str) -> Result<Vec<RemotePeer>, ClusterError> {
        let mut command = redis::cmd("HGETALL");
        command.arg(store::presence_key(room));
        let reply: redis::Value = self.shared.query(&command).await?;
        Ok(self.shared.remote_peers(Some(reply), ""))
    }

    /// Makes this node the owner of `peer` in `room`: for a session that resumed here after
    /// `previous_node` held it. False if another node has taken the id meanwhile.
    pub(crate) async fn claim_presence(
        &self,
        room: &str,
        peer: &str,
        metadata: &RawValue,
        previous_node: &str,
    ) -> Result<bool, ClusterError> {
        check_names(room, peer).map_err(|_| ClusterError::Unavailable)?;
        self.subscribe(room);
        self.shared.until_subscribed(room).await?;
        let claimed = self
            .shared
            .claim(room, peer, metadata, Some(previous_node))
            .await?;
        if claimed {
            lock(&self.shared.owned).insert(
                (room.to_owned(), peer.to_owned()),
                Owned::Present(metadata.to_owned()),
            );
        }
        Ok(claimed)
    }

    /// Queues a message for the other nodes. Fails at once while Redis is away or when
    /// `max-backlog` messages wait already; the hub answers the sender with an error.
    pub(crate) fn publish(&self, msg: ClusterMessage) -> Result<(), PublishError> {
        if !self.shared.is_up() {
            return Err(PublishError::Unavailable);
        }
        match self.shared.backlog.try_send(msg) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.metrics.limit_hit(Limit::ClusterMaxBacklog);
                Err(PublishError::BacklogFull)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PublishError::Unavailable),
        }
    }

    /// Keeps a session's resume record for `ttl` (its resume grace), for whichever node the
    /// client reconnects to.
    pub(crate) async fn store_resume(
        &self,
        session: &str,
        record: &ResumeRecord,
        ttl: Duration,
    ) -> Result<(), ClusterError> {
        let text = serde_json::to_string(record).map_err(|_| ClusterError::Unavailable)?;
        if text.len() > MAX_RESUME_RECORD_BYTES {
            return Err(ClusterError::Unavailable);
        }
        let mut command = redis::cmd("SET");
        command
            .arg(store::resume_key(session))
            .arg(text)
            .arg("PX")
            .arg(millis(ttl));
        self.shared.query::<()>(&command).await
    }

    /// Takes a session's resume record, if it is still there: only one node gets it.
    pub(crate) async fn claim_resume(
        &self,
        session: &str,
    ) -> Result<Option<ResumeRecord>, ClusterError> {
        let mut command = redis::cmd("GETDEL");
        command.arg(store::resume_key(session));
        let text: Option<Vec<u8>> = self.shared.query(&command).await?;
        Ok(text.and_then(|text| {
            let record = (text.len() <= MAX_RESUME_RECORD_BYTES)
                .then(|| serde_json::from_slice(&text).ok())
                .flatten();
            if record.is_none() {
                ClusterMetrics::count(&self.shared.metrics.cluster.malformed);
            }
            record
        }))
    }

    /// Leaves the cluster cleanly (on shutdown): removes what is left of this node's
    /// presence (with `peer-left`, reason `node-lost`) and its heartbeat, then stops the link.
    pub(crate) async fn shutdown(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        let _ = link::forget_node(&self.shared).await;
        self.shared.set_down();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for task in lock(&self.tasks).iter() {
            task.abort();
        }
    }
}

impl Shared {
    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn set_down(&self) {
        *lock(&self.connection) = None;
        self.up.store(false, Ordering::Relaxed);
        self.metrics.cluster.set_up(false);
        self.subscribed.send_replace(BTreeSet::new());
    }

    /// Runs a command on the shared connection; a timeout or an I/O error also tells the link
    /// that the connection is broken.
    async fn query<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
    ) -> Result<T, ClusterError> {
        let (number, mut connection) = lock(&self.connection)
            .clone()
            .ok_or(ClusterError::Unavailable)?;
        match tokio::time::timeout(COMMAND_TIMEOUT, command.query_async(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if link::is_link_error(&e) {
                    self.broken.send_replace(number);
                } else {
                    log::debug!("cluster: a Redis command failed: {e}");
                }
                Err(ClusterError::Unavailable)
            }
            Err(_) => {
                self.broken.send_replace(number);
                Err(ClusterError::Unavailable)
            }
        }
    }

    /// Waits (a bounded time) until Redis confirmed the subscription of `room`.
    async fn until_subscribed(&self, room: &str) -> Result<(), ClusterError> {
        if !self.is_up() {
            return Err(ClusterError::Unavailable);
        }
        let mut confirmed = self.subscribed.subscribe();
        match tokio::time::timeout(
            COMMAND_TIMEOUT,
            confirmed.wait_for(|rooms| rooms.contains(room)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ClusterError::Unavailable),
        }
    }

    async fn leave(&self, room: &str, peer: &str, reason: LeaveReason) -> Result<(), ClusterError> {
        let announce = message::encode(
            &self.node,
            &ClusterMessage::PeerLeft {
                room: room.to_owned(),
                peer: peer.to_owned(),
                reason,
            },
        );
        let mut script = redis::cmd("EVAL");
        script
            .arg(store::LEAVE)
            .arg(2)
            .arg(store::presence_key(room))
            .arg(store::peers_key(&self.node))
            .arg(peer)
            .arg(store::owner_prefix(&self.node))
            .arg(store::owned_member(room, peer))
            .arg(store::room_channel(room))
            .arg(announce);
        self.query::<i64>(&script).await.map(drop)
    }

    /// Runs [`store::CLAIM`]: true if the entry is this node's now.
    async fn claim(
        &self,
        room: &str,
        peer: &str,
        metadata: &RawValue,
        previous_node: Option<&str>,
    ) -> Result<bool, ClusterError> {
        let announce = message::encode(
            &self.node,
            &ClusterMessage::PeerJoined {
                room: room.to_owned(),
                peer: peer.to_owned(),
                metadata: metadata.to_owned(),
            },
        );
        let previous = previous_node.unwrap_or(&self.node);
        let mut script = redis::cmd("EVAL");
        script
            .arg(store::CLAIM)
            .arg(3)
            .arg(store::presence_key(room))
            .arg(store::peers_key(&self.node))
            .arg(store::peers_key(previous))
            .arg(peer)
            .arg(store::owner_prefix(&self.node))
            .arg(store::presence_entry(&self.node, metadata.get()))
            .arg(store::owned_member(room, peer))
            .arg(store::room_channel(room))
            .arg(announce)
            .arg(previous_node.map(store::owner_prefix).unwrap_or_default());
        Ok(self.query::<i64>(&script).await? != 0)
    }

    /// The entries of a room's hash (`HGETALL`'s flat list) that other nodes own, but `skip`.
    fn remote_peers(&self, entries: Option<redis::Value>, skip: &str) -> Vec<RemotePeer> {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = match entries {
            Some(redis::Value::Map(pairs)) => pairs
                .into_iter()
                .filter_map(|(k, v)| Some((bytes(k)?, bytes(v)?)))
                .collect(),
            Some(redis::Value::Array(items)) => {
                let mut items = items.into_iter().filter_map(bytes);
                let mut pairs = Vec::new();
                while let (Some(k), Some(v)) = (items.next(), items.next()) {
                    pairs.push((k, v));
                }
                pairs
            }
            _ => Vec::new(),
        };
        let mut peers = Vec::new();
        for (peer, entry) in pairs.into_iter().take(MAX_ROOM_ENTRIES) {
            let parsed = String::from_utf8(peer).ok().zip(
                String::from_utf8(entry)
                    .ok()
                    .and_then(|entry| parse_remote(&entry)),
            );
            match parsed {
                Some((peer, (node, metadata))) => {
                    if peer != skip && node != self.node {
                        peers.push(RemotePeer {
                            peer,
                            node,
                            metadata,
                        });
                    }
                }
                None => ClusterMetrics::count(&self.metrics.cluster.malformed),
            }
        }
        peers
    }
}

fn bytes(value: redis::Value) -> Option<Vec<u8>> {
    match value {
        redis::Value::BulkString(bytes) => Some(bytes),
        _ => None,
    }
}

fn parse_remote(entry: &str) -> Option<(String, Box<RawValue>)> {
    let (node, metadata) = store::parse_entry(entry)?;
    let metadata = serde_json::from_str::<Box<RawValue>>(metadata).ok()?;
    is_node_name(node).then(|| (node.to_owned(), metadata))
}

/// Room names and peer ids go into keys after a `\n`-free check: the `ROOM\nPEER` members of
/// a node's peers set must split back. (The hub refuses such names from native clients
/// before; the other protocols' rooms start with a control character of their own, never
/// `\n`. This is the cluster's own guard, answered as unavailable.)
fn check_names(room: &str, peer: &str) -> Result<(), JoinError> {
    let fine = |name: &str| !name.is_empty() && !name.contains('\n');
    if fine(room) && fine(peer) {
        Ok(())
    } else {
        Err(JoinError::Unavailable)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The host name and a random suffix: unique per run, so a restarted node never mistakes
/// what an earlier run left behind for its own.
fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(MAX_NODE_NAME_CHARS - 7)
        .collect();
    let host = if host.is_empty() { "icegate" } else { &host };
    format!("{host}-{}", random_suffix(6))
}

fn random_suffix(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}
