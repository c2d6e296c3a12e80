//! Bandwidth caps seen from outside: the `turn` crate's client relays above
//! `max-bps` (both directions), above `max-bps-per-user` over two
//! allocations, and above the node's `bps-capacity`; peers are plain UDP
//! sockets on 127.0.0.1 counting what arrives. Each run is a few seconds,
//! every wait bounded.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use webrtc_util::Conn;

use common::admin::Scrape;
use common::turn::TurnAllocation;
use common::{PASSWORD, SECRET, TestDaemon, USER, loopback_config};

/// The caps these tests set: 200 kB/s, whose burst is 64 KiB.
const CAP: u64 = 200_000;
const BURST: u64 = 65_536;
const DATAGRAM: usize = 1000;
/// How long each sender offers its rate.
const SENDING: Duration = Duration::from_secs(3);

/// Sends `DATAGRAM`-byte datagrams at `rate` bytes per second for
/// `SENDING` with `send`; returns how long it took and the bytes sent.
async fn offer<F, Fut>(rate: u64, mut send: F) -> (Duration, u64)
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = ()>,
{
    const TICKS_PER_SECOND: u32 = 100;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / TICKS_PER_SECOND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut ticks, mut sent) = (0u64, 0u64);
    while start.elapsed() < SENDING {
        tick.tick().await;
        ticks += 1;
        let due = rate * ticks / u64::from(TICKS_PER_SECOND) / DATAGRAM as u64;
        while sent < due {
            let mut datagram = vec![0u8; DATAGRAM];
            datagram[..8].copy_from_slice(&sent.to_be_bytes());
            sent += 1;
            send(datagram).await;
        }
    }
    (start.elapsed(), sent * DATAGRAM as u64)
}

/// Bytes `peer` receives until nothing came for half a second (at most 10 s).
async fn count_at_peer(peer: Arc<UdpSocket>) -> u64 {
    let mut buf = vec![0u8; 2048];
    let mut bytes = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), peer.recv_from(&mut buf)).await {
            Ok(Ok((len, _))) => bytes += len as u64,
            _ if bytes > 0 => break,
            _ => {}
        }
    }
    bytes
}

/// Bytes the client receives through its relay, as [`count_at_peer`].
async fn count_at_client(relay: &(dyn Conn + Send + Sync)) -> u64 {
    let mut buf = vec![0u8; 2048];
    let mut bytes = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), relay.recv_from(&mut buf)).await {
            Ok(Ok((len, _))) => bytes += len as u64,
            _ if bytes > 0 => break,
            _ => {}
        }
    }
    bytes
}

/// Asserts that `bytes` arrived over `took` at `CAP` plus one burst, within 10 %.
#[track_caller]
fn held_to_cap(what: &str, bytes: u64, (took, _): (Duration, u64)) {
    let at_cap = CAP as f64 * took.as_secs_f64();
    let expected = at_cap + BURST as f64;
    let off = (bytes as f64 - expected).abs() / at_cap;
    eprintln!(
        "{what}: {bytes} bytes in {took:?}, {:.1} % off the cap",
        off * 100.0
    );
    assert!(
        off <= 0.10,
        "{what}: {bytes} bytes in {took:?}, expected {expected:.0} (cap {CAP} B/s), {:.1} % off",
        off * 100.0
    );
}

fn rest_user(name: &str) -> (String, String) {
    let username = format!("{}:{name}", common::unix_now() + 3600);
    let password = common::rest_password(SECRET, &username);
    (username, password)
}

async fn peer() -> Arc<UdpSocket> {
    Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind peer"))
}

