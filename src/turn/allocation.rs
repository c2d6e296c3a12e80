//! One allocation: its relay, permissions, channel bindings, lifetimes and
//! counters. The data-plane lookups are plain methods taking `now`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use crate::auth::LongTermKey;
use crate::reject::Reject;
use crate::turn::FiveTuple;
use crate::turn::bandwidth::{Cells, Gate, Way};
use crate::wire::{Method, TransactionId};

/// Identifies an allocation for its lifetime; never reused, so a relay task
/// holding a stale id finds nothing rather than someone else's allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct AllocId(pub(crate) u64);

#[derive(Debug, Clone, Copy)]
struct Channel {
    peer: SocketAddr,
    expires: Instant,
}

/// How many recent responses are kept to answer retransmissions.
const RECENT_RESPONSES: usize = 4;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Traffic {
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
}

impl Traffic {
    pub(crate) fn add(&mut self, len: usize) {
        self.packets += 1;
        self.bytes += len as u64;
    }
}

/// The IPv6 relay of a dual-stack allocation (RFC 8656 §7.2), besides the
/// IPv4 one in [`Allocation::bound`] and [`Allocation::relayed`]. It has
/// its own lifetime: a Refresh may name one family (RFC 8656 §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SecondRelay {
    pub(crate) bound: SocketAddr,
    pub(crate) relayed: SocketAddr,
    pub(crate) expires: Instant,
}

/// An allocation's relayed addresses, displayed comma-separated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Relays(SocketAddr, Option<SocketAddr>);

impl Relays {
    /// Whether one of the relays is of `peer`'s family.
    pub(crate) fn reach(self, peer: SocketAddr) -> bool {
        self.0.is_ipv4() == peer.is_ipv4()
            || self
                .1
                .is_some_and(|second| second.is_ipv4() == peer.is_ipv4())
    }
}

impl std::fmt::Display for Relays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.1 {
            Some(second) => write!(f, "{},{second}", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Allocation {
    pub(crate) id: AllocId,
    pub(crate) five_tuple: FiveTuple,
    pub(crate) username: String,
    /// Whose quotas the allocation counts against: the user, not the REST username.
    pub(crate) owner: String,
    pub(crate) key: LongTermKey,
    /// The address the relay socket is bound to.
    pub(crate) bound: SocketAddr,
    /// The address clients and peers are told (may differ from the bound one behind NAT).
    pub(crate) relayed: SocketAddr,
    /// The IPv6 relay of a dual-stack allocation.
    pub(crate) second: Option<SecondRelay>,
    pub(crate) created: Instant,
    /// When the relay above ends (the whole allocation, unless it has a
    /// second relay). Set through `AllocationTable::set_expires`, which
    /// keeps the expiry timer informed.
    pub(crate) expires: Instant,
    /// The key of this allocation's entry in the table's expiry schedule:
    /// at or before its earliest deadline.
    pub(super) wake_at: Instant,
    /// A port held for a later Allocate with RESERVATION-TOKEN (EVEN-PORT R bit).
    pub(crate) reservation: Option<(u64, u16)>,
    /// A TCP allocation's peer connections, by peer and CONNECTION-ID (RFC
    /// 6062); None for a UDP allocation.
    pub(crate) tcp_connections: Option<Vec<(SocketAddr, u32)>>,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, Channel>,
    channel_by_peer: HashMap<SocketAddr, u16>,
    recent: Vec<(TransactionId, Method, Vec<u8>)>,
    pub(crate) to_peer: Traffic,
    pub(crate) from_peer: Traffic,
    /// This allocation's `max-bps` state, each direction.
    bandwidth: Cells,
    /// Its user's `max-bps-per-user` state, shared with the user's other allocations.
    pub(crate) user_bandwidth: Arc<Cells>,
}

/// What a ChannelBind may do to the existing bindings (RFC 8656 §11.2).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BindCheck {
    Allowed,
    /// The number is bound to another peer, or the peer to another number.
    Conflict,
}

impl Allocation {
    #[expect(clippy::too_many_arguments, reason = "a constructor of plain fields")]
    pub(crate) fn new(
        id: AllocId,
        five_tuple: FiveTuple,
        username: String,
        key: LongTermKey,
        bound: SocketAddr,
        relayed: SocketAddr,
        now: Instant,
        expires: Instant,
    ) -> Self {
        Self {
            id,
            five_tuple,
            owner: username.clone(),
            username,
            key,
            bound,
            relayed,
            second: None,
            created: now,
            expires,
            wake_at: expires,
            reservation: None,
            tcp_connections: None,
            permissions: HashMap::new(),
            channels: HashMap::new(),
            channel_by_peer: HashMap::new(),
            recent: Vec::with_capacity(RECENT_RESPONSES),
            to_peer: Traffic::default(),
            from_peer: Traffic::default(),
            bandwidth: Cells::default(),
            user_bandwidth: Arc::default(),
        }
    }

