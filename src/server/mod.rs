//! The TURN shell: the sans-IO core, the relay sockets it names by
//! allocation, and the step from a received datagram or stream frame to the
//! core's decision and the sends it asks for. Listeners (`transport`) call
//! in; nothing here knows how a reply reaches the client.
//!
//! The allocation table is sharded: a client's 5-tuple hashes to one shard,
//! whose lock covers its allocations and their relay sockets, and an
//! allocation id names its shard, so packets of different clients mostly
//! take different locks. Ports and quotas ([`Shared`]) are shared and
//! taken only when allocations begin and end.

mod relay_sockets;
mod tcp;

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut, Range};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::auth::CredentialStore;
use crate::bans::Bans;
use crate::config::Config;
use crate::datagrams::Run;
use crate::metrics::{Direction, Framing, Metrics};
use crate::reject::{Reject, RejectCounters};
use crate::reloadable::Reloadable;
use crate::turn::allocation::Allocation;
use crate::turn::connections::PeerConnections;
use crate::turn::core::{Action, Core, Now};
use crate::turn::shared::Shared;
use crate::turn::{AllocId, FiveTuple};
use crate::wire::{ChannelData, Class, Kind, Message, Method};
use relay_sockets::RelaySocketTable;
pub(crate) use relay_sockets::{RelayReceiver, RelaySocket, TcpRelayReceiver, reusable_tcp_socket};
pub(crate) use tcp::PeerLink;

/// Shards per worker thread: more shards than threads keep two threads
/// from meeting on one lock.
const SHARDS_PER_THREAD: usize = 4;

pub(crate) struct Server {
    shards: Box<[Mutex<State>]>,
    /// Picks a client's shard; keyed at random, so no client chooses its shard.
    shard_hasher: std::hash::RandomState,
    shared: Arc<Shared>,
    /// The store the core authenticates with, for HTTP and signaling to
    /// mint from without taking the core's lock.
    credentials: Reloadable<CredentialStore>,
    nonce_key: [u8; 32],
    pub(crate) rejects: Arc<RejectCounters>,
    pub(crate) metrics: Arc<Metrics>,
    /// Set by POST /drain or SIGTERM, never cleared.
    draining: AtomicBool,
    /// Where the bans are kept: read at start, so a reload cannot move it.
    state_directory: std::path::PathBuf,
}

/// One shard: its core and the relay sockets of its allocations, under one lock.
struct State {
    core: Core,
    sockets: RelaySocketTable,
}

/// A shard's core, locked. Dropping it closes the relay sockets of allocations
/// the core ended meanwhile, whoever ended them.
pub(crate) struct CoreGuard<'a>(MutexGuard<'a, State>);

impl Deref for CoreGuard<'_> {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.0.core
    }
}

impl DerefMut for CoreGuard<'_> {
    fn deref_mut(&mut self) -> &mut Core {
        &mut self.0.core
    }
}

impl Drop for CoreGuard<'_> {
    fn drop(&mut self) {
        let state = &mut *self.0;
        for id in state.core.take_ended() {
            state.sockets.close(id);
        }
        for (id, ipv6) in state.core.take_ended_relays() {
            state.sockets.close_one(id, ipv6);
        }
        for connection in state.core.take_ended_connections() {
            state.sockets.close_peer(connection);
        }
    }
}

/// A ChannelData message from a client: its payload is `data` of the
/// receive buffer handed to [`Server::relay_channel_data`] with it.
#[derive(Clone, Debug)]
pub(crate) struct ChannelFrame {
    pub(crate) five_tuple: FiveTuple,
    pub(crate) channel: u16,
    pub(crate) data: Range<usize>,
}