/// A permission for `peer` (and the channel the client binds) before the run.
async fn open_path(allocation: &TurnAllocation, peer: &UdpSocket) {
    allocation.relays_to(peer, b"hello").await;
    allocation.receives_from(peer, b"hello").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_allocation_over_max_bps_is_held_to_it_both_ways_and_another_under_it_is_untouched() {
    let daemon = TestDaemon::start(&loopback_config(&format!("max-bps = {CAP}\n")));
    let fast = TurnAllocation::make(daemon.udp, USER, PASSWORD)
        .await
        .expect("allocate");
    let (bob, bob_password) = rest_user("bob");
    let steady = TurnAllocation::make(daemon.udp, &bob, &bob_password)
        .await
        .expect("allocate");
    let (fast_peer, steady_peer) = (peer().await, peer().await);
    open_path(&fast, &fast_peer).await;
    open_path(&steady, &steady_peer).await;
    let before = Scrape::of(&daemon, None);

    let fast_target = fast_peer.local_addr().unwrap();
    let steady_target = steady_peer.local_addr().unwrap();
    let fast_relayed = fast.relayed();
    let fast_relay = &fast.relay;
    let steady_relay = &steady.relay;
    let (to_peer, from_peer, steady_sent, to_peer_bytes, from_peer_bytes, steady_bytes) = tokio::join!(
        // 2.5 times the cap, each way.
        offer(CAP * 5 / 2, |d| async move {
            let _ = fast_relay.send_to(&d, fast_target).await;
        }),
        offer(CAP * 5 / 2, |d| {
            let peer = fast_peer.clone();
            async move {
                let _ = peer.send_to(&d, fast_relayed).await;
            }
        }),
        // Three quarters of it.
        offer(CAP * 3 / 4, |d| async move {
            let _ = steady_relay.send_to(&d, steady_target).await;
        }),
        count_at_peer(fast_peer.clone()),
        count_at_client(&*fast.relay),
        count_at_peer(steady_peer.clone()),
    );

    held_to_cap("client to peer", to_peer_bytes, to_peer);
    held_to_cap("peer to client", from_peer_bytes, from_peer);
    let (_, steady_offered) = steady_sent;
    assert!(
        steady_bytes * 100 >= steady_offered * 99,
        "the allocation under its cap got {steady_bytes} of {steady_offered} bytes"
    );
    let dropped = Scrape::of(&daemon, None).changes_since(&before);
    let hits = dropped
        .get(&common::admin::key(
            "icegate_limit_hits_total",
            &[("limit", "relay.max-bps")],
        ))
        .copied()
        .unwrap_or(0.0);
    assert!(hits > 100.0, "{dropped:#?}");
    fast.close().await;
    steady.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_users_allocations_share_max_bps_per_user() {
    let daemon = TestDaemon::start(&loopback_config(&format!(
        "max-bps = \"unlimited\"\nmax-bps-per-user = {CAP}\n"
    )));
    // Two REST usernames of one user: the cap is the user's, not the name's.
    let (first_name, first_password) = rest_user("carol");
    let first = TurnAllocation::make(daemon.udp, &first_name, &first_password)
        .await
        .expect("allocate");
    let (second_name, _) = rest_user("carol");
    let second_name = second_name.replace(':', "9:");
    let second_password = common::rest_password(SECRET, &second_name);
    let second = TurnAllocation::make(daemon.udp, &second_name, &second_password)
        .await
        .expect("allocate");
    let peer = peer().await;
    open_path(&first, &peer).await;
    open_path(&second, &peer).await;
    let target = peer.local_addr().unwrap();
    let (first_relay, second_relay) = (&first.relay, &second.relay);
    let (took, _, bytes) = tokio::join!(
        offer(CAP * 5 / 4, |d| async move {
            let _ = first_relay.send_to(&d, target).await;
        }),
        offer(CAP * 5 / 4, |d| async move {
            let _ = second_relay.send_to(&d, target).await;
        }),
        count_at_peer(peer.clone()),
    );
    held_to_cap("both allocations together", bytes, took);
    first.close().await;
    second.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_at_bps_capacity_refuses_allocations_until_it_is_not() {
    let daemon = TestDaemon::start(&loopback_config(&format!(
        "max-bps = \"unlimited\"\nbps-capacity = {CAP}\n"
    )));
    let flood = TurnAllocation::make(daemon.udp, USER, PASSWORD)
        .await
        .expect("allocate");
    let peer = peer().await;
    open_path(&flood, &peer).await;
    let target = peer.local_addr().unwrap();
    let relay = &flood.relay;
    let (bob, bob_password) = rest_user("bob");
    let (took, bytes, refused) = tokio::join!(
        offer(CAP * 3, |d| async move {
            let _ = relay.send_to(&d, target).await;
        }),
        count_at_peer(peer.clone()),
        async {
            tokio::time::sleep(SENDING / 2).await;
            TurnAllocation::make(daemon.udp, &bob, &bob_password).await
        },
    );
    held_to_cap("the node", bytes, took);
    let error = refused.err().expect("Allocate refused at capacity");
    assert!(error.contains("486"), "{error}");
    // A second after the last drop, the node takes allocations again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = TurnAllocation::make(daemon.udp, &bob, &bob_password)
        .await
        .expect("allocate once below capacity");
    later.close().await;
    flood.close().await;
}
