//! The core driven as a state machine: requests as bytes, time as an
//! argument, relay sockets from a stand-in that records what was bound.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{CredentialStore, long_term_key};
use crate::config::{Config, Transport};
use crate::reject::RejectCounters;
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
}

const UNIX: u64 = 1_800_000_000;

fn core() -> Core {
    core_with("")
}

/// A core whose `[relay]` table has `relay_extra` added.
fn core_with(relay_extra: &str) -> Core {
    let config = Config::parse(
        &format!(
            r#"realm = "example.org"
[[listen]]
address = "127.0.0.1:3478"
[relay]
addresses = ["127.0.0.1"]
allow-peers = ["127.0.0.0/8"]
{relay_extra}
[auth]
[[auth.users]]
name = "alice"
password = "pw"
"#
        ),
        "test",
    )
    .unwrap();
    let credentials = CredentialStore::new(&config.realm, &config.auth, [1; 32]);
    Core::new(
        &config,
        Arc::new(credentials),
        Arc::new(RejectCounters::default()),
        Arc::new(Shared::new(config.relay.ports)),
        (0, 1),
    )
}

fn five_tuple() -> FiveTuple {
    FiveTuple {
        client: "127.0.0.1:40000".parse().unwrap(),
        server: "127.0.0.1:3478".parse().unwrap(),
        transport: Transport::Udp,
    }
}

