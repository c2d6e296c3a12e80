//! TURN request handling: (now, 5-tuple, message) in, reply bytes and
//! decisions out; the data-plane lookups; expiry. The method handlers
//! (Allocate, Refresh, CreatePermission, ChannelBind, Send) are in
//! `methods.rs`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{CredentialStore, LongTermKey, PasswordAlgorithm};
use crate::config::{BandwidthCaps, Config, PortRange, RelayConfig, Transport};
use crate::logging::event;
use crate::policy::PeerPolicy;
use crate::reject::{Reject, RejectCounters};
use crate::source::source_of;
use crate::stun;
use crate::turn::allocation::{AllocId, Allocation};
use crate::turn::bandwidth::Gate;
use crate::turn::connections::PeerConnections;
use crate::turn::redirect::Redirect;
use crate::turn::shared::Shared;
use crate::turn::table::AllocationTable;
use crate::turn::throttle::{AuthLog, Bucket};
use crate::turn::{FiveTuple, RelaySockets};
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
    /// Send `out` from the UDP listener at `from` to `to` (a Binding answered
    /// for NAT behaviour discovery, RFC 5780).
    ReplyVia { from: SocketAddr, to: SocketAddr },
    /// Send `out` back and start receiving on the relay sockets opened for
    /// `AllocId` (two for a dual-stack allocation).
    ReplyAndStartRelay(AllocId),
    /// Send `data` to `peer` from the relay socket of allocation `relay`.
    ToPeer {
        relay: AllocId,
        peer: SocketAddr,
        data: &'a [u8],
    },
    /// Connect from `from` (a TCP allocation's relay address) to `peer` and
    /// report how it went to [`Core::connect_finished`]: the Connect
    /// request is answered then (RFC 6062 §5.2).
    ConnectToPeer {
        connection: u32,
        from: SocketAddr,
        peer: SocketAddr,
    },
    /// Send `out` back, then join this connection to peer connection `u32`
    /// (a ConnectionBind succeeded): from here on it carries raw data.
    ReplyAndJoinPeer(u32),
}

/// Where relay sockets bind and which address they are advertised as.
#[derive(Clone, Copy, Debug)]
pub(super) struct RelayEndpoint {
    pub(super) bind: IpAddr,
    pub(super) advertise: Option<IpAddr>,
}

#[derive(Clone, Debug)]
pub(super) struct Limits {
    pub(super) default_lifetime: Duration,
    pub(super) max_lifetime: Duration,
    pub(super) permission_lifetime: Duration,
    pub(super) channel_lifetime: Duration,
    pub(super) max_allocations: u32,
    pub(super) max_allocations_per_user: u32,
    pub(super) max_permissions_per_allocation: usize,
    pub(super) max_channels_per_allocation: usize,
    pub(super) max_tcp_connections_per_allocation: usize,
    rfc5766_channel_numbers: bool,
    pub(super) bandwidth: BandwidthCaps,
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
            max_permissions_per_allocation: relay.max_permissions_per_allocation as usize,
            max_channels_per_allocation: relay.max_channels_per_allocation as usize,
            max_tcp_connections_per_allocation: relay.max_tcp_connections_per_allocation as usize,
            rfc5766_channel_numbers: relay.rfc5766_channel_numbers,
            bandwidth: relay.bandwidth,
        }
    }

    /// The lifetime an Allocate or a (non-deleting) Refresh gets for the
    /// LIFETIME it asked (RFC 8656 §7.2, §7.3): the default without one or
    /// below it, the maximum above it.
    pub(super) fn desired_lifetime(&self, asked: Option<u32>) -> Duration {
        asked.map_or(self.default_lifetime, |asked| {
            Duration::from_secs(u64::from(asked)).clamp(self.default_lifetime, self.max_lifetime)
        })
    }

    /// RFC 8656 §12 allows 0x4000–0x4FFF; RFC 5766 allowed up to 0x7FFF.
    pub(super) fn valid_channel(&self, number: u16) -> bool {
        let last = if self.rfc5766_channel_numbers {
            0x7FFF
        } else {
            0x4FFF
        };
        (0x4000..=last).contains(&number)
    }
}

