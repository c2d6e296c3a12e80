//! The admin listener and drain against the real daemon: `/metrics` parsed
//! by the Python `prometheus-client` parsers after relaying through a raw
//! STUN client (every counter must move by exactly what was sent),
//! `/allocations` listed and ended per user, `/drain` and SIGTERM refusing
//! new allocations while an existing one keeps relaying, `/healthz`, the
//! admin token, `POST /reload`, and `icegate ctl`. Peers are sockets on
//! 127.0.0.1; every wait is bounded.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use stun::message::{
    CLASS_INDICATION, CLASS_REQUEST, Getter, METHOD_BINDING, METHOD_CHANNEL_BIND,
    METHOD_CREATE_PERMISSION, METHOD_DATA, METHOD_REFRESH,
};
use turn::proto::channum::ChannelNumber;
use turn::proto::data::Data;
use turn::proto::lifetime::Lifetime;

use serde_json::json;

use common::admin::{Answer, Scrape, key, request};
use common::signal::{Event, SignalClient, signal_config, token_for};
use common::stun_client::{
    Credentials, READ_TIMEOUT, Session, alice, alice_with, assert_error, assert_success, build,
    decode, rest_user, send_indication,
};
use common::{Finished, SECRET, TestConfig, TestDaemon, USER, run_bounded, unix_now};

const TOKEN: &str = "admin-token-for-the-tests-0123";
/// How long a test listens to be sure that nothing arrives.
const SILENCE: Duration = Duration::from_millis(400);
/// The longest the daemon may take to exit once it should.
const EXIT_WAIT: Duration = Duration::from_secs(15);

fn loopback_peer() -> UdpSocket {
    common::stun_client::loopback_peer(READ_TIMEOUT)
}

fn addr_of(socket: &UdpSocket) -> SocketAddr {
    socket.local_addr().expect("local address")
}

/// What `peer` receives next: the datagram and its sender.
#[track_caller]
fn peer_receives(peer: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 1500];
    let (len, from) = peer.recv_from(&mut buf).expect("the peer receives in time");
    (buf[..len].to_vec(), from)
}

/// A session with an allocation and a permission for `peer`.
#[track_caller]
fn allocated(
    daemon: &TestDaemon,
    credentials: Credentials,
    peer: &UdpSocket,
) -> (Session, SocketAddr) {
    let session = Session::open(daemon.udp, credentials);
    let relayed = session.allocate();
    let permission = session.request(METHOD_CREATE_PERMISSION, vec![peer_attr(peer)]);
    assert_success(&permission, "CreatePermission");
    (session, relayed)
}

/// The client's Send indication reaches the peer, and the peer's answer
/// comes back to the client as a Data indication.
#[track_caller]
fn relays_both_ways(session: &Session, relayed: SocketAddr, peer: &UdpSocket, data: &[u8]) {
    session
        .client
        .send_raw(&send_indication(addr_of(peer), data).raw);
    assert_eq!(peer_receives(peer), (data.to_vec(), relayed));
    let reply = peer_to_client(session, peer, relayed, data);
    let message = decode(&reply).expect("a STUN message");
    assert_eq!(
        (message.typ.method, message.typ.class),
        (METHOD_DATA, CLASS_INDICATION)
    );
    let mut got = Data::default();
    got.get_from(&message).expect("DATA");
    assert_eq!(got.0, data);
}

/// The peer sends `data` to the relayed address; returns what the client receives.
#[track_caller]
fn peer_to_client(
    session: &Session,
    peer: &UdpSocket,
    relayed: SocketAddr,
    data: &[u8],
) -> Vec<u8> {
    peer.send_to(data, relayed).expect("peer sends");
    session
        .client
        .recv_within(READ_TIMEOUT)
        .expect("the client receives what the peer sent")
}

type Labels<'a> = &'a [(&'a str, &'a str)];

