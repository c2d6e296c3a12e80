//! Allocate and Refresh: what they grant, what they refuse and why.

use std::net::{IpAddr, SocketAddr};

use super::{Harness, Outcome, alice, bob, peer, rest_client, udp_transport};
use crate::config::Transport;
use crate::reject::Reject;
use crate::wire::{Class, Method, attr};

#[test]
fn allocate_binds_one_relay_socket_and_answers_with_its_addresses() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let client = alice();
    let reply = harness.allocate(&client, now);
    let id = reply.started();
    assert_eq!(harness.sockets.open.len(), 1);
    let (opened_for, bound) = harness.sockets.open[0];
    assert_eq!(opened_for, id);
    assert_eq!(bound.ip(), IpAddr::from([127, 0, 0, 1]));
    assert_eq!(reply.xor_address(attr::XOR_RELAYED_ADDRESS), Some(bound));
    assert_eq!(
        reply.xor_address(attr::XOR_MAPPED_ADDRESS),
        Some(client.five_tuple.client)
    );
    assert_eq!(reply.lifetime(), Some(600));
    assert!(reply.message().integrity_matches(client.key.as_bytes()));
    assert!(harness.core.has_allocation(&client.five_tuple));
    assert_eq!(harness.core.allocation_count(), 1);
}

#[test]
fn relayed_address_is_the_external_address_with_the_bound_port() {
    let mut harness = Harness::with_relay(r#"external-addresses = ["203.0.113.10"]"#);
    let reply = harness.allocate(&alice(), harness.at(0));
    let id = reply.started();
    let port = harness.bound_port(id);
    assert_eq!(
        reply.xor_address(attr::XOR_RELAYED_ADDRESS),
        Some(SocketAddr::new(IpAddr::from([203, 0, 113, 10]), port))
    );
    assert_eq!(
        harness.sockets.open[0].1,
        peer(&format!("127.0.0.1:{port}"))
    );
}

#[test]
fn requested_lifetime_is_kept_between_the_default_and_the_maximum() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    for (port, asked, granted) in [(40000, 60, 600), (40001, 1800, 1800), (40002, 99_999, 3600)] {
        let reply = harness.call(&alice().on_port(port), now, Method::ALLOCATE, |b| {
            udp_transport(b);
            b.add_u32(attr::LIFETIME, asked);
        });
        reply.started();
        assert_eq!(reply.lifetime(), Some(granted), "asked {asked}");
    }
}

#[test]
fn allocate_without_requested_transport_or_with_a_short_one_gets_400() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    harness
        .call(&alice(), now, Method::ALLOCATE, |_| {})
        .assert_error(400, "no REQUESTED-TRANSPORT");
    harness
        .call(&alice(), now, Method::ALLOCATE, |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[attr::TRANSPORT_UDP]);
        })
        .assert_error(400, "REQUESTED-TRANSPORT of one byte");
    assert_eq!(harness.rejected(Reject::BadRequest), 2);
    assert_eq!(harness.core.allocation_count(), 0);
}

#[test]
fn requested_transport_other_than_udp_or_tcp_gets_442() {
    let mut harness = Harness::new();
    const SCTP: u8 = 132;
    let reply = harness.call(&alice(), harness.at(0), Method::ALLOCATE, |b| {
        b.add(attr::REQUESTED_TRANSPORT, &[SCTP, 0, 0, 0]);
    });
    reply.assert_error(442, "Allocate for SCTP");
    assert!(
        reply.message().integrity_matches(alice().key.as_bytes()),
        "signed"
    );
    assert!(harness.sockets.open.is_empty());
}

#[test]
fn address_family_without_a_relay_address_gets_440() {
    let mut harness = Harness::new();
    harness
        .call(&alice(), harness.at(0), Method::ALLOCATE, |b| {
            udp_transport(b);
            b.add(
                attr::REQUESTED_ADDRESS_FAMILY,
                &[attr::FAMILY_IPV6, 0, 0, 0],
            );
        })
        .assert_error(440, "IPv6 relay asked of an IPv4-only server");
}

#[test]
fn refresh_or_create_permission_without_an_allocation_gets_437() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    harness
        .refresh(&alice(), now, 600)
        .assert_error(437, "Refresh with no allocation");
    harness
        .create_permission(&alice(), now, &[peer("127.0.0.1:9")])
        .assert_error(437, "CreatePermission with no allocation");
    harness
        .channel_bind(&alice(), now, 0x4000, peer("127.0.0.1:9"))
        .assert_error(437, "ChannelBind with no allocation");
    assert_eq!(harness.rejected(Reject::AllocationMismatch), 3);
}

