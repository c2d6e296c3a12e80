//! Lifetimes with explicit time: allocations, permissions, channels,
//! nonces and EVEN-PORT reservations.

use super::{
    Client, Harness, Outcome, Reply, UNIX, alice, bob, peer, rest_client, send_indication,
    udp_transport,
};
use crate::turn::AllocId;
use crate::wire::{Method, attr};

/// The allocation is gone: reported ended once, its 5-tuple and port free.
#[track_caller]
fn assert_ended(harness: &mut Harness, id: AllocId, port: u16) {
    assert_eq!(harness.core.take_ended(), vec![id]);
    assert!(harness.core.take_ended().is_empty(), "reported once");
    assert_eq!(harness.core.allocation_count(), 0);
    assert!(!harness.core.has_allocation(&alice().five_tuple));
    assert!(
        harness.core.shared.port_is_free(port),
        "port back in the pool"
    );
}

#[test]
fn allocation_expires_at_the_end_of_its_lifetime() {
    let mut harness = Harness::new();
    let id = harness.allocated(&alice(), harness.at(0));
    let port = harness.bound_port(id);
    assert!(!harness.core.shared.port_is_free(port));
    harness.core.handle_timeout(harness.at(599).instant);
    assert_eq!(
        harness.core.allocation_count(),
        1,
        "alive before its lifetime"
    );
    assert!(harness.core.take_ended().is_empty());
    harness.core.handle_timeout(harness.at(600).instant);
    assert_ended(&mut harness, id, port);
    let later = harness.at(601);
    harness
        .refresh(&alice(), later, 600)
        .assert_error(437, "Refresh after expiry");
    harness.allocated(&alice(), later);
}

#[test]
fn refresh_extends_the_lifetime_from_now() {
    let mut harness = Harness::new();
    let id = harness.allocated(&alice(), harness.at(0));
    let reply = harness.refresh(&alice(), harness.at(500), 600);
    reply.assert_success("Refresh");
    assert_eq!(reply.lifetime(), Some(600));
    assert!(reply.message().integrity_matches(alice().key.as_bytes()));
    harness.core.handle_timeout(harness.at(1099).instant);
    assert_eq!(
        harness.core.allocation_count(),
        1,
        "600 s after the refresh"
    );
    // Without LIFETIME the default; more than the maximum is cut to it; less
    // than the default is raised to it (RFC 8656 §7.3).
    let reply = harness.call(&alice(), harness.at(1000), Method::REFRESH, |_| {});
    assert_eq!(reply.lifetime(), Some(600));
    assert_eq!(
        harness
            .refresh(&alice(), harness.at(1000), 99_999)
            .lifetime(),
        Some(3600)
    );
    for asked in [1, 60, 599] {
        assert_eq!(
            harness
                .refresh(&alice(), harness.at(1000), asked)
                .lifetime(),
            Some(600),
            "LIFETIME {asked}"
        );
    }
    assert_eq!(
        harness.refresh(&alice(), harness.at(1000), 900).lifetime(),
        Some(900)
    );
    let port = harness.bound_port(id);
    harness.core.handle_timeout(harness.at(1899).instant);
    assert_eq!(harness.core.allocation_count(), 1);
    harness.core.handle_timeout(harness.at(1900).instant);
    assert_ended(&mut harness, id, port);
}

#[test]
fn refresh_with_lifetime_zero_deletes_the_allocation() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let id = harness.allocated(&alice(), now);
    let port = harness.bound_port(id);
    let reply = harness.refresh(&alice(), now, 0);
    reply.assert_success("Refresh with LIFETIME 0");
    assert_eq!(reply.lifetime(), Some(0));
    assert!(reply.message().integrity_matches(alice().key.as_bytes()));
    assert_ended(&mut harness, id, port);
    harness
        .refresh(&alice(), now, 0)
        .assert_error(437, "second delete");
}