    /// Every relayed address, the first relay's first.
    pub(crate) fn relayed_addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        std::iter::once(self.relayed).chain(self.second.map(|second| second.relayed))
    }

    /// The relayed addresses for logs and listings: one, or IPv4 and IPv6
    /// separated by a comma.
    pub(crate) fn relays(&self) -> Relays {
        Relays(self.relayed, self.second.map(|second| second.relayed))
    }

    /// When the allocation ends: when its last relay does.
    pub(crate) fn ends(&self) -> Instant {
        self.second
            .map_or(self.expires, |second| second.expires.max(self.expires))
    }

    pub(crate) fn permit(&mut self, peer: IpAddr, until: Instant) {
        self.permissions.insert(peer, until);
    }

    /// Whether permitting `peers` (distinct) keeps this allocation within
    /// `max` permissions, lapsed ones forgotten first when it would not.
    /// Refreshing only permissions it holds always fits.
    pub(crate) fn has_room_for_permissions(
        &mut self,
        peers: &[IpAddr],
        max: usize,
        now: Instant,
    ) -> bool {
        let fits = |a: &Self| {
            let new = peers
                .iter()
                .filter(|peer| !a.permissions.contains_key(peer))
                .count();
            new == 0 || a.permissions.len() + new <= max
        };
        fits(self) || {
            self.expire(now);
            fits(self)
        }
    }

    /// Whether binding `channel` to `peer` keeps this allocation within
    /// `max` channels, lapsed ones forgotten first when it would not.
    /// Rebinding a bound channel or peer always fits (it replaces one).
    pub(crate) fn has_room_for_channel(
        &mut self,
        channel: u16,
        peer: SocketAddr,
        max: usize,
        now: Instant,
    ) -> bool {
        let fits = |a: &Self| {
            a.channels.contains_key(&channel)
                || a.channel_by_peer.contains_key(&peer)
                || a.channels.len() < max
        };
        fits(self) || {
            self.expire(now);
            fits(self)
        }
    }

    pub(crate) fn permits(&self, peer: IpAddr, now: Instant) -> bool {
        self.permissions
            .get(&peer)
            .is_some_and(|&until| until > now)
    }

    pub(crate) fn check_bind(&self, channel: u16, peer: SocketAddr, now: Instant) -> BindCheck {
        let number_taken = self
            .channels
            .get(&channel)
            .is_some_and(|c| c.peer != peer && c.expires > now);
        let peer_taken = self.channel_by_peer.get(&peer).is_some_and(|&n| {
            n != channel && self.channels.get(&n).is_some_and(|c| c.expires > now)
        });
        if number_taken || peer_taken {
            BindCheck::Conflict
        } else {
            BindCheck::Allowed
        }
    }

    /// Binds (or refreshes) `channel` to `peer`; call `check_bind` first.
    pub(crate) fn bind(&mut self, channel: u16, peer: SocketAddr, until: Instant) {
        let binding = Channel {
            peer,
            expires: until,
        };
        if let Some(old) = self.channels.insert(channel, binding)
            && old.peer != peer
        {
            self.channel_by_peer.remove(&old.peer);
        }
        if let Some(old_number) = self.channel_by_peer.insert(peer, channel)
            && old_number != channel
        {
            self.channels.remove(&old_number);
        }
    }

