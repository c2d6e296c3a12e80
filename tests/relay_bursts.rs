//! Bursts through the batched data plane: datagrams that arrive together
//! are read, routed and sent together (recvmmsg, GRO, GSO), and must still
//! reach the other side each whole, once and in order, whatever their sizes
//! and however they interleave with STUN requests. Client and peer are UDP
//! sockets on 127.0.0.1; requests and Data indications go through the
//! `stun` and `turn` crates' codec.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use stun::message::{CLASS_INDICATION, Getter, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION};
use turn::proto::channum::ChannelNumber;
use turn::proto::data::Data;

use common::stun_client::{Session, alice, assert_success, decode, peer, send_indication};
use common::{TestConfig, TestDaemon};

const CHANNEL: u16 = 0x4000;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Payload sizes for a burst: runs of equal sizes (one GSO send each way)
/// broken by odd sizes, so runs start and end mid-batch. Small enough in
/// all that the receiving socket's default buffer holds the whole burst.
fn burst_sizes() -> Vec<usize> {
    let mut sizes = vec![170; 60];
    sizes.extend([1200; 20]);
    sizes.extend((0..30).map(|i| 8 + i * 13));
    sizes.extend([170; 40]);
    sizes
}

/// Datagram `seq` of `len` bytes: its number first, then a pattern of it.
fn datagram(seq: usize, len: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..len).map(|i| (seq * 7 + i).to_be_bytes()[7]).collect();
    bytes[..2].copy_from_slice(&u16::try_from(seq).unwrap().to_be_bytes());
    bytes
}

/// A session with an allocation, a peer socket and CHANNEL bound to it.
fn setup(daemon: &TestDaemon) -> (Session, UdpSocket, SocketAddr) {
    let session = Session::open(daemon.udp, alice());
    let relayed = session.allocate();
    let peer_socket = UdpSocket::bind("127.0.0.1:0").expect("bind peer socket");
    peer_socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let peer_addr = peer_socket.local_addr().unwrap();
    assert_success(
        &session.request(
            METHOD_CHANNEL_BIND,
            vec![Box::new(ChannelNumber(CHANNEL)), peer(peer_addr)],
        ),
        "ChannelBind",
    );
    assert_success(
        &session.request(METHOD_CREATE_PERMISSION, vec![peer(peer_addr)]),
        "CreatePermission",
    );
    session
        .client
        .socket
        .set_read_timeout(Some(IO_TIMEOUT))
        .unwrap();
    (session, peer_socket, relayed)
}

fn channel_data(payload: &[u8]) -> Vec<u8> {
    let mut frame = CHANNEL.to_be_bytes().to_vec();
    frame.extend(u16::try_from(payload.len()).unwrap().to_be_bytes());
    frame.extend(payload);
    frame
}

/// The payload of the next datagram from the daemon: ChannelData on
/// CHANNEL, or the DATA of a Data indication.
fn next_from_daemon(session: &Session) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    let (len, _) = session
        .client
        .socket
        .recv_from(&mut buf)
        .expect("a datagram from icegate");
    let frame = &buf[..len];
    if frame[0] & 0xC0 == 0x40 {
        assert_eq!(u16::from_be_bytes([frame[0], frame[1]]), CHANNEL);
        let length = usize::from(u16::from_be_bytes([frame[2], frame[3]]));
        return frame[4..4 + length].to_vec();
    }
    let message = decode(frame).expect("a STUN message");
    assert_eq!(message.typ.class, CLASS_INDICATION);
    let mut data = Data::default();
    data.get_from(&message).expect("DATA");
    data.0
}

