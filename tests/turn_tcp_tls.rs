//! TURN and STUN over TCP and TLS against the real daemon, from clients we
//! did not write: coturn's `turnutils_uclient` (`-t`, `-t -S`, Debian
//! package `coturn`), aioice (PyPI, driven by `tests/aioice_stun.py`),
//! rustls as a TLS client, and Python's `ssl` module for handshakes the
//! server must refuse. Raw sockets play what no well-behaved client does:
//! garbage, oversized and half frames, a reader that stops reading, silence.
//!
//! Every daemon here listens on UDP, TCP and TLS on 127.0.0.1 with a test CA
//! and leaf made by the openssl CLI. Traffic goes to 127.0.0.1 only; every
//! wait is bounded and every child process is killed on drop.

mod common;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use serde_json::Value;
use stun::agent::TransactionId;
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::error_code::ErrorCodeAttribute;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter, METHOD_ALLOCATE, Message,
    MessageType, Setter,
};
use stun::textattrs::TextAttribute;
use turn::proto::PROTO_UDP;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;

use common::coturn::{
    CLIENTS, Deleted, Exited, Peers, UCLIENT_DEADLINE, User, assert_carried_every_message,
    assert_uclient_tally, uclient, wait_for_deleted,
};
use common::{PASSWORD, REALM, TestCerts, TestConfig, TestDaemon, USER, xor_mapped_address};

/// The name the test certificates are issued for (and IP 127.0.0.1).
const HOST: &str = "turn.icegate.test";
/// The longest any socket read or write of ours waits.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// aioice_stun.py bounds itself to 10 s; beyond this it is stuck.
const AIOICE_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The daemon under test

/// A daemon with UDP, TCP and TLS listeners, and the certificates it serves.
struct Setup {
    daemon: TestDaemon,
    certs: TestCerts,
    /// Holds the certificates; dropped after the daemon.
    dir: tempfile::TempDir,
}

impl Setup {
    /// Starts a daemon whose `[relay]` gets `relay_extra` and whose
    /// `[connections]` table is `connections` (keys, one a line).
    fn start(relay_extra: &str, connections: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = common::make_test_ca_and_cert(dir.path(), HOST);
        let daemon = TestDaemon::start(
            &TestConfig {
                relay_extra,
                connections_extra: connections,
                ..Self::listeners(&certs)
            }
            .render(),
        );
        Self { daemon, certs, dir }
    }

