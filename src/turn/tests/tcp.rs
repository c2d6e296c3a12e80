//! TCP allocations (RFC 6062) in the core: Connect waits for the shell's
//! outcome, a peer connection waits 30 s for ConnectionBind, only the
//! allocation's user may bind it, and ending the allocation ends them all.

use std::net::SocketAddr;

use super::{Client, Harness, Outcome, alice, bob, peer};
use crate::config::Transport;
use crate::reject::Reject;
use crate::turn::bandwidth::Way;
use crate::turn::connections::BIND_WAIT;
use crate::turn::tcp::Connected;
use crate::wire::{Class, Message, Method, attr};

/// `client` over TCP instead of UDP.
fn over_tcp(client: &Client) -> Client {
    let mut tcp = client.clone();
    tcp.five_tuple.transport = Transport::Tcp;
    tcp
}

fn tcp_transport(builder: &mut crate::wire::MessageBuilder<'_>) {
    builder.add(attr::REQUESTED_TRANSPORT, &[attr::TRANSPORT_TCP, 0, 0, 0]);
}

/// A TCP allocation for `client` (over TCP).
fn allocated_tcp(harness: &mut Harness, client: &Client, now: crate::turn::core::Now) {
    harness
        .call(client, now, Method::ALLOCATE, tcp_transport)
        .assert_success("Allocate TCP");
}

/// Connect from `client` to `target`: the connection id the shell is to connect.
#[track_caller]
fn connect(
    harness: &mut Harness,
    client: &Client,
    now: crate::turn::core::Now,
    target: SocketAddr,
) -> u32 {
    let reply = harness.call(client, now, Method::CONNECT, |b| {
        b.add_xor_address(attr::XOR_PEER_ADDRESS, target);
    });
    assert!(reply.bytes.is_empty(), "Connect is answered later");
    match reply.outcome {
        Outcome::ConnectToPeer {
            connection, peer, ..
        } => {
            assert_eq!(peer, target);
            connection
        }
        other => panic!("expected ConnectToPeer, got {other:?}"),
    }
}

fn connection_bind(
    harness: &mut Harness,
    client: &Client,
    now: crate::turn::core::Now,
    connection: u32,
) -> super::Reply {
    harness.call(client, now, Method::CONNECTION_BIND, |b| {
        b.add_u32(attr::CONNECTION_ID, connection);
    })
}

#[test]
fn connect_is_answered_with_the_connection_id_once_the_peer_is_connected() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let control = over_tcp(&alice());
    allocated_tcp(&mut harness, &control, now);
    let connection = connect(&mut harness, &control, now, peer("127.0.0.1:7000"));
    let mut out = Vec::new();
    assert_eq!(
        harness
            .core
            .connect_finished(connection, true, now.instant, &mut out),
        Connected::Keep
    );
    let answer = Message::parse(&out).unwrap();
    assert_eq!(
        (answer.method, answer.class),
        (Method::CONNECT, Class::Success)
    );
    assert_eq!(
        answer.get(attr::CONNECTION_ID).and_then(attr::u32_value),
        Some(connection)
    );
    assert!(answer.integrity_matches(control.key.as_bytes()));

    // The data connection comes from another port, as the same user.
    let data = over_tcp(&alice().on_port(41_000));
    let reply = connection_bind(&mut harness, &data, now, connection);
    reply.assert_success("ConnectionBind");
    assert_eq!(reply.outcome, Outcome::Joined(connection));
    // Bound once: a second bind finds nothing waiting.
    connection_bind(
        &mut harness,
        &over_tcp(&alice().on_port(41_001)),
        now,
        connection,
    )
    .assert_error(400, "a second ConnectionBind");
}

#[test]
fn a_failed_connect_gets_447_and_frees_the_peer() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let control = over_tcp(&alice());
    allocated_tcp(&mut harness, &control, now);
    let target = peer("127.0.0.1:7000");
    let connection = connect(&mut harness, &control, now, target);
    let mut out = Vec::new();
    assert_eq!(
        harness
            .core
            .connect_finished(connection, false, now.instant, &mut out),
        Connected::Refused
    );
    let answer = Message::parse(&out).unwrap();
    assert_eq!(answer.class, Class::Error);
    assert_eq!(harness.core.counters.get(Reject::ConnectFailed), 1);
    // The peer may be tried again.
    connect(&mut harness, &control, now, target);
}

#[test]
fn only_the_allocations_user_may_bind_its_connection() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let control = over_tcp(&alice());
    allocated_tcp(&mut harness, &control, now);
    let connection = connect(&mut harness, &control, now, peer("127.0.0.1:7000"));
    harness
        .core
        .connect_finished(connection, true, now.instant, &mut Vec::new());
    connection_bind(&mut harness, &over_tcp(&bob()), now, connection)
        .assert_error(441, "ConnectionBind by another user");
    // Over UDP there is no data connection to join.
    connection_bind(&mut harness, &alice().on_port(41_000), now, connection)
        .assert_error(400, "ConnectionBind over UDP");
}