/// How long an EVEN-PORT reservation holds the next port (RFC 8656 §7.2: ~30 s).
pub(super) const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// A client that proved who it is.
pub(super) struct Authenticated {
    pub(super) username: String,
    /// Whose quotas count this user's allocations ([`crate::auth::Keys::owner`]).
    pub(super) owner: String,
    pub(super) key: LongTermKey,
}

/// One authenticated request, as every method handler sees it.
#[derive(Clone, Copy)]
pub(super) struct Request<'m, 'a> {
    pub(super) now: Now,
    pub(super) five_tuple: &'m FiveTuple,
    pub(super) message: &'m Message<'a>,
    pub(super) user: &'m Authenticated,
}

pub(crate) struct Core {
    credentials: Arc<CredentialStore>,
    /// The relay port range the pool was made for (a restart changes it).
    ports_range: PortRange,
    pub(super) policy: PeerPolicy,
    pub(super) limits: Limits,
    pub(super) relay_v4: Option<RelayEndpoint>,
    pub(super) relay_v6: Option<RelayEndpoint>,
    pub(super) table: AllocationTable,
    /// The peer connections of this shard's TCP allocations.
    pub(super) peers: PeerConnections,
    /// Ports, reservations and quotas, shared with the other shards.
    pub(super) shared: Arc<Shared>,
    pub(super) counters: Arc<RejectCounters>,
    /// Allocations ended since the shell last asked: their sockets go.
    pub(super) ended: Vec<AllocId>,
    /// One relay of a dual-stack allocation that lives on, ended since the
    /// shell last asked (true for IPv6): its socket goes.
    pub(super) ended_relays: Vec<(AllocId, bool)>,
    /// The UDP listeners' bound addresses: never a peer, whatever the
    /// policy allows, so no allocation relays into icegate itself.
    own_listeners: Vec<SocketAddr>,
    redirect: Redirect,
    /// The UDP listeners that serve RFC 5780 NAT behaviour discovery.
    discovery: Vec<stun::Discovery>,
}

impl Core {
    /// Shard `shard` of `shards` (each owns the allocations whose 5-tuples
    /// hash to it), authenticating against `credentials` (shared with the
    /// HTTP and signaling side, which mint from it).
    pub(crate) fn new(
        config: &Config,
        credentials: Arc<CredentialStore>,
        counters: Arc<RejectCounters>,
        shared: Arc<Shared>,
        (shard, shards): (u64, u64),
    ) -> Self {
        let relay = &config.relay;
        shared.throttle.configure(config.throttle);
        Self {
            credentials,
            ports_range: relay.ports,
            policy: PeerPolicy::new(&relay.allow_peers, &relay.deny_peers),
            limits: Limits::of(relay),
            relay_v4: endpoint(relay, true),
            relay_v6: endpoint(relay, false),
            table: AllocationTable::new(shard, shards),
            peers: PeerConnections::new(shard, shards),
            shared,
            counters,
            ended: Vec::new(),
            ended_relays: Vec::new(),
            own_listeners: Vec::new(),
            redirect: Redirect::new(&relay.alternates),
            discovery: discovery_of(config),
        }
    }

    /// The addresses the UDP listeners are bound to now (after a start or reload).
    pub(crate) fn set_listeners(&mut self, listeners: &[SocketAddr]) {
        self.own_listeners = listeners.to_vec();
    }

    /// Whether `peer` is one of the UDP listeners, as reached at `server`
    /// (the address the client reached, for listeners on a wildcard address).
    pub(super) fn is_own_listener(&self, peer: SocketAddr, server: IpAddr) -> bool {
        is_own_listener(
            &self.own_listeners,
            [self.relay_v4, self.relay_v6],
            peer,
            server,
        )
    }

