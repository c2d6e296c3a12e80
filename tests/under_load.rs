//! icegate under the loads an attacker or a busy day brings, on loopback:
//! a million unauthenticated Allocates, ten thousand TCP, TLS and WebSocket
//! connections. The daemon's memory (RSS) and open file descriptors are read
//! from /proc before, during and after; what it holds for a flood must stay
//! small, and what it held for connections must be given back. Every loop is
//! bounded in count and time.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use common::admin::{Scrape, key};
use common::signal::{JWT_SECRET, SignalClient, token};
use common::turn::TurnAllocation;
use common::{PASSWORD, TestConfig, TestDaemon, USER, loopback_config};

const FLOOD_SOCKETS: usize = 10_000;
const FLOOD_REQUESTS: usize = 1_000_000;
const CONNECTIONS: usize = 10_000;
/// Below `max-connections-per-ip` (64): the connections come from many
/// loopback addresses, as from many clients.
const CONNECTIONS_PER_SOURCE: usize = 50;
/// Connections being opened at once.
const OPENING_AT_ONCE: usize = 256;
const MAGIC_COOKIE: u32 = 0x2112_A442;
const HOST: &str = "turn.test.local";

/// A value of the daemon's /proc/PID/status, in kB (VmRSS, VmHWM, ...).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn rss_kib(daemon: &TestDaemon) -> u64 {
    status_kib(daemon.pid(), "VmRSS")
}

fn open_fds(daemon: &TestDaemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .expect("read fd directory")
        .count()
}

/// The open-files limit this test process (and the daemon it starts) has.
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("read limits");
    limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3)?.parse().ok())
        .expect("Max open files")
}

fn assert_enough_files(needed: usize) {
    let limit = open_files_limit();
    assert!(
        limit >= needed as u64,
        "this test holds {needed} sockets; raise the open-files limit (now {limit}), \
         e.g. `ulimit -n 20000`"
    );
}

