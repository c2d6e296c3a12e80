//! The Binding responder (RFC 8489 §6.3.1, classic RFC 3489 §11.2.1), with
//! NAT behaviour discovery (RFC 5780) on listeners that have an
//! `other-address`.
//!
//! Binding needs no credentials. The answer is kept as small as the request
//! allows: XOR-MAPPED-ADDRESS (MAPPED-ADDRESS for classic clients, which know
//! no XOR form) and FINGERPRINT only when the request carried one; no
//! SOFTWARE. A 20-byte request earns at most 52 bytes, or 88 with the RFC
//! 5780 addresses; PADDING never makes an answer longer than its request.

use std::net::SocketAddr;

use crate::wire::{Class, Message, MessageBuilder, attr};

/// CHANGE-REQUEST flags (RFC 5780 §7.2).
const CHANGE_IP: u8 = 0x04;
const CHANGE_PORT: u8 = 0x02;

/// The listener a request came in on, for RFC 5780: its address and the
/// one that differs from it in both IP and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Discovery {
    pub(crate) here: SocketAddr,
    pub(crate) other: SocketAddr,
}

/// Where the answer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answered {
    /// Back the way the request came.
    Back,
    /// From the listener at `from`, to `to` (CHANGE-REQUEST, RESPONSE-PORT).
    Via { from: SocketAddr, to: SocketAddr },
}

/// Writes the success response to a Binding request from `client` into `out`.
pub(crate) fn answer_binding(
    request: &Message<'_>,
    client: SocketAddr,
    discovery: Option<Discovery>,
    out: &mut Vec<u8>,
) -> Answered {
    let mut reply = MessageBuilder::reply(out, request, Class::Success);
    if request.is_classic() {
        reply.add_address(attr::MAPPED_ADDRESS, client);
        return Answered::Back;
    }
    reply.add_xor_address(attr::XOR_MAPPED_ADDRESS, client);
    let Some(discovery) = discovery else {
        if request.has_fingerprint() {
            reply.add_fingerprint();
        }
        return Answered::Back;
    };
    let flags = request
        .get(attr::CHANGE_REQUEST)
        .and_then(|value| value.get(3).copied())
        .unwrap_or(0);
    let mut from = discovery.here;
    if flags & CHANGE_IP != 0 {
        from.set_ip(discovery.other.ip());
    }
    if flags & CHANGE_PORT != 0 {
        from.set_port(discovery.other.port());
    }
    let mut to = client;
    if let Some(port) = request.get(attr::RESPONSE_PORT).and_then(response_port) {
        to.set_port(port);
    }
    // MAPPED-ADDRESS too, as RFC 5780 clients written for RFC 3489 servers
    // look for it.
    reply
        .add_address(attr::MAPPED_ADDRESS, client)
        .add_address(attr::RESPONSE_ORIGIN, from)
        .add_address(attr::OTHER_ADDRESS, discovery.other);
    if let Some(asked) = request.get(attr::PADDING) {
        // No longer than the request: a padded answer amplifies nothing.
        let fingerprint = if request.has_fingerprint() { 8 } else { 0 };
        let room = request.len().saturating_sub(reply.len() + 4 + fingerprint);
        let padding = asked.len().min(room) / 4 * 4;
        reply.add(attr::PADDING, &vec![0; padding]);
    }
    if request.has_fingerprint() {
        reply.add_fingerprint();
    }
    if from == discovery.here && to == client {
        Answered::Back
    } else {
        Answered::Via { from, to }
    }
}

