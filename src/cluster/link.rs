//! The link to Redis: one task connects (with backoff), sets this node up, then receives the
//! subscribed channels' messages, keeps the heartbeat, sweeps dead nodes and follows the
//! rooms the hub wants, until the connection breaks; another publishes the backlog.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSub, PubSubSink};
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisError, TlsCertificates};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, timeout};

use super::message::{self, ClusterMessage};
use super::{COMMAND_TIMEOUT, Owned, Shared, lock, millis, store};
use crate::config::{CaFile, is_node_name};
use crate::logging::event;
use crate::metrics::ClusterMetrics;

/// The first retry after a failure; each next one waits twice as long, up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// Connecting (TCP, TLS, AUTH) may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages published in one round trip.
const PUBLISH_BATCH: usize = 256;
/// A message larger than this (what `signal.max-message-bytes` allows, and room to spare)
/// is no message of ours.
const MAX_MESSAGE_BYTES: usize = 20 << 20;
/// Registry members looked at in one sweep, and batches of one dead node's entries removed
/// in one sweep (the rest wait for the next heartbeat).
const MAX_SWEPT_NODES: usize = 1000;
const SWEEP_BATCH: u32 = 500;
const MAX_SWEEP_BATCHES: usize = 20;

/// A client for `url`, with the password and, for `rediss://`, the CA certificates.
pub(super) fn client(
    url: &str,
    ca: Option<&CaFile>,
    password: Option<&str>,
) -> Result<redis::Client, RedisError> {
    let mut info = url.into_connection_info()?;
    if let Some(password) = password {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    if url.starts_with("rediss://") {
        let certificates = TlsCertificates {
            client_tls: None,
            root_cert: ca.map(|ca| ca.pem.clone()),
        };
        redis::Client::build_with_tls(info, certificates)
    } else {
        redis::Client::open(info)
    }
}

/// Whether an error means the connection is gone (rather than one command being refused).
pub(super) fn is_link_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// Why the link is down, for the log.
type Broken = String;

fn broken(e: impl std::fmt::Display) -> Broken {
    e.to_string()
}

/// Runs a command on `connection` within [`COMMAND_TIMEOUT`].
async fn query<T: redis::FromRedisValue>(
    connection: &mut MultiplexedConnection,
    command: &redis::Cmd,
) -> Result<T, Broken> {
    match timeout(COMMAND_TIMEOUT, command.query_async(connection)).await {
        Ok(result) => result.map_err(broken),
        Err(_) => Err("Redis did not answer in time".to_owned()),
    }
}

/// The link's task: forever connect, set up, serve until broken, and wait before the next try.
pub(super) async fn supervise(shared: Arc<Shared>) {
    let mut delay = FIRST_RETRY;
    let mut first = true;
    // The outage being waited out was logged and told (once per outage).
    let mut down_told = false;
    let mut number = 0;
    loop {
        let why = match connect(&shared).await {
            Ok((mut connection, pubsub)) => {
                number += 1;
                *lock(&shared.connection) = Some((number, connection.clone()));
                let (mut sink, stream) = pubsub.split();
                match set_up(&shared, &mut connection, &mut sink, first).await {
                    Ok(subscribed) => {
                        first = false;
                        delay = FIRST_RETRY;
                        down_told = false;
                        shared.up.store(true, Ordering::Relaxed);
                        shared.metrics.cluster.set_up(true);
                        event!(info, "cluster-up", node = shared.node);
                        shared.events.on_redis_up();
                        serve(&shared, number, connection, sink, stream, subscribed).await
                    }
                    Err(why) => why,
                }
            }
            Err(why) => why,
        };
        shared.set_down();
        if !down_told {
            down_told = true;
            event!(warn, "cluster-down", node = shared.node, error = why);
            ClusterMetrics::count(&shared.metrics.cluster.outages);
            shared.events.on_redis_down();
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY);
    }
}

async fn connect(shared: &Shared) -> Result<(MultiplexedConnection, PubSub), Broken> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT));
    let both = async {
        let connection = shared
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let pubsub = shared.client.get_async_pubsub().await?;
        Ok::<_, RedisError>((connection, pubsub))
    };
    match timeout(CONNECT_TIMEOUT * 2, both).await {
        Ok(result) => result.map_err(broken),
        Err(_) => Err("connecting to Redis timed out".to_owned()),
    }
}

/// After connecting: heartbeat, (at the first connection of this run) clear what an earlier
/// run under this name left, subscribe, restore this node's presence, sweep dead nodes.
/// Returns the rooms subscribed.
async fn set_up(
    shared: &Shared,
    connection: &mut MultiplexedConnection,
    sink: &mut PubSubSink,
    first: bool,
) -> Result<BTreeSet<String>, Broken> {
    beat(shared, connection).await?;
    if first {
        sweep_node(connection, &shared.node, true).await?;
    }
    let inbox = store::inbox_channel(&shared.node);
    within(sink.subscribe(&inbox)).await?;
    let mut subscribed = BTreeSet::new();
    follow_rooms(shared, sink, &mut subscribed).await?;
    restore_presence(shared).await?;
    sweep(shared, connection).await?;
    Ok(subscribed)
}

