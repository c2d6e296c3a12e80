//! Why a message was refused or dropped: one enum whose value picks the STUN
//! error code, names the log event and selects the counter.

use std::sync::atomic::{AtomicU64, Ordering};

/// Every way a request is answered with an error, or a packet is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reject {
    /// Bytes that are neither STUN nor ChannelData, or a STUN message whose
    /// framing or fingerprint is broken: dropped, there is nothing to answer.
    Garbage,
    /// A request missing a required attribute or carrying a bad value (400).
    BadRequest,
    /// A request with comprehension-required attributes we do not know (420).
    UnknownAttribute,
    /// A request without MESSAGE-INTEGRITY: the normal first round trip (401).
    Challenge,
    /// USERNAME names no static user and is no valid REST username (401).
    UnknownUser,
    /// A REST username whose expiry has passed (401).
    ExpiredCredentials,
    /// MESSAGE-INTEGRITY does not match the user's key, or REALM is not ours (401).
    WrongPassword,
    /// A NONCE that has expired or was not issued to this client (438).
    StaleNonce,
    /// A request on an allocation made by another user (441).
    WrongCredentials,
    /// Allocate on a 5-tuple that has an allocation, or a request needing one that has none (437).
    AllocationMismatch,
    /// REQUESTED-TRANSPORT other than UDP or TCP (442).
    UnsupportedTransport,
    /// REQUESTED-ADDRESS-FAMILY this server has no relay address for (440).
    AddressFamilyNotSupported,
    /// A peer address whose family differs from the relayed address (443).
    PeerAddressFamilyMismatch,
    /// A peer address the peer policy refuses (403 on requests, dropped on Send).
    PeerRefused,
    /// The user already has `max-allocations-per-user` allocations (486).
    UserQuotaReached,
    /// The server already has `max-allocations` allocations (486).
    TotalQuotaReached,
    /// A CreatePermission or ChannelBind that would give the allocation
    /// permissions for more than `max-permissions-per-allocation` peers (508).
    PermissionQuotaReached,
    /// A ChannelBind that would give the allocation more than
    /// `max-channels-per-allocation` channels (508).
    ChannelQuotaReached,
    /// No relay port is free in the configured range (508).
    NoRelayPort,
    /// A relay socket could not be opened for another reason (500).
    ServerError,
    /// Allocate while draining (POST /drain or SIGTERM): 508, so that the
    /// client tries another server at once; existing allocations carry on.
    Draining,
    /// An Allocate this node cannot take (draining, or at a node-wide limit)
    /// handed to a sibling from `[relay] alternate-servers` (300 with
    /// ALTERNATE-SERVER).
    Redirected,
    /// ChannelData, Send indication or Binding indication for a 5-tuple
    /// without allocation, a channel not bound, or a peer without permission: dropped.
    NoRoute,
    /// A TCP/TLS connection refused: `max-connections` or `max-connections-per-ip` reached.
    ConnectionLimit,
    /// A TCP/TLS connection closed for silence: nothing before the handshake
    /// timeout, or no allocation and nothing for `idle-timeout`.
    IdleConnection,
    /// A TCP/TLS connection closed for never allocating within
    /// `unauthenticated-timeout`, whatever else it sent.
    UnauthenticatedConnection,
    /// A TLS handshake that failed or did not finish in time.
    TlsHandshakeFailed,
    /// A stream frame larger than `max-frame-bytes`: the connection is closed.
    FrameTooLarge,
    /// A stream client that stopped reading while `max-queued-bytes` waited for it.
    SlowReader,
    /// A peer datagram too large to reach the client in its framing: a Data
    /// indication whose STUN length field cannot hold it, or a frame larger
    /// than the largest UDP datagram to the client's address family. Dropped.
    TooLargeForClient,
    /// A request that would get a 401 or 438 from a source past
    /// `throttle.unauthenticated-burst`: dropped, so a flood gets no answers.
    UnauthenticatedThrottled,
    /// A request naming a user that is backing off after
    /// `throttle.login-failures` failed logins: dropped.
    LoginBackoff,
    /// A Binding request from a source past `throttle.binding-burst`: dropped.
    BindingThrottled,
    /// A datagram over its allocation's `relay.max-bps` in its direction: dropped.
    AllocationBandwidth,
    /// A datagram over its user's `relay.max-bps-per-user` in its direction: dropped.
    UserBandwidth,
    /// A datagram over the node's `relay.bps-capacity`: dropped.
    NodeBandwidth,
    /// Allocate within a second of the node dropping data for
    /// `relay.bps-capacity` (486, as coturn answers at capacity).
    AtCapacity,
    /// A request that authenticated as a user who is banned
    /// (`icegate ctl ban`) (403).
    UserBanned,
    /// PASSWORD-ALGORITHMS or PASSWORD-ALGORITHM missing, altered or not
    /// among those the nonce cookie offered: a bid-down (RFC 8489 §9.2.4) (400).
    PasswordAlgorithmMismatch,
    /// A request that does not fit the allocation's relay transport (RFC
    /// 6062): a TCP allocation asked over UDP or with UDP-only attributes,
    /// Connect on a UDP allocation, ChannelBind on a TCP one (400).
    RelayTransportMismatch,
    /// Connect to a peer the allocation is connecting or connected to (446).
    ConnectionExists,
    /// The connection to a peer named by Connect failed or timed out (447).
    ConnectFailed,
    /// A Connect, or a connection from a peer, past the allocation's
    /// `max-tcp-connections-per-allocation` (508 on Connect; closed from a peer).
    TcpConnectionQuota,
    /// ConnectionBind naming no connection that waits for one, or sent on
    /// a connection that is not a fresh TCP/TLS one (400).
    UnknownConnection,
    /// A peer connection whose client sent no ConnectionBind within 30 s: closed.
    ConnectionBindTimeout,
}

