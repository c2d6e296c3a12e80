//! Listeners, the addressing they share, and the way back to a client.

pub(crate) mod relay;
pub(crate) mod stream;
pub(crate) mod tls;
pub(crate) mod udp;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;

pub(crate) use crate::config::Transport;
use crate::server::{Handled, Server};
use crate::turn::FiveTuple;
use crate::wire::{Class, MessageBuilder, Method, TransactionId, attr};

/// Hands one datagram or stream frame from a client to the server and
/// does what it asks: the reply to `route`, a new relay served for it.
pub(crate) fn handle_message(
    server: &Arc<Server>,
    five_tuple: &FiveTuple,
    data: &[u8],
    route: &ClientRoute,
    out: &mut Vec<u8>,
) {
    match server.handle_message(five_tuple, data, out) {
        Handled::Nothing => {}
        Handled::Reply => route.send(out),
        Handled::ReplyAndServeRelay(id, receiver) => {
            route.send(out);
            tokio::spawn(relay::run(server.clone(), id, receiver, route.clone()));
        }
    }
}

/// How to reach one client: a UDP listener and address, or the send queue
/// of its TCP/TLS connection.
#[derive(Clone, Debug)]
pub(crate) enum ClientRoute {
    Udp(udp::UdpRoute),
    Stream(Arc<stream::Outbox>),
}

thread_local! {
    static INDICATION: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(2048));
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

    /// Sends a ChannelData frame; streams pad it to a multiple of 4 (RFC 8656 §12.5).
    pub(crate) fn send_channel_data(&self, frame: &[u8]) {
        match self {
            Self::Udp(route) => route.send(frame),
            Self::Stream(outbox) => outbox.push_padded(frame),
        }
    }

    /// Wraps peer data in a Data indication (RFC 8656 §10.3).
    pub(crate) fn send_data_indication(&self, peer: SocketAddr, data: &[u8]) {
        INDICATION.with_borrow_mut(|buf| {
            let mut transaction = [0u8; 16];
            transaction[..4].copy_from_slice(&crate::wire::MAGIC_COOKIE.to_be_bytes());
            transaction[4..].copy_from_slice(&rand::random::<[u8; 12]>());
            MessageBuilder::new(
                buf,
                Method::DATA,
                Class::Indication,
                TransactionId(transaction),
            )
            .add_xor_address(attr::XOR_PEER_ADDRESS, peer)
            .add(attr::DATA, data);
            self.send(buf);
        });
    }
}