#[test]
fn a_connection_not_bound_within_30_seconds_is_closed() {
    let mut harness = Harness::new();
    let start = harness.at(0);
    let control = over_tcp(&alice());
    allocated_tcp(&mut harness, &control, start);
    let id = harness.core.table.id_for(&control.five_tuple).unwrap();
    harness
        .call(&control, start, Method::CREATE_PERMISSION, |b| {
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer("127.0.0.1:1"));
        })
        .assert_success("CreatePermission");
    let mut indication = Vec::new();
    let connection = harness
        .core
        .peer_connected_in(id, peer("127.0.0.1:5555"), start.instant, &mut indication)
        .expect("a permitted peer is offered");
    let attempt = Message::parse(&indication).unwrap();
    assert_eq!(
        (attempt.method, attempt.class),
        (Method::CONNECTION_ATTEMPT, Class::Indication)
    );
    let almost = start.instant + BIND_WAIT - std::time::Duration::from_secs(1);
    harness.core.handle_timeout(almost);
    assert!(harness.core.take_ended_connections().is_empty());
    harness.core.handle_timeout(start.instant + BIND_WAIT);
    assert_eq!(harness.core.take_ended_connections(), vec![connection]);
    assert_eq!(harness.core.counters.get(Reject::ConnectionBindTimeout), 1);
    assert_eq!(harness.core.peer_connection_count(), 0);
}

#[test]
fn a_peer_without_permission_or_past_the_cap_is_turned_away() {
    let mut harness = Harness::with_relay("max-tcp-connections-per-allocation = 1");
    let now = harness.at(0);
    let control = over_tcp(&alice());
    allocated_tcp(&mut harness, &control, now);
    let id = harness.core.table.id_for(&control.five_tuple).unwrap();
    let mut out = Vec::new();
    assert_eq!(
        harness
            .core
            .peer_connected_in(id, peer("127.0.0.1:5555"), now.instant, &mut out),
        Err(Reject::NoRoute)
    );
    harness
        .call(&control, now, Method::CREATE_PERMISSION, |b| {
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer("127.0.0.1:1"));
        })
        .assert_success("CreatePermission");
    assert!(
        harness
            .core
            .peer_connected_in(id, peer("127.0.0.1:5555"), now.instant, &mut out)
            .is_ok()
    );
    assert_eq!(
        harness
            .core
            .peer_connected_in(id, peer("127.0.0.1:5556"), now.instant, &mut out),
        Err(Reject::TcpConnectionQuota)
    );
}

#[test]
fn ending_a_tcp_allocation_ends_its_connections_and_a_late_connect_finds_it_gone() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let control = over_tcp(&alice());
    allocated_tcp(&mut harness, &control, now);
    let waiting = connect(&mut harness, &control, now, peer("127.0.0.1:7000"));
    harness
        .core
        .connect_finished(waiting, true, now.instant, &mut Vec::new());
    let connecting = connect(&mut harness, &control, now, peer("127.0.0.1:7001"));
    harness
        .core
        .end_connection(&control.five_tuple, now.instant);
    let mut ended = harness.core.take_ended_connections();
    ended.sort_unstable();
    let mut expected = vec![waiting, connecting];
    expected.sort_unstable();
    assert_eq!(ended, expected);
    let mut out = Vec::new();
    assert_eq!(
        harness
            .core
            .connect_finished(connecting, true, now.instant, &mut out),
        Connected::Gone
    );
    assert!(out.is_empty());
}

#[test]
fn tcp_allocations_refuse_what_belongs_to_udp() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    // Asked over UDP.
    harness
        .call(&alice(), now, Method::ALLOCATE, tcp_transport)
        .assert_error(400, "TCP allocation over UDP");
    // With a UDP-only attribute.
    let control = over_tcp(&alice());
    harness
        .call(&control, now, Method::ALLOCATE, |b| {
            tcp_transport(b);
            b.add(attr::EVEN_PORT, &[0]);
        })
        .assert_error(400, "TCP allocation with EVEN-PORT");
    // Connect on a UDP allocation.
    harness.allocated(&alice(), now);
    harness
        .call(&alice(), now, Method::CONNECT, |b| {
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer("127.0.0.1:7000"));
        })
        .assert_error(400, "Connect on a UDP allocation");
    assert_eq!(harness.core.counters.get(Reject::RelayTransportMismatch), 3);
}

#[test]
fn tcp_data_over_the_bandwidth_cap_waits_for_its_turn() {
    // 100 kB/s: a burst of 64 KiB passes at once, then 100 kB a second.
    let mut harness = Harness::with_relay("max-bps = 100000");
    let now = harness.at(0);
    let control = over_tcp(&alice());
    allocated_tcp(&mut harness, &control, now);
    let connection = connect(&mut harness, &control, now, peer("127.0.0.1:7000"));
    harness
        .core
        .connect_finished(connection, true, now.instant, &mut Vec::new());
    let chunk = 16 * 1024;
    for _ in 0..4 {
        assert!(
            harness
                .core
                .pass_peer_data(connection, Way::ToPeer, chunk, now.instant)
        );
    }
    assert!(
        !harness
            .core
            .pass_peer_data(connection, Way::ToPeer, chunk, now.instant)
    );
    // The other direction has its own cap.
    assert!(
        harness
            .core
            .pass_peer_data(connection, Way::FromPeer, chunk, now.instant)
    );
    let later = now.instant + std::time::Duration::from_millis(200);
    assert!(
        harness
            .core
            .pass_peer_data(connection, Way::ToPeer, chunk, later)
    );
    let id = harness.core.table.id_for(&control.five_tuple).unwrap();
    let allocation = harness.core.table.get(id).unwrap();
    assert_eq!(
        allocation.to_peer.bytes,
        5 * chunk as u64,
        "what passed is counted"
    );
}
