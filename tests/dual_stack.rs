//! Dual-stack allocations (RFC 8656 §7.2) against the real daemon, relaying
//! from 127.0.0.1 and ::1, driven by raw requests over a UDP socket (the
//! `stun` and `turn` crates' codec, not icegate's): an Allocate with
//! ADDITIONAL-ADDRESS-FAMILY gets two relays, data to a peer leaves from the
//! relay of its family and comes back from either, a Refresh naming IPv6
//! ends that relay only, and `/allocations` lists both. Peers are sockets
//! on 127.0.0.1 and ::1; every wait is bounded.
//!
//! coturn's `turnutils_uclient -Z` (dual allocation) is no witness here:
//! coturn 4.6 sends ADDITIONAL-ADDRESS-FAMILY under the pre-RFC type 0x8032
//! (0x8000 since RFC 8656), which icegate, like any RFC 8656 server, ignores
//! as an unknown comprehension-optional attribute.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use stun::attributes::AttrType;
use stun::message::{
    CLASS_INDICATION, Getter, METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION,
    METHOD_DATA, METHOD_REFRESH, Message,
};
use turn::proto::channum::ChannelNumber;
use turn::proto::data::Data;
use turn::proto::lifetime::Lifetime;

use common::admin::request;
use common::stun_client::{
    READ_TIMEOUT, RawAttribute, Session, alice, assert_error, assert_success, decode, integrity,
    peer, send_indication, udp_transport, xor_peer,
};
use common::{TestConfig, TestDaemon};

/// RFC 8656 §18: ADDITIONAL-ADDRESS-FAMILY, ADDRESS-ERROR-CODE,
/// REQUESTED-ADDRESS-FAMILY and XOR-RELAYED-ADDRESS.
const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
const ADDRESS_ERROR_CODE: u16 = 0x8001;
const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
const XOR_RELAYED_ADDRESS: u16 = 0x0016;
const IPV6: [u8; 4] = [0x02, 0, 0, 0];
/// How long a test listens to be sure that nothing arrives.
const SILENCE: Duration = Duration::from_millis(400);

/// A daemon relaying from `relay_addresses`, allowed to reach loopback
/// peers of both families.
fn daemon(relay_addresses: &[&str]) -> TestDaemon {
    TestDaemon::start(
        &TestConfig {
            relay_addresses,
            allow_loopback: false,
            relay_extra: "allow-peers = [\"127.0.0.0/8\", \"::1\"]",
            ..TestConfig::default()
        }
        .render(),
    )
}

/// A peer socket on `ip`, its reads bounded.
fn peer_on(ip: &str) -> UdpSocket {
    let socket = UdpSocket::bind((ip.parse::<IpAddr>().unwrap(), 0)).expect("bind peer socket");
    socket
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("set read timeout");
    socket
}

fn addr_of(socket: &UdpSocket) -> SocketAddr {
    socket.local_addr().expect("local address")
}

/// Every XOR-RELAYED-ADDRESS of `message`, in order (RFC 8489 §14.2).
fn relayed_addresses(message: &Message) -> Vec<SocketAddr> {
    message
        .attributes
        .0
        .iter()
        .filter(|attribute| attribute.typ == AttrType(XOR_RELAYED_ADDRESS))
        .map(|attribute| {
            let value = &attribute.value;
            let port = u16::from_be_bytes([value[2], value[3]]) ^ 0x2112;
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&0x2112_A442_u32.to_be_bytes());
            key[4..].copy_from_slice(&message.transaction_id.0);
            let ip = match value[1] {
                0x01 => {
                    let octets: [u8; 4] = std::array::from_fn(|i| value[4 + i] ^ key[i]);
                    IpAddr::from(octets)
                }
                0x02 => {
                    let octets: [u8; 16] = std::array::from_fn(|i| value[4 + i] ^ key[i]);
                    IpAddr::from(octets)
                }
                family => panic!("XOR-RELAYED-ADDRESS of family {family}"),
            };
            SocketAddr::new(ip, port)
        })
        .collect()
}

