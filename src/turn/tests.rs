//! The core driven as a state machine: requests as bytes, time as an
//! argument (one base `Instant` per test plus offsets in seconds), relay
//! sockets from a stand-in that records what was bound.
//!
//! The shared harness is here; the tests are grouped by concept below.

mod allocate;
mod auth;
mod bans;
mod caps;
mod dual;
mod expiry;
mod integrity;
mod malformed;
mod peers;
mod tcp;
mod throttle;

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{CredentialStore, LongTermKey, long_term_key};
use crate::bans::Bans;
use crate::config::{Config, Transport};
use crate::reject::{Reject, RejectCounters};
use crate::turn::core::{Action, Core, Now};
use crate::turn::shared::Shared;
use crate::turn::{AllocId, FiveTuple, RelaySockets};
use crate::wire::{Class, MAGIC_COOKIE, Message, MessageBuilder, Method, TransactionId, attr};

/// Relay sockets as the core sees them: which allocation holds which
/// address, and ports another program holds (bind fails with AddrInUse).
#[derive(Default)]
struct Sockets {
    open: Vec<(AllocId, SocketAddr)>,
    taken_elsewhere: HashSet<u16>,
}

impl RelaySockets for Sockets {
    fn open(&mut self, id: AllocId, address: SocketAddr, _dont_fragment: bool) -> io::Result<()> {
        if self.taken_elsewhere.contains(&address.port()) {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        self.open.push((id, address));
        Ok(())
    }

    fn open_tcp(&mut self, id: AllocId, address: SocketAddr) -> io::Result<()> {
        self.open(id, address, false)
    }
}

/// Wall-clock seconds at offset zero of every test.
const UNIX: u64 = 1_800_000_000;
const REALM: &str = "example.org";
const SECRET: &str = "rest-secret-value";

/// A client: its 5-tuple and the credentials it signs with.
#[derive(Clone)]
struct Client {
    five_tuple: FiveTuple,
    username: String,
    key: LongTermKey,
}

impl Client {
    fn new(port: u16, username: &str, password: &str) -> Self {
        Self {
            five_tuple: FiveTuple {
                client: SocketAddr::from(([127, 0, 0, 1], port)),
                server: "127.0.0.1:3478".parse().unwrap(),
                transport: Transport::Udp,
            },
            username: username.to_owned(),
            key: long_term_key(username, REALM, password),
        }
    }

    /// The same credentials from another client address.
    fn on_port(&self, port: u16) -> Self {
        let mut other = self.clone();
        other.five_tuple.client.set_port(port);
        other
    }
}

/// The static user every test has.
fn alice() -> Client {
    Client::new(40000, "alice", "pw")
}

/// A second static user.
fn bob() -> Client {
    Client::new(40001, "bob", "pw-of-bob")
}

/// A TURN REST user whose username expires at `expiry` (unix seconds).
fn rest_client(port: u16, user: &str, expiry: u64) -> Client {
    let username = format!("{expiry}:{user}");
    let password = crate::auth::rest_password(SECRET.as_bytes(), &username);
    Client::new(port, &username, &password)
}

fn peer(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// What the core told the shell to do, owned so the request bytes can go.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Nothing,
    Reply,
    Started(AllocId),
    ToPeer {
        relay: AllocId,
        peer: SocketAddr,
        data: Vec<u8>,
    },
    ReplyVia {
        from: SocketAddr,
        to: SocketAddr,
    },
    ConnectToPeer {
        connection: u32,
        from: SocketAddr,
        peer: SocketAddr,
    },
    Joined(u32),
}

impl From<Action<'_>> for Outcome {
    fn from(action: Action<'_>) -> Self {
        match action {
            Action::None => Self::Nothing,
            Action::Reply => Self::Reply,
            Action::ReplyVia { from, to } => Self::ReplyVia { from, to },
            Action::ReplyAndStartRelay(id) => Self::Started(id),
            Action::ToPeer { relay, peer, data } => Self::ToPeer {
                relay,
                peer,
                data: data.to_vec(),
            },
            Action::ConnectToPeer {
                connection,
                from,
                peer,
            } => Self::ConnectToPeer {
                connection,
                from,
                peer,
            },
            Action::ReplyAndJoinPeer(connection) => Self::Joined(connection),
        }
    }
}

/// The bytes the core wrote and what it said to do with them.
struct Reply {
    bytes: Vec<u8>,
    outcome: Outcome,
}