#[test]
fn second_allocate_with_a_new_transaction_gets_437() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    harness.allocated(&alice(), now);
    harness
        .allocate(&alice(), now)
        .assert_error(437, "second Allocate, new transaction");
    assert_eq!(harness.sockets.open.len(), 1);
    assert_eq!(harness.core.allocation_count(), 1);
}

#[test]
fn retransmissions_are_answered_byte_for_byte_from_the_cache() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let client = alice();
    let allocate = harness.request(&client, now, Method::ALLOCATE, udp_transport);
    let first = harness.send(now, &client.five_tuple, &allocate);
    first.started();
    let again = harness.send(now, &client.five_tuple, &allocate);
    assert_eq!(again.bytes, first.bytes, "same transaction: same answer");
    assert_eq!(again.outcome, Outcome::Reply, "no second relay");
    assert_eq!(harness.sockets.open.len(), 1);

    let permission = harness.request(&client, now, Method::CREATE_PERMISSION, |b| {
        b.add_xor_address(attr::XOR_PEER_ADDRESS, peer("127.0.0.1:9"));
    });
    let refresh = harness.request(&client, now, Method::REFRESH, |b| {
        b.add_u32(attr::LIFETIME, 1200);
    });
    for request in [permission, refresh] {
        let first = harness.send(now, &client.five_tuple, &request);
        first.assert_success("first copy");
        // Later in time, and with the allocation changed since: still the cached answer.
        let later = harness.at(10);
        assert_eq!(
            harness.send(later, &client.five_tuple, &request).bytes,
            first.bytes
        );
    }
}

#[test]
fn unknown_comprehension_required_attribute_gets_420_listing_it() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let client = alice();
    let binding = harness.unsigned(Method::BINDING, |b| {
        b.add(0x0031, &[1, 2, 3, 4])
            .add(0x8031, &[1])
            .add_fingerprint();
    });
    let reply = harness.send(now, &client.five_tuple, &binding);
    reply.assert_error(420, "Binding with attribute 0x0031");
    assert_eq!(reply.get(attr::UNKNOWN_ATTRIBUTES), Some(&[0x00, 0x31][..]));
    assert!(reply.message().has_fingerprint(), "as the request had");
    // Before credentials are looked at: an unsigned Allocate gets 420, not 401.
    let allocate = harness.unsigned(Method::ALLOCATE, |b| {
        udp_transport(b);
        b.add(0x0031, &[]).add(0x0777, &[0; 8]);
    });
    let reply = harness.send(now, &client.five_tuple, &allocate);
    reply.assert_error(420, "Allocate with 0x0031 and 0x0777");
    assert_eq!(
        reply.get(attr::UNKNOWN_ATTRIBUTES),
        Some(&[0x00, 0x31, 0x07, 0x77][..])
    );
    assert_eq!(harness.rejected(Reject::UnknownAttribute), 2);
    // A comprehension-optional unknown attribute is ignored.
    let binding = harness.unsigned(Method::BINDING, |b| {
        b.add(0x8031, &[1, 2, 3, 4]);
    });
    let reply = harness.send(now, &client.five_tuple, &binding);
    reply.assert_success("Binding with attribute 0x8031");
    assert_eq!(
        reply.xor_address(attr::XOR_MAPPED_ADDRESS),
        Some(client.five_tuple.client)
    );
}

#[test]
fn unsupported_methods_and_classic_requests_get_400_and_responses_are_dropped() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let client = alice();
    let data = harness.unsigned(Method::DATA, |_| {});
    harness
        .send(now, &client.five_tuple, &data)
        .assert_error(400, "Data as a request");
    let mut classic = harness.unsigned(Method::ALLOCATE, udp_transport);
    classic[4] ^= 0xFF;
    harness
        .send(now, &client.five_tuple, &classic)
        .assert_error(400, "Allocate without the magic cookie");
    let mut response = Vec::new();
    crate::wire::MessageBuilder::new(
        &mut response,
        Method::BINDING,
        Class::Success,
        harness.transaction(),
    );
    let reply = harness.send(now, &client.five_tuple, &response);
    assert_eq!(reply.outcome, Outcome::Nothing);
    assert_eq!(harness.rejected(Reject::Garbage), 1);
}

#[test]
fn per_user_quota_gets_486_and_frees_with_the_allocation() {
    let mut harness = Harness::with_relay("max-allocations-per-user = 1");
    let now = harness.at(0);
    harness.allocated(&alice(), now);
    let second = alice().on_port(40100);
    harness
        .allocate(&second, now)
        .assert_error(486, "alice's second allocation");
    assert_eq!(harness.rejected(Reject::UserQuotaReached), 1);
    // Another user is not affected by alice's quota.
    harness.allocated(&rest_client(40200, "carol", now.unix + 3600), now);
    harness.refresh(&alice(), now, 0).assert_success("delete");
    harness.allocated(&second, now);
}

