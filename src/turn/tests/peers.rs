//! CreatePermission, ChannelBind and Send: which peers and channel numbers
//! are accepted (RFC 8656 §9, §10, §11) and what the data plane then routes.

use super::{Harness, Outcome, alice, config_with_relay, peer, reload, send_indication};
use crate::reject::Reject;
use crate::wire::{Method, attr};

#[test]
fn strict_channel_numbers_outside_0x4000_to_0x4fff_get_400() {
    let mut harness = Harness::with_relay("rfc5766-channel-numbers = false");
    let now = harness.at(0);
    harness.allocated(&alice(), now);
    for (number, peer_port) in [
        (0x0000_u16, 1),
        (0x3FFF, 2),
        (0x5000, 3),
        (0x7FFF, 4),
        (0xFFFF, 5),
    ] {
        let target = peer(&format!("127.0.0.1:{peer_port}"));
        harness
            .channel_bind(&alice(), now, number, target)
            .assert_error(400, &format!("ChannelBind {number:#06x}"));
    }
    for (number, peer_port) in [(0x4000, 10), (0x4FFF, 11)] {
        let target = peer(&format!("127.0.0.1:{peer_port}"));
        harness
            .channel_bind(&alice(), now, number, target)
            .assert_success(&format!("ChannelBind {number:#06x}"));
    }
}

#[test]
fn channel_numbers_up_to_0x7fff_are_accepted_by_default() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    harness.allocated(&alice(), now);
    for (number, peer_port) in [(0x5000_u16, 1), (0x7FFF, 2)] {
        let target = peer(&format!("127.0.0.1:{peer_port}"));
        harness
            .channel_bind(&alice(), now, number, target)
            .assert_success(&format!("ChannelBind {number:#06x}"));
        assert_eq!(
            harness
                .core
                .route_channel_data(now.instant, &alice().five_tuple, number, 4),
            Ok((
                harness.core.table.id_for(&alice().five_tuple).unwrap(),
                target
            ))
        );
    }
    for number in [0x3FFF_u16, 0x8000] {
        harness
            .channel_bind(&alice(), now, number, peer("127.0.0.1:3"))
            .assert_error(400, &format!("ChannelBind {number:#06x}"));
    }
}

#[test]
fn channel_bind_conflicts_get_400_and_rebinding_the_same_pair_is_allowed() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    harness.allocated(&alice(), now);
    let (p1, p2) = (peer("127.0.0.1:7000"), peer("127.0.0.2:7000"));
    harness
        .channel_bind(&alice(), now, 0x4000, p1)
        .assert_success("bind");
    harness
        .channel_bind(&alice(), now, 0x4000, p1)
        .assert_success("the same number to the same peer: a refresh");
    harness
        .channel_bind(&alice(), now, 0x4000, p2)
        .assert_error(400, "the number is bound to another peer");
    harness
        .channel_bind(&alice(), now, 0x4001, p1)
        .assert_error(400, "the peer is bound to another number");
    // Same IP, another port: another transport address, so no conflict.
    harness
        .channel_bind(&alice(), now, 0x4001, peer("127.0.0.1:7001"))
        .assert_success("another port of the same host");
    let id = harness.core.table.id_for(&alice().five_tuple).unwrap();
    assert_eq!(
        harness.core.route_from_peer(id, p1, now.instant, 1),
        Some(Some(0x4000)),
        "the refused requests changed nothing"
    );
}

#[test]
fn channel_bind_and_create_permission_without_a_peer_get_400() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    harness.allocated(&alice(), now);
    harness
        .call(&alice(), now, Method::CREATE_PERMISSION, |_| {})
        .assert_error(400, "CreatePermission without XOR-PEER-ADDRESS");
    harness
        .call(&alice(), now, Method::CHANNEL_BIND, |b| {
            b.add_u32(attr::CHANNEL_NUMBER, 0x4000 << 16);
        })
        .assert_error(400, "ChannelBind without XOR-PEER-ADDRESS");
    harness
        .call(&alice(), now, Method::CHANNEL_BIND, |b| {
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer("127.0.0.1:9"));
        })
        .assert_error(400, "ChannelBind without CHANNEL-NUMBER");
    harness
        .call(&alice(), now, Method::CREATE_PERMISSION, |b| {
            b.add(attr::XOR_PEER_ADDRESS, &[0, 1, 0, 9, 1, 2]);
        })
        .assert_error(400, "XOR-PEER-ADDRESS too short for IPv4");
    assert_eq!(harness.rejected(Reject::BadRequest), 4);
}

/// Both CreatePermission and ChannelBind for `target` get `code`.
#[track_caller]
fn assert_peer_refused(harness: &mut Harness, target: &str, code: u16) {
    let (target, now) = (peer(target), harness.at(0));
    harness
        .create_permission(&alice(), now, &[target])
        .assert_error(code, &format!("CreatePermission {target}"));
    harness
        .channel_bind(&alice(), now, 0x4000, target)
        .assert_error(code, &format!("ChannelBind {target}"));
}

#[test]
fn ipv6_peer_on_an_ipv4_relay_gets_443() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    harness.allocated(&alice(), now);
    // The policy would refuse ::1 too: the family is checked first.
    for target in [
        "[::1]:9",
        "[2606:4700:4700::1111]:9",
        "[2002:7f00:1::]:9",
        "[64:ff9b::7f00:1]:9",
    ] {
        assert_peer_refused(&mut harness, target, 443);
    }
    assert_eq!(harness.rejected(Reject::PeerAddressFamilyMismatch), 8);
    assert_eq!(
        harness.rejected(Reject::PeerRefused),
        0,
        "family before policy"
    );
}