    /// The test config with UDP, TCP and TLS listeners, every one on an
    /// ephemeral port, TLS serving `certs`.
    fn listeners(certs: &TestCerts) -> TestConfig<'_> {
        TestConfig {
            tcp: true,
            tls: Some((&certs.cert, &certs.key)),
            ..TestConfig::default()
        }
    }

    fn tcp(&self) -> SocketAddr {
        self.daemon.tcp.expect("icegate announced its tcp listener")
    }

    fn tls(&self) -> SocketAddr {
        self.daemon.tls.expect("icegate announced its tls listener")
    }

    /// How many file descriptors the daemon holds now.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.daemon.pid()))
            .expect("read the daemon's /proc/PID/fd")
            .count()
    }

    /// Waits up to `limit` until the daemon holds `expected` descriptors;
    /// returns the last count seen.
    fn wait_for_fds(&self, expected: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let now = self.fds();
            if now == expected || Instant::now() >= deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many log lines contain `needle`.
    fn count(&self, needle: &str) -> usize {
        self.daemon
            .log()
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// The log line containing `needle`, waiting at most 5 s; fails the test
    /// with the log if none comes.
    #[track_caller]
    fn expect_log(&self, needle: &str) -> String {
        self.daemon
            .wait_for_line(needle, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no log line with `{needle}`; log:\n{}", self.daemon.log()))
    }

    /// Serves one Binding over TCP and waits until the daemon has closed
    /// that connection; returns the descriptors the daemon then holds, the
    /// baseline for [`Setup::assert_serving_and_nothing_leaked`].
    #[track_caller]
    fn baseline_fds(&self) -> usize {
        let client = assert_binding_over_tcp(self.tcp());
        self.expect_log(&format!("connection-closed tcp {client}->"));
        self.fds()
    }

    /// After a misbehaving client: once every connection is closed the
    /// daemon holds the `baseline` descriptors it had before, and a fresh
    /// client still gets its Binding answered over TCP.
    #[track_caller]
    fn assert_serving_and_nothing_leaked(&self, baseline: usize) {
        for _ in 0..2 {
            let fds = self.wait_for_fds(baseline, Duration::from_secs(5));
            assert_eq!(
                fds,
                baseline,
                "the daemon holds other descriptors than before; log:\n{}",
                self.daemon.log()
            );
            assert_binding_over_tcp(self.tcp());
        }
    }

    /// Stops the daemon with SIGTERM and returns the refusals its last line counts.
    fn stop(&mut self) -> BTreeMap<String, u64> {
        let line = self.daemon.stop();
        let (_, list) = line
            .split_once("refused or dropped:")
            .unwrap_or_else(|| panic!("unexpected stopping line {line:?}"));
        list.split_whitespace()
            .map(|pair| {
                let (name, n) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad NAME=N {pair:?} in {line:?}"));
                (name.to_owned(), n.parse().expect("a count"))
            })
            .collect()
    }
}

/// Exercises: the documented way to run TCP and TLS listeners side by side
/// in tests and on hosts that want any free port: both on 127.0.0.1:0. Port
/// 0 never clashes, so the daemon must start and announce two different ports.
#[test]
fn tcp_and_tls_listeners_can_both_take_an_ephemeral_port() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = common::make_test_ca_and_cert(dir.path(), HOST);
    let config_path = dir.path().join("icegate.toml");
    let config = TestConfig {
        allow_loopback: false,
        ..Setup::listeners(&certs)
    }
    .render();
    std::fs::write(&config_path, &config).unwrap();
    let check = common::run_bounded(
        Command::new(env!("CARGO_BIN_EXE_icegate"))
            .arg("check-config")
            .arg("--config")
            .arg(&config_path),
        Duration::from_secs(10),
    );
    assert!(
        check.status.success(),
        "check-config refuses tcp and tls listeners both on 127.0.0.1:0:\n{}{}",
        check.stdout,
        check.stderr
    );
    let daemon = TestDaemon::start(&config);
    let (tcp, tls) = (daemon.tcp.unwrap(), daemon.tls.unwrap());
    assert_ne!(tcp.port(), tls.port());
    assert_binding_over_tcp(tcp);
    assert_binding_over_tcp(tls);
}

/// The refusal tally `(name, count)` pairs make, for comparing with [`Setup::stop`].
fn tally_of(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs
        .iter()
        .map(|&(name, n)| (name.to_owned(), n))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// STUN over a stream, by hand

/// A Binding request without attributes and with a random transaction ID.
fn binding_request() -> Vec<u8> {
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    request.extend(rand::random::<[u8; 12]>());
    request
}

/// One STUN message from a stream: the 20-byte header, then the length it announces.
fn read_stun(stream: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut message = vec![0u8; 20];
    stream.read_exact(&mut message)?;
    let len = usize::from(u16::from_be_bytes([message[2], message[3]]));
    message.resize(20 + len, 0);
    stream.read_exact(&mut message[20..])?;
    Ok(message)
}

/// Sends a Binding request on `stream` and returns the XOR-MAPPED-ADDRESS of
/// its success response.
#[track_caller]
fn binding(stream: &mut (impl Read + Write)) -> SocketAddr {
    let request = binding_request();
    stream.write_all(&request).expect("send a Binding request");
    stream.flush().expect("flush the Binding request");
    let response = read_stun(stream).expect("a Binding response");
    assert_eq!(
        &response[..2],
        [0x01, 0x01],
        "Binding success expected: {response:02x?}"
    );
    assert_eq!(&response[4..20], &request[4..20], "same transaction");
    xor_mapped_address(&response)
        .unwrap_or_else(|| panic!("no IPv4 XOR-MAPPED-ADDRESS in {response:02x?}"))
}

/// A TCP connection to `addr` whose reads and writes wait at most IO_TIMEOUT.
fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|error| panic!("connect to {addr}: {error}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// A fresh TCP client's Binding is answered with its own address, which
/// this returns.
#[track_caller]
fn assert_binding_over_tcp(addr: SocketAddr) -> SocketAddr {
    let mut stream = connect(addr);
    let mapped = binding(&mut stream);
    assert_eq!(mapped, stream.local_addr().unwrap(), "Binding over TCP");
    mapped
}

/// Waits up to `limit` for the daemon to close `stream` (end of stream or
/// reset), discarding anything it still sends; returns how long that took.
/// A close that happened before the call is seen at once.
fn wait_closed(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// TLS with rustls

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects to `addr` and completes a TLS handshake for HOST.
fn tls_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> io::Result<TlsStream> {
    let mut tcp = connect(addr);
    let mut tls = ClientConnection::new(config.clone(), ServerName::try_from(HOST).unwrap())
        .expect("a rustls client connection");
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp)?;
    }
    assert_eq!(tls.handshake_kind(), Some(rustls::HandshakeKind::Full));
    Ok(StreamOwned::new(tls, tcp))
}

/// Asserts that the server has closed `stream`, or does within IO_TIMEOUT:
/// a read ends the stream or fails, but does not time out or return data.
#[track_caller]
fn assert_tls_closed(stream: &mut TlsStream, when: &str) {
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(error)
            if !matches!(
                error.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        other => panic!("TLS connection still open {when}: {other:?}"),
    }
}

/// The leaf certificate the server presented on `stream`.
fn presented_leaf(stream: &TlsStream) -> CertificateDer<'static> {
    stream
        .conn
        .peer_certificates()
        .and_then(<[_]>::first)
        .expect("the server presented a certificate")
        .clone()
        .into_owned()
}

/// The (first) certificate in a PEM file.
fn pem_certificate(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path)
        .unwrap_or_else(|error| panic!("read {}: {error:?}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// TURN Allocate over a stream, with the `stun` and `turn` crates' codec

fn build(setters: Vec<Box<dyn Setter>>) -> Message {
    let mut message = Message::new();
    message.build(&setters).expect("build a STUN message");
    message
}

fn decode(bytes: Vec<u8>) -> Message {
    let mut message = Message::new();
    message.raw = bytes;
    message
        .decode()
        .expect("the stun crate decodes the response");
    message
}

/// Allocates a UDP relay over `stream` for the static user (the 401 round
/// trip, then an authenticated Allocate) and returns the relayed address.
#[track_caller]
fn allocate(stream: &mut (impl Read + Write)) -> SocketAddr {
    let mut transact = |message: Message| {
        stream.write_all(&message.raw).expect("send Allocate");
        stream.flush().expect("flush Allocate");
        let response = decode(read_stun(stream).expect("Allocate response"));
        assert_eq!(response.transaction_id, message.transaction_id);
        response
    };
    let transport = || {
        Box::new(RequestedTransport {
            protocol: PROTO_UDP,
        })
    };
    let challenge = transact(build(vec![
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        transport(),
        Box::new(FINGERPRINT),
    ]));
    assert_eq!(challenge.typ.class, CLASS_ERROR_RESPONSE);
    let mut code = ErrorCodeAttribute::default();
    code.get_from(&challenge).expect("ERROR-CODE");
    assert_eq!(code.code.0, 401, "the first Allocate is challenged");
    let nonce = TextAttribute::get_from_as(&challenge, ATTR_NONCE)
        .expect("NONCE")
        .text;
    let response = transact(build(vec![
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        transport(),
        Box::new(TextAttribute::new(ATTR_USERNAME, USER.to_owned())),
        Box::new(TextAttribute::new(ATTR_REALM, REALM.to_owned())),
        Box::new(TextAttribute::new(ATTR_NONCE, nonce)),
        Box::new(MessageIntegrity::new_long_term_integrity(
            USER.to_owned(),
            REALM.to_owned(),
            PASSWORD.to_owned(),
        )),
        Box::new(FINGERPRINT),
    ]));
    assert_eq!(
        response.typ.class, CLASS_SUCCESS_RESPONSE,
        "Allocate succeeds"
    );
    let mut relayed = RelayedAddress::default();
    relayed.get_from(&response).expect("XOR-RELAYED-ADDRESS");
    SocketAddr::new(relayed.ip, relayed.port)
}

// ---------------------------------------------------------------------------------------------
// coturn's turnutils_uclient over TCP and TLS (the tools: `common::coturn`)

/// How uclient reaches the daemon.
#[derive(Clone, Copy, Debug)]
enum Over {
    /// `-t` to the tcp listener.
    Tcp,
    /// `-t -S` to the tls listener, verifying the server with the test CA (`-E`).
    Tls,
    /// `-t` to the tls listener, which serves plain TCP too.
    TcpOnTlsPort,
}

impl Over {
    /// The listener uclient connects to.
    fn port(self, setup: &Setup) -> SocketAddr {
        match self {
            Self::Tcp => setup.tcp(),
            Self::Tls | Self::TcpOnTlsPort => setup.tls(),
        }
    }

    /// The transport the daemon's connection lines name.
    fn transport(self) -> &'static str {
        match self {
            Self::Tcp | Self::TcpOnTlsPort => "tcp",
            Self::Tls => "tls",
        }
    }
}

/// Asserts that a uclient run over `over` got every message there and back,
/// that the daemon saw it on the right listener and transport, deleted
/// each session's allocation having carried MESSAGES packets of LENGTH
/// bytes each way under a user name of `user`'s, kept none, and closed
/// every connection.
///
/// Before each RTP/RTCP pair (or single session) uclient allocates once on
/// a probe connection it closes at once; over TCP/TLS that allocation ends
/// with its connection, having relayed nothing.
fn assert_every_packet_relayed(setup: &Setup, over: Over, run: &Exited, user: User) {
    assert_uclient_tally(run, CLIENTS);
    let sessions = usize::try_from(CLIENTS).unwrap();
    let deleted = wait_for_deleted(&setup.daemon, |deleted| {
        deleted
            .iter()
            .filter(|allocation| allocation.carried())
            .count()
            >= sessions
            && deleted.len() >= setup.count("info allocation-created ")
    });
    let log = setup.daemon.log();
    assert_eq!(
        deleted.len(),
        setup.count("info allocation-created "),
        "every allocation made is deleted; log:\n{log}"
    );
    let (sessions_deleted, probes): (Vec<&Deleted>, Vec<&Deleted>) =
        deleted.iter().partition(|allocation| allocation.carried());
    assert_eq!(
        sessions_deleted.len(),
        sessions,
        "one deletion with traffic per session expected; log:\n{log}"
    );
    for allocation in sessions_deleted {
        assert_carried_every_message(allocation, user);
    }
    assert!(
        probes.len() <= sessions,
        "more idle allocations than uclient's probes; log:\n{log}"
    );
    for probe in probes {
        assert!(
            probe.with_connection && user.owns(&probe.user),
            "a probe allocation ends with its connection: {probe:?}"
        );
    }
    // Every connection went where it should, and is closed now. (Over TLS,
    // uclient picks a TLS version per connection at random and retries on
    // failure; rustls refuses TLS 1.0 and 1.1 ClientHellos, which the daemon
    // logs as `connection-closed client=... reason=tls-handshake-failed`.)
    let listener = over.port(setup);
    let transport = over.transport();
    let opened: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("connection-opened "))
        .collect();
    assert!(
        opened.len() >= sessions,
        "one connection per session expected; log:\n{log}"
    );
    for line in &opened {
        assert!(
            line.starts_with(&format!("debug connection-opened {transport} "))
                && line.ends_with(&format!("->{listener}")),
            "a {over:?} connection to {listener} expected: {line}"
        );
    }
    let closed = || {
        setup.count(&format!("connection-closed {transport} "))
            + setup.count(&format!("connection-dropped transport={transport} "))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while closed() < opened.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        closed(),
        opened.len(),
        "every connection uclient opened is closed; log:\n{}",
        setup.daemon.log()
    );
}

/// Starts a daemon whose `[relay]` gets `relay_extra`, runs CLIENTS uclient
/// sessions over `over` as `user` to `peers` with `flags` on top, and
/// asserts that every packet is relayed.
fn assert_uclient_relays_every_packet(
    over: Over,
    relay_extra: &str,
    user: User,
    peers: Peers,
    flags: &[&str],
) {
    let setup = Setup::start(relay_extra, "");
    let peer = peers.start();
    let ca = setup.certs.ca.display().to_string();
    let mut all = vec!["-t"];
    if let Over::Tls = over {
        all.extend(["-S", "-E", &ca]);
    }
    all.extend(peers.flag());
    all.extend(flags);
    let run = uclient(
        over.port(&setup),
        user.args(),
        peer.as_ref(),
        CLIENTS,
        &all,
        UCLIENT_DEADLINE,
    );
    assert_every_packet_relayed(&setup, over, &run, user);
}

/// Exercises over TCP: static user, RTP/RTCP pairs (EVEN-PORT and
/// RESERVATION-TOKEN), ChannelBind with RFC 5766 numbers, ChannelData both
/// ways (padded to 4 bytes on the stream) through an echo peer.
#[test]
fn uclient_over_tcp_relays_every_packet_over_channels() {
    assert_uclient_relays_every_packet(Over::Tcp, "", User::Static, Peers::Echo, &[]);
}

/// Exercises over TCP: Send indications to the peer and Data indications back.
#[test]
fn uclient_over_tcp_relays_every_packet_with_send_indications() {
    assert_uclient_relays_every_packet(Over::Tcp, "", User::Static, Peers::Echo, &["-s"]);
}

/// Exercises over TCP: client to client (`-y`), each packet crossing two
/// allocations, each on its own connection, over channels.
#[test]
fn uclient_over_tcp_clients_reach_each_other_over_channels() {
    assert_uclient_relays_every_packet(Over::Tcp, "", User::Static, Peers::EachOther, &[]);
}

/// Exercises over TCP: TURN REST credentials (`-W`), single allocations
/// (`-c`), channels to an echo peer.
#[test]
fn uclient_over_tcp_with_rest_secret_relays_every_packet() {
    assert_uclient_relays_every_packet(Over::Tcp, "", User::Rest, Peers::Echo, &["-c"]);
}

/// Exercises over TLS (`-t -S`, the server verified with the test CA):
/// static user, RTP/RTCP pairs, channels, through an echo peer.
#[test]
fn uclient_over_tls_relays_every_packet_over_channels() {
    assert_uclient_relays_every_packet(Over::Tls, "", User::Static, Peers::Echo, &[]);
}

/// Exercises over TLS: Send and Data indications.
#[test]
fn uclient_over_tls_relays_every_packet_with_send_indications() {
    assert_uclient_relays_every_packet(Over::Tls, "", User::Static, Peers::Echo, &["-s"]);
}

/// Exercises over TLS: TURN REST credentials, single allocations, channels.
#[test]
fn uclient_over_tls_with_rest_secret_relays_every_packet() {
    assert_uclient_relays_every_packet(Over::Tls, "", User::Rest, Peers::Echo, &["-c"]);
}

/// A coturn user's expectation: the TLS port answers plain TCP clients too.
#[test]
fn uclient_over_plain_tcp_on_the_tls_port_relays_every_packet() {
    assert_uclient_relays_every_packet(Over::TcpOnTlsPort, "", User::Static, Peers::Echo, &[]);
}

// ---------------------------------------------------------------------------------------------
// aioice (PyPI) through tests/aioice_stun.py

/// Runs tests/aioice_stun.py with `args` and returns the JSON it prints.
fn aioice(args: &[String]) -> Value {
    common::python_json("aioice_stun.py", args, AIOICE_DEADLINE, "aioice")
}

/// Arguments that make aioice_stun.py reach `addr` over `transport`,
/// trusting the test CA for TLS.
fn aioice_target(setup: &Setup, transport: &str, addr: SocketAddr) -> Vec<String> {
    vec![
        "--transport".into(),
        transport.into(),
        "--port".into(),
        addr.port().to_string(),
        "--ca".into(),
        setup.certs.ca.display().to_string(),
        "--server-name".into(),
        HOST.into(),
    ]
}

/// `[ip, port]` as aioice_stun.py prints addresses.
fn json_addr(value: &Value) -> SocketAddr {
    let ip = value[0].as_str().expect("an IP string");
    let port = value[1].as_u64().expect("a port number");
    format!("{ip}:{port}")
        .parse()
        .unwrap_or_else(|_| panic!("not an address: {value}"))
}

/// Exercises: aioice's STUN codec over TCP, over TLS (verifying the test
/// certificate for HOST) and over plain TCP on the TLS port: each Binding's
/// XOR-MAPPED-ADDRESS is the client's own socket address.
#[test]
fn aioice_binding_over_tcp_and_tls_reports_the_clients_own_address() {
    let setup = Setup::start("", "");
    for (transport, addr, listener) in [
        ("tcp", setup.tcp(), "tcp"),
        ("tls", setup.tls(), "tls"),
        ("tcp", setup.tls(), "tls"),
    ] {
        let mut args = vec!["binding".to_owned()];
        args.extend(aioice_target(&setup, transport, addr));
        let report = aioice(&args);
        let local = json_addr(&report["local"]);
        assert_eq!(
            json_addr(&report["mapped"]),
            local,
            "{transport} to the {listener} listener: {report}"
        );
        assert_eq!(report["tls"], Value::Bool(transport == "tls"), "{report}");
        setup.expect_log(&format!("connection-opened {transport} {local}->{addr}"));
    }
}

/// A UDP socket on 127.0.0.1 that echoes every datagram until dropped.
struct UdpEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<SocketAddr>>>,
}

