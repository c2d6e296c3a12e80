//! TURN request handling: (now, 5-tuple, message) in, reply bytes and
//! relay actions out. No clock and no listener socket in here; the only
//! system call is binding a relay socket for a new allocation.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;

use crate::auth::{CredentialStore, LongTermKey};
use crate::config::{Config, PortRange, RelayConfig, Transport};
use crate::logging::event;
use crate::policy::PeerPolicy;
use crate::reject::{Reject, RejectCounters};
use crate::stun;
use crate::transport::FiveTuple;
use crate::turn::allocation::{AllocId, Allocation, BindCheck};
use crate::turn::ports::PortPool;
use crate::turn::relay::{RelayHandle, RelayTask};
use crate::turn::table::AllocationTable;
use crate::wire::{Class, Message, MessageBuilder, Method, attr};

/// The two clocks the core needs: monotonic for lifetimes, wall-clock seconds
/// for REST username expiry and nonces (which must survive restarts).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    pub(crate) instant: Instant,
    pub(crate) unix: u64,
}

/// What the shell does after a STUN message was handled.
#[derive(Debug)]
pub(crate) enum Action<'a> {
    /// Nothing to send (an indication, a dropped message).
    None,
    /// Send the bytes written to `out` back to the client.
    Reply,
    /// Send `out` back and start the receive task of a new relay.
    ReplyAndStartRelay(AllocId, RelayTask),
    /// Send `data` to `peer` from the allocation's relay socket.
    ToPeer {
        socket: Arc<UdpSocket>,
        peer: SocketAddr,
        data: &'a [u8],
    },
}

/// Where relay sockets bind and which address they are advertised as.
#[derive(Clone, Copy, Debug)]
struct RelayEndpoint {
    bind: IpAddr,
    advertise: Option<IpAddr>,
}

#[derive(Clone, Debug)]
struct Limits {
    default_lifetime: Duration,
    max_lifetime: Duration,
    permission_lifetime: Duration,
    channel_lifetime: Duration,
    max_allocations: u32,
    max_allocations_per_user: u32,
    rfc5766_channel_numbers: bool,
}

impl Limits {
    fn of(relay: &RelayConfig) -> Self {
        Self {
            default_lifetime: relay.default_lifetime,
            max_lifetime: relay.max_lifetime,
            permission_lifetime: relay.permission_lifetime,
            channel_lifetime: relay.channel_lifetime,
            max_allocations: relay.max_allocations,
            max_allocations_per_user: relay.max_allocations_per_user,
            rfc5766_channel_numbers: relay.rfc5766_channel_numbers,
        }
    }

    /// RFC 8656 §12 allows 0x4000–0x4FFF; RFC 5766 allowed up to 0x7FFF.
    fn valid_channel(&self, number: u16) -> bool {
        let last = if self.rfc5766_channel_numbers {
            0x7FFF
        } else {
            0x4FFF
        };
        (0x4000..=last).contains(&number)
    }
}

/// How long an EVEN-PORT reservation holds the next port (RFC 8656 §7.2: ~30 s).
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
/// Tries before giving up when ports of the range are taken by other programs.
const BIND_ATTEMPTS: usize = 8;

/// A client that proved who it is.
struct Authenticated {
    username: String,
    key: LongTermKey,
}

/// One authenticated request, as every method handler sees it.
#[derive(Clone, Copy)]
struct Request<'m, 'a> {
    now: Now,
    five_tuple: &'m FiveTuple,
    message: &'m Message<'a>,
    user: &'m Authenticated,
}

pub(crate) struct Core {
    credentials: CredentialStore,
    nonce_key: [u8; 32],
    /// The relay port range the pool was made for (a restart changes it).
    ports_range: PortRange,
    policy: PeerPolicy,
    limits: Limits,
    relay_v4: Option<RelayEndpoint>,
    relay_v6: Option<RelayEndpoint>,
    table: AllocationTable,
    ports: PortPool,
    reservations: HashMap<u64, (u16, IpAddr, Instant)>,
    rng: StdRng,
    counters: Arc<RejectCounters>,
    /// Allocate is refused (508) while draining.
    draining: bool,
}

impl Core {
    pub(crate) fn new(config: &Config, nonce_key: [u8; 32], counters: Arc<RejectCounters>) -> Self {
        let relay = &config.relay;
        Self {
            credentials: CredentialStore::new(&config.realm, &config.auth, nonce_key),
            nonce_key,
            ports_range: relay.ports,
            policy: PeerPolicy::new(&relay.allow_peers, &relay.deny_peers),
            limits: Limits::of(relay),
            relay_v4: endpoint(relay, true),
            relay_v6: endpoint(relay, false),
            table: AllocationTable::default(),
            ports: PortPool::new(relay.ports),
            reservations: HashMap::new(),
            rng: StdRng::from_os_rng(),
            counters,
            draining: false,
        }
    }

    pub(crate) fn credentials(&self) -> &CredentialStore {
        &self.credentials
    }