#[test]
fn permission_lapses_after_300_s_unless_refreshed() {
    let mut harness = Harness::new();
    let client = alice();
    let id = harness.allocated(&client, harness.at(0));
    let target = peer("127.0.0.1:9");
    harness
        .create_permission(&client, harness.at(0), &[target])
        .assert_success("permit");
    let route = |harness: &mut Harness, secs| {
        let at = harness.at(secs).instant;
        harness.core.route_from_peer(id, target, at, 1)
    };
    assert_eq!(route(&mut harness, 299), Some(None));
    assert_eq!(route(&mut harness, 300), None, "lapsed");
    let send = send_indication(harness.transaction(), target, b"x");
    assert_eq!(
        harness
            .send(harness.at(300), &client.five_tuple, &send)
            .outcome,
        Outcome::Nothing
    );
    // Refreshed at 200: good until 500.
    harness
        .create_permission(&client, harness.at(200), &[target])
        .assert_success("refresh the permission");
    assert_eq!(route(&mut harness, 499), Some(None));
    assert!(matches!(
        harness
            .send(harness.at(499), &client.five_tuple, &send)
            .outcome,
        Outcome::ToPeer { .. }
    ));
    harness.core.handle_timeout(harness.at(500).instant);
    assert_eq!(
        harness.core.allocation_count(),
        1,
        "only the permission went"
    );
    assert_eq!(route(&mut harness, 500), None);
}

#[test]
fn channel_lasts_600_s_and_rebinding_refreshes_it() {
    let mut harness = Harness::new();
    let client = alice();
    let id = harness.allocated(&client, harness.at(0));
    harness
        .refresh(&client, harness.at(0), 3600)
        .assert_success("long life");
    let target = peer("127.0.0.1:9");
    let channel = |harness: &mut Harness, secs| {
        let at = harness.at(secs).instant;
        harness
            .core
            .route_channel_data(at, &client.five_tuple, 0x4000, 4)
            .ok()
    };
    harness
        .channel_bind(&client, harness.at(0), 0x4000, target)
        .assert_success("bind");
    assert_eq!(channel(&mut harness, 299), Some((id, target)));
    assert_eq!(
        channel(&mut harness, 300),
        None,
        "its permission lapsed first"
    );
    // With the permission kept up, the channel itself lapses at 600.
    harness
        .create_permission(&client, harness.at(310), &[target])
        .assert_success("permit again");
    assert_eq!(channel(&mut harness, 599), Some((id, target)));
    let from_peer = |harness: &mut Harness, secs| {
        let at = harness.at(secs).instant;
        harness.core.route_from_peer(id, target, at, 1)
    };
    assert_eq!(from_peer(&mut harness, 599), Some(Some(0x4000)));
    assert_eq!(channel(&mut harness, 600), None);
    assert_eq!(
        from_peer(&mut harness, 600),
        Some(None),
        "as a Data indication"
    );

    // Rebinding at 500 (before the lapse at 600) holds the channel until
    // 1100 and renews the permission until 800.
    harness
        .channel_bind(&client, harness.at(500), 0x4000, target)
        .assert_success("rebind");
    assert_eq!(channel(&mut harness, 799), Some((id, target)));
    assert_eq!(channel(&mut harness, 800), None);
    harness
        .create_permission(&client, harness.at(1000), &[target])
        .assert_success("permit again");
    assert_eq!(channel(&mut harness, 1099), Some((id, target)));
    assert_eq!(channel(&mut harness, 1100), None);
    harness.core.handle_timeout(harness.at(1100).instant);
    // Once lapsed, the number may go to another peer.
    harness
        .channel_bind(&client, harness.at(1100), 0x4000, peer("127.0.0.2:9"))
        .assert_success("the lapsed number bound to another peer");
}

