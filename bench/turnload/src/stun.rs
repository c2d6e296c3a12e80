//! The few STUN/TURN messages the benchmark needs (RFC 8489, RFC 8656): requests
//! with the long-term credential mechanism, Send indications, and parsing of
//! responses, Data indications and ChannelData.

use std::net::{Ipv4Addr, SocketAddrV4};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

pub const MAGIC: u32 = 0x2112_A442;
pub const HEADER: usize = 20;

pub const ALLOCATE: u16 = 0x0003;
pub const REFRESH: u16 = 0x0004;
pub const SEND_INDICATION: u16 = 0x0016;
pub const DATA_INDICATION: u16 = 0x0017;
pub const CREATE_PERMISSION: u16 = 0x0008;
pub const CHANNEL_BIND: u16 = 0x0009;
/// Class bits of a message type: 0x0100 success response, 0x0110 error response.
pub const SUCCESS: u16 = 0x0100;
pub const ERROR: u16 = 0x0110;

const USERNAME: u16 = 0x0006;
const MESSAGE_INTEGRITY: u16 = 0x0008;
const ERROR_CODE: u16 = 0x0009;
const CHANNEL_NUMBER: u16 = 0x000C;
const LIFETIME: u16 = 0x000D;
const XOR_PEER_ADDRESS: u16 = 0x0012;
pub const DATA: u16 = 0x0013;
const REALM: u16 = 0x0014;
const NONCE: u16 = 0x0015;
const XOR_RELAYED_ADDRESS: u16 = 0x0016;
const REQUESTED_TRANSPORT: u16 = 0x0019;

pub type Tid = [u8; 12];

/// Long-term credentials as the server's 401 gave them.
#[derive(Clone, Default)]
pub struct Auth {
    pub user: String,
    pub realm: Vec<u8>,
    pub nonce: Vec<u8>,
    pub key: [u8; 16],
}

impl Auth {
    /// key = MD5(username ":" realm ":" password), RFC 8489 section 9.2.2.
    pub fn set_realm(&mut self, realm: &[u8], password: &str) {
        let mut md5 = Md5::new();
        md5.update(self.user.as_bytes());
        md5.update(b":");
        md5.update(realm);
        md5.update(b":");
        md5.update(password.as_bytes());
        self.key = md5.finalize().into();
        self.realm = realm.to_vec();
    }
}

/// A message being built. Requests are built once per transaction, so a Vec is fine here.
pub struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    pub fn new(kind: u16, tid: &Tid) -> Builder {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&kind.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC.to_be_bytes());
        buf.extend_from_slice(tid);
        Builder { buf }
    }

    pub fn attr(mut self, kind: u16, value: &[u8]) -> Builder {
        self.buf.extend_from_slice(&kind.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        self
    }

    pub fn requested_udp(self) -> Builder {
        self.attr(REQUESTED_TRANSPORT, &[17, 0, 0, 0])
    }

    pub fn lifetime(self, secs: u32) -> Builder {
        self.attr(LIFETIME, &secs.to_be_bytes())
    }

    pub fn channel(self, number: u16) -> Builder {
        let n = number.to_be_bytes();
        self.attr(CHANNEL_NUMBER, &[n[0], n[1], 0, 0])
    }

    pub fn peer(self, peer: SocketAddrV4) -> Builder {
        self.attr(XOR_PEER_ADDRESS, &xor_address(peer))
    }

    /// USERNAME, REALM, NONCE and MESSAGE-INTEGRITY (HMAC-SHA1 over the message with
    /// its length already counting the MESSAGE-INTEGRITY attribute), then the length.
    pub fn sign(self, auth: &Auth) -> Vec<u8> {
        let mut b = self
            .attr(USERNAME, auth.user.as_bytes())
            .attr(REALM, &auth.realm)
            .attr(NONCE, &auth.nonce);
        let len = (b.buf.len() - HEADER + 24) as u16;
        b.buf[2..4].copy_from_slice(&len.to_be_bytes());
        let mut mac = Hmac::<Sha1>::new_from_slice(&auth.key).expect("any key length");
        mac.update(&b.buf);
        let tag = mac.finalize().into_bytes();
        b.attr(MESSAGE_INTEGRITY, &tag).finish()
    }

    pub fn finish(mut self) -> Vec<u8> {
        let len = (self.buf.len() - HEADER) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
        self.buf
    }
}

fn xor_address(a: SocketAddrV4) -> [u8; 8] {
    let port = a.port() ^ (MAGIC >> 16) as u16;
    let ip = u32::from(*a.ip()) ^ MAGIC;
    let (p, i) = (port.to_be_bytes(), ip.to_be_bytes());
    [0, 1, p[0], p[1], i[0], i[1], i[2], i[3]]
}

