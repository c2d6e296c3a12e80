//! The TURN shell: the sans-IO core, the relay sockets it names by
//! allocation, and the step from a received datagram or stream frame to the
//! core's decision and the sends it asks for. Listeners (`transport`) call
//! in; nothing here knows how a reply reaches the client.

mod relay_sockets;

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut, Range};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::auth::CredentialStore;
use crate::config::Config;
use crate::datagrams::Run;
use crate::metrics::{Direction, Framing, Metrics};
use crate::reject::{Reject, RejectCounters};
use crate::reloadable::Reloadable;
use crate::turn::core::{Action, Core, Now};
use crate::turn::{AllocId, FiveTuple};
use crate::wire::{ChannelData, Class, Kind, Message, Method};
use relay_sockets::RelaySocketTable;
pub(crate) use relay_sockets::{RelayReceiver, RelaySocket};

pub(crate) struct Server {
    state: Mutex<State>,
    /// The store the core authenticates with, for HTTP and signaling to
    /// mint from without taking the core's lock.
    credentials: Reloadable<CredentialStore>,
    nonce_key: [u8; 32],
    pub(crate) rejects: Arc<RejectCounters>,
    pub(crate) metrics: Arc<Metrics>,
    /// Set by POST /drain or SIGTERM, never cleared.
    draining: AtomicBool,
}

/// The core and the relay sockets of its allocations, under one lock.
struct State {
    core: Core,
    sockets: RelaySocketTable,
}

/// The core, locked. Dropping it closes the relay sockets of allocations
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
    /// The relay sockets this batch sends from, each once.
    sockets: Vec<(AllocId, Arc<RelaySocket>)>,
    /// (index into `sockets`, peer, index of the frame).
    routed: Vec<(usize, SocketAddr, usize)>,
    run: Run,
}

/// What the listener does after [`Server::handle_message`].
pub(crate) enum Handled {
    Nothing,
    /// Send the reply buffer to the client.
    Reply,
    /// Send the reply, then serve the new relay socket of allocation `AllocId`.
    ReplyAndServeRelay(AllocId, RelayReceiver),
}

impl Server {
    pub(crate) fn new(config: &Config) -> Arc<Self> {
        let rejects = Arc::new(RejectCounters::default());
        let nonce_key = rand::random();
        let credentials = Arc::new(CredentialStore::new(&config.realm, &config.auth, nonce_key));
        Arc::new(Self {
            state: Mutex::new(State {
                core: Core::new(config, credentials.clone(), rejects.clone()),
                sockets: RelaySocketTable::new(config.relay.socket_receive_buffer),
            }),
            credentials: Reloadable::new(credentials),
            nonce_key,
            rejects,
            metrics: Arc::default(),
            draining: AtomicBool::new(false),
        })
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
        let mut core = self.core();
        core.0.sockets.receive_buffer = config.relay.socket_receive_buffer;
        core.reconfigure(config, credentials, now())
    }

    /// Stops taking new allocations (and, through [`Server::is_draining`],
    /// new connections); what exists carries on. False if already draining.
    pub(crate) fn drain(&self) -> bool {
        let first = !self.draining.swap(true, Ordering::SeqCst);
        self.core().set_draining();
        first
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The core's lock; held for lookups and decisions, never across I/O.
    pub(crate) fn core(&self) -> CoreGuard<'_> {
        CoreGuard(self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic aborts the process (panic = "abort"), so poisoning cannot be observed.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
                    let mut state = self.lock();
                    let State { core, sockets } = &mut *state;
                    core.route_channel_data(
                        Instant::now(),
                        five_tuple,
                        frame.channel,
                        frame.data.len(),
                    )
                    .and_then(|(id, peer)| Some((sockets.get(id)?.clone(), peer)))
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
        let mut guard = self.core();
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
            Action::ReplyAndStartRelay(id) => match sockets.take_receiver(id) {
                Some(receiver) => {
                    drop(guard);
                    self.metrics.allocation_created(five_tuple.transport);
                    Handled::ReplyAndServeRelay(id, receiver)
                }
                None => Handled::Reply,
            },
            Action::ToPeer { relay, peer, data } => {
                let Some(socket) = sockets.get(relay).cloned() else {
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
            let mut state = self.lock();
            let State { core, sockets } = &mut *state;
            for (index, frame) in frames.iter().enumerate() {
                let Some((id, peer)) = core.route_channel_data(
                    now,
                    &frame.five_tuple,
                    frame.channel,
                    frame.data.len(),
                ) else {
                    continue;
                };
                let slot = match used.iter().position(|(used_id, _)| *used_id == id) {
                    Some(slot) => slot,
                    None => {
                        let Some(socket) = sockets.get(id) else {
                            continue;
                        };
                        used.push((id, socket.clone()));
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
            let socket = &used[slot].1;
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
        let mut state = self.lock();
        routes.extend(
            datagrams
                .iter()
                .map(|&(peer, len)| state.core.route_from_peer(id, peer, now, len)),
        );
    }

    pub(crate) fn has_allocation(&self, five_tuple: &FiveTuple) -> bool {
        self.core().has_allocation(five_tuple)
    }

    /// A TCP/TLS connection ended: its allocation ends with it (RFC 8656 §3.1).
    pub(crate) fn connection_closed(&self, five_tuple: &FiveTuple) {
        self.core().end_connection(five_tuple, Instant::now());
    }

    /// Expires allocations, permissions and channels once a second.
    pub(crate) async fn run_timers(self: Arc<Self>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.core().handle_timeout(Instant::now());
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