async fn within<T>(operation: impl Future<Output = Result<T, RedisError>>) -> Result<T, Broken> {
    match timeout(COMMAND_TIMEOUT, operation).await {
        Ok(result) => result.map_err(broken),
        Err(_) => Err("Redis did not answer in time".to_owned()),
    }
}

/// Receives, beats and follows the rooms until the connection breaks; says why it broke.
async fn serve(
    shared: &Shared,
    number: u64,
    mut connection: MultiplexedConnection,
    mut sink: PubSubSink,
    mut stream: redis::aio::PubSubStream,
    mut subscribed: BTreeSet<String>,
) -> Broken {
    let period = shared.ttl / 3;
    let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut broken = shared.broken.subscribe();
    loop {
        let step = tokio::select! {
            received = stream.next() => match received {
                Some(msg) => {
                    deliver(shared, msg.get_channel_name(), msg.get_payload_bytes());
                    Ok(())
                }
                None => Err("the subscription connection closed".to_owned()),
            },
            () = async {
                // The guard wait_for returns is not Send: drop it here.
                let _ = broken.wait_for(|&n| n == number).await.map(drop);
            } => Err("a Redis command failed".to_owned()),
            () = shared.resubscribe.notified() => {
                follow_rooms(shared, &mut sink, &mut subscribed).await
            }
            _ = heartbeat.tick() => {
                let alive = async {
                    if !beat(shared, &mut connection).await? {
                        // The heartbeat had expired: the others may have swept this node.
                        restore_presence(shared).await?;
                    }
                    // Subscribed, RESP2 answers `["pong", ""]`, not a string.
                    within(sink.ping::<redis::Value>()).await?;
                    sweep(shared, &mut connection).await
                };
                alive.await
            }
        };
        if let Err(why) = step {
            return why;
        }
    }
}

/// Hands a message from another node to the hub; drops (and counts) what is not one.
fn deliver(shared: &Shared, channel: &str, payload: &[u8]) {
    let cluster = &shared.metrics.cluster;
    let decoded = if payload.len() <= MAX_MESSAGE_BYTES {
        message::decode(channel, payload)
    } else {
        None
    };
    match decoded {
        Some((node, _)) if node == shared.node => {}
        Some((node, msg)) => {
            ClusterMetrics::count(&cluster.received);
            shared.events.on_message(&node, msg);
        }
        None => ClusterMetrics::count(&cluster.malformed),
    }
}

/// Subscribes the rooms the hub wants and unsubscribes the others; `subscribed` is what
/// Redis confirmed.
async fn follow_rooms(
    shared: &Shared,
    sink: &mut PubSubSink,
    subscribed: &mut BTreeSet<String>,
) -> Result<(), Broken> {
    let wanted = lock(&shared.wanted).clone();
    let join: Vec<String> = wanted.difference(subscribed).cloned().collect();
    let part: Vec<String> = subscribed.difference(&wanted).cloned().collect();
    if !join.is_empty() {
        let channels: Vec<String> = join.iter().map(|r| store::room_channel(r)).collect();
        within(sink.subscribe(&channels)).await?;
        subscribed.extend(join);
    }
    if !part.is_empty() {
        let channels: Vec<String> = part.iter().map(|r| store::room_channel(r)).collect();
        within(sink.unsubscribe(&channels)).await?;
        for room in &part {
            subscribed.remove(room);
        }
    }
    shared.subscribed.send_replace(subscribed.clone());
    Ok(())
}

/// Refreshes the heartbeat and the registry; false if the heartbeat had expired (or was
/// never there).
async fn beat(shared: &Shared, connection: &mut MultiplexedConnection) -> Result<bool, Broken> {
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(store::heartbeat_key(&shared.node))
        .arg(&shared.instance)
        .arg("PX")
        .arg(millis(shared.ttl))
        .arg("GET")
        .cmd("SADD")
        .arg(store::REGISTRY)
        .arg(&shared.node)
        .ignore();
    let (previous,): (Option<String>,) =
        match timeout(COMMAND_TIMEOUT, pipe.query_async(connection)).await {
            Ok(result) => result.map_err(broken)?,
            Err(_) => return Err("Redis did not answer in time".to_owned()),
        };
    if let Some(other) = &previous
        && *other != shared.instance
        && !shared.name_clash_told.swap(true, Ordering::Relaxed)
    {
        // Another run's heartbeat: an earlier run of this node (cleared at the first
        // connection), or another node configured with the same name.
        event!(warn, "cluster-node-name-in-use", node = shared.node);
    }
    Ok(previous.is_some())
}