    /// Counts `len` bytes going `way` if the bandwidth caps let them through.
    pub(crate) fn pass(
        &mut self,
        gate: Gate<'_>,
        way: Way,
        now: Instant,
        len: usize,
    ) -> Result<(), Reject> {
        gate.admit(&self.bandwidth, &self.user_bandwidth, way, now, len)?;
        match way {
            Way::ToPeer => self.to_peer.add(len),
            Way::FromPeer => self.from_peer.add(len),
        }
        Ok(())
    }

    /// The peer a client's ChannelData goes to, when bound, permitted and
    /// within the bandwidth caps; counts it.
    pub(crate) fn route_channel(
        &mut self,
        channel: u16,
        now: Instant,
        len: usize,
        gate: Gate<'_>,
    ) -> Result<SocketAddr, Reject> {
        let bound = self
            .channels
            .get(&channel)
            .filter(|c| c.expires > now)
            .ok_or(Reject::NoRoute)?;
        let peer = bound.peer;
        if !self.permits(peer.ip(), now) {
            return Err(Reject::NoRoute);
        }
        self.pass(gate, Way::ToPeer, now, len)?;
        Ok(peer)
    }

    /// Whether a Send indication to `peer` may go out; counts it.
    pub(crate) fn route_send(
        &mut self,
        peer: SocketAddr,
        now: Instant,
        len: usize,
        gate: Gate<'_>,
    ) -> Result<(), Reject> {
        if !self.permits(peer.ip(), now) {
            return Err(Reject::NoRoute);
        }
        self.pass(gate, Way::ToPeer, now, len)
    }

    /// For data from `peer`: the channel to frame it with, if one is
    /// bound; refused without a permission or over a cap. Counts it.
    pub(crate) fn route_from_peer(
        &mut self,
        peer: SocketAddr,
        now: Instant,
        len: usize,
        gate: Gate<'_>,
    ) -> Result<Option<u16>, Reject> {
        if !self.permits(peer.ip(), now) {
            return Err(Reject::NoRoute);
        }
        self.pass(gate, Way::FromPeer, now, len)?;
        let channel = self
            .channel_by_peer
            .get(&peer)
            .copied()
            .filter(|n| self.channels.get(n).is_some_and(|c| c.expires > now));
        Ok(channel)
    }

    /// Forgets expired permissions and channels.
    pub(crate) fn expire(&mut self, now: Instant) {
        self.permissions.retain(|_, until| *until > now);
        let before = self.channels.len();
        self.channels.retain(|_, c| c.expires > now);
        if self.channels.len() != before {
            let channels = &self.channels;
            self.channel_by_peer.retain(|_, n| channels.contains_key(n));
        }
    }

    /// Drops the permissions and channels of peers `allowed` now refuses;
    /// returns how many of each went.
    pub(crate) fn retain_peers(&mut self, allowed: impl Fn(IpAddr) -> bool) -> (usize, usize) {
        let (permissions, channels) = (self.permissions.len(), self.channels.len());
        self.permissions.retain(|&ip, _| allowed(ip));
        self.channels
            .retain(|_, channel| allowed(channel.peer.ip()));
        let kept = &self.channels;
        self.channel_by_peer.retain(|_, n| kept.contains_key(n));
        (
            permissions - self.permissions.len(),
            channels - self.channels.len(),
        )
    }