impl Reject {
    pub(crate) const ALL: [Self; 45] = [
        Self::Garbage,
        Self::BadRequest,
        Self::UnknownAttribute,
        Self::Challenge,
        Self::UnknownUser,
        Self::ExpiredCredentials,
        Self::WrongPassword,
        Self::StaleNonce,
        Self::WrongCredentials,
        Self::AllocationMismatch,
        Self::UnsupportedTransport,
        Self::AddressFamilyNotSupported,
        Self::PeerAddressFamilyMismatch,
        Self::PeerRefused,
        Self::UserQuotaReached,
        Self::TotalQuotaReached,
        Self::PermissionQuotaReached,
        Self::ChannelQuotaReached,
        Self::NoRelayPort,
        Self::ServerError,
        Self::Draining,
        Self::Redirected,
        Self::NoRoute,
        Self::ConnectionLimit,
        Self::IdleConnection,
        Self::UnauthenticatedConnection,
        Self::TlsHandshakeFailed,
        Self::FrameTooLarge,
        Self::SlowReader,
        Self::TooLargeForClient,
        Self::UnauthenticatedThrottled,
        Self::LoginBackoff,
        Self::BindingThrottled,
        Self::AllocationBandwidth,
        Self::UserBandwidth,
        Self::NodeBandwidth,
        Self::AtCapacity,
        Self::UserBanned,
        Self::PasswordAlgorithmMismatch,
        Self::RelayTransportMismatch,
        Self::ConnectionExists,
        Self::ConnectFailed,
        Self::TcpConnectionQuota,
        Self::UnknownConnection,
        Self::ConnectionBindTimeout,
    ];

    /// The STUN error code and reason phrase, or None for a silent drop.
    pub(crate) fn error_code(self) -> Option<(u16, &'static str)> {
        Some(match self {
            Self::Garbage
            | Self::NoRoute
            | Self::ConnectionLimit
            | Self::IdleConnection
            | Self::UnauthenticatedConnection
            | Self::TlsHandshakeFailed
            | Self::FrameTooLarge
            | Self::SlowReader
            | Self::TooLargeForClient
            | Self::UnauthenticatedThrottled
            | Self::LoginBackoff
            | Self::BindingThrottled
            | Self::AllocationBandwidth
            | Self::UserBandwidth
            | Self::NodeBandwidth
            | Self::ConnectionBindTimeout => return None,
            Self::BadRequest
            | Self::PasswordAlgorithmMismatch
            | Self::RelayTransportMismatch
            | Self::UnknownConnection => (400, "Bad Request"),
            Self::UnknownAttribute => (420, "Unknown Attribute"),
            Self::Challenge
            | Self::UnknownUser
            | Self::ExpiredCredentials
            | Self::WrongPassword => (401, "Unauthorized"),
            Self::StaleNonce => (438, "Stale Nonce"),
            Self::WrongCredentials => (441, "Wrong Credentials"),
            Self::AllocationMismatch => (437, "Allocation Mismatch"),
            Self::UnsupportedTransport => (442, "Unsupported Transport Protocol"),
            Self::AddressFamilyNotSupported => (440, "Address Family not Supported"),
            Self::PeerAddressFamilyMismatch => (443, "Peer Address Family Mismatch"),
            Self::PeerRefused | Self::UserBanned => (403, "Forbidden"),
            Self::UserQuotaReached | Self::TotalQuotaReached | Self::AtCapacity => {
                (486, "Allocation Quota Reached")
            }
            Self::PermissionQuotaReached
            | Self::ChannelQuotaReached
            | Self::TcpConnectionQuota
            | Self::NoRelayPort
            | Self::Draining => (508, "Insufficient Capacity"),
            Self::ServerError => (500, "Server Error"),
            Self::Redirected => (300, "Try Alternate"),
            Self::ConnectionExists => (446, "Connection Already Exists"),
            Self::ConnectFailed => (447, "Connection Timeout or Failure"),
        })
    }