/// A waits up to `limit` for `done`, polling.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// Sends `count` Allocates without credentials, spread over `sockets`, each
/// with its own transaction id; returns how many the kernel took.
fn flood_allocates(server: SocketAddr, sockets: &[UdpSocket], count: usize) -> usize {
    // Allocate, REQUESTED-TRANSPORT UDP; no FINGERPRINT, as flood tools send it.
    let mut request = [0u8; 28];
    request[..4].copy_from_slice(&[0x00, 0x03, 0x00, 0x08]);
    request[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    request[20..24].copy_from_slice(&[0x00, 0x19, 0x00, 0x04]);
    request[24] = 17;
    let mut sent = 0;
    for n in 0..count {
        request[8..16].copy_from_slice(&(n as u64).to_be_bytes());
        if sockets[n % sockets.len()].send_to(&request, server).is_ok() {
            sent += 1;
        }
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_unauthenticated_allocates_cost_no_memory_and_a_real_client_still_relays() {
    assert_enough_files(FLOOD_SOCKETS + 100);
    let daemon = TestDaemon::start(&loopback_config(""));
    let sockets: Arc<Vec<UdpSocket>> = Arc::new(
        (0..FLOOD_SOCKETS)
            .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind flood socket"))
            .collect(),
    );
    // A first round makes the daemon's buffers and tables what they are
    // under a flood; the million that follow must not add to them.
    flood_allocates(daemon.udp, &sockets, 50_000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = Scrape::of(&daemon, None);
    let rss_before = rss_kib(&daemon);

    let flooding = Arc::new(AtomicBool::new(true));
    let flood = {
        let (sockets, flooding, server) = (sockets.clone(), flooding.clone(), daemon.udp);
        std::thread::spawn(move || {
            let sent = flood_allocates(server, &sockets, FLOOD_REQUESTS);
            flooding.store(false, Ordering::SeqCst);
            sent
        })
    };
    // A client from another address allocates and relays both ways while
    // the flood goes on.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = TurnAllocation::make_from("127.0.0.2:0", daemon.udp, USER, PASSWORD)
        .await
        .expect("a real client allocates during the flood");
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.relays_to(&peer, b"to the peer").await;
    client.receives_from(&peer, b"from the peer").await;
    let served_during_flood = flooding.load(Ordering::SeqCst);
    let mut rss_peak = rss_kib(&daemon);
    while flooding.load(Ordering::SeqCst) {
        rss_peak = rss_peak.max(rss_kib(&daemon));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = flood.join().expect("flood thread");
    client.close().await;
    let rss_after = rss_kib(&daemon).max(rss_peak);

    let changes = Scrape::of(&daemon, None).changes_since(&before);
    let dropped = changes
        .get(&key(
            "icegate_refusals_total",
            &[("reason", "unauthenticated-throttled")],
        ))
        .copied()
        .unwrap_or(0.0);
    let challenged = changes
        .get(&key("icegate_refusals_total", &[("reason", "challenge")]))
        .copied()
        .unwrap_or(0.0);
    // The flood came from one address and the client from another.
    let tracked =
        Scrape::of(&daemon, None).get("icegate_throttle_tracked", &[("table", "sources")]);
    assert!((1.0..=2.0).contains(&tracked), "{tracked} sources tracked");
    eprintln!(
        "{sent} Allocates sent from {FLOOD_SOCKETS} ports: {dropped} dropped unanswered, \
         {challenged} challenged (the rest lost in the kernel's buffers); \
         daemon RSS {rss_before} kB before, {rss_after} kB at most during"
    );
    assert!(
        served_during_flood,
        "the flood ended before the client was served"
    );
    assert!(
        dropped > (FLOOD_REQUESTS / 10) as f64,
        "the daemon saw too little of the flood to tell: {changes:#?}"
    );
    assert!(
        rss_after < rss_before + 1024,
        "RSS grew from {rss_before} kB to {rss_after} kB during the flood"
    );
}

/// A Binding request with transaction id `n`.
fn binding_request(n: u64) -> [u8; 20] {
    let mut request = [0u8; 20];
    request[..2].copy_from_slice(&1u16.to_be_bytes());
    request[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    request[12..20].copy_from_slice(&n.to_be_bytes());
    request
}

/// Sends a Binding request over `stream` and reads the whole answer.
async fn binding_over<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, n: u64) {
    stream
        .write_all(&binding_request(n))
        .await
        .expect("send Binding");
    let mut header = [0u8; 20];
    stream
        .read_exact(&mut header)
        .await
        .expect("Binding answer");
    assert_eq!(header[..2], [0x01, 0x01], "a Binding success response");
    assert_eq!(header[12..20], n.to_be_bytes());
    let mut attributes = vec![0u8; usize::from(u16::from_be_bytes([header[2], header[3]]))];
    stream
        .read_exact(&mut attributes)
        .await
        .expect("attributes");
}

/// The loopback address the `n`th connection comes from.
fn source_of(n: usize) -> SocketAddr {
    let host = u16::try_from(n / CONNECTIONS_PER_SOURCE + 1).unwrap();
    let [high, low] = host.to_be_bytes();
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 1, high, low)), 0)
}

async fn connect_from(n: usize, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(source_of(n)).expect("bind source");
    tokio::time::timeout(common::turn::WAIT, socket.connect(server))
        .await
        .expect("connected in time")
        .expect("connect")
}

/// Opens `CONNECTIONS` connections with `open` (at most `OPENING_AT_ONCE` at
/// a time) and returns them, all open.
async fn open_many<T: Send + 'static, F>(open: impl Fn(usize) -> F) -> Vec<T>
where
    F: Future<Output = T> + Send + 'static,
{
    let gate = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let mut tasks = Vec::with_capacity(CONNECTIONS);
    for n in 0..CONNECTIONS {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let opening = open(n);
        tasks.push(tokio::spawn(async move {
            let opened = opening.await;
            drop(permit);
            opened
        }));
    }
    let mut opened = Vec::with_capacity(CONNECTIONS);
    for task in tasks {
        opened.push(task.await.expect("connection task"));
    }
    opened
}

/// What the daemon holds: open file descriptors and RSS.
#[derive(Clone, Copy, Debug)]
struct Held {
    fds: usize,
    rss_kib: u64,
}

impl Held {
    fn of(daemon: &TestDaemon) -> Self {
        Self {
            fds: open_fds(daemon),
            rss_kib: rss_kib(daemon),
        }
    }

    fn within_five_percent_of(self, start: Self) -> bool {
        self.fds * 100 <= start.fds * 105 && self.rss_kib * 100 <= start.rss_kib * 105
    }
}

/// Opens `CONNECTIONS` with `open`, holds them, closes them, and asserts
/// that the daemon's file descriptors and RSS come back to within 5 %.
async fn held_and_given_back<T: Send + 'static, F>(
    what: &str,
    daemon: &TestDaemon,
    open: impl Fn(usize) -> F,
) where
    F: Future<Output = T> + Send + 'static,
{
    // A first, smaller round sets up what any connection needs once
    // (worker threads' buffers, the TLS session cache).
    let settled = |fds: usize| open_fds(daemon) <= fds;
    let idle_fds = open_fds(daemon);
    drop(open_many_n(&open, 500).await);
    tokio::task::block_in_place(|| wait_until(Duration::from_secs(20), || settled(idle_fds)));
    let start = Held::of(daemon);
    let opened = open_many(&open).await;
    let holding = Held::of(daemon);
    assert!(
        holding.fds >= CONNECTIONS,
        "{what}: {CONNECTIONS} connections held, but the daemon has {} fds ({} before)",
        holding.fds,
        start.fds
    );
    drop(opened);
    let closed_in_time = tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(20), || {
            settled(start.fds + start.fds / 20)
        })
    });
    // Memory freed late (timers, deferred frees) is given some time too.
    let end = tokio::task::block_in_place(|| {
        let mut end = Held::of(daemon);
        wait_until(Duration::from_secs(30), || {
            end = Held::of(daemon);
            end.within_five_percent_of(start)
        });
        end
    });
    eprintln!(
        "{what}: {CONNECTIONS} held: fds {} -> {} -> {}, RSS {} kB -> {} kB -> {} kB",
        start.fds, holding.fds, end.fds, start.rss_kib, holding.rss_kib, end.rss_kib
    );
    assert!(
        closed_in_time,
        "{what}: the daemon kept the connections' fds"
    );
    assert!(
        end.within_five_percent_of(start),
        "{what}: the daemon did not give back what {CONNECTIONS} connections took: \
         {start:?} before, {end:?} after"
    );
}