impl Reply {
    fn message(&self) -> Message<'_> {
        Message::parse(&self.bytes).expect("the reply parses")
    }

    fn get(&self, kind: u16) -> Option<&[u8]> {
        self.message().get(kind)
    }

    /// The ERROR-CODE, None for a success.
    fn code(&self) -> Option<u16> {
        let value = self.get(attr::ERROR_CODE)?;
        Some(u16::from(value[2]) * 100 + u16::from(value[3]))
    }

    fn lifetime(&self) -> Option<u32> {
        self.get(attr::LIFETIME).and_then(attr::u32_value)
    }

    fn xor_address(&self, kind: u16) -> Option<SocketAddr> {
        let message = self.message();
        message.xor_address(message.get(kind)?)
    }

    fn nonce(&self) -> String {
        String::from_utf8(self.get(attr::NONCE).expect("NONCE").to_vec()).unwrap()
    }

    #[track_caller]
    fn assert_error(&self, code: u16, what: &str) {
        assert_eq!(self.outcome, Outcome::Reply, "{what}");
        assert_eq!(self.code(), Some(code), "{what}");
    }

    #[track_caller]
    fn assert_success(&self, what: &str) {
        assert_eq!(self.code(), None, "{what}");
        assert_eq!(self.message().class, Class::Success, "{what}");
    }

    /// The id of the allocation this reply started.
    #[track_caller]
    fn started(&self) -> AllocId {
        match self.outcome {
            Outcome::Started(id) => id,
            ref other => panic!("no allocation started: {other:?}, code {:?}", self.code()),
        }
    }
}

