//! The cluster against a real redis-server: nodes are [`Cluster`] handles with their own
//! names on one server, and what they hear is recorded.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;

use super::*;
use crate::metrics::read;

#[path = "../../tests/common/redis.rs"]
mod fixture;

use fixture::TestRedis;

/// How long anything the tests wait for may take.
const LIMIT: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(1);

#[derive(Debug)]
enum Heard {
    Message(String, ClusterMessage),
    Up,
    Down,
    Undelivered(
        #[allow(dead_code, reason = "read through Debug in failure messages")] ClusterMessage,
    ),
    PresenceLost(String, String),
}

#[derive(Default)]
struct Recorder {
    heard: Mutex<Vec<Heard>>,
}

impl ClusterEvents for Recorder {
    fn on_message(&self, from_node: &str, msg: ClusterMessage) {
        lock(&self.heard).push(Heard::Message(from_node.to_owned(), msg));
    }
    fn on_redis_up(&self) {
        lock(&self.heard).push(Heard::Up);
    }
    fn on_redis_down(&self) {
        lock(&self.heard).push(Heard::Down);
    }
    fn on_undelivered(&self, msg: ClusterMessage) {
        lock(&self.heard).push(Heard::Undelivered(msg));
    }
    fn on_presence_lost(&self, room: &str, peer: &str) {
        lock(&self.heard).push(Heard::PresenceLost(room.to_owned(), peer.to_owned()));
    }
}

impl Recorder {
    fn count(&self, what: impl Fn(&Heard) -> bool) -> usize {
        lock(&self.heard).iter().filter(|h| what(h)).count()
    }

    /// Waits until something heard matches.
    async fn until(&self, what: impl Fn(&Heard) -> bool) {
        let waited = tokio::time::timeout(LIMIT, async {
            while self.count(&what) == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "not heard within {LIMIT:?}: {:?}",
            lock(&self.heard)
        );
    }
}

struct Node {
    cluster: Cluster,
    heard: Arc<Recorder>,
    metrics: Arc<Metrics>,
}

fn config(redis: &TestRedis, name: &str, max_backlog: u32) -> ClusterConfig {
    ClusterConfig {
        redis: Some(redis.url()),
        node_name: Some(name.to_owned()),
        node_ttl: TTL,
        max_backlog,
        ..ClusterConfig::default()
    }
}

async fn node(redis: &TestRedis, name: &str) -> Node {
    node_with(config(redis, name, 100)).await
}

async fn node_with(config: ClusterConfig) -> Node {
    let heard = Arc::new(Recorder::default());
    let metrics = Arc::new(Metrics::default());
    let cluster = Cluster::start(&config, metrics.clone(), heard.clone()).expect("starts");
    heard.until(|h| matches!(h, Heard::Up)).await;
    Node {
        cluster,
        heard,
        metrics,
    }
}

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).expect("JSON")
}

fn signal(from: &str, to: &str, to_node: &str, data: &str) -> ClusterMessage {
    ClusterMessage::Signal {
        room: "r".into(),
        from: from.into(),
        to: to.into(),
        to_node: to_node.into(),
        data: raw(data),
    }
}

fn is_signal_from(heard: &Heard, node: &str, data: &str) -> bool {
    matches!(heard, Heard::Message(n, ClusterMessage::Signal { data: d, .. })
        if n == node && d.get() == data)
}

