//! STUN messages (RFC 8489 §5, §14) parsed in place and built into a reused buffer.
//!
//! Parsing borrows the receive buffer and walks the attributes once to prove
//! the message well formed; later lookups are plain scans over that slice.
//! Classic RFC 3489 headers (no magic cookie) are accepted so the Binding
//! responder can answer old clients; everything else requires the cookie.

use std::net::{IpAddr, SocketAddr};

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::attr;

pub(crate) const MAGIC_COOKIE: u32 = 0x2112_A442;
pub(crate) const HEADER_LEN: usize = 20;
const ATTR_HEADER_LEN: usize = 4;
/// The longest body a STUN length field announces: 16 bits, a multiple of 4.
pub(crate) const MAX_BODY_LEN: usize = 0xFFFC;
const INTEGRITY_LEN: usize = 20;
const INTEGRITY_SHA256_LEN: usize = 32;
/// The shortest MESSAGE-INTEGRITY-SHA256 a sender may truncate to (RFC 8489 §14.6).
const INTEGRITY_SHA256_MIN_LEN: usize = 16;
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// A STUN method (RFC 8489 §18.2, RFC 8656 §17).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Method(pub(crate) u16);

impl Method {
    pub(crate) const BINDING: Self = Self(0x001);
    pub(crate) const ALLOCATE: Self = Self(0x003);
    pub(crate) const REFRESH: Self = Self(0x004);
    pub(crate) const SEND: Self = Self(0x006);
    pub(crate) const DATA: Self = Self(0x007);
    pub(crate) const CREATE_PERMISSION: Self = Self(0x008);
    pub(crate) const CHANNEL_BIND: Self = Self(0x009);
    /// TCP allocations (RFC 6062 §6.1).
    pub(crate) const CONNECT: Self = Self(0x00A);
    pub(crate) const CONNECTION_BIND: Self = Self(0x00B);
    pub(crate) const CONNECTION_ATTEMPT: Self = Self(0x00C);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    /// The class a message type's C1 and C0 bits say (RFC 8489 §5).
    fn of_type(kind: u16) -> Self {
        match kind & 0x0110 {
            0x000 => Class::Request,
            0x010 => Class::Indication,
            0x100 => Class::Success,
            _ => Class::Error,
        }
    }

    /// The class of the STUN message starting `bytes`, without parsing the rest.
    pub(crate) fn of_message(bytes: &[u8]) -> Option<Self> {
        Some(Self::of_type(u16::from_be_bytes([
            *bytes.first()?,
            *bytes.get(1)?,
        ])))
    }

    fn bits(self) -> u16 {
        match self {
            Self::Request => 0x000,
            Self::Indication => 0x010,
            Self::Success => 0x100,
            Self::Error => 0x110,
        }
    }
}

/// Why bytes are not a well-formed STUN message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    /// Fewer than 20 bytes, or the first two bits are not zero.
    #[error("not a stun message")]
    NotStun,
    /// The length field disagrees with the bytes received or is not a multiple of 4.
    #[error("stun length field does not match the message")]
    BadLength,
    /// An attribute runs past the end of the message.
    #[error("stun attribute overruns the message")]
    BadAttribute,
    /// A FINGERPRINT attribute is present and wrong.
    #[error("stun fingerprint mismatch")]
    BadFingerprint,
    /// An attribute follows FINGERPRINT, which must be last (RFC 8489 §14.7).
    #[error("stun attribute after fingerprint")]
    AfterFingerprint,
}

/// The 16 header bytes after type and length: magic cookie plus transaction ID,
/// or, for a classic RFC 3489 message, a 128-bit transaction ID. Echoed as-is.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TransactionId(pub(crate) [u8; 16]);

impl TransactionId {
    /// A new id for a message the server starts (an indication): the magic
    /// cookie, then 96 random bits.
    pub(crate) fn fresh() -> Self {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        id[4..].copy_from_slice(&rand::random::<[u8; 12]>());
        Self(id)
    }

    fn is_classic(&self) -> bool {
        self.0[..4] != MAGIC_COOKIE.to_be_bytes()
    }
}