fn transaction(n: u32) -> TransactionId {
    let mut id = [0; 16];
    id[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    id[12..].copy_from_slice(&n.to_be_bytes());
    TransactionId(id)
}

/// USERNAME, REALM, NONCE and MESSAGE-INTEGRITY, as a client signs.
fn sign(builder: &mut MessageBuilder<'_>, client: &Client, nonce: &str) {
    builder
        .add(attr::USERNAME, client.username.as_bytes())
        .add(attr::REALM, REALM.as_bytes())
        .add(attr::NONCE, nonce.as_bytes())
        .add_integrity(client.key.as_bytes());
}

fn udp_transport(builder: &mut MessageBuilder<'_>) {
    builder.add(attr::REQUESTED_TRANSPORT, &[attr::TRANSPORT_UDP, 0, 0, 0]);
}

/// A Send indication carrying `data` to `peer`.
fn send_indication(id: TransactionId, peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    MessageBuilder::new(&mut buf, Method::SEND, Class::Indication, id)
        .add_xor_address(attr::XOR_PEER_ADDRESS, peer)
        .add(attr::DATA, data);
    buf
}

/// The test config (users alice and bob, a REST secret, a relay on
/// 127.0.0.1) with `relay` as the body of `[relay]` after its addresses.
fn config_with_relay(relay: &str) -> Config {
    config_with_relay_addresses(r#"["127.0.0.1"]"#, relay)
}

/// The test config with relay `addresses` (a TOML array) and `relay` as
/// the rest of `[relay]`.
fn config_with_relay_addresses(addresses: &str, relay: &str) -> Config {
    Config::parse(
        &format!(
            r#"realm = "{REALM}"
[[listen]]
address = "127.0.0.1:3478"
[relay]
addresses = {addresses}
{relay}
[auth]
secrets = ["{SECRET}"]
[[auth.users]]
name = "alice"
password = "pw"
[[auth.users]]
name = "bob"
password = "pw-of-bob"
"#
        ),
        "test",
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Applies `config` as a reload would.
fn reload(harness: &mut Harness, config: &Config, now: Now) -> Vec<String> {
    let credentials = CredentialStore::new(&config.realm, &config.auth, [1; 32]);
    harness.core.reconfigure(config, Arc::new(credentials), now)
}

/// One core, its relay sockets and its clock.
struct Harness {
    core: Core,
    sockets: Sockets,
    start: Instant,
    last_transaction: u32,
}

impl Harness {
    fn new() -> Self {
        Self::with_relay("")
    }

    /// Users alice and bob, a REST secret, a relay on 127.0.0.1 that may
    /// reach 127.0.0.0/8 peers, and `relay_extra` added to `[relay]`.
    fn with_relay(relay_extra: &str) -> Self {
        let config = config_with_relay(&format!("allow-peers = [\"127.0.0.0/8\"]\n{relay_extra}"));
        Self::with_config(&config)
    }

    /// As [`Self::with_relay`], with relays on 127.0.0.1 and ::1 that may
    /// reach 127.0.0.0/8 and ::1 peers.
    fn dual_stack(relay_extra: &str) -> Self {
        let config = config_with_relay_addresses(
            r#"["127.0.0.1", "::1"]"#,
            &format!("allow-peers = [\"127.0.0.0/8\", \"::1\"]\n{relay_extra}"),
        );
        Self::with_config(&config)
    }

    fn with_config(config: &Config) -> Self {
        let credentials = CredentialStore::new(&config.realm, &config.auth, [1; 32]);
        let start = Instant::now();
        Self {
            core: Core::new(
                config,
                Arc::new(credentials),
                Arc::new(RejectCounters::default()),
                Arc::new(Shared::new(
                    config.relay.ports,
                    start,
                    Arc::new(Bans::in_memory()),
                )),
                (0, 1),
            ),
            sockets: Sockets::default(),
            start,
            last_transaction: 0,
        }
    }

    /// Both clocks `secs` seconds into the test.
    fn at(&self, secs: u64) -> Now {
        Now {
            instant: self.start + Duration::from_secs(secs),
            unix: UNIX + secs,
        }
    }

    fn transaction(&mut self) -> TransactionId {
        self.last_transaction += 1;
        transaction(self.last_transaction)
    }

    fn nonce(&self, client: &Client, now: Now) -> String {
        self.core
            .credentials()
            .nonce(client.five_tuple.client, now.unix)
    }

    /// A request from `client`, signed with a nonce issued at `now`.
    fn request(
        &mut self,
        client: &Client,
        now: Now,
        method: Method,
        add: impl FnOnce(&mut MessageBuilder<'_>),
    ) -> Vec<u8> {
        let nonce = self.nonce(client, now);
        self.request_with_nonce(client, &nonce, method, add)
    }

    fn request_with_nonce(
        &mut self,
        client: &Client,
        nonce: &str,
        method: Method,
        add: impl FnOnce(&mut MessageBuilder<'_>),
    ) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut builder = MessageBuilder::new(&mut buf, method, Class::Request, self.transaction());
        add(&mut builder);
        sign(&mut builder, client, nonce);
        buf
    }

    /// A request without MESSAGE-INTEGRITY (nor USERNAME, REALM, NONCE).
    fn unsigned(&mut self, method: Method, add: impl FnOnce(&mut MessageBuilder<'_>)) -> Vec<u8> {
        let mut buf = Vec::new();
        add(&mut MessageBuilder::new(
            &mut buf,
            method,
            Class::Request,
            self.transaction(),
        ));
        buf
    }

    /// Hands `bytes` (a whole STUN message) from `five_tuple` to the core.
    fn send(&mut self, now: Now, five_tuple: &FiveTuple, bytes: &[u8]) -> Reply {
        let message = Message::parse(bytes).expect("the request parses");
        let mut out = Vec::new();
        let action = self
            .core
            .handle_stun(now, five_tuple, &message, &mut self.sockets, &mut out);
        Reply {
            bytes: out,
            outcome: action.into(),
        }
    }

    /// Builds, signs and sends a request.
    fn call(
        &mut self,
        client: &Client,
        now: Now,
        method: Method,
        add: impl FnOnce(&mut MessageBuilder<'_>),
    ) -> Reply {
        let bytes = self.request(client, now, method, add);
        self.send(now, &client.five_tuple, &bytes)
    }

    fn allocate(&mut self, client: &Client, now: Now) -> Reply {
        self.call(client, now, Method::ALLOCATE, udp_transport)
    }

    /// Allocates for `client` and returns the allocation's id.
    #[track_caller]
    fn allocated(&mut self, client: &Client, now: Now) -> AllocId {
        self.allocate(client, now).started()
    }

    fn refresh(&mut self, client: &Client, now: Now, lifetime: u32) -> Reply {
        self.call(client, now, Method::REFRESH, |b| {
            b.add_u32(attr::LIFETIME, lifetime);
        })
    }

    fn create_permission(&mut self, client: &Client, now: Now, peers: &[SocketAddr]) -> Reply {
        self.call(client, now, Method::CREATE_PERMISSION, |b| {
            for &peer in peers {
                b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
            }
        })
    }

    fn channel_bind(&mut self, client: &Client, now: Now, number: u16, peer: SocketAddr) -> Reply {
        self.call(client, now, Method::CHANNEL_BIND, |b| {
            b.add_u32(attr::CHANNEL_NUMBER, u32::from(number) << 16)
                .add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
    }

    /// The port the relay socket of allocation `id` is bound to.
    fn bound_port(&self, id: AllocId) -> u16 {
        self.core
            .table
            .get(id)
            .expect("a live allocation")
            .bound
            .port()
    }

    fn rejected(&self, reject: Reject) -> u64 {
        self.core.counters.get(reject)
    }
}
