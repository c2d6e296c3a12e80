//! icegate driven by the `turn` crate's client (webrtc-rs), an independent
//! TURN implementation, over UDP on 127.0.0.1: allocation with a static user
//! and with TURN REST credentials, permissions, Send and Data indications,
//! channel binding and ChannelData, refresh and deletion. Peers are plain
//! tokio sockets on 127.0.0.1. Every wait is bounded.

mod common;

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

use common::{PASSWORD, REALM, SECRET, TestDaemon, USER};

/// The longest a single exchange with the daemon or a peer may take.
const WAIT: Duration = Duration::from_secs(2);

/// Awaits `future`, failing the test after `WAIT`.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
}

/// `TestDaemon::wait_for_log` without stalling the runtime's other tasks.
fn logged(daemon: &TestDaemon, needle: &str) -> bool {
    tokio::task::block_in_place(|| daemon.wait_for_log(needle))
}

/// What went over the client's socket, by kind: lets a test tell
/// Send/Data indications from ChannelData.
#[derive(Debug, Default)]
struct Tally {
    send_indications_sent: AtomicUsize,
    channel_data_sent: AtomicUsize,
    data_indications_received: AtomicUsize,
    channel_data_received: AtomicUsize,
    channel_bind_successes_received: AtomicUsize,
}

impl Tally {
    fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }

    fn count_sent(&self, bytes: &[u8]) {
        match kind(bytes) {
            Some(0x0016) => self.send_indications_sent.fetch_add(1, Ordering::SeqCst),
            None if is_channel_data(bytes) => self.channel_data_sent.fetch_add(1, Ordering::SeqCst),
            _ => 0,
        };
    }

    fn count_received(&self, bytes: &[u8]) {
        match kind(bytes) {
            Some(0x0017) => self
                .data_indications_received
                .fetch_add(1, Ordering::SeqCst),
            Some(0x0109) => self
                .channel_bind_successes_received
                .fetch_add(1, Ordering::SeqCst),
            None if is_channel_data(bytes) => {
                self.channel_data_received.fetch_add(1, Ordering::SeqCst)
            }
            _ => 0,
        };
    }
}

/// The STUN message type of `bytes`, if they look like STUN.
fn kind(bytes: &[u8]) -> Option<u16> {
    (bytes.len() >= 20 && bytes[0] < 0x40 && bytes[4..8] == 0x2112_A442_u32.to_be_bytes())
        .then(|| u16::from_be_bytes([bytes[0], bytes[1]]))
}

fn is_channel_data(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && (0x40..=0x7F).contains(&bytes[0])
}

/// A tokio UDP socket that tallies what passes through it.
struct TappedSocket {
    socket: UdpSocket,
    tally: Arc<Tally>,
}

#[async_trait]
impl Conn for TappedSocket {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        Conn::connect(&self.socket, addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        let len = Conn::recv(&self.socket, buf).await?;
        self.tally.count_received(&buf[..len]);
        Ok(len)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let (len, from) = Conn::recv_from(&self.socket, buf).await?;
        self.tally.count_received(&buf[..len]);
        Ok((len, from))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.tally.count_sent(buf);
        Conn::send(&self.socket, buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.tally.count_sent(buf);
        Conn::send_to(&self.socket, buf, target).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Conn::local_addr(&self.socket)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Conn::remote_addr(&self.socket)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Conn::close(&self.socket).await
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }
}

/// A listening `turn` client of the daemon on a fresh 127.0.0.1 socket, as
/// the crate's `turn_client_udp` example sets one up.
struct TurnClient {
    client: Client,
    local: SocketAddr,
    tally: Arc<Tally>,
}

impl TurnClient {
    async fn new(daemon: &TestDaemon, username: &str, password: &str) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind client socket");
        let local = socket.local_addr().expect("client address");
        let tally = Arc::new(Tally::default());
        let conn = Arc::new(TappedSocket {
            socket,
            tally: tally.clone(),
        });
        let client = Client::new(ClientConfig {
            stun_serv_addr: daemon.udp.to_string(),
            turn_serv_addr: daemon.udp.to_string(),
            username: username.to_owned(),
            password: password.to_owned(),
            realm: REALM.to_owned(),
            software: String::new(),
            rto_in_ms: 0,
            conn,
            vnet: None,
        })
        .await
        .expect("create turn client");
        client.listen().await.expect("turn client listens");
        Self {
            client,
            local,
            tally,
        }
    }