impl std::fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in &self.0[4..] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// A parsed STUN message borrowing its bytes.
#[derive(Clone, Copy)]
pub(crate) struct Message<'a> {
    raw: &'a [u8],
    pub(crate) method: Method,
    pub(crate) class: Class,
    pub(crate) transaction: TransactionId,
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("method", &self.method)
            .field("class", &self.class)
            .field("transaction", &self.transaction)
            .field("len", &self.raw.len())
            .finish()
    }
}

/// One attribute: its type, value (without padding) and where its header starts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Attribute<'a> {
    pub(crate) kind: u16,
    pub(crate) value: &'a [u8],
    pub(crate) offset: usize,
}

impl<'a> Message<'a> {
    /// Parses one whole message: `buf` must hold exactly the header and the
    /// length it announces (a datagram, or one frame cut from a stream).
    pub(crate) fn parse(buf: &'a [u8]) -> Result<Self, ParseError> {
        if buf.len() < HEADER_LEN || buf[0] & 0xC0 != 0 {
            return Err(ParseError::NotStun);
        }
        let length = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if length % 4 != 0 || buf.len() != HEADER_LEN + length {
            return Err(ParseError::BadLength);
        }
        let kind = u16::from_be_bytes([buf[0], buf[1]]);
        let class = Class::of_type(kind);
        let method = Method((kind & 0x000F) | ((kind & 0x00E0) >> 1) | ((kind & 0x3E00) >> 2));
        let mut transaction = [0; 16];
        transaction.copy_from_slice(&buf[4..HEADER_LEN]);
        let message = Self {
            raw: buf,
            method,
            class,
            transaction: TransactionId(transaction),
        };
        let mut fingerprint = None;
        for attribute in message.walk() {
            let attribute = attribute?;
            if fingerprint.is_some() {
                return Err(ParseError::AfterFingerprint);
            }
            if attribute.kind == attr::FINGERPRINT {
                fingerprint = Some(attribute);
            }
        }
        if let Some(attribute) = fingerprint {
            let expected = fingerprint_of(&buf[..attribute.offset], attribute.offset + 8);
            if attribute.value != expected.to_be_bytes() {
                return Err(ParseError::BadFingerprint);
            }
        }
        Ok(message)
    }

