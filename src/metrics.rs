//! Metrics as counters: events are counted where they happen with one
//! atomic add each (no lock and no allocation, on the relay path too). The
//! admin listener's scrape (`admin::scrape`) reads them beside the live
//! state and encodes them. No label carries a user name: REST usernames
//! would grow the label set without bound.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::config::Transport;
use crate::reject::Reject;

/// The transports TURN runs over, as metric labels.
pub(crate) const TURN_TRANSPORTS: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

pub(crate) fn turn_transport_index(transport: Transport) -> Option<usize> {
    TURN_TRANSPORTS.iter().position(|&t| t == transport)
}

/// Which way relayed data went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    ToPeer,
    FromPeer,
}

/// How relayed data was framed between client and server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    ChannelData,
    /// A Send indication (to a peer) or a Data indication (from a peer).
    Indication,
    /// Bytes on a TCP allocation's data connection (RFC 6062): one read each.
    TcpData,
}

pub(crate) const DIRECTIONS: [(Direction, &str); 2] = [
    (Direction::ToPeer, "to_peer"),
    (Direction::FromPeer, "from_peer"),
];
pub(crate) const FRAMINGS: [(Framing, &str); 3] = [
    (Framing::ChannelData, "channel_data"),
    (Framing::Indication, "indication"),
    (Framing::TcpData, "tcp"),
];

pub(crate) fn relay_index(direction: Direction, framing: Framing) -> usize {
    let d = match direction {
        Direction::ToPeer => 0,
        Direction::FromPeer => 1,
    };
    let f = match framing {
        Framing::ChannelData => 0,
        Framing::Indication => 1,
        Framing::TcpData => 2,
    };
    d * FRAMINGS.len() + f
}

/// The signaling protocols, as the `protocol` label names them: icegate's
/// own, and the libraries' whose servers it stands in for.
pub(crate) const SIGNAL_PROTOCOLS: [&str; 3] = ["native", "y-webrtc", "peerjs"];

/// A signaling message a client sent, by type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SignalMessage {
    Join,
    Leave,
    Signal,
    Broadcast,
    Ping,
    /// Not JSON, an unknown type, a missing field, or a binary frame.
    Invalid,
}

impl SignalMessage {
    pub(crate) const ALL: [Self; 6] = [
        Self::Join,
        Self::Leave,
        Self::Signal,
        Self::Broadcast,
        Self::Ping,
        Self::Invalid,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Leave => "leave",
            Self::Signal => "signal",
            Self::Broadcast => "broadcast",
            Self::Ping => "ping",
            Self::Invalid => "invalid",
        }
    }
}

/// What became of a signal held for a peer on its way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SignalHeld {
    Held,
    Delivered,
    Expired,
}

impl SignalHeld {
    pub(crate) const ALL: [Self; 3] = [Self::Held, Self::Delivered, Self::Expired];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Delivered => "delivered",
            Self::Expired => "expired",
        }
    }
}

/// A configured limit that refused something, named by its config key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    MaxConnections,
    MaxConnectionsPerIp,
    SignalMaxConnections,
    SignalMaxConnectionsPerIp,
    SignalMaxRoomsPerConnection,
    SignalMaxPeersPerRoom,
    SignalMaxMessageBytes,
    SignalMessagesPerSecond,
    SignalMaxHeldPerRoom,
    SignalMaxHeldBytesPerRoom,
    SignalMaxHeldPerSender,
    SignalMaxHeldBytesPerSender,
    SignalPeerjsMaxPeers,
    AdminMaxBans,
    ClusterMaxBacklog,
}

impl Limit {
    pub(crate) const ALL: [Self; 15] = [
        Self::MaxConnections,
        Self::MaxConnectionsPerIp,
        Self::SignalMaxConnections,
        Self::SignalMaxConnectionsPerIp,
        Self::SignalMaxRoomsPerConnection,
        Self::SignalMaxPeersPerRoom,
        Self::SignalMaxMessageBytes,
        Self::SignalMessagesPerSecond,
        Self::SignalMaxHeldPerRoom,
        Self::SignalMaxHeldBytesPerRoom,
        Self::SignalMaxHeldPerSender,
        Self::SignalMaxHeldBytesPerSender,
        Self::SignalPeerjsMaxPeers,
        Self::AdminMaxBans,
        Self::ClusterMaxBacklog,
    ];