#[test]
fn bursts_cross_the_relay_whole_once_and_in_order_both_ways_and_both_framings() {
    let daemon = TestDaemon::start(&TestConfig::default().render());
    let (session, peer_socket, relayed) = setup(&daemon);
    let peer_addr = peer_socket.local_addr().unwrap();
    let sizes = burst_sizes();
    let mut buf = vec![0u8; 65_536];

    // Client to peer: ChannelData, then Send indications, each burst sent at once.
    for framing in ["ChannelData", "Send indication"] {
        for (seq, &len) in sizes.iter().enumerate() {
            let payload = datagram(seq, len);
            let bytes = match framing {
                "ChannelData" => channel_data(&payload),
                _ => send_indication(peer_addr, &payload).raw,
            };
            session.client.send_raw(&bytes);
        }
        for (seq, &len) in sizes.iter().enumerate() {
            let (got, from) = peer_socket
                .recv_from(&mut buf)
                .unwrap_or_else(|error| panic!("{framing} {seq} to the peer: {error}"));
            assert_eq!(from, relayed, "from the relayed address");
            assert_eq!(
                &buf[..got],
                datagram(seq, len),
                "{framing} {seq} of {len} B"
            );
        }
    }

    // Peer to client: over the channel (the peer has one), as a burst.
    for (seq, &len) in sizes.iter().enumerate() {
        peer_socket
            .send_to(&datagram(seq, len), relayed)
            .expect("peer sends");
    }
    for (seq, &len) in sizes.iter().enumerate() {
        assert_eq!(
            next_from_daemon(&session),
            datagram(seq, len),
            "ChannelData {seq} of {len} B to the client"
        );
    }

    // A second peer without a channel gets Data indications, interleaved
    // with the first peer's ChannelData: each side stays in its own order.
    let other = UdpSocket::bind("127.0.0.1:0").expect("bind second peer");
    for (seq, &len) in sizes.iter().enumerate().take(60) {
        let sender = if seq % 3 == 0 { &other } else { &peer_socket };
        sender
            .send_to(&datagram(seq, len), relayed)
            .expect("peer sends");
    }
    for (seq, &len) in sizes.iter().enumerate().take(60) {
        assert_eq!(
            next_from_daemon(&session),
            datagram(seq, len),
            "datagram {seq} to the client"
        );
    }
}

/// Many clients at once, each on a thread of its own, sending bursts that
/// the listener reads as batches spanning several clients, and so several
/// shards of the allocation table: every round trip completes. (Two
/// threads taking two shards' locks in opposite orders would stall here.)
#[test]
fn many_clients_relaying_bursts_at_once_all_complete_their_round_trips() {
    const CLIENTS: usize = 16;
    const ROUNDS: usize = 200;
    const BURST: usize = 8;
    let daemon = TestDaemon::start(&TestConfig::default().render());
    let echo = UdpSocket::bind("127.0.0.1:0").expect("bind echo peer");
    echo.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let echoing = std::thread::spawn(move || {
        let mut buf = vec![0u8; 2048];
        let mut echoed = 0;
        while echoed < CLIENTS * ROUNDS * BURST {
            let Ok((len, from)) = echo.recv_from(&mut buf) else {
                break;
            };
            echo.send_to(&buf[..len], from).expect("echo");
            echoed += 1;
        }
        echoed
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let server = daemon.udp;
            std::thread::spawn(move || {
                let session = Session::open(server, alice());
                session.allocate();
                assert_success(
                    &session.request(
                        METHOD_CHANNEL_BIND,
                        vec![Box::new(ChannelNumber(CHANNEL)), peer(echo_addr)],
                    ),
                    "ChannelBind",
                );
                session
                    .client
                    .socket
                    .set_read_timeout(Some(IO_TIMEOUT))
                    .unwrap();
                for round in 0..ROUNDS {
                    let payloads: Vec<Vec<u8>> = (0..BURST)
                        .map(|i| datagram(client * 1000 + i, 40 + client))
                        .collect();
                    for payload in &payloads {
                        session.client.send_raw(&channel_data(payload));
                    }
                    for payload in &payloads {
                        assert_eq!(
                            &next_from_daemon(&session),
                            payload,
                            "client {client} round {round}"
                        );
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client
            .join()
            .expect("a client thread completes every round trip");
    }
    assert_eq!(echoing.join().unwrap(), CLIENTS * ROUNDS * BURST);
}