    /// Allocates; the allocation is the returned relay connection.
    async fn allocate(&self) -> impl Conn + use<> {
        // Two transactions: the 401 challenge, then the authenticated request.
        tokio::time::timeout(2 * WAIT, self.client.allocate())
            .await
            .expect("Allocate answered in time")
            .expect("Allocate succeeds")
    }
}

/// A peer on 127.0.0.1 (allowed by `loopback_config`).
async fn peer() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind peer");
    let addr = socket.local_addr().expect("peer address");
    (socket, addr)
}

async fn peer_receives(peer: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 1500];
    let (len, from) = within("peer receives", peer.recv_from(&mut buf))
        .await
        .expect("peer recv");
    (buf[..len].to_vec(), from)
}

async fn relay_receives(relay: &impl Conn) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 1500];
    let (len, from) = within(
        "client receives through the relay",
        relay.recv_from(&mut buf),
    )
    .await
    .expect("relay conn recv");
    (buf[..len].to_vec(), from)
}

/// One datagram client → relay → peer, and the peer's answer back.
async fn round_trip(relay: &impl Conn, peer: &UdpSocket, peer_addr: SocketAddr, tag: &str) {
    let relayed = relay.local_addr().expect("relayed address");
    let ping = format!("ping {tag}");
    within(
        "send through the relay",
        relay.send_to(ping.as_bytes(), peer_addr),
    )
    .await
    .expect("send_to through the relay");
    let (data, from) = peer_receives(peer).await;
    assert_eq!(data, ping.as_bytes());
    assert_eq!(from, relayed, "the peer sees the relayed address");
    let pong = format!("pong {tag}");
    peer.send_to(pong.as_bytes(), relayed)
        .await
        .expect("peer answers the relay");
    let (data, from) = relay_receives(relay).await;
    assert_eq!(data, pong.as_bytes());
    assert_eq!(from, peer_addr, "the client sees the peer's address");
}

