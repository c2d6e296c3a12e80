//! TCP allocations (RFC 6062) against the real daemon: coturn's
//! `turnutils_uclient -T` (Debian package `coturn`) relaying between its
//! clients' TCP allocations over TCP and TLS, and a client written here
//! with the `stun` crate's codec carrying bytes to a TCP echo peer of the
//! test's own, then asking for what must be refused.
//!
//! Traffic goes to 127.0.0.1 only; a peer the policy denies is refused
//! before any connection is tried. Every wait is bounded and every child
//! process is killed on drop.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use stun::attributes::AttrType;
use stun::message::{
    CLASS_INDICATION, CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE, METHOD_CONNECT,
    METHOD_CONNECTION_ATTEMPT, METHOD_CONNECTION_BIND, METHOD_CREATE_PERMISSION, Message,
};
use turn::proto::PROTO_TCP;
use turn::proto::reqtrans::RequestedTransport;

use common::admin::Scrape;
use common::coturn::{CLIENTS, UCLIENT_DEADLINE, User, assert_uclient_tally, uclient};
use common::stun_client::{
    Attrs, Credentials, RawAttribute, Session, alice, assert_challenge, assert_error,
    assert_success, build, build_authenticated, decode, peer, relayed_of, xor_peer,
};
use common::{TestConfig, TestDaemon};

/// The name the test certificates are issued for (and IP 127.0.0.1).
const HOST: &str = "turn.icegate.test";
/// The longest any socket read or write of ours waits.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_ID: u16 = 0x002A;

/// uclient `-T` over `flags` (`-t` is implied): CLIENTS clients, each with
/// a TCP allocation, connect to one another's relayed addresses (Connect,
/// ConnectionAttempt, ConnectionBind both ways) and exchange every message.
fn assert_uclient_relays_between_tcp_allocations(tls: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = common::make_test_ca_and_cert(dir.path(), HOST);
    let daemon = TestDaemon::start(
        &TestConfig {
            tcp: true,
            tls: Some((&certs.cert, &certs.key)),
            ..TestConfig::default()
        }
        .render(),
    );
    let ca = certs.ca.display().to_string();
    let (server, flags) = if tls {
        (daemon.tls.unwrap(), vec!["-T", "-S", "-E", &ca])
    } else {
        (daemon.tcp.unwrap(), vec!["-T"])
    };
    let run = uclient(
        server,
        User::Static.args(),
        None,
        CLIENTS,
        &flags,
        UCLIENT_DEADLINE,
    );
    assert_uclient_tally(&run, CLIENTS);
    // Every pair of clients is joined once each way: n(n-1) connections.
    let pairs = usize::try_from(CLIENTS * (CLIENTS - 1)).unwrap();
    assert!(
        daemon
            .wait_for_line("connection-joined", Duration::from_secs(5))
            .is_some(),
        "no data connection joined; log:\n{}",
        daemon.log()
    );
    let log = daemon.log();
    assert_eq!(
        log.matches("info peer-connected ").count(),
        pairs,
        "one peer connection per client pair and way; log:\n{log}"
    );
    let scrape = Scrape::of(&daemon, None);
    let tcp_bytes = |direction| {
        scrape.get(
            "icegate_relayed_bytes_total",
            &[("direction", direction), ("framing", "tcp")],
        )
    };
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let sent = (CLIENTS * common::coturn::MESSAGES * common::coturn::LENGTH) as f64;
    assert_eq!(tcp_bytes("to_peer"), sent, "every byte went to a peer once");
    assert_eq!(tcp_bytes("from_peer"), sent, "and came from one once");
}

#[test]
fn uclient_relays_between_tcp_allocations_over_tcp_with_nothing_lost() {
    assert_uclient_relays_between_tcp_allocations(false);
}

#[test]
fn uclient_relays_between_tcp_allocations_over_tls_with_nothing_lost() {
    assert_uclient_relays_between_tcp_allocations(true);
}

// ---------------------------------------------------------------------------------------------
// A client of our own over TCP, and a TCP echo peer