    pub(crate) fn key(self) -> &'static str {
        match self {
            Self::MaxConnections => "connections.max-connections",
            Self::MaxConnectionsPerIp => "connections.max-connections-per-ip",
            Self::SignalMaxConnections => "signal.max-connections",
            Self::SignalMaxConnectionsPerIp => "signal.max-connections-per-ip",
            Self::SignalMaxRoomsPerConnection => "signal.max-rooms-per-connection",
            Self::SignalMaxPeersPerRoom => "signal.max-peers-per-room",
            Self::SignalMaxMessageBytes => "signal.max-message-bytes",
            Self::SignalMessagesPerSecond => "signal.messages-per-second",
            Self::SignalMaxHeldPerRoom => "signal.max-held-per-room",
            Self::SignalMaxHeldBytesPerRoom => "signal.max-held-bytes-per-room",
            Self::SignalMaxHeldPerSender => "signal.max-held-per-sender",
            Self::SignalMaxHeldBytesPerSender => "signal.max-held-bytes-per-sender",
            Self::SignalPeerjsMaxPeers => "signal.peerjs-max-peers",
            Self::AdminMaxBans => "admin.max-bans",
            Self::ClusterMaxBacklog => "cluster.max-backlog",
        }
    }

    /// The `[signal]` limit a `signal-limit` event names ("max-connections", ...).
    pub(crate) fn signal(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|l| l.key().strip_prefix("signal.") == Some(name))
    }
}

/// Limits whose hits are already counted as refusals.
pub(crate) const LIMIT_REFUSALS: [(&str, Reject); 15] = [
    (
        "connections.unauthenticated-timeout",
        Reject::UnauthenticatedConnection,
    ),
    ("relay.max-allocations", Reject::TotalQuotaReached),
    ("relay.max-allocations-per-user", Reject::UserQuotaReached),
    (
        "relay.max-permissions-per-allocation",
        Reject::PermissionQuotaReached,
    ),
    (
        "relay.max-channels-per-allocation",
        Reject::ChannelQuotaReached,
    ),
    (
        "relay.max-tcp-connections-per-allocation",
        Reject::TcpConnectionQuota,
    ),
    ("relay.ports", Reject::NoRelayPort),
    ("connections.max-frame-bytes", Reject::FrameTooLarge),
    ("connections.max-queued-bytes", Reject::SlowReader),
    (
        "throttle.unauthenticated-per-second",
        Reject::UnauthenticatedThrottled,
    ),
    ("throttle.login-failures", Reject::LoginBackoff),
    ("throttle.binding-per-second", Reject::BindingThrottled),
    ("relay.max-bps", Reject::AllocationBandwidth),
    ("relay.max-bps-per-user", Reject::UserBandwidth),
    ("relay.bps-capacity", Reject::NodeBandwidth),
];

/// Event counters, shared by every listener, relay and signaling connection.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) allocations_created: [AtomicU64; TURN_TRANSPORTS.len()],
    pub(crate) relayed_packets: [AtomicU64; 6],
    pub(crate) relayed_bytes: [AtomicU64; 6],
    pub(crate) binding_responses: [AtomicU64; TURN_TRANSPORTS.len()],
    pub(crate) tls_handshakes_ok: AtomicU64,
    pub(crate) signal_connections_opened: AtomicU64,
    /// The same, by [`SIGNAL_PROTOCOLS`].
    pub(crate) signal_protocol_connections: [AtomicU64; SIGNAL_PROTOCOLS.len()],
    pub(crate) signal_messages: [AtomicU64; SignalMessage::ALL.len()],
    pub(crate) signal_held: [AtomicU64; SignalHeld::ALL.len()],
    pub(crate) limit_hits: [AtomicU64; Limit::ALL.len()],
    /// Successful, then failed reloads.
    pub(crate) reloads: [AtomicU64; 2],
    pub(crate) cluster: ClusterMetrics,
}