impl UdpEcho {
    fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the echo peer");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut senders = Vec::new();
            let mut buf = [0u8; 2048];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((len, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..len], from);
                    senders.push(from);
                }
            }
            senders
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops echoing; returns where the datagrams came from.
    fn senders(mut self) -> Vec<SocketAddr> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("echo thread")
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// aioice's TURN client over `transport`: allocate, send through a channel
/// to a UDP echo peer, get the echo back, delete the allocation.
fn assert_aioice_turn_echoes(transport: &str) {
    let setup = Setup::start("", "");
    let echo = UdpEcho::start();
    let payload = format!("aioice over {transport} to icegate");
    let mut args = vec!["turn".to_owned()];
    let server = if transport == "tls" {
        setup.tls()
    } else {
        setup.tcp()
    };
    args.extend(aioice_target(&setup, transport, server));
    args.extend([
        "--user".into(),
        USER.into(),
        "--password".into(),
        PASSWORD.into(),
        "--peer-port".into(),
        echo.addr.port().to_string(),
        "--payload".into(),
        payload.clone(),
    ]);
    let report = aioice(&args);
    assert_eq!(report["echo"], Value::String(payload), "{report}");
    assert_eq!(json_addr(&report["from"]), echo.addr, "{report}");
    assert_eq!(report["tls"], Value::Bool(transport == "tls"), "{report}");
    let local = json_addr(&report["local"]);
    assert_eq!(json_addr(&report["mapped"]), local, "{report}");
    let relayed = json_addr(&report["relayed"]);
    assert_eq!(
        echo.senders(),
        [relayed],
        "the peer hears from the relayed address only"
    );
    setup.expect_log(&format!("connection-opened {transport} {local}->{server}"));
    setup.expect_log(&format!(
        "allocation-created user={USER} client={local} relay={relayed}"
    ));
    // aioice refreshes with lifetime 0 before it closes; either way the
    // allocation is gone.
    let line = setup.expect_log(&format!("user={USER} client={local} relay={relayed} age="));
    assert!(
        line.starts_with("info allocation-deleted"),
        "allocation deleted: {line}"
    );
}

