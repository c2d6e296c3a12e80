//! Handing an Allocate this node cannot take (draining, or at a node-wide
//! limit) to a sibling: 300 Try Alternate with ALTERNATE-SERVER (RFC 8489
//! §10), round-robin over `[relay] alternate-servers`, and ALTERNATE-DOMAIN
//! for TLS clients to check the sibling's certificate against.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::{Alternates, Transport};
use crate::turn::FiveTuple;

pub(super) struct Redirect {
    alternates: Alternates,
    /// Which sibling is next, counted across every client.
    next: AtomicUsize,
}

/// Where a client is sent.
pub(super) struct Alternate<'a> {
    pub(super) server: SocketAddr,
    pub(super) domain: Option<&'a str>,
}

impl Redirect {
    pub(super) fn new(alternates: &Alternates) -> Self {
        Self {
            alternates: alternates.clone(),
            next: AtomicUsize::new(0),
        }
    }

    /// The sibling for the client of `five_tuple`: one of its transport's
    /// list in the family it reached this node over, never this node.
    pub(super) fn pick(&self, five_tuple: &FiveTuple) -> Option<Alternate<'_>> {
        let tls = five_tuple.transport == Transport::Tls;
        let list = if tls {
            &self.alternates.tls_servers
        } else {
            &self.alternates.servers
        };
        let here = five_tuple.server;
        let fits =
            |alternate: &&SocketAddr| alternate.is_ipv4() == here.is_ipv4() && **alternate != here;
        let count = list.iter().filter(fits).count();
        if count == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % count;
        let server = *list.iter().filter(fits).nth(turn)?;
        let domain = if tls {
            self.alternates.domain.as_deref()
        } else {
            None
        };
        Some(Alternate { server, domain })
    }
}
