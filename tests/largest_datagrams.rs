//! The largest datagrams a peer can send, relayed to clients over UDP, TCP
//! and TLS in both framings: Data indications (RFC 8656 §10.3) and
//! ChannelData (§12). A datagram whose frame cannot carry it to the client
//! (a STUN length field too short to announce it, or a UDP datagram to the
//! client too small to hold it) is dropped and counted as
//! `too-large-for-client`, never sent with a wrong length: on a stream a
//! wrong length would make the peer's own bytes read as frames.
//!
//! Requests are built and frames parsed with the `stun` and `turn` crates;
//! clients are on 127.0.0.1, peers on 127.0.0.1 and [::1].

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use stun::message::{
    CLASS_INDICATION, CLASS_REQUEST, Getter, METHOD_ALLOCATE, METHOD_CHANNEL_BIND,
    METHOD_CREATE_PERMISSION, METHOD_DATA, Message,
};
use turn::proto::channum::ChannelNumber;
use turn::proto::data::Data;
use turn::proto::reqfamily::{REQUESTED_FAMILY_IPV4, REQUESTED_FAMILY_IPV6};

use common::stun_client::{
    alice, assert_challenge, assert_success, build, build_authenticated, decode, peer, relayed_of,
    udp_transport, xor_peer,
};
use common::{TestConfig, TestDaemon};

const HOST: &str = "turn.icegate.test";
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const CHANNEL: u16 = 0x4000;
/// What a peer sends after each large datagram: the next frame the client
/// reads must be this one, whole.
const MARKER: &[u8] = b"marker!";