fn transaction(n: u8) -> TransactionId {
    let mut id = [n; 16];
    id[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    TransactionId(id)
}

/// An authenticated request as a client would build it.
fn request(
    method: Method,
    id: u8,
    nonce: &str,
    add: impl FnOnce(&mut MessageBuilder<'_>),
) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut builder = MessageBuilder::new(&mut buf, method, Class::Request, transaction(id));
    add(&mut builder);
    builder
        .add(attr::USERNAME, b"alice")
        .add(attr::REALM, b"example.org")
        .add(attr::NONCE, nonce.as_bytes())
        .add_integrity(&long_term_key("alice", "example.org", "pw"));
    buf
}

fn error_code(reply: &[u8]) -> Option<u16> {
    let message = Message::parse(reply).unwrap();
    let value = message.get(attr::ERROR_CODE)?;
    Some(u16::from(value[2]) * 100 + u16::from(value[3]))
}

fn handle(core: &mut Core, now: Now, bytes: &[u8]) -> (Vec<u8>, bool) {
    let message = Message::parse(bytes).unwrap();
    let mut out = Vec::new();
    let action = core.handle_stun(
        now,
        &five_tuple(),
        &message,
        &mut Sockets::default(),
        &mut out,
    );
    let started = matches!(action, Action::ReplyAndStartRelay(..));
    (out, started)
}

fn allocate(core: &mut Core, now: Now, id: u8) -> Vec<u8> {
    let nonce = core.credentials().nonce(five_tuple().client, now.unix);
    let bytes = request(Method::ALLOCATE, id, &nonce, |b| {
        b.add(attr::REQUESTED_TRANSPORT, &[attr::TRANSPORT_UDP, 0, 0, 0]);
    });
    handle(core, now, &bytes).0
}

/// A core with one allocation on `five_tuple()`, the time, and a nonce.
fn allocated() -> (Core, Now, String) {
    let mut core = core();
    let now = Now {
        instant: Instant::now(),
        unix: UNIX,
    };
    assert_eq!(error_code(&allocate(&mut core, now, 1)), None);
    let nonce = core.credentials().nonce(five_tuple().client, now.unix);
    (core, now, nonce)
}

#[test]
fn relayed_address_is_the_external_address_with_the_bound_port() {
    let mut core = core_with(r#"external-addresses = ["203.0.113.10"]"#);
    let now = Now {
        instant: Instant::now(),
        unix: UNIX,
    };
    let reply = allocate(&mut core, now, 1);
    let message = Message::parse(&reply).unwrap();
    let relayed = message
        .xor_address(message.get(attr::XOR_RELAYED_ADDRESS).unwrap())
        .unwrap();
    let id = core.table.id_for(&five_tuple()).unwrap();
    let bound = core.table.get(id).unwrap().bound;
    assert_eq!(
        relayed,
        SocketAddr::new("203.0.113.10".parse().unwrap(), bound.port())
    );
    assert_eq!(bound.ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
}

#[test]
fn nonce_goes_stale_after_its_lifetime() {
    let mut core = core();
    let start = Now {
        instant: Instant::now(),
        unix: UNIX,
    };
    let nonce = core.credentials().nonce(five_tuple().client, start.unix);
    let bytes = request(Method::ALLOCATE, 1, &nonce, |b| {
        b.add(attr::REQUESTED_TRANSPORT, &[attr::TRANSPORT_UDP, 0, 0, 0]);
    });
    let later = Now {
        instant: start.instant,
        unix: UNIX + 601,
    };
    let (reply, started) = handle(&mut core, later, &bytes);
    assert_eq!(error_code(&reply), Some(438));
    assert!(!started);
    let (reply, started) = handle(&mut core, start, &bytes);
    assert_eq!(error_code(&reply), None);
    assert!(started);
}

#[test]
fn expired_allocation_frees_its_5_tuple_and_port() {
    let mut core = core();
    let now = Now {
        instant: Instant::now(),
        unix: UNIX,
    };
    assert_eq!(error_code(&allocate(&mut core, now, 1)), None);
    assert_eq!(core.table.len(), 1);
    let id = core.table.id_for(&five_tuple()).unwrap();
    let port = core.table.get(id).unwrap().bound.port();
    assert!(!core.shared.port_is_free(port));
    core.handle_timeout(now.instant + Duration::from_secs(599));
    assert_eq!(core.table.len(), 1, "still alive before its lifetime");
    core.handle_timeout(now.instant + Duration::from_secs(601));
    assert_eq!(core.table.len(), 0);
    assert!(core.shared.port_is_free(port), "port returned at once");
    assert_eq!(error_code(&allocate(&mut core, now, 2)), None);
}

#[test]
fn retransmitted_request_gets_the_same_response() {
    let mut core = core();
    let now = Now {
        instant: Instant::now(),
        unix: UNIX,
    };
    let first = allocate(&mut core, now, 1);
    assert_eq!(
        allocate(&mut core, now, 1),
        first,
        "same transaction: same answer"
    );
    assert_eq!(
        error_code(&allocate(&mut core, now, 2)),
        Some(437),
        "new transaction: mismatch"
    );
    let nonce = core.credentials().nonce(five_tuple().client, now.unix);
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let permission = request(Method::CREATE_PERMISSION, 3, &nonce, |b| {
        b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
    });
    let (reply, _) = handle(&mut core, now, &permission);
    assert_eq!(error_code(&reply), None);
    assert_eq!(handle(&mut core, now, &permission).0, reply);
}

#[test]
fn permission_lapses_after_its_lifetime_unless_refreshed() {
    let (mut core, now, nonce) = allocated();
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let permission = request(Method::CREATE_PERMISSION, 2, &nonce, |b| {
        b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
    });
    handle(&mut core, now, &permission);
    let id = core.table.id_for(&five_tuple()).unwrap();
    assert_eq!(core.route_from_peer(id, peer, now.instant, 1), Some(None));
    let later = now.instant + Duration::from_secs(301);
    assert_eq!(core.route_from_peer(id, peer, later, 1), None);
}

#[test]
fn refresh_with_zero_lifetime_deletes_allocation() {
    let (mut core, now, nonce) = allocated();
    let refresh = request(Method::REFRESH, 2, &nonce, |b| {
        b.add_u32(attr::LIFETIME, 0);
    });
    let (reply, _) = handle(&mut core, now, &refresh);
    assert_eq!(error_code(&reply), None);
    assert_eq!(core.table.len(), 0);
    let again = request(Method::REFRESH, 3, &nonce, |b| {
        b.add_u32(attr::LIFETIME, 600);
    });
    assert_eq!(error_code(&handle(&mut core, now, &again).0), Some(437));
}

#[test]
fn channel_numbers_outside_rfc8656_range_are_refused() {
    let (mut core, now, nonce) = allocated();
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (id, number, code) in [
        (2, 0x3FFF_u16, Some(400)),
        (3, 0x5000, Some(400)),
        (4, 0x4FFF, None),
    ] {
        let bind = request(Method::CHANNEL_BIND, id, &nonce, |b| {
            b.add_u32(attr::CHANNEL_NUMBER, u32::from(number) << 16)
                .add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        });
        assert_eq!(
            error_code(&handle(&mut core, now, &bind).0),
            code,
            "{number:#x}"
        );
    }
}