/// Reused from batch to batch by one listener task: where each frame goes.
#[derive(Debug, Default)]
pub(crate) struct PeerSends {
    /// The relay sockets this batch sends from, each once, by allocation
    /// and family (true for IPv6).
    sockets: Vec<(AllocId, bool, Arc<RelaySocket>)>,
    /// (index into `sockets`, peer, index of the frame).
    routed: Vec<(usize, SocketAddr, usize)>,
    run: Run,
}

/// What the listener does after [`Server::handle_message`].
pub(crate) enum Handled {
    Nothing,
    /// Send the reply buffer to the client.
    Reply,
    /// Send the reply from the UDP listener at `from` to `to` (RFC 5780).
    ReplyVia {
        from: SocketAddr,
        to: SocketAddr,
    },
    /// Send the reply, then serve the new relay sockets of allocation
    /// `AllocId` (two for a dual-stack allocation).
    ReplyAndServeRelay(AllocId, Vec<RelayReceiver>),
    /// Send the reply, then accept peers on TCP allocation `AllocId`'s relay address.
    ReplyAndServeTcpRelay(AllocId, TcpRelayReceiver),
    /// Connect from `from` to `peer` for peer connection `connection`, then
    /// answer the client's Connect with what [`Server::connect_finished`] writes.
    ConnectToPeer {
        connection: u32,
        from: SocketAddr,
        peer: SocketAddr,
    },
    /// Send the reply, then carry data between this connection and the peer's.
    ReplyAndJoinPeer(PeerLink),
}

impl Server {
    pub(crate) fn new(config: &Config) -> Arc<Self> {
        let rejects = Arc::new(RejectCounters::default());
        let nonce_key = rand::random();
        let credentials = Arc::new(CredentialStore::new(&config.realm, &config.auth, nonce_key));
        let bans = Arc::new(Bans::open(&config.state_directory));
        let shared = Arc::new(Shared::new(config.relay.ports, Instant::now(), bans));
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let count = (threads * SHARDS_PER_THREAD) as u64;
        let shards = (0..count)
            .map(|shard| {
                Mutex::new(State {
                    core: Core::new(
                        config,
                        credentials.clone(),
                        rejects.clone(),
                        shared.clone(),
                        (shard, count),
                    ),
                    sockets: RelaySocketTable::new(config.relay.socket_receive_buffer),
                })
            })
            .collect();
        Arc::new(Self {
            shards,
            shard_hasher: std::hash::RandomState::new(),
            shared,
            credentials: Reloadable::new(credentials),
            nonce_key,
            rejects,
            metrics: Arc::default(),
            draining: AtomicBool::new(false),
            state_directory: config.state_directory.clone(),
        })
    }

    /// The bans the relay, HTTP and signaling refuse users by.
    pub(crate) fn bans(&self) -> &Bans {
        &self.shared.bans
    }

    /// The credential store in use now.
    pub(crate) fn credentials(&self) -> Arc<CredentialStore> {
        self.credentials.get()
    }

    /// Applies a reloaded config to the core; returns what needs a restart.
    pub(crate) fn reconfigure(&self, config: &Config) -> Vec<String> {
        let credentials = Arc::new(CredentialStore::new(
            &config.realm,
            &config.auth,
            self.nonce_key,
        ));
        self.credentials.set(credentials.clone());
        let now = now();
        let mut needs_restart = Vec::new();
        for shard in 0..self.shards.len() {
            let mut core = self.shard(shard);
            core.0.sockets.receive_buffer = config.relay.socket_receive_buffer;
            // Every shard sees the same config: one list says it.
            needs_restart = core.reconfigure(config, credentials.clone(), now);
        }
        if config.state_directory != self.state_directory {
            needs_restart.push(format!(
                "state-directory {} (still using {})",
                config.state_directory.display(),
                self.state_directory.display()
            ));
        }
        needs_restart
    }

