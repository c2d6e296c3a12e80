//! Listeners and the addressing they share.

pub(crate) mod udp;

use std::net::SocketAddr;

pub(crate) use crate::config::Transport;

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