    /// The name used as log event and metric label.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Garbage => "garbage",
            Self::BadRequest => "bad-request",
            Self::UnknownAttribute => "unknown-attribute",
            Self::Challenge => "challenge",
            Self::UnknownUser => "unknown-user",
            Self::ExpiredCredentials => "expired-credentials",
            Self::WrongPassword => "wrong-password",
            Self::StaleNonce => "stale-nonce",
            Self::WrongCredentials => "wrong-credentials",
            Self::AllocationMismatch => "allocation-mismatch",
            Self::UnsupportedTransport => "unsupported-transport",
            Self::AddressFamilyNotSupported => "address-family-not-supported",
            Self::PeerAddressFamilyMismatch => "peer-address-family-mismatch",
            Self::PeerRefused => "peer-refused",
            Self::UserQuotaReached => "user-quota-reached",
            Self::TotalQuotaReached => "total-quota-reached",
            Self::PermissionQuotaReached => "permission-quota-reached",
            Self::ChannelQuotaReached => "channel-quota-reached",
            Self::NoRelayPort => "no-relay-port",
            Self::ServerError => "server-error",
            Self::Draining => "draining",
            Self::Redirected => "redirected",
            Self::NoRoute => "no-route",
            Self::ConnectionLimit => "connection-limit",
            Self::IdleConnection => "idle-connection",
            Self::UnauthenticatedConnection => "unauthenticated-connection",
            Self::TlsHandshakeFailed => "tls-handshake-failed",
            Self::FrameTooLarge => "frame-too-large",
            Self::SlowReader => "slow-reader",
            Self::TooLargeForClient => "too-large-for-client",
            Self::UnauthenticatedThrottled => "unauthenticated-throttled",
            Self::LoginBackoff => "login-backoff",
            Self::BindingThrottled => "binding-throttled",
            Self::AllocationBandwidth => "allocation-bandwidth",
            Self::UserBandwidth => "user-bandwidth",
            Self::NodeBandwidth => "node-bandwidth",
            Self::AtCapacity => "at-capacity",
            Self::UserBanned => "user-banned",
            Self::PasswordAlgorithmMismatch => "password-algorithm-mismatch",
            Self::RelayTransportMismatch => "relay-transport-mismatch",
            Self::ConnectionExists => "connection-exists",
            Self::ConnectFailed => "connect-failed",
            Self::TcpConnectionQuota => "tcp-connection-quota",
            Self::UnknownConnection => "unknown-connection",
            Self::ConnectionBindTimeout => "connection-bind-timeout",
        }
    }

    /// Refusals of an Allocate that another node could take instead: this
    /// node's own state, not the client's request or quota.
    pub(crate) fn is_redirectable(self) -> bool {
        matches!(
            self,
            Self::Draining | Self::TotalQuotaReached | Self::AtCapacity | Self::NoRelayPort
        )
    }

    /// Authentication failures an operator wants in the log (not the normal challenge).
    pub(crate) fn is_auth_failure(self) -> bool {
        matches!(
            self,
            Self::UnknownUser
                | Self::ExpiredCredentials
                | Self::WrongPassword
                | Self::WrongCredentials
                | Self::PasswordAlgorithmMismatch
        )
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One counter per [`Reject`], shared by every listener and relay.
#[derive(Debug)]
pub(crate) struct RejectCounters([AtomicU64; Reject::ALL.len()]);

// Arrays derive Default only up to 32 elements.
impl Default for RejectCounters {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl RejectCounters {
    pub(crate) fn count(&self, reject: Reject) {
        self.0[reject.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self, reject: Reject) -> u64 {
        self.0[reject.index()].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_slot_and_name() {
        let mut names: Vec<_> = Reject::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reject::ALL.len());
        for (i, reject) in Reject::ALL.iter().enumerate() {
            assert_eq!(reject.index(), i);
        }
    }
}