/// The changes a test expects, as [`Scrape::changes_since`] lists them.
fn deltas(entries: &[(&str, Labels<'_>, f64)]) -> BTreeMap<String, f64> {
    entries
        .iter()
        .map(|&(name, labels, n)| (key(name, labels), n))
        .collect()
}

fn get(daemon: &TestDaemon, path: &str) -> Answer {
    request(daemon.admin, "GET", path, None, &[])
}

fn post(daemon: &TestDaemon, path: &str) -> Answer {
    request(daemon.admin, "POST", path, None, &[])
}

fn exits_with_success(daemon: &mut TestDaemon) {
    let status = daemon
        .wait_for_exit(EXIT_WAIT)
        .unwrap_or_else(|| panic!("icegate did not exit; log:\n{}", daemon.log()));
    assert!(status.success(), "exit {status}; log:\n{}", daemon.log());
}

// ---------------------------------------------------------------------------------------------
// Metrics

#[test]
fn metrics_move_by_exactly_what_was_relayed_refused_and_answered() {
    let daemon = TestDaemon::start(&common::loopback_config(""));
    let peer = loopback_peer();
    let before = Scrape::of(&daemon, None);
    for (family, kind) in [
        ("icegate_allocations", "gauge"),
        ("icegate_allocations_created", "counter"),
        ("icegate_relayed_packets", "counter"),
        ("icegate_relayed_bytes", "counter"),
        ("icegate_refusals", "counter"),
        ("icegate_signal_connections", "gauge"),
        ("icegate_limit_hits", "counter"),
        ("icegate_reloads", "counter"),
        ("icegate_throttle_tracked", "gauge"),
    ] {
        assert_eq!(
            before.families.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }

    // One challenge, one allocation, one permission.
    let (session, relayed) = allocated(&daemon, alice(), &peer);
    // Two Send indications (5 + 7 bytes) out, three Data indications (10 bytes each) back.
    for data in [&b"abcde"[..], b"abcdefg"] {
        session
            .client
            .send_raw(&send_indication(addr_of(&peer), data).raw);
        assert_eq!(peer_receives(&peer), (data.to_vec(), relayed));
    }
    for _ in 0..3 {
        let reply = peer_to_client(&session, &peer, relayed, b"0123456789");
        assert_eq!(decode(&reply).expect("STUN").typ.method, METHOD_DATA);
    }
    // A channel: four ChannelData of 3 bytes out, two of 6 bytes back.
    let bind = session.request(
        METHOD_CHANNEL_BIND,
        vec![Box::new(ChannelNumber(0x4000)), peer_attr(&peer)],
    );
    assert_success(&bind, "ChannelBind");
    for i in 0..4u8 {
        session.client.send_raw(&[0x40, 0x00, 0x00, 0x03, i, i, i]);
        assert_eq!(peer_receives(&peer), (vec![i, i, i], relayed));
    }
    for _ in 0..2 {
        let reply = peer_to_client(&session, &peer, relayed, b"sixsix");
        assert_eq!(&reply[..4], &[0x40, 0x00, 0x00, 0x06], "ChannelData");
    }
    // One Binding answered.
    session.client.assert_binding_works();
    // One peer refused by the policy (TEST-NET-1 is never relayed to; nothing is sent there).
    let refused = session.request(
        METHOD_CREATE_PERMISSION,
        vec![common::stun_client::peer(
            "192.0.2.1:9".parse().expect("address"),
        )],
    );
    assert_error(&refused, 403, "CreatePermission to 192.0.2.1");
    // One more challenge, then a wrong password.
    let wrong = Session::open(daemon.udp, alice_with("not-the-password"));
    assert_error(&wrong.try_allocate(), 401, "Allocate with a wrong password");

    let after = Scrape::of(&daemon, None);
    let udp: &[(&str, &str)] = &[("transport", "udp")];
    let to_peer_indication: &[(&str, &str)] =
        &[("direction", "to_peer"), ("framing", "indication")];
    let from_peer_indication: &[(&str, &str)] =
        &[("direction", "from_peer"), ("framing", "indication")];
    let to_peer_channel: &[(&str, &str)] = &[("direction", "to_peer"), ("framing", "channel_data")];
    let from_peer_channel: &[(&str, &str)] =
        &[("direction", "from_peer"), ("framing", "channel_data")];
    let wrong_password: &[(&str, &str)] = &[("reason", "wrong-password")];
    let expected = deltas(&[
        ("icegate_allocations", udp, 1.0),
        ("icegate_allocations_created_total", udp, 1.0),
        ("icegate_relayed_packets_total", to_peer_indication, 2.0),
        ("icegate_relayed_bytes_total", to_peer_indication, 12.0),
        ("icegate_relayed_packets_total", from_peer_indication, 3.0),
        ("icegate_relayed_bytes_total", from_peer_indication, 30.0),
        ("icegate_relayed_packets_total", to_peer_channel, 4.0),
        ("icegate_relayed_bytes_total", to_peer_channel, 12.0),
        ("icegate_relayed_packets_total", from_peer_channel, 2.0),
        ("icegate_relayed_bytes_total", from_peer_channel, 12.0),
        ("icegate_stun_binding_responses_total", udp, 1.0),
        ("icegate_peers_refused_total", &[], 1.0),
        ("icegate_refusals_total", &[("reason", "peer-refused")], 1.0),
        ("icegate_refusals_total", &[("reason", "challenge")], 2.0),
        ("icegate_refusals_total", wrong_password, 1.0),
        ("icegate_auth_failures_total", wrong_password, 1.0),
        // The source challenged, and the user whose password failed.
        ("icegate_throttle_tracked", &[("table", "sources")], 1.0),
        ("icegate_throttle_tracked", &[("table", "users")], 1.0),
    ]);
    assert_eq!(after.changes_since(&before), expected);
    assert_eq!(after.get("icegate_draining", &[]), 0.0);
    assert_eq!(
        after.get(
            "icegate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
}

fn peer_attr(peer: &UdpSocket) -> Box<dyn stun::message::Setter> {
    common::stun_client::peer(addr_of(peer))
}

#[test]
fn tls_handshakes_are_counted_by_result_and_stun_over_tls_by_transport() {
    const HOST: &str = "turn.icegate.test";
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = common::make_test_ca_and_cert(dir.path(), HOST);
    let config = TestConfig {
        tls: Some((&certs.cert, &certs.key)),
        ..TestConfig::default()
    }
    .render();
    let daemon = TestDaemon::start(&config);
    let address = daemon.tls.expect("tls listener");
    let before = Scrape::of(&daemon, None);

    // A handshake that completes, then a Binding over it.
    let mut tcp = TcpStream::connect(address).expect("connect");
    tcp.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    let mut tls = rustls::ClientConnection::new(
        common::tls_client_config(&certs.ca),
        rustls::pki_types::ServerName::try_from(HOST).expect("name"),
    )
    .expect("a rustls client");
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).expect("handshake");
    }
    let mut stream = rustls::StreamOwned::new(tls, tcp);
    let binding = build(METHOD_BINDING, CLASS_REQUEST, vec![]);
    stream.write_all(&binding.raw).expect("send Binding");
    let mut header = [0u8; 20];
    stream.read_exact(&mut header).expect("Binding answered");
    assert_eq!(&header[..2], &[0x01, 0x01], "a Binding success response");
    drop(stream);
    // A handshake that fails: a TLS record that is no ClientHello.
    let mut broken = TcpStream::connect(address).expect("connect");
    broken
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("timeout");
    broken
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef])
        .expect("send");
    let mut buf = [0u8; 64];
    while matches!(broken.read(&mut buf), Ok(n) if n > 0) {}

    let failed_handshake: &[(&str, &str)] = &[("reason", "tls-handshake-failed")];
    let tls: &[(&str, &str)] = &[("transport", "tls")];
    let expected = deltas(&[
        ("icegate_tls_handshakes_total", &[("result", "ok")], 1.0),
        ("icegate_tls_handshakes_total", &[("result", "failed")], 1.0),
        ("icegate_refusals_total", failed_handshake, 1.0),
        ("icegate_stun_binding_responses_total", tls, 1.0),
    ]);
    // The daemon notices the closed connections on its own time: look a few times.
    let mut changes = BTreeMap::new();
    for _ in 0..40 {
        changes = Scrape::of(&daemon, None).changes_since(&before);
        if changes == expected {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(changes, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signaling_metrics_and_ending_a_users_signaling_sessions() {
    let daemon = TestDaemon::start(&signal_config(""));
    let http = daemon.listener("http");
    let before = tokio::task::block_in_place(|| Scrape::of(&daemon, None));
    let (mut alice, _) = SignalClient::join_server(http, &token_for("alice")).await;
    alice.join("room", "a").await;
    alice.send_text("not json").await;
    alice.expect_error("bad-json").await;
    let (mut bob, _) = SignalClient::join_server(http, &token_for("bob")).await;
    bob.join("room", "b").await;
    let during = tokio::task::block_in_place(|| Scrape::of(&daemon, None));
    assert_eq!(during.get("icegate_signal_connections", &[]), 2.0);
    assert_eq!(during.get("icegate_signal_rooms", &[]), 1.0);
    let opened = |s: &Scrape| s.get("icegate_signal_connections_opened_total", &[]);
    let messages =
        |s: &Scrape, kind: &str| s.get("icegate_signal_messages_total", &[("type", kind)]);
    assert_eq!(opened(&during) - opened(&before), 2.0);
    assert_eq!(messages(&during, "join") - messages(&before, "join"), 2.0);
    assert_eq!(
        messages(&during, "invalid") - messages(&before, "invalid"),
        1.0
    );

    // The sessions beside the allocations: who, with which peer ids where.
    let listed = tokio::task::block_in_place(|| {
        request(daemon.admin, "GET", "/sessions?user=bob", None, &[])
    });
    assert_eq!(listed.status, 200, "{}", listed.body);
    let sessions = listed.json();
    assert_eq!(sessions.as_array().map(Vec::len), Some(1), "{sessions}");
    assert_eq!(sessions[0]["user"], "bob");
    assert_eq!(sessions[0]["rooms"], json!([{"room": "room", "peer": "b"}]));
    assert_eq!(sessions[0]["state"], "connected");
    // A single node names none.
    assert!(sessions[0]["node"].is_null(), "{sessions}");
    let admin = format!("http://{}", daemon.admin);
    let table = tokio::task::block_in_place(|| ctl_ok(&["--admin", &admin, "sessions"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("USER"), "{table}");
    assert!(
        lines[1].starts_with("alice") && lines[1].contains("room:a"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("bob") && lines[2].contains("room:b"),
        "{table}"
    );

    let ended = tokio::task::block_in_place(|| {
        request(daemon.admin, "DELETE", "/allocations?user=alice", None, &[])
    });
    assert_eq!(ended.status, 200, "{}", ended.body);
    assert_eq!(ended.json()["signal_sessions"], 1);
    assert_eq!(ended.json()["allocations"], 0);
    // Alice's connection is closed with 1008; Bob sees her leave and stays.
    loop {
        match alice.next_event().await {
            Event::Closed(code) => {
                assert_eq!(code, Some(1008));
                break;
            }
            Event::Text(_) => {}
        }
    }
    let left = bob.expect("peer-left").await;
    assert_eq!(left["peer"], "a");
    bob.assert_usable().await;
    assert!(tokio::task::block_in_place(|| daemon.wait_for_log(
        "user-ended user=alice allocations=0 signal-sessions=1"
    )));
}

// ---------------------------------------------------------------------------------------------
// Allocations

#[test]
fn allocations_are_listed_and_a_users_are_ended_which_its_client_sees() {
    let daemon = TestDaemon::start(&common::loopback_config(""));
    let peer = loopback_peer();
    let (alice, alice_relayed) = allocated(&daemon, alice(), &peer);
    let (bob, bob_relayed) = allocated(&daemon, rest_user("bob", unix_now() + 3600), &peer);
    relays_both_ways(&bob, bob_relayed, &peer, b"to bob and back");

    let all = get(&daemon, "/allocations");
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(all.header("content-type"), Some("application/json"));
    assert_eq!(all.json().as_array().expect("a list").len(), 2);
    let listed = get(&daemon, "/allocations?user=bob").json();
    let [entry] = listed.as_array().expect("a list").as_slice() else {
        panic!("one allocation of bob expected: {listed}");
    };
    assert_eq!(entry["transport"], "udp");
    assert_eq!(entry["client"], bob.client.addr().to_string());
    assert_eq!(entry["server"], daemon.udp.to_string());
    assert_eq!(entry["relayed"], bob_relayed.to_string());
    assert!(entry["user"].as_str().expect("user").ends_with(":bob"));
    assert!(entry["age_seconds"].is_u64());
    assert_eq!(entry["to_peer"]["packets"], 1);
    assert_eq!(entry["to_peer"]["bytes"], 15);
    assert_eq!(entry["from_peer"]["packets"], 1);
    assert_eq!(entry["from_peer"]["bytes"], 15);

    let refused = request(daemon.admin, "DELETE", "/allocations", None, &[]);
    assert_eq!(refused.status, 400, "a DELETE must name the user");
    let ended = request(daemon.admin, "DELETE", "/allocations?user=bob", None, &[]);
    assert_eq!(ended.status, 200, "{}", ended.body);
    assert_eq!(ended.json()["allocations"], 1);
    assert!(daemon.wait_for_log(&format!(
        "allocation-ended-by-operator user={} client={} relay={bob_relayed}",
        entry["user"].as_str().unwrap_or_default(),
        bob.client.addr()
    )));
    assert!(daemon.wait_for_log("user-ended user=bob allocations=1 signal-sessions=0"));

    // Bob's client learns on its next request; its peer reaches nobody.
    let refresh = bob.request(
        METHOD_REFRESH,
        vec![Box::new(Lifetime(Duration::from_secs(600)))],
    );
    assert_error(
        &refresh,
        437,
        "Refresh after the operator ended the allocation",
    );
    peer.send_to(b"anyone?", bob_relayed).expect("peer sends");
    assert_eq!(bob.client.recv_within(SILENCE), None);
    // Alice's allocation is untouched.
    relays_both_ways(&alice, alice_relayed, &peer, b"alice still relays");
    assert_eq!(get(&daemon, "/allocations?user=bob").json(), json!([]));
    assert_eq!(
        get(&daemon, "/allocations").json().as_array().map(Vec::len),
        Some(1)
    );
}

// ---------------------------------------------------------------------------------------------
// Drain

#[test]
fn drain_refuses_new_allocations_connections_and_upgrades_while_an_allocation_keeps_relaying() {
    let config = TestConfig {
        tcp: true,
        tables: "[[listen]]\naddress = \"127.0.0.1:0\"\ntransport = \"http\"\n\
                 [signal]\nauth = \"none\"\n",
        ..TestConfig::default()
    }
    .render();
    let daemon = TestDaemon::start(&config);
    let peer = loopback_peer();
    let (session, relayed) = allocated(&daemon, alice(), &peer);
    let healthy = get(&daemon, "/healthz");
    assert_eq!((healthy.status, healthy.body.as_str()), (200, "ok\n"));

    let drained = post(&daemon, "/drain");
    assert_eq!(drained.status, 200, "{}", drained.body);
    assert_eq!(drained.json()["draining"], true);
    assert_eq!(drained.json()["allocations"], 1);
    assert!(daemon.wait_for_log("drain-started source=admin allocations=1"));
    let health = get(&daemon, "/healthz");
    assert_eq!((health.status, health.body.as_str()), (503, "draining\n"));

    // A new allocation gets 508, with MESSAGE-INTEGRITY as any answer to an authenticated request.
    let newcomer = Session::open(daemon.udp, alice());
    assert_error(&newcomer.try_allocate(), 508, "Allocate while draining");
    // A new TURN connection over TCP is closed unanswered.
    let mut tcp = TcpStream::connect(daemon.tcp.expect("tcp listener")).expect("connect");
    tcp.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    let binding = build(METHOD_BINDING, CLASS_REQUEST, vec![]);
    let _ = tcp.write_all(&binding.raw);
    let mut buf = [0u8; 64];
    assert!(
        matches!(tcp.read(&mut buf), Ok(0) | Err(_)),
        "a TCP connection opened while draining was served"
    );
    // A new signaling connection gets 503.
    let upgrade = request(
        daemon.listener("http"),
        "GET",
        "/ws",
        None,
        &[
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ],
    );
    assert_eq!(upgrade.status, 503, "{}", upgrade.body);
    assert_eq!(upgrade.json()["error"]["code"], "draining");

    // The existing allocation carries on: it relays and refreshes.
    relays_both_ways(&session, relayed, &peer, b"still relaying");
    let refresh = session.request(
        METHOD_REFRESH,
        vec![Box::new(Lifetime(Duration::from_secs(600)))],
    );
    assert_success(&refresh, "Refresh while draining");
    let scrape = Scrape::of(&daemon, None);
    assert_eq!(scrape.get("icegate_draining", &[]), 1.0);
    assert_eq!(
        scrape.get("icegate_allocations", &[("transport", "udp")]),
        1.0
    );
    assert_eq!(
        scrape.get("icegate_refusals_total", &[("reason", "draining")]),
        2.0
    );
    // Draining twice is fine.
    assert_eq!(post(&daemon, "/drain").status, 200);
}

#[test]
fn sigterm_drains_and_exits_0_once_the_last_allocation_ends() {
    let mut daemon = TestDaemon::start(&common::loopback_config(""));
    let peer = loopback_peer();
    let (session, relayed) = allocated(&daemon, alice(), &peer);
    daemon.signal("TERM");
    assert!(daemon.wait_for_log("drain-started source=SIGTERM allocations=1"));
    assert!(
        daemon.is_running(),
        "icegate exited with an allocation left"
    );
    assert_eq!(get(&daemon, "/healthz").status, 503);
    let newcomer = Session::open(daemon.udp, alice());
    assert_error(&newcomer.try_allocate(), 508, "Allocate after SIGTERM");
    relays_both_ways(&session, relayed, &peer, b"relayed during the drain");

    let delete = session.request(METHOD_REFRESH, vec![Box::new(Lifetime(Duration::ZERO))]);
    assert_success(&delete, "Refresh with lifetime 0");
    exits_with_success(&mut daemon);
    assert!(
        daemon
            .wait_for_line(
                "drain-ended reason=allocations-ended allocations=0",
                READ_TIMEOUT
            )
            .is_some(),
        "{}",
        daemon.log()
    );
    assert!(
        daemon
            .wait_for_line("info stopping; ", READ_TIMEOUT)
            .is_some()
    );
}

#[test]
fn sigterm_exits_0_after_the_grace_period_with_an_allocation_left() {
    let config = TestConfig {
        shutdown_grace: Some("1s"),
        ..TestConfig::default()
    }
    .render();
    let mut daemon = TestDaemon::start(&config);
    let peer = loopback_peer();
    let (_session, _relayed) = allocated(&daemon, alice(), &peer);
    daemon.signal("TERM");
    exits_with_success(&mut daemon);
    assert!(
        daemon
            .wait_for_line(
                "drain-ended reason=grace-elapsed allocations=1",
                READ_TIMEOUT
            )
            .is_some(),
        "{}",
        daemon.log()
    );
}

// ---------------------------------------------------------------------------------------------
// Token and reload

fn token_config(token: &str) -> String {
    TestConfig {
        admin_extra: &format!("token = \"{token}\""),
        ..TestConfig::default()
    }
    .render()
}

#[test]
fn with_a_token_every_route_but_healthz_requires_it_and_a_reload_changes_it() {
    let daemon = TestDaemon::start(&token_config(TOKEN));
    let admin = daemon.admin;
    let healthz = request(admin, "GET", "/healthz", None, &[]);
    assert_eq!(healthz.status, 200);
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/allocations"),
        ("DELETE", "/allocations?user=alice"),
        ("POST", "/drain"),
        ("POST", "/reload"),
    ] {
        for token in [None, Some("wrong-token-0123456789abcdef")] {
            let refused = request(admin, method, path, token, &[]);
            assert_eq!(refused.status, 401, "{method} {path} with {token:?}");
            assert_eq!(
                refused.header("www-authenticate"),
                Some("Bearer realm=\"icegate-admin\"")
            );
        }
    }
    assert_eq!(
        request(admin, "GET", "/allocations", Some(TOKEN), &[]).status,
        200
    );
    assert_eq!(
        request(admin, "GET", "/healthz", None, &[]).status,
        200,
        "nothing was drained by the refused requests"
    );

    let new_token = "the-next-admin-token-0123456789";
    std::fs::write(&daemon.config_path, token_config(new_token)).expect("rewrite the config");
    let reloaded = request(admin, "POST", "/reload", Some(TOKEN), &[]);
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    assert_eq!(
        request(admin, "GET", "/metrics", Some(TOKEN), &[]).status,
        401
    );
    let scrape = Scrape::of(&daemon, Some(new_token));
    assert_eq!(
        scrape.get("icegate_reloads_total", &[("result", "ok")]),
        1.0
    );
}

#[test]
fn post_reload_answers_with_the_outcome_of_the_same_reload_as_sighup() {
    let daemon = TestDaemon::start(&common::loopback_config(""));
    let ok = post(&daemon, "/reload");
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["reloaded"], true);
    assert!(
        ok.json()["message"]
            .as_str()
            .expect("message")
            .starts_with("listeners added=0")
    );

    std::fs::write(&daemon.config_path, "realm = 5\n").expect("break the config");
    let failed = post(&daemon, "/reload");
    assert_eq!(failed.status, 500, "{}", failed.body);
    assert_eq!(failed.json()["error"]["code"], "reload-failed");
    let why = failed.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(why.contains("realm"), "{why}");
    daemon.signal("HUP");
    assert!(daemon.wait_for_log("reload result=failed"));
    let scrape = Scrape::of(&daemon, None);
    assert_eq!(
        scrape.get("icegate_reloads_total", &[("result", "ok")]),
        1.0
    );
    // The SIGHUP's failure may still be on its way to the counter: wait for it.
    let mut failures = scrape.get("icegate_reloads_total", &[("result", "failed")]);
    for _ in 0..50 {
        if failures == 2.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        failures = Scrape::of(&daemon, None).get("icegate_reloads_total", &[("result", "failed")]);
    }
    assert_eq!(failures, 2.0);
    // Still serving with the previous configuration.
    let session = Session::open(daemon.udp, alice());
    session.allocate();
}

#[test]
fn unknown_routes_and_methods_are_refused() {
    let daemon = TestDaemon::start(&common::loopback_config(""));
    assert_eq!(get(&daemon, "/nothing").status, 404);
    let wrong = request(daemon.admin, "GET", "/drain", None, &[]);
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("POST"));
    assert_eq!(
        get(&daemon, "/healthz").status,
        200,
        "GET /drain drained nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// icegate ctl

fn ctl(args: &[&str]) -> Finished {
    run_bounded(
        Command::new(env!("CARGO_BIN_EXE_icegate"))
            .arg("ctl")
            .args(args),
        Duration::from_secs(20),
    )
}

#[track_caller]
fn ctl_ok(args: &[&str]) -> String {
    let done = ctl(args);
    assert!(
        done.status.success(),
        "icegate ctl {} failed ({}): {}",
        args.join(" "),
        done.status,
        done.stderr
    );
    done.stdout
}

#[test]
fn icegate_ctl_reads_the_admin_address_and_token_from_the_config_or_the_command_line() {
    let daemon = TestDaemon::start(&token_config(TOKEN));
    let peer = loopback_peer();
    let (_session, relayed) = allocated(&daemon, alice(), &peer);
    // What an operator's config says: the admin address (here the bound one) and token.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("icegate.toml");
    std::fs::write(
        &config,
        format!(
            "[[listen]]\naddress = \"127.0.0.1:0\"\n[auth]\nsecrets = [\"{SECRET}\"]\n\
             [admin]\naddress = \"{}\"\ntoken = \"{TOKEN}\"\n",
            daemon.admin
        ),
    )
    .expect("write the ctl config");
    let config = config.to_str().expect("UTF-8 path");
    let url = format!("http://{}", daemon.admin);

    let status = ctl_ok(&["--config", config, "status"]);
    assert!(status.contains(&format!("at {url}: ok")), "{status}");
    assert!(
        status.contains("allocations: 1 (udp 1, tcp 0, tls 0)"),
        "{status}"
    );

    let listed = ctl_ok(&["--admin", &url, "--token", TOKEN, "allocations"]);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(lines[0].starts_with("USER"), "{listed}");
    assert!(
        lines[1].starts_with(USER) && lines[1].contains(&relayed.to_string()),
        "{listed}"
    );
    let none = ctl_ok(&["--config", config, "allocations", "--user", "nobody"]);
    assert_eq!(none, "no allocations\n");

    let refused = ctl(&["--admin", &url, "status"]);
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);
    let unreachable = ctl(&["--admin", "http://127.0.0.1:1", "status"]);
    assert!(!unreachable.status.success());
    assert!(
        unreachable.stderr.contains("cannot connect"),
        "{}",
        unreachable.stderr
    );

    let reloaded = ctl_ok(&["--config", config, "reload"]);
    assert!(
        reloaded.starts_with("reloaded: listeners added=0"),
        "{reloaded}"
    );
    let killed = ctl_ok(&["--config", config, "kill", USER]);
    assert_eq!(
        killed,
        format!("ended 1 allocations and 0 signaling sessions of {USER}\n")
    );
    let drained = ctl_ok(&["--config", config, "drain"]);
    assert!(drained.starts_with("draining:"), "{drained}");
    let status = ctl_ok(&["--config", config, "status"]);
    assert!(status.contains(": draining"), "{status}");
    assert!(status.contains("allocations: 0"), "{status}");
}