/// RESPONSE-PORT's port (RFC 5780 §7.5: 16 bits, then 16 of padding).
fn response_port(value: &[u8]) -> Option<u16> {
    match value {
        [high, low, ..] if value.len() == 4 => {
            Some(u16::from_be_bytes([*high, *low])).filter(|&p| p != 0)
        }
        _ => None,
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Method, TransactionId};

    #[test]
    fn modern_request_gets_xor_mapped_address_and_fingerprint() {
        let mut tid = [3u8; 16];
        tid[..4].copy_from_slice(&crate::wire::MAGIC_COOKIE.to_be_bytes());
        let mut request = Vec::new();
        MessageBuilder::new(
            &mut request,
            Method::BINDING,
            Class::Request,
            TransactionId(tid),
        )
        .add_fingerprint();
        let request = Message::parse(&request).unwrap();
        let client: SocketAddr = "[2001:db8::5]:6000".parse().unwrap();
        let mut out = Vec::new();
        answer_binding(&request, client, None, &mut out);
        let reply = Message::parse(&out).unwrap();
        assert_eq!(reply.class, Class::Success);
        let value = reply.get(attr::XOR_MAPPED_ADDRESS).unwrap();
        assert_eq!(reply.xor_address(value), Some(client));
        assert!(reply.has_fingerprint());
        assert!(out.len() <= 52);
    }

    #[test]
    fn classic_request_gets_plain_mapped_address() {
        let request = [
            0x00, 0x01, 0x00, 0x00, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
        ];
        let request = Message::parse(&request).unwrap();
        assert!(request.is_classic());
        let client: SocketAddr = "192.0.2.9:4444".parse().unwrap();
        let mut out = Vec::new();
        answer_binding(&request, client, None, &mut out);
        let reply = Message::parse(&out).unwrap();
        assert_eq!(&out[4..20], &request.transaction.0);
        let value = reply.get(attr::MAPPED_ADDRESS).unwrap();
        assert_eq!(value, &[0, 1, 0x11, 0x5c, 192, 0, 2, 9]);
        assert!(reply.get(attr::XOR_MAPPED_ADDRESS).is_none());
    }

    fn modern_request(add: impl FnOnce(&mut MessageBuilder<'_>)) -> Vec<u8> {
        let mut tid = [4u8; 16];
        tid[..4].copy_from_slice(&crate::wire::MAGIC_COOKIE.to_be_bytes());
        let mut request = Vec::new();
        let mut builder = MessageBuilder::new(
            &mut request,
            Method::BINDING,
            Class::Request,
            TransactionId(tid),
        );
        add(&mut builder);
        request
    }

    const DISCOVERY: Discovery = Discovery {
        here: SocketAddr::new(
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
            3478,
        ),
        other: SocketAddr::new(
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2)),
            3479,
        ),
    };

    fn plain(reply: &Message<'_>, kind: u16) -> SocketAddr {
        let value = reply.get(kind).expect("the attribute");
        let ip: [u8; 4] = value[4..8].try_into().unwrap();
        SocketAddr::from((ip, u16::from_be_bytes([value[2], value[3]])))
    }

    #[test]
    fn nat_discovery_answers_from_the_address_asked_for() {
        let client: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        for (flags, from) in [
            (0u8, "192.0.2.1:3478"),
            (CHANGE_PORT, "192.0.2.1:3479"),
            (CHANGE_IP, "192.0.2.2:3478"),
            (CHANGE_IP | CHANGE_PORT, "192.0.2.2:3479"),
        ] {
            let request = modern_request(|b| {
                b.add(attr::CHANGE_REQUEST, &[0, 0, 0, flags]);
            });
            let request = Message::parse(&request).unwrap();
            let mut out = Vec::new();
            let answered = answer_binding(&request, client, Some(DISCOVERY), &mut out);
            let from: SocketAddr = from.parse().unwrap();
            let expected = if flags == 0 {
                Answered::Back
            } else {
                Answered::Via { from, to: client }
            };
            assert_eq!(answered, expected, "flags {flags:#x}");
            let reply = Message::parse(&out).unwrap();
            assert_eq!(plain(&reply, attr::RESPONSE_ORIGIN), from);
            assert_eq!(plain(&reply, attr::OTHER_ADDRESS), DISCOVERY.other);
            assert_eq!(plain(&reply, attr::MAPPED_ADDRESS), client);
        }
    }

    #[test]
    fn response_port_and_padding_stay_within_the_request() {
        let client: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        let request = modern_request(|b| {
            b.add(attr::RESPONSE_PORT, &[0x1F, 0x90, 0, 0])
                .add(attr::PADDING, &[0; 1500])
                .add_fingerprint();
        });
        let parsed = Message::parse(&request).unwrap();
        let mut out = Vec::new();
        let answered = answer_binding(&parsed, client, Some(DISCOVERY), &mut out);
        let to: SocketAddr = "198.51.100.7:8080".parse().unwrap();
        assert_eq!(
            answered,
            Answered::Via {
                from: DISCOVERY.here,
                to
            }
        );
        assert!(
            out.len() <= request.len(),
            "{} > {}",
            out.len(),
            request.len()
        );
        let reply = Message::parse(&out).unwrap();
        assert!(reply.get(attr::PADDING).is_some_and(|p| p.len() > 1400));
        assert!(reply.has_fingerprint());

        // A small request earns no padding past its own size.
        let request = modern_request(|b| {
            b.add(attr::PADDING, &[0; 8]);
        });
        let parsed = Message::parse(&request).unwrap();
        let mut out = Vec::new();
        answer_binding(&parsed, client, Some(DISCOVERY), &mut out);
        let reply = Message::parse(&out).unwrap();
        assert!(reply.get(attr::PADDING).is_none_or(<[u8]>::is_empty));
    }
}