    fn walk(&self) -> AttributeWalk<'a> {
        AttributeWalk {
            raw: self.raw,
            offset: HEADER_LEN,
        }
    }

    /// The attributes, in order. Safe to unwrap each item: `parse` walked them all.
    pub(crate) fn attributes(&self) -> impl Iterator<Item = Attribute<'a>> + use<'a> {
        self.walk().map_while(Result::ok)
    }

    /// The first attribute of `kind` that integrity covers (RFC 8489 §14.5,
    /// §14.6: after MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256 and
    /// FINGERPRINT count, after MESSAGE-INTEGRITY-SHA256 only FINGERPRINT).
    pub(crate) fn get(&self, kind: u16) -> Option<&'a [u8]> {
        self.find(kind).map(|attribute| attribute.value)
    }

    fn find(&self, kind: u16) -> Option<Attribute<'a>> {
        let mut after_integrity = false;
        for attribute in self.attributes() {
            let seen = match attribute.kind {
                attr::FINGERPRINT | attr::MESSAGE_INTEGRITY_SHA256 => true,
                _ => !after_integrity,
            };
            if attribute.kind == kind && seen {
                return Some(attribute);
            }
            match attribute.kind {
                attr::MESSAGE_INTEGRITY => after_integrity = true,
                attr::MESSAGE_INTEGRITY_SHA256 if kind != attr::FINGERPRINT => return None,
                _ => {}
            }
        }
        None
    }

    /// The whole message's length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.raw.len()
    }

    pub(crate) fn has_fingerprint(&self) -> bool {
        self.attributes().any(|a| a.kind == attr::FINGERPRINT)
    }

    pub(crate) fn is_classic(&self) -> bool {
        self.transaction.is_classic()
    }

    /// Comprehension-required attributes this server does not know (RFC 8489
    /// §15); a listener with `nat_discovery` (RFC 5780) knows CHANGE-REQUEST
    /// with flags and RESPONSE-PORT besides.
    pub(crate) fn unknown_required(&self, nat_discovery: bool) -> Vec<u16> {
        let mut unknown = Vec::new();
        for attribute in self.attributes() {
            let change_asked = attribute.kind == attr::CHANGE_REQUEST
                && attribute.value.iter().any(|&byte| byte != 0);
            let known = if nat_discovery {
                attr::is_known(attribute.kind) || attribute.kind == attr::RESPONSE_PORT
            } else {
                attr::is_known(attribute.kind) && !change_asked
            };
            if attribute.kind < 0x8000 && !known {
                unknown.push(attribute.kind);
            }
            if is_integrity(attribute.kind) {
                break;
            }
        }
        unknown
    }

    /// Checks MESSAGE-INTEGRITY (HMAC-SHA1 with the long-term `key`) in constant time.
    pub(crate) fn integrity_matches(&self, key: &[u8]) -> bool {
        let Some(attribute) = self.find(attr::MESSAGE_INTEGRITY) else {
            return false;
        };
        if attribute.value.len() != INTEGRITY_LEN {
            return false;
        }
        let covered = &self.raw[..attribute.offset];
        let length_to = attribute.offset + ATTR_HEADER_LEN + INTEGRITY_LEN;
        let mac = mac_of::<Hmac<Sha1>>(covered, length_to, key).finalize();
        bool::from(mac.into_bytes().ct_eq(attribute.value))
    }

    /// Checks MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256 with `key`) in constant
    /// time; a value truncated as RFC 8489 §14.6 allows (at least 16 bytes,
    /// a multiple of 4) is compared with as many leading bytes of the HMAC.
    pub(crate) fn integrity_sha256_matches(&self, key: &[u8]) -> bool {
        let Some(attribute) = self.find(attr::MESSAGE_INTEGRITY_SHA256) else {
            return false;
        };
        let len = attribute.value.len();
        if !(INTEGRITY_SHA256_MIN_LEN..=INTEGRITY_SHA256_LEN).contains(&len) || len % 4 != 0 {
            return false;
        }
        let covered = &self.raw[..attribute.offset];
        let length_to = attribute.offset + ATTR_HEADER_LEN + len;
        let mac = mac_of::<Hmac<Sha256>>(covered, length_to, key)
            .finalize()
            .into_bytes();
        bool::from(mac[..len].ct_eq(attribute.value))
    }

    /// XOR-PEER-ADDRESS, XOR-MAPPED-ADDRESS, XOR-RELAYED-ADDRESS values decoded.
    pub(crate) fn xor_address(&self, value: &[u8]) -> Option<SocketAddr> {
        decode_xor_address(value, &self.transaction)
    }

    /// All values of `kind` before the integrity attributes (CreatePermission may carry several peers).
    pub(crate) fn all(&self, kind: u16) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        self.attributes()
            .take_while(|a| !is_integrity(a.kind))
            .filter(move |a| a.kind == kind)
            .map(|a| a.value)
    }
}

struct AttributeWalk<'a> {
    raw: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for AttributeWalk<'a> {
    type Item = Result<Attribute<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.raw.get(self.offset..)?;
        if rest.is_empty() {
            return None;
        }
        if rest.len() < ATTR_HEADER_LEN {
            self.offset = self.raw.len();
            return Some(Err(ParseError::BadAttribute));
        }
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let length = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let padded = length.next_multiple_of(4);
        if rest.len() < ATTR_HEADER_LEN + padded {
            self.offset = self.raw.len();
            return Some(Err(ParseError::BadAttribute));
        }
        let attribute = Attribute {
            kind,
            value: &rest[ATTR_HEADER_LEN..ATTR_HEADER_LEN + length],
            offset: self.offset,
        };
        self.offset += ATTR_HEADER_LEN + padded;
        Some(Ok(attribute))
    }
}