    /// The earliest moment a permission or channel of this allocation lapses.
    pub(crate) fn next_expiry(&self) -> Instant {
        let permission = self.permissions.values().copied().min();
        let channel = self.channels.values().map(|c| c.expires).min();
        let second = self.second.map(|second| second.expires);
        [Some(self.expires), second, permission, channel]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.expires)
    }

    /// The response already sent for this transaction and method, if the
    /// request is a retransmission (a reused id with another method is not).
    pub(crate) fn recent_response(
        &self,
        transaction: &TransactionId,
        method: Method,
    ) -> Option<&[u8]> {
        self.recent
            .iter()
            .find(|(id, of, _)| id == transaction && *of == method)
            .map(|(_, _, bytes)| bytes.as_slice())
    }

    pub(crate) fn remember_response(
        &mut self,
        transaction: TransactionId,
        method: Method,
        response: &[u8],
    ) {
        if self.recent.len() == RECENT_RESPONSES {
            self.recent.remove(0);
        }
        self.recent.push((transaction, method, response.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{BandwidthCaps, ByteRate};
    use crate::turn::bandwidth::NodeBandwidth;

    const UNLIMITED: BandwidthCaps = BandwidthCaps {
        allocation: ByteRate::UNLIMITED,
        user: ByteRate::UNLIMITED,
        node: ByteRate::UNLIMITED,
    };

    fn allocation(now: Instant) -> Allocation {
        let five_tuple = FiveTuple {
            client: "192.0.2.1:1000".parse().unwrap(),
            server: "192.0.2.2:3478".parse().unwrap(),
            transport: crate::config::Transport::Udp,
        };
        Allocation::new(
            AllocId(1),
            five_tuple,
            "alice".into(),
            LongTermKey::Md5([0; 16]),
            "192.0.2.2:50000".parse().unwrap(),
            "192.0.2.2:50000".parse().unwrap(),
            now,
            now + Duration::from_secs(600),
        )
    }

    #[test]
    fn channel_routes_only_while_bound_and_permitted() {
        let now = Instant::now();
        let node = NodeBandwidth::new(now);
        let gate = Gate::new(&UNLIMITED, &node);
        let mut a = allocation(now);
        let peer: SocketAddr = "198.51.100.1:7000".parse().unwrap();
        assert_eq!(a.route_channel(0x4000, now, 10, gate), Err(Reject::NoRoute));
        a.bind(0x4000, peer, now + Duration::from_secs(600));
        assert_eq!(
            a.route_channel(0x4000, now, 10, gate),
            Err(Reject::NoRoute),
            "no permission yet"
        );
        a.permit(peer.ip(), now + Duration::from_secs(300));
        assert_eq!(a.route_channel(0x4000, now, 10, gate), Ok(peer));
        assert_eq!(a.route_from_peer(peer, now, 5, gate), Ok(Some(0x4000)));
        let later = now + Duration::from_secs(301);
        assert_eq!(
            a.route_channel(0x4000, later, 10, gate),
            Err(Reject::NoRoute),
            "permission lapsed"
        );
        assert_eq!(
            a.to_peer,
            Traffic {
                packets: 1,
                bytes: 10
            }
        );
        assert_eq!(
            a.from_peer,
            Traffic {
                packets: 1,
                bytes: 5
            }
        );
    }

    #[test]
    fn rebinding_rules() {
        let now = Instant::now();
        let mut a = allocation(now);
        let until = now + Duration::from_secs(600);
        let p1: SocketAddr = "198.51.100.1:7000".parse().unwrap();
        let p2: SocketAddr = "198.51.100.2:7000".parse().unwrap();
        a.bind(0x4000, p1, until);
        assert_eq!(a.check_bind(0x4000, p1, now), BindCheck::Allowed, "refresh");
        assert_eq!(
            a.check_bind(0x4000, p2, now),
            BindCheck::Conflict,
            "number taken"
        );
        assert_eq!(
            a.check_bind(0x4001, p1, now),
            BindCheck::Conflict,
            "peer taken"
        );
        assert_eq!(a.check_bind(0x4001, p2, now), BindCheck::Allowed);
        let later = now + Duration::from_secs(601);
        assert_eq!(
            a.check_bind(0x4000, p2, later),
            BindCheck::Allowed,
            "expired binding"
        );
        a.expire(later);
        let node = NodeBandwidth::new(now);
        assert_eq!(
            a.route_from_peer(p1, later, 1, Gate::new(&UNLIMITED, &node)),
            Err(Reject::NoRoute)
        );
    }
}
