//! Dual-stack allocations (RFC 8656 §7.2): an IPv4 and an IPv6 relay under
//! one allocation, peers of either family, per-family Refresh (§8).

use std::net::SocketAddr;

use super::{Client, Harness, Outcome, Reply, alice, bob, peer, send_indication, udp_transport};
use crate::reject::Reject;
use crate::turn::AllocId;
use crate::wire::{Method, attr};

const IPV4: [u8; 4] = [attr::FAMILY_IPV4, 0, 0, 0];
const IPV6: [u8; 4] = [attr::FAMILY_IPV6, 0, 0, 0];

impl Harness {
    /// An Allocate asking for an IPv6 relay besides the IPv4 one.
    fn allocate_dual(&mut self, client: &Client, secs: u64) -> Reply {
        self.call(client, self.at(secs), Method::ALLOCATE, |b| {
            udp_transport(b);
            b.add(attr::ADDITIONAL_ADDRESS_FAMILY, &IPV6);
        })
    }

    /// A Refresh for the relay of one family only.
    fn refresh_family(
        &mut self,
        client: &Client,
        secs: u64,
        lifetime: u32,
        family: [u8; 4],
    ) -> Reply {
        self.call(client, self.at(secs), Method::REFRESH, |b| {
            b.add_u32(attr::LIFETIME, lifetime)
                .add(attr::REQUESTED_ADDRESS_FAMILY, &family);
        })
    }
}

impl Reply {
    /// Every XOR-RELAYED-ADDRESS, in order.
    fn relayed(&self) -> Vec<SocketAddr> {
        let message = self.message();
        message
            .all(attr::XOR_RELAYED_ADDRESS)
            .map(|value| message.xor_address(value).expect("an address"))
            .collect()
    }

    /// ADDRESS-ERROR-CODE as (family, code).
    fn address_error(&self) -> Option<(u8, u16)> {
        let value = self.get(attr::ADDRESS_ERROR_CODE)?;
        Some((value[0], u16::from(value[2]) * 100 + u16::from(value[3])))
    }
}

/// A dual-stack allocation for `client` at second 0: its id and its IPv4
/// and IPv6 relayed addresses.
#[track_caller]
fn dual(harness: &mut Harness, client: &Client) -> (AllocId, SocketAddr, SocketAddr) {
    let reply = harness.allocate_dual(client, 0);
    let id = reply.started();
    let relayed = reply.relayed();
    assert_eq!(relayed.len(), 2, "two XOR-RELAYED-ADDRESS");
    (id, relayed[0], relayed[1])
}

#[test]
fn a_dual_stack_allocate_gets_two_relays_ipv4_first() {
    let mut harness = Harness::dual_stack("");
    let reply = harness.allocate_dual(&alice(), 0);
    let id = reply.started();
    let relayed = reply.relayed();
    assert_eq!(relayed.len(), 2);
    assert!(relayed[0].is_ipv4(), "IPv4 first: {relayed:?}");
    assert!(relayed[1].is_ipv6(), "then IPv6: {relayed:?}");
    assert_eq!(reply.address_error(), None, "both relays granted");
    assert_eq!(
        harness.sockets.open,
        vec![(id, relayed[0]), (id, relayed[1])],
        "two sockets for one allocation, IPv4 first"
    );
    assert_ne!(
        relayed[0].port(),
        relayed[1].port(),
        "two ports of the pool"
    );
    assert!(reply.message().integrity_matches(alice().key.as_bytes()));
    assert_eq!(harness.core.allocation_count(), 1);
    let allocation = harness.core.table.get(id).unwrap();
    assert_eq!(allocation.relayed, relayed[0]);
    assert_eq!(allocation.second.unwrap().relayed, relayed[1]);
    assert_eq!(
        allocation.relays().to_string(),
        format!("{},{}", relayed[0], relayed[1])
    );
}

#[test]
fn a_dual_stack_allocation_counts_once_in_the_quotas() {
    let mut harness = Harness::dual_stack("max-allocations = 2\nmax-allocations-per-user = 1");
    dual(&mut harness, &alice());
    harness
        .allocate_dual(&alice().on_port(41000), 0)
        .assert_error(486, "alice's second allocation");
    dual(&mut harness, &bob());
    assert_eq!(harness.core.allocation_count(), 2);
}

#[test]
fn peers_of_either_family_are_allowed_on_a_dual_stack_allocation() {
    let mut harness = Harness::dual_stack("");
    let client = alice();
    let (id, _, _) = dual(&mut harness, &client);
    let now = harness.at(0);
    let (v4, v6) = (peer("127.0.0.1:9000"), peer("[::1]:9000"));
    harness
        .create_permission(&client, now, &[v4, v6])
        .assert_success("permissions for an IPv4 and an IPv6 peer");
    harness
        .channel_bind(&client, now, 0x4001, v6)
        .assert_success("a channel to the IPv6 peer");
    harness
        .channel_bind(&client, now, 0x4002, v4)
        .assert_success("a channel to the IPv4 peer");
    for target in [v4, v6] {
        let send = send_indication(harness.transaction(), target, b"hi");
        assert_eq!(
            harness.send(now, &client.five_tuple, &send).outcome,
            Outcome::ToPeer {
                relay: id,
                peer: target,
                data: b"hi".to_vec()
            }
        );
    }
    let instant = now.instant;
    assert_eq!(
        harness
            .core
            .route_channel_data(instant, &client.five_tuple, 0x4001, 4),
        Ok((id, v6))
    );
    assert_eq!(
        harness.core.route_from_peer(id, v6, instant, 4),
        Some(Some(0x4001))
    );
    assert_eq!(
        harness.core.route_from_peer(id, v4, instant, 4),
        Some(Some(0x4002))
    );
}