/// One STUN message from a stream: the 20-byte header, then the length it announces.
fn read_stun(stream: &mut impl Read) -> io::Result<Message> {
    let mut bytes = vec![0u8; 20];
    stream.read_exact(&mut bytes)?;
    let len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
    bytes.resize(20 + len, 0);
    stream.read_exact(&mut bytes[20..])?;
    decode(&bytes).ok_or_else(|| io::Error::other("undecodable STUN message"))
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|error| panic!("connect to {addr}: {error}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// A TCP connection to the daemon that passed the 401 round trip.
struct StreamSession {
    stream: TcpStream,
    credentials: Credentials,
    nonce: String,
}

impl StreamSession {
    fn open(server: SocketAddr) -> Self {
        let mut stream = connect(server);
        let probe = build(
            METHOD_ALLOCATE,
            stun::message::CLASS_REQUEST,
            vec![tcp_transport()],
        );
        stream.write_all(&probe.raw).unwrap();
        let nonce = assert_challenge(&read_stun(&mut stream).unwrap(), 401, "first Allocate");
        Self {
            stream,
            credentials: alice(),
            nonce,
        }
    }

    /// Sends an authenticated request and reads until its response (an
    /// indication on the way is returned too).
    fn request(&mut self, method: stun::message::Method, attrs: Attrs) -> (Message, Vec<Message>) {
        let request = build_authenticated(method, attrs, &self.credentials, &self.nonce);
        self.stream.write_all(&request.raw).unwrap();
        let mut indications = Vec::new();
        loop {
            let message = read_stun(&mut self.stream).expect("a response");
            if message.transaction_id == request.transaction_id {
                return (message, indications);
            }
            indications.push(message);
        }
    }

    fn allocate_tcp(&mut self) -> SocketAddr {
        let (mut response, _) = self.request(METHOD_ALLOCATE, vec![tcp_transport()]);
        relayed_of(&mut response, &self.credentials)
    }

    fn connect_to(&mut self, target: SocketAddr) -> Message {
        self.request(METHOD_CONNECT, vec![peer(target)]).0
    }
}

fn tcp_transport() -> Box<dyn stun::message::Setter> {
    Box::new(RequestedTransport {
        protocol: PROTO_TCP,
    })
}

fn connection_id(message: &Message) -> [u8; 4] {
    let value = message.get(AttrType(CONNECTION_ID)).expect("CONNECTION-ID");
    value.try_into().expect("a 4-byte CONNECTION-ID")
}

/// Opens a data connection and binds it to `id` with ConnectionBind,
/// signed with the nonce the control connection was given.
fn bind_data_connection(server: SocketAddr, nonce: &str, id: [u8; 4]) -> (TcpStream, Message) {
    let mut data = connect(server);
    let response = connection_bind(&mut data, nonce, id);
    (data, response)
}

fn connection_bind(data: &mut TcpStream, nonce: &str, id: [u8; 4]) -> Message {
    let bind = build_authenticated(
        METHOD_CONNECTION_BIND,
        vec![Box::new(RawAttribute(CONNECTION_ID, id.to_vec()))],
        &alice(),
        nonce,
    );
    data.write_all(&bind.raw).unwrap();
    read_stun(data).expect("a ConnectionBind response")
}

/// A TCP peer on 127.0.0.1 that echoes every byte of every connection,
/// one connection at a time, until `connections` have come and gone.
fn echo_peer(connections: usize) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo peer");
    let address = listener.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        for _ in 0..connections {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let mut buffer = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buffer) {
                if n == 0 || stream.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    });
    (address, thread)
}

/// Sends `payload` over `data` and reads back as many bytes.
fn echo_through(data: &mut TcpStream, payload: &[u8]) -> Vec<u8> {
    let mut writer = data.try_clone().unwrap();
    let to_send = payload.to_vec();
    let sender = std::thread::spawn(move || writer.write_all(&to_send));
    let mut back = vec![0u8; payload.len()];
    data.read_exact(&mut back).expect("every byte echoed back");
    sender.join().unwrap().expect("every byte sent");
    back
}

