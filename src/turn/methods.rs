//! The TURN methods (RFC 8656): Allocate, Refresh, CreatePermission,
//! ChannelBind, and the Send indication, each on an authenticated request.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use super::core::{
    Action, Core, Now, RESERVATION_LIFETIME, RelayEndpoint, Request, finish, peer_address,
    saturating_secs,
};
use crate::logging::event;
use crate::reject::Reject;
use crate::turn::allocation::{AllocId, Allocation, BindCheck, Relays, SecondRelay};
use crate::turn::bandwidth::{Cells, Gate};
use crate::turn::{FiveTuple, RelaySockets};
use crate::wire::{Class, Message, MessageBuilder, Method, attr};

/// Tries before giving up when ports of the range are taken by other programs.
const BIND_ATTEMPTS: usize = 8;

/// What an Allocate asked for, read before the quotas let it in.
struct Admitted<'m> {
    token: Option<u64>,
    family: Option<&'m [u8]>,
    even_port: Option<&'m [u8]>,
    dont_fragment: bool,
    /// ADDITIONAL-ADDRESS-FAMILY (IPv6) was asked besides IPv4.
    dual: bool,
    /// REQUESTED-TRANSPORT is TCP (RFC 6062).
    tcp: bool,
    /// The user's bandwidth state, which the new allocation shares.
    user_bandwidth: Arc<Cells>,
}

/// Which port an Allocate asks for: one reserved earlier by RESERVATION-TOKEN,
/// an even one (EVEN-PORT), and whether to hold the next one (its R bit).
#[derive(Clone, Copy)]
struct RelayPort {
    reserved: Option<u16>,
    even: bool,
    reserve_next: bool,
    /// A listening TCP socket (RFC 6062) instead of a UDP one.
    tcp: bool,
}

/// Whether EVEN-PORT asks to hold the next port too (its R bit).
fn reserves_next(even_port: Option<&[u8]>) -> bool {
    even_port.is_some_and(|v| v.first().is_some_and(|b| b & 0x80 != 0))
}

/// The address a relay on `endpoint` is advertised as: the configured
/// external address, else the bound one, else (bound to a wildcard) the
/// address the client reached when it is of the relay's family.
fn advertise_ip(endpoint: RelayEndpoint, five_tuple: &FiveTuple) -> Option<IpAddr> {
    endpoint
        .advertise
        .or_else(|| (!endpoint.bind.is_unspecified()).then_some(endpoint.bind))
        .or_else(|| {
            let local = five_tuple.server.ip();
            (local.is_ipv4() == endpoint.bind.is_ipv4() && !local.is_unspecified()).then_some(local)
        })
}