#[test]
fn peers_the_policy_refuses_get_403_and_no_permission() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let id = harness.allocated(&alice(), now);
    // Only 127.0.0.0/8 is allowed beyond the default policy.
    for target in [
        "10.0.0.1:9",
        "192.168.1.1:9",
        "0.0.0.0:9",
        "169.254.169.254:80",
        "[::ffff:10.0.0.1]:9",
        "[::ffff:0.0.0.0]:9",
    ] {
        assert_peer_refused(&mut harness, target, 403);
    }
    assert_eq!(harness.rejected(Reject::PeerRefused), 12);
    // One refused peer among allowed ones refuses the whole request.
    let allowed = peer("8.8.8.8:53");
    harness
        .create_permission(&alice(), now, &[allowed, peer("10.0.0.1:9")])
        .assert_error(403, "8.8.8.8 and 10.0.0.1");
    assert_eq!(
        harness.core.route_from_peer(id, allowed, now.instant, 1),
        None
    );
    harness
        .create_permission(&alice(), now, &[allowed, peer("[::ffff:127.0.0.1]:9")])
        .assert_success("8.8.8.8 and IPv4-mapped 127.0.0.1");
    assert_eq!(
        harness
            .core
            .route_from_peer(id, peer("127.0.0.1:9"), now.instant, 1),
        Some(None),
        "a mapped address grants the IPv4 address it names"
    );
}

#[test]
fn send_indication_goes_out_only_to_permitted_peers() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let client = alice();
    let id = harness.allocated(&client, now);
    let target = peer("127.0.0.1:9");
    let send = send_indication(harness.transaction(), target, b"hello");
    assert_eq!(
        harness.send(now, &client.five_tuple, &send).outcome,
        Outcome::Nothing
    );
    assert_eq!(harness.rejected(Reject::NoRoute), 1);
    harness
        .create_permission(&client, now, &[target])
        .assert_success("permit");
    assert_eq!(
        harness.send(now, &client.five_tuple, &send).outcome,
        Outcome::ToPeer {
            relay: id,
            peer: target,
            data: b"hello".to_vec()
        }
    );
    let other = send_indication(harness.transaction(), peer("127.0.0.2:9"), b"x");
    assert_eq!(
        harness.send(now, &client.five_tuple, &other).outcome,
        Outcome::Nothing
    );
    let stranger = alice().on_port(40999);
    assert_eq!(
        harness.send(now, &stranger.five_tuple, &send).outcome,
        Outcome::Nothing,
        "no allocation on that 5-tuple"
    );
    assert_eq!(harness.rejected(Reject::NoRoute), 3);
}

#[test]
fn a_reload_that_tightens_the_policy_ends_permissions_and_channels_it_refuses_at_once() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let id = harness.allocated(&alice(), now);
    let (kept, refused) = (peer("127.0.0.2:7000"), peer("127.0.0.3:7000"));
    harness
        .channel_bind(&alice(), now, 0x4000, refused)
        .assert_success("channel to 127.0.0.3");
    harness
        .create_permission(&alice(), now, &[kept])
        .assert_success("permission for 127.0.0.2");
    let later = harness.at(1);
    let tightened = config_with_relay(r#"allow-peers = ["127.0.0.2/32"]"#);
    reload(&mut harness, &tightened, later);
    assert_eq!(
        harness.core.route_from_peer(id, refused, later.instant, 1),
        None,
        "the refused peer's channel and permission are gone"
    );
    assert_eq!(
        harness
            .core
            .route_channel_data(later.instant, &alice().five_tuple, 0x4000, 1),
        Err(Reject::NoRoute)
    );
    assert_eq!(
        harness.core.route_from_peer(id, kept, later.instant, 1),
        Some(None),
        "the allowed peer's permission stays"
    );
}

#[test]
fn icegates_own_udp_listeners_are_never_a_peer_whatever_the_policy_allows() {
    // 127.0.0.0/8 is allowed here, as in the embedded default: without this
    // rule a client could relay into icegate itself, TURN inside TURN.
    for listener in ["127.0.0.1:3478", "0.0.0.0:3478"] {
        let mut harness = Harness::new();
        harness.core.set_listeners(&[peer(listener)]);
        let now = harness.at(0);
        let id = harness.allocated(&alice(), now);
        let own = peer("127.0.0.1:3478");
        harness
            .create_permission(&alice(), now, &[own])
            .assert_error(403, &format!("CreatePermission to {listener}"));
        harness
            .channel_bind(&alice(), now, 0x4000, own)
            .assert_error(403, &format!("ChannelBind to {listener}"));
        let other_port = peer("127.0.0.1:3479");
        harness
            .create_permission(&alice(), now, &[other_port])
            .assert_success("the same host on another port");
        // The permission covers the host; the listener's port stays out both ways.
        let id_send = harness.transaction();
        let send = send_indication(id_send, own, b"nested");
        assert!(matches!(
            harness.send(now, &alice().five_tuple, &send).outcome,
            Outcome::Nothing
        ));
        assert_eq!(harness.core.route_from_peer(id, own, now.instant, 1), None);
        assert_eq!(
            harness.core.route_from_peer(id, other_port, now.instant, 1),
            Some(None)
        );
        assert!(harness.rejected(Reject::PeerRefused) >= 3);
    }
}