#[test]
fn a_single_family_allocation_still_refuses_the_other_family_with_443() {
    let mut harness = Harness::dual_stack("");
    let now = harness.at(0);
    let v4_only = alice();
    harness.allocated(&v4_only, now);
    harness
        .create_permission(&v4_only, now, &[peer("[::1]:9000")])
        .assert_error(443, "IPv6 peer on an IPv4 allocation");
    let v6_only = bob();
    harness
        .call(&v6_only, now, Method::ALLOCATE, |b| {
            udp_transport(b);
            b.add(attr::REQUESTED_ADDRESS_FAMILY, &IPV6);
        })
        .started();
    harness
        .channel_bind(&v6_only, now, 0x4000, peer("127.0.0.1:9000"))
        .assert_error(443, "IPv4 peer on an IPv6 allocation");
    harness
        .create_permission(&v6_only, now, &[peer("[::1]:9000")])
        .assert_success("IPv6 peer on an IPv6 allocation");
    assert_eq!(harness.rejected(Reject::PeerAddressFamilyMismatch), 2);
}

#[test]
fn without_an_ipv6_relay_address_a_dual_stack_allocate_gets_440_for_ipv6() {
    let mut harness = Harness::new();
    let reply = harness.allocate_dual(&alice(), 0);
    let id = reply.started();
    let relayed = reply.relayed();
    assert_eq!(relayed.len(), 1);
    assert!(relayed[0].is_ipv4());
    assert_eq!(reply.address_error(), Some((attr::FAMILY_IPV6, 440)));
    assert_eq!(harness.sockets.open.len(), 1, "the IPv4 socket only");
    assert!(harness.core.table.get(id).unwrap().second.is_none());
    harness
        .create_permission(&alice(), harness.at(0), &[peer("[::1]:9000")])
        .assert_error(443, "an IPv4 allocation");
}