    #[cfg(test)]
    pub(crate) fn credentials(&self) -> &CredentialStore {
        &self.credentials
    }

    /// Applies a reloaded config: credentials, peer policy, quotas,
    /// lifetimes and relay addresses for what comes next. Allocations whose
    /// user can no longer authenticate with the key it used (a removed
    /// static user, a removed REST secret, a changed realm) are ended.
    /// Returns what needs a restart instead.
    pub(crate) fn reconfigure(
        &mut self,
        config: &Config,
        credentials: Arc<CredentialStore>,
        now: Now,
    ) -> Vec<String> {
        let relay = &config.relay;
        self.credentials = credentials;
        self.shared.throttle.configure(config.throttle);
        self.policy = PeerPolicy::new(&relay.allow_peers, &relay.deny_peers);
        self.limits = Limits::of(relay);
        self.redirect = Redirect::new(&relay.alternates);
        self.discovery = discovery_of(config);
        self.relay_v4 = endpoint(relay, true);
        self.relay_v6 = endpoint(relay, false);
        // A tightened policy holds for what was permitted before, at once.
        let policy = &self.policy;
        for allocation in self.table.iter_mut() {
            let (permissions, channels) = allocation.retain_peers(|ip| policy.check(ip).is_ok());
            if permissions + channels > 0 {
                event!(
                    info,
                    "peers-refused-on-reload",
                    user = allocation.username,
                    relay = allocation.relays(),
                    permissions = permissions,
                    channels = channels
                );
            }
        }
        let orphaned: Vec<AllocId> = self
            .table
            .iter()
            .filter(|allocation| {
                // An expired REST username is no reason: its next Refresh fails anyway.
                let algorithm = allocation.key.algorithm();
                match self
                    .credentials
                    .keys(&allocation.username, algorithm, now.unix)
                {
                    Ok(keys) => !keys.iter().any(|key| *key == allocation.key),
                    Err(reject) => reject != Reject::ExpiredCredentials,
                }
            })
            .map(|allocation| allocation.id)
            .collect();
        for id in orphaned {
            self.remove(id, "allocation-deleted-user-removed", now.instant);
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
    pub(crate) fn end_listener(&mut self, local: SocketAddr, now: Instant) {
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
            self.remove(id, "allocation-deleted-listener-removed", now);
        }
    }

    pub(crate) fn allocation_count(&self) -> usize {
        self.table.len()
    }

    /// The allocations ended since the last call: the shell closes their sockets.
    pub(crate) fn take_ended(&mut self) -> Vec<AllocId> {
        std::mem::take(&mut self.ended)
    }

    /// The relays of dual-stack allocations ended since the last call,
    /// (allocation, true for IPv6), the allocations living on: the shell
    /// closes their sockets.
    pub(crate) fn take_ended_relays(&mut self) -> Vec<(AllocId, bool)> {
        std::mem::take(&mut self.ended_relays)
    }

    /// Handles one STUN message from `five_tuple`; a reply goes into `out`.
    /// An Allocate binds its relay socket through `sockets`.
    pub(crate) fn handle_stun<'a>(
        &mut self,
        now: Now,
        five_tuple: &FiveTuple,
        message: &Message<'a>,
        sockets: &mut impl RelaySockets,
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
        let discovery = (five_tuple.transport == Transport::Udp)
            .then(|| self.discovery.iter().find(|d| d.here == five_tuple.server))
            .flatten()
            .copied();
        let unknown = message.unknown_required(discovery.is_some());
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
            // Over UDP a forged source makes the answer a reflection; over
            // TCP/TLS the source is proven and the connection limits hold.
            if five_tuple.transport == Transport::Udp
                && !self.shared.throttle.allow(
                    Bucket::Binding,
                    source_of(five_tuple.client.ip()),
                    now.instant,
                )
            {
                self.counters.count(Reject::BindingThrottled);
                return Action::None;
            }
            return match stun::answer_binding(message, five_tuple.client, discovery, out) {
                stun::Answered::Back => Action::Reply,
                stun::Answered::Via { from, to } => Action::ReplyVia { from, to },
            };
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
            Method::CONNECT,
            Method::CONNECTION_BIND,
        ]
        .contains(&method)
        {
            self.reject(message, Reject::BadRequest, None, five_tuple, now, out);
            return Action::Reply;
        }
        // A client with an allocation proved its key on this 5-tuple, which
        // no attacker can send from: its refreshes never wait out a backoff.
        let username = self.claimed_user(message);
        if let Some(name) = username
            && self.table.id_for(five_tuple).is_none()
            && self.shared.throttle.user_blocked(name, now.instant)
        {
            self.counters.count(Reject::LoginBackoff);
            return Action::None;
        }
        let user = match self.authenticate(now, five_tuple, message) {
            Ok(user) => user,
            Err(reject) => {
                return self.refuse_unauthenticated(reject, message, five_tuple, now, out);
            }
        };
        self.shared.throttle.authenticated(
            source_of(five_tuple.client.ip()),
            (method == Method::ALLOCATE).then_some(user.username.as_str()),
            now.instant,
        );
        // Read per request, never per relayed packet: a ban ends the
        // allocations it finds, so data needs no check.
        if self.shared.bans.is_banned(&user.owner, now.unix) {
            self.refuse_banned(message, &user, five_tuple, now, out);
            return Action::Reply;
        }
        // ConnectionBind comes on a connection of its own, without an allocation.
        if method != Method::ALLOCATE && method != Method::CONNECTION_BIND {
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
            if let Some(previous) = allocation.recent_response(&message.transaction, message.method)
            {
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
            Method::ALLOCATE => self.allocate(&request, sockets, out),
            Method::REFRESH => self.refresh(&request, out),
            Method::CREATE_PERMISSION => self.create_permission(&request, out),
            Method::CHANNEL_BIND => self.channel_bind(&request, out),
            Method::CONNECT => self.connect(&request),
            _ => self.connection_bind(&request, out),
        };
        match result {
            Ok(action) => {
                // A Connect is answered later, when the peer has connected or not.
                if !out.is_empty()
                    && let Some(allocation) = self.table.by_five_tuple(five_tuple)
                {
                    allocation.remember_response(message.transaction, message.method, out);
                }
                action
            }
            Err(reject) => {
                self.reject(message, reject, Some(&user.key), five_tuple, now, out);
                Action::Reply
            }
        }
    }