/// Exercises: aioice's TURN client over TCP (401 round trip, Allocate,
/// ChannelBind, ChannelData padded on the stream, Refresh 0).
#[test]
fn aioice_turn_over_tcp_relays_to_a_udp_peer_and_back() {
    assert_aioice_turn_echoes("tcp");
}

/// Exercises: the same over TLS, aioice verifying the test certificate.
#[test]
fn aioice_turn_over_tls_relays_to_a_udp_peer_and_back() {
    assert_aioice_turn_echoes("tls");
}

// ---------------------------------------------------------------------------------------------
// Clients that misbehave

/// Exercises: bytes that are neither STUN nor ChannelData (first byte 0xFF)
/// after a good Binding, over TCP and inside TLS: the daemon closes the
/// connection, says why, and serves the next client.
#[test]
fn garbage_on_a_connection_closes_it_and_the_next_client_is_served() {
    let mut setup = Setup::start("", "");
    let baseline = setup.baseline_fds();

    let mut tcp = connect(setup.tcp());
    binding(&mut tcp);
    tcp.write_all(&[0xFF; 32]).unwrap();
    assert!(
        wait_closed(&mut tcp, IO_TIMEOUT).is_some(),
        "TCP connection still open after garbage"
    );
    setup.expect_log(&format!(
        "connection-dropped transport=tcp client={} server={} reason=garbage",
        tcp.local_addr().unwrap(),
        setup.tcp()
    ));

    let config = common::tls_client_config(&setup.certs.ca);
    let mut tls = tls_connect(setup.tls(), &config).expect("TLS handshake");
    binding(&mut tls);
    let client = tls.sock.local_addr().unwrap();
    tls.write_all(&[0xFF; 32]).unwrap();
    tls.flush().unwrap();
    assert_tls_closed(&mut tls, "after garbage");
    setup.expect_log(&format!(
        "connection-dropped transport=tls client={client} server={} reason=garbage",
        setup.tls()
    ));
    drop((tcp, tls));

    setup.assert_serving_and_nothing_leaked(baseline);
    assert_eq!(setup.stop(), tally_of(&[("garbage", 2)]));
}