    /// Applies a reloaded config: credentials, peer policy, quotas,
    /// lifetimes and relay addresses for what comes next. Allocations whose
    /// user can no longer authenticate with the key it used (a removed
    /// static user, a removed REST secret, a changed realm) are ended.
    /// Returns what needs a restart instead.
    pub(crate) fn reconfigure(&mut self, config: &Config, unix_now: u64) -> Vec<String> {
        let relay = &config.relay;
        self.credentials = CredentialStore::new(&config.realm, &config.auth, self.nonce_key);
        self.policy = PeerPolicy::new(&relay.allow_peers, &relay.deny_peers);
        self.limits = Limits::of(relay);
        self.relay_v4 = endpoint(relay, true);
        self.relay_v6 = endpoint(relay, false);
        let orphaned: Vec<AllocId> = self
            .table
            .iter()
            .filter(|allocation| {
                // An expired REST username is no reason: its next Refresh fails anyway.
                match self.credentials.keys(&allocation.username, unix_now) {
                    Ok(keys) => !keys.iter().any(|key| *key == allocation.key),
                    Err(reject) => reject != Reject::ExpiredCredentials,
                }
            })
            .map(|allocation| allocation.id)
            .collect();
        for id in orphaned {
            self.remove(id, "allocation-deleted-user-removed");
        }
        let mut needs_restart = Vec::new();
        if relay.ports != self.ports_range {
            needs_restart.push(format!(
                "relay.ports {} (still using {})",
                relay.ports, self.ports_range
            ));
        }
        needs_restart
    }

    /// Ends the allocations made through the UDP listener bound to `local`
    /// (when that listener goes away on reload).
    pub(crate) fn end_listener(&mut self, local: SocketAddr) {
        let ended: Vec<AllocId> = self
            .table
            .iter()
            .filter(|a| {
                a.five_tuple.transport == Transport::Udp
                    && a.five_tuple.server.port() == local.port()
                    && (local.ip().is_unspecified() || a.five_tuple.server.ip() == local.ip())
            })
            .map(|a| a.id)
            .collect();
        for id in ended {
            self.remove(id, "allocation-deleted-listener-removed");
        }
    }

    pub(crate) fn allocation_count(&self) -> usize {
        self.table.len()
    }