    /// Stops taking new allocations (and, through [`Server::is_draining`],
    /// new connections); what exists carries on. False if already draining.
    pub(crate) fn drain(&self) -> bool {
        let first = !self.draining.swap(true, Ordering::SeqCst);
        self.shared.set_draining();
        first
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// A shard's lock; held for lookups and decisions, never across I/O.
    fn shard(&self, shard: usize) -> CoreGuard<'_> {
        CoreGuard(self.lock(shard))
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, State> {
        // A panic aborts the process (panic = "abort"), so poisoning cannot be observed.
        self.shards[shard]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The shard that owns the allocation of `five_tuple`.
    #[expect(clippy::cast_possible_truncation, reason = "below the shard count")]
    fn shard_of(&self, five_tuple: &FiveTuple) -> usize {
        (self.shard_hasher.hash_one(five_tuple) % self.shards.len() as u64) as usize
    }

    /// The shard that handles `message`: the one its 5-tuple hashes to,
    /// but for a ConnectionBind the shard of the peer connection it names
    /// (unless this connection has an allocation, which makes it an error).
    fn shard_for(&self, five_tuple: &FiveTuple, message: &Message<'_>) -> usize {
        let own = self.shard_of(five_tuple);
        if message.method != Method::CONNECTION_BIND {
            return own;
        }
        match message
            .get(crate::wire::attr::CONNECTION_ID)
            .and_then(crate::wire::attr::u32_value)
        {
            Some(connection) if !self.has_allocation(five_tuple) => {
                PeerConnections::shard_of(connection, self.shards.len())
            }
            _ => own,
        }
    }

    /// The shard that made allocation `id`.
    #[expect(clippy::cast_possible_truncation, reason = "below the shard count")]
    fn shard_of_id(&self, id: AllocId) -> usize {
        (id.0 % self.shards.len() as u64) as usize
    }

    /// Allocations now, across every shard.
    pub(crate) fn allocation_count(&self) -> usize {
        (0..self.shards.len())
            .map(|shard| self.lock(shard).core.allocation_count())
            .sum()
    }

    /// Calls `each` for every allocation, one shard locked at a time.
    /// Sources and users the throttle tracks now.
    pub(crate) fn throttle_tracked(&self) -> (usize, usize) {
        self.shared.throttle.tracked()
    }

    pub(crate) fn for_each_allocation(&self, mut each: impl FnMut(&Allocation)) {
        for shard in 0..self.shards.len() {
            self.lock(shard).core.allocations().for_each(&mut each);
        }
    }

    /// Ends every allocation whose username `matches`; returns how many.
    pub(crate) fn end_allocations(&self, matches: impl Fn(&str) -> bool) -> usize {
        let now = Instant::now();
        (0..self.shards.len())
            .map(|shard| self.shard(shard).end_allocations(&matches, now))
            .sum()
    }

    /// The UDP listeners' bound addresses, which no allocation may relay to.
    pub(crate) fn set_listeners(&self, listeners: &[SocketAddr]) {
        for shard in 0..self.shards.len() {
            self.lock(shard).core.set_listeners(listeners);
        }
    }

    /// Ends the allocations made through the UDP listener bound to `local`.
    pub(crate) fn end_listener(&self, local: SocketAddr) {
        let now = Instant::now();
        for shard in 0..self.shards.len() {
            self.shard(shard).end_listener(local, now);
        }
    }

    /// Handles one datagram or stream frame from a client (exactly one STUN
    /// message or ChannelData message); a reply goes into `out`.
    pub(crate) fn handle_message(
        &self,
        five_tuple: &FiveTuple,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Handled {
        match data.first().map(|&b| crate::wire::classify(b)) {
            Some(Kind::ChannelData) => {
                let Some(frame) = ChannelData::parse(data) else {
                    self.rejects.count(Reject::Garbage);
                    return Handled::Nothing;
                };
                let route = {
                    let mut state = self.lock(self.shard_of(five_tuple));
                    let State { core, sockets } = &mut *state;
                    core.route_channel_data(
                        Instant::now(),
                        five_tuple,
                        frame.channel,
                        frame.data.len(),
                    )
                    .ok()
                    .and_then(|(id, peer)| Some((sockets.get(id, peer)?.clone(), peer)))
                };
                if let Some((socket, peer)) = route {
                    self.metrics
                        .relayed(Direction::ToPeer, Framing::ChannelData, frame.data.len());
                    socket.send(peer, None, frame.data);
                }
                Handled::Nothing
            }
            Some(Kind::Stun) => {
                let message = match Message::parse(data) {
                    Ok(message) => message,
                    Err(error) => {
                        log::debug!("dropped datagram from {}: {error}", five_tuple.client);
                        self.rejects.count(Reject::Garbage);
                        return Handled::Nothing;
                    }
                };
                self.handle_stun(five_tuple, &message, out)
            }
            _ => {
                self.rejects.count(Reject::Garbage);
                Handled::Nothing
            }
        }
    }

    fn handle_stun(
        &self,
        five_tuple: &FiveTuple,
        message: &Message<'_>,
        out: &mut Vec<u8>,
    ) -> Handled {
        let mut guard = self.shard(self.shard_for(five_tuple, message));
        let State { core, sockets } = &mut *guard.0;
        match core.handle_stun(now(), five_tuple, message, sockets, out) {
            Action::None => Handled::Nothing,
            Action::Reply => {
                drop(guard);
                if message.method == Method::BINDING
                    && message.class == Class::Request
                    && Class::of_message(out) == Some(Class::Success)
                {
                    self.metrics.binding_answered(five_tuple.transport);
                }
                Handled::Reply
            }
            Action::ReplyVia { from, to } => {
                drop(guard);
                self.metrics.binding_answered(five_tuple.transport);
                Handled::ReplyVia { from, to }
            }
            Action::ReplyAndStartRelay(id) => {
                let receivers = sockets.take_receivers(id);
                let handled = if !receivers.is_empty() {
                    Handled::ReplyAndServeRelay(id, receivers)
                } else if let Some(receiver) = sockets.take_tcp_receiver(id) {
                    Handled::ReplyAndServeTcpRelay(id, receiver)
                } else {
                    return Handled::Reply;
                };
                drop(guard);
                self.metrics.allocation_created(five_tuple.transport);
                handled
            }
            Action::ConnectToPeer {
                connection,
                from,
                peer,
            } => Handled::ConnectToPeer {
                connection,
                from,
                peer,
            },
            Action::ReplyAndJoinPeer(connection) => match tcp::join(core, sockets, connection) {
                Some(link) => Handled::ReplyAndJoinPeer(link),
                None => Handled::Reply,
            },
            Action::ToPeer { relay, peer, data } => {
                let Some(socket) = sockets.get(relay, peer).cloned() else {
                    return Handled::Nothing;
                };
                drop(guard);
                self.metrics
                    .relayed(Direction::ToPeer, Framing::Indication, data.len());
                socket.send(peer, None, data);
                Handled::Nothing
            }
        }
    }

    /// Relays a batch of ChannelData messages from clients: routed under
    /// one lock and one clock read, then sent with one system call per
    /// relay socket, peer and payload size where GSO allows.
    pub(crate) fn relay_channel_data(
        &self,
        buffer: &[u8],
        frames: &[ChannelFrame],
        sends: &mut PeerSends,
    ) {
        let PeerSends {
            sockets: used,
            routed,
            run,
        } = sends;
        used.clear();
        routed.clear();
        let now = Instant::now();
        {
            // Neighbouring frames of one shard share one lock.
            let mut locked: Option<(usize, MutexGuard<'_, State>)> = None;
            // The last frame dropped, and why: under one clock reading, the
            // same client's next frames on that channel, as large or larger,
            // are dropped for the same reason without a lookup, so that a
            // flood over its cap costs little more than its reading.
            let mut dropped: Option<(&FiveTuple, u16, usize, Reject)> = None;
            for (index, frame) in frames.iter().enumerate() {
                if let Some((five_tuple, channel, len, reject)) = dropped
                    && *five_tuple == frame.five_tuple
                    && channel == frame.channel
                    && frame.data.len() >= len
                {
                    self.rejects.count(reject);
                    continue;
                }
                let shard = self.shard_of(&frame.five_tuple);
                // One shard lock at a time: holding one while taking another
                // would deadlock against a thread taking them the other way round.
                if locked.as_ref().is_some_and(|(held, _)| *held != shard) {
                    locked = None;
                }
                let (_, state) = locked.get_or_insert_with(|| (shard, self.lock(shard)));
                let State { core, sockets } = &mut **state;
                let (id, peer) = match core.route_channel_data(
                    now,
                    &frame.five_tuple,
                    frame.channel,
                    frame.data.len(),
                ) {
                    Ok(route) => route,
                    Err(reject) => {
                        dropped =
                            Some((&frame.five_tuple, frame.channel, frame.data.len(), reject));
                        continue;
                    }
                };
                let ipv6 = peer.is_ipv6();
                let slot = match used
                    .iter()
                    .position(|(used_id, used_ipv6, _)| *used_id == id && *used_ipv6 == ipv6)
                {
                    Some(slot) => slot,
                    None => {
                        let Some(socket) = sockets.get(id, peer) else {
                            continue;
                        };
                        used.push((id, ipv6, socket.clone()));
                        used.len() - 1
                    }
                };
                routed.push((slot, peer, index));
            }
        }
        if routed.is_empty() {
            return;
        }
        // Each (socket, peer) in arrival order: one run of datagrams.
        routed.sort_unstable();
        let mut bytes = 0;
        let mut start = 0;
        while start < routed.len() {
            let (slot, peer, _) = routed[start];
            run.clear();
            let mut end = start;
            while end < routed.len() && routed[end].0 == slot && routed[end].1 == peer {
                let data = &buffer[frames[routed[end].2].data.clone()];
                bytes += data.len();
                run.push(data);
                end += 1;
            }
            let socket = &used[slot].2;
            run.send(socket, peer, None);
            start = end;
        }
        self.metrics
            .relayed_many(Direction::ToPeer, Framing::ChannelData, routed.len(), bytes);
    }

    /// Routes a batch of datagrams that peers sent to allocation `id`'s
    /// relay, under one lock: for each `(peer, len)`, None to drop it, else
    /// the channel to frame it with, if any.
    pub(crate) fn route_from_peers(
        &self,
        id: AllocId,
        datagrams: &[(SocketAddr, usize)],
        routes: &mut Vec<Option<Option<u16>>>,
    ) {
        routes.clear();
        let now = Instant::now();
        let mut state = self.lock(self.shard_of_id(id));
        routes.extend(
            datagrams
                .iter()
                .map(|&(peer, len)| state.core.route_from_peer(id, peer, now, len)),
        );
    }

    pub(crate) fn has_allocation(&self, five_tuple: &FiveTuple) -> bool {
        self.lock(self.shard_of(five_tuple))
            .core
            .has_allocation(five_tuple)
    }

    /// A TCP/TLS connection ended: its allocation ends with it (RFC 8656 §3.1).
    pub(crate) fn connection_closed(&self, five_tuple: &FiveTuple) {
        self.shard(self.shard_of(five_tuple))
            .end_connection(five_tuple, Instant::now());
    }

    /// Expires allocations, permissions, channels and bans once a second.
    pub(crate) async fn run_timers(self: Arc<Self>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            for shard in 0..self.shards.len() {
                self.shard(shard).handle_timeout(now);
            }
            self.shared.expire_reservations(now);
            self.shared.bans.expire(unix_now());
        }
    }
}

pub(crate) fn now() -> Now {
    Now {
        instant: Instant::now(),
        unix: unix_now(),
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