#[tokio::test]
async fn two_nodes_share_presence_messages_and_resume_records() {
    let redis = TestRedis::start();
    let a = node(&redis, "node-a").await;
    let b = node(&redis, "node-b").await;
    let meta = raw(r#"{"name": "Alice", "n": 1.50}"#);

    let others = a.cluster.join("r", "alice", &meta, 3).await.expect("joins");
    assert!(others.is_empty());
    assert_eq!(
        b.cluster
            .join("r", "alice", &raw("{}"), 3)
            .await
            .unwrap_err(),
        JoinError::Taken
    );
    let others = b
        .cluster
        .join("r", "bob", &raw("null"), 3)
        .await
        .expect("joins");
    assert_eq!(others.len(), 1, "{others:?}");
    assert_eq!(
        (others[0].peer.as_str(), others[0].node.as_str()),
        ("alice", "node-a")
    );
    assert_eq!(
        others[0].metadata.get(),
        meta.get(),
        "metadata byte for byte"
    );
    a.heard
        .until(|h| {
            matches!(h, Heard::Message(n, ClusterMessage::PeerJoined { peer, .. })
                if n == "node-b" && peer == "bob")
        })
        .await;
    // The room holds 3 across the nodes.
    a.cluster
        .join("r", "carol", &raw("{}"), 3)
        .await
        .expect("joins");
    assert_eq!(
        b.cluster
            .join("r", "dave", &raw("{}"), 3)
            .await
            .unwrap_err(),
        JoinError::Full
    );

    let data = r#"{"sdp": "v=0\r\n", "x": [1, 2.50]}"#;
    a.cluster
        .publish(signal("alice", "bob", "node-b", data))
        .expect("queued");
    b.heard.until(|h| is_signal_from(h, "node-a", data)).await;
    assert_eq!(a.heard.count(|h| is_signal_from(h, "node-a", data)), 0);
    assert_eq!(read(&a.metrics.cluster.published), 1);
    assert!(read(&b.metrics.cluster.received) >= 2);

    b.cluster
        .leave("r", "bob", LeaveReason::Closed)
        .await
        .expect("leaves");
    a.heard
        .until(|h| {
            matches!(h, Heard::Message(_, ClusterMessage::PeerLeft { peer, reason, .. })
                if peer == "bob" && *reason == LeaveReason::Closed)
        })
        .await;
    let members = b.cluster.members("r").await.expect("members");
    let mut peers: Vec<&str> = members.iter().map(|m| m.peer.as_str()).collect();
    peers.sort_unstable();
    assert_eq!(peers, ["alice", "carol"]);
    // A node leaves only what it owns.
    b.cluster
        .leave("r", "alice", LeaveReason::Left)
        .await
        .expect("no-op");
    assert_eq!(b.cluster.members("r").await.expect("members").len(), 2);

    // A message that is not one of ours is counted and dropped.
    redis.command("PUBLISH icegate:room:r not-json");
    a.cluster
        .publish(signal("alice", "bob", "node-b", "2"))
        .expect("queued");
    b.heard.until(|h| is_signal_from(h, "node-a", "2")).await;
    assert_eq!(read(&b.metrics.cluster.malformed), 1);

    // A session held on A resumes on B: only one node gets the record.
    let record = ResumeRecord {
        node: "node-a".into(),
        user: "alice".into(),
        peer: "alice".into(),
        rooms: [(
            "r".to_owned(),
            ResumedPeer {
                peer: "alice".to_owned(),
                metadata: "{}".to_owned(),
            },
        )]
        .into(),
    };
    a.cluster
        .store_resume("s1", &record, Duration::from_secs(5))
        .await
        .expect("stored");
    assert_eq!(b.cluster.claim_resume("s1").await, Ok(Some(record)));
    assert_eq!(a.cluster.claim_resume("s1").await, Ok(None));
    assert!(
        b.cluster
            .claim_presence("r", "alice", &meta, "node-a")
            .await
            .expect("claims")
    );
    a.heard
        .until(|h| {
            matches!(h, Heard::Message(n, ClusterMessage::PeerJoined { peer, .. })
                if n == "node-b" && peer == "alice")
        })
        .await;
    let entry = redis.command("HGET icegate:presence:r alice");
    assert!(entry.contains("node-b "), "{entry}");
    // A, which held it, can no longer take it out.
    a.cluster
        .leave("r", "alice", LeaveReason::Timeout)
        .await
        .expect("no-op");
    assert!(
        redis
            .command("HGET icegate:presence:r alice")
            .contains("node-b ")
    );
    a.cluster
        .publish(ClusterMessage::Takeover {
            session: "s1".into(),
            from_node: "node-b".into(),
            to_node: "node-a".into(),
        })
        .expect("queued");
    b.heard
        .until(|h| matches!(h, Heard::Message(_, ClusterMessage::Takeover { session, .. }) if session == "s1"))
        .await;
}

#[tokio::test]
async fn the_peers_of_a_dead_node_leave_their_rooms() {
    let redis = TestRedis::start();
    let a = node(&redis, "node-a").await;
    let b = node(&redis, "node-b").await;
    a.cluster
        .join("r", "alice", &raw("{}"), 16)
        .await
        .expect("joins");
    b.cluster
        .join("r", "bob", &raw("{}"), 16)
        .await
        .expect("joins");
    assert!(redis.command("SMEMBERS icegate:nodes").contains("node-a"));

    // A dies: its heartbeat stops, nothing is cleaned up.
    drop(a.cluster);
    b.heard
        .until(|h| {
            matches!(h, Heard::Message(n, ClusterMessage::PeerLeft { peer, reason, .. })
                if n == "node-a" && peer == "alice" && *reason == LeaveReason::NodeLost)
        })
        .await;
    assert!(
        !redis
            .command("HGETALL icegate:presence:r")
            .contains("alice")
    );
    assert!(redis.command("HGETALL icegate:presence:r").contains("bob"));
    assert!(!redis.command("SMEMBERS icegate:nodes").contains("node-a"));
    assert_eq!(redis.command("EXISTS icegate:node:node-a:peers"), ":0\r\n");
    // Exactly once, and the survivor's own peer stays.
    tokio::time::sleep(TTL).await;
    assert_eq!(
        b.heard
            .count(|h| matches!(h, Heard::Message(_, ClusterMessage::PeerLeft { .. }))),
        1
    );

    // A clean shutdown leaves nothing behind.
    b.cluster.shutdown().await;
    assert_eq!(redis.command("EXISTS icegate:presence:r"), ":0\r\n");
    assert!(!redis.command("SMEMBERS icegate:nodes").contains("node-b"));
}

#[tokio::test]
async fn a_node_outlives_a_redis_outage() {
    let mut redis = TestRedis::start();
    let a = node(&redis, "node-a").await;
    let b = node(&redis, "node-b").await;
    a.cluster
        .join("r", "alice", &raw("{}"), 16)
        .await
        .expect("joins");
    b.cluster
        .join("r", "bob", &raw("{}"), 16)
        .await
        .expect("joins");

    redis.stop();
    a.heard.until(|h| matches!(h, Heard::Down)).await;
    assert_eq!(
        a.cluster.publish(signal("alice", "bob", "node-b", "1")),
        Err(PublishError::Unavailable)
    );
    assert_eq!(
        a.cluster
            .join("r", "carol", &raw("{}"), 16)
            .await
            .unwrap_err(),
        JoinError::Unavailable
    );
    // Several reconnects fail meanwhile; the outage is told and counted once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(a.heard.count(|h| matches!(h, Heard::Down)), 1);
    assert_eq!(read(&a.metrics.cluster.outages), 1);
    assert!(!a.metrics.cluster.is_up());
    // A leave while Redis is away happens when it is back.
    a.cluster
        .leave("r", "alice", LeaveReason::Left)
        .await
        .expect_err("Redis is away");

    // Redis comes back empty: subscriptions and presence come back with it.
    let ups = a.heard.count(|h| matches!(h, Heard::Up));
    redis.restart();
    a.heard.until(|h| matches!(h, Heard::Up)).await;
    let waited = tokio::time::timeout(LIMIT, async {
        while a.heard.count(|h| matches!(h, Heard::Up)) == ups
            || b.heard.count(|h| matches!(h, Heard::Up)) < 2
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "both nodes up again");
    assert!(a.metrics.cluster.is_up());
    let room = redis.command("HGETALL icegate:presence:r");
    assert!(room.contains("bob") && !room.contains("alice"), "{room}");
    a.cluster
        .publish(signal("alice", "bob", "node-b", "2"))
        .expect("queued");
    b.heard.until(|h| is_signal_from(h, "node-a", "2")).await;
    assert!(a.metrics.cluster.enabled.load(Ordering::Relaxed));
}

#[tokio::test]
async fn a_full_backlog_refuses_and_counts() {
    let redis = TestRedis::start();
    let a = node_with(config(&redis, "node-a", 2)).await;
    // No await in between: the publishing task cannot drain the queue meanwhile.
    let results: Vec<_> = (0..4)
        .map(|i| {
            a.cluster
                .publish(signal("alice", "bob", "node-b", &i.to_string()))
        })
        .collect();
    assert_eq!(
        results,
        [
            Ok(()),
            Ok(()),
            Err(PublishError::BacklogFull),
            Err(PublishError::BacklogFull)
        ]
    );
    let i = Limit::ALL
        .iter()
        .position(|&l| l == Limit::ClusterMaxBacklog)
        .expect("a limit");
    assert_eq!(read(&a.metrics.limit_hits[i]), 2);
    let published = tokio::time::timeout(LIMIT, async {
        while read(&a.metrics.cluster.published) < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(published.is_ok());
}

/// Runs openssl with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A CA and a certificate for 127.0.0.1 it signed, in a fresh directory.
fn certificates() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "icegate-cluster-tls-{}-{}",
        std::process::id(),
        random_suffix(6)
    ));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-subj",
                "/CN=test-ca",
                "-days",
                "1",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        &dir,
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(dir.join("san"), "subjectAltName=IP:127.0.0.1\n").expect("write");
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san",
            "-out",
            "server.pem",
        ],
    );
    dir
}