#[test]
fn total_quota_gets_486_for_any_user() {
    let mut harness = Harness::with_relay("max-allocations = 1");
    let now = harness.at(0);
    harness.allocated(&alice(), now);
    harness
        .allocate(&bob(), now)
        .assert_error(486, "bob's allocation over max-allocations");
    assert_eq!(harness.rejected(Reject::TotalQuotaReached), 1);
    harness.refresh(&alice(), now, 0).assert_success("delete");
    harness.allocated(&bob(), now);
}

#[test]
fn no_free_port_gets_508_until_one_is_freed() {
    let mut harness = Harness::with_relay(r#"ports = "50000-50000""#);
    let now = harness.at(0);
    let first = harness.allocated(&alice(), now);
    assert_eq!(harness.bound_port(first), 50000);
    harness
        .allocate(&bob(), now)
        .assert_error(508, "no relay port left");
    assert_eq!(harness.rejected(Reject::NoRelayPort), 1);
    harness.refresh(&alice(), now, 0).assert_success("delete");
    assert_eq!(harness.core.take_ended(), vec![first]);
    let second = harness.allocated(&bob(), now);
    assert_eq!(
        harness.bound_port(second),
        50000,
        "the freed port is reused"
    );
}

#[test]
fn port_another_program_holds_gets_508_and_is_tried_again_later() {
    let mut harness = Harness::with_relay(r#"ports = "50000-50001""#);
    let now = harness.at(0);
    harness.sockets.taken_elsewhere.insert(50000);
    let id = harness.allocated(&alice(), now);
    assert_eq!(harness.bound_port(id), 50001, "the held port is skipped");
    harness.sockets.taken_elsewhere.insert(50001);
    harness.refresh(&alice(), now, 0).assert_success("delete");
    harness
        .allocate(&bob(), now)
        .assert_error(508, "every port held elsewhere");
    assert!(
        harness.core.shared.port_is_free(50000),
        "given back to the pool"
    );
    assert!(
        harness.core.shared.port_is_free(50001),
        "given back to the pool"
    );
    harness.sockets.taken_elsewhere.clear();
    harness.allocated(&bob(), now);
}

#[test]
fn draining_refuses_allocate_with_508_but_existing_allocations_carry_on() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    harness.allocated(&alice(), now);
    harness.core.shared.set_draining();
    harness
        .allocate(&bob(), now)
        .assert_error(508, "Allocate while draining");
    assert_eq!(harness.rejected(Reject::Draining), 1);
    harness
        .refresh(&alice(), now, 600)
        .assert_success("Refresh while draining");
    harness
        .create_permission(&alice(), now, &[peer("127.0.0.1:9")])
        .assert_success("CreatePermission while draining");
}

#[test]
fn rest_usernames_minted_apart_count_against_one_users_quota() {
    let mut harness = Harness::with_relay("max-allocations-per-user = 2");
    let now = harness.at(0);
    // /ice-servers and signaling mint a fresh username every second.
    harness.allocated(&rest_client(40100, "dave", now.unix + 3600), now);
    harness.allocated(&rest_client(40101, "dave", now.unix + 3601), now);
    harness
        .allocate(&rest_client(40102, "dave", now.unix + 3602), now)
        .assert_error(486, "dave's third allocation, under a third username");
    assert_eq!(harness.rejected(Reject::UserQuotaReached), 1);
    harness.allocated(&rest_client(40103, "erin", now.unix + 3600), now);
    harness.allocated(&alice(), now);
}

/// The address of a plain (not XOR'd) address attribute such as ALTERNATE-SERVER.
fn plain_address(value: &[u8]) -> SocketAddr {
    let port = u16::from_be_bytes([value[2], value[3]]);
    match value[1] {
        0x01 => SocketAddr::from((<[u8; 4]>::try_from(&value[4..8]).unwrap(), port)),
        _ => SocketAddr::from((<[u8; 16]>::try_from(&value[4..20]).unwrap(), port)),
    }
}

#[test]
fn a_draining_or_full_node_sends_allocations_to_its_siblings_in_turn() {
    let mut harness = Harness::with_relay(
        "max-allocations = 1\nalternate-servers = [\"127.0.0.1:3478\", \"127.0.0.2:3478\", \
         \"127.0.0.3:3478\", \"[::1]:3478\"]\nalternate-tls-servers = [\"127.0.0.4:5349\"]\n\
         alternate-domain = \"turn.example.org\"",
    );
    let now = harness.at(0);
    harness.allocated(&alice(), now);
    // Full: the next ones go to the siblings of the client's family, in
    // turn, never to the address the client reached (127.0.0.1:3478).
    let mut sent_to = Vec::new();
    for port in 0..4 {
        let reply = harness.allocate(&bob().on_port(41000 + port), now);
        reply.assert_error(300, "Allocate past max-allocations");
        let message = reply.message();
        assert!(
            message.integrity_matches(bob().key.as_bytes()),
            "signed as bob"
        );
        let alternate = message
            .get(attr::ALTERNATE_SERVER)
            .expect("ALTERNATE-SERVER");
        sent_to.push(plain_address(alternate));
        assert!(message.get(attr::ALTERNATE_DOMAIN).is_none(), "UDP");
    }
    let [second, third] = ["127.0.0.2:3478", "127.0.0.3:3478"].map(peer);
    assert_eq!(sent_to, [second, third, second, third]);
    assert_eq!(harness.rejected(Reject::Redirected), 4);
    assert_eq!(harness.rejected(Reject::TotalQuotaReached), 0);

    // A TLS client goes to a TLS sibling, with the name to check its certificate against.
    let mut tls = bob().on_port(42000);
    tls.five_tuple.transport = Transport::Tls;
    tls.five_tuple.server = peer("127.0.0.1:5349");
    let reply = harness.allocate(&tls, now);
    reply.assert_error(300, "Allocate over TLS");
    let message = reply.message();
    assert_eq!(
        plain_address(message.get(attr::ALTERNATE_SERVER).unwrap()),
        peer("127.0.0.4:5349")
    );
    assert_eq!(
        message.get(attr::ALTERNATE_DOMAIN),
        Some(&b"turn.example.org"[..])
    );

    // Unauthenticated requests learn nothing of the siblings; a user at its
    // own quota is refused, not sent on.
    harness.core.shared.set_draining();
    let request = harness.unsigned(Method::ALLOCATE, udp_transport);
    let unsigned = harness.send(now, &bob().on_port(43000).five_tuple, &request);
    unsigned.assert_error(401, "Allocate without credentials");
    assert!(unsigned.message().get(attr::ALTERNATE_SERVER).is_none());
    let refresh = harness.refresh(&alice(), now, 600);
    refresh.assert_success("Refresh while draining");
}

#[test]
fn a_node_with_no_sibling_to_send_to_refuses_as_before() {
    // The only sibling is this node itself.
    let mut harness = Harness::with_relay("alternate-servers = [\"127.0.0.1:3478\"]");
    let now = harness.at(0);
    harness.core.shared.set_draining();
    harness
        .allocate(&alice(), now)
        .assert_error(508, "Allocate while draining, no other sibling");
    assert_eq!(harness.rejected(Reject::Draining), 1);
}

#[test]
fn a_dual_stack_allocate_gets_its_ipv4_relay_and_says_why_not_ipv6() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let ipv6 = [attr::FAMILY_IPV6, 0, 0, 0];
    let reply = harness.call(&alice(), now, Method::ALLOCATE, |b| {
        udp_transport(b);
        b.add(attr::ADDITIONAL_ADDRESS_FAMILY, &ipv6);
    });
    reply.started();
    let relayed = reply.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert!(relayed.is_ipv4());
    let error = reply
        .message()
        .get(attr::ADDRESS_ERROR_CODE)
        .unwrap()
        .to_vec();
    assert_eq!(&error[..4], &[attr::FAMILY_IPV6, 0, 4, 40]);

    // RFC 8656 §7.2: both family attributes, IPv4 as the additional one, or
    // with a reservation token: 400.
    let ipv4 = [attr::FAMILY_IPV4, 0, 0, 0];
    for (port, (kind, value)) in [
        (attr::REQUESTED_ADDRESS_FAMILY, ipv4),
        (attr::ADDITIONAL_ADDRESS_FAMILY, ipv4),
        (attr::RESERVATION_TOKEN, [0; 4]),
    ]
    .into_iter()
    .enumerate()
    {
        let client = bob().on_port(45000 + u16::try_from(port).unwrap());
        let reply = harness.call(&client, now, Method::ALLOCATE, |b| {
            udp_transport(b);
            if kind == attr::RESERVATION_TOKEN {
                b.add(kind, &[0; 8]);
            } else {
                b.add(kind, &value);
            }
            if kind != attr::ADDITIONAL_ADDRESS_FAMILY {
                b.add(attr::ADDITIONAL_ADDRESS_FAMILY, &ipv6);
            }
        });
        reply.assert_error(400, &format!("ADDITIONAL-ADDRESS-FAMILY with {kind:#06x}"));
    }
}
