//! A STUN/TURN client over a plain UDP socket, built on the `stun` crate and
//! the `turn` crate's attribute types (a codec icegate does not share): raw
//! requests and indications, and the checks the tests make on responses.
//! Every read waits at most [`READ_TIMEOUT`].

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use stun::agent::TransactionId;
use stun::attributes::{ATTR_MESSAGE_INTEGRITY, ATTR_NONCE, ATTR_REALM, ATTR_USERNAME, AttrType};
use stun::error_code::ErrorCodeAttribute;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter,
    METHOD_ALLOCATE, METHOD_BINDING, METHOD_SEND, Message, MessageType, Method, Setter,
};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use turn::proto::PROTO_UDP;
use turn::proto::data::Data;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;

use super::{PASSWORD, REALM, SECRET, USER};

/// The longest any read waits for the daemon.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Credentials

#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

pub fn alice() -> Credentials {
    Credentials {
        username: USER.to_owned(),
        password: PASSWORD.to_owned(),
    }
}

/// The static user with another password.
pub fn alice_with(password: &str) -> Credentials {
    Credentials {
        username: USER.to_owned(),
        password: password.to_owned(),
    }
}

/// TURN REST credentials for `user` that expire at `expiry` (unix seconds):
/// username `expiry:user`, password base64(HMAC-SHA1(secret, username)).
pub fn rest_user(user: &str, expiry: u64) -> Credentials {
    let username = format!("{expiry}:{user}");
    let password = super::rest_password(SECRET, &username);
    Credentials { username, password }
}

pub fn integrity(credentials: &Credentials) -> MessageIntegrity {
    MessageIntegrity::new_long_term_integrity(
        credentials.username.clone(),
        REALM.to_owned(),
        credentials.password.clone(),
    )
}

// ---------------------------------------------------------------------------------------------
// Messages

/// A raw attribute of any type, for types the `stun` crate has no setter for.
pub struct RawAttribute(pub u16, pub Vec<u8>);

impl Setter for RawAttribute {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        m.add(AttrType(self.0), &self.1);
        Ok(())
    }
}

pub type Attrs = Vec<Box<dyn Setter>>;

pub fn udp_transport() -> Box<dyn Setter> {
    Box::new(RequestedTransport {
        protocol: PROTO_UDP,
    })
}

pub fn peer(addr: SocketAddr) -> Box<dyn Setter> {
    Box::new(PeerAddress {
        ip: addr.ip(),
        port: addr.port(),
    })
}

/// A message with a fresh transaction ID, `attrs`, then FINGERPRINT.
pub fn build(method: Method, class: stun::message::MessageClass, attrs: Attrs) -> Message {
    let mut setters: Attrs = vec![
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(method, class)),
    ];
    setters.extend(attrs);
    setters.push(Box::new(FINGERPRINT));
    let mut message = Message::new();
    message.build(&setters).expect("build stun message");
    message
}

/// A request with long-term credentials: `attrs`, USERNAME, REALM, NONCE,
/// MESSAGE-INTEGRITY, FINGERPRINT.
pub fn build_authenticated(
    method: Method,
    attrs: Attrs,
    credentials: &Credentials,
    nonce: &str,
) -> Message {
    let mut setters: Attrs = vec![
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(method, CLASS_REQUEST)),
    ];
    setters.extend(attrs);
    setters.push(Box::new(TextAttribute::new(
        ATTR_USERNAME,
        credentials.username.clone(),
    )));
    setters.push(Box::new(TextAttribute::new(ATTR_REALM, REALM.to_owned())));
    setters.push(Box::new(TextAttribute::new(ATTR_NONCE, nonce.to_owned())));
    setters.push(Box::new(integrity(credentials)));
    setters.push(Box::new(FINGERPRINT));
    let mut message = Message::new();
    message.build(&setters).expect("build stun message");
    message
}

pub fn decode(bytes: &[u8]) -> Option<Message> {
    let mut message = Message::new();
    message.raw = bytes.to_vec();
    message.decode().ok()?;
    Some(message)
}

pub fn error_of(message: &Message) -> Option<(u16, String)> {
    let mut code = ErrorCodeAttribute::default();
    code.get_from(message).ok()?;
    Some((
        code.code.0,
        String::from_utf8_lossy(&code.reason).into_owned(),
    ))
}

pub fn text(message: &Message, attr: AttrType) -> Option<String> {
    TextAttribute::get_from_as(message, attr)
        .ok()
        .map(|t| t.text)
}

#[track_caller]
pub fn assert_error(response: &Message, code: u16, what: &str) {
    assert_eq!(
        response.typ.class,
        CLASS_ERROR_RESPONSE,
        "{what}: expected error {code}, got {} {:?}",
        response.typ,
        error_of(response)
    );
    let (got, reason) = error_of(response).unwrap_or_else(|| panic!("{what}: no ERROR-CODE"));
    assert_eq!(
        got, code,
        "{what}: expected error {code}, got {got} {reason:?}"
    );
}

#[track_caller]
pub fn assert_success(response: &Message, what: &str) {
    assert_eq!(
        response.typ.class,
        CLASS_SUCCESS_RESPONSE,
        "{what}: expected success, got {} {:?}",
        response.typ,
        error_of(response)
    );
}

