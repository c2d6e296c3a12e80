//! Attribute types (RFC 8489 §18.3, RFC 8656 §18, RFC 5780 §7) and their values.

pub(crate) const MAPPED_ADDRESS: u16 = 0x0001;
const RESPONSE_ADDRESS: u16 = 0x0002;
pub(crate) const CHANGE_REQUEST: u16 = 0x0003;
pub(crate) const USERNAME: u16 = 0x0006;
pub(crate) const MESSAGE_INTEGRITY: u16 = 0x0008;
pub(crate) const ERROR_CODE: u16 = 0x0009;
pub(crate) const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
pub(crate) const CHANNEL_NUMBER: u16 = 0x000C;
pub(crate) const LIFETIME: u16 = 0x000D;
pub(crate) const XOR_PEER_ADDRESS: u16 = 0x0012;
pub(crate) const DATA: u16 = 0x0013;
pub(crate) const REALM: u16 = 0x0014;
pub(crate) const NONCE: u16 = 0x0015;
pub(crate) const XOR_RELAYED_ADDRESS: u16 = 0x0016;
pub(crate) const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
pub(crate) const EVEN_PORT: u16 = 0x0018;
pub(crate) const REQUESTED_TRANSPORT: u16 = 0x0019;
pub(crate) const DONT_FRAGMENT: u16 = 0x001A;
pub(crate) const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
pub(crate) const PASSWORD_ALGORITHM: u16 = 0x001D;
pub(crate) const USERHASH: u16 = 0x001E;
pub(crate) const XOR_MAPPED_ADDRESS: u16 = 0x0020;
pub(crate) const RESERVATION_TOKEN: u16 = 0x0022;
const PRIORITY: u16 = 0x0024;
const USE_CANDIDATE: u16 = 0x0025;
pub(crate) const PADDING: u16 = 0x0026;
/// RFC 6062 §6.2.
pub(crate) const CONNECTION_ID: u16 = 0x002A;
pub(crate) const RESPONSE_PORT: u16 = 0x0027;
pub(crate) const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
pub(crate) const ADDRESS_ERROR_CODE: u16 = 0x8001;
/// Comprehension-optional, so clients that predate RFC 8489 skip it.
pub(crate) const PASSWORD_ALGORITHMS: u16 = 0x8002;
pub(crate) const ALTERNATE_DOMAIN: u16 = 0x8003;
pub(crate) const RESPONSE_ORIGIN: u16 = 0x802B;
pub(crate) const OTHER_ADDRESS: u16 = 0x802C;
pub(crate) const ALTERNATE_SERVER: u16 = 0x8023;
pub(crate) const FINGERPRINT: u16 = 0x8028;

/// Password algorithm numbers (RFC 8489 §18.5).
pub(crate) const ALGORITHM_MD5: u16 = 0x0001;
pub(crate) const ALGORITHM_SHA256: u16 = 0x0002;

/// Comprehension-required attributes we understand or may safely ignore.
/// Anything else below 0x8000 in a request earns a 420 (RFC 8489 §7.3.1);
/// so does RESPONSE-PORT (RFC 5780 §7.5), unless the listener serves NAT
/// behaviour discovery (see [`crate::wire::Message::unknown_required`]).
/// CHANGE-REQUEST is known only with no flags set there too: classic clients
/// send it empty, and asking for another address or port gets a 420 (RFC
/// 5780 §7.2).
pub(crate) fn is_known(kind: u16) -> bool {
    matches!(
        kind,
        MAPPED_ADDRESS
            | RESPONSE_ADDRESS
            | CHANGE_REQUEST
            | USERNAME
            | MESSAGE_INTEGRITY
            | ERROR_CODE
            | UNKNOWN_ATTRIBUTES
            | CHANNEL_NUMBER
            | LIFETIME
            | XOR_PEER_ADDRESS
            | DATA
            | REALM
            | NONCE
            | XOR_RELAYED_ADDRESS
            | REQUESTED_ADDRESS_FAMILY
            | EVEN_PORT
            | REQUESTED_TRANSPORT
            | DONT_FRAGMENT
            | MESSAGE_INTEGRITY_SHA256
            | PASSWORD_ALGORITHM
            | USERHASH
            | XOR_MAPPED_ADDRESS
            | RESERVATION_TOKEN
            | PRIORITY
            | USE_CANDIDATE
            | PADDING
            | CONNECTION_ID
    )
}

/// REQUESTED-TRANSPORT protocol number for UDP (RFC 8656 §18.7).
pub(crate) const TRANSPORT_UDP: u8 = 17;
/// REQUESTED-TRANSPORT protocol number for TCP (RFC 6062 §5.1).
pub(crate) const TRANSPORT_TCP: u8 = 6;
/// REQUESTED-ADDRESS-FAMILY values (RFC 8656 §18.8).
pub(crate) const FAMILY_IPV4: u8 = 0x01;
pub(crate) const FAMILY_IPV6: u8 = 0x02;

/// A 32-bit big-endian value such as LIFETIME.
pub(crate) fn u32_value(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.try_into().ok()?))
}