/// The largest UDP payload: 65 535 less the IP header (IPv4) and the UDP header.
fn max_udp_payload(ipv6: bool) -> usize {
    if ipv6 { 65_535 - 8 } else { 65_535 - 20 - 8 }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// A client connection that sends STUN messages and reads whole frames.
enum Conn {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    fn open(transport: Transport, daemon: &TestDaemon, tls: &Arc<ClientConfig>) -> Self {
        let tcp = |addr: SocketAddr| {
            let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            stream
        };
        match transport {
            Transport::Udp => {
                let socket = UdpSocket::bind("127.0.0.1:0").expect("bind client socket");
                socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                Self::Udp(socket, daemon.udp)
            }
            Transport::Tcp => Self::Tcp(tcp(daemon.tcp.expect("tcp listener"))),
            Transport::Tls => {
                let mut socket = tcp(daemon.tls.expect("tls listener"));
                let mut connection =
                    ClientConnection::new(tls.clone(), ServerName::try_from(HOST).unwrap())
                        .expect("a rustls client connection");
                while connection.is_handshaking() {
                    connection.complete_io(&mut socket).expect("TLS handshake");
                }
                Self::Tls(Box::new(StreamOwned::new(connection, socket)))
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        match self {
            Self::Udp(socket, server) => {
                socket.send_to(bytes, *server).expect("send");
            }
            Self::Tcp(stream) => stream.write_all(bytes).expect("send"),
            Self::Tls(stream) => {
                stream.write_all(bytes).expect("send");
                stream.flush().expect("flush");
            }
        }
    }

    /// The next STUN message or ChannelData frame (padding removed).
    fn recv_frame(&mut self) -> Vec<u8> {
        let stream: &mut dyn Read = match self {
            Self::Udp(socket, _) => {
                let mut buf = vec![0u8; 65_536];
                let len = socket.recv(&mut buf).expect("a datagram from icegate");
                buf.truncate(len);
                return buf;
            }
            Self::Tcp(stream) => stream,
            Self::Tls(stream) => stream.as_mut(),
        };
        read_stream_frame(stream).expect("a frame from icegate")
    }

    fn transact(&mut self, request: &Message) -> Message {
        self.send(&request.raw);
        loop {
            let frame = self.recv_frame();
            if let Some(message) = decode(&frame)
                && message.transaction_id == request.transaction_id
                && message.typ.class != CLASS_INDICATION
            {
                return message;
            }
        }
    }
}

/// Cuts one frame off a stream by its length field, as a TURN client does.
fn read_stream_frame(stream: &mut dyn Read) -> io::Result<Vec<u8>> {
    let mut frame = vec![0u8; 4];
    stream.read_exact(&mut frame)?;
    let length = usize::from(u16::from_be_bytes([frame[2], frame[3]]));
    let (rest, padding) = match frame[0] {
        0x00..=0x03 => (16 + length, 0),
        0x40..=0x7F => (length, length.next_multiple_of(4) - length),
        other => panic!("first byte {other:#04x} is neither STUN nor ChannelData"),
    };
    frame.resize(4 + rest + padding, 0);
    stream.read_exact(&mut frame[4..])?;
    frame.truncate(4 + rest);
    Ok(frame)
}

/// What the client got for one datagram from a peer.
#[derive(Debug, PartialEq)]
enum Relayed {
    Indication(SocketAddr, Vec<u8>),
    ChannelData(u16, Vec<u8>),
}

fn relayed_of_frame(frame: &[u8]) -> Relayed {
    if (0x40..=0x7F).contains(&frame[0]) {
        let length = usize::from(u16::from_be_bytes([frame[2], frame[3]]));
        assert_eq!(frame.len(), 4 + length, "ChannelData length field");
        return Relayed::ChannelData(
            u16::from_be_bytes([frame[0], frame[1]]),
            frame[4..].to_vec(),
        );
    }
    let message = decode(frame).expect("the stun crate decodes the Data indication");
    assert_eq!(message.typ.method, METHOD_DATA);
    assert_eq!(message.typ.class, CLASS_INDICATION);
    let mut data = Data::default();
    data.get_from(&message).expect("DATA");
    Relayed::Indication(xor_peer(&message), data.0)
}

/// The largest payload that reaches this client from a peer in this framing.
fn largest_fitting(transport: Transport, peer_ipv6: bool, channel: bool) -> usize {
    // The client connects over IPv4, so its UDP datagrams carry at most this.
    let udp_limit = max_udp_payload(false);
    if channel {
        return match transport {
            Transport::Udp => udp_limit - 4,
            _ => max_udp_payload(peer_ipv6),
        };
    }
    // Header, XOR-PEER-ADDRESS (4 + 8 or 20), DATA's header, and the data
    // padded to 4; the body is at most 0xFFFC, the largest 16-bit multiple of 4.
    let overhead = 20 + 4 + if peer_ipv6 { 20 } else { 8 } + 4;
    let frame_limit = match transport {
        Transport::Udp => udp_limit,
        _ => 20 + 0xFFFC,
    };
    ((frame_limit - overhead) / 4 * 4).min(max_udp_payload(peer_ipv6))
}

/// A datagram of `len` bytes that looks like a stream of ChannelData frames
/// on channel 0x4000, so a wrong length field would show at once.
fn forged(len: usize) -> Vec<u8> {
    [0x40, 0x00, 0x00, 0x04]
        .into_iter()
        .cycle()
        .take(len)
        .collect()
}

/// Allocates over `conn` in the peer's family, binds CHANNEL to `channel_peer`
/// and permits `indication_peer`; returns the relayed address.
fn allocate(
    conn: &mut Conn,
    ipv6: bool,
    indication_peer: SocketAddr,
    channel_peer: SocketAddr,
) -> SocketAddr {
    let credentials = alice();
    let challenge = conn.transact(&build(
        METHOD_ALLOCATE,
        CLASS_REQUEST,
        vec![udp_transport()],
    ));
    let nonce = assert_challenge(&challenge, 401, "Allocate without credentials");
    let family = Box::new(if ipv6 {
        REQUESTED_FAMILY_IPV6
    } else {
        REQUESTED_FAMILY_IPV4
    });
    let request = |attrs| build_authenticated(METHOD_ALLOCATE, attrs, &credentials, &nonce);
    let mut response = conn.transact(&request(vec![udp_transport(), family]));
    let relayed = relayed_of(&mut response, &credentials);
    assert_eq!(relayed.is_ipv6(), ipv6, "relay family");
    let permission = build_authenticated(
        METHOD_CREATE_PERMISSION,
        vec![peer(indication_peer)],
        &credentials,
        &nonce,
    );
    assert_success(&conn.transact(&permission), "CreatePermission");
    let bind = build_authenticated(
        METHOD_CHANNEL_BIND,
        vec![Box::new(ChannelNumber(CHANNEL)), peer(channel_peer)],
        &credentials,
        &nonce,
    );
    assert_success(&conn.transact(&bind), "ChannelBind");
    relayed
}

/// Sends the largest datagrams from peers of one family to a client over
/// `transport`, each followed by MARKER; returns how many were dropped.
fn relay_largest(
    daemon: &TestDaemon,
    tls: &Arc<ClientConfig>,
    transport: Transport,
    ipv6: bool,
) -> u64 {
    let bind = if ipv6 { "[::1]:0" } else { "127.0.0.1:0" };
    let indication_peer = UdpSocket::bind(bind).expect("bind peer");
    let channel_peer = UdpSocket::bind(bind).expect("bind peer");
    let mut conn = Conn::open(transport, daemon, tls);
    let relayed_address = allocate(
        &mut conn,
        ipv6,
        indication_peer.local_addr().unwrap(),
        channel_peer.local_addr().unwrap(),
    );
    let relayed = |frame: &Option<Vec<u8>>| frame.as_ref().map(|f| relayed_of_frame(f));
    let mut dropped = 0;
    for (peer_socket, channel) in [(&indication_peer, false), (&channel_peer, true)] {
        let fit = largest_fitting(transport, ipv6, channel);
        let largest = max_udp_payload(ipv6);
        let mut sizes = vec![fit, fit + 1, largest];
        sizes.retain(|&size| size <= largest);
        sizes.dedup();
        let expect = |data: Vec<u8>| {
            if channel {
                Relayed::ChannelData(CHANNEL, data)
            } else {
                Relayed::Indication(peer_socket.local_addr().unwrap(), data)
            }
        };
        for size in sizes {
            let what =
                format!("{transport:?} client, IPv6 peer {ipv6}, channel {channel}, {size} B");
            peer_socket
                .send_to(&forged(size), relayed_address)
                .unwrap_or_else(|error| panic!("{what}: peer send: {error}"));
            peer_socket
                .send_to(MARKER, relayed_address)
                .expect("peer sends the marker");
            let first = Some(conn.recv_frame());
            if size <= fit {
                assert_eq!(
                    relayed(&first),
                    Some(expect(forged(size))),
                    "{what}: relayed whole"
                );
                let marker = Some(conn.recv_frame());
                assert_eq!(
                    relayed(&marker),
                    Some(expect(MARKER.to_vec())),
                    "{what}: then the marker"
                );
            } else {
                dropped += 1;
                assert_eq!(
                    relayed(&first),
                    Some(expect(MARKER.to_vec())),
                    "{what}: dropped, the marker next"
                );
            }
        }
    }
    dropped
}

/// Every transport and peer family; then the daemon's tally counts each drop.
#[test]
fn largest_peer_datagrams_reach_clients_whole_or_are_dropped_and_counted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = common::make_test_ca_and_cert(dir.path(), HOST);
    let mut daemon = TestDaemon::start(
        &TestConfig {
            relay_addresses: &["127.0.0.1", "::1"],
            allow_loopback: false,
            relay_extra: r#"allow-peers = ["127.0.0.0/8", "::1/128"]"#,
            tcp: true,
            tls: Some((&certs.cert, &certs.key)),
            // The UDP allocations would hold the drain on SIGTERM for its default grace.
            shutdown_grace: Some("1s"),
            ..TestConfig::default()
        }
        .render(),
    );
    let tls = common::tls_client_config(&certs.ca);
    let mut dropped = 0;
    for transport in [Transport::Udp, Transport::Tcp, Transport::Tls] {
        for ipv6 in [false, true] {
            dropped += relay_largest(&daemon, &tls, transport, ipv6);
        }
    }
    // UDP: both framings, both families, drop the largest and one byte past
    // the fit; streams: only a Data indication from an IPv6 peer can be too large.
    assert_eq!(dropped, 4 * 2 + 2 * 2);
    let tally = daemon.stop();
    assert!(
        tally.contains(&format!(" too-large-for-client={dropped}")),
        "every drop counted: {tally}"
    );
}