/// The Redis link between nodes (`[cluster]`); scraped only once a cluster
/// link has started.
#[derive(Debug, Default)]
pub(crate) struct ClusterMetrics {
    pub(crate) enabled: AtomicBool,
    pub(crate) redis_up: AtomicBool,
    /// Times the link went down (or failed to come up at start).
    pub(crate) outages: AtomicU64,
    pub(crate) published: AtomicU64,
    /// From other nodes, decoded.
    pub(crate) received: AtomicU64,
    /// From Redis, but not a message of ours (or not for the channel it came on): dropped.
    pub(crate) malformed: AtomicU64,
    /// Accepted for publishing, then lost with the link; their senders were told.
    pub(crate) lost: AtomicU64,
}

impl ClusterMetrics {
    pub(crate) fn count(counter: &AtomicU64) {
        bump(counter, 1);
    }

    pub(crate) fn set_up(&self, up: bool) {
        self.redis_up.store(up, Ordering::Relaxed);
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub(crate) fn is_up(&self) -> bool {
        self.redis_up.load(Ordering::Relaxed)
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

pub(crate) fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Metrics {
    /// One packet of `len` payload bytes relayed.
    pub(crate) fn relayed(&self, direction: Direction, framing: Framing, len: usize) {
        let i = relay_index(direction, framing);
        bump(&self.relayed_packets[i], 1);
        bump(&self.relayed_bytes[i], len as u64);
    }

    /// `packets` packets of `bytes` payload bytes in all relayed.
    pub(crate) fn relayed_many(
        &self,
        direction: Direction,
        framing: Framing,
        packets: usize,
        bytes: usize,
    ) {
        let i = relay_index(direction, framing);
        bump(&self.relayed_packets[i], packets as u64);
        bump(&self.relayed_bytes[i], bytes as u64);
    }

    pub(crate) fn allocation_created(&self, transport: Transport) {
        if let Some(i) = turn_transport_index(transport) {
            bump(&self.allocations_created[i], 1);
        }
    }

    pub(crate) fn binding_answered(&self, transport: Transport) {
        if let Some(i) = turn_transport_index(transport) {
            bump(&self.binding_responses[i], 1);
        }
    }

    pub(crate) fn tls_handshake_completed(&self) {
        bump(&self.tls_handshakes_ok, 1);
    }

    /// A signaling connection speaking `protocol` (one of [`SIGNAL_PROTOCOLS`]).
    pub(crate) fn signal_connected(&self, protocol: &str) {
        bump(&self.signal_connections_opened, 1);
        if let Some(i) = SIGNAL_PROTOCOLS.iter().position(|&p| p == protocol) {
            bump(&self.signal_protocol_connections[i], 1);
        }
    }

    pub(crate) fn signal_message(&self, kind: SignalMessage) {
        if let Some(i) = SignalMessage::ALL.iter().position(|&k| k == kind) {
            bump(&self.signal_messages[i], 1);
        }
    }

    pub(crate) fn signal_held(&self, outcome: SignalHeld, count: usize) {
        if let Some(i) = SignalHeld::ALL.iter().position(|&o| o == outcome) {
            bump(&self.signal_held[i], count as u64);
        }
    }

    pub(crate) fn limit_hit(&self, limit: Limit) {
        if let Some(i) = Limit::ALL.iter().position(|&l| l == limit) {
            bump(&self.limit_hits[i], 1);
        }
    }

    pub(crate) fn reloaded(&self, ok: bool) {
        bump(&self.reloads[usize::from(!ok)], 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_value_has_its_own_slot() {
        let mut seen = Vec::new();
        for (direction, _) in DIRECTIONS {
            for (framing, _) in FRAMINGS {
                seen.push(relay_index(direction, framing));
            }
        }
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..DIRECTIONS.len() * FRAMINGS.len()).collect::<Vec<_>>()
        );
        for name in [
            "max-connections",
            "max-connections-per-ip",
            "max-rooms-per-connection",
            "max-peers-per-room",
            "max-message-bytes",
            "messages-per-second",
        ] {
            assert!(Limit::signal(name).is_some(), "{name}");
        }
        assert_eq!(Limit::signal("max-allocations"), None);
    }
}