#[test]
fn without_a_port_for_ipv6_a_dual_stack_allocate_gets_508_for_ipv6() {
    let mut harness = Harness::dual_stack(r#"ports = "50000-50000""#);
    let reply = harness.allocate_dual(&alice(), 0);
    let id = reply.started();
    assert_eq!(reply.relayed(), vec![peer("127.0.0.1:50000")]);
    assert_eq!(reply.address_error(), Some((attr::FAMILY_IPV6, 508)));
    assert!(harness.core.table.get(id).unwrap().second.is_none());
}

#[test]
fn both_ports_go_back_to_the_pool_when_a_dual_stack_allocation_ends() {
    let mut harness = Harness::dual_stack(r#"ports = "50000-50001""#);
    let (id, v4, v6) = dual(&mut harness, &alice());
    let ports = [v4.port(), v6.port()];
    let shared = harness.core.shared.clone();
    assert!(ports.iter().all(|&port| !shared.port_is_free(port)));
    harness
        .refresh(&alice(), harness.at(10), 0)
        .assert_success("delete");
    assert_eq!(harness.core.take_ended(), vec![id]);
    assert!(harness.core.take_ended_relays().is_empty());
    assert!(
        ports.iter().all(|&port| shared.port_is_free(port)),
        "both freed"
    );

    // Expiry frees both too.
    let (id, v4, v6) = dual(&mut harness, &bob());
    harness.core.handle_timeout(harness.at(599).instant);
    assert!(harness.core.take_ended().is_empty());
    harness.core.handle_timeout(harness.at(600).instant);
    assert_eq!(harness.core.take_ended(), vec![id]);
    assert!(shared.port_is_free(v4.port()) && shared.port_is_free(v6.port()));
    // Both ports again for the next one.
    dual(&mut harness, &alice());
}

#[test]
fn a_refresh_naming_a_family_deletes_that_relay_only() {
    let mut harness = Harness::dual_stack("");
    let client = alice();
    let (id, v4, v6) = dual(&mut harness, &client);
    let now = harness.at(0);
    let v6_peer = peer("[::1]:9000");
    harness
        .create_permission(&client, now, &[v6_peer])
        .assert_success("IPv6 peer");
    let reply = harness.refresh_family(&client, 10, 0, IPV6);
    reply.assert_success("delete the IPv6 relay");
    assert_eq!(reply.lifetime(), Some(0));
    assert!(
        harness.core.take_ended().is_empty(),
        "the allocation lives on"
    );
    assert_eq!(harness.core.take_ended_relays(), vec![(id, true)]);
    assert!(harness.core.shared.port_is_free(v6.port()));
    assert!(!harness.core.shared.port_is_free(v4.port()));
    let allocation = harness.core.table.get(id).unwrap();
    assert_eq!((allocation.relayed, allocation.second), (v4, None));
    assert_eq!(
        harness
            .core
            .route_from_peer(id, v6_peer, harness.at(10).instant, 1),
        None,
        "the IPv6 peer's permission went with its relay"
    );
    harness
        .refresh_family(&client, 20, 600, IPV6)
        .assert_error(443, "no IPv6 relay any more");
    harness
        .create_permission(&client, harness.at(20), &[v6_peer])
        .assert_error(443, "an IPv4 allocation now");
    harness
        .refresh_family(&client, 20, 600, IPV4)
        .assert_success("the IPv4 relay");
}

#[test]
fn a_refresh_naming_ipv4_deletes_the_ipv4_relay_and_keeps_the_ipv6_one() {
    let mut harness = Harness::dual_stack("");
    let client = alice();
    let (id, v4, v6) = dual(&mut harness, &client);
    harness
        .refresh_family(&client, 10, 0, IPV4)
        .assert_success("delete the IPv4 relay");
    assert_eq!(harness.core.take_ended_relays(), vec![(id, false)]);
    assert!(harness.core.shared.port_is_free(v4.port()));
    let allocation = harness.core.table.get(id).unwrap();
    assert_eq!((allocation.relayed, allocation.second), (v6, None));
    assert!(harness.core.table.by_relayed(v4).is_none());
    harness
        .create_permission(&client, harness.at(10), &[peer("127.0.0.1:9000")])
        .assert_error(443, "an IPv6 allocation now");
    harness
        .refresh(&client, harness.at(20), 0)
        .assert_success("delete");
    assert_eq!(harness.core.take_ended(), vec![id]);
    assert!(harness.core.shared.port_is_free(v6.port()));
}

#[test]
fn a_refresh_naming_a_family_extends_that_relay_only() {
    let mut harness = Harness::dual_stack("");
    let client = alice();
    let (id, v4, v6) = dual(&mut harness, &client);
    let reply = harness.refresh_family(&client, 500, 600, IPV4);
    reply.assert_success("refresh the IPv4 relay");
    assert_eq!(reply.lifetime(), Some(600));
    harness.core.handle_timeout(harness.at(600).instant);
    assert!(
        harness.core.take_ended().is_empty(),
        "the IPv4 relay lives on"
    );
    assert_eq!(
        harness.core.take_ended_relays(),
        vec![(id, true)],
        "IPv6 lapsed"
    );
    assert!(harness.core.shared.port_is_free(v6.port()));
    let allocation = harness.core.table.get(id).unwrap();
    assert_eq!((allocation.relayed, allocation.second), (v4, None));
    // A Refresh without the attribute is for every relay.
    harness
        .refresh(&client, harness.at(1000), 600)
        .assert_success("refresh");
    harness.core.handle_timeout(harness.at(1599).instant);
    assert_eq!(harness.core.allocation_count(), 1);
    harness.core.handle_timeout(harness.at(1600).instant);
    assert_eq!(harness.core.take_ended(), vec![id]);
    assert!(harness.core.shared.port_is_free(v4.port()));
}

#[test]
fn a_refresh_without_a_family_extends_both_relays() {
    let mut harness = Harness::dual_stack("");
    let client = alice();
    let (id, _, _) = dual(&mut harness, &client);
    harness
        .refresh(&client, harness.at(500), 600)
        .assert_success("refresh");
    harness.core.handle_timeout(harness.at(1099).instant);
    assert!(harness.core.take_ended_relays().is_empty());
    assert!(harness.core.table.get(id).unwrap().second.is_some());
    harness.core.handle_timeout(harness.at(1100).instant);
    assert_eq!(harness.core.take_ended(), vec![id]);
    assert!(harness.core.take_ended_relays().is_empty());
}

#[test]
fn even_port_applies_to_the_ipv4_relay_and_its_r_bit_gets_400() {
    let mut harness = Harness::dual_stack("");
    let now = harness.at(0);
    let reply = harness.call(&alice(), now, Method::ALLOCATE, |b| {
        udp_transport(b);
        b.add(attr::EVEN_PORT, &[0x00])
            .add(attr::ADDITIONAL_ADDRESS_FAMILY, &IPV6);
    });
    reply.started();
    let relayed = reply.relayed();
    assert_eq!(relayed.len(), 2);
    assert_eq!(relayed[0].port() % 2, 0, "an even IPv4 port");
    // RFC 8656 §7.2 step 8: no port held for a sibling of a dual-stack allocation.
    harness
        .call(&bob(), now, Method::ALLOCATE, |b| {
            udp_transport(b);
            b.add(attr::EVEN_PORT, &[0x80])
                .add(attr::ADDITIONAL_ADDRESS_FAMILY, &IPV6);
        })
        .assert_error(
            400,
            "EVEN-PORT with the R bit and ADDITIONAL-ADDRESS-FAMILY",
        );
    assert_eq!(harness.core.allocation_count(), 1);
}