fn is_integrity(kind: u16) -> bool {
    kind == attr::MESSAGE_INTEGRITY || kind == attr::MESSAGE_INTEGRITY_SHA256
}

/// An HMAC fed `covered` with the header length field replaced by
/// `length_to` − 20, as RFC 8489 §14.5 and §14.6 prescribe.
fn mac_of<M: Mac + KeyInit>(covered: &[u8], length_to: usize, key: &[u8]) -> M {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "stun messages are < 64 KiB"
    )]
    let length = (length_to - HEADER_LEN) as u16;
    let mut mac = <M as Mac>::new_from_slice(key).expect("hmac accepts keys of any length");
    mac.update(&covered[..2]);
    mac.update(&length.to_be_bytes());
    mac.update(&covered[4..]);
    mac
}

fn fingerprint_of(covered: &[u8], length_to: usize) -> u32 {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "stun messages are < 64 KiB"
    )]
    let length = (length_to - HEADER_LEN) as u16;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&covered[..2]);
    crc.update(&length.to_be_bytes());
    crc.update(&covered[4..]);
    crc.finalize() ^ FINGERPRINT_XOR
}

fn decode_xor_address(value: &[u8], transaction: &TransactionId) -> Option<SocketAddr> {
    if value.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([value[2], value[3]]) ^ 0x2112;
    let ip = match (value[1], value.len()) {
        (0x01, 8) => {
            let mut octets = [0; 4];
            for (i, octet) in octets.iter_mut().enumerate() {
                *octet = value[4 + i] ^ transaction.0[i];
            }
            IpAddr::from(octets)
        }
        (0x02, 20) => {
            let mut octets = [0; 16];
            for (i, octet) in octets.iter_mut().enumerate() {
                *octet = value[4 + i] ^ transaction.0[i];
            }
            IpAddr::from(octets)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The size of a Data indication (XOR-PEER-ADDRESS, DATA) carrying
/// `data_len` bytes from `peer`, or None when its length field cannot hold it:
/// the largest datagram an IPv6 peer can send does not fit.
pub(crate) fn data_indication_len(peer: SocketAddr, data_len: usize) -> Option<usize> {
    let address_len = if peer.is_ipv4() { 8 } else { 20 };
    let body = ATTR_HEADER_LEN + address_len + ATTR_HEADER_LEN + data_len.next_multiple_of(4);
    (body <= MAX_BODY_LEN).then_some(HEADER_LEN + body)
}

/// Builds one message into a caller-owned buffer (cleared first), so a loop
/// can reuse one allocation for every reply.
pub(crate) struct MessageBuilder<'b> {
    buf: &'b mut Vec<u8>,
    transaction: TransactionId,
}

impl<'b> MessageBuilder<'b> {
    pub(crate) fn new(
        buf: &'b mut Vec<u8>,
        method: Method,
        class: Class,
        transaction: TransactionId,
    ) -> Self {
        let m = method.0;
        let kind = (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | class.bits();
        buf.clear();
        buf.extend_from_slice(&kind.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&transaction.0);
        Self { buf, transaction }
    }

    /// A response to `request`, same method and transaction.
    pub(crate) fn reply(buf: &'b mut Vec<u8>, request: &Message<'_>, class: Class) -> Self {
        Self::new(buf, request.method, class, request.transaction)
    }

    /// The message written so far, in bytes.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn add(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "callers pass values < 64 KiB"
        )]
        let length = value.len() as u16;
        self.buf.extend_from_slice(&kind.to_be_bytes());
        self.buf.extend_from_slice(&length.to_be_bytes());
        self.buf.extend_from_slice(value);
        let padding = value.len().next_multiple_of(4) - value.len();
        self.buf.extend_from_slice(&[0; 3][..padding]);
        self.set_length();
        self
    }

    pub(crate) fn add_u32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.add(kind, &value.to_be_bytes())
    }

    /// An address attribute XORed with the magic cookie and transaction (RFC 8489 §14.2).
    pub(crate) fn add_xor_address(&mut self, kind: u16, address: SocketAddr) -> &mut Self {
        let mut value = [0u8; 20];
        let len = encode_address(&mut value, address);
        let port = address.port() ^ 0x2112;
        value[2..4].copy_from_slice(&port.to_be_bytes());
        for (i, byte) in value[4..len].iter_mut().enumerate() {
            *byte ^= self.transaction.0[i];
        }
        self.add(kind, &value[..len])
    }

    /// A plain address attribute (MAPPED-ADDRESS for classic clients).
    pub(crate) fn add_address(&mut self, kind: u16, address: SocketAddr) -> &mut Self {
        let mut value = [0u8; 20];
        let len = encode_address(&mut value, address);
        self.add(kind, &value[..len])
    }

    /// ERROR-CODE with the standard reason phrase (RFC 8489 §14.8).
    pub(crate) fn add_error(&mut self, code: u16, reason: &str) -> &mut Self {
        self.add(attr::ERROR_CODE, &error_value(0, code, reason))
    }

    /// ADDRESS-ERROR-CODE (RFC 8656 §18.13): why the `family` (an
    /// ADDITIONAL-ADDRESS-FAMILY value) was not allocated.
    pub(crate) fn add_address_error(&mut self, family: u8, code: u16, reason: &str) -> &mut Self {
        self.add(attr::ADDRESS_ERROR_CODE, &error_value(family, code, reason))
    }

    /// MESSAGE-INTEGRITY over everything so far.
    pub(crate) fn add_integrity(&mut self, key: &[u8]) -> &mut Self {
        let length_to = self.buf.len() + ATTR_HEADER_LEN + INTEGRITY_LEN;
        let mac = mac_of::<Hmac<Sha1>>(self.buf, length_to, key).finalize();
        self.add(attr::MESSAGE_INTEGRITY, &mac.into_bytes())
    }

    /// MESSAGE-INTEGRITY-SHA256 over everything so far, never truncated.
    pub(crate) fn add_integrity_sha256(&mut self, key: &[u8]) -> &mut Self {
        let length_to = self.buf.len() + ATTR_HEADER_LEN + INTEGRITY_SHA256_LEN;
        let mac = mac_of::<Hmac<Sha256>>(self.buf, length_to, key).finalize();
        self.add(attr::MESSAGE_INTEGRITY_SHA256, &mac.into_bytes())
    }

    pub(crate) fn add_fingerprint(&mut self) -> &mut Self {
        let fingerprint = fingerprint_of(self.buf, self.buf.len() + 8);
        self.add_u32(attr::FINGERPRINT, fingerprint)
    }

    /// Callers check sizes that depend on received data first
    /// ([`data_indication_len`]): a wrapped length field breaks stream framing.
    fn set_length(&mut self) {
        debug_assert!(self.buf.len() - HEADER_LEN <= MAX_BODY_LEN);
        #[expect(clippy::cast_possible_truncation, reason = "messages stay < 64 KiB")]
        let length = (self.buf.len() - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&length.to_be_bytes());
    }
}

