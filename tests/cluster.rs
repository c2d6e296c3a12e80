//! Signaling across nodes (`[cluster] redis`): two real daemons sharing one
//! real redis-server, seen as users see them through `/ws` on either node —
//! rooms, signals, held signals, a Redis outage, a node killed outright,
//! resuming on the other node, and where the admin API says a session is.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::TestDaemon;
use common::admin::{Scrape, request};
use common::redis::TestRedis;
use common::signal::{SignalClient, WAIT, signal_config, token_for};

/// Short, so that a dead node is swept within a few seconds.
const NODE_TTL: &str = "2s";
/// Signal data with what a re-encoding would change: key order, spacing,
/// a trailing zero, an escape and CRLFs inside a string.
const OFFER: &str = r#"{"sdp": {"type":"offer", "sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}, "z": 1.50, "a": "\u00e9"}"#;
const ANSWER: &str =
    r#"{ "sdp":{"type":"answer","sdp":"v=0\r\na=setup:active\r\n"},"n":[1e3, -0.0] }"#;

/// One daemon of the cluster and its `/ws` listener.
struct Node {
    daemon: TestDaemon,
    http: SocketAddr,
}

impl Node {
    fn start(redis: &TestRedis, name: &str, signal_extra: &str) -> Self {
        let config = format!(
            "{}\n[cluster]\nredis = \"{}\"\nnode-name = \"{name}\"\nnode-ttl = \"{NODE_TTL}\"\n",
            signal_config(signal_extra),
            redis.url()
        );
        let daemon = TestDaemon::start(&config);
        // "ready" does not wait for Redis: a join before the link is up stays
        // on this node until Redis is reached, which is not what these tests are about.
        assert!(
            daemon
                .wait_for_line(&format!("cluster-up node={name}"), Duration::from_secs(10))
                .is_some(),
            "node {name} did not reach Redis within 10 s; log:\n{}",
            daemon.log()
        );
        let http = daemon.listener("http");
        Self { daemon, http }
    }
}

/// Nodes "a" and "b" on one redis-server, with the same `[signal]` extras.
/// The daemons go first when dropped, so they never outlive their Redis.
struct Cluster {
    a: Node,
    b: Node,
    redis: TestRedis,
}

impl Cluster {
    fn start(signal_extra: &str) -> Self {
        let redis = TestRedis::start();
        Self {
            a: Node::start(&redis, "a", signal_extra),
            b: Node::start(&redis, "b", signal_extra),
            redis,
        }
    }
}

async fn connect(http: SocketAddr, user: &str) -> (SignalClient, Value) {
    SignalClient::join_server(http, &token_for(user)).await
}

/// The peer ids a `joined` lists, sorted: their order is not part of the contract.
fn peer_ids(joined: &Value) -> Vec<String> {
    let mut ids: Vec<String> = joined["peers"]
        .as_array()
        .unwrap_or_else(|| panic!("no peers in {joined}"))
        .iter()
        .map(|peer| peer["peer"].as_str().expect("a peer id").to_owned())
        .collect();
    ids.sort();
    ids
}

/// Sends `data` (JSON text, kept as written) to `to` in `room`.
async fn send_signal(client: &mut SignalClient, room: &str, to: &str, data: &str) {
    client
        .send_text(&format!(
            r#"{{"type":"signal","room":"{room}","to":"{to}","data":{data}}}"#
        ))
        .await;
}

/// `receiver` gets a signal from `from` in `room` whose data is `data`, byte for byte.
async fn expect_signal_text(receiver: &mut SignalClient, room: &str, from: &str, data: &str) {
    let (signal, text) = receiver.expect_raw("signal").await;
    assert_eq!(
        (&signal["room"], &signal["from"]),
        (&json!(room), &json!(from))
    );
    assert!(signal.get("broadcast").is_none(), "{text}");
    assert!(
        text.contains(data),
        "the data changed on its way: sent {data}, got {text}"
    );
}