/// Exercises: a TLS client pointed at the plain TCP port (a `turns:` URL
/// with the wrong port): its ClientHello is refused by closing.
#[test]
fn tls_client_on_the_plain_tcp_port_is_closed_and_the_next_client_is_served() {
    let mut setup = Setup::start("", "");
    let baseline = setup.baseline_fds();
    let config = common::tls_client_config(&setup.certs.ca);
    let refused = tls_connect(setup.tcp(), &config);
    assert!(refused.is_err(), "a TLS handshake on the plain TCP port");
    setup.expect_log("reason=tls-on-plain-tcp-listener");
    setup.assert_serving_and_nothing_leaked(baseline);
    assert_eq!(setup.stop(), tally_of(&[("garbage", 1)]));
}

/// Runs a Python `ssl` handshake against the TLS port limited to
/// `max_version` and `ciphers`, and returns its report.
fn python_handshake(setup: &Setup, max_version: &str, ciphers: &str) -> Value {
    let mut args = vec!["handshake".to_owned()];
    args.extend(aioice_target(setup, "tls", setup.tls()));
    args.extend([
        "--max-version".into(),
        max_version.into(),
        "--ciphers".into(),
        ciphers.into(),
    ]);
    aioice(&args)
}

/// Exercises: ClientHellos rustls cannot accept, from Python's ssl module
/// (OpenSSL): TLS 1.1 at most, and TLS 1.2 with only a non-ECDHE suite
/// (AES128-SHA). Each handshake fails, the daemon logs why, and a default
/// Python client (TLS 1.3) and a TCP client are served afterwards.
#[test]
fn tls_client_with_only_old_versions_or_ciphers_is_refused_and_others_are_served() {
    let mut setup = Setup::start("", "");
    let baseline = setup.baseline_fds();
    for (max_version, ciphers) in [
        ("TLSv1_1", "DEFAULT:@SECLEVEL=0"),
        ("TLSv1_2", "AES128-SHA:@SECLEVEL=0"),
    ] {
        let report = python_handshake(&setup, max_version, ciphers);
        assert_eq!(
            report["ok"],
            Value::Bool(false),
            "{max_version} {ciphers}: {report}"
        );
        let local = json_addr(&report["local"]);
        let line = setup.expect_log(&format!(
            "connection-closed client={local} reason=tls-handshake-failed: "
        ));
        eprintln!("{max_version} {ciphers}: client {report}; daemon {line}");
    }
    let good = python_handshake(&setup, "TLSv1_3", "DEFAULT");
    assert_eq!(good["ok"], Value::Bool(true), "{good}");
    assert_eq!(good["version"], Value::from("TLSv1.3"), "{good}");
    setup.assert_serving_and_nothing_leaked(baseline);
    assert_eq!(setup.stop(), tally_of(&[("tls-handshake-failed", 2)]));
}

/// Exercises: `max-frame-bytes = 1024`; a STUN header announcing 4000 bytes
/// (over TCP and inside TLS) and a ChannelData header announcing 4000
/// bytes close the connection at once, before the body is sent.
#[test]
fn frame_larger_than_max_frame_bytes_closes_the_connection() {
    let mut setup = Setup::start("", "max-frame-bytes = 1024");
    let baseline = setup.baseline_fds();
    let mut stun_header = vec![0x00, 0x01, 0x0F, 0xA0, 0x21, 0x12, 0xA4, 0x42];
    stun_header.extend(rand::random::<[u8; 12]>());
    let channel_header = [0x40, 0x00, 0x0F, 0xA0];

    for header in [&stun_header[..], &channel_header] {
        let mut tcp = connect(setup.tcp());
        tcp.write_all(header).unwrap();
        assert!(
            wait_closed(&mut tcp, IO_TIMEOUT).is_some(),
            "connection still open after announcing a 4000-byte frame {header:02x?}"
        );
        setup.expect_log(&format!(
            "connection-dropped transport=tcp client={} server={} reason=frame-too-large",
            tcp.local_addr().unwrap(),
            setup.tcp()
        ));
    }

    let config = common::tls_client_config(&setup.certs.ca);
    let mut tls = tls_connect(setup.tls(), &config).expect("TLS handshake");
    let client = tls.sock.local_addr().unwrap();
    tls.write_all(&stun_header).unwrap();
    tls.flush().unwrap();
    assert_tls_closed(&mut tls, "after announcing a 4000-byte frame");
    setup.expect_log(&format!(
        "connection-dropped transport=tls client={client} server={} reason=frame-too-large",
        setup.tls()
    ));
    drop(tls);

    // The limit itself is allowed: a 1024-byte Binding (a 1000-byte unknown
    // comprehension-optional attribute, which a server ignores) is answered.
    let mut at_limit = binding_request();
    at_limit[2..4].copy_from_slice(&1004u16.to_be_bytes());
    at_limit.extend([0x80, 0xFF, 0x03, 0xE8]);
    at_limit.extend([0x55; 1000]);
    assert_eq!(at_limit.len(), 1024);
    let mut tcp = connect(setup.tcp());
    tcp.write_all(&at_limit).unwrap();
    let response = read_stun(&mut tcp).expect("an answer to a 1024-byte Binding");
    assert_eq!(&response[..2], [0x01, 0x01], "{response:02x?}");
    assert_eq!(&response[4..20], &at_limit[4..20]);
    drop(tcp);

    setup.assert_serving_and_nothing_leaked(baseline);
    assert_eq!(setup.stop(), tally_of(&[("frame-too-large", 3)]));
}

/// Exercises: clients that go away in the middle of a frame: half a Binding
/// then FIN, half a Binding then RST (SO_LINGER 0), half a Binding inside
/// TLS then a bare TCP close. The daemon forgets each connection, counts
/// nothing as refused, and serves the next client.
#[test]
fn connection_dropped_mid_frame_leaves_the_daemon_serving() {
    let mut setup = Setup::start("", "");
    let baseline = setup.baseline_fds();
    let half = &binding_request()[..10];

    let mut fin = connect(setup.tcp());
    fin.write_all(half).unwrap();
    let fin_client = fin.local_addr().unwrap();
    drop(fin);
    setup.expect_log(&format!("connection-closed tcp {fin_client}->"));

    let rst = socket2::Socket::from(connect(setup.tcp()));
    let rst_client = rst.local_addr().unwrap().as_socket().unwrap();
    (&rst).write_all(half).unwrap();
    // Give the daemon the half frame before the reset.
    std::thread::sleep(Duration::from_millis(100));
    rst.set_linger(Some(Duration::ZERO)).unwrap();
    drop(rst);
    setup.expect_log(&format!("connection-closed tcp {rst_client}->"));

    let config = common::tls_client_config(&setup.certs.ca);
    let mut tls = tls_connect(setup.tls(), &config).expect("TLS handshake");
    let tls_client = tls.sock.local_addr().unwrap();
    tls.write_all(half).unwrap();
    tls.flush().unwrap();
    drop(tls);
    setup.expect_log(&format!("connection-closed tls {tls_client}->"));

    setup.assert_serving_and_nothing_leaked(baseline);
    assert_eq!(setup.stop(), tally_of(&[]));
}

