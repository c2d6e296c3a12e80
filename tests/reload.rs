//! Live reload (SIGHUP, as `systemctl reload` sends it) against the real
//! daemon: users, listeners and log level change while allocations that the
//! new config still allows keep relaying; a broken file changes nothing.
//! TURN clients are the `turn` crate's; peers are sockets on 127.0.0.1.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tokio::net::UdpSocket;

use common::turn::TurnAllocation;
use common::{PASSWORD, SECRET, TestConfig, TestDaemon, USER, rest_password, unix_now};

/// The test config at log level info, plus `extra` (TOML appended at the end).
fn config(extra: &str) -> String {
    TestConfig::default()
        .render()
        .replace("level = \"debug\"", "level = \"info\"")
        + extra
}

fn rewrite(daemon: &TestDaemon, text: &str) {
    std::fs::write(&daemon.config_path, text).expect("rewrite the config");
}

/// Sends SIGHUP and waits for the outcome's `reload` line (the `n`th).
fn reload(daemon: &TestDaemon, n: usize) -> String {
    daemon.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<String> = daemon
            .log()
            .lines()
            .filter(|l| l.contains(" reload result="))
            .map(str::to_owned)
            .collect();
        if let Some(line) = lines.get(n - 1) {
            return line.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reload outcome; log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn peer() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.expect("bind peer")
}

/// A STUN Binding over TCP to `address` gets a success response.
fn tcp_binding_answered(address: std::net::SocketAddr) -> bool {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Binding request: type 0x0001, length 0, magic cookie, transaction id.
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    request.extend_from_slice(&[7; 12]);
    stream.write_all(&request).unwrap();
    let mut header = [0u8; 20];
    stream.read_exact(&mut header).is_ok() && header[0..2] == [0x01, 0x01]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_users_listeners_and_level_and_keeps_what_is_still_allowed() {
    let second_udp = "[[listen]]\naddress = \"127.0.0.1:0\"\ntransport = \"udp\"\n";
    let daemon = TestDaemon::start(&config(second_udp));
    let pid = daemon.pid();
    let rest_user = format!("{}:keeper", unix_now() + 3600);
    let keeper = TurnAllocation::make(daemon.udp, &rest_user, &rest_password(SECRET, &rest_user))
        .await
        .expect("REST allocation");
    let alice = TurnAllocation::make(daemon.udp, USER, PASSWORD)
        .await
        .expect("alice's allocation");
    let bob_refused = TurnAllocation::make(daemon.udp, "bob", "bob-password").await;
    assert!(bob_refused.is_err(), "bob is not a user yet");
    let peer = peer().await;
    keeper.relays_to(&peer, b"before the reload").await;

    // alice goes, bob comes, the second UDP listener goes, a TCP one comes,
    // and the level becomes debug.
    let edited = TestConfig::default().render().replace(
        &format!("name = \"{USER}\"\npassword = \"{PASSWORD}\""),
        "name = \"bob\"\npassword = \"bob-password\"",
    ) + "[[listen]]\naddress = \"127.0.0.1:0\"\ntransport = \"tcp\"\n";
    assert!(!edited.contains(USER));
    rewrite(&daemon, &edited);
    let outcome = reload(&daemon, 1);
    assert!(
        outcome.starts_with("info reload result=ok detail=\"listeners added=1 removed=1"),
        "{outcome}"
    );
    assert_eq!(daemon.pid(), pid);

    assert!(daemon.wait_for_log(&format!("allocation-deleted-user-removed user={USER} ")));
    keeper.relays_to(&peer, b"after the reload").await;
    keeper.receives_from(&peer, b"and back").await;
    let bob = TurnAllocation::make(daemon.udp, "bob", "bob-password")
        .await
        .expect("bob allocates after the reload");
    bob.relays_to(&peer, b"bob's first").await;

    assert!(daemon.wait_for_log("listener-removed udp 127.0.0.1:"));
    let tcp = daemon.listener("tcp");
    assert!(
        tcp_binding_answered(tcp),
        "the new TCP listener answers STUN"
    );
    // Debug lines now show (connections are logged at debug).
    assert!(daemon.wait_for_log("debug connection-opened tcp "));

    for allocation in [keeper, alice, bob] {
        allocation.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_fails_the_reload_and_the_running_one_keeps_serving() {
    let daemon = TestDaemon::start(&config(""));
    let alice = TurnAllocation::make(daemon.udp, USER, PASSWORD)
        .await
        .expect("alice's allocation");
    let peer = peer().await;
    alice.relays_to(&peer, b"before").await;

    let broken = config("").replace("[relay]\n", "[relay]\nports = \"9-8\"\ncolour = \"red\"\n");
    rewrite(&daemon, &broken);
    let outcome = reload(&daemon, 1);
    assert!(
        outcome.starts_with("error reload result=failed"),
        "{outcome}"
    );
    let log = daemon.log();
    let line_of = |key: &str| {
        broken
            .lines()
            .position(|l| l.starts_with(key))
            .map(|i| i + 1)
            .unwrap()
    };
    for (key, line) in [
        ("relay.ports", line_of("ports =")),
        ("relay.colour", line_of("colour =")),
    ] {
        assert!(
            log.contains(&format!("icegate.toml:{line}: {key}: ")),
            "the failure names {key} at line {line}; log:\n{log}"
        );
    }
    alice.relays_to(&peer, b"after the failed reload").await;
    alice.receives_from(&peer, b"still both ways").await;
    let again = TurnAllocation::make(daemon.udp, USER, PASSWORD)
        .await
        .expect("the running config still takes alice");
    again.close().await;

    // Fixed, the next reload works.
    rewrite(&daemon, &config(""));
    assert!(reload(&daemon, 2).starts_with("info reload result=ok"));
    alice.relays_to(&peer, b"after the good reload").await;
    alice.close().await;
}

/// GET `path` over plain HTTP with `header`; the status code.
fn http_status(address: std::net::SocketAddr, path: &str, header: &str) -> u16 {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\n{header}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signaling_keys_and_api_keys_change_and_open_sessions_go_on() {
    use common::signal::{SignalClient, signal_config, token};
    let old_jwt = "old-signaling-secret-0123456789abcdef";
    let new_jwt = "new-signaling-secret-0123456789abcdef";
    let text = |jwt: &str, api_key: &str| {
        signal_config("").replace(common::signal::JWT_SECRET, jwt)
            + &format!("[http]\napi-keys = [\"{api_key}\"]\n")
    };
    let daemon = TestDaemon::start(&text(old_jwt, "old-api-key-0123456789"));
    let http = daemon.listener("http");
    let (mut open, _) = SignalClient::join_server(http, &token(old_jwt, "alice", 600, None)).await;
    open.join("room", "alice").await;
    let bearer = |key: &str| format!("Authorization: Bearer {key}");
    assert_eq!(
        http_status(http, "/ice-servers", &bearer("old-api-key-0123456789")),
        200
    );

    rewrite(&daemon, &text(new_jwt, "new-api-key-0123456789"));
    assert!(reload(&daemon, 1).starts_with("info reload result=ok"));

    assert_eq!(
        http_status(http, "/ice-servers", &bearer("old-api-key-0123456789")),
        401
    );
    assert_eq!(
        http_status(http, "/ice-servers", &bearer("new-api-key-0123456789")),
        200
    );
    let refused = SignalClient::connect_with(
        http,
        &format!("token={}", token(old_jwt, "bob", 600, None)),
        &[],
    )
    .await
    .err()
    .expect("a token signed with the removed secret is refused");
    assert_eq!(refused.status, 401);
    let (mut bob, _) = SignalClient::join_server(http, &token(new_jwt, "bob", 600, None)).await;
    bob.join("room", "bob").await;
    // The session opened before the reload goes on, in the same room.
    assert_eq!(open.expect("peer-joined").await["peer"], "bob");
    open.assert_usable().await;
}
