//! What a client sees when icegate refuses: every case asserts the exact STUN
//! error code. Requests are built and responses parsed with the `stun` crate
//! and the `turn` crate's attribute types (a codec icegate does not share),
//! sent over plain UDP sockets on 127.0.0.1. Every read waits at most
//! `READ_TIMEOUT`.
//!
//! Each error code is pinned down in the TURN core's own tests
//! (`src/turn/tests/`), which run without a daemon; the cases here prove
//! the wiring around the core: sockets, clocks, config, logs and policy.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use stun::attributes::ATTR_REALM;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, METHOD_ALLOCATE, METHOD_BINDING,
    METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_DATA, METHOD_REFRESH, MessageType,
};
use stun::textattrs::TextAttribute;
use turn::proto::channum::ChannelNumber;
use turn::proto::lifetime::Lifetime;
use turn::proto::reqfamily::REQUESTED_FAMILY_IPV6;

use common::stun_client::{
    Client, READ_TIMEOUT, Session, alice, assert_challenge, assert_error, assert_success, build,
    decode, error_of, peer, relayed_of, rest_user, send_indication, text, udp_transport, xor_peer,
};
use common::{TestConfig, TestDaemon, unix_now};

/// How long a test listens to be sure that nothing arrives.
const SILENCE: Duration = Duration::from_millis(400);

// ---------------------------------------------------------------------------------------------
// Configs

