//! One client floods ChannelData as fast as its socket sends, on its own
//! allocation under the default config, while another client sends a steady
//! 50 datagrams a second through another allocation over the same UDP
//! listener: the steady stream must arrive whole. Clients and peers are UDP
//! sockets on 127.0.0.1; requests go through the `stun` and `turn` crates'
//! codec. Bounded: the flood lasts a few seconds.

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use stun::message::{METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION};
use turn::proto::channum::ChannelNumber;

use common::stun_client::{Session, alice, assert_success, loopback_peer, peer, rest_user};
use common::{TestDaemon, loopback_config};

const CHANNEL: u16 = 0x4000;
const STEADY_RATE: u64 = 50;
const STEADY_SECONDS: u64 = 4;

/// `session`'s allocation with CHANNEL bound to a new peer socket.
fn allocate_with_channel(session: &Session) -> UdpSocket {
    session.allocate();
    let peer_socket = loopback_peer(Duration::from_millis(500));
    let peer_addr = peer_socket.local_addr().unwrap();
    for (method, attrs) in [
        (
            METHOD_CHANNEL_BIND,
            vec![Box::new(ChannelNumber(CHANNEL)) as _, peer(peer_addr)],
        ),
        (METHOD_CREATE_PERMISSION, vec![peer(peer_addr)]),
    ] {
        assert_success(&session.request(method, attrs), "setup");
    }
    peer_socket
}

fn channel_data(payload: &[u8]) -> Vec<u8> {
    let mut frame = CHANNEL.to_be_bytes().to_vec();
    frame.extend(u16::try_from(payload.len()).unwrap().to_be_bytes());
    frame.extend(payload);
    frame
}

/// Sends ChannelData from `socket` to `server` until `stop`; returns how many.
fn flood(socket: UdpSocket, server: SocketAddr, stop: &AtomicBool) -> u64 {
    let frame = channel_data(&[0x55; 100]);
    let mut sent = 0;
    // Bounded by `stop`, and by count should the flag never come.
    while !stop.load(Ordering::Relaxed) && sent < 50_000_000 {
        for _ in 0..256 {
            if socket.send_to(&frame, server).is_ok() {
                sent += 1;
            }
        }
    }
    sent
}

#[test]
fn a_flood_on_one_allocation_does_not_starve_a_steady_stream_on_another() {
    let daemon = TestDaemon::start(&loopback_config(""));
    let flooder = Session::open(daemon.udp, alice());
    let flood_peer = allocate_with_channel(&flooder);
    let steady = Session::open(daemon.udp, rest_user("bob", common::unix_now() + 3600));
    let steady_peer = allocate_with_channel(&steady);

    let stop = Arc::new(AtomicBool::new(false));
    let flooding = {
        let socket = flooder.client.socket.try_clone().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || flood(socket, daemon.udp, &stop))
    };
    let counting = std::thread::spawn(move || {
        let mut seen = BTreeSet::new();
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(STEADY_SECONDS + 5);
        while Instant::now() < deadline && (seen.len() as u64) < STEADY_RATE * STEADY_SECONDS {
            if let Ok(len) = steady_peer.recv(&mut buf)
                && len == 8
            {
                seen.insert(u64::from_be_bytes(buf[..8].try_into().unwrap()));
            }
        }
        seen.len()
    });
    // Let the flood build up first.
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    for seq in 0..STEADY_RATE * STEADY_SECONDS {
        let due = start + Duration::from_millis(seq * 1000 / STEADY_RATE);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        steady
            .client
            .socket
            .send_to(&channel_data(&seq.to_be_bytes()), daemon.udp)
            .unwrap();
    }
    let arrived = counting.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let flooded = flooding.join().unwrap();
    drop(flood_peer);
    let sent = STEADY_RATE * STEADY_SECONDS;
    eprintln!(
        "steady stream: {arrived} of {sent} arrived while the flood sent {flooded} datagrams"
    );
    assert!(
        arrived as u64 * 100 >= sent * 99,
        "{arrived} of {sent} arrived during a flood of {flooded}"
    );
}