fn unxor_address(v: &[u8]) -> Option<SocketAddrV4> {
    if v.len() < 8 || v[1] != 1 {
        return None; // not IPv4
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC >> 16) as u16;
    let ip = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ MAGIC;
    Some(SocketAddrV4::new(Ipv4Addr::from(ip), port))
}

/// A STUN message from the server: its type, transaction ID and attributes.
pub struct Parsed<'a> {
    pub kind: u16,
    pub tid: Tid,
    attrs: &'a [u8],
}

/// `None` unless `buf` is a whole STUN message with the magic cookie.
pub fn parse(buf: &[u8]) -> Option<Parsed<'_>> {
    if buf.len() < HEADER || buf[0] & 0xC0 != 0 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) != MAGIC || buf.len() < HEADER + len {
        return None;
    }
    let mut tid = [0; 12];
    tid.copy_from_slice(&buf[8..20]);
    Some(Parsed {
        kind: u16::from_be_bytes([buf[0], buf[1]]),
        tid,
        attrs: &buf[HEADER..HEADER + len],
    })
}

impl<'a> Parsed<'a> {
    pub fn get(&self, kind: u16) -> Option<&'a [u8]> {
        let mut rest = self.attrs;
        // Each step consumes at least 4 bytes, so the walk ends.
        while rest.len() >= 4 {
            let t = u16::from_be_bytes([rest[0], rest[1]]);
            let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
            let value = rest.get(4..4 + len)?;
            if t == kind {
                return Some(value);
            }
            rest = rest.get((4 + len).next_multiple_of(4)..).unwrap_or(&[]);
        }
        None
    }

    /// ERROR-CODE as class * 100 + number, 0 if absent.
    pub fn error_code(&self) -> u16 {
        self.get(ERROR_CODE)
            .filter(|v| v.len() >= 4)
            .map_or(0, |v| u16::from(v[2] & 7) * 100 + u16::from(v[3]))
    }

    pub fn realm(&self) -> Option<&'a [u8]> {
        self.get(REALM)
    }

    pub fn nonce(&self) -> Option<&'a [u8]> {
        self.get(NONCE)
    }

    pub fn relayed(&self) -> Option<SocketAddrV4> {
        self.get(XOR_RELAYED_ADDRESS).and_then(unxor_address)
    }
}

/// The payload of a datagram from the server: ChannelData or a Data indication.
pub fn relayed_payload(buf: &[u8]) -> Option<&[u8]> {
    match buf.first()? >> 6 {
        // ChannelData: channel numbers start with 0b01.
        1 if buf.len() >= 4 => {
            let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
            buf.get(4..4 + len)
        }
        0 => {
            let msg = parse(buf)?;
            if msg.kind != DATA_INDICATION {
                return None;
            }
            msg.get(DATA)
        }
        _ => None,
    }
}

/// The bytes put before the payload of every data-path datagram of one client,
/// so that sending only writes the payload after them.
pub fn data_prefix(channel: Option<u16>, peer: SocketAddrV4, payload_len: usize) -> Vec<u8> {
    match channel {
        Some(number) => {
            let mut v = number.to_be_bytes().to_vec();
            v.extend_from_slice(&(payload_len as u16).to_be_bytes());
            v
        }
        None => {
            // Send indication: XOR-PEER-ADDRESS then DATA, whose value is the payload.
            let mut v = Builder::new(SEND_INDICATION, &[0; 12]).peer(peer).finish();
            let total = v.len() - HEADER + 4 + payload_len.next_multiple_of(4);
            v[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            v.extend_from_slice(&DATA.to_be_bytes());
            v.extend_from_slice(&(payload_len as u16).to_be_bytes());
            v
        }
    }
}

/// Datagram length for a payload after `data_prefix`: Send indications pad DATA to 4 bytes.
pub fn data_len(channel: Option<u16>, prefix: usize, payload_len: usize) -> usize {
    match channel {
        Some(_) => prefix + payload_len,
        None => prefix + payload_len.next_multiple_of(4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_address_round_trips() {
        let a = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 13490);
        assert_eq!(unxor_address(&xor_address(a)), Some(a));
    }

    #[test]
    fn channel_data_payload() {
        let mut d = data_prefix(Some(0x4001), SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1), 3);
        d.extend_from_slice(b"abc");
        assert_eq!(relayed_payload(&d), Some(&b"abc"[..]));
    }

    #[test]
    fn signed_request_parses() {
        let mut auth = Auth {
            user: "bench".into(),
            nonce: b"n".to_vec(),
            ..Auth::default()
        };
        auth.set_realm(b"bench.local", "bench");
        let msg = Builder::new(ALLOCATE, &[7; 12]).requested_udp().sign(&auth);
        let p = parse(&msg).unwrap();
        assert_eq!(p.kind, ALLOCATE);
        assert_eq!(p.realm(), Some(&b"bench.local"[..]));
        assert_eq!(p.get(MESSAGE_INTEGRITY).map(<[u8]>::len), Some(20));
    }
}