    /// Handles one STUN message from `five_tuple`. `local_ip` is the address
    /// the client reached, when the listener is bound to a wildcard address.
    pub(crate) fn handle_stun<'a>(
        &mut self,
        now: Now,
        five_tuple: &FiveTuple,
        message: &Message<'a>,
        out: &mut Vec<u8>,
    ) -> Action<'a> {
        match message.class {
            Class::Request => {}
            Class::Indication => return self.handle_indication(now, five_tuple, message),
            Class::Success | Class::Error => {
                self.counters.count(Reject::Garbage);
                return Action::None;
            }
        }
        let unknown = message.unknown_required();
        if !unknown.is_empty() {
            self.reject(
                message,
                Reject::UnknownAttribute,
                None,
                five_tuple,
                now,
                out,
            );
            let mut values = Vec::with_capacity(unknown.len() * 2);
            for kind in unknown {
                values.extend_from_slice(&kind.to_be_bytes());
            }
            // Rebuild with the list: UNKNOWN-ATTRIBUTES goes before any fingerprint.
            let mut reply = MessageBuilder::reply(out, message, Class::Error);
            reply
                .add_error(420, "Unknown Attribute")
                .add(attr::UNKNOWN_ATTRIBUTES, &values);
            if message.has_fingerprint() {
                reply.add_fingerprint();
            }
            return Action::Reply;
        }
        if message.method == Method::BINDING {
            stun::answer_binding(message, five_tuple.client, out);
            return Action::Reply;
        }
        if message.is_classic() {
            self.reject(message, Reject::BadRequest, None, five_tuple, now, out);
            return Action::Reply;
        }
        let method = message.method;
        if ![
            Method::ALLOCATE,
            Method::REFRESH,
            Method::CREATE_PERMISSION,
            Method::CHANNEL_BIND,
        ]
        .contains(&method)
        {
            self.reject(message, Reject::BadRequest, None, five_tuple, now, out);
            return Action::Reply;
        }
        let user = match self.authenticate(now, five_tuple, message) {
            Ok(user) => user,
            Err(reject) => {
                if reject.is_auth_failure() {
                    event!(
                        info,
                        "auth-failed",
                        reason = reject.name(),
                        client = five_tuple.client,
                        user = format_args!("{:?}", username_of(message).unwrap_or(""))
                    );
                }
                self.reject(message, reject, None, five_tuple, now, out);
                return Action::Reply;
            }
        };
        if method != Method::ALLOCATE {
            let Some(allocation) = self.table.by_five_tuple(five_tuple) else {
                self.reject(
                    message,
                    Reject::AllocationMismatch,
                    Some(&user.key),
                    five_tuple,
                    now,
                    out,
                );
                return Action::Reply;
            };
            if let Some(previous) = allocation.recent_response(&message.transaction) {
                out.clear();
                out.extend_from_slice(previous);
                return Action::Reply;
            }
        }
        let request = Request {
            now,
            five_tuple,
            message,
            user: &user,
        };
        let result = match method {
            Method::ALLOCATE => self.allocate(&request, out),
            Method::REFRESH => self.refresh(&request, out),
            Method::CREATE_PERMISSION => self.create_permission(&request, out),
            _ => self.channel_bind(&request, out),
        };
        match result {
            Ok(action) => {
                if let Some(allocation) = self.table.by_five_tuple(five_tuple) {
                    allocation.remember_response(message.transaction, out);
                }
                action
            }
            Err(reject) => {
                self.reject(message, reject, Some(&user.key), five_tuple, now, out);
                Action::Reply
            }
        }
    }

    fn authenticate(
        &self,
        now: Now,
        five_tuple: &FiveTuple,
        message: &Message<'_>,
    ) -> Result<Authenticated, Reject> {
        if message.get(attr::MESSAGE_INTEGRITY).is_none() {
            return Err(Reject::Challenge);
        }
        let (Some(username), Some(_realm), Some(nonce)) = (
            message.get(attr::USERNAME),
            message.get(attr::REALM),
            message.get(attr::NONCE),
        ) else {
            return Err(Reject::BadRequest);
        };
        let username = std::str::from_utf8(username).map_err(|_| Reject::BadRequest)?;
        self.credentials
            .check_nonce(nonce, five_tuple.client, now.unix)?;
        // A client with an allocation keeps the key it allocated with, as
        // coturn does: refreshing does not fail when a REST username expires.
        if let Some(id) = self.table.id_for(five_tuple) {
            let allocation = self
                .table
                .get(id)
                .expect("indexes point at live allocations");
            if allocation.username != username {
                return Err(Reject::WrongCredentials);
            }
            return if message.integrity_matches(&allocation.key) {
                Ok(Authenticated {
                    username: username.to_owned(),
                    key: allocation.key,
                })
            } else {
                Err(Reject::WrongPassword)
            };
        }
        let keys = self.credentials.keys(username, now.unix)?;
        let key = keys
            .iter()
            .find(|key| message.integrity_matches(key.as_slice()))
            .ok_or(Reject::WrongPassword)?;
        Ok(Authenticated {
            username: username.to_owned(),
            key: *key,
        })
    }

    fn allocate<'a>(
        &mut self,
        request: &Request<'_, 'a>,
        out: &mut Vec<u8>,
    ) -> Result<Action<'a>, Reject> {
        let Request {
            now,
            five_tuple,
            message,
            user,
        } = *request;
        if let Some(existing) = self.table.by_five_tuple(five_tuple) {
            return match existing.recent_response(&message.transaction) {
                Some(previous) => {
                    out.clear();
                    out.extend_from_slice(previous);
                    Ok(Action::Reply)
                }
                None => Err(Reject::AllocationMismatch),
            };
        }
        if self.draining {
            return Err(Reject::Draining);
        }
        let transport = message
            .get(attr::REQUESTED_TRANSPORT)
            .ok_or(Reject::BadRequest)?;
        if transport.len() != 4 {
            return Err(Reject::BadRequest);
        }
        if transport[0] != attr::TRANSPORT_UDP {
            return Err(Reject::UnsupportedTransport);
        }
        let even_port = message.get(attr::EVEN_PORT);
        let token = message.get(attr::RESERVATION_TOKEN);
        let family = message.get(attr::REQUESTED_ADDRESS_FAMILY);
        if token.is_some() && (even_port.is_some() || family.is_some()) {
            return Err(Reject::BadRequest);
        }
        let dont_fragment = message.get(attr::DONT_FRAGMENT).is_some();

        if self.table.count_for_user(&user.username) >= self.limits.max_allocations_per_user {
            return Err(Reject::UserQuotaReached);
        }
        if self.table.len() >= self.limits.max_allocations as usize {
            return Err(Reject::TotalQuotaReached);
        }

        let (endpoint, reserved_port) = match token {
            Some(token) => {
                let token: [u8; 8] = token.try_into().map_err(|_| Reject::BadRequest)?;
                let (port, bind, _) = self
                    .reservations
                    .remove(&u64::from_be_bytes(token))
                    .ok_or(Reject::NoRelayPort)?;
                let endpoint = if bind.is_ipv4() {
                    self.relay_v4
                } else {
                    self.relay_v6
                };
                (
                    endpoint.ok_or(Reject::AddressFamilyNotSupported)?,
                    Some(port),
                )
            }
            None => {
                let want_v6 = match family {
                    None => false,
                    Some([attr::FAMILY_IPV4, ..]) => false,
                    Some([attr::FAMILY_IPV6, ..]) => true,
                    Some(_) => return Err(Reject::AddressFamilyNotSupported),
                };
                let endpoint = if want_v6 {
                    self.relay_v6
                } else {
                    self.relay_v4
                };
                (endpoint.ok_or(Reject::AddressFamilyNotSupported)?, None)
            }
        };
        let advertise_ip = endpoint
            .advertise
            .or_else(|| (!endpoint.bind.is_unspecified()).then_some(endpoint.bind))
            .or_else(|| {
                let local = five_tuple.server.ip();
                (local.is_ipv4() == endpoint.bind.is_ipv4() && !local.is_unspecified())
                    .then_some(local)
            })
            .ok_or(Reject::AddressFamilyNotSupported)?;

        let reserve_next = even_port.is_some_and(|v| v.first().is_some_and(|b| b & 0x80 != 0));
        let (relay, task) = self.open_relay(
            endpoint.bind,
            reserved_port,
            even_port.is_some(),
            reserve_next,
            dont_fragment,
        )?;
        let bound_port = relay.bound().port();
        let relayed = SocketAddr::new(advertise_ip, bound_port);
        if self.table.by_relayed(relayed).is_some() {
            // Two bind addresses advertised as one external address: refuse
            // rather than deliver one client's peers to another.
            log::warn!("relayed address {relayed} is already in use");
            self.ports.release(bound_port);
            return Err(Reject::ServerError);
        }

        let lifetime = message
            .get(attr::LIFETIME)
            .and_then(attr::u32_value)
            .map_or(self.limits.default_lifetime, |asked| {
                Duration::from_secs(u64::from(asked))
                    .clamp(self.limits.default_lifetime, self.limits.max_lifetime)
            });

        let id = self.table.next_id();
        let mut allocation = Allocation::new(
            id,
            *five_tuple,
            user.username.clone(),
            user.key,
            relay,
            relayed,
            now.instant,
            now.instant + lifetime,
        );

        let mut reply = MessageBuilder::reply(out, message, Class::Success);
        reply
            .add_xor_address(attr::XOR_RELAYED_ADDRESS, relayed)
            .add_u32(attr::LIFETIME, saturating_secs(lifetime))
            .add_xor_address(attr::XOR_MAPPED_ADDRESS, five_tuple.client);
        if reserve_next {
            let token: u64 = self.rng.random();
            let expires = now.instant + RESERVATION_LIFETIME;
            self.reservations
                .insert(token, (bound_port + 1, endpoint.bind, expires));
            allocation.reservation = Some((token, bound_port + 1));
            reply.add(attr::RESERVATION_TOKEN, &token.to_be_bytes());
        }
        finish(&mut reply, message, &user.key);

        event!(
            info,
            "allocation-created",
            user = user.username,
            client = five_tuple.client,
            relay = relayed,
            lifetime = format_args!("{}s", lifetime.as_secs())
        );
        self.table.insert(allocation);
        Ok(Action::ReplyAndStartRelay(id, task))
    }

    /// Binds a relay socket on a port from the pool, retrying ports that
    /// another program holds.
    fn open_relay(
        &mut self,
        bind_ip: IpAddr,
        reserved: Option<u16>,
        even: bool,
        reserve_next: bool,
        dont_fragment: bool,
    ) -> Result<(RelayHandle, RelayTask), Reject> {
        let attempts = if reserved.is_some() { 1 } else { BIND_ATTEMPTS };
        let mut busy = Vec::new();
        let mut outcome = Err(Reject::NoRelayPort);
        for _ in 0..attempts {
            let port = match reserved {
                Some(port) => port,
                None if even => match self.ports.take_even(&mut self.rng, reserve_next) {
                    Some(port) => port,
                    None => break,
                },
                None => match self.ports.take_any(&mut self.rng) {
                    Some(port) => port,
                    None => break,
                },
            };
            match RelayHandle::open(SocketAddr::new(bind_ip, port), dont_fragment) {
                Ok(opened) => {
                    outcome = Ok(opened);
                    break;
                }
                Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
                    busy.push(port);
                    if even && reserve_next {
                        busy.push(port + 1);
                    }
                }
                Err(error) => {
                    log::warn!("cannot open relay socket on {bind_ip} port {port}: {error}");
                    self.ports.release(port);
                    outcome = Err(Reject::ServerError);
                    break;
                }
            }
        }
        // Ports other programs hold go back to the pool: they may be free later.
        for port in busy {
            self.ports.release(port);
        }
        outcome
    }

    fn refresh<'a>(
        &mut self,
        request: &Request<'_, 'a>,
        out: &mut Vec<u8>,
    ) -> Result<Action<'a>, Reject> {
        let Request {
            now,
            five_tuple,
            message,
            user,
        } = *request;
        let asked = message.get(attr::LIFETIME).and_then(attr::u32_value);
        if asked == Some(0) {
            let id = self
                .table
                .id_for(five_tuple)
                .ok_or(Reject::AllocationMismatch)?;
            self.remove(id, "allocation-deleted");
            let mut reply = MessageBuilder::reply(out, message, Class::Success);
            reply.add_u32(attr::LIFETIME, 0);
            finish(&mut reply, message, &user.key);
            return Ok(Action::Reply);
        }
        let lifetime = asked.map_or(self.limits.default_lifetime, |asked| {
            Duration::from_secs(u64::from(asked)).min(self.limits.max_lifetime)
        });
        let allocation = self
            .table
            .by_five_tuple(five_tuple)
            .ok_or(Reject::AllocationMismatch)?;
        allocation.expires = now.instant + lifetime;
        event!(
            info,
            "allocation-refreshed",
            user = allocation.username,
            relay = allocation.relayed,
            lifetime = format_args!("{}s", lifetime.as_secs())
        );
        let mut reply = MessageBuilder::reply(out, message, Class::Success);
        reply.add_u32(attr::LIFETIME, saturating_secs(lifetime));
        finish(&mut reply, message, &user.key);
        Ok(Action::Reply)
    }

    /// Checks a peer address for a permission or channel: family, then policy.
    fn check_peer(
        &self,
        five_tuple: &FiveTuple,
        relayed: SocketAddr,
        peer: SocketAddr,
    ) -> Result<(), Reject> {
        if peer.is_ipv4() != relayed.is_ipv4() {
            return Err(Reject::PeerAddressFamilyMismatch);
        }
        if let Err(refused) = self.policy.check(peer.ip()) {
            event!(
                info,
                "peer-refused",
                client = five_tuple.client,
                peer = peer,
                why = refused
            );
            return Err(Reject::PeerRefused);
        }
        Ok(())
    }

    fn create_permission<'a>(
        &mut self,
        request: &Request<'_, 'a>,
        out: &mut Vec<u8>,
    ) -> Result<Action<'a>, Reject> {
        let Request {
            now,
            five_tuple,
            message,
            user,
        } = *request;
        let relayed = self.relayed_of(five_tuple)?;
        let mut peers = Vec::new();
        for value in message.all(attr::XOR_PEER_ADDRESS) {
            let peer = peer_address(message, value).ok_or(Reject::BadRequest)?;
            self.check_peer(five_tuple, relayed, peer)?;
            peers.push(peer.ip());
        }
        if peers.is_empty() {
            return Err(Reject::BadRequest);
        }
        let until = now.instant + self.limits.permission_lifetime;
        let allocation = self
            .table
            .by_five_tuple(five_tuple)
            .ok_or(Reject::AllocationMismatch)?;
        for peer in peers {
            allocation.permit(peer, until);
        }
        let mut reply = MessageBuilder::reply(out, message, Class::Success);
        finish(&mut reply, message, &user.key);
        Ok(Action::Reply)
    }

    fn channel_bind<'a>(
        &mut self,
        request: &Request<'_, 'a>,
        out: &mut Vec<u8>,
    ) -> Result<Action<'a>, Reject> {
        let Request {
            now,
            five_tuple,
            message,
            user,
        } = *request;
        let relayed = self.relayed_of(five_tuple)?;
        let channel = message
            .get(attr::CHANNEL_NUMBER)
            .filter(|v| v.len() == 4)
            .map(|v| u16::from_be_bytes([v[0], v[1]]))
            .filter(|&n| self.limits.valid_channel(n))
            .ok_or(Reject::BadRequest)?;
        let peer = message
            .get(attr::XOR_PEER_ADDRESS)
            .and_then(|v| peer_address(message, v))
            .ok_or(Reject::BadRequest)?;
        self.check_peer(five_tuple, relayed, peer)?;
        let channel_until = now.instant + self.limits.channel_lifetime;
        let permission_until = now.instant + self.limits.permission_lifetime;
        let allocation = self
            .table
            .by_five_tuple(five_tuple)
            .ok_or(Reject::AllocationMismatch)?;
        if allocation.check_bind(channel, peer, now.instant) == BindCheck::Conflict {
            return Err(Reject::BadRequest);
        }
        allocation.bind(channel, peer, channel_until);
        allocation.permit(peer.ip(), permission_until);
        let mut reply = MessageBuilder::reply(out, message, Class::Success);
        finish(&mut reply, message, &user.key);
        Ok(Action::Reply)
    }

    fn relayed_of(&mut self, five_tuple: &FiveTuple) -> Result<SocketAddr, Reject> {
        self.table
            .by_five_tuple(five_tuple)
            .map(|a| a.relayed)
            .ok_or(Reject::AllocationMismatch)
    }

    fn handle_indication<'a>(
        &mut self,
        now: Now,
        five_tuple: &FiveTuple,
        message: &Message<'a>,
    ) -> Action<'a> {
        if message.method != Method::SEND {
            // Binding indications are keep-alives; anything else is ignored.
            return Action::None;
        }
        let (Some(peer), Some(data)) = (
            message
                .get(attr::XOR_PEER_ADDRESS)
                .and_then(|v| peer_address(message, v)),
            message.get(attr::DATA),
        ) else {
            self.counters.count(Reject::BadRequest);
            return Action::None;
        };
        let Some(allocation) = self.table.by_five_tuple(five_tuple) else {
            self.counters.count(Reject::NoRoute);
            return Action::None;
        };
        if !allocation.route_send(peer, now.instant, data.len()) {
            self.counters.count(Reject::NoRoute);
            return Action::None;
        }
        match allocation.relay.socket() {
            Some(socket) => Action::ToPeer {
                socket: socket.clone(),
                peer,
                data,
            },
            None => Action::None,
        }
    }

    /// ChannelData from a client: the relay socket and peer to send it to.
    pub(crate) fn route_channel_data(
        &mut self,
        now: Instant,
        five_tuple: &FiveTuple,
        channel: u16,
        len: usize,
    ) -> Option<(Arc<UdpSocket>, SocketAddr)> {
        let route = self.table.by_five_tuple(five_tuple).and_then(|allocation| {
            let peer = allocation.route_channel(channel, now, len)?;
            Some((allocation.relay.socket()?.clone(), peer))
        });
        if route.is_none() {
            self.counters.count(Reject::NoRoute);
        }
        route
    }

    /// Data from `peer` at allocation `id`'s relay: None to drop it, else the
    /// client's 5-tuple and the channel to frame it with, if any.
    pub(crate) fn route_from_peer(
        &mut self,
        id: AllocId,
        peer: SocketAddr,
        now: Instant,
        len: usize,
    ) -> Option<Option<u16>> {
        let route = self.table.get_mut(id)?.route_from_peer(peer, now, len);
        if route.is_none() {
            self.counters.count(Reject::NoRoute);
        }
        route
    }

    pub(crate) fn has_allocation(&self, five_tuple: &FiveTuple) -> bool {
        self.table.id_for(five_tuple).is_some()
    }

    /// Ends the allocation of a closed TCP/TLS connection, freeing its port.
    pub(crate) fn end_connection(&mut self, five_tuple: &FiveTuple) {
        if let Some(id) = self.table.id_for(five_tuple) {
            self.remove(id, "allocation-deleted-with-connection");
        }
    }

    /// Ends expired allocations, permissions, channels and reservations.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<AllocId> = self
            .table
            .iter()
            .filter(|a| a.expires <= now)
            .map(|a| a.id)
            .collect();
        for id in expired {
            self.remove(id, "allocation-expired");
        }
        for allocation in self.table.iter_mut() {
            if allocation.next_expiry() <= now {
                allocation.expire(now);
            }
        }
        let ports = &mut self.ports;
        self.reservations.retain(|_, (port, _, expires)| {
            let keep = *expires > now;
            if !keep {
                ports.release(*port);
            }
            keep
        });
    }

    fn remove(&mut self, id: AllocId, event: &str) {
        let Some(allocation) = self.table.remove(id) else {
            return;
        };
        self.ports.release(allocation.relay.bound().port());
        event!(
            info,
            event,
            user = allocation.username,
            client = allocation.five_tuple.client,
            relay = allocation.relayed,
            age = format_args!("{}s", allocation.created.elapsed().as_secs()),
            to_peer = format_args!(
                "{}B/{}p",
                allocation.to_peer.bytes, allocation.to_peer.packets
            ),
            from_peer = format_args!(
                "{}B/{}p",
                allocation.from_peer.bytes, allocation.from_peer.packets
            )
        );
    }

    /// Writes the error response for `reject` and counts it.
    fn reject(
        &self,
        message: &Message<'_>,
        reject: Reject,
        key: Option<&LongTermKey>,
        five_tuple: &FiveTuple,
        now: Now,
        out: &mut Vec<u8>,
    ) {
        self.counters.count(reject);
        let Some((code, phrase)) = reject.error_code() else {
            return;
        };
        let mut reply = MessageBuilder::reply(out, message, Class::Error);
        reply.add_error(code, phrase);
        if code == 401 || code == 438 {
            reply
                .add(attr::REALM, self.credentials.realm().as_bytes())
                .add(
                    attr::NONCE,
                    self.credentials
                        .nonce(five_tuple.client, now.unix)
                        .as_bytes(),
                );
        }
        match key {
            Some(key) => finish(&mut reply, message, key),
            None if message.has_fingerprint() => {
                reply.add_fingerprint();
            }
            None => {}
        }
    }
}