/// ADDRESS-ERROR-CODE of `message` as (family, code).
fn address_error(message: &Message) -> Option<(u8, u16)> {
    let (attribute, found) = message.attributes.get(AttrType(ADDRESS_ERROR_CODE));
    found.then(|| {
        let value = &attribute.value;
        (value[0], u16::from(value[2]) * 100 + u16::from(value[3]))
    })
}

/// An Allocate for an IPv6 relay besides the IPv4 one; the response must be
/// a success whose MESSAGE-INTEGRITY verifies.
#[track_caller]
fn allocate_dual(session: &Session) -> Message {
    let response = session.request(
        METHOD_ALLOCATE,
        vec![
            udp_transport(),
            Box::new(RawAttribute(ADDITIONAL_ADDRESS_FAMILY, IPV6.to_vec())),
        ],
    );
    assert_success(&response, "dual-stack Allocate");
    integrity(&session.credentials)
        .check(&mut response.clone())
        .expect("MESSAGE-INTEGRITY of the Allocate response verifies");
    response
}

/// What `peer` receives next: the datagram and its sender.
#[track_caller]
fn peer_receives(peer: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 1500];
    let (len, from) = peer.recv_from(&mut buf).expect("the peer receives in time");
    (buf[..len].to_vec(), from)
}

/// Whether `peer` receives nothing for a while.
fn peer_hears_nothing(peer: &UdpSocket) -> bool {
    peer.set_read_timeout(Some(SILENCE)).unwrap();
    let quiet = peer.recv_from(&mut [0u8; 1500]).is_err();
    peer.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    quiet
}

/// A Send indication from the client reaches `peer` from `relayed`, and the
/// peer's answer to `relayed` comes back as a Data indication from `peer`.
#[track_caller]
fn relays_both_ways(session: &Session, peer: &UdpSocket, relayed: SocketAddr, data: &[u8]) {
    session
        .client
        .send_raw(&send_indication(addr_of(peer), data).raw);
    assert_eq!(
        peer_receives(peer),
        (data.to_vec(), relayed),
        "sent from the relay of the peer's family"
    );
    peer.send_to(data, relayed).expect("peer sends");
    let reply = session
        .client
        .recv_within(READ_TIMEOUT)
        .expect("the client receives what the peer sent");
    let message = decode(&reply).expect("a STUN message");
    assert_eq!(
        (message.typ.method, message.typ.class),
        (METHOD_DATA, CLASS_INDICATION)
    );
    assert_eq!(xor_peer(&message), addr_of(peer));
    let mut got = Data::default();
    got.get_from(&message).expect("DATA");
    assert_eq!(got.0, data);
}