/// Exercises: `max-queued-bytes = 65536`; a client with a 4 KiB receive
/// buffer sends Binding requests as fast as it can for at most 10 s and
/// never reads. The daemon drops it (`reason=slow-reader`) instead of
/// buffering without bound, while another client's Bindings keep being
/// answered promptly.
#[test]
fn client_that_never_reads_is_dropped_and_others_are_unaffected() {
    let mut setup = Setup::start("", "max-queued-bytes = 65536");
    let baseline = setup.baseline_fds();

    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .connect_timeout(&setup.tcp().into(), IO_TIMEOUT)
        .unwrap();
    let flood = TcpStream::from(socket);
    flood
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let flood_client = flood.local_addr().unwrap();
    let flooding = Arc::new(AtomicBool::new(true));
    let flood_thread = {
        let flooding = flooding.clone();
        let mut flood = flood;
        std::thread::spawn(move || {
            let batch: Vec<u8> = (0..64).flat_map(|_| binding_request()).collect();
            let started = Instant::now();
            let mut sent = 0usize;
            let outcome = loop {
                if started.elapsed() > Duration::from_secs(10) {
                    break "still open after 10 s".to_owned();
                }
                if let Err(error) = flood.write_all(&batch) {
                    break format!("write failed: {error}");
                }
                sent += batch.len();
            };
            flooding.store(false, Ordering::Relaxed);
            (outcome, sent, started.elapsed(), flood)
        })
    };

    // Meanwhile another client is answered, each time within a second.
    let mut other = connect(setup.tcp());
    let mut answered = 0;
    while flooding.load(Ordering::Relaxed) {
        let asked = Instant::now();
        assert_eq!(binding(&mut other), other.local_addr().unwrap());
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "a Binding took {:?} during the flood",
            asked.elapsed()
        );
        answered += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let (outcome, sent, took, flood) = flood_thread.join().expect("flood thread");
    eprintln!(
        "flood: {outcome} after {sent} bytes in {took:?}; other client answered {answered} times"
    );
    setup.expect_log(&format!(
        "connection-dropped transport=tcp client={flood_client} server={} reason=slow-reader",
        setup.tcp()
    ));
    assert!(answered > 0, "the other client was never asked");
    assert_eq!(binding(&mut other), other.local_addr().unwrap());
    drop((flood, other));

    setup.assert_serving_and_nothing_leaked(baseline);
    assert_eq!(setup.stop(), tally_of(&[("slow-reader", 1)]));
}

/// Exercises: `tls-handshake-timeout = "1s"`: a client that connects to the
/// TLS or TCP port and says nothing, and one that sends the start of a
/// ClientHello and stalls, are closed after about a second.
#[test]
fn silent_connection_is_closed_after_the_handshake_timeout() {
    let mut setup = Setup::start("", "tls-handshake-timeout = \"1s\"\nidle-timeout = \"1m\"");
    let baseline = setup.baseline_fds();
    let connected = Instant::now();
    let mut silent_tls = connect(setup.tls());
    let mut silent_tcp = connect(setup.tcp());
    let mut stalled = connect(setup.tls());
    // A TLS handshake record header announcing 512 bytes, and 7 of them.
    stalled
        .write_all(&[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03, 0,
        ])
        .unwrap();
    for (what, stream) in [
        ("silent on the TLS port", &mut silent_tls),
        ("silent on the TCP port", &mut silent_tcp),
        ("stalled in its ClientHello", &mut stalled),
    ] {
        wait_closed(stream, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("a client {what} was not closed within 5 s"));
        let took = connected.elapsed();
        assert!(
            took >= Duration::from_millis(800),
            "a client {what} was closed after {took:?}, before the 1 s timeout"
        );
    }
    for stream in [&silent_tls, &silent_tcp] {
        setup.expect_log(&format!(
            "connection-closed client={} reason=silent",
            stream.local_addr().unwrap()
        ));
    }
    setup.expect_log(&format!(
        "connection-closed client={} reason=tls-handshake-timeout",
        stalled.local_addr().unwrap()
    ));
    drop((silent_tls, silent_tcp, stalled));
    setup.assert_serving_and_nothing_leaked(baseline);
    assert_eq!(
        setup.stop(),
        tally_of(&[("idle-connection", 2), ("tls-handshake-failed", 1)])
    );
}

/// Exercises: `idle-timeout = "2s"`: a client that sends a Binding and then
/// nothing is closed about 2 s later, over TCP and over TLS; a connection
/// holding an allocation is not, however quiet.
#[test]
fn idle_connection_is_closed_after_the_idle_timeout_unless_it_has_an_allocation() {
    let mut setup = Setup::start("", "tls-handshake-timeout = \"1s\"\nidle-timeout = \"2s\"");
    let baseline = setup.baseline_fds();
    let config = common::tls_client_config(&setup.certs.ca);

    let mut allocated = connect(setup.tcp());
    allocate(&mut allocated);
    let mut idle = connect(setup.tcp());
    binding(&mut idle);
    let mut idle_tls = tls_connect(setup.tls(), &config).expect("TLS handshake");
    binding(&mut idle_tls);
    let idle_tls_client = idle_tls.sock.local_addr().unwrap();
    let answered = Instant::now();

    let took = wait_closed(&mut idle, Duration::from_secs(6))
        .expect("an idle TCP connection was not closed within 6 s");
    assert!(
        took >= Duration::from_millis(1800),
        "idle connection closed after {took:?}, before the 2 s timeout"
    );
    setup.expect_log(&format!(
        "connection-dropped transport=tcp client={} server={} reason=idle-connection",
        idle.local_addr().unwrap(),
        setup.tcp()
    ));
    setup.expect_log(&format!(
        "connection-dropped transport=tls client={idle_tls_client} server={} reason=idle-connection",
        setup.tls()
    ));
    assert_tls_closed(&mut idle_tls, "after the idle timeout");

    // Past the idle timeout, the connection with an allocation still works.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(answered.elapsed()));
    assert_eq!(binding(&mut allocated), allocated.local_addr().unwrap());
    let allocated_client = allocated.local_addr().unwrap();
    drop((allocated, idle, idle_tls));
    setup.expect_log(&format!(
        "allocation-deleted-with-connection user={USER} client={allocated_client}"
    ));

    setup.assert_serving_and_nothing_leaked(baseline);
    assert_eq!(
        setup.stop(),
        tally_of(&[("challenge", 1), ("idle-connection", 2)])
    );
}