/// A 401 or 438 must tell the client how to retry: REALM and a new NONCE.
#[track_caller]
pub fn assert_challenge(response: &Message, code: u16, what: &str) -> String {
    assert_error(response, code, what);
    assert_eq!(
        text(response, ATTR_REALM).as_deref(),
        Some(REALM),
        "{what}: REALM"
    );
    assert!(
        !response.contains(ATTR_MESSAGE_INTEGRITY),
        "{what}: a challenge cannot carry MESSAGE-INTEGRITY"
    );
    let nonce = text(response, ATTR_NONCE).unwrap_or_else(|| panic!("{what}: no NONCE"));
    assert!(!nonce.is_empty(), "{what}: empty NONCE");
    nonce
}

pub fn xor_peer(message: &Message) -> SocketAddr {
    let mut address = PeerAddress::default();
    address.get_from(message).expect("XOR-PEER-ADDRESS");
    SocketAddr::new(address.ip, address.port)
}

// ---------------------------------------------------------------------------------------------
// A client over a plain UDP socket

pub struct Client {
    pub socket: UdpSocket,
    pub server: SocketAddr,
}

impl Client {
    pub fn new(server: SocketAddr) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind client socket");
        Self { socket, server }
    }

    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("client address")
    }

    pub fn send_raw(&self, bytes: &[u8]) {
        self.socket
            .send_to(bytes, self.server)
            .expect("send to icegate");
    }

    /// The next datagram from the server within `wait`, or None.
    pub fn recv_within(&self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.socket
                .set_read_timeout(Some(left))
                .expect("set read timeout");
            match self.socket.recv_from(&mut buf) {
                Ok((len, from)) if from == self.server => return Some(buf[..len].to_vec()),
                Ok(_) => {}
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None;
                }
                Err(error) => panic!("receive from icegate: {error}"),
            }
        }
    }

    /// Sends `bytes` and returns the raw response with `transaction`.
    pub fn transact_raw(&self, bytes: &[u8], transaction: TransactionId) -> Vec<u8> {
        self.send_raw(bytes);
        self.response_to(transaction)
    }

    /// The raw response with `transaction`, for a request already sent;
    /// indications and other responses are skipped.
    pub fn response_to(&self, transaction: TransactionId) -> Vec<u8> {
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(reply) = self.recv_within(left) else {
                panic!("no response from icegate within {READ_TIMEOUT:?}");
            };
            if let Some(message) = decode(&reply)
                && message.transaction_id == transaction
                && message.typ.class != CLASS_INDICATION
            {
                return reply;
            }
        }
    }

    pub fn transact(&self, request: &Message) -> Message {
        let reply = self.transact_raw(&request.raw, request.transaction_id);
        decode(&reply).expect("the stun crate decodes icegate's response")
    }

    /// Allocate without credentials: the 401 that starts every session.
    pub fn challenge(&self) -> String {
        let request = build(METHOD_ALLOCATE, CLASS_REQUEST, vec![udp_transport()]);
        assert_challenge(
            &self.transact(&request),
            401,
            "Allocate without credentials",
        )
    }

    /// A Binding request whose success response must carry this socket's address.
    #[track_caller]
    pub fn assert_binding_works(&self) {
        let request = build(METHOD_BINDING, CLASS_REQUEST, vec![]);
        let response = self.transact(&request);
        assert_success(&response, "Binding");
        let mut mapped = XorMappedAddress::default();
        mapped.get_from(&response).expect("XOR-MAPPED-ADDRESS");
        assert_eq!(SocketAddr::new(mapped.ip, mapped.port), self.addr());
    }
}

/// A client that passed the 401 round trip: it has a nonce and credentials.
pub struct Session {
    pub client: Client,
    pub credentials: Credentials,
    pub nonce: String,
}

impl Session {
    pub fn open(server: SocketAddr, credentials: Credentials) -> Self {
        let client = Client::new(server);
        let nonce = client.challenge();
        Self {
            client,
            credentials,
            nonce,
        }
    }

    pub fn request_message(&self, method: Method, attrs: Attrs) -> Message {
        build_authenticated(method, attrs, &self.credentials, &self.nonce)
    }

    pub fn request(&self, method: Method, attrs: Attrs) -> Message {
        self.client.transact(&self.request_message(method, attrs))
    }

    /// An Allocate for UDP: the response, success or not.
    pub fn try_allocate(&self) -> Message {
        self.request(METHOD_ALLOCATE, vec![udp_transport()])
    }

    /// Allocates and returns the relayed address; the response must be a
    /// success whose MESSAGE-INTEGRITY verifies with the client's key.
    #[track_caller]
    pub fn allocate(&self) -> SocketAddr {
        let mut response = self.try_allocate();
        relayed_of(&mut response, &self.credentials)
    }
}

/// The XOR-RELAYED-ADDRESS of a successful Allocate response, after checking
/// its MESSAGE-INTEGRITY.
#[track_caller]
pub fn relayed_of(response: &mut Message, credentials: &Credentials) -> SocketAddr {
    assert_success(response, "Allocate");
    integrity(credentials)
        .check(response)
        .expect("MESSAGE-INTEGRITY of the Allocate response verifies");
    let mut relayed = RelayedAddress::default();
    relayed.get_from(response).expect("XOR-RELAYED-ADDRESS");
    SocketAddr::new(relayed.ip, relayed.port)
}

/// A Send indication to `target` carrying `data`.
pub fn send_indication(target: SocketAddr, data: &[u8]) -> Message {
    build(
        METHOD_SEND,
        CLASS_INDICATION,
        vec![peer(target), Box::new(Data(data.to_vec()))],
    )
}

/// A peer socket on 127.0.0.1 whose reads give up after `read_timeout`.
pub fn loopback_peer(read_timeout: Duration) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind peer socket");
    socket
        .set_read_timeout(Some(read_timeout))
        .expect("set read timeout");
    socket
}