fn daemon(relay_extra: &str) -> TestDaemon {
    TestDaemon::start(
        &TestConfig {
            tcp: true,
            relay_extra,
            ..TestConfig::default()
        }
        .render(),
    )
}

/// Connect to a TCP echo peer, ConnectionBind on a second connection, and
/// 256 KiB go there and back unchanged; closing the data connection frees
/// the peer, so the allocation can connect to it again.
#[test]
fn a_tcp_allocation_carries_every_byte_to_a_tcp_echo_peer_and_back() {
    let daemon = daemon("");
    let server = daemon.tcp.unwrap();
    let (echo, echo_thread) = echo_peer(2);
    let mut control = StreamSession::open(server);
    let relayed = control.allocate_tcp();
    assert_eq!(
        relayed.ip(),
        "127.0.0.1".parse::<std::net::IpAddr>().unwrap()
    );

    let payload: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    for round in 0..2 {
        let response = control.connect_to(echo);
        assert_success(&response, "Connect to the echo peer");
        common::stun_client::integrity(&alice())
            .check(&mut response.clone())
            .expect("the Connect response is signed");
        let id = connection_id(&response);
        let (mut data, bound) = bind_data_connection(server, &control.nonce, id);
        assert_success(&bound, "ConnectionBind");
        assert_eq!(bound.typ.class, CLASS_SUCCESS_RESPONSE);
        let back = echo_through(&mut data, &payload);
        assert!(back == payload, "round {round}: the echo differs");
        drop(data);
        // The pair is closed on both sides before the peer may be connected again.
        let scrape_until_closed = || {
            for _ in 0..50 {
                let open = Scrape::of(&daemon, None).get("icegate_tcp_peer_connections", &[]);
                if open == 0.0 {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        };
        assert!(
            scrape_until_closed(),
            "the peer connection ends with its data connection"
        );
    }
    echo_thread.join().unwrap();
    let scrape = Scrape::of(&daemon, None);
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let carried = (2 * payload.len()) as f64;
    for direction in ["to_peer", "from_peer"] {
        assert_eq!(
            scrape.get(
                "icegate_relayed_bytes_total",
                &[("direction", direction), ("framing", "tcp")]
            ),
            carried,
            "{direction}"
        );
    }
}

/// What RFC 6062 and the peer policy refuse, each with its answer, and the
/// connection stays usable after every one.
#[test]
fn tcp_allocation_refusals_each_get_their_answer() {
    let daemon = daemon("max-tcp-connections-per-allocation = 2\n");
    let server = daemon.tcp.unwrap();
    let mut control = StreamSession::open(server);
    control.allocate_tcp();

    // A peer the default policy denies (a private range) is refused
    // before any connection is tried.
    let denied: SocketAddr = "10.20.30.40:443".parse().unwrap();
    assert_error(&control.connect_to(denied), 403, "Connect to a denied peer");

    // Nothing listens there: the connection fails at once, 447.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap();
    drop(closed);
    assert_error(
        &control.connect_to(closed_port),
        447,
        "Connect to a closed port",
    );

    // The same peer twice: 446; past the cap: 508.
    let (echo, _echo_thread) = echo_peer(2);
    let (other, _other_thread) = echo_peer(1);
    assert_success(&control.connect_to(echo), "first Connect");
    assert_error(
        &control.connect_to(echo),
        446,
        "Connect to the same peer again",
    );
    assert_success(&control.connect_to(other), "second Connect");
    let (third, _third_thread) = echo_peer(1);
    assert_error(&control.connect_to(third), 508, "Connect past the cap");

    // ConnectionBind naming no waiting connection: the control
    // connection's nonce does not carry over (438), and with its own, 400.
    let unknown_id = [0, 0, 0x7F, 0x7F];
    let (mut data, stale) = bind_data_connection(server, &control.nonce, unknown_id);
    let nonce = assert_challenge(&stale, 438, "ConnectionBind naming no connection");
    let unknown = connection_bind(&mut data, &nonce, unknown_id);
    assert_error(
        &unknown,
        400,
        "ConnectionBind with an unknown CONNECTION-ID",
    );

    // ChannelBind does not fit a TCP allocation: 400.
    let (response, _) = control.request(
        stun::message::METHOD_CHANNEL_BIND,
        vec![
            Box::new(RawAttribute(0x000C, vec![0x40, 0x00, 0, 0])),
            peer(echo),
        ],
    );
    assert_error(&response, 400, "ChannelBind on a TCP allocation");

    // Connect on a UDP allocation: 400; a TCP allocation over UDP: 400.
    let udp = Session::open(daemon.udp, alice());
    udp.allocate();
    assert_error(
        &udp.request(METHOD_CONNECT, vec![peer(echo)]),
        400,
        "Connect on a UDP allocation",
    );
    let udp_tcp = Session::open(daemon.udp, alice());
    assert_error(
        &udp_tcp.request(METHOD_ALLOCATE, vec![tcp_transport()]),
        400,
        "a TCP allocation asked over UDP",
    );

    let scrape = Scrape::of(&daemon, None);
    for (reason, count) in [
        ("peer-refused", 1.0),
        ("connect-failed", 1.0),
        ("connection-exists", 1.0),
        ("tcp-connection-quota", 1.0),
        ("unknown-connection", 1.0),
        ("relay-transport-mismatch", 3.0),
    ] {
        assert_eq!(
            scrape.get("icegate_refusals_total", &[("reason", reason)]),
            count,
            "{reason}"
        );
    }
    assert_eq!(scrape.get("icegate_tcp_peer_connections", &[]), 2.0);
    // The operator sees which allocation relays over TCP, and its peers.
    let listed = common::admin::request(daemon.admin, "GET", "/allocations", None, &[]).json();
    let tcp: Vec<_> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter(|row| row["relay_transport"] == "tcp")
        .collect();
    assert_eq!(tcp.len(), 1, "{listed}");
    assert_eq!(tcp[0]["peer_connections"], 2, "{listed}");
}

/// A peer connecting to the relayed address: with a permission the client
/// hears of it (ConnectionAttempt) and can take it; without one it is closed.
#[test]
fn a_peer_connecting_in_needs_a_permission_and_is_offered_to_the_client() {
    let daemon = daemon("");
    let server = daemon.tcp.unwrap();
    let mut control = StreamSession::open(server);
    let relayed = control.allocate_tcp();

    // No permission: the daemon closes the peer's connection.
    let mut stranger = connect(relayed);
    let mut byte = [0u8; 1];
    assert!(
        matches!(stranger.read(&mut byte), Ok(0) | Err(_)),
        "a peer without permission is closed"
    );

    let (response, _) = control.request(
        METHOD_CREATE_PERMISSION,
        vec![peer("127.0.0.1:9".parse().unwrap())],
    );
    assert_success(&response, "CreatePermission for 127.0.0.1");
    let mut peer_stream = connect(relayed);
    let local = peer_stream.local_addr().unwrap();
    let attempt = read_stun(&mut control.stream).expect("a ConnectionAttempt");
    assert_eq!(attempt.typ.method, METHOD_CONNECTION_ATTEMPT);
    assert_eq!(attempt.typ.class, CLASS_INDICATION);
    assert_eq!(xor_peer(&attempt), local, "the attempt names the peer");
    let (mut data, bound) = bind_data_connection(server, &control.nonce, connection_id(&attempt));
    assert_success(&bound, "ConnectionBind for the peer's connection");

    // Both ways, then the peer hangs up and the data connection closes.
    data.write_all(b"from the client").unwrap();
    let mut got = [0u8; 15];
    peer_stream.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"from the client");
    peer_stream.write_all(b"from the peer").unwrap();
    let mut got = [0u8; 13];
    data.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"from the peer");
    drop(peer_stream);
    assert!(
        matches!(data.read(&mut byte), Ok(0) | Err(_)),
        "the data connection closes with the peer's"
    );
    let scrape = Scrape::of(&daemon, None);
    assert_eq!(
        scrape.get("icegate_refusals_total", &[("reason", "no-route")]),
        1.0,
        "the stranger was counted"
    );
}