#[test]
fn a_dual_stack_allocation_relays_to_peers_of_both_families() {
    let daemon = daemon(&["127.0.0.1", "::1"]);
    let session = Session::open(daemon.udp, alice());
    let response = allocate_dual(&session);
    let relayed = relayed_addresses(&response);
    assert_eq!(relayed.len(), 2, "two XOR-RELAYED-ADDRESS: {relayed:?}");
    let (relayed_v4, relayed_v6) = (relayed[0], relayed[1]);
    assert_eq!(relayed_v4.ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(relayed_v6.ip(), "::1".parse::<IpAddr>().unwrap());
    assert_eq!(address_error(&response), None);
    let created = format!(
        "allocation-created user=alice client={} relay={relayed_v4},{relayed_v6}",
        session.client.addr()
    );
    assert!(daemon.wait_for_log(&created), "{}", daemon.log());

    let (peer_v4, peer_v6) = (peer_on("127.0.0.1"), peer_on("::1"));
    let permission = session.request(
        METHOD_CREATE_PERMISSION,
        vec![peer(addr_of(&peer_v4)), peer(addr_of(&peer_v6))],
    );
    assert_success(&permission, "CreatePermission for an IPv4 and an IPv6 peer");
    relays_both_ways(&session, &peer_v6, relayed_v6, b"to the IPv6 peer");
    relays_both_ways(&session, &peer_v4, relayed_v4, b"to the IPv4 peer");

    // A channel to the IPv6 peer: ChannelData both ways.
    let bind = session.request(
        METHOD_CHANNEL_BIND,
        vec![Box::new(ChannelNumber(0x4000)), peer(addr_of(&peer_v6))],
    );
    assert_success(&bind, "ChannelBind to the IPv6 peer");
    session
        .client
        .send_raw(&[0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4]);
    assert_eq!(peer_receives(&peer_v6), (vec![1, 2, 3, 4], relayed_v6));
    peer_v6.send_to(&[5, 6, 7], relayed_v6).expect("peer sends");
    let reply = session
        .client
        .recv_within(READ_TIMEOUT)
        .expect("ChannelData back");
    assert_eq!(&reply[..7], &[0x40, 0x00, 0x00, 0x03, 5, 6, 7]);

    // The admin API lists both relays.
    let listing = request(daemon.admin, "GET", "/allocations", None, &[]);
    assert_eq!(listing.status, 200, "{}", listing.body);
    let list: serde_json::Value = serde_json::from_str(&listing.body).expect("JSON");
    assert_eq!(
        list[0]["relayed_addresses"],
        serde_json::json!([relayed_v4.to_string(), relayed_v6.to_string()]),
        "{list}"
    );
    assert_eq!(list[0]["relayed"], relayed_v4.to_string());

    // A Refresh naming IPv6 with LIFETIME 0 ends the IPv6 relay only.
    let refresh = session.request(
        METHOD_REFRESH,
        vec![
            Box::new(Lifetime(Duration::ZERO)),
            Box::new(RawAttribute(REQUESTED_ADDRESS_FAMILY, IPV6.to_vec())),
        ],
    );
    assert_success(&refresh, "Refresh deleting the IPv6 relay");
    assert!(daemon.wait_for_log("relay-deleted user=alice"));
    peer_v6.send_to(b"late", relayed_v6).expect("peer sends");
    assert_eq!(
        session.client.recv_within(SILENCE),
        None,
        "the IPv6 relay is closed"
    );
    session
        .client
        .send_raw(&send_indication(addr_of(&peer_v6), b"none").raw);
    assert!(peer_hears_nothing(&peer_v6), "no IPv6 relay to send from");
    relays_both_ways(&session, &peer_v4, relayed_v4, b"the IPv4 relay lives on");
    let permission = session.request(METHOD_CREATE_PERMISSION, vec![peer(addr_of(&peer_v6))]);
    assert_error(
        &permission,
        443,
        "an IPv6 peer on what is an IPv4 allocation now",
    );

    let delete = session.request(METHOD_REFRESH, vec![Box::new(Lifetime(Duration::ZERO))]);
    assert_success(&delete, "Refresh deleting the allocation");
    assert!(daemon.wait_for_log("allocation-deleted user=alice"));
}

#[test]
fn without_an_ipv6_relay_address_a_dual_stack_allocate_gets_its_ipv4_relay_and_440() {
    let daemon = daemon(&["127.0.0.1"]);
    let session = Session::open(daemon.udp, alice());
    let response = allocate_dual(&session);
    let relayed = relayed_addresses(&response);
    assert_eq!(relayed.len(), 1, "{relayed:?}");
    assert!(relayed[0].is_ipv4());
    assert_eq!(address_error(&response), Some((0x02, 440)));
    let peer_v6 = peer_on("::1");
    let permission = session.request(METHOD_CREATE_PERMISSION, vec![peer(addr_of(&peer_v6))]);
    assert_error(&permission, 443, "an IPv6 peer on an IPv4 allocation");
}