fn rest_credentials(user: &str) -> (String, String) {
    let username = format!("{}:{user}", common::unix_now() + 3600);
    let password = common::rest_password(SECRET, &username);
    (username, password)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_user_allocates_and_a_peer_answer_comes_back_through_the_relay() {
    let daemon = TestDaemon::start(&common::loopback_config(""));
    let turn = TurnClient::new(&daemon, USER, PASSWORD).await;
    let relay = turn.allocate().await;
    let relayed = relay.local_addr().expect("relayed address");
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");
    assert!(
        relayed.port() >= 49152,
        "relay port {relayed} in the default range"
    );
    assert!(logged(
        &daemon,
        &format!(
            "allocation-created user={USER} client={} relay={relayed}",
            turn.local
        )
    ));

    let (peer, peer_addr) = peer().await;
    round_trip(&relay, &peer, peer_addr, "1").await;

    let mapped = within("Binding", turn.client.send_binding_request())
        .await
        .expect("Binding succeeds");
    assert_eq!(
        mapped, turn.local,
        "XOR-MAPPED-ADDRESS is the client socket"
    );

    relay.close().await.expect("close relay");
    turn.client.close().await.expect("close client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_user_with_computed_credentials_allocates_and_relays() {
    let daemon = TestDaemon::start(&common::loopback_config(""));
    let (username, password) = rest_credentials("bob");
    let turn = TurnClient::new(&daemon, &username, &password).await;
    let relay = turn.allocate().await;
    let relayed = relay.local_addr().expect("relayed address");
    assert!(logged(
        &daemon,
        &format!(
            "allocation-created user={username} client={} relay={relayed}",
            turn.local
        )
    ));
    let (peer, peer_addr) = peer().await;
    round_trip(&relay, &peer, peer_addr, "rest").await;
    relay.close().await.expect("close relay");
    turn.client.close().await.expect("close client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_channel_bind_data_flows_as_channel_data_both_ways() {
    let daemon = TestDaemon::start(&common::loopback_config(""));
    let turn = TurnClient::new(&daemon, USER, PASSWORD).await;
    let relay = turn.allocate().await;
    let relayed = relay.local_addr().expect("relayed address");
    let (peer, peer_addr) = peer().await;

    // The turn client's first send_to to a peer creates the permission,
    // starts a ChannelBind in the background and sends a Send indication.
    within("first send", relay.send_to(b"first", peer_addr))
        .await
        .expect("first send_to");
    assert_eq!(peer_receives(&peer).await, (b"first".to_vec(), relayed));
    assert_eq!(Tally::get(&turn.tally.send_indications_sent), 1);

    let deadline = Instant::now() + WAIT;
    while Tally::get(&turn.tally.channel_bind_successes_received) == 0 {
        assert!(
            Instant::now() < deadline,
            "no ChannelBind success response within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Once the client has marked the binding ready, it sends ChannelData.
    let deadline = Instant::now() + WAIT;
    let mut sent = 0;
    while Tally::get(&turn.tally.channel_data_sent) == 0 {
        assert!(
            Instant::now() < deadline,
            "the turn client never switched to ChannelData"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        sent += 1;
        let data = format!("channel {sent}");
        within("send", relay.send_to(data.as_bytes(), peer_addr))
            .await
            .expect("send_to");
        assert_eq!(peer_receives(&peer).await, (data.into_bytes(), relayed));
    }

    peer.send_to(b"answer over the channel", relayed)
        .await
        .expect("peer answers");
    assert_eq!(
        relay_receives(&relay).await,
        (b"answer over the channel".to_vec(), peer_addr)
    );
    assert_eq!(
        Tally::get(&turn.tally.channel_data_received),
        1,
        "the peer's answer arrived as ChannelData"
    );
    assert_eq!(Tally::get(&turn.tally.data_indications_received), 0);

    round_trip(&relay, &peer, peer_addr, "after bind").await;
    assert_eq!(Tally::get(&turn.tally.send_indications_sent), 1);
    assert_eq!(Tally::get(&turn.tally.channel_data_received), 2);

    relay.close().await.expect("close relay");
    turn.client.close().await.expect("close client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refreshes_a_short_allocation_which_outlives_its_lifetime() {
    // A 3 s lifetime: the turn client refreshes every 1.5 s.
    let daemon = TestDaemon::start(&common::loopback_config("default-lifetime = \"3s\""));
    let turn = TurnClient::new(&daemon, USER, PASSWORD).await;
    let relay = turn.allocate().await;
    let allocated = Instant::now();
    assert!(logged(&daemon, "lifetime=3s"));
    assert!(
        logged(&daemon, "allocation-refreshed user=alice"),
        "the turn client refreshed"
    );
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(allocated.elapsed())).await;
    assert!(
        !daemon.log().contains("allocation-expired"),
        "the allocation expired although it was refreshed"
    );
    let (peer, peer_addr) = peer().await;
    round_trip(&relay, &peer, peer_addr, "after 5 s").await;
    relay.close().await.expect("close relay");
    turn.client.close().await.expect("close client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_relay_conn_deletes_the_allocation_and_frees_its_port() {
    let daemon = TestDaemon::start(&common::loopback_config(""));
    let turn = TurnClient::new(&daemon, USER, PASSWORD).await;
    let relay = turn.allocate().await;
    let relayed = relay.local_addr().expect("relayed address");
    let (peer, peer_addr) = peer().await;
    round_trip(&relay, &peer, peer_addr, "before close").await;

    // RelayConn::close sends Refresh with LIFETIME 0.
    relay.close().await.expect("close relay");
    assert!(logged(
        &daemon,
        &format!(
            "allocation-deleted user={USER} client={} relay={relayed}",
            turn.local
        )
    ));
    let deadline = Instant::now() + WAIT;
    loop {
        match std::net::UdpSocket::bind(relayed) {
            Ok(_) => break,
            Err(error) => assert!(
                Instant::now() < deadline,
                "relay port {relayed} still bound {WAIT:?} after deletion: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    turn.client.close().await.expect("close client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_datagram_through_each_new_allocation_reaches_the_peer() {
    // What a WebRTC client does: allocate, then at once send to a peer. The
    // first datagram on a brand-new relay socket must not be lost. One
    // allocation shows a loss only sometimes, so try several.
    const ALLOCATIONS: usize = 20;
    let daemon = TestDaemon::start(&common::loopback_config(""));
    let (peer, peer_addr) = peer().await;
    let mut lost = Vec::new();
    for i in 0..ALLOCATIONS {
        let turn = TurnClient::new(&daemon, USER, PASSWORD).await;
        let relay = turn.allocate().await;
        let relayed = relay.local_addr().expect("relayed address");
        let data = format!("first {i}");
        within("send", relay.send_to(data.as_bytes(), peer_addr))
            .await
            .expect("send_to");
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(500), peer.recv_from(&mut buf)).await {
            Ok(Ok((len, from))) => {
                assert_eq!(&buf[..len], data.as_bytes());
                assert_eq!(from, relayed);
            }
            _ => lost.push(relayed),
        }
        relay.close().await.expect("close relay");
        turn.client.close().await.expect("close client");
    }
    assert!(
        lost.is_empty(),
        "{} of {ALLOCATIONS} first datagrams never reached the peer; lost through {lost:?}",
        lost.len()
    );
}