/// Exercises: an allocation over TCP whose lifetime runs out (relay
/// lifetimes of 2 s, never refreshed) leaves a connection without an
/// allocation that has been silent for longer than `idle-timeout = "2s"`:
/// the daemon closes it, as `[connections] idle-timeout` promises for any
/// connection without an allocation.
#[test]
fn connection_whose_allocation_expired_is_closed_after_the_idle_timeout() {
    let mut setup = Setup::start(
        "default-lifetime = \"2s\"\nmax-lifetime = \"2s\"",
        "idle-timeout = \"2s\"",
    );
    let baseline = setup.baseline_fds();
    let mut client = connect(setup.tcp());
    let relayed = allocate(&mut client);
    let allocated = Instant::now();
    let expired = setup
        .daemon
        .wait_for_line(
            &format!(
                "allocation-expired user={USER} client={}",
                client.local_addr().unwrap()
            ),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| panic!("the 2 s allocation {relayed} did not expire"));
    eprintln!("{expired} after {:?}", allocated.elapsed());
    // Expiry comes within a timer tick of 2 s; the idle timeout 2 s later.
    let closed = wait_closed(&mut client, Duration::from_secs(6));
    assert!(
        closed.is_some(),
        "a connection whose allocation expired {:?} ago, silent since, is still open; log:\n{}",
        allocated.elapsed().saturating_sub(Duration::from_secs(2)),
        setup.daemon.log()
    );
    setup.expect_log(&format!(
        "connection-dropped transport=tcp client={} server={} reason=idle-connection",
        client.local_addr().unwrap(),
        setup.tcp()
    ));
    drop(client);
    setup.assert_serving_and_nothing_leaked(baseline);
    assert_eq!(
        setup.stop(),
        tally_of(&[("challenge", 1), ("idle-connection", 1)])
    );
}

/// Exercises: a client that sends its Binding request and then shuts down
/// its sending side (a half-close, as `nc -N` or a script piping one request
/// does) still reads the answer before the daemon closes the connection.
/// 200 clients in a row, since a lost answer is a race.
#[test]
fn client_that_half_closes_after_its_request_still_gets_the_answer() {
    const CLIENTS: usize = 200;
    let setup = Setup::start("", "");
    let baseline = setup.baseline_fds();
    let mut unanswered = Vec::new();
    for _ in 0..CLIENTS {
        if unanswered.len() >= 10 {
            break;
        }
        let mut client = connect(setup.tcp());
        client
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let request = binding_request();
        client.write_all(&request).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        match read_stun(&mut client) {
            Ok(response) if response[4..20] == request[4..20] => assert_eq!(
                xor_mapped_address(&response),
                Some(client.local_addr().unwrap())
            ),
            Ok(other) => unanswered.push(format!("another message {other:02x?}")),
            Err(error) => unanswered.push(format!("{:?}", error.kind())),
        }
    }
    assert!(
        unanswered.is_empty(),
        "{} Bindings sent before a half-close got no answer (of {CLIENTS} at most; \
         stopped at 10); what those clients read instead: {:?}",
        unanswered.len(),
        unanswered.iter().take(5).collect::<Vec<_>>()
    );
    setup.assert_serving_and_nothing_leaked(baseline);
}

/// Exercises: `max-connections-per-ip = 2`: two connections work, a third
/// from the same address is closed at once, and once one of the two is
/// gone a new one is let in.
#[test]
fn third_connection_from_one_address_is_refused_at_max_connections_per_ip() {
    let mut setup = Setup::start("", "max-connections-per-ip = 2");
    let baseline = setup.baseline_fds();
    let mut first = connect(setup.tcp());
    binding(&mut first);
    let config = common::tls_client_config(&setup.certs.ca);
    let mut second = tls_connect(setup.tls(), &config).expect("TLS handshake");
    binding(&mut second);

    let mut third = connect(setup.tcp());
    let took =
        wait_closed(&mut third, Duration::from_secs(2)).expect("a third connection was not closed");
    assert!(
        took < Duration::from_secs(1),
        "closed after {took:?}, not at once"
    );
    setup.expect_log(&format!(
        "connection-refused client={} reason=connection-limit",
        third.local_addr().unwrap()
    ));
    assert_eq!(binding(&mut first), first.local_addr().unwrap());
    assert_eq!(binding(&mut second), second.sock.local_addr().unwrap());

    drop(first);
    assert_binding_once_admitted(setup.tcp(), "after the first closed");
    drop((second, third));
    assert_binding_once_admitted(setup.tcp(), "after all closed");

    setup.assert_serving_and_nothing_leaked(baseline);
    let refusals = setup.stop();
    assert!(
        refusals.get("connection-limit").is_some_and(|&n| n >= 1),
        "{refusals:?}"
    );
    assert_eq!(refusals.len(), 1, "{refusals:?}");
}