/// What the operator does through the admin API.
impl Core {
    /// Refuses every new allocation from now on; existing ones carry on.
    pub(crate) fn set_draining(&mut self) {
        self.draining = true;
    }

    pub(crate) fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.table.iter()
    }

    /// Ends every allocation whose username `matches`; returns how many.
    pub(crate) fn end_allocations(&mut self, matches: impl Fn(&str) -> bool) -> usize {
        let ids: Vec<AllocId> = self
            .table
            .iter()
            .filter(|a| matches(&a.username))
            .map(|a| a.id)
            .collect();
        for &id in &ids {
            self.remove(id, "allocation-ended-by-operator");
        }
        ids.len()
    }
}

fn endpoint(relay: &RelayConfig, v4: bool) -> Option<RelayEndpoint> {
    let bind = *relay.addresses.iter().find(|ip| ip.is_ipv4() == v4)?;
    let advertise = relay
        .external_addresses
        .iter()
        .find(|ip| ip.is_ipv4() == v4)
        .copied();
    Some(RelayEndpoint { bind, advertise })
}

/// MESSAGE-INTEGRITY, then FINGERPRINT if the request had one.
fn finish(reply: &mut MessageBuilder<'_>, request: &Message<'_>, key: &LongTermKey) {
    reply.add_integrity(key);
    if request.has_fingerprint() {
        reply.add_fingerprint();
    }
}

