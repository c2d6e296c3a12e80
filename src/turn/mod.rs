//! The TURN relay: RFC 8656 (with RFC 5766 clients in mind), RFC 6062 TCP relays.
//!
//! Implemented: Allocate (§7.2; REQUESTED-TRANSPORT UDP, REQUESTED-ADDRESS-FAMILY,
//! ADDITIONAL-ADDRESS-FAMILY, DONT-FRAGMENT, EVEN-PORT with RESERVATION-TOKEN),
//! Refresh (§8, per family on a dual-stack allocation),
//! CreatePermission (§9, several peers at once), ChannelBind (§11, channels
//! 0x4000–0x7FFF as RFC 5766 allowed, or only 0x4000–0x4FFF as §12 requires),
//! Send and Data indications (§10), ChannelData both ways (§12.4),
//! long-term credentials (RFC 8489 §9.2) with MESSAGE-INTEGRITY or
//! MESSAGE-INTEGRITY-SHA256, MD5 or SHA-256 password algorithm, and USERHASH
//! for static users; ALTERNATE-SERVER redirects (RFC 8489 §10).
//!
//! Deliberate choices:
//! - Retransmitted requests on an allocation are answered from a small
//!   per-allocation cache of recent responses, not re-executed (§7.2, §7.3).
//! - A client with an allocation keeps the key it allocated with, so an
//!   expiring REST username does not break refreshes (as coturn does).
//! - Permissions and channels per allocation are capped
//!   (`max-permissions-per-allocation`, `max-channels-per-allocation`):
//!   past a cap a request that would add one gets 508, which §9 and §11
//!   allow; coturn has no such cap.
//! - A banned user (`crate::bans`) authenticates and then gets 403 on every
//!   request; its data is not checked, since a ban ends its allocations.
//! - An Allocate this node cannot take while draining or at a node-wide
//!   limit is sent to a sibling in `[relay] alternate-servers` (300).
//! - Binding on a listener with `other-address` serves RFC 5780 NAT
//!   behaviour discovery (`crate::stun`); answers from another listener
//!   leave as [`core::Action::ReplyVia`].
//! - An Allocate with ADDITIONAL-ADDRESS-FAMILY (§7.2) gets a dual-stack
//!   allocation: an IPv4 and an IPv6 relay socket, two XOR-RELAYED-ADDRESS
//!   (IPv4 first), both ports from the pool, one allocation in the quotas.
//!   Without an IPv6 relay address it gets its IPv4 relay and
//!   ADDRESS-ERROR-CODE 440 for IPv6, 508 when no port is left for it.
//!   EVEN-PORT applies to the IPv4 relay; with its R bit set the request
//!   gets 400 (§7.2 step 8). Peers of either family are
//!   allowed on it (443 stays for a single-family allocation), and data to a
//!   peer leaves from the relay of its family. A Refresh with
//!   REQUESTED-ADDRESS-FAMILY refreshes or deletes that family's relay only
//!   (RFC 8656 §8), the allocation living on with the other one; without
//!   it, both. The §7.2 combinations that are errors get 400.
//! - TCP allocations (RFC 6062, `tcp.rs`): REQUESTED-TRANSPORT TCP over
//!   TCP or TLS gives a listening relay address; Connect, ConnectionAttempt
//!   and ConnectionBind join each peer's TCP connection to a data connection
//!   of the client's. Connect needs no permission (as in RFC 6062 and
//!   coturn) but passes the peer policy; a peer connecting in needs one.
//!   A ConnectionBind may carry its control connection's nonce. The
//!   bandwidth caps hold TCP data back (the shell waits to read more)
//!   instead of dropping it.
//! - Not implemented: mobility (RFC 8016), which browsers do not use.
//!
//! The core is a state machine: bytes, addresses and time come in, replies
//! and decisions go out. Nothing in here owns a socket, reads a clock or
//! knows the runtime: the shell passes `now`, binds relay sockets through
//! [`RelaySockets`] and closes those of the allocations the core reports
//! as ended.

pub(crate) mod allocation;
pub(crate) mod bandwidth;
pub(crate) mod connections;
pub(crate) mod core;
mod methods;
pub(crate) mod ports;
mod redirect;
pub(crate) mod shared;
pub(crate) mod table;
pub(crate) mod tcp;
#[cfg(test)]
mod tests;
pub(crate) mod throttle;

use std::io;
use std::net::SocketAddr;

use crate::config::Transport;
pub(crate) use allocation::AllocId;

/// The 5-tuple that identifies a client's allocation (RFC 8656 §2): the
/// client's address, the server address it reached, and the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FiveTuple {
    pub(crate) client: SocketAddr,
    pub(crate) server: SocketAddr,
    pub(crate) transport: Transport,
}

impl std::fmt::Display for FiveTuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}->{}", self.transport, self.client, self.server)
    }
}

/// How the core gets a relay socket: the shell binds one for allocation
/// `id` and keeps it under that id until the core reports the allocation ended.
/// A dual-stack allocation opens two, IPv4 then IPv6, under one id.
pub(crate) trait RelaySockets {
    /// Binds `address` (port chosen by the core); with `dont_fragment` the
    /// DF bit goes on what it sends. The error's kind tells a port another
    /// program holds (`AddrInUse`) from other failures.
    fn open(&mut self, id: AllocId, address: SocketAddr, dont_fragment: bool) -> io::Result<()>;

    /// Listens on `address` for peers connecting to TCP allocation `id`
    /// (RFC 6062); connections out to peers leave from it too.
    fn open_tcp(&mut self, id: AllocId, address: SocketAddr) -> io::Result<()>;
}