/// Puts this node's presence back as it should be: entries Redis lost (it restarted, or
/// this node was swept while cut off) come back with `peer-joined`; an id another node took
/// meanwhile is lost; leaves that could not be done are done.
async fn restore_presence(shared: &Shared) -> Result<(), Broken> {
    let snapshot: Vec<((String, String), Owned)> = lock(&shared.owned)
        .iter()
        .map(|(key, owned)| (key.clone(), owned.clone()))
        .collect();
    for (key, owned) in snapshot {
        let (room, peer) = &key;
        match owned {
            Owned::Present(metadata) => {
                let ours = shared
                    .claim(room, peer, &metadata, None)
                    .await
                    .map_err(broken)?;
                if !ours {
                    let mut owned = lock(&shared.owned);
                    if matches!(owned.get(&key), Some(Owned::Present(_))) {
                        owned.remove(&key);
                        drop(owned);
                        shared.events.on_presence_lost(room, peer);
                    }
                }
            }
            Owned::Leaving(reason) => {
                shared.leave(room, peer, reason).await.map_err(broken)?;
                let mut owned = lock(&shared.owned);
                if matches!(owned.get(&key), Some(Owned::Leaving(_))) {
                    owned.remove(&key);
                }
            }
        }
    }
    Ok(())
}

/// Sweeps every registered node whose heartbeat is gone.
async fn sweep(shared: &Shared, connection: &mut MultiplexedConnection) -> Result<(), Broken> {
    let mut command = redis::cmd("SMEMBERS");
    command.arg(store::REGISTRY);
    let nodes: Vec<Vec<u8>> = query(connection, &command).await?;
    for node in nodes.into_iter().take(MAX_SWEPT_NODES) {
        match String::from_utf8(node) {
            Ok(node) if is_node_name(&node) => {
                if node != shared.node {
                    sweep_node(connection, &node, false).await?;
                }
            }
            _ => ClusterMetrics::count(&shared.metrics.cluster.malformed),
        }
    }
    Ok(())
}

/// Runs [`store::SWEEP`] for `node` until its entries are gone (or for a bounded number of
/// batches); `force` sweeps it even with a heartbeat.
async fn sweep_node(
    connection: &mut MultiplexedConnection,
    node: &str,
    force: bool,
) -> Result<(), Broken> {
    let (presence_prefix, channel_prefix) = store::SWEEP_PREFIXES;
    for _ in 0..MAX_SWEEP_BATCHES {
        let mut script = redis::cmd("EVAL");
        script
            .arg(store::SWEEP)
            .arg(3)
            .arg(store::REGISTRY)
            .arg(store::heartbeat_key(node))
            .arg(store::peers_key(node))
            .arg(node)
            .arg(SWEEP_BATCH)
            .arg(presence_prefix)
            .arg(channel_prefix)
            .arg(if force { "1" } else { "0" });
        let left: i64 = query(connection, &script).await?;
        if left <= 0 {
            break;
        }
    }
    Ok(())
}

/// On a clean shutdown: this node's presence goes (with `peer-left`), then its heartbeat and
/// its place in the registry.
pub(super) async fn forget_node(shared: &Shared) -> Result<(), Broken> {
    let Some((_, mut connection)) = lock(&shared.connection).clone() else {
        return Ok(());
    };
    sweep_node(&mut connection, &shared.node, true).await?;
    let mut pipe = redis::pipe();
    pipe.cmd("DEL")
        .arg(store::heartbeat_key(&shared.node))
        .ignore()
        .cmd("SREM")
        .arg(store::REGISTRY)
        .arg(&shared.node)
        .ignore();
    match timeout(COMMAND_TIMEOUT, pipe.query_async::<()>(&mut connection)).await {
        Ok(result) => result.map_err(broken),
        Err(_) => Err("Redis did not answer in time".to_owned()),
    }
}

/// The publishing task: sends what [`super::Cluster::publish`] queued, a batch per round
/// trip; what cannot be sent goes back to the hub as undelivered.
pub(super) async fn publish_backlog(
    shared: Arc<Shared>,
    mut queued: mpsc::Receiver<ClusterMessage>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while queued.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let connection = lock(&shared.connection).clone();
        let sent = match connection {
            Some((number, mut connection)) if shared.is_up() => {
                let mut pipe = redis::pipe();
                for msg in &batch {
                    pipe.cmd("PUBLISH")
                        .arg(msg.channel().name())
                        .arg(message::encode(&shared.node, msg))
                        .ignore();
                }
                match timeout(COMMAND_TIMEOUT, pipe.query_async::<()>(&mut connection)).await {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        if is_link_error(&e) {
                            shared.broken.send_replace(number);
                        }
                        false
                    }
                    Err(_) => {
                        shared.broken.send_replace(number);
                        false
                    }
                }
            }
            _ => false,
        };
        let cluster = &shared.metrics.cluster;
        if sent {
            for _ in 0..batch.len() {
                ClusterMetrics::count(&cluster.published);
            }
            batch.clear();
        } else {
            for msg in batch.drain(..) {
                ClusterMetrics::count(&cluster.lost);
                shared.events.on_undelivered(msg);
            }
        }
    }
}