/// XOR-PEER-ADDRESS with an IPv4-mapped IPv6 address taken as the IPv4
/// address it is, so permissions, channels and sends all use one form.
fn peer_address(message: &Message<'_>, value: &[u8]) -> Option<SocketAddr> {
    let peer = message.xor_address(value)?;
    Some(SocketAddr::new(
        crate::policy::canonical(peer.ip()),
        peer.port(),
    ))
}

fn username_of<'a>(message: &Message<'a>) -> Option<&'a str> {
    std::str::from_utf8(message.get(attr::USERNAME)?).ok()
}

fn saturating_secs(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::long_term_key;
    use crate::config::Transport;
    use crate::wire::{MAGIC_COOKIE, TransactionId};

    const UNIX: u64 = 1_800_000_000;

    fn core() -> Core {
        core_with("")
    }

    /// A core whose `[relay]` table has `relay_extra` added.
    fn core_with(relay_extra: &str) -> Core {
        let config = Config::parse(
            &format!(
                r#"realm = "example.org"
[[listen]]
address = "127.0.0.1:3478"
[relay]
addresses = ["127.0.0.1"]
allow-peers = ["127.0.0.0/8"]
{relay_extra}
[auth]
[[auth.users]]
name = "alice"
password = "pw"
"#
            ),
            "test",
        )
        .unwrap();
        Core::new(&config, [1; 32], Arc::new(RejectCounters::default()))
    }

    fn five_tuple() -> FiveTuple {
        FiveTuple {
            client: "127.0.0.1:40000".parse().unwrap(),
            server: "127.0.0.1:3478".parse().unwrap(),
            transport: Transport::Udp,
        }
    }

    fn transaction(n: u8) -> TransactionId {
        let mut id = [n; 16];
        id[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        TransactionId(id)
    }

    /// An authenticated request as a client would build it.
    fn request(
        method: Method,
        id: u8,
        nonce: &str,
        add: impl FnOnce(&mut MessageBuilder<'_>),
    ) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut builder = MessageBuilder::new(&mut buf, method, Class::Request, transaction(id));
        add(&mut builder);
        builder
            .add(attr::USERNAME, b"alice")
            .add(attr::REALM, b"example.org")
            .add(attr::NONCE, nonce.as_bytes())
            .add_integrity(&long_term_key("alice", "example.org", "pw"));
        buf
    }

    fn error_code(reply: &[u8]) -> Option<u16> {
        let message = Message::parse(reply).unwrap();
        let value = message.get(attr::ERROR_CODE)?;
        Some(u16::from(value[2]) * 100 + u16::from(value[3]))
    }

    fn handle(core: &mut Core, now: Now, bytes: &[u8]) -> (Vec<u8>, bool) {
        let message = Message::parse(bytes).unwrap();
        let mut out = Vec::new();
        let action = core.handle_stun(now, &five_tuple(), &message, &mut out);
        let started = matches!(action, Action::ReplyAndStartRelay(..));
        (out, started)
    }

    fn allocate(core: &mut Core, now: Now, id: u8) -> Vec<u8> {
        let nonce = core.credentials().nonce(five_tuple().client, now.unix);
        let bytes = request(Method::ALLOCATE, id, &nonce, |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[attr::TRANSPORT_UDP, 0, 0, 0]);
        });
        handle(core, now, &bytes).0
    }

    /// A core with one allocation on `five_tuple()`, the time, and a nonce.
    fn allocated() -> (Core, Now, String) {
        let mut core = core();
        let now = Now {
            instant: Instant::now(),
            unix: UNIX,
        };
        assert_eq!(error_code(&allocate(&mut core, now, 1)), None);
        let nonce = core.credentials().nonce(five_tuple().client, now.unix);
        (core, now, nonce)
    }

    #[tokio::test]
    async fn relayed_address_is_the_external_address_with_the_bound_port() {
        let mut core = core_with(r#"external-addresses = ["203.0.113.10"]"#);
        let now = Now {
            instant: Instant::now(),
            unix: UNIX,
        };
        let reply = allocate(&mut core, now, 1);
        let message = Message::parse(&reply).unwrap();
        let relayed = message
            .xor_address(message.get(attr::XOR_RELAYED_ADDRESS).unwrap())
            .unwrap();
        let id = core.table.id_for(&five_tuple()).unwrap();
        let bound = core.table.get(id).unwrap().relay.bound();
        assert_eq!(
            relayed,
            SocketAddr::new("203.0.113.10".parse().unwrap(), bound.port())
        );
        assert_eq!(bound.ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[tokio::test]
    async fn nonce_goes_stale_after_its_lifetime() {
        let mut core = core();
        let start = Now {
            instant: Instant::now(),
            unix: UNIX,
        };
        let nonce = core.credentials().nonce(five_tuple().client, start.unix);
        let bytes = request(Method::ALLOCATE, 1, &nonce, |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[attr::TRANSPORT_UDP, 0, 0, 0]);
        });
        let later = Now {
            instant: start.instant,
            unix: UNIX + 601,
        };
        let (reply, started) = handle(&mut core, later, &bytes);
        assert_eq!(error_code(&reply), Some(438));
        assert!(!started);
        let (reply, started) = handle(&mut core, start, &bytes);
        assert_eq!(error_code(&reply), None);
        assert!(started);
    }

    #[tokio::test]
    async fn expired_allocation_frees_its_5_tuple_and_port() {
        let mut core = core();
        let now = Now {
            instant: Instant::now(),
            unix: UNIX,
        };
        assert_eq!(error_code(&allocate(&mut core, now, 1)), None);
        assert_eq!(core.table.len(), 1);
        let id = core.table.id_for(&five_tuple()).unwrap();
        let port = core.table.get(id).unwrap().relay.bound().port();
        assert!(!core.ports.is_free(port));
        core.handle_timeout(now.instant + Duration::from_secs(599));
        assert_eq!(core.table.len(), 1, "still alive before its lifetime");
        core.handle_timeout(now.instant + Duration::from_secs(601));
        assert_eq!(core.table.len(), 0);
        assert!(core.ports.is_free(port), "port returned at once");
        assert_eq!(error_code(&allocate(&mut core, now, 2)), None);
    }

    #[tokio::test]
    async fn retransmitted_request_gets_the_same_response() {
        let mut core = core();
        let now = Now {
            instant: Instant::now(),
            unix: UNIX,
        };
        let first = allocate(&mut core, now, 1);
        assert_eq!(
            allocate(&mut core, now, 1),
            first,
            "same transaction: same answer"
        );
        assert_eq!(
            error_code(&allocate(&mut core, now, 2)),
            Some(437),
            "new transaction: mismatch"
        );
        let nonce = core.credentials().nonce(five_tuple().client, now.unix);
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let permission = request(Method::CREATE_PERMISSION, 3, &nonce, |b| {
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        });
        let (reply, _) = handle(&mut core, now, &permission);
        assert_eq!(error_code(&reply), None);
        assert_eq!(handle(&mut core, now, &permission).0, reply);
    }

    #[tokio::test]
    async fn permission_lapses_after_its_lifetime_unless_refreshed() {
        let (mut core, now, nonce) = allocated();
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let permission = request(Method::CREATE_PERMISSION, 2, &nonce, |b| {
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        });
        handle(&mut core, now, &permission);
        let id = core.table.id_for(&five_tuple()).unwrap();
        assert_eq!(core.route_from_peer(id, peer, now.instant, 1), Some(None));
        let later = now.instant + Duration::from_secs(301);
        assert_eq!(core.route_from_peer(id, peer, later, 1), None);
    }

    #[tokio::test]
    async fn refresh_with_zero_lifetime_deletes_allocation() {
        let (mut core, now, nonce) = allocated();
        let refresh = request(Method::REFRESH, 2, &nonce, |b| {
            b.add_u32(attr::LIFETIME, 0);
        });
        let (reply, _) = handle(&mut core, now, &refresh);
        assert_eq!(error_code(&reply), None);
        assert_eq!(core.table.len(), 0);
        let again = request(Method::REFRESH, 3, &nonce, |b| {
            b.add_u32(attr::LIFETIME, 600);
        });
        assert_eq!(error_code(&handle(&mut core, now, &again).0), Some(437));
    }

    #[tokio::test]
    async fn channel_numbers_outside_rfc8656_range_are_refused() {
        let (mut core, now, nonce) = allocated();
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for (id, number, code) in [
            (2, 0x3FFF_u16, Some(400)),
            (3, 0x5000, Some(400)),
            (4, 0x4FFF, None),
        ] {
            let bind = request(Method::CHANNEL_BIND, id, &nonce, |b| {
                b.add_u32(attr::CHANNEL_NUMBER, u32::from(number) << 16)
                    .add_xor_address(attr::XOR_PEER_ADDRESS, peer);
            });
            assert_eq!(
                error_code(&handle(&mut core, now, &bind).0),
                code,
                "{number:#x}"
            );
        }
    }
}