    /// Answers a request that did not authenticate, unless its source is
    /// past its 401 budget (then nothing is sent, so a flood is not
    /// amplified); wrong passwords count against the user they name.
    fn refuse_unauthenticated<'a>(
        &self,
        reject: Reject,
        message: &Message<'_>,
        five_tuple: &FiveTuple,
        now: Now,
        out: &mut Vec<u8>,
    ) -> Action<'a> {
        let throttle = &self.shared.throttle;
        let source = source_of(five_tuple.client.ip());
        let answered_with_nonce = matches!(reject.error_code(), Some((401 | 438, _)));
        if answered_with_nonce && !throttle.allow(Bucket::Unauthenticated, source, now.instant) {
            self.counters.count(Reject::UnauthenticatedThrottled);
            return Action::None;
        }
        let user = self.claimed_user(message).unwrap_or("");
        if matches!(reject, Reject::WrongPassword | Reject::WrongCredentials)
            && let Some(backoff) = throttle.user_failed(user, now.instant)
        {
            event!(
                info,
                "auth-backoff",
                user = user,
                failures = backoff.failures,
                backoff = format_args!("{}s", backoff.period.as_secs())
            );
        }
        if reject.is_auth_failure()
            && let AuthLog::Write { repeated } = throttle.auth_log(source, now.instant)
        {
            event!(
                info,
                "auth-failed",
                reason = reject.name(),
                client = five_tuple.client,
                user = user,
                repeated = repeated
            );
        }
        self.reject(message, reject, None, five_tuple, now, out);
        Action::Reply
    }

    /// Answers a banned user's request with 403, signed (the user did
    /// authenticate); logged at most once an interval per source.
    fn refuse_banned(
        &self,
        message: &Message<'_>,
        user: &Authenticated,
        five_tuple: &FiveTuple,
        now: Now,
        out: &mut Vec<u8>,
    ) {
        let source = source_of(five_tuple.client.ip());
        if let AuthLog::Write { repeated } = self.shared.throttle.auth_log(source, now.instant) {
            event!(
                info,
                "turn-refused",
                reason = Reject::UserBanned.name(),
                client = five_tuple.client,
                user = user.username,
                repeated = repeated
            );
        }
        self.reject(
            message,
            Reject::UserBanned,
            Some(&user.key),
            five_tuple,
            now,
            out,
        );
    }

    /// The user a request names, by USERNAME or by USERHASH, for backoff
    /// and logs: authentication is what proves it.
    fn claimed_user<'s>(&'s self, message: &Message<'s>) -> Option<&'s str> {
        match message.get(attr::USERNAME) {
            Some(username) => std::str::from_utf8(username).ok(),
            None => self.credentials.user_by_hash(message.get(attr::USERHASH)?),
        }
    }

    fn authenticate(
        &self,
        now: Now,
        five_tuple: &FiveTuple,
        message: &Message<'_>,
    ) -> Result<Authenticated, Reject> {
        // With both, only MESSAGE-INTEGRITY-SHA256 is checked (RFC 8489 §9.2.4).
        let sha256 = message.get(attr::MESSAGE_INTEGRITY_SHA256).is_some();
        if !sha256 && message.get(attr::MESSAGE_INTEGRITY).is_none() {
            return Err(Reject::Challenge);
        }
        let (Some(_realm), Some(nonce)) = (message.get(attr::REALM), message.get(attr::NONCE))
        else {
            return Err(Reject::BadRequest);
        };
        let username = match (message.get(attr::USERNAME), message.get(attr::USERHASH)) {
            (Some(username), _) => {
                Some(std::str::from_utf8(username).map_err(|_| Reject::BadRequest)?)
            }
            (None, Some(hash)) => self.credentials.user_by_hash(hash),
            (None, None) => return Err(Reject::BadRequest),
        };
        self.credentials
            .check_nonce(nonce, five_tuple.client, now.unix)
            .or_else(|stale| {
                // A data connection comes from a new port with the nonce its
                // control connection was given, as coturn's clients send it.
                match self.control_client_of(message) {
                    Some(control) => self.credentials.check_nonce(nonce, control, now.unix),
                    None => Err(stale),
                }
            })?;
        let algorithm = password_algorithm(message)?;
        // Only static users can be found by USERHASH (see CredentialStore).
        let username = username.ok_or(Reject::UnknownUser)?;
        let matches = |key: &LongTermKey| {
            if sha256 {
                message.integrity_sha256_matches(key.as_bytes())
            } else {
                message.integrity_matches(key.as_bytes())
            }
        };
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
            return if allocation.key.algorithm() == algorithm && matches(&allocation.key) {
                Ok(Authenticated {
                    username: username.to_owned(),
                    owner: allocation.owner.clone(),
                    key: allocation.key,
                })
            } else {
                Err(Reject::WrongPassword)
            };
        }
        let keys = self.credentials.keys(username, algorithm, now.unix)?;
        let key = keys
            .iter()
            .find(|key| matches(key))
            .ok_or(Reject::WrongPassword)?;
        Ok(Authenticated {
            username: username.to_owned(),
            owner: keys.owner(username).to_owned(),
            key: *key,
        })
    }

    /// ChannelData from a client: the allocation whose relay socket sends
    /// it, and the peer to send it to; or why it is dropped (counted).
    pub(crate) fn route_channel_data(
        &mut self,
        now: Instant,
        five_tuple: &FiveTuple,
        channel: u16,
        len: usize,
    ) -> Result<(AllocId, SocketAddr), Reject> {
        let gate = Gate::new(&self.limits.bandwidth, &self.shared.bandwidth);
        let route = match self.table.by_five_tuple(five_tuple) {
            Some(allocation) => allocation
                .route_channel(channel, now, len, gate)
                .map(|peer| (allocation.id, peer)),
            None => Err(Reject::NoRoute),
        };
        if let Err(reject) = route {
            self.counters.count(reject);
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
        // One lookup per datagram: the fields are borrowed apart.
        let Self {
            table,
            own_listeners,
            relay_v4,
            relay_v6,
            counters,
            limits,
            shared,
            ..
        } = self;
        let allocation = table.get_mut(id)?;
        let server = allocation.five_tuple.server.ip();
        if is_own_listener(own_listeners, [*relay_v4, *relay_v6], peer, server) {
            counters.count(Reject::PeerRefused);
            return None;
        }
        let gate = Gate::new(&limits.bandwidth, &shared.bandwidth);
        allocation
            .route_from_peer(peer, now, len, gate)
            .map_err(|reject| counters.count(reject))
            .ok()
    }

    pub(crate) fn has_allocation(&self, five_tuple: &FiveTuple) -> bool {
        self.table.id_for(five_tuple).is_some()
    }

    /// Ends the allocation of a closed TCP/TLS connection, freeing its port.
    pub(crate) fn end_connection(&mut self, five_tuple: &FiveTuple, now: Instant) {
        if let Some(id) = self.table.id_for(five_tuple) {
            self.remove(id, "allocation-deleted-with-connection", now);
        }
    }

    /// Ends expired allocations, permissions and channels. Looks only at
    /// allocations with something due (see the table's schedule); returns
    /// how many that was.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> usize {
        self.shared.throttle.sweep(now);
        self.expire_peer_connections(now);
        let mut visited = 0;
        while let Some(id) = self.table.pop_due(now) {
            visited += 1;
            let allocation = self
                .table
                .get_mut(id)
                .expect("the schedule holds live allocations only");
            if allocation.ends() <= now {
                self.remove(id, "allocation-expired", now);
                continue;
            }
            // One relay of a dual-stack allocation has run out, the other not.
            let lapsed = match allocation.second {
                Some(second) if second.expires <= now => Some(second.relayed.is_ipv6()),
                Some(_) if allocation.expires <= now => Some(allocation.relayed.is_ipv6()),
                _ => None,
            };
            if let Some(ipv6) = lapsed {
                self.end_relay(id, ipv6, "relay-expired");
            }
            if let Some(allocation) = self.table.get_mut(id) {
                allocation.expire(now);
            }
            self.table.reschedule(id);
        }
        visited
    }

    pub(super) fn remove(&mut self, id: AllocId, event: &str, now: Instant) {
        let Some(allocation) = self.table.remove(id) else {
            return;
        };
        self.ended.push(id);
        if let Some(connections) = &allocation.tcp_connections {
            self.end_peer_connections(connections);
        }
        self.shared
            .leave(&allocation.owner, Some(allocation.bound.port()));
        if let Some(second) = allocation.second {
            self.shared.ports().release(second.bound.port());
        }
        // A port held for this allocation's sibling goes with it, so that
        // allocating and deleting cannot pile up held ports.
        if let Some((token, _)) = allocation.reservation {
            self.shared.cancel_reservation(token);
        }
        event!(
            info,
            event,
            user = allocation.username,
            client = allocation.five_tuple.client,
            relay = allocation.relays(),
            age = format_args!("{}s", now.duration_since(allocation.created).as_secs()),
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

    /// Ends the relay of family `ipv6` of dual-stack allocation `id`, which
    /// lives on with its other relay and the peers of that one's family.
    pub(super) fn end_relay(&mut self, id: AllocId, ipv6: bool, event: &str) {
        let Some((bound, relayed)) = self.table.end_relay(id, ipv6) else {
            return;
        };
        self.shared.ports().release(bound.port());
        self.ended_relays.push((id, ipv6));
        let Some(allocation) = self.table.get_mut(id) else {
            return;
        };
        allocation.retain_peers(|ip| ip.is_ipv6() != ipv6);
        event!(
            info,
            event,
            user = allocation.username,
            client = allocation.five_tuple.client,
            relay = relayed,
            remaining = allocation.relayed
        );
    }

    /// Writes the error response for `reject` and counts it.
    pub(super) fn reject(
        &self,
        message: &Message<'_>,
        reject: Reject,
        key: Option<&LongTermKey>,
        five_tuple: &FiveTuple,
        now: Now,
        out: &mut Vec<u8>,
    ) {
        // Only an authenticated Allocate is sent on: a sibling takes the
        // same credentials (RFC 8489 §10), and nobody else learns of it.
        let alternate =
            (message.method == Method::ALLOCATE && key.is_some() && reject.is_redirectable())
                .then(|| self.redirect.pick(five_tuple))
                .flatten();
        let reject = if alternate.is_some() {
            Reject::Redirected
        } else {
            reject
        };
        self.counters.count(reject);
        let Some((code, phrase)) = reject.error_code() else {
            return;
        };
        let mut reply = MessageBuilder::reply(out, message, Class::Error);
        reply.add_error(code, phrase);
        if let Some(alternate) = alternate {
            reply.add_address(attr::ALTERNATE_SERVER, alternate.server);
            if let Some(domain) = alternate.domain {
                reply.add(attr::ALTERNATE_DOMAIN, domain.as_bytes());
            }
            // Browsers take this nonce to the sibling and give up on a 438
            // there: one the sibling accepts, where the secret allows.
            if let Some(nonce) = self.credentials.sibling_nonce(five_tuple.client, now.unix) {
                reply
                    .add(attr::REALM, self.credentials.realm().as_bytes())
                    .add(attr::NONCE, nonce.as_bytes());
            }
        }
        if code == 401 || code == 438 {
            reply
                .add(attr::REALM, self.credentials.realm().as_bytes())
                .add(
                    attr::NONCE,
                    self.credentials
                        .nonce(five_tuple.client, now.unix)
                        .as_bytes(),
                )
                .add(attr::PASSWORD_ALGORITHMS, &OFFERED_ALGORITHMS);
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
    pub(crate) fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.table.iter()
    }

    /// Ends every allocation whose username `matches`; returns how many.
    pub(crate) fn end_allocations(
        &mut self,
        matches: impl Fn(&str) -> bool,
        now: Instant,
    ) -> usize {
        let ids: Vec<AllocId> = self
            .table
            .iter()
            .filter(|a| matches(&a.username))
            .map(|a| a.id)
            .collect();
        for &id in &ids {
            self.remove(id, "allocation-ended-by-operator", now);
        }
        ids.len()
    }
}

/// Whether `peer` is one of the UDP `listeners`, as reached at `server` (the
/// address the client reached, for listeners on a wildcard address, where
/// loopback and the relay addresses are this host's too).
fn is_own_listener(
    listeners: &[SocketAddr],
    relays: [Option<RelayEndpoint>; 2],
    peer: SocketAddr,
    server: IpAddr,
) -> bool {
    let is_relay_address = |ip: IpAddr| {
        relays
            .into_iter()
            .flatten()
            .any(|endpoint| endpoint.bind == ip || endpoint.advertise == Some(ip))
    };
    listeners.iter().any(|listener| {
        listener.port() == peer.port()
            && (listener.ip() == peer.ip()
                || (listener.ip().is_unspecified()
                    && listener.is_ipv4() == peer.is_ipv4()
                    && (peer.ip().is_loopback()
                        || peer.ip() == server
                        || is_relay_address(peer.ip()))))
    })
}

/// The UDP listeners with an `other-address`.
fn discovery_of(config: &Config) -> Vec<stun::Discovery> {
    config
        .listen
        .iter()
        .filter(|listen| listen.transport == Transport::Udp)
        .filter_map(|listen| {
            Some(stun::Discovery {
                here: listen.address,
                other: listen.other_address?,
            })
        })
        .collect()
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

/// PASSWORD-ALGORITHMS as every 401 and 438 sends it: SHA-256, then MD5
/// (RFC 8489 §14.11, numbers from §18.5; a client picks the first it
/// supports). Neither takes parameters.
const OFFERED_ALGORITHMS: [u8; 8] = [0, 2, 0, 0, 0, 1, 0, 0];

/// The password algorithm a request chose, once the bid-down checks of
/// RFC 8489 §9.2.4 pass: every nonce we issue carries the cookie, so a
/// request naming algorithms must repeat our list and pick from it. One
/// naming none is MD5, as every client before RFC 8489 uses.
fn password_algorithm(message: &Message<'_>) -> Result<PasswordAlgorithm, Reject> {
    let offered = message.get(attr::PASSWORD_ALGORITHMS);
    let chosen = message.get(attr::PASSWORD_ALGORITHM);
    let (offered, chosen) = match (offered, chosen) {
        (None, None) => return Ok(PasswordAlgorithm::Md5),
        (Some(offered), Some(chosen)) => (offered, chosen),
        _ => return Err(Reject::PasswordAlgorithmMismatch),
    };
    if offered != OFFERED_ALGORITHMS {
        return Err(Reject::PasswordAlgorithmMismatch);
    }
    // Neither algorithm takes parameters, so the value is 4 bytes.
    let &[high, low, 0, 0] = chosen else {
        return Err(Reject::PasswordAlgorithmMismatch);
    };
    match u16::from_be_bytes([high, low]) {
        attr::ALGORITHM_MD5 => Ok(PasswordAlgorithm::Md5),
        attr::ALGORITHM_SHA256 => Ok(PasswordAlgorithm::Sha256),
        _ => Err(Reject::PasswordAlgorithmMismatch),
    }
}

/// The integrity attribute the request was checked with (RFC 8489 §9.2.4:
/// a response carries the same kind), then FINGERPRINT if the request had one.
pub(super) fn finish(reply: &mut MessageBuilder<'_>, request: &Message<'_>, key: &LongTermKey) {
    finish_as(
        reply,
        request.get(attr::MESSAGE_INTEGRITY_SHA256).is_some(),
        request.has_fingerprint(),
        key,
    );
}

/// [`finish`] for a request no longer at hand: SHA-256 or SHA-1
/// integrity, then FINGERPRINT if asked.
pub(super) fn finish_as(
    reply: &mut MessageBuilder<'_>,
    sha256: bool,
    fingerprint: bool,
    key: &LongTermKey,
) {
    if sha256 {
        reply.add_integrity_sha256(key.as_bytes());
    } else {
        reply.add_integrity(key.as_bytes());
    }
    if fingerprint {
        reply.add_fingerprint();
    }
}

/// XOR-PEER-ADDRESS with an IPv4-mapped IPv6 address taken as the IPv4
/// address it is, so permissions, channels and sends all use one form.
pub(super) fn peer_address(message: &Message<'_>, value: &[u8]) -> Option<SocketAddr> {
    let peer = message.xor_address(value)?;
    Some(SocketAddr::new(
        crate::policy::canonical(peer.ip()),
        peer.port(),
    ))
}

pub(super) fn saturating_secs(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}