async fn open_many_n<T: Send + 'static, F>(open: &impl Fn(usize) -> F, count: usize) -> Vec<T>
where
    F: Future<Output = T> + Send + 'static,
{
    let mut opened = Vec::with_capacity(count);
    for n in 0..count {
        opened.push(open(CONNECTIONS + n).await);
    }
    opened
}

fn connections_config(extra: TestConfig<'_>) -> String {
    TestConfig {
        connections_extra: "max-connections = 20000",
        ..extra
    }
    .render()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tcp_and_tls_connections_are_given_back() {
    assert_enough_files(CONNECTIONS + 1000);
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = common::make_test_ca_and_cert(dir.path(), HOST);
    let daemon = TestDaemon::start(&connections_config(TestConfig {
        tcp: true,
        tls: Some((&certs.cert, &certs.key)),
        ..TestConfig::default()
    }));
    let tcp = daemon.tcp.expect("tcp listener");
    held_and_given_back("TCP", &daemon, |n| async move {
        let mut stream = connect_from(n, tcp).await;
        binding_over(&mut stream, n as u64).await;
        stream
    })
    .await;

    let tls = daemon.tls.expect("tls listener");
    let connector = tokio_rustls::TlsConnector::from(common::tls_client_config(&certs.ca));
    held_and_given_back("TLS", &daemon, |n| {
        let connector = connector.clone();
        async move {
            let stream = connect_from(n, tls).await;
            let mut stream = connector
                .connect(ServerName::try_from(HOST).unwrap(), stream)
                .await
                .expect("TLS handshake");
            binding_over(&mut stream, n as u64).await;
            stream
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_websocket_sessions_are_given_back() {
    assert_enough_files(CONNECTIONS + 1000);
    let signal = format!(
        "[signal]\njwt-secrets = [\"{JWT_SECRET}\"]\nmax-connections = 20000\n\
         resume-grace = \"1s\"\n"
    );
    let daemon = TestDaemon::start(&connections_config(TestConfig {
        http: true,
        public_host: Some("127.0.0.1"),
        tables: &signal,
        ..TestConfig::default()
    }));
    let http = daemon.listener("http");
    // Sessions are held for a resume for a second after their connection
    // ends; each joins a room with one other (rooms have at most 16 peers).
    held_and_given_back("WebSocket", &daemon, |n| async move {
        let stream = connect_from(n, http).await;
        let token = token(JWT_SECRET, &format!("user{n}"), 3600, None);
        let mut client = SignalClient::over(stream, &format!("ws://{http}/ws?token={token}")).await;
        client.expect("welcome").await;
        client
            .join(&format!("room{}", n / 2), &format!("peer{n}"))
            .await;
        client
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signaling_client_that_never_reads_costs_bounded_memory_and_is_dropped() {
    const SENDERS: usize = 8;
    const PAYLOAD_BYTES: usize = 60_000;
    // The default max-queued-bytes (1 MiB); senders may send as fast as
    // they like, so only the queue bounds what waits for the reader.
    let signal = format!(
        "[signal]\njwt-secrets = [\"{JWT_SECRET}\"]\n\
         messages-per-second = 100000\nmessage-burst = 100000\n"
    );
    let daemon = TestDaemon::start(
        &TestConfig {
            http: true,
            public_host: Some("127.0.0.1"),
            tables: &signal,
            ..TestConfig::default()
        }
        .render(),
    );
    let http = daemon.listener("http");
    let (mut reader, _) =
        SignalClient::join_server(http, &token(JWT_SECRET, "reader", 3600, None)).await;
    reader.join("r", "reader").await;
    let mut senders = Vec::new();
    for n in 0..SENDERS {
        let (mut sender, _) =
            SignalClient::join_server(http, &token(JWT_SECRET, &format!("sender{n}"), 3600, None))
                .await;
        sender.join("r", &format!("sender{n}")).await;
        senders.push(sender);
    }
    let _stalled = reader.into_inner();
    let rss_before = rss_kib(&daemon);
    let mut rss_peak = rss_before;
    let payload = "x".repeat(PAYLOAD_BYTES);
    let mut offered = 0;
    let mut left = None;
    // Bounded: at most 100 rounds of every sender, far more than the
    // queue and the socket buffers hold.
    'sending: for _ in 0..100 {
        for sender in &mut senders {
            sender
                .send(serde_json::json!({"type": "signal", "room": "r", "to": "reader", "data": payload}))
                .await;
            offered += PAYLOAD_BYTES;
            rss_peak = rss_peak.max(rss_kib(&daemon));
            if let Some(message) = sender.poll_for(Duration::from_millis(1)).await
                && message["type"] == "peer-left"
            {
                left = Some(message);
                break 'sending;
            }
        }
    }
    let left = match left {
        Some(left) => left,
        None => senders[0].expect("peer-left").await,
    };
    let line = daemon
        .wait_for_line("signal-disconnect user=reader", Duration::from_secs(5))
        .expect("the reader's disconnect is logged");
    eprintln!(
        "{offered} bytes sent towards a client that does not read: daemon RSS {rss_before} kB, \
         at most {rss_peak} kB; {left}; {line}"
    );
    assert_eq!(left["peer"], "reader");
    assert!(line.contains("how=\"not reading\""), "{line}");
    assert!(
        rss_peak < rss_before + 4 * 1024,
        "RSS grew from {rss_before} kB to {rss_peak} kB"
    );
}