#[tokio::test]
async fn rediss_with_a_ca_file_and_a_password() {
    let dir = certificates();
    let tls_port = fixture::free_port();
    let path = |name: &str| dir.join(name).display().to_string();
    let redis = TestRedis::start_with(&[
        "--tls-port".into(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        path("server.pem"),
        "--tls-key-file".into(),
        path("server.key"),
        "--tls-ca-cert-file".into(),
        path("ca.pem"),
        "--tls-auth-clients".into(),
        "no".into(),
        "--requirepass".into(),
        "test-password".into(),
    ]);
    let ca = crate::config::CaFile {
        path: dir.join("ca.pem"),
        pem: std::fs::read(dir.join("ca.pem")).expect("the CA"),
    };
    let tls = |password: &str| ClusterConfig {
        redis: Some(format!("rediss://127.0.0.1:{tls_port}")),
        redis_ca: Some(ca.clone()),
        redis_password: Some(password.to_owned()),
        ..config(&redis, "node-a", 100)
    };
    let a = node_with(tls("test-password")).await;
    a.cluster
        .join("r", "alice", &raw("{}"), 16)
        .await
        .expect("joins");
    assert!(redis.command("AUTH test-password").starts_with("+OK"),);

    // A wrong password: never up, and the outage is told once however often it retries.
    let heard = Arc::new(Recorder::default());
    let metrics = Arc::new(Metrics::default());
    let b = Cluster::start(&tls("wrong"), metrics.clone(), heard.clone()).expect("starts");
    heard.until(|h| matches!(h, Heard::Down)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(heard.count(|h| matches!(h, Heard::Down)), 1);
    assert_eq!(heard.count(|h| matches!(h, Heard::Up)), 0);
    assert_eq!(read(&metrics.cluster.outages), 1);
    assert_eq!(
        b.publish(signal("bob", "alice", "node-a", "1")),
        Err(PublishError::Unavailable)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_node_swept_while_alive_restores_its_presence_or_learns_it_lost_it() {
    let redis = TestRedis::start();
    let a = node(&redis, "node-a").await;
    let b = node(&redis, "node-b").await;
    a.cluster
        .join("r", "alice", &raw("{}"), 16)
        .await
        .expect("joins");
    a.cluster
        .join("r", "carol", &raw(r#"{"c":1}"#), 16)
        .await
        .expect("joins");
    // As if A had been swept while cut off from Redis, and B took one of its ids meanwhile.
    redis.command("HDEL icegate:presence:r alice carol");
    b.cluster
        .join("r", "alice", &raw("{}"), 16)
        .await
        .expect("free now");
    redis.command("DEL icegate:node:node-a");

    a.heard
        .until(|h| matches!(h, Heard::PresenceLost(room, peer) if room == "r" && peer == "alice"))
        .await;
    b.heard
        .until(|h| {
            matches!(h, Heard::Message(n, ClusterMessage::PeerJoined { peer, metadata, .. })
                if n == "node-a" && peer == "carol" && metadata.get() == r#"{"c":1}"#)
        })
        .await;
    assert!(
        redis
            .command("HGET icegate:presence:r alice")
            .contains("node-b ")
    );
    assert!(
        redis
            .command("HGET icegate:presence:r carol")
            .contains("node-a ")
    );
    // Lost is lost: A no longer puts alice back.
    tokio::time::sleep(TTL).await;
    assert_eq!(a.heard.count(|h| matches!(h, Heard::PresenceLost(..))), 1);
    assert!(
        redis
            .command("HGET icegate:presence:r alice")
            .contains("node-b ")
    );
}