/// Family, port and address bytes; returns the used length (8 or 20).
fn encode_address(value: &mut [u8; 20], address: SocketAddr) -> usize {
    value[2..4].copy_from_slice(&address.port().to_be_bytes());
    match address.ip() {
        IpAddr::V4(ip) => {
            value[1] = 0x01;
            value[4..8].copy_from_slice(&ip.octets());
            8
        }
        IpAddr::V6(ip) => {
            value[1] = 0x02;
            value[4..20].copy_from_slice(&ip.octets());
            20
        }
    }
}

/// An ERROR-CODE value, or ADDRESS-ERROR-CODE's with `family` in its first byte.
fn error_value(family: u8, code: u16, reason: &str) -> Vec<u8> {
    let mut value = Vec::with_capacity(4 + reason.len());
    #[expect(clippy::cast_possible_truncation, reason = "code / 100 is 3..=6")]
    let class = (code / 100) as u8;
    let number = (code % 100) as u8;
    value.extend_from_slice(&[family, 0, class, number]);
    value.extend_from_slice(reason.as_bytes());
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_indication_fits_only_when_its_length_field_can_say_so() {
        let v4: SocketAddr = "192.0.2.1:9".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        assert_eq!(data_indication_len(v4, 170), Some(20 + 12 + 4 + 172));
        // Every IPv4 datagram fits; the largest IPv6 ones do not.
        assert_eq!(data_indication_len(v4, 65_507), Some(20 + 0xFFF4));
        assert_eq!(data_indication_len(v6, 65_504), Some(20 + 0xFFFC));
        assert_eq!(data_indication_len(v6, 65_505), None);
        assert_eq!(data_indication_len(v6, 65_527), None);
    }

    fn tid() -> TransactionId {
        let mut t = [7u8; 16];
        t[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        TransactionId(t)
    }

    #[test]
    fn built_message_parses_back_with_integrity_and_fingerprint() {
        let mut buf = Vec::new();
        let peer: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        MessageBuilder::new(&mut buf, Method::ALLOCATE, Class::Success, tid())
            .add_xor_address(attr::XOR_RELAYED_ADDRESS, peer)
            .add_u32(attr::LIFETIME, 600)
            .add_integrity(b"key")
            .add_fingerprint();
        let message = Message::parse(&buf).unwrap();
        assert_eq!(message.method, Method::ALLOCATE);
        assert_eq!(message.class, Class::Success);
        let value = message.get(attr::XOR_RELAYED_ADDRESS).unwrap();
        assert_eq!(message.xor_address(value), Some(peer));
        assert!(message.integrity_matches(b"key"));
        assert!(!message.integrity_matches(b"other"));
        assert!(message.has_fingerprint());
    }

    #[test]
    fn corrupted_fingerprint_is_refused() {
        let mut buf = Vec::new();
        MessageBuilder::new(&mut buf, Method::BINDING, Class::Request, tid()).add_fingerprint();
        let last = buf.len() - 1;
        buf[last] ^= 1;
        assert_eq!(
            Message::parse(&buf).unwrap_err(),
            ParseError::BadFingerprint
        );
    }

    #[test]
    fn truncated_and_overlong_inputs_are_refused() {
        let mut buf = Vec::new();
        MessageBuilder::new(&mut buf, Method::BINDING, Class::Request, tid())
            .add_u32(attr::LIFETIME, 1);
        for cut in 0..buf.len() {
            assert!(Message::parse(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = buf.clone();
        longer.push(0);
        assert!(Message::parse(&longer).is_err());
        // An attribute length pointing past the end.
        let mut bad = buf.clone();
        bad[HEADER_LEN + 3] = 200;
        assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::BadAttribute);
    }

    fn unhex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    const RFC5769_PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

    #[test]
    fn rfc5769_sample_request_checks() {
        // RFC 5769 §2.1: short-term credentials, SOFTWARE, PRIORITY, ICE-CONTROLLED.
        let bytes = unhex(
            "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e2074657374
             20636c69656e74002400046e0001ff80290008932ff9b151263b360006000965767
             46a3a68367659202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a28
             0280004e57a3bcf",
        );
        let message = Message::parse(&bytes).unwrap();
        assert_eq!(message.get(attr::USERNAME), Some(&b"evtj:h6vY"[..]));
        assert!(message.integrity_matches(RFC5769_PASSWORD));
        assert!(!message.integrity_matches(b"VOkJxbRl1RmTxUk/WvJxBu"));
        assert!(message.has_fingerprint());
        // Unknown comprehension-optional ICE-CONTROLLED aside, PRIORITY is known.
        assert!(message.unknown_required(false).is_empty());
    }

    #[test]
    fn rfc5769_sample_responses_check() {
        // RFC 5769 §2.2 and §2.3: 192.0.2.1 and 2001:db8:1234:5678:11:2233:4455:6677, port 32853.
        let v4 = unhex(
            "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f
             7220002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53
             f06be7d780280004c07d4c96",
        );
        let v6 = unhex(
            "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f
             7220002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e
             4be67bf11784c97c8292c275bfe3ed4180280004c8fb0b4c",
        );
        for (bytes, expected) in [
            (v4, "192.0.2.1:32853"),
            (v6, "[2001:db8:1234:5678:11:2233:4455:6677]:32853"),
        ] {
            let message = Message::parse(&bytes).unwrap();
            assert_eq!(message.class, Class::Success);
            let value = message.get(attr::XOR_MAPPED_ADDRESS).unwrap();
            assert_eq!(message.xor_address(value), Some(expected.parse().unwrap()));
            assert!(message.integrity_matches(RFC5769_PASSWORD), "{expected}");
        }
    }

    /// The RFC 5769 and RFC 8489 long-term vectors' user, realm and
    /// password (after SASLprep / OpaqueString).
    const MATRIX_USER: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";

    fn matrix_hash<D: md5::Digest>(parts: &str) -> Vec<u8> {
        D::digest(parts.as_bytes()).to_vec()
    }

    #[test]
    fn rfc5769_long_term_request_checks_with_the_md5_key() {
        // RFC 5769 §2.4.
        let bytes = unhex(
            "000100602112a44278ad3433c6ad72c029da412e00060012e3839ee38388e383aae3
             8383e382afe382b900000015001c662f2f3439396b393534643 64f4c33346f4c39
             46535476793634734100140 00b6578616d706c652e6f7267000008001 4f67024656
             dd64a3e02b8e0712e85c9a28ca89666",
        );
        let message = Message::parse(&bytes).unwrap();
        assert_eq!(message.get(attr::USERNAME), Some(MATRIX_USER.as_bytes()));
        assert_eq!(
            message.get(attr::NONCE),
            Some(&b"f//499k954d6OL34oL9FSTvy64sA"[..])
        );
        let key = matrix_hash::<md5::Md5>(&format!("{MATRIX_USER}:example.org:TheMatrIX"));
        assert!(message.integrity_matches(&key));
    }

    /// RFC 8489 Appendix B.1 as its verified erratum corrects it:
    /// the published message length (0x9c) is wrong and PASSWORD-ALGORITHM
    /// (SHA-256) is missing, so its MESSAGE-INTEGRITY-SHA256 matches nothing.
    const RFC8489_B1: &str = "
        000100902112a44278ad3433c6ad72c029da412e
        001e00204a3cf38fef6992bda952c6780417da0f24819415569e60b205c46e41407f1704
        001500296f624d61744a6f73324141414366 2f2f343939 6b3935346436 4f4c33346f4c39
        46535476793634734100 0000
        0014000b6578616d706c652e6f726700
        001d000400020000
        001c0020b5c7bf005b6c52a21c51c5e892f81924136296cb927c43149309278cc6518e65";

    #[test]
    fn rfc8489_sha256_request_checks_and_rebuilds() {
        let bytes = unhex(RFC8489_B1);
        let message = Message::parse(&bytes).unwrap();
        let userhash = matrix_hash::<Sha256>(&format!("{MATRIX_USER}:example.org"));
        assert_eq!(message.get(attr::USERHASH), Some(userhash.as_slice()));
        assert_eq!(
            message.get(attr::PASSWORD_ALGORITHM),
            Some(&[0, 2, 0, 0][..])
        );
        let key = matrix_hash::<Sha256>(&format!("{MATRIX_USER}:example.org:TheMatrIX"));
        assert!(message.integrity_sha256_matches(&key));
        assert!(!message.integrity_sha256_matches(&key[1..]));
        assert!(!message.integrity_matches(&key), "no MESSAGE-INTEGRITY");

        let mut transaction = [0; 16];
        transaction.copy_from_slice(&bytes[4..20]);
        let mut rebuilt = Vec::new();
        MessageBuilder::new(
            &mut rebuilt,
            Method::BINDING,
            Class::Request,
            TransactionId(transaction),
        )
        .add(attr::USERHASH, &userhash)
        .add(attr::NONCE, b"obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA")
        .add(attr::REALM, b"example.org")
        .add(attr::PASSWORD_ALGORITHM, &[0, 2, 0, 0])
        .add_integrity_sha256(&key);
        assert_eq!(rebuilt, bytes);

        // As published: the length field says 20 bytes more than there are.
        let mut published = bytes.clone();
        published.drain(136..144);
        published[2..4].copy_from_slice(&[0x00, 0x9c]);
        assert_eq!(
            Message::parse(&published).unwrap_err(),
            ParseError::BadLength
        );
    }

    /// A request signed with MESSAGE-INTEGRITY-SHA256 cut to `len` bytes,
    /// the header length counting the cut attribute as §14.6 says.
    fn truncated(len: usize) -> Vec<u8> {
        let mut buf = Vec::new();
        MessageBuilder::new(&mut buf, Method::ALLOCATE, Class::Request, tid())
            .add(attr::USERNAME, b"user");
        let length_to = buf.len() + ATTR_HEADER_LEN + len;
        let mac = mac_of::<Hmac<Sha256>>(&buf, length_to, b"key")
            .finalize()
            .into_bytes();
        MessageBuilder {
            buf: &mut buf,
            transaction: tid(),
        }
        .add(attr::MESSAGE_INTEGRITY_SHA256, &mac[..len.min(32)]);
        buf
    }

    #[test]
    fn truncated_sha256_integrity_is_accepted_down_to_16_bytes() {
        for len in [16, 20, 24, 28, 32] {
            let buf = truncated(len);
            let message = Message::parse(&buf).unwrap();
            assert!(message.integrity_sha256_matches(b"key"), "{len} bytes");
            assert!(!message.integrity_sha256_matches(b"other"), "{len} bytes");
        }
        for len in [4, 12, 18] {
            let buf = truncated(len);
            let message = Message::parse(&buf).unwrap();
            assert!(!message.integrity_sha256_matches(b"key"), "{len} bytes");
        }
    }

    #[test]
    fn both_integrity_attributes_sign_and_check() {
        let mut buf = Vec::new();
        MessageBuilder::new(&mut buf, Method::REFRESH, Class::Success, tid())
            .add_u32(attr::LIFETIME, 600)
            .add_integrity(b"key")
            .add_integrity_sha256(b"key")
            .add_fingerprint();
        let message = Message::parse(&buf).unwrap();
        assert!(message.integrity_matches(b"key"));
        assert!(message.integrity_sha256_matches(b"key"));
        assert_eq!(message.get(attr::LIFETIME), Some(&600u32.to_be_bytes()[..]));
    }

    #[test]
    fn attributes_after_integrity_are_ignored_and_fingerprint_is_last() {
        let mut buf = Vec::new();
        MessageBuilder::new(&mut buf, Method::REFRESH, Class::Request, tid())
            .add_integrity_sha256(b"key")
            .add_u32(attr::LIFETIME, 600)
            .add_integrity(b"key");
        let message = Message::parse(&buf).unwrap();
        assert_eq!(
            message.get(attr::LIFETIME),
            None,
            "after MESSAGE-INTEGRITY-SHA256"
        );
        assert!(
            !message.integrity_matches(b"key"),
            "MESSAGE-INTEGRITY after MESSAGE-INTEGRITY-SHA256 does not count"
        );
        assert_eq!(message.all(attr::LIFETIME).count(), 0);

        let mut buf = Vec::new();
        MessageBuilder::new(&mut buf, Method::REFRESH, Class::Request, tid())
            .add_integrity(b"key")
            .add_u32(attr::LIFETIME, 600)
            .add_integrity_sha256(b"key");
        let message = Message::parse(&buf).unwrap();
        assert_eq!(message.get(attr::LIFETIME), None, "after MESSAGE-INTEGRITY");
        assert!(message.integrity_sha256_matches(b"key"));

        let mut buf = Vec::new();
        MessageBuilder::new(&mut buf, Method::BINDING, Class::Request, tid())
            .add_fingerprint()
            .add_u32(attr::LIFETIME, 600);
        assert_eq!(
            Message::parse(&buf).unwrap_err(),
            ParseError::AfterFingerprint
        );
    }
}