/// Retries a Binding on fresh TCP connections for up to 3 s until one is
/// admitted (a closed connection's place is freed just after the daemon
/// sees the close) and answered with the client's own address.
#[track_caller]
fn assert_binding_once_admitted(addr: SocketAddr, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut fresh = connect(addr);
        let request = binding_request();
        if fresh.write_all(&request).is_ok()
            && let Ok(response) = read_stun(&mut fresh)
        {
            assert_eq!(
                xor_mapped_address(&response),
                Some(fresh.local_addr().unwrap())
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no connection let in within 3 s {when}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Exercises: 50 connections at once, 25 over TCP and 25 over TLS, every
/// fifth with an allocation: the daemon's descriptor count grows with them
/// and, once all are closed, returns to where it was; every allocation
/// ends with its connection.
#[test]
fn closed_connections_and_their_allocations_release_every_descriptor() {
    let mut setup = Setup::start("", "");
    let baseline = setup.baseline_fds();
    let config = common::tls_client_config(&setup.certs.ca);
    let mut tcp = Vec::new();
    let mut tls = Vec::new();
    let mut allocations = 0;
    for i in 0..25 {
        let mut plain = connect(setup.tcp());
        let mut secure = tls_connect(setup.tls(), &config).expect("TLS handshake");
        if i % 5 == 0 {
            allocate(&mut plain);
            allocate(&mut secure);
            allocations += 2;
        } else {
            binding(&mut plain);
            binding(&mut secure);
        }
        tcp.push(plain);
        tls.push(secure);
    }
    let busy = setup.fds();
    assert!(
        busy >= baseline + 50 + allocations,
        "{busy} descriptors with 50 connections and {allocations} allocations, {baseline} before"
    );
    drop((tcp, tls));
    let after = setup.wait_for_fds(baseline, Duration::from_secs(10));
    assert_eq!(
        after,
        baseline,
        "descriptors after closing every connection (with {busy} open); log:\n{}",
        setup.daemon.log()
    );
    assert_eq!(
        setup.count("info allocation-deleted-with-connection "),
        allocations,
        "{}",
        setup.daemon.log()
    );
    setup.assert_serving_and_nothing_leaked(baseline);
    assert_eq!(
        setup.stop(),
        tally_of(&[("challenge", u64::try_from(allocations).unwrap())])
    );
}

// ---------------------------------------------------------------------------------------------
// Certificate reload

/// Exercises: SIGHUP reloads the certificate. A connection made with leaf A
/// keeps working after the files hold leaf B and the daemon reloaded; new
/// connections get B. Then garbage in the certificate file, and then a
/// new certificate with the old key: each reload fails (the whole reload:
/// the running configuration stays) naming the file at fault, and new
/// connections still get B.
#[test]
fn sighup_serves_a_renewed_certificate_to_new_connections_only() {
    let setup = Setup::start("", "");
    let config = common::tls_client_config(&setup.certs.ca);
    let leaf_a = pem_certificate(&setup.certs.cert);
    let mut old = tls_connect(setup.tls(), &config).expect("TLS handshake with A");
    assert!(presented_leaf(&old) == leaf_a, "leaf A presented at start");
    assert_eq!(binding(&mut old), old.sock.local_addr().unwrap());

    let key_a = std::fs::read(&setup.certs.key).unwrap();
    let (cert_b, key_b) = setup.certs.issue_leaf(setup.dir.path(), HOST, "leaf-b");
    let leaf_b = pem_certificate(&cert_b);
    assert!(leaf_a != leaf_b);
    std::fs::copy(&cert_b, &setup.certs.cert).unwrap();
    std::fs::copy(&key_b, &setup.certs.key).unwrap();
    setup.daemon.signal("HUP");
    setup.expect_log(&format!(
        "info certificate-reloaded certificate={}",
        setup.certs.cert.display()
    ));

    let mut new = tls_connect(setup.tls(), &config).expect("TLS handshake with B");
    assert!(
        presented_leaf(&new) == leaf_b,
        "leaf B presented after reload"
    );
    assert_eq!(binding(&mut new), new.sock.local_addr().unwrap());
    assert!(presented_leaf(&old) == leaf_a);
    assert_eq!(
        binding(&mut old),
        old.sock.local_addr().unwrap(),
        "the connection made with A still answers"
    );

    std::fs::write(&setup.certs.cert, "this is not a certificate\n").unwrap();
    setup.daemon.signal("HUP");
    let failed = setup.expect_log("reload-failed: ");
    assert!(
        failed.starts_with("error reload-failed: ")
            && failed.contains(&setup.certs.cert.display().to_string()),
        "the failure names the certificate file: {failed}"
    );
    let mut newer = tls_connect(setup.tls(), &config).expect("TLS handshake after failed reload");
    assert!(
        presented_leaf(&newer) == leaf_b,
        "leaf B still presented after a failed reload"
    );
    assert_eq!(binding(&mut newer), newer.sock.local_addr().unwrap());

    // A renewed certificate whose key file was not updated: refused too,
    // naming the key file.
    let (cert_c, _) = setup.certs.issue_leaf(setup.dir.path(), HOST, "leaf-c");
    std::fs::copy(&cert_c, &setup.certs.cert).unwrap();
    std::fs::write(&setup.certs.key, key_a).unwrap();
    setup.daemon.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while setup.count("error reload-failed: ") < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = setup.daemon.log();
    let mismatch = log
        .lines()
        .filter(|line| line.contains("error reload-failed: "))
        .nth(1)
        .unwrap_or_else(|| panic!("no second reload-failed; log:\n{log}"));
    assert!(
        mismatch.contains(&setup.certs.key.display().to_string()),
        "the failure names the key file: {mismatch}"
    );
    let mut newest = tls_connect(setup.tls(), &config).expect("TLS handshake after a mismatch");
    assert!(
        presented_leaf(&newest) == leaf_b,
        "leaf B still presented after a refused key"
    );
    assert_eq!(binding(&mut newest), newest.sock.local_addr().unwrap());
    assert_eq!(binding(&mut old), old.sock.local_addr().unwrap());
    assert_eq!(binding(&mut new), new.sock.local_addr().unwrap());
    assert_eq!(setup.count("certificate-reloaded"), 1, "{log}");
}

/// Exercises: `unauthenticated-timeout` closes a connection that never
/// allocates, though its Binding requests keep it from ever being idle; a
/// connection that allocated stays past it.
#[test]
fn connection_that_only_sends_bindings_is_closed_after_the_unauthenticated_timeout() {
    let mut setup = Setup::start(
        "",
        "idle-timeout = \"10s\"\nunauthenticated-timeout = \"1s\"",
    );
    let mut allocated = connect(setup.tcp());
    allocate(&mut allocated);
    let mut chatty = connect(setup.tcp());
    let chatty_client = chatty.local_addr().unwrap();
    let opened = Instant::now();
    // A Binding every 200 ms: never idle, never allocating.
    let mut closed_after = None;
    while opened.elapsed() < Duration::from_secs(6) {
        let request = binding_request();
        let sent = chatty.write_all(&request).and_then(|()| chatty.flush());
        if sent.is_err() || read_stun(&mut chatty).is_err() {
            closed_after = Some(opened.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = closed_after.expect("a Binding-only connection was still open after 6 s");
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}, before the 1 s timeout"
    );
    setup.expect_log(&format!(
        "connection-dropped transport=tcp client={chatty_client} server={} \
         reason=unauthenticated-connection",
        setup.tcp()
    ));
    assert_eq!(binding(&mut allocated), allocated.local_addr().unwrap());
    drop((allocated, chatty));
    let tally = setup.stop();
    assert_eq!(
        tally.get("unauthenticated-connection"),
        Some(&1),
        "{tally:?}"
    );
}