impl Core {
    pub(super) fn allocate<'a>(
        &mut self,
        request: &Request<'_, 'a>,
        sockets: &mut impl RelaySockets,
        out: &mut Vec<u8>,
    ) -> Result<Action<'a>, Reject> {
        let Request {
            five_tuple,
            message,
            user,
            ..
        } = *request;
        if let Some(existing) = self.table.by_five_tuple(five_tuple) {
            return match existing.recent_response(&message.transaction, message.method) {
                Some(previous) => {
                    out.clear();
                    out.extend_from_slice(previous);
                    Ok(Action::Reply)
                }
                None => Err(Reject::AllocationMismatch),
            };
        }
        if self.shared.is_draining() {
            return Err(Reject::Draining);
        }
        let transport = message
            .get(attr::REQUESTED_TRANSPORT)
            .ok_or(Reject::BadRequest)?;
        if transport.len() != 4 {
            return Err(Reject::BadRequest);
        }
        let tcp = match transport[0] {
            attr::TRANSPORT_UDP => false,
            attr::TRANSPORT_TCP => true,
            _ => return Err(Reject::UnsupportedTransport),
        };
        let even_port = message.get(attr::EVEN_PORT);
        let token = message.get(attr::RESERVATION_TOKEN);
        let family = message.get(attr::REQUESTED_ADDRESS_FAMILY);
        let additional = message.get(attr::ADDITIONAL_ADDRESS_FAMILY);
        // RFC 6062 §5.1: a TCP relay is asked for over TCP or TLS, and the
        // attributes about UDP ports and datagrams make no sense for it.
        if tcp
            && (five_tuple.transport == crate::config::Transport::Udp
                || even_port.is_some()
                || token.is_some()
                || additional.is_some()
                || message.get(attr::DONT_FRAGMENT).is_some())
        {
            return Err(Reject::RelayTransportMismatch);
        }
        if token.is_some() && (even_port.is_some() || family.is_some() || additional.is_some()) {
            return Err(Reject::BadRequest);
        }
        // RFC 8656 §7.2: one family asked for two ways, or IPv4 as the
        // additional one (only IPv6 may be).
        if additional.is_some()
            && (family.is_some() || additional != Some(&[attr::FAMILY_IPV6, 0, 0, 0][..]))
        {
            return Err(Reject::BadRequest);
        }
        // §7.2 step 8: a port held for a sibling and a dual-stack allocation
        // do not go together.
        if reserves_next(even_port) && additional.is_some() {
            return Err(Reject::BadRequest);
        }
        let dont_fragment = message.get(attr::DONT_FRAGMENT).is_some();
        let token = match token {
            Some(token) => Some(u64::from_be_bytes(
                token.try_into().map_err(|_| Reject::BadRequest)?,
            )),
            None => None,
        };
        if self
            .shared
            .bandwidth
            .at_capacity(&self.limits.bandwidth, request.now.instant)
        {
            return Err(Reject::AtCapacity);
        }
        let user_bandwidth = self.shared.admit(
            &user.owner,
            self.limits.max_allocations_per_user,
            self.limits.max_allocations,
        )?;
        let admitted = Admitted {
            token,
            family,
            even_port,
            dont_fragment,
            dual: additional.is_some(),
            tcp,
            user_bandwidth,
        };
        let result = self.allocate_admitted(request, admitted, sockets, out);
        if result.is_err() {
            self.shared.leave(&user.owner, None);
        }
        result
    }

    /// The rest of an Allocate once the quotas let it in; an error here
    /// has given back every port it took.
    fn allocate_admitted<'a>(
        &mut self,
        request: &Request<'_, 'a>,
        admitted: Admitted<'_>,
        sockets: &mut impl RelaySockets,
        out: &mut Vec<u8>,
    ) -> Result<Action<'a>, Reject> {
        let Request {
            now,
            five_tuple,
            message,
            user,
        } = *request;
        let Admitted {
            token,
            family,
            even_port,
            dont_fragment,
            dual,
            tcp,
            user_bandwidth,
        } = admitted;
        let (endpoint, reserved_port) = match token {
            Some(token) => {
                let reservation = self
                    .shared
                    .take_reservation(token)
                    .ok_or(Reject::NoRelayPort)?;
                let (port, bind) = (reservation.port, reservation.bind);
                let endpoint = if bind.is_ipv4() {
                    self.relay_v4
                } else {
                    self.relay_v6
                };
                let Some(endpoint) = endpoint else {
                    self.shared.ports().release(port);
                    return Err(Reject::AddressFamilyNotSupported);
                };
                (endpoint, Some(port))
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
        let advertise_ip =
            advertise_ip(endpoint, five_tuple).ok_or(Reject::AddressFamilyNotSupported);
        let advertise_ip = match advertise_ip {
            Ok(ip) => ip,
            Err(reject) => {
                if let Some(port) = reserved_port {
                    self.shared.ports().release(port);
                }
                return Err(reject);
            }
        };

        let reserve_next = reserves_next(even_port);
        let id = self.table.next_id();
        let bound_port = self.open_relay(
            sockets,
            id,
            endpoint.bind,
            RelayPort {
                reserved: reserved_port,
                even: even_port.is_some(),
                reserve_next,
                tcp,
            },
            dont_fragment,
        )?;
        let relayed = SocketAddr::new(advertise_ip, bound_port);
        if self.table.by_relayed(relayed).is_some() {
            // Two bind addresses advertised as one external address: refuse
            // rather than deliver one client's peers to another.
            log::warn!("relayed address {relayed} is already in use");
            self.shared.ports().release(bound_port);
            self.ended.push(id);
            return Err(Reject::ServerError);
        }

        let lifetime = self
            .limits
            .desired_lifetime(message.get(attr::LIFETIME).and_then(attr::u32_value));
        let second = if dual {
            self.open_second_relay(
                sockets,
                id,
                five_tuple,
                dont_fragment,
                now.instant + lifetime,
            )
            .map(Some)
        } else {
            Ok(None)
        };

        let mut allocation = Allocation::new(
            id,
            *five_tuple,
            user.username.clone(),
            user.key,
            SocketAddr::new(endpoint.bind, bound_port),
            relayed,
            now.instant,
            now.instant + lifetime,
        );
        allocation.owner.clone_from(&user.owner);
        if tcp {
            allocation.tcp_connections = Some(Vec::new());
        }
        allocation.user_bandwidth = user_bandwidth;
        allocation.second = second.ok().flatten();

        let mut reply = MessageBuilder::reply(out, message, Class::Success);
        // RFC 8656 §7.2: the IPv4 relay first, then the IPv6 one of a
        // dual-stack allocation, or ADDRESS-ERROR-CODE saying why not.
        reply.add_xor_address(attr::XOR_RELAYED_ADDRESS, relayed);
        match second {
            Ok(Some(second)) => {
                reply.add_xor_address(attr::XOR_RELAYED_ADDRESS, second.relayed);
            }
            Ok(None) => {}
            Err(reject) => {
                let (code, phrase) = reject.error_code().expect("a relay refusal has a code");
                reply.add_address_error(attr::FAMILY_IPV6, code, phrase);
            }
        }
        reply
            .add_u32(attr::LIFETIME, saturating_secs(lifetime))
            .add_xor_address(attr::XOR_MAPPED_ADDRESS, five_tuple.client);
        if reserve_next {
            let expires = now.instant + RESERVATION_LIFETIME;
            let token = self.shared.reserve(bound_port + 1, endpoint.bind, expires);
            allocation.reservation = Some((token, bound_port + 1));
            reply.add(attr::RESERVATION_TOKEN, &token.to_be_bytes());
        }
        finish(&mut reply, message, &user.key);

        event!(
            info,
            "allocation-created",
            user = user.username,
            client = five_tuple.client,
            relay = allocation.relays(),
            lifetime = format_args!("{}s", lifetime.as_secs())
        );
        self.table.insert(allocation);
        Ok(Action::ReplyAndStartRelay(id))
    }

    /// Binds the IPv6 relay of dual-stack allocation `id`, which has its
    /// IPv4 one. The error says why not, for ADDRESS-ERROR-CODE (RFC 8656
    /// §7.2, §18.12): 440 with no IPv6 relay address, 508 with no port left.
    fn open_second_relay(
        &mut self,
        sockets: &mut impl RelaySockets,
        id: AllocId,
        five_tuple: &FiveTuple,
        dont_fragment: bool,
        expires: Instant,
    ) -> Result<SecondRelay, Reject> {
        let endpoint = self.relay_v6.ok_or(Reject::AddressFamilyNotSupported)?;
        let advertise_ip =
            advertise_ip(endpoint, five_tuple).ok_or(Reject::AddressFamilyNotSupported)?;
        let any_port = RelayPort {
            reserved: None,
            even: false,
            reserve_next: false,
            tcp: false,
        };
        let port = self
            .open_relay(sockets, id, endpoint.bind, any_port, dont_fragment)
            .map_err(|reject| match reject {
                Reject::NoRelayPort => reject,
                _ => Reject::AddressFamilyNotSupported,
            })?;
        let relayed = SocketAddr::new(advertise_ip, port);
        if self.table.by_relayed(relayed).is_some() {
            log::warn!("relayed address {relayed} is already in use");
            self.shared.ports().release(port);
            self.ended_relays.push((id, true));
            return Err(Reject::AddressFamilyNotSupported);
        }
        Ok(SecondRelay {
            bound: SocketAddr::new(endpoint.bind, port),
            relayed,
            expires,
        })
    }

    /// Binds a relay socket for allocation `id` on a port from the pool,
    /// retrying ports that another program holds; returns the port.
    fn open_relay(
        &mut self,
        sockets: &mut impl RelaySockets,
        id: AllocId,
        bind_ip: IpAddr,
        port: RelayPort,
        dont_fragment: bool,
    ) -> Result<u16, Reject> {
        let RelayPort {
            reserved,
            even,
            reserve_next,
            tcp,
        } = port;
        let attempts = if reserved.is_some() { 1 } else { BIND_ATTEMPTS };
        let mut busy = Vec::new();
        let mut outcome = Err(Reject::NoRelayPort);
        for _ in 0..attempts {
            let port = match reserved {
                Some(port) => port,
                None if even => match self.shared.ports().take_even(reserve_next) {
                    Some(port) => port,
                    None => break,
                },
                None => match self.shared.ports().take_any() {
                    Some(port) => port,
                    None => break,
                },
            };
            let address = SocketAddr::new(bind_ip, port);
            let opened = if tcp {
                sockets.open_tcp(id, address)
            } else {
                sockets.open(id, address, dont_fragment)
            };
            match opened {
                Ok(()) => {
                    outcome = Ok(port);
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
                    self.shared.ports().release(port);
                    outcome = Err(Reject::ServerError);
                    break;
                }
            }
        }
        // Ports other programs hold go back to the pool: they may be free later.
        let mut ports = self.shared.ports();
        for port in busy {
            ports.release(port);
        }
        outcome
    }

    pub(super) fn refresh<'a>(
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
        let id = self
            .table
            .id_for(five_tuple)
            .ok_or(Reject::AllocationMismatch)?;
        let allocation = self.table.get(id).ok_or(Reject::AllocationMismatch)?;
        // RFC 8656 §8: REQUESTED-ADDRESS-FAMILY names the relay a Refresh is
        // for, and a family the allocation has no relay of is a mismatch;
        // without it a Refresh is for every relay. On an allocation with one
        // relay, that relay is the whole allocation.
        let only = match message.get(attr::REQUESTED_ADDRESS_FAMILY) {
            None => None,
            Some(family) => {
                let ipv6 = match family.first() {
                    Some(&attr::FAMILY_IPV4) => false,
                    Some(&attr::FAMILY_IPV6) => true,
                    _ => return Err(Reject::PeerAddressFamilyMismatch),
                };
                if !allocation.relayed_addresses().any(|a| a.is_ipv6() == ipv6) {
                    return Err(Reject::PeerAddressFamilyMismatch);
                }
                Some(ipv6).filter(|_| allocation.second.is_some())
            }
        };
        let first_is_ipv6 = allocation.relayed.is_ipv6();
        let asked = message.get(attr::LIFETIME).and_then(attr::u32_value);
        if asked == Some(0) {
            match only {
                Some(ipv6) => self.end_relay(id, ipv6, "relay-deleted"),
                None => self.remove(id, "allocation-deleted", now.instant),
            }
            let mut reply = MessageBuilder::reply(out, message, Class::Success);
            reply.add_u32(attr::LIFETIME, 0);
            finish(&mut reply, message, &user.key);
            return Ok(Action::Reply);
        }
        let lifetime = self.limits.desired_lifetime(asked);
        let expires = now.instant + lifetime;
        match only {
            None => {
                self.table.set_expires(id, expires);
                self.table.set_second_expires(id, expires);
            }
            Some(ipv6) if ipv6 == first_is_ipv6 => self.table.set_expires(id, expires),
            Some(_) => self.table.set_second_expires(id, expires),
        }
        let allocation = self.table.get(id).ok_or(Reject::AllocationMismatch)?;
        event!(
            info,
            "allocation-refreshed",
            user = allocation.username,
            relay = allocation.relays(),
            lifetime = format_args!("{}s", lifetime.as_secs())
        );
        let mut reply = MessageBuilder::reply(out, message, Class::Success);
        reply.add_u32(attr::LIFETIME, saturating_secs(lifetime));
        finish(&mut reply, message, &user.key);
        Ok(Action::Reply)
    }

    /// Checks a peer address for a permission or channel: family (one of
    /// the allocation's relays must be of the peer's), then icegate's own
    /// listeners, then policy.
    pub(super) fn check_peer(
        &self,
        five_tuple: &FiveTuple,
        relays: Relays,
        peer: SocketAddr,
    ) -> Result<(), Reject> {
        if !relays.reach(peer) {
            return Err(Reject::PeerAddressFamilyMismatch);
        }
        let why = if self.is_own_listener(peer, five_tuple.server.ip()) {
            "an icegate listener".to_owned()
        } else {
            match self.policy.check(peer.ip()) {
                Ok(()) => return Ok(()),
                Err(refused) => refused.to_string(),
            }
        };
        event!(
            info,
            "peer-refused",
            client = five_tuple.client,
            peer = peer,
            why = why
        );
        Err(Reject::PeerRefused)
    }

    pub(super) fn create_permission<'a>(
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
        let relays = self.relays_of(five_tuple)?;
        let mut peers = Vec::new();
        for value in message.all(attr::XOR_PEER_ADDRESS) {
            let peer = peer_address(message, value).ok_or(Reject::BadRequest)?;
            self.check_peer(five_tuple, relays, peer)?;
            peers.push(peer.ip());
        }
        if peers.is_empty() {
            return Err(Reject::BadRequest);
        }
        peers.sort_unstable();
        peers.dedup();
        let until = now.instant + self.limits.permission_lifetime;
        let allocation = self
            .table
            .by_five_tuple(five_tuple)
            .ok_or(Reject::AllocationMismatch)?;
        // All or nothing: a request that would pass the cap adds no peer.
        let max = self.limits.max_permissions_per_allocation;
        if !allocation.has_room_for_permissions(&peers, max, now.instant) {
            return Err(Reject::PermissionQuotaReached);
        }
        for peer in peers {
            allocation.permit(peer, until);
        }
        let id = allocation.id;
        self.table.wake_by(id, until);
        let mut reply = MessageBuilder::reply(out, message, Class::Success);
        finish(&mut reply, message, &user.key);
        Ok(Action::Reply)
    }

    pub(super) fn channel_bind<'a>(
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
        let relays = self.relays_of(five_tuple)?;
        if self
            .table
            .by_five_tuple(five_tuple)
            .is_some_and(|allocation| allocation.tcp_connections.is_some())
        {
            return Err(Reject::RelayTransportMismatch);
        }
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
        self.check_peer(five_tuple, relays, peer)?;
        let channel_until = now.instant + self.limits.channel_lifetime;
        let permission_until = now.instant + self.limits.permission_lifetime;
        let allocation = self
            .table
            .by_five_tuple(five_tuple)
            .ok_or(Reject::AllocationMismatch)?;
        if allocation.check_bind(channel, peer, now.instant) == BindCheck::Conflict {
            return Err(Reject::BadRequest);
        }
        let limits = &self.limits;
        if !allocation.has_room_for_channel(
            channel,
            peer,
            limits.max_channels_per_allocation,
            now.instant,
        ) {
            return Err(Reject::ChannelQuotaReached);
        }
        // The binding installs a permission too, which the permission cap covers.
        if !allocation.has_room_for_permissions(
            &[peer.ip()],
            limits.max_permissions_per_allocation,
            now.instant,
        ) {
            return Err(Reject::PermissionQuotaReached);
        }
        allocation.bind(channel, peer, channel_until);
        allocation.permit(peer.ip(), permission_until);
        let id = allocation.id;
        self.table.wake_by(id, channel_until.min(permission_until));
        let mut reply = MessageBuilder::reply(out, message, Class::Success);
        finish(&mut reply, message, &user.key);
        Ok(Action::Reply)
    }

    fn relays_of(&mut self, five_tuple: &FiveTuple) -> Result<Relays, Reject> {
        self.table
            .by_five_tuple(five_tuple)
            .map(|a| a.relays())
            .ok_or(Reject::AllocationMismatch)
    }

    pub(super) fn handle_indication<'a>(
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
        if self.is_own_listener(peer, five_tuple.server.ip()) {
            self.counters.count(Reject::PeerRefused);
            return Action::None;
        }
        let Some(allocation) = self
            .table
            .by_five_tuple(five_tuple)
            .filter(|allocation| allocation.tcp_connections.is_none())
        else {
            self.counters.count(Reject::NoRoute);
            return Action::None;
        };
        let gate = Gate::new(&self.limits.bandwidth, &self.shared.bandwidth);
        if let Err(reject) = allocation.route_send(peer, now.instant, data.len(), gate) {
            self.counters.count(reject);
            return Action::None;
        }
        Action::ToPeer {
            relay: allocation.id,
            peer,
            data,
        }
    }
}
