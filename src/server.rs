//! The state every listener and relay shares, and the step from a received
//! datagram to the core's decision and the I/O it asks for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::metrics::{Direction, Framing, Metrics};
use crate::reject::{Reject, RejectCounters};
use crate::transport::ClientRoute;
use crate::transport::FiveTuple;
use crate::turn::allocation::AllocId;
use crate::turn::core::{Action, Core, Now};
use crate::turn::relay;
use crate::wire::{self, ChannelData, Class, Kind, Message, Method};

pub(crate) struct Server {
    core: Mutex<Core>,
    pub(crate) rejects: Arc<RejectCounters>,
    pub(crate) metrics: Arc<Metrics>,
    /// Set by POST /drain or SIGTERM, never cleared.
    draining: AtomicBool,
}

impl Server {
    pub(crate) fn new(config: &Config) -> Arc<Self> {
        let rejects = Arc::new(RejectCounters::default());
        let nonce_key = rand::random();
        Arc::new(Self {
            core: Mutex::new(Core::new(config, nonce_key, rejects.clone())),
            rejects,
            metrics: Arc::default(),
            draining: AtomicBool::new(false),
        })
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
    pub(crate) fn core(&self) -> MutexGuard<'_, Core> {
        // A panic aborts the process (panic = "abort"), so poisoning cannot be observed.
        self.core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Handles one datagram or stream frame from a client (exactly one STUN
    /// message or ChannelData message); `out` is the caller's reply buffer.
    pub(crate) fn handle_message(
        self: &Arc<Self>,
        five_tuple: &FiveTuple,
        data: &[u8],
        route: &ClientRoute,
        out: &mut Vec<u8>,
    ) {
        match data.first().map(|&b| wire::classify(b)) {
            Some(Kind::ChannelData) => {
                let Some(frame) = ChannelData::parse(data) else {
                    self.rejects.count(Reject::Garbage);
                    return;
                };
                let route = self.core().route_channel_data(
                    Instant::now(),
                    five_tuple,
                    frame.channel,
                    frame.data.len(),
                );
                if let Some((socket, peer)) = route {
                    self.metrics
                        .relayed(Direction::ToPeer, Framing::ChannelData, frame.data.len());
                    relay::send_to_peer(&socket, frame.data, peer);
                }
            }
            Some(Kind::Stun) => {
                let message = match Message::parse(data) {
                    Ok(message) => message,
                    Err(error) => {
                        log::debug!("dropped datagram from {}: {error}", five_tuple.client);
                        self.rejects.count(Reject::Garbage);
                        return;
                    }
                };
                let action = self.core().handle_stun(now(), five_tuple, &message, out);
                match action {
                    Action::None => {}
                    Action::Reply => {
                        if message.method == Method::BINDING
                            && message.class == Class::Request
                            && Class::of_message(out) == Some(Class::Success)
                        {
                            self.metrics.binding_answered(five_tuple.transport);
                        }
                        route.send(out);
                    }
                    Action::ReplyAndStartRelay(id, task) => {
                        self.metrics.allocation_created(five_tuple.transport);
                        route.send(out);
                        tokio::spawn(relay::run(self.clone(), id, task, route.clone()));
                    }
                    Action::ToPeer { socket, peer, data } => {
                        self.metrics
                            .relayed(Direction::ToPeer, Framing::Indication, data.len());
                        relay::send_to_peer(&socket, data, peer)
                    }
                }
            }
            _ => self.rejects.count(Reject::Garbage),
        }
    }

    pub(crate) fn has_allocation(&self, five_tuple: &FiveTuple) -> bool {
        self.core().has_allocation(five_tuple)
    }

    /// A TCP/TLS connection ended: its allocation ends with it (RFC 8656 §3.1).
    pub(crate) fn connection_closed(&self, five_tuple: &FiveTuple) {
        self.core().end_connection(five_tuple);
    }

    pub(crate) fn route_from_peer(
        &self,
        id: AllocId,
        peer: std::net::SocketAddr,
        len: usize,
    ) -> Option<Option<u16>> {
        self.core().route_from_peer(id, peer, Instant::now(), len)
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