/// Relays on `relay_addresses` under the default peer policy: loopback
/// peers are not allowed, and `allow-peers` is only what `relay_extra`
/// (inside `[relay]`) says.
fn config_without_loopback_peers(relay_addresses: &[&str], relay_extra: &str) -> String {
    TestConfig {
        relay_addresses,
        allow_loopback: false,
        relay_extra,
        ..TestConfig::default()
    }
    .render()
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(text: &str) -> IpAddr {
    IpAddr::V6(text.parse::<Ipv6Addr>().expect("IPv6 literal"))
}

// ---------------------------------------------------------------------------------------------
// Authentication

#[test]
fn allocate_without_credentials_gets_401_with_realm_and_nonce() {
    let daemon = TestDaemon::start(&common::loopback_config(""));
    let client = Client::new(daemon.udp);
    let request = build(METHOD_ALLOCATE, CLASS_REQUEST, vec![udp_transport()]);
    let response = client.transact(&request);
    let nonce = assert_challenge(&response, 401, "Allocate without credentials");
    assert_eq!(text(&response, ATTR_REALM).as_deref(), Some("test.local"));
    assert!(
        nonce.len() >= 8,
        "nonce {nonce:?} is too short to be unguessable"
    );
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_nonce_that_works() {
    let daemon = TestDaemon::start(
        &TestConfig {
            auth_extra: "nonce-lifetime = \"1s\"",
            ..TestConfig::default()
        }
        .render(),
    );
    let mut session = Session::open(daemon.udp, alice());
    std::thread::sleep(Duration::from_millis(2500));
    let response = session.try_allocate();
    let fresh = assert_challenge(
        &response,
        438,
        "Allocate with a nonce older than its lifetime",
    );
    assert_ne!(fresh, session.nonce, "438 must carry a new nonce");
    session.nonce = fresh;
    session.allocate();
}

// ---------------------------------------------------------------------------------------------
// Peer policy

#[test]
fn default_policy_refuses_every_ipv4_encoding_of_loopback_private_and_special_peers_with_403() {
    let daemon = TestDaemon::start(&config_without_loopback_peers(&["127.0.0.1"], ""));
    let session = Session::open(daemon.udp, alice());
    let relayed = session.allocate();
    assert!(relayed.is_ipv4());
    let refused = [
        ("loopback", v4(127, 0, 0, 1)),
        ("loopback, not .1", v4(127, 1, 2, 3)),
        ("this network (CVE-2020-26262)", v4(0, 0, 0, 0)),
        ("private", v4(10, 0, 0, 1)),
        ("private", v4(172, 16, 0, 1)),
        ("private", v4(192, 168, 1, 1)),
        ("CGNAT", v4(100, 64, 0, 1)),
        ("cloud metadata", v4(169, 254, 169, 254)),
        ("documentation", v4(192, 0, 2, 1)),
        ("multicast", v4(224, 0, 0, 1)),
        ("broadcast", v4(255, 255, 255, 255)),
        // RFC 8656 compares the XOR-PEER-ADDRESS family with the relay's;
        // icegate reads an IPv4-mapped or IPv4-compatible address as the IPv4
        // address it names (RFC 4291 §2.5.5), so the family matches and the
        // policy refuses it. A 443 would refuse it too, but would not prove
        // that the policy saw through the spelling.
        ("IPv4-mapped loopback", v6("::ffff:127.0.0.1")),
        ("IPv4-mapped private", v6("::ffff:10.0.0.1")),
        ("IPv4-compatible loopback", v6("::127.0.0.1")),
    ];
    for (what, ip) in refused {
        let target = SocketAddr::new(ip, 9);
        let response = session.request(METHOD_CREATE_PERMISSION, vec![peer(target)]);
        assert_error(&response, 403, &format!("CreatePermission {what} {ip}"));
        let response = session.request(
            METHOD_CHANNEL_BIND,
            vec![Box::new(ChannelNumber(0x4000)), peer(target)],
        );
        assert_error(&response, 403, &format!("ChannelBind {what} {ip}"));
    }
    assert!(daemon.wait_for_log("peer-refused"));
    // A public address is allowed (nothing is ever sent to it).
    let public = SocketAddr::new(v4(8, 8, 8, 8), 53);
    assert_success(
        &session.request(METHOD_CREATE_PERMISSION, vec![peer(public)]),
        "CreatePermission 8.8.8.8",
    );
    // One refused peer among allowed ones refuses the whole request.
    let response = session.request(
        METHOD_CREATE_PERMISSION,
        vec![peer(public), peer(SocketAddr::new(v4(127, 0, 0, 1), 9))],
    );
    assert_error(&response, 403, "CreatePermission 8.8.8.8 and 127.0.0.1");
}

/// An allocation with an IPv6 relayed address on [::1].
fn ipv6_allocation(session: &Session) -> SocketAddr {
    let mut response = session.request(
        METHOD_ALLOCATE,
        vec![udp_transport(), Box::new(REQUESTED_FAMILY_IPV6)],
    );
    let relayed = relayed_of(&mut response, &session.credentials);
    assert_eq!(relayed.ip(), v6("::1"));
    relayed
}

#[test]
fn ipv6_relay_under_default_policy_refuses_loopback_in_every_ipv6_encoding_with_403() {
    let daemon = TestDaemon::start(&config_without_loopback_peers(&["127.0.0.1", "::1"], ""));
    let session = Session::open(daemon.udp, alice());
    ipv6_allocation(&session);
    for (what, ip) in [
        ("loopback", v6("::1")),
        ("unspecified", v6("::")),
        ("6to4 of 127.0.0.1", v6("2002:7f00:1::")),
        ("NAT64 of 127.0.0.1", v6("64:ff9b::7f00:1")),
        (
            "Teredo, client 127.0.0.1",
            v6("2001:0:4136:e378:8000:63bf:80ff:fffe"),
        ),
        ("link-local", v6("fe80::1")),
        ("unique local", v6("fd00::1")),
        ("documentation", v6("2001:db8::1")),
    ] {
        let target = SocketAddr::new(ip, 9);
        let response = session.request(METHOD_CREATE_PERMISSION, vec![peer(target)]);
        assert_error(&response, 403, &format!("CreatePermission {what} {ip}"));
    }
    // An IPv4-mapped address is IPv4 to icegate: on an IPv6 relay it is the
    // other family, so 443 (and no permission either way).
    let mapped = SocketAddr::new(v6("::ffff:127.0.0.1"), 9);
    let response = session.request(METHOD_CREATE_PERMISSION, vec![peer(mapped)]);
    assert_error(
        &response,
        443,
        "CreatePermission ::ffff:127.0.0.1 on an IPv6 relay",
    );
    let public = SocketAddr::new(v6("2606:4700:4700::1111"), 53);
    assert_success(
        &session.request(METHOD_CREATE_PERMISSION, vec![peer(public)]),
        "CreatePermission 2606:4700:4700::1111",
    );
}

#[test]
fn allowing_6to4_and_nat64_prefixes_still_refuses_the_loopback_and_private_hosts_they_embed() {
    let daemon = TestDaemon::start(&config_without_loopback_peers(
        &["127.0.0.1", "::1"],
        r#"allow-peers = ["2002::/16", "64:ff9b::/96"]"#,
    ));
    let session = Session::open(daemon.udp, alice());
    ipv6_allocation(&session);
    for ip in [
        v6("2002:7f00:1::"),
        v6("2002:a00:1::"),
        v6("64:ff9b::7f00:1"),
        v6("64:ff9b::a9fe:a9fe"),
    ] {
        let target = SocketAddr::new(ip, 9);
        let response = session.request(METHOD_CREATE_PERMISSION, vec![peer(target)]);
        assert_error(&response, 403, &format!("CreatePermission {ip}"));
    }
    for ip in [v6("2002:808:808::"), v6("64:ff9b::808:808")] {
        let target = SocketAddr::new(ip, 53);
        let response = session.request(METHOD_CREATE_PERMISSION, vec![peer(target)]);
        assert_success(
            &response,
            &format!("CreatePermission {ip} (embeds 8.8.8.8)"),
        );
    }
}

fn loopback_peer() -> UdpSocket {
    common::stun_client::loopback_peer(SILENCE)
}

#[test]
fn under_default_policy_no_loopback_encoding_carries_data_to_or_from_a_loopback_peer() {
    let daemon = TestDaemon::start(&config_without_loopback_peers(&["127.0.0.1"], ""));
    let session = Session::open(daemon.udp, alice());
    let relayed = session.allocate();
    let peer_socket = loopback_peer();
    let port = peer_socket.local_addr().expect("peer address").port();
    let encodings = [
        v4(127, 0, 0, 1),
        v6("::ffff:127.0.0.1"),
        v6("::127.0.0.1"),
        v6("2002:7f00:1::"),
        v6("64:ff9b::7f00:1"),
    ];
    for ip in encodings {
        let target = SocketAddr::new(ip, port);
        let permission = session.request(METHOD_CREATE_PERMISSION, vec![peer(target)]);
        assert_eq!(
            permission.typ.class, CLASS_ERROR_RESPONSE,
            "CreatePermission {ip}"
        );
        let bind = session.request(
            METHOD_CHANNEL_BIND,
            vec![Box::new(ChannelNumber(0x4000)), peer(target)],
        );
        assert_eq!(bind.typ.class, CLASS_ERROR_RESPONSE, "ChannelBind {ip}");
        session
            .client
            .send_raw(&send_indication(target, b"escape").raw);
    }
    session.client.send_raw(&[
        0x40, 0x00, 0x00, 0x06, b'e', b's', b'c', b'a', b'p', b'e', 0, 0,
    ]);
    let mut buf = [0u8; 64];
    if let Ok((len, from)) = peer_socket.recv_from(&mut buf) {
        panic!("the loopback peer received {:?} from {from}", &buf[..len]);
    }
    peer_socket
        .send_to(b"let me in", relayed)
        .expect("peer sends to the relay");
    if let Some(reply) = session.client.recv_within(SILENCE) {
        panic!("the client received {reply:?} from a refused peer");
    }
}

/// A session with an allocation on a daemon that allows loopback peers, and
/// a loopback peer the client names by its IPv4-mapped IPv6 spelling.
struct MappedLoopbackPeer {
    session: Session,
    relayed: SocketAddr,
    socket: UdpSocket,
    /// `::ffff:127.0.0.1` and the peer's port.
    mapped: SocketAddr,
    _daemon: TestDaemon,
}

impl MappedLoopbackPeer {
    fn start() -> Self {
        let daemon = TestDaemon::start(&common::loopback_config(""));
        let session = Session::open(daemon.udp, alice());
        let relayed = session.allocate();
        let socket = loopback_peer();
        let port = socket.local_addr().expect("peer address").port();
        Self {
            session,
            relayed,
            socket,
            mapped: SocketAddr::new(v6("::ffff:127.0.0.1"), port),
            _daemon: daemon,
        }
    }

    /// The client sends `datagram` (`what`, for the failure); returns what
    /// the peer received from the relay, or the failure if nothing.
    fn client_to_peer(&self, datagram: &[u8], what: &str) -> Result<Vec<u8>, String> {
        self.session.client.send_raw(datagram);
        let mut buf = [0u8; 64];
        match self.socket.recv_from(&mut buf) {
            Ok((len, from)) => {
                assert_eq!(from, self.relayed);
                Ok(buf[..len].to_vec())
            }
            Err(_) => Err(format!(
                "{what} never reached the peer 127.0.0.1:{}",
                self.mapped.port()
            )),
        }
    }

    /// The peer sends `data` to the relay; returns what the client
    /// received, or the failure if nothing.
    fn peer_to_client(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        self.socket
            .send_to(data, self.relayed)
            .expect("peer sends to the relay");
        self.session
            .client
            .recv_within(READ_TIMEOUT)
            .ok_or_else(|| {
                format!(
                    "a datagram from 127.0.0.1:{} to the relay {} never reached the client",
                    self.mapped.port(),
                    self.relayed
                )
            })
    }
}

#[test]
fn ipv4_mapped_peer_permission_lets_the_ipv4_peer_through_both_ways() {
    // With loopback allowed, icegate grants ::ffff:127.0.0.1 (it treats it as
    // 127.0.0.1, see above). A granted permission must then work: a Send
    // indication to the mapped address reaches the peer, and the peer's
    // datagrams reach the client.
    let link = MappedLoopbackPeer::start();
    let mapped = link.mapped;
    assert_success(
        &link
            .session
            .request(METHOD_CREATE_PERMISSION, vec![peer(mapped)]),
        "CreatePermission ::ffff:127.0.0.1 with 127.0.0.0/8 allowed",
    );
    let mut failures = Vec::new();
    let send = send_indication(mapped, b"to the peer");
    match link.client_to_peer(&send.raw, &format!("a Send indication to {mapped}")) {
        Ok(data) => assert_eq!(data, b"to the peer"),
        Err(failure) => failures.push(failure),
    }
    match link.peer_to_client(b"from the peer") {
        Ok(reply) => {
            let indication = decode(&reply).expect("a Data indication");
            assert_eq!(
                indication.typ,
                MessageType::new(METHOD_DATA, CLASS_INDICATION)
            );
            assert_eq!(xor_peer(&indication).port(), mapped.port());
        }
        Err(failure) => failures.push(failure),
    }
    assert!(
        failures.is_empty(),
        "CreatePermission for {mapped} succeeded, but:\n{}",
        failures.join("\n")
    );
}

#[test]
fn ipv4_mapped_channel_binding_carries_channel_data_both_ways() {
    // The ChannelBind twin of the test above.
    let link = MappedLoopbackPeer::start();
    let mapped = link.mapped;
    assert_success(
        &link.session.request(
            METHOD_CHANNEL_BIND,
            vec![Box::new(ChannelNumber(0x4000)), peer(mapped)],
        ),
        "ChannelBind 0x4000 to ::ffff:127.0.0.1 with 127.0.0.0/8 allowed",
    );
    let mut failures = Vec::new();
    let ping = [0x40, 0x00, 0x00, 0x04, b'p', b'i', b'n', b'g'];
    match link.client_to_peer(&ping, "ChannelData on 0x4000") {
        Ok(data) => assert_eq!(data, b"ping"),
        Err(failure) => failures.push(failure),
    }
    match link.peer_to_client(b"pong") {
        Ok(reply) => assert_eq!(reply, [0x40, 0x00, 0x00, 0x04, b'p', b'o', b'n', b'g']),
        Err(failure) => failures.push(failure),
    }
    assert!(
        failures.is_empty(),
        "ChannelBind to {mapped} succeeded, but:\n{}",
        failures.join("\n")
    );
}

#[test]
fn first_send_indication_on_a_new_allocation_reaches_the_peer() {
    // A client that sends its first Send indication right behind its
    // CreatePermission, or both right behind its Allocate: over loopback
    // they arrive in order, after the permission exists, so the datagram
    // must reach the peer. (A client that waits for each response loses the
    // first datagram too, only less often: see the log's "would block".)
    const ROUNDS: usize = 20;
    let daemon = TestDaemon::start(&common::loopback_config(""));
    let peer_socket = loopback_peer();
    let target = peer_socket.local_addr().expect("peer address");
    let mut lost = Vec::new();
    // Every session's socket stays open to the end: a closed one's port could
    // come back for a later round and find its old allocation (437).
    let mut sessions = Vec::new();
    for pipelined_allocate in [false, true] {
        for round in 0..ROUNDS {
            let session = Session::open(daemon.udp, alice());
            let allocate = session.request_message(METHOD_ALLOCATE, vec![udp_transport()]);
            let permission = session.request_message(METHOD_CREATE_PERMISSION, vec![peer(target)]);
            let data = format!("first {round}");
            let send = send_indication(target, data.as_bytes());
            let relayed = if pipelined_allocate {
                session.client.send_raw(&allocate.raw);
                session.client.send_raw(&permission.raw);
                session.client.send_raw(&send.raw);
                None
            } else {
                let mut response = session.client.transact(&allocate);
                let relayed = relayed_of(&mut response, &session.credentials);
                session.client.send_raw(&permission.raw);
                session.client.send_raw(&send.raw);
                Some(relayed)
            };
            let mut buf = [0u8; 64];
            let received = peer_socket.recv_from(&mut buf);
            // Every request succeeded: a loss is not a refusal.
            let relayed = match relayed {
                Some(relayed) => relayed,
                None => {
                    let reply = session
                        .client
                        .transact_raw(&allocate.raw, allocate.transaction_id);
                    relayed_of(
                        &mut decode(&reply).expect("Allocate response"),
                        &session.credentials,
                    )
                }
            };
            let reply = session
                .client
                .transact_raw(&permission.raw, permission.transaction_id);
            assert_success(
                &decode(&reply).expect("CreatePermission response"),
                "CreatePermission",
            );
            sessions.push(session);
            match received {
                Ok((len, from)) => {
                    assert_eq!(&buf[..len], data.as_bytes());
                    assert_eq!(from, relayed);
                }
                Err(_) => lost.push(format!(
                    "{} round {round}: relay {relayed}",
                    if pipelined_allocate {
                        "Allocate, CreatePermission, Send back to back"
                    } else {
                        "CreatePermission, Send back to back"
                    }
                )),
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} first Send indications never reached the peer {target}:\n{}",
        lost.len(),
        2 * ROUNDS,
        lost.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Quotas and capacity

#[test]
fn second_allocation_by_the_same_user_gets_486_with_a_per_user_quota_of_1() {
    let daemon = TestDaemon::start(&common::loopback_config("max-allocations-per-user = 1"));
    Session::open(daemon.udp, alice()).allocate();
    let second = Session::open(daemon.udp, alice());
    assert_error(&second.try_allocate(), 486, "alice's second allocation");
    // Another user is not affected by alice's quota.
    Session::open(daemon.udp, rest_user("bob", unix_now() + 3600)).allocate();
}

/// A port in 20000-32000 that nothing holds right now.
fn free_port() -> u16 {
    for _ in 0..100 {
        let port = rand::random_range(20_000..=32_000);
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free UDP port in 20000-32000 on 127.0.0.1 after 100 tries");
}

/// Deletes the session's allocation with Refresh LIFETIME 0.
#[track_caller]
fn delete(session: &Session) {
    let response = session.request(METHOD_REFRESH, vec![Box::new(Lifetime(Duration::ZERO))]);
    assert_success(&response, "Refresh with LIFETIME 0");
}

#[test]
fn allocation_gets_508_while_the_only_relay_port_is_taken_and_succeeds_once_it_is_freed() {
    let port = free_port();
    let daemon = TestDaemon::start(&common::loopback_config(&format!(
        "ports = \"{port}-{port}\""
    )));
    let first = Session::open(daemon.udp, alice());
    assert_eq!(first.allocate().port(), port);
    let bob = Session::open(daemon.udp, rest_user("bob", unix_now() + 3600));
    assert_error(
        &bob.try_allocate(),
        508,
        "allocation with no relay port left",
    );
    delete(&first);
    assert!(daemon.wait_for_log("allocation-deleted"));
    // How soon is the next test's business; here: within READ_TIMEOUT.
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut response = loop {
        let response = bob.try_allocate();
        if error_of(&response).is_none_or(|(code, _)| code != 508) || Instant::now() > deadline {
            break response;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let relayed = relayed_of(&mut response, &bob.credentials);
    assert_eq!(relayed.port(), port, "the freed port is reused");
}

// ---------------------------------------------------------------------------------------------
// Retransmissions

#[test]
fn retransmitted_allocate_gets_the_same_response_byte_for_byte() {
    let daemon = TestDaemon::start(&common::loopback_config(""));
    let session = Session::open(daemon.udp, alice());
    let request = session.request_message(METHOD_ALLOCATE, vec![udp_transport()]);
    let first = session
        .client
        .transact_raw(&request.raw, request.transaction_id);
    relayed_of(
        &mut decode(&first).expect("response decodes"),
        &session.credentials,
    );
    let again = session
        .client
        .transact_raw(&request.raw, request.transaction_id);
    assert_eq!(
        again, first,
        "a retransmission gets the first response again"
    );
    // The log reaches the harness through a pipe: wait for the line first.
    assert!(daemon.wait_for_log("allocation-created"));
    assert_eq!(
        daemon.log().matches("allocation-created").count(),
        1,
        "one allocation for two copies of one request"
    );
}

// ---------------------------------------------------------------------------------------------
// Malformed datagrams and old clients

/// A valid Binding request with a SOFTWARE attribute and FINGERPRINT.
fn binding_bytes() -> Vec<u8> {
    let message = build(
        METHOD_BINDING,
        CLASS_REQUEST,
        vec![Box::new(TextAttribute::new(
            stun::attributes::ATTR_SOFTWARE,
            "icegate-test".to_owned(),
        ))],
    );
    message.raw
}

fn with_length_field(mut bytes: Vec<u8>, length: u16) -> Vec<u8> {
    bytes[2..4].copy_from_slice(&length.to_be_bytes());
    bytes
}

#[test]
fn malformed_datagrams_are_dropped_and_the_daemon_keeps_answering() {
    let mut daemon = TestDaemon::start(&common::loopback_config(""));
    let valid = binding_bytes();
    let valid_length = u16::from_be_bytes([valid[2], valid[3]]);
    let mut garbled_attribute = valid.clone();
    // SOFTWARE's length field, right after the header: far past the end.
    garbled_attribute[22..24].copy_from_slice(&0xFFF0_u16.to_be_bytes());
    let mut odd_attribute = valid.clone();
    odd_attribute[22..24].copy_from_slice(&13_u16.to_be_bytes());
    let mut bad_fingerprint = valid.clone();
    let last = bad_fingerprint.len() - 1;
    bad_fingerprint[last] ^= 0xFF;
    let mut huge_stun = vec![0u8; 65_507];
    huge_stun[..20].copy_from_slice(&valid[..20]);
    let huge_stun = with_length_field(huge_stun, u16::MAX);
    let random: Vec<u8> = (0..200).map(|_| rand::random::<u8>()).collect();
    let mut random_stun_looking = random.clone();
    random_stun_looking[0] &= 0x03;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty datagram", Vec::new()),
        ("truncated header", valid[..10].to_vec()),
        ("header only, attributes announced", valid[..20].to_vec()),
        (
            "length field longer than the datagram",
            with_length_field(valid.clone(), valid_length + 4),
        ),
        (
            "length field shorter than the datagram",
            with_length_field(valid.clone(), valid_length - 4),
        ),
        (
            "length field not a multiple of 4",
            with_length_field(valid.clone(), valid_length - 1),
        ),
        ("attribute length past the end", garbled_attribute),
        ("attribute length overrunning the next", odd_attribute),
        ("wrong FINGERPRINT", bad_fingerprint),
        ("random bytes", random),
        (
            "random bytes after a STUN-looking first byte",
            random_stun_looking,
        ),
        ("65507 bytes of 0xAB", vec![0xAB; 65_507]),
        ("65507-byte STUN header with a wrong length", huge_stun),
        (
            "ChannelData longer than the datagram",
            vec![0x40, 0x00, 0x01, 0x00, 1, 2, 3, 4],
        ),
        ("ChannelData header cut short", vec![0x40, 0x00, 0x00]),
        (
            "ChannelData on a channel never bound",
            vec![0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4],
        ),
    ];
    for (what, bytes) in cases {
        let sender = Client::new(daemon.udp);
        sender.send_raw(&bytes);
        if let Some(reply) = sender.recv_within(Duration::from_millis(200)) {
            panic!("{what}: icegate answered {reply:?}");
        }
        assert!(daemon.is_running(), "icegate exited after: {what}");
        Client::new(daemon.udp).assert_binding_works();
        // The sender's own 5-tuple is not poisoned either.
        sender.assert_binding_works();
    }
}

#[test]
fn rfc3489_binding_request_gets_mapped_address_of_the_socket() {
    let daemon = TestDaemon::start(&common::loopback_config(""));
    let client = Client::new(daemon.udp);
    let mut transaction: [u8; 16] = rand::random();
    if transaction[..4] == 0x2112_A442_u32.to_be_bytes() {
        transaction[0] ^= 0xFF;
    }
    let mut request = vec![0x00, 0x01, 0x00, 0x00];
    request.extend_from_slice(&transaction);
    client.send_raw(&request);
    let reply = client
        .recv_within(READ_TIMEOUT)
        .expect("a response to a classic Binding request");
    // The `stun` crate refuses headers without the magic cookie, so this
    // response is read by hand: RFC 3489 §11.1.
    assert!(reply.len() >= 20, "response {reply:?}");
    assert_eq!(&reply[..2], &[0x01, 0x01], "Binding success response");
    assert_eq!(
        usize::from(u16::from_be_bytes([reply[2], reply[3]])),
        reply.len() - 20
    );
    assert_eq!(&reply[4..20], &transaction, "transaction ID echoed");
    let mut attributes = &reply[20..];
    let mut mapped = None;
    while attributes.len() >= 4 {
        let kind = u16::from_be_bytes([attributes[0], attributes[1]]);
        let len = usize::from(u16::from_be_bytes([attributes[2], attributes[3]]));
        let value = &attributes[4..4 + len];
        assert_ne!(kind, 0x0020, "no XOR-MAPPED-ADDRESS for an RFC 3489 client");
        if kind == 0x0001 {
            assert_eq!(len, 8, "IPv4 MAPPED-ADDRESS");
            assert_eq!(value[1], 0x01, "family IPv4");
            let port = u16::from_be_bytes([value[2], value[3]]);
            let ip = Ipv4Addr::new(value[4], value[5], value[6], value[7]);
            mapped = Some(SocketAddr::new(ip.into(), port));
        }
        attributes = &attributes[4 + len.next_multiple_of(4)..];
    }
    assert_eq!(mapped, Some(client.addr()), "MAPPED-ADDRESS");
    // The same socket speaking RFC 8489 gets the XOR form.
    client.assert_binding_works();
}

#[test]
fn icegates_own_listener_is_refused_as_a_peer_though_loopback_is_allowed() {
    // The listener's port came from port 0: the daemon tells its core.
    let daemon = TestDaemon::start(&common::loopback_config(""));
    let session = Session::open(daemon.udp, alice());
    session.allocate();
    assert_error(
        &session.request(METHOD_CREATE_PERMISSION, vec![peer(daemon.udp)]),
        403,
        "CreatePermission to icegate's own listener",
    );
    assert_success(
        &session.request(
            METHOD_CREATE_PERMISSION,
            vec![peer(SocketAddr::new(daemon.udp.ip(), 9))],
        ),
        "CreatePermission to another port of that host",
    );
}
