//! The other projects' signaling protocols, spoken to the real daemon with
//! tokio-tungstenite's WebSocket client as their libraries speak them:
//! y-webrtc's (`/y-webrtc`) and PeerJS's (`/peerjs`). The browser tests
//! with the libraries themselves are in `tests/browser_dialects.rs`.

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::TestDaemon;
use common::admin::{Scrape, request};
use common::signal::{Event, SignalClient, signal_config, token_for};

fn daemon(signal_extra: &str) -> TestDaemon {
    TestDaemon::start(&signal_config(signal_extra))
}

async fn ywebrtc(daemon: &TestDaemon, user: &str) -> SignalClient {
    let path = format!("/y-webrtc?token={}", token_for(user));
    SignalClient::connect_to(daemon.listener("http"), &path, &[])
        .await
        .expect("upgrade accepted")
}

async fn peerjs(daemon: &TestDaemon, key: &str, id: &str) -> SignalClient {
    let path = format!(
        "/peerjs/peerjs?key={key}&id={id}&token={}&version=1.5.5",
        token_for(id)
    );
    SignalClient::connect_to(daemon.listener("http"), &path, &[])
        .await
        .expect("upgrade accepted")
}

/// A publish reaches every subscriber of its topic, the sender too, with
/// `clients`; ping is answered; unsubscribed, a client hears no more.
#[tokio::test]
async fn ywebrtc_publish_reaches_every_subscriber_with_the_count() {
    let daemon = daemon("");
    let mut a = ywebrtc(&daemon, "ann").await;
    let mut b = ywebrtc(&daemon, "ben").await;
    a.send(json!({"type": "subscribe", "topics": ["doc-1", 7]}))
        .await;
    b.send(json!({"type": "subscribe", "topics": ["doc-1"]}))
        .await;
    // Both are in once b's subscription has gone through: a ping orders it.
    b.send(json!({"type": "ping"})).await;
    assert_eq!(b.expect("pong").await, json!({"type": "pong"}));
    let publish =
        json!({"type": "publish", "topic": "doc-1", "data": {"type": "announce", "from": "x"}});
    a.send(publish.clone()).await;
    for client in [&mut a, &mut b] {
        let got = client.expect("publish").await;
        assert_eq!(got["data"], publish["data"]);
        assert_eq!(got["topic"], "doc-1");
        assert_eq!(got["clients"], 2);
    }
    // Members in their order, values byte for byte, `clients` last.
    a.send_text(r#"{"type":"publish","topic":"doc-1","data":{"z":1, "a":[2,1]}}"#)
        .await;
    let (_, raw) = b.expect_raw("publish").await;
    assert_eq!(
        raw,
        r#"{"type":"publish","topic":"doc-1","data":{"z":1, "a":[2,1]},"clients":2}"#
    );
    a.expect("publish").await;
    b.send(json!({"type": "unsubscribe", "topics": ["doc-1"]}))
        .await;
    b.send(json!({"type": "ping"})).await;
    b.expect("pong").await;
    a.send(publish).await;
    let got = a.expect("publish").await;
    assert_eq!(got["clients"], 1, "{got}");
    b.expect_silence(Duration::from_millis(300)).await;
}

/// What y-webrtc's own server would choke on gets an error, and the
/// connection goes on; a publish to a topic not subscribed reaches nobody.
#[tokio::test]
async fn ywebrtc_bad_input_gets_an_error_and_the_connection_stays_usable() {
    let daemon = daemon("max-message-bytes = 1024\n");
    let mut a = ywebrtc(&daemon, "ann").await;
    a.send_text("{not json").await;
    a.expect_error("bad-json").await;
    a.send(json!({"type": "dance"})).await;
    a.expect_error("unknown-type").await;
    a.send(json!({"type": "publish", "data": 1})).await;
    a.expect_error("missing-field").await;
    a.send(json!({"type": "publish", "topic": "elsewhere", "data": 1}))
        .await;
    a.expect_error("not-in-room").await;
    a.send(json!({"type": "subscribe", "topics": ["x".repeat(65)]}))
        .await;
    a.expect_error("invalid-field").await;
    a.send_text(&format!(
        "{{\"type\":\"ping\",\"pad\":\"{}\"}}",
        "x".repeat(2000)
    ))
    .await;
    a.expect_error("message-too-large").await;
    a.send(json!({"type": "ping"})).await;
    a.expect("pong").await;
    let scrape = Scrape::of(&daemon, None);
    assert_eq!(
        scrape.get(
            "icegate_signal_protocol_connections_opened_total",
            &[("protocol", "y-webrtc")]
        ),
        1.0
    );
}

/// A topic needs the same token as a room: a rooms claim limits both.
#[tokio::test]
async fn ywebrtc_topics_follow_the_tokens_rooms_claim() {
    let daemon = daemon("");
    let token = common::signal::token(common::signal::JWT_SECRET, "ann", 600, Some(&["mine"]));
    let path = format!("/y-webrtc?token={token}");
    let mut a = SignalClient::connect_to(daemon.listener("http"), &path, &[])
        .await
        .expect("upgrade accepted");
    a.send(json!({"type": "subscribe", "topics": ["theirs"]}))
        .await;
    a.expect_error("room-not-allowed").await;
    // Without a token, no upgrade.
    let refused = SignalClient::connect_to(daemon.listener("http"), "/y-webrtc", &[]).await;
    assert_eq!(refused.err().map(|r| r.status), Some(401));
}

fn http_get(daemon: &TestDaemon, path: &str) -> common::admin::Answer {
    request(daemon.listener("http"), "GET", path, None, &[])
}

/// An id from `/peerjs/{key}/id`, OPEN on connecting with it, and an OFFER
/// to a peer that connects later is delivered then, with `src` set.
#[tokio::test]
async fn peerjs_clients_get_ids_open_and_signal_each_other_held_until_there() {
    let daemon = daemon("");
    let id = http_get(&daemon, "/peerjs/peerjs/id?ts=1");
    assert_eq!(id.status, 200, "{}", id.body);
    assert_eq!(id.header("access-control-allow-origin"), Some("*"));
    assert_eq!(id.body.len(), 36, "a UUID: {}", id.body);
    let mut a = peerjs(&daemon, "peerjs", &id.body).await;
    assert_eq!(a.expect("OPEN").await, json!({"type": "OPEN"}));
    a.send(json!({"type": "OFFER", "dst": "bob1", "payload": {"sdp": "x"}, "src": "forged"}))
        .await;
    a.send(json!({"type": "HEARTBEAT"})).await;
    let mut b = peerjs(&daemon, "peerjs", "bob1").await;
    b.expect("OPEN").await;
    let offer = b.expect("OFFER").await;
    assert_eq!(
        offer,
        json!({"type": "OFFER", "src": id.body, "dst": "bob1", "payload": {"sdp": "x"}})
    );
    // The payload goes on byte for byte, as the client wrote it.
    a.send_text(r#"{"type":"CANDIDATE","dst":"bob1","payload":{"z":1, "a":[2,1]}}"#)
        .await;
    let (_, raw) = b.expect_raw("CANDIDATE").await;
    assert!(raw.contains(r#""payload":{"z":1, "a":[2,1]}"#), "{raw}");
    b.send(json!({"type": "ANSWER", "dst": id.body, "payload": {"sdp": "y"}}))
        .await;
    let answer = a.expect("ANSWER").await;
    assert_eq!(answer["src"], "bob1");
    // Discovery is off by default.
    assert_eq!(http_get(&daemon, "/peerjs/peerjs/peers").status, 401);
    assert_eq!(http_get(&daemon, "/peerjs/nokey/id").status, 401);
}

/// An OFFER to an id that never connects comes back as EXPIRE after
/// `hold-for`; a LEAVE to it just goes.
#[tokio::test]
async fn peerjs_offer_to_an_absent_id_expires() {
    let daemon = daemon("hold-for = \"1s\"\n");
    let mut a = peerjs(&daemon, "peerjs", "ann1").await;
    a.expect("OPEN").await;
    a.send(json!({"type": "LEAVE", "dst": "ghost"})).await;
    a.send(json!({"type": "OFFER", "dst": "ghost", "payload": {}}))
        .await;
    let expired = a.expect("EXPIRE").await;
    assert_eq!(
        expired,
        json!({"type": "EXPIRE", "src": "ghost", "dst": "ann1"})
    );
    a.expect_silence(Duration::from_millis(1500)).await;
}

/// An id in use gets ID-TAKEN and a close; an unknown key or a missing id
/// gets ERROR and a close; messages PeerJS's server ignores are ignored
/// and the connection goes on.
#[tokio::test]
async fn peerjs_refusals_are_the_protocols_own() {
    let daemon = daemon("peerjs-keys = [\"peerjs\", \"other\"]\npeerjs-discovery = true\n");
    let mut a = peerjs(&daemon, "peerjs", "ann1").await;
    a.expect("OPEN").await;
    let mut taken = peerjs(&daemon, "peerjs", "ann1").await;
    let said = taken.expect("ID-TAKEN").await;
    assert_eq!(said["payload"]["msg"], "ID is taken");
    assert!(matches!(taken.next_event().await, Event::Closed(_)));
    // The same id under another key is another peer.
    let mut other = peerjs(&daemon, "other", "ann1").await;
    other.expect("OPEN").await;
    let mut bad_key = peerjs(&daemon, "nokey", "ann2").await;
    assert_eq!(
        bad_key.expect("ERROR").await["payload"]["msg"],
        "Invalid key provided"
    );
    let path = format!("/peerjs/peerjs?key=peerjs&token={}", token_for("x"));
    let mut no_id = SignalClient::connect_to(daemon.listener("http"), &path, &[])
        .await
        .expect("upgrade accepted");
    no_id.expect("ERROR").await;
    let mut bad_id = peerjs(&daemon, "peerjs", "a--b").await;
    bad_id.expect("ERROR").await;

    a.send_text("{not json").await;
    a.send(json!({"type": "DANCE"})).await;
    a.send(json!({"type": "OFFER"})).await;
    a.send_binary(b"\x00").await;
    let mut b = peerjs(&daemon, "peerjs", "bob1").await;
    b.expect("OPEN").await;
    a.send(json!({"type": "CANDIDATE", "dst": "bob1", "payload": {"c": 1}}))
        .await;
    let candidate = b.expect("CANDIDATE").await;
    assert_eq!(candidate["src"], "ann1");
    let peers: Value =
        serde_json::from_str(&http_get(&daemon, "/peerjs/peerjs/peers").body).expect("JSON");
    assert_eq!(peers, json!(["ann1", "bob1"]));
    let scrape = Scrape::of(&daemon, None);
    assert_eq!(
        scrape.get(
            "icegate_signal_protocol_connections_opened_total",
            &[("protocol", "peerjs")]
        ),
        7.0
    );
}

/// y-webrtc announces itself in the same breath as it subscribes: that
/// publish is not lost while the subscription goes through.
#[tokio::test]
async fn ywebrtc_publish_sent_with_its_subscribe_arrives() {
    let daemon = daemon("");
    let mut b = ywebrtc(&daemon, "ben").await;
    b.send(json!({"type": "subscribe", "topics": ["doc"]}))
        .await;
    b.send(json!({"type": "ping"})).await;
    b.expect("pong").await;
    let mut a = ywebrtc(&daemon, "ann").await;
    a.send_text(r#"{"type":"subscribe","topics":["doc"]}"#)
        .await;
    a.send_text(r#"{"type":"publish","topic":"doc","data":{"type":"announce","from":"a"}}"#)
        .await;
    let announce = b.expect("publish").await;
    assert_eq!(announce["data"]["from"], "a");
    assert_eq!(announce["clients"], 2);
    assert_eq!(a.expect("publish").await["data"]["from"], "a");
}