/// `from` signals `to_peer` (whose client is `to`) until it arrives, for at
/// most `limit`: what a client does while the cluster heals. Each try has
/// its own `n`; the sender may be told `undeliverable` meanwhile.
async fn signal_until_delivered(
    from: &mut SignalClient,
    to: &mut SignalClient,
    room: &str,
    to_peer: &str,
    limit: Duration,
) {
    let start = Instant::now();
    let mut last_reply = None;
    for n in 0_u32.. {
        assert!(
            start.elapsed() < limit,
            "no signal to {to_peer} got through within {limit:?}; the sender's last reply: \
             {last_reply:?}"
        );
        from.send(
            json!({"type": "signal", "room": room, "to": to_peer, "data": {"try": n}, "id": n}),
        )
        .await;
        if let Some(message) = to.poll_for(Duration::from_millis(500)).await {
            assert_eq!(message["type"], "signal", "{message}");
            // An earlier try may arrive late: any of them is the cluster working again.
            return;
        }
        while let Some(reply) = from.poll_for(Duration::from_millis(10)).await {
            assert_eq!(reply["code"], "undeliverable", "{reply}");
            last_reply = Some(reply);
        }
    }
}

/// Waits up to `limit` until `daemon`'s `icegate_cluster_redis_up` is `value`.
/// Read from the text format directly: a full [`Scrape`] per poll is slow.
fn wait_for_redis_up(daemon: &TestDaemon, value: f64, limit: Duration) {
    let start = Instant::now();
    loop {
        let metrics = request(daemon.admin, "GET", "/metrics", None, &[]).body;
        let now = metrics
            .lines()
            .find_map(|line| line.strip_prefix("icegate_cluster_redis_up "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        if now == Some(value) {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "icegate_cluster_redis_up was {now:?}, not {value}, for {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn peers_on_two_nodes_meet_signal_broadcast_and_leave() {
    let cluster = Cluster::start("");
    let (mut alice, _) = connect(cluster.a.http, "alice").await;
    let alice_metadata = json!({"name": "Alice", "devices": {"camera": true, "mic": false}});
    alice
        .send(
            json!({"type": "join", "room": "standup", "peer": "alice", "metadata": alice_metadata}),
        )
        .await;
    assert_eq!(alice.expect("joined").await["peers"], json!([]));

    let (mut bob, _) = connect(cluster.b.http, "bob").await;
    bob.send(
        json!({"type": "join", "room": "standup", "peer": "bob", "metadata": {"name": "Bob"}}),
    )
    .await;
    let joined = bob.expect("joined").await;
    assert_eq!(
        joined["peers"],
        json!([{"peer": "alice", "metadata": alice_metadata}])
    );
    assert_eq!(
        alice.expect("peer-joined").await,
        json!({"type": "peer-joined", "room": "standup", "peer": "bob", "metadata": {"name": "Bob"}})
    );

    // Offer and answer cross both ways as written.
    send_signal(&mut alice, "standup", "bob", OFFER).await;
    expect_signal_text(&mut bob, "standup", "alice", OFFER).await;
    send_signal(&mut bob, "standup", "alice", ANSWER).await;
    expect_signal_text(&mut alice, "standup", "bob", ANSWER).await;

    // A third peer beside alice: a broadcast from alice then reaches a local
    // and a remote peer.
    let (mut carol, _) = connect(cluster.a.http, "carol").await;
    let joined = carol.join("standup", "carol").await;
    assert_eq!(peer_ids(&joined), ["alice", "bob"]);
    for peer in [&mut alice, &mut bob] {
        assert_eq!(peer.expect("peer-joined").await["peer"], "carol");
    }
    alice
        .send(json!({"type": "broadcast", "room": "standup", "data": {"status": "muted"}}))
        .await;
    for receiver in [&mut bob, &mut carol] {
        let message = receiver.expect("signal").await;
        assert_eq!(
            message,
            json!({"type": "signal", "room": "standup", "from": "alice",
                   "data": {"status": "muted"}, "broadcast": true})
        );
    }
    alice.expect_silence(Duration::from_millis(300)).await;

    carol
        .send(json!({"type": "leave", "room": "standup"}))
        .await;
    for peer in [&mut alice, &mut bob] {
        assert_eq!(
            peer.expect("peer-left").await,
            json!({"type": "peer-left", "room": "standup", "peer": "carol", "reason": "left"})
        );
    }
    bob.close().await;
    assert_eq!(
        alice.expect("peer-left").await,
        json!({"type": "peer-left", "room": "standup", "peer": "bob", "reason": "closed"})
    );
}

#[tokio::test]
async fn peer_ids_and_the_room_limit_count_every_node() {
    let cluster = Cluster::start("max-peers-per-room = 2");
    let (mut alice, _) = connect(cluster.a.http, "alice").await;
    alice.join("r", "alice").await;

    let (mut mallory, _) = connect(cluster.b.http, "mallory").await;
    mallory
        .send(json!({"type": "join", "room": "r", "peer": "alice", "id": "j1"}))
        .await;
    let taken = mallory.expect_error("peer-id-taken").await;
    assert_eq!(taken["in_reply_to"], json!({"type": "join", "id": "j1"}));
    mallory.assert_usable().await;

    let (mut bob, _) = connect(cluster.b.http, "bob").await;
    bob.join("r", "bob").await;
    alice.expect("peer-joined").await;
    // One peer on each node: full, from either side.
    let (mut carol, _) = connect(cluster.a.http, "carol").await;
    for (client, peer) in [(&mut carol, "carol"), (&mut mallory, "mallory")] {
        client
            .send(json!({"type": "join", "room": "r", "peer": peer, "id": "j2"}))
            .await;
        let full = client.expect_error("room-full").await;
        assert_eq!(full["in_reply_to"], json!({"type": "join", "id": "j2"}));
    }
    alice.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_signal_waits_for_a_peer_that_joins_on_the_other_node() {
    let cluster = Cluster::start("");
    let (mut alice, _) = connect(cluster.a.http, "alice").await;
    alice.join("r", "alice").await;
    alice
        .send(
            json!({"type": "signal", "room": "r", "to": "bob", "data": {"sdp": "offer"}, "id": 1}),
        )
        .await;
    // Held, not refused.
    alice.expect_silence(Duration::from_millis(300)).await;

    let (mut bob, _) = connect(cluster.b.http, "bob").await;
    let joined = bob.join("r", "bob").await;
    assert_eq!(peer_ids(&joined), ["alice"]);
    let Some(held) = bob.poll_for(WAIT).await else {
        let mut told = Vec::new();
        while let Some(message) = alice.poll_for(Duration::from_millis(500)).await {
            told.push(message);
        }
        panic!("the held signal did not reach bob; alice was told {told:?}");
    };
    assert_eq!(
        held,
        json!({"type": "signal", "room": "r", "from": "alice", "data": {"sdp": "offer"}})
    );
    assert_eq!(alice.expect("peer-joined").await["peer"], "bob");
    // Delivered: nothing else, such as a refusal, comes to the sender.
    alice.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn nodes_serve_their_own_peers_while_redis_is_down_and_heal_after() {
    let mut cluster = Cluster::start("");
    let (mut alice, _) = connect(cluster.a.http, "alice").await;
    alice.join("r", "alice").await;
    let (mut carol, _) = connect(cluster.a.http, "carol").await;
    carol.join("r", "carol").await;
    alice.expect("peer-joined").await;
    let (mut bob, _) = connect(cluster.b.http, "bob").await;
    bob.join("r", "bob").await;
    for peer in [&mut alice, &mut carol] {
        assert_eq!(peer.expect("peer-joined").await["peer"], "bob");
    }

    cluster.redis.stop();
    let a = &cluster.a.daemon;
    wait_for_redis_up(a, 0.0, Duration::from_secs(10));

    // Local peers go on as before.
    alice
        .send(json!({"type": "signal", "room": "r", "to": "carol", "data": {"local": 1}}))
        .await;
    assert_eq!(carol.expect("signal").await["data"], json!({"local": 1}));
    // The remote one is out of reach, and the sender is told so.
    alice
        .send(
            json!({"type": "signal", "room": "r", "to": "bob", "data": {"remote": 1}, "id": "s1"}),
        )
        .await;
    let error = alice.expect_error("undeliverable").await;
    assert_eq!(error["in_reply_to"], json!({"type": "signal", "id": "s1"}));
    alice
        .send(json!({"type": "broadcast", "room": "r", "data": {"all": 1}, "id": "b1"}))
        .await;
    assert_eq!(carol.expect("signal").await["data"], json!({"all": 1}));
    let error = alice.expect_error("undeliverable").await;
    assert_eq!(
        error["in_reply_to"],
        json!({"type": "broadcast", "id": "b1"})
    );

    let down = Scrape::of(a, None);
    assert_eq!(down.get("icegate_cluster_redis_up", &[]), 0.0);
    assert!(down.get("icegate_cluster_outages_total", &[]) >= 1.0);

    // Back, and empty: the nodes put their presence back by themselves.
    cluster.redis.restart();
    signal_until_delivered(&mut alice, &mut bob, "r", "bob", Duration::from_secs(20)).await;
    signal_until_delivered(&mut bob, &mut alice, "r", "alice", Duration::from_secs(5)).await;
    wait_for_redis_up(a, 1.0, Duration::from_secs(5));
    // Last, so that a wrong event name does not hide how the rest went.
    assert_eq!(
        a.log().matches("cluster-down").count(),
        1,
        "one outage, logged once as event cluster-down"
    );
}

#[tokio::test]
async fn a_killed_nodes_peers_leave_as_node_lost_and_free_their_ids() {
    let mut cluster = Cluster::start("");
    let (mut alice, _) = connect(cluster.a.http, "alice").await;
    alice.join("r", "alice").await;
    let (mut bob, _) = connect(cluster.b.http, "bob").await;
    bob.join("r", "bob").await;
    alice.expect("peer-joined").await;

    // No goodbye: node b only stops renewing its heartbeat.
    let b = &mut cluster.b.daemon;
    b.signal("KILL");
    assert!(b.wait_for_exit(Duration::from_secs(5)).is_some());
    bob.drop_connection();
    let killed = Instant::now();
    // node-ttl, one heartbeat, and slack for a loaded CI machine.
    let left = alice
        .poll_for(Duration::from_secs(15))
        .await
        .expect("peer-left for bob within 15 s of node b's death");
    assert_eq!(
        left,
        json!({"type": "peer-left", "room": "r", "peer": "bob", "reason": "node-lost"}),
        "after {:?}",
        killed.elapsed()
    );

    let (mut bob_again, _) = connect(cluster.a.http, "bob").await;
    let joined = bob_again.join("r", "bob").await;
    assert_eq!(peer_ids(&joined), ["alice"]);
    assert_eq!(alice.expect("peer-joined").await["peer"], "bob");
}

#[tokio::test]
async fn a_dropped_peer_resumes_on_the_other_node() {
    let cluster = Cluster::start("resume-grace = \"2s\"");
    let (mut alice, _) = connect(cluster.a.http, "alice").await;
    alice.join("r", "alice").await;
    let (bob, welcome) = connect(cluster.a.http, "bob").await;
    let mut bob = bob;
    bob.join("r", "bob").await;
    alice.expect("peer-joined").await;

    // The network goes away without a close frame; bob comes back through
    // the other node, as behind a load balancer.
    bob.drop_connection();
    assert!(
        cluster
            .a
            .daemon
            .wait_for_log("signal-disconnect user=bob client=127.0.0.1 how=dropped")
    );
    let query = format!(
        "token={}&resume={}",
        token_for("bob"),
        welcome["resume_token"].as_str().expect("a resume token")
    );
    let mut bob = SignalClient::connect_with(cluster.b.http, &query, &[])
        .await
        .expect("upgrade accepted");
    let resumed = bob.expect("welcome").await;
    assert_eq!(resumed["resumed"], true, "{resumed}");
    assert_eq!(resumed["peer"], welcome["peer"]);
    let joined = bob.expect("joined").await;
    assert_eq!(
        (&joined["room"], &joined["peer"]),
        (&json!("r"), &json!("bob"))
    );
    assert_eq!(peer_ids(&joined), ["alice"]);

    // Past the grace period node a still says nothing: bob never left.
    alice.expect_silence(Duration::from_millis(2500)).await;
    alice
        .send(json!({"type": "signal", "room": "r", "to": "bob", "data": {"n": 1}}))
        .await;
    assert_eq!(
        bob.expect("signal").await,
        json!({"type": "signal", "room": "r", "from": "alice", "data": {"n": 1}})
    );
}

#[tokio::test]
async fn the_admin_api_names_each_sessions_node() {
    let cluster = Cluster::start("");
    let (mut alice, _) = connect(cluster.a.http, "alice").await;
    alice.join("r", "alice").await;
    let (mut bob, _) = connect(cluster.b.http, "bob").await;
    bob.join("r", "bob").await;

    for (node, user, name) in [(&cluster.a, "alice", "a"), (&cluster.b, "bob", "b")] {
        let path = format!("/sessions?user={user}");
        let answer = request(node.daemon.admin, "GET", &path, None, &[]);
        assert_eq!(answer.status, 200, "{}", answer.body);
        let sessions = answer.json();
        assert_eq!(sessions.as_array().map(Vec::len), Some(1), "{sessions}");
        assert_eq!(sessions[0]["user"], user);
        assert_eq!(sessions[0]["node"], name, "{sessions}");
    }
}

/// y-webrtc subscribers and PeerJS clients on two nodes reach each other:
/// a publish on one node comes to the other's subscribers (with `clients`
/// counting both), and a PeerJS OFFER to an id on the other node arrives
/// there, one sent before that id connected too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ywebrtc_and_peerjs_clients_on_two_nodes_reach_each_other() {
    let cluster = Cluster::start("");
    let ywebrtc = |http| async move {
        let path = format!("/y-webrtc?token={}", token_for("ann"));
        SignalClient::connect_to(http, &path, &[])
            .await
            .expect("upgrade accepted")
    };
    let mut on_a = ywebrtc(cluster.a.http).await;
    let mut on_b = ywebrtc(cluster.b.http).await;
    on_a.send(json!({"type": "subscribe", "topics": ["doc"]}))
        .await;
    on_b.send(json!({"type": "subscribe", "topics": ["doc"]}))
        .await;
    // Subscriptions cross through Redis: publish until b has heard a's.
    let deadline = Instant::now() + WAIT;
    let heard = loop {
        on_a.send(json!({"type": "publish", "topic": "doc", "data": {"from": "a"}}))
            .await;
        if let Some(message) = on_b.poll_for(Duration::from_millis(200)).await {
            break message;
        }
        assert!(
            Instant::now() < deadline,
            "no publish crossed within {WAIT:?}"
        );
    };
    assert_eq!(heard["type"], "publish");
    assert_eq!(heard["data"]["from"], "a");
    assert_eq!(heard["clients"], 2, "{heard}");
    // A newcomer on node a announces itself with its subscribe, as
    // y-webrtc does; node b's subscriber hears it once the nodes agree.
    let mut newcomer = ywebrtc(cluster.a.http).await;
    newcomer
        .send(json!({"type": "subscribe", "topics": ["doc"]}))
        .await;
    newcomer
        .send(json!({"type": "publish", "topic": "doc", "data": {"from": "new"}}))
        .await;
    let announce = loop {
        let message = on_b.expect("publish").await;
        if message["data"]["from"] == "new" {
            break message;
        }
    };
    assert_eq!(announce["clients"], 3, "{announce}");

    let peerjs = |http, id: &'static str| async move {
        let path = format!("/peerjs/peerjs?key=peerjs&id={id}&token={}", token_for(id));
        SignalClient::connect_to(http, &path, &[])
            .await
            .expect("upgrade accepted")
    };
    let mut alice = peerjs(cluster.a.http, "alice1").await;
    alice.expect("OPEN").await;
    alice
        .send(json!({"type": "OFFER", "dst": "bob1", "payload": {"sdp": "o"}}))
        .await;
    let mut bob = peerjs(cluster.b.http, "bob1").await;
    bob.expect("OPEN").await;
    let offer = bob.expect("OFFER").await;
    assert_eq!(offer["src"], "alice1");
    bob.send(json!({"type": "ANSWER", "dst": "alice1", "payload": {"sdp": "a"}}))
        .await;
    assert_eq!(alice.expect("ANSWER").await["src"], "bob1");
    // One id across the nodes.
    let mut twin = peerjs(cluster.b.http, "alice1").await;
    twin.expect("ID-TAKEN").await;
}