#[test]
fn nonce_of_an_allocation_goes_stale_and_the_fresh_one_works() {
    let mut harness = Harness::new();
    let client = alice();
    harness.allocated(&client, harness.at(0));
    harness
        .refresh(&client, harness.at(0), 3600)
        .assert_success("long life");
    let issued = harness.nonce(&client, harness.at(0));
    let refresh = |harness: &mut Harness, nonce: &str, secs| {
        let request = harness.request_with_nonce(&client, nonce, Method::REFRESH, |_| {});
        harness.send(harness.at(secs), &client.five_tuple, &request)
    };
    refresh(&mut harness, &issued, 600).assert_success("at the end of its lifetime");
    let reply = refresh(&mut harness, &issued, 601);
    reply.assert_error(438, "one second later");
    let fresh = reply.nonce();
    refresh(&mut harness, &fresh, 601).assert_success("with the fresh nonce");
    assert_eq!(harness.core.allocation_count(), 1);
}

/// Allocates on an even port with the next one held; returns (port, token).
fn allocate_with_reservation(harness: &mut Harness, client: &Client) -> (u16, Vec<u8>) {
    let reply = harness.call(client, harness.at(0), Method::ALLOCATE, |b| {
        udp_transport(b);
        b.add(attr::EVEN_PORT, &[0x80]);
    });
    let port = harness.bound_port(reply.started());
    assert_eq!(port % 2, 0, "EVEN-PORT");
    assert!(
        !harness.core.shared.port_is_free(port + 1),
        "held for the token"
    );
    let token = reply
        .get(attr::RESERVATION_TOKEN)
        .expect("RESERVATION-TOKEN");
    assert_eq!(token.len(), 8);
    (port, token.to_vec())
}

fn allocate_with_token(harness: &mut Harness, client: &Client, token: &[u8], secs: u64) -> Reply {
    harness.call(client, harness.at(secs), Method::ALLOCATE, |b| {
        udp_transport(b);
        b.add(attr::RESERVATION_TOKEN, token);
    })
}

#[test]
fn reservation_token_allocates_the_held_port_once() {
    let mut harness = Harness::with_relay(r#"ports = "50000-50003""#);
    let (port, token) = allocate_with_reservation(&mut harness, &alice());
    let id = allocate_with_token(&mut harness, &bob(), &token, 10).started();
    assert_eq!(harness.bound_port(id), port + 1);
    allocate_with_token(
        &mut harness,
        &rest_client(40300, "carol", UNIX + 3600),
        &token,
        10,
    )
    .assert_error(508, "a token used already");
    let even = harness.call(
        &alice().on_port(40400),
        harness.at(10),
        Method::ALLOCATE,
        |b| {
            udp_transport(b);
            b.add(attr::EVEN_PORT, &[0]);
        },
    );
    assert_eq!(harness.bound_port(even.started()) % 2, 0);
    assert!(
        even.get(attr::RESERVATION_TOKEN).is_none(),
        "no R bit, no token"
    );
}

#[test]
fn reservation_token_with_even_port_or_of_the_wrong_size_gets_400() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    harness
        .call(&alice(), now, Method::ALLOCATE, |b| {
            udp_transport(b);
            b.add(attr::EVEN_PORT, &[0x80])
                .add(attr::RESERVATION_TOKEN, &[1; 8]);
        })
        .assert_error(400, "RESERVATION-TOKEN with EVEN-PORT");
    allocate_with_token(&mut harness, &alice(), &[1; 4], 0).assert_error(400, "a 4-byte token");
    allocate_with_token(&mut harness, &alice(), &[1; 8], 0).assert_error(508, "an unknown token");
    assert_eq!(harness.core.allocation_count(), 0);
}

