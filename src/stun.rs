//! The Binding responder (RFC 8489 §6.3.1, classic RFC 3489 §11.2.1).
//!
//! Binding needs no credentials. The answer is kept as small as the request
//! allows: XOR-MAPPED-ADDRESS (MAPPED-ADDRESS for classic clients, which know
//! no XOR form) and FINGERPRINT only when the request carried one; no
//! SOFTWARE, no RFC 5780 addresses. A 20-byte request earns at most 52 bytes.

use std::net::SocketAddr;

use crate::wire::{Class, Message, MessageBuilder, attr};

/// Writes the success response to a Binding request from `client` into `out`.
pub(crate) fn answer_binding(request: &Message<'_>, client: SocketAddr, out: &mut Vec<u8>) {
    let mut reply = MessageBuilder::reply(out, request, Class::Success);
    if request.is_classic() {
        reply.add_address(attr::MAPPED_ADDRESS, client);
    } else {
        reply.add_xor_address(attr::XOR_MAPPED_ADDRESS, client);
        if request.has_fingerprint() {
            reply.add_fingerprint();
        }
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
        answer_binding(&request, client, &mut out);
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
        answer_binding(&request, client, &mut out);
        let reply = Message::parse(&out).unwrap();
        assert_eq!(&out[4..20], &request.transaction.0);
        let value = reply.get(attr::MAPPED_ADDRESS).unwrap();
        assert_eq!(value, &[0, 1, 0x11, 0x5c, 192, 0, 2, 9]);
        assert!(reply.get(attr::XOR_MAPPED_ADDRESS).is_none());
    }
}
