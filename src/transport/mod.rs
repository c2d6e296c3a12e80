//! Listeners, the addressing they share, and the way back to a client.

pub(crate) mod relay;
pub(crate) mod stream;
pub(crate) mod tcp_relay;
pub(crate) mod tls;
pub(crate) mod udp;

use std::net::SocketAddr;
use std::sync::Arc;

pub(crate) use crate::config::Transport;
use crate::datagrams::Run;
use crate::server::{Handled, PeerLink, Server};
use crate::turn::FiveTuple;
use crate::wire::{Class, MessageBuilder, Method, TransactionId, attr};

/// Hands one datagram or stream frame from a client to the server and
/// does what it asks: the reply to `route`, a new relay served for it. A
/// ConnectionBind that succeeded returns the peer connection this stream
/// is joined to: the caller carries its bytes from now on.
#[must_use]
pub(crate) fn handle_message(
    server: &Arc<Server>,
    five_tuple: &FiveTuple,
    data: &[u8],
    route: &ClientRoute,
    out: &mut Vec<u8>,
) -> Option<PeerLink> {
    match server.handle_message(five_tuple, data, out) {
        Handled::Nothing => {}
        Handled::Reply => route.send(out),
        Handled::ReplyVia { from, to } => udp::send_via(from, to, out),
        Handled::ReplyAndServeRelay(id, receivers) => {
            route.send(out);
            for receiver in receivers {
                tokio::spawn(relay::run(server.clone(), id, receiver, route.clone()));
            }
        }
        Handled::ReplyAndServeTcpRelay(id, receiver) => {
            route.send(out);
            tokio::spawn(tcp_relay::accept_peers(
                server.clone(),
                id,
                receiver,
                route.clone(),
            ));
        }
        Handled::ConnectToPeer {
            connection,
            from,
            peer,
        } => {
            tokio::spawn(tcp_relay::connect(
                server.clone(),
                connection,
                from,
                peer,
                route.clone(),
            ));
        }
        Handled::ReplyAndJoinPeer(link) => {
            route.send(out);
            return Some(link);
        }
    }
    None
}

/// How to reach one client: a UDP listener and address, or the send queue
/// of its TCP/TLS connection.
#[derive(Clone, Debug)]
pub(crate) enum ClientRoute {
    Udp(udp::UdpRoute),
    Stream(Arc<stream::Outbox>),
}

impl ClientRoute {
    /// Sends one STUN message (always a multiple of 4 bytes long).
    pub(crate) fn send(&self, message: &[u8]) {
        match self {
            Self::Udp(route) => route.send(message),
            Self::Stream(outbox) => outbox.push(message),
        }
    }

    /// The largest frame that reaches the client whole: a UDP datagram's
    /// payload limit for its address family; streams carry any frame.
    pub(crate) fn max_frame_len(&self) -> usize {
        match self {
            Self::Udp(route) if route.client().is_ipv4() => 65_535 - 20 - 8,
            Self::Udp(_) => 65_535 - 8,
            Self::Stream(_) => usize::MAX,
        }
    }

    /// Whether frames go over a stream (ChannelData padded to 4 bytes).
    pub(crate) fn is_stream(&self) -> bool {
        matches!(self, Self::Stream(_))
    }

    /// Sends a run of messages, each a whole frame.
    pub(crate) fn send_run(&self, run: &Run) {
        match self {
            Self::Udp(route) => route.send_run(run),
            Self::Stream(outbox) => {
                for frame in run.iter() {
                    outbox.push(frame);
                }
            }
        }
    }
}

/// Writes into `out` a Data indication carrying `data` from `peer` (RFC 8656 §10.3).
pub(crate) fn data_indication(peer: SocketAddr, data: &[u8], out: &mut Vec<u8>) {
    MessageBuilder::new(out, Method::DATA, Class::Indication, TransactionId::fresh())
        .add_xor_address(attr::XOR_PEER_ADDRESS, peer)
        .add(attr::DATA, data);
}