#[test]
fn unused_reservation_expires_after_30_s_and_its_port_returns() {
    let mut harness = Harness::with_relay(r#"ports = "50000-50001""#);
    let (port, token) = allocate_with_reservation(&mut harness, &alice());
    let shared = std::sync::Arc::clone(&harness.core.shared);
    shared.expire_reservations(harness.at(29).instant);
    assert!(!shared.port_is_free(port + 1), "still held");
    shared.expire_reservations(harness.at(30).instant);
    assert!(shared.port_is_free(port + 1), "back in the pool");
    allocate_with_token(&mut harness, &bob(), &token, 30).assert_error(508, "an expired token");
    // The port is anyone's now.
    let id = harness.allocated(&bob(), harness.at(30));
    assert_eq!(harness.bound_port(id), port + 1);
    assert_eq!(harness.core.allocation_count(), 2);
}

#[test]
fn a_reservation_ends_with_the_allocation_that_made_it() {
    // Allocating and deleting must not pile up held ports.
    let mut harness = Harness::with_relay(r#"ports = "50000-50001""#);
    let (port, token) = allocate_with_reservation(&mut harness, &alice());
    harness
        .refresh(&alice(), harness.at(1), 0)
        .assert_success("delete");
    assert!(
        harness.core.shared.port_is_free(port + 1),
        "the held port is back at once"
    );
    allocate_with_token(&mut harness, &bob(), &token, 2)
        .assert_error(508, "a token whose allocation ended");
}

#[test]
fn timer_looks_only_at_allocations_with_something_due() {
    const CLIENTS: u16 = 100;
    let mut harness = Harness::with_relay("max-allocations-per-user = 1000");
    let clients: Vec<Client> = (0..CLIENTS).map(|i| alice().on_port(41000 + i)).collect();
    for client in &clients {
        harness.allocated(client, harness.at(0));
        let peers = ["127.0.0.1:9", "127.0.0.2:9", "127.0.0.3:9"].map(peer);
        harness
            .create_permission(client, harness.at(0), &peers)
            .assert_success("three permissions");
    }
    let tick = |harness: &mut Harness, secs| harness.core.handle_timeout(harness.at(secs).instant);
    // Lengthening a lifetime leaves the entry where it was; shortening moves
    // it (to no less than the default, RFC 8656 §7.3).
    harness
        .refresh(&clients[0], harness.at(100), 3600)
        .assert_success("longer");
    harness
        .refresh(&clients[1], harness.at(100), 3600)
        .assert_success("longer first");
    harness
        .refresh(&clients[1], harness.at(100), 1)
        .assert_success("then shorter");
    for secs in [1, 99, 299] {
        assert_eq!(tick(&mut harness, secs), 0, "nothing due at {secs}");
    }
    assert_eq!(
        tick(&mut harness, 300),
        usize::from(CLIENTS),
        "every permission lapses"
    );
    assert_eq!(tick(&mut harness, 599), 0);
    assert_eq!(tick(&mut harness, 600), usize::from(CLIENTS) - 2);
    assert_eq!(harness.core.allocation_count(), 2);
    assert_eq!(tick(&mut harness, 699), 0);
    assert_eq!(tick(&mut harness, 700), 1, "the shortened allocation");
    assert_eq!(harness.core.allocation_count(), 1, "the lengthened one");
    assert_eq!(tick(&mut harness, 3699), 0);
    assert_eq!(tick(&mut harness, 3700), 1);
    assert_eq!(harness.core.allocation_count(), 0);
}

#[test]
fn refresh_asking_another_family_gets_443() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    harness.allocated(&alice(), now);
    let reply = harness.call(&alice(), now, Method::REFRESH, |b| {
        b.add(
            attr::REQUESTED_ADDRESS_FAMILY,
            &[attr::FAMILY_IPV6, 0, 0, 0],
        );
    });
    reply.assert_error(443, "Refresh asking IPv6 of an IPv4 allocation");
    let reply = harness.call(&alice(), now, Method::REFRESH, |b| {
        b.add(
            attr::REQUESTED_ADDRESS_FAMILY,
            &[attr::FAMILY_IPV4, 0, 0, 0],
        );
    });
    reply.assert_success("Refresh asking its own family");
}
