//! The signaling endpoint (`GET /ws`) against the real daemon, with
//! tokio-tungstenite's WebSocket client: presence, signals, resume, every
//! error and limit, token and origin checks, and the TURN credentials it
//! hands out used on icegate's own TURN with the `turn` crate's client.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use common::TestDaemon;
use common::admin::Scrape;
use common::signal::{Event, JWT_SECRET, SignalClient, signal_config, token, token_for};
use common::turn::TurnAllocation;

fn start(signal_extra: &str) -> (TestDaemon, SocketAddr) {
    let daemon = TestDaemon::start(&signal_config(signal_extra));
    let http = daemon.listener("http");
    (daemon, http)
}

async fn connect(http: SocketAddr, user: &str) -> (SignalClient, Value) {
    SignalClient::join_server(http, &token_for(user)).await
}

#[tokio::test]
async fn peers_meet_in_a_room_and_exchange_signals() {
    let (daemon, http) = start("");
    let (mut alice, welcome) = connect(http, "alice").await;
    assert_eq!(welcome["user"], "alice");
    assert_eq!(welcome["resumed"], false);
    assert!(welcome["peer"].as_str().unwrap().starts_with("p-"));
    assert!(welcome["resume_token"].as_str().unwrap().starts_with("r1."));
    assert_eq!(welcome["resume_seconds"], 30);
    let turn = &welcome["ice_servers"][1];
    assert!(turn["username"].as_str().unwrap().ends_with(":alice"));
    assert_eq!(
        welcome["ice_servers"][0]["urls"][0],
        format!("stun:127.0.0.1:{}", daemon.udp.port())
    );

    alice
        .send(json!({"type": "join", "id": 1, "room": "standup", "peer": "alice-laptop", "metadata": {"name": "Alice"}}))
        .await;
    let joined = alice.expect("joined").await;
    assert_eq!(
        joined,
        json!({"type": "joined", "room": "standup", "peer": "alice-laptop", "peers": []})
    );

    let (mut bob, bob_welcome) = connect(http, "bob").await;
    // No peer id asked for: the one from welcome.
    bob.send(json!({"type": "join", "room": "standup"})).await;
    let joined = bob.expect("joined").await;
    assert_eq!(joined["peer"], bob_welcome["peer"]);
    assert_eq!(
        joined["peers"],
        json!([{"peer": "alice-laptop", "metadata": {"name": "Alice"}}])
    );
    let bob_id = bob_welcome["peer"].as_str().unwrap().to_owned();
    let announced = alice.expect("peer-joined").await;
    assert_eq!(
        announced,
        json!({"type": "peer-joined", "room": "standup", "peer": bob_id, "metadata": {}})
    );

    // A targeted signal arrives verbatim, from the sender's peer id.
    let offer = r#"{"sdp":{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}}"#;
    alice
        .send_text(&format!(
            r#"{{"type":"signal","room":"standup","to":"{bob_id}","data":{offer}}}"#
        ))
        .await;
    let signal = bob.expect("signal").await;
    assert_eq!(signal["from"], "alice-laptop");
    assert_eq!(
        signal["data"],
        serde_json::from_str::<Value>(offer).unwrap()
    );
    assert!(signal.get("broadcast").is_none());

    // A broadcast reaches the others, not the sender.
    let (mut carol, _) = connect(http, "carol").await;
    carol.join("standup", "carol").await;
    alice.expect("peer-joined").await;
    bob.expect("peer-joined").await;
    bob.send(json!({"type": "broadcast", "room": "standup", "data": {"status": "muted"}}))
        .await;
    for receiver in [&mut alice, &mut carol] {
        let message = receiver.expect("signal").await;
        assert_eq!(message["broadcast"], true);
        assert_eq!(message["from"], bob_id);
        assert_eq!(message["data"], json!({"status": "muted"}));
    }
    bob.expect_silence(Duration::from_millis(300)).await;

    // Leaving and closing are both announced at once.
    carol
        .send(json!({"type": "leave", "room": "standup"}))
        .await;
    for peer in [&mut alice, &mut bob] {
        assert_eq!(
            peer.expect("peer-left").await,
            json!({"type": "peer-left", "room": "standup", "peer": "carol", "reason": "left"})
        );
    }
    carol.assert_usable().await;
    bob.close().await;
    let left = alice.expect("peer-left").await;
    assert_eq!(
        (left["peer"].as_str(), left["reason"].as_str()),
        (Some(bob_id.as_str()), Some("closed"))
    );
    // The peer id is free again.
    carol.join("standup", &bob_id).await;
    assert!(daemon.wait_for_log("signal-join user=alice room=standup peer=alice-laptop"));
    assert!(
        !daemon.log().contains("v=0"),
        "message contents must not be logged"
    );
}

/// An allocation by the `turn` crate's client with `username` and
/// `password` on the daemon's UDP listener, on loopback.
async fn allocate_with(daemon: &TestDaemon, username: &str, password: &str) {
    let allocation = TurnAllocation::make(daemon.udp, username, password)
        .await
        .expect("Allocate succeeds with the handed-out credentials");
    assert_eq!(allocation.relayed().ip().to_string(), "127.0.0.1");
    allocation.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handed_out_credentials_work_on_icegates_turn() {
    let (daemon, http) = start("");
    let (_client, welcome) = connect(http, "dana").await;
    let turn = &welcome["ice_servers"][1];
    assert_eq!(
        turn["urls"][0],
        format!("turn:127.0.0.1:{}?transport=udp", daemon.udp.port())
    );
    allocate_with(
        &daemon,
        turn["username"].as_str().unwrap(),
        turn["credential"].as_str().unwrap(),
    )
    .await;

    // /ice-servers takes the same token.
    let body = http_get(
        http,
        "/ice-servers",
        &format!("Authorization: Bearer {}", token_for("erin")),
    )
    .await;
    let (status, body) = body;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(body["username"].as_str().unwrap().ends_with(":erin"));
    assert_eq!(body["iceTransportPolicy"], "all");
    allocate_with(
        &daemon,
        body["username"].as_str().unwrap(),
        body["password"].as_str().unwrap(),
    )
    .await;
    let (status, _) = http_get(
        http,
        "/ice-servers",
        &format!(
            "Authorization: Bearer {}",
            token("wrong-secret-0123456789abcdef0123456789", "erin", 60, None)
        ),
    )
    .await;
    assert_eq!(status, 401);
    assert!(daemon.wait_for_log("allocation-created"));
}

/// One HTTP/1.1 request over a plain TCP connection: (status, body).
async fn http_get(address: SocketAddr, path: &str, header: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n{header}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn a_dropped_peer_resumes_its_id_within_the_grace_period() {
    let (daemon, http) = start("resume-grace = \"2s\"");
    let (mut alice, _) = connect(http, "alice").await;
    alice.join("r", "alice").await;
    let (bob, welcome) = connect(http, "bob").await;
    let mut bob = bob;
    bob.join("r", "bob").await;
    alice.expect("peer-joined").await;

    // The network goes away: no close frame. (What the server writes in
    // the moment before it notices is lost with the connection.)
    bob.drop_connection();
    assert!(daemon.wait_for_log("signal-disconnect user=bob client=127.0.0.1 how=dropped"));
    alice
        .send(json!({"type": "signal", "room": "r", "to": "bob", "data": {"n": 1}}))
        .await;
    alice.expect_silence(Duration::from_millis(500)).await;

    let query = format!(
        "token={}&resume={}",
        token_for("bob"),
        welcome["resume_token"].as_str().unwrap()
    );
    let mut bob = SignalClient::connect_with(http, &query, &[]).await.unwrap();
    let welcome2 = bob.expect("welcome").await;
    assert_eq!(welcome2["resumed"], true);
    assert_eq!(welcome2["peer"], welcome["peer"]);
    assert_ne!(welcome2["resume_token"], welcome["resume_token"]);
    let joined = bob.expect("joined").await;
    assert_eq!(joined["peer"], "bob");
    assert_eq!(joined["peers"][0]["peer"], "alice");
    // What was sent while it was away is delivered.
    let queued = bob.expect("signal").await;
    assert_eq!(queued["data"], json!({"n": 1}));
    // Nobody saw it leave, even after the grace period.
    alice.expect_silence(Duration::from_millis(2500)).await;
    alice
        .send(json!({"type": "signal", "room": "r", "to": "bob", "data": {"n": 2}}))
        .await;
    assert_eq!(bob.expect("signal").await["data"], json!({"n": 2}));

    // A spent resume token, or another user's, starts a new session.
    let mut again = SignalClient::connect_with(http, &query, &[]).await.unwrap();
    assert_eq!(again.expect("welcome").await["resumed"], false);
    let stolen = format!(
        "token={}&resume={}",
        token_for("mallory"),
        welcome2["resume_token"].as_str().unwrap()
    );
    let mut thief = SignalClient::connect_with(http, &stolen, &[])
        .await
        .unwrap();
    assert_eq!(thief.expect("welcome").await["resumed"], false);

    // After the grace period the others are told.
    let resume_token = welcome2["resume_token"].as_str().unwrap().to_owned();
    bob.drop_connection();
    let left = alice.expect("peer-left").await;
    assert_eq!(
        (left["peer"].as_str(), left["reason"].as_str()),
        (Some("bob"), Some("closed"))
    );
    let late = format!("token={}&resume={resume_token}", token_for("bob"));
    let mut late = SignalClient::connect_with(http, &late, &[]).await.unwrap();
    assert_eq!(late.expect("welcome").await["resumed"], false);
}

#[tokio::test]
async fn signals_wait_for_peers_on_their_way() {
    let (daemon, http) = start("hold-for = \"1s\"\nmax-held-per-sender = 2");
    let before = Scrape::of(&daemon, None);
    let (mut alice, _) = connect(http, "alice").await;
    alice.join("r", "alice").await;

    // Bob is not there yet: his offer and candidate wait; a third signal
    // from alice is one more than she may have waiting.
    for n in 1..=2 {
        alice
            .send(json!({"type": "signal", "room": "r", "to": "bob", "data": {"n": n}, "id": n}))
            .await;
    }
    alice
        .send(json!({"type": "signal", "room": "r", "to": "bob", "data": {"n": 3}, "id": 3}))
        .await;
    let refused = alice.expect_error("peer-not-found").await;
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("signal.max-held-per-sender"),
        "{refused}"
    );
    assert_eq!(refused["in_reply_to"]["id"], 3);

    // Bob joins: his joined comes first, then what waited, in order.
    let (mut bob, _) = connect(http, "bob").await;
    bob.send(json!({"type": "join", "room": "r", "peer": "bob"}))
        .await;
    assert_eq!(bob.expect("joined").await["peers"][0]["peer"], "alice");
    for n in 1..=2 {
        let signal = bob.expect("signal").await;
        assert_eq!(
            (&signal["from"], &signal["data"]),
            (&json!("alice"), &json!({"n": n}))
        );
    }
    alice.expect("peer-joined").await;

    // Carol never comes: alice is told, with her signal's id.
    alice
        .send(json!({"type": "signal", "room": "r", "to": "carol", "data": {}, "id": "c1"}))
        .await;
    let expired = alice.expect("expired").await;
    assert_eq!(
        expired,
        json!({"type": "expired", "room": "r", "to": "carol",
               "message": "carol did not join room r within 1 s",
               "in_reply_to": {"type": "signal", "id": "c1"}})
    );
    alice.assert_usable().await;

    let after = Scrape::of(&daemon, None);
    let holds = |outcome: &str| {
        let labels = [("outcome", outcome)];
        after.get("icegate_signal_holds_total", &labels)
            - before.get("icegate_signal_holds_total", &labels)
    };
    assert_eq!(
        (holds("held"), holds("delivered"), holds("expired")),
        (3.0, 2.0, 1.0)
    );
    assert_eq!(after.get("icegate_signal_held_messages", &[]), 0.0);
    assert_eq!(
        after.get(
            "icegate_limit_hits_total",
            &[("limit", "signal.max-held-per-sender")]
        ),
        1.0
    );
}

#[tokio::test]
async fn fragmented_messages_are_whole_and_broken_frames_close_with_their_code() {
    let (_daemon, http) = start("");
    let (mut client, _) = connect(http, "alice").await;
    // A message in three fragments, a ping between them (RFC 6455 §5.4).
    let text = r#"{"type":"ping","id":5}"#;
    let (first, rest) = text.split_at(8);
    let (middle, last) = rest.split_at(6);
    client
        .send_frame(Message::Frame(Frame::message(
            first.as_bytes().to_vec(),
            OpCode::Data(Data::Text),
            false,
        )))
        .await;
    client
        .send_frame(Message::Frame(Frame::message(
            middle.as_bytes().to_vec(),
            OpCode::Data(Data::Continue),
            false,
        )))
        .await;
    client
        .send_frame(Message::Ping(b"between".to_vec().into()))
        .await;
    client
        .send_frame(Message::Frame(Frame::message(
            last.as_bytes().to_vec(),
            OpCode::Data(Data::Continue),
            true,
        )))
        .await;
    assert_eq!(
        client.expect("pong").await,
        json!({"type": "pong", "id": 5})
    );
    client.assert_usable().await;

    // An unmasked client frame breaks the protocol: close 1002.
    let mut raw = tokio::net::TcpStream::connect(http).await.unwrap();
    let upgrade = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {http}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        token_for("mallory")
    );
    raw.write_all(upgrade.as_bytes()).await.unwrap();
    raw.write_all(b"\x81\x02{}").await.unwrap();
    let mut received = Vec::new();
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = raw.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed without a close frame");
            received.extend_from_slice(&chunk[..n]);
            // The close frame is the last thing written: 0x88, length, code.
            if let Some(at) = received.windows(2).rposition(|w| w[0] == 0x88 && w[1] >= 2)
                && received.len() >= at + 4
            {
                break u16::from_be_bytes([received[at + 2], received[at + 3]]);
            }
        }
    })
    .await
    .expect("a close frame in time");
    assert_eq!(close, 1002);
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_times_out() {
    let (daemon, http) = start("ping-interval = \"1s\"\nresume-grace = \"1s\"");
    let (mut alice, _) = connect(http, "alice").await;
    alice.join("r", "alice").await;
    let (mut hung, _) = connect(http, "hung").await;
    hung.join("r", "hung").await;
    alice.expect("peer-joined").await;
    // Stop reading: pings go unanswered. Alice reads, so her client answers.
    let _stalled = hung.into_inner();
    let left = alice.expect("peer-left").await;
    assert_eq!(left["reason"], "timeout");
    assert_eq!(left["peer"], "hung");
    alice.assert_usable().await;
    assert!(daemon.wait_for_log("signal-disconnect user=hung"));
}

#[tokio::test]
async fn every_bad_message_gets_an_error_and_the_connection_stays_usable() {
    let (_daemon, http) = start(
        "max-peers-per-room = 2\nmax-rooms-per-connection = 2\nmax-message-bytes = 1024\n\
         hold-for = \"0s\"",
    );
    let (mut client, _) = connect(http, "alice").await;
    let cases: &[(&str, &str)] = &[
        ("{not json", "bad-json"),
        (r#"["join"]"#, "bad-json"),
        (r#"{"type":"dance","id":9}"#, "unknown-type"),
        (r#"{"id":1}"#, "unknown-type"),
        (r#"{"type":"join"}"#, "missing-field"),
        (r#"{"type":"join","room":["a"]}"#, "missing-field"),
        (r#"{"type":"signal","room":"a","to":"b"}"#, "missing-field"),
        (r#"{"type":"join","room":""}"#, "invalid-field"),
        (
            r#"{"type":"join","room":"a","metadata":"x"}"#,
            "invalid-field",
        ),
        (r#"{"type":"leave","room":"nowhere"}"#, "not-in-room"),
        (
            r#"{"type":"signal","room":"nowhere","to":"b","data":1}"#,
            "not-in-room",
        ),
        (
            r#"{"type":"broadcast","room":"nowhere","data":1}"#,
            "not-in-room",
        ),
    ];
    for (text, code) in cases {
        client.send_text(text).await;
        let error = client.expect_error(code).await;
        assert!(!error["message"].as_str().unwrap().is_empty());
        client.assert_usable().await;
    }
    client.send_text(r#"{"type":"dance","id":9}"#).await;
    assert_eq!(
        client.expect_error("unknown-type").await["in_reply_to"],
        json!({"type": "dance", "id": 9})
    );

    client.send_binary(b"\x00\x01").await;
    client.expect_error("binary-not-supported").await;
    client
        .send_text(&format!(
            r#"{{"type":"ping","pad":"{}"}}"#,
            "x".repeat(2000)
        ))
        .await;
    client.expect_error("message-too-large").await;
    client.assert_usable().await;

    client.join("a", "me").await;
    client
        .send(json!({"type": "join", "room": "a", "id": "again"}))
        .await;
    assert_eq!(
        client.expect_error("already-joined").await["in_reply_to"]["id"],
        "again"
    );
    client
        .send(json!({"type": "signal", "room": "a", "to": "ghost", "data": {}, "id": 12}))
        .await;
    let error = client.expect_error("peer-not-found").await;
    assert_eq!(error["message"], "no peer ghost in room a");
    assert_eq!(error["in_reply_to"], json!({"type": "signal", "id": 12}));

    let (mut other, _) = connect(http, "bob").await;
    other
        .send(json!({"type": "join", "room": "a", "peer": "me"}))
        .await;
    other.expect_error("peer-id-taken").await;
    other.join("a", "bob").await;
    client.expect("peer-joined").await;
    let (mut third, _) = connect(http, "carol").await;
    third
        .send(json!({"type": "join", "room": "a", "peer": "carol"}))
        .await;
    third.expect_error("room-full").await;
    third.assert_usable().await;

    client.join("b", "me").await;
    client.send(json!({"type": "join", "room": "c"})).await;
    client.expect_error("too-many-rooms").await;
    client.assert_usable().await;

    // A token limited to some rooms.
    let limited = token(JWT_SECRET, "dave", 60, Some(&["a"]));
    let (mut dave, _) = SignalClient::join_server(http, &limited).await;
    dave.send(json!({"type": "join", "room": "b"})).await;
    dave.expect_error("room-not-allowed").await;
    dave.assert_usable().await;
}

#[tokio::test]
async fn floods_and_oversized_frames_close_only_the_offender() {
    let (daemon, http) =
        start("messages-per-second = 5\nmessage-burst = 10\nmax-message-bytes = 1024");
    let (mut bystander, _) = connect(http, "bystander").await;

    // A burst beyond the bucket: one rate-limited error, then a close 1008.
    let (mut flooder, _) = connect(http, "flooder").await;
    for _ in 0..25 {
        flooder.send(json!({"type": "ping"})).await;
    }
    let mut pongs = 0;
    let mut errors = 0;
    let code = loop {
        match flooder.next_event().await {
            Event::Text(m) if m["type"] == "pong" => pongs += 1,
            Event::Text(m) if m["code"] == "rate-limited" => errors += 1,
            Event::Text(m) => panic!("unexpected {m}"),
            Event::Closed(code) => break code,
        }
    };
    assert_eq!((pongs, errors, code), (10, 1, Some(1008)));
    assert!(daemon.wait_for_log("signal-limit limit=messages-per-second user=flooder"));

    // One frame over four times the limit: closed with 1009.
    let (mut big, _) = connect(http, "big").await;
    big.send_text(&format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(5000)
    ))
    .await;
    assert!(matches!(big.next_event().await, Event::Closed(Some(1009))));

    // Three oversized frames in a row: two errors, then 1009.
    let (mut repeat, _) = connect(http, "repeat").await;
    let oversized = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(2000));
    for _ in 0..3 {
        repeat.send_text(&oversized).await;
    }
    repeat.expect_error("message-too-large").await;
    repeat.expect_error("message-too-large").await;
    assert!(matches!(
        repeat.next_event().await,
        Event::Closed(Some(1009))
    ));

    bystander.assert_usable().await;
}

/// Counts what `client` gets until the server closes: WebSocket pongs,
/// `rate-limited` errors, and the close code.
async fn pongs_errors_and_close(client: &mut SignalClient) -> (usize, usize, Option<u16>) {
    let (mut pongs, mut errors) = (0, 0);
    loop {
        match client.next_frame().await {
            Some(Message::Pong(_)) => pongs += 1,
            Some(Message::Text(text)) => {
                let m: Value = serde_json::from_str(&text).expect("JSON");
                assert_eq!(m["code"], "rate-limited", "unexpected {m}");
                errors += 1;
            }
            Some(Message::Close(frame)) => {
                return (pongs, errors, frame.map(|f| u16::from(f.code)));
            }
            Some(_) => {}
            None => return (pongs, errors, None),
        }
    }
}

#[tokio::test]
async fn websocket_pings_and_pongs_count_as_messages() {
    let (daemon, http) = start("messages-per-second = 5\nmessage-burst = 10");

    // Occasional pings are answered, and cost no more than messages.
    let (mut polite, _) = connect(http, "polite").await;
    for i in 0..5u8 {
        polite.send_frame(Message::Ping(vec![i].into())).await;
        loop {
            match polite.next_frame().await {
                Some(Message::Pong(data)) => break assert_eq!(data.as_ref(), [i]),
                // icegate's own keepalive.
                Some(Message::Ping(_)) => {}
                other => panic!("expected a pong, got {other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    polite.assert_usable().await;

    // A ping flood is a message flood: one rate-limited error, then 1008.
    // A refused ping already read may still be answered, so up to twice
    // the burst of pongs arrive, never all of them.
    let (mut flooder, _) = connect(http, "pinger").await;
    for _ in 0..25 {
        flooder.send_frame(Message::Ping(Default::default())).await;
    }
    let (pongs, errors, code) = pongs_errors_and_close(&mut flooder).await;
    assert!((10..=20).contains(&pongs), "{pongs} pongs");
    assert_eq!((errors, code), (1, Some(1008)));
    assert!(daemon.wait_for_log("signal-limit limit=messages-per-second user=pinger"));

    // So is a flood of pongs nobody asked for.
    let (mut ponger, _) = connect(http, "ponger").await;
    for _ in 0..25 {
        ponger.send_frame(Message::Pong(Default::default())).await;
    }
    assert_eq!(
        pongs_errors_and_close(&mut ponger).await,
        (0, 1, Some(1008))
    );
    assert!(daemon.wait_for_log("signal-limit limit=messages-per-second user=ponger"));

    polite.assert_usable().await;
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed() {
    let (daemon, http) = start(
        "messages-per-second = 100000\nmessage-burst = 100000\nmax-queued-bytes = 65536\nresume-grace = \"1s\"",
    );
    let (mut sender, _) = connect(http, "sender").await;
    sender.join("r", "sender").await;
    let (mut reader, _) = connect(http, "reader").await;
    reader.join("r", "reader").await;
    sender.expect("peer-joined").await;
    let _stalled = reader.into_inner();
    let payload = "x".repeat(30_000);
    // Enough to fill the socket buffers and then the queue; bounded.
    let mut left = None;
    for _ in 0..2000 {
        sender
            .send(json!({"type": "signal", "room": "r", "to": "reader", "data": payload}))
            .await;
        left = sender.poll_for(Duration::from_millis(1)).await;
        if left.is_some() {
            break;
        }
    }
    let left = match left {
        Some(left) => left,
        None => sender.expect("peer-left").await,
    };
    assert_eq!(left["type"], "peer-left");
    assert_eq!(left["peer"], "reader");
    assert!(daemon.wait_for_log("signal-disconnect user=reader"));
}

#[tokio::test]
async fn tokens_are_checked_before_the_upgrade() {
    let (daemon, http) = start("");
    let refused = |query: String| async move {
        SignalClient::connect_with(http, &query, &[])
            .await
            .err()
            .expect("upgrade refused")
    };
    let missing = refused(String::new()).await;
    assert_eq!(missing.status, 401);
    assert!(missing.body.contains("token-missing"), "{}", missing.body);
    let expired = refused(format!("token={}", token(JWT_SECRET, "alice", -120, None))).await;
    assert_eq!(expired.status, 401);
    assert!(expired.body.contains("token-expired"), "{}", expired.body);
    let forged = token("some-other-secret-0123456789abcdefghij", "alice", 60, None);
    let forged = refused(format!("token={forged}")).await;
    assert_eq!(forged.status, 401);
    assert!(
        forged.body.contains("token-bad-signature"),
        "{}",
        forged.body
    );
    let garbage = refused("token=not.a.jwt".to_owned()).await;
    assert_eq!(garbage.status, 401);
    assert!(daemon.wait_for_log("signal-refused client=127.0.0.1 reason=token-expired"));

    // Clients that can set headers may use Authorization instead.
    let bearer = format!("Bearer {}", token_for("alice"));
    let mut client = SignalClient::connect_with(http, "", &[("authorization", &bearer)])
        .await
        .expect("bearer token accepted");
    assert_eq!(client.expect("welcome").await["user"], "alice");
}

/// An ES256 key pair made with openssl: (private key PEM, public key path).
fn es256_key(dir: &std::path::Path) -> (Vec<u8>, std::path::PathBuf) {
    let private = dir.join("jwt.key");
    let public = dir.join("jwt.pub");
    for args in [
        vec![
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            private.to_str().unwrap(),
        ],
        vec![
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            private.to_str().unwrap(),
            "-out",
            dir.join("jwt.p8").to_str().unwrap(),
        ],
        vec![
            "ec",
            "-in",
            private.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ],
    ] {
        common::run_tool("openssl", &args, dir, "openssl");
    }
    (std::fs::read(dir.join("jwt.p8")).unwrap(), public)
}

#[tokio::test]
async fn es256_tokens_verify_with_a_configured_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = es256_key(dir.path());
    let (_daemon, http) = start(&format!("jwt-public-keys = [\"{}\"]", public.display()));
    let claims = json!({"sub": "erin", "exp": common::unix_now() + 600});
    let signed = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(&private).unwrap(),
    )
    .unwrap();
    let (_client, welcome) = SignalClient::join_server(http, &signed).await;
    assert_eq!(welcome["user"], "erin");
    // The HS256 secret still works beside it.
    connect(http, "frank").await;
}

#[tokio::test]
async fn browser_origins_must_be_icegates_own_or_listed() {
    let (daemon, http) = start("allowed-origins = [\"https://app.example.org\"]");
    let query = format!("token={}", token_for("alice"));
    let evil = SignalClient::connect_with(http, &query, &[("origin", "https://evil.example")])
        .await
        .err()
        .expect("foreign origin refused");
    assert_eq!(evil.status, 403);
    assert!(evil.body.contains("origin-not-allowed"));
    assert!(
        daemon.wait_for_log(
            "signal-refused client=127.0.0.1 reason=origin origin=https://evil.example"
        )
    );
    for origin in ["https://app.example.org", &format!("http://{http}")] {
        let mut client = SignalClient::connect_with(http, &query, &[("origin", origin)])
            .await
            .unwrap_or_else(|r| panic!("origin {origin} refused: {r:?}"));
        client.expect("welcome").await;
    }
}

#[tokio::test]
async fn without_tokens_only_loopback_and_listed_origins_pass() {
    let daemon = TestDaemon::start(
        &signal_config("auth = \"none\"\nallowed-origins = [\"https://app.example.org\"]")
            .replace("jwt-secrets", "#"),
    );
    let http = daemon.listener("http");
    let port = http.port();

    // DNS rebinding: a page at evil.example, whose name now resolves to
    // icegate, sends its own name as both Host and Origin.
    let rebound = format!("evil.example:{port}");
    let origin = format!("http://{rebound}");
    let refused = SignalClient::connect_with(http, "", &[("host", &rebound), ("origin", &origin)])
        .await
        .err()
        .expect("rebound origin refused");
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("origin-not-allowed"));
    assert!(daemon.wait_for_log(&format!(
        "signal-refused client=127.0.0.1 reason=origin origin={origin}"
    )));

    for origin in [
        format!("http://{http}"),
        format!("http://localhost:{port}"),
        format!("http://[::1]:{port}"),
        "https://app.example.org".to_owned(),
    ] {
        let mut client = SignalClient::connect_with(http, "", &[("origin", &origin)])
            .await
            .unwrap_or_else(|r| panic!("origin {origin} refused: {r:?}"));
        client.expect("welcome").await;
    }
}

#[tokio::test]
async fn auth_none_is_explicit_and_signaling_is_off_without_keys() {
    let daemon = TestDaemon::start(&signal_config("auth = \"none\"").replace("jwt-secrets", "#"));
    let http = daemon.listener("http");
    assert!(daemon.wait_for_log("warn signal.auth = \"none\""));
    let mut client = SignalClient::connect_with(http, "", &[])
        .await
        .expect("no token needed");
    let welcome = client.expect("welcome").await;
    assert_eq!(welcome["user"], "anonymous");
    assert!(
        welcome["ice_servers"][1]["username"]
            .as_str()
            .unwrap()
            .ends_with(":anonymous")
    );

    let off = TestDaemon::start(&signal_config("").replace("jwt-secrets", "#"));
    let http = off.listener("http");
    let refused = SignalClient::connect_with(http, "", &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 404);
    assert!(refused.body.contains("signaling-off"));
    assert!(off.wait_for_log("signaling is off"));
}

#[tokio::test]
async fn handshake_connection_limits_and_plain_requests() {
    let (_daemon, http) = start("max-connections-per-ip = 2\nhandshake-timeout = \"1s\"");
    let (mut first, _) = connect(http, "a").await;
    let (_second, _) = connect(http, "b").await;
    let refused = SignalClient::connect_with(http, &format!("token={}", token_for("c")), &[])
        .await
        .err()
        .expect("third connection refused");
    assert_eq!(refused.status, 503);
    first.assert_usable().await;
    first.close().await;
    // The slot is free again once the first has gone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    connect(http, "c").await;

    // GET /ws without the upgrade.
    let (status, body) = http_get(http, "/ws", "X-Test: 1").await;
    assert_eq!(status, 426, "{body}");

    // A request that does not finish within handshake-timeout is dropped.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut slow = tokio::net::TcpStream::connect(http).await.unwrap();
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "still open 5 s into a 1 s handshake timeout"
    );
}

#[tokio::test]
async fn stopping_icegate_closes_connections_with_going_away() {
    let (mut daemon, http) = start("");
    let (mut client, _) = connect(http, "alice").await;
    client.join("r", "alice").await;
    let stopping = tokio::task::spawn_blocking(move || {
        daemon.stop();
        daemon
    });
    assert!(matches!(
        client.next_event().await,
        Event::Closed(Some(1001))
    ));
    let daemon = stopping.await.unwrap();
    assert!(
        daemon
            .log()
            .contains("stopping signaling: closing 1 sessions in 1 rooms")
    );
}

#[tokio::test]
async fn wss_shares_the_turn_tls_port() {
    let dir = tempfile::tempdir().unwrap();
    let host = "turn.icegate.test";
    let certs = common::make_test_ca_and_cert(dir.path(), host);
    let signal = format!("[signal]\njwt-secrets = [\"{JWT_SECRET}\"]\n");
    let config = common::TestConfig {
        tls: Some((&certs.cert, &certs.key)),
        tls_services: &["turn", "http"],
        public_host: Some(host),
        tables: &signal,
        ..common::TestConfig::default()
    }
    .render();
    let daemon = TestDaemon::start(&config);
    let tls_port = daemon.tls.expect("tls listener").port();
    let connector = tokio_rustls::TlsConnector::from(common::tls_client_config(&certs.ca));
    let mut clients = Vec::new();
    for user in ["alice", "bob"] {
        let tcp = tokio::net::TcpStream::connect(daemon.tls.unwrap())
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from(host).unwrap();
        let tls = connector.connect(name, tcp).await.expect("TLS handshake");
        let url = format!("wss://{host}:{tls_port}/ws?token={}", token_for(user));
        let mut client = SignalClient::over(tls, &url).await;
        let welcome = client.expect("welcome").await;
        let turns = format!("turns:{host}:{tls_port}?transport=tcp");
        assert!(
            welcome["ice_servers"][1]["urls"]
                .as_array()
                .unwrap()
                .contains(&json!(turns)),
            "{welcome}"
        );
        client.join("room", user).await;
        clients.push(client);
    }
    let [alice, bob] = &mut clients[..] else {
        unreachable!()
    };
    alice.expect("peer-joined").await;
    bob.send(json!({"type": "signal", "room": "room", "to": "alice", "data": "hello over wss"}))
        .await;
    assert_eq!(alice.expect("signal").await["data"], "hello over wss");
}

#[tokio::test]
async fn without_a_rest_secret_welcome_offers_stun_only() {
    // The static user stays; the REST secret goes.
    let config = signal_config("").replace(&format!("secrets = [\"{}\"]", common::SECRET), "");
    let daemon = TestDaemon::start(&config);
    let (_client, welcome) = connect(daemon.listener("http"), "alice").await;
    assert_eq!(
        welcome["ice_servers"],
        json!([{ "urls": [format!("stun:127.0.0.1:{}", daemon.udp.port())] }])
    );
}

#[tokio::test]
async fn rs256_tokens_and_the_total_connection_limit() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("rsa.key");
    let public = dir.path().join("rsa.pub");
    for args in [
        vec![
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            private.to_str().unwrap(),
        ],
        vec![
            "pkey",
            "-in",
            private.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ],
    ] {
        common::run_tool("openssl", &args, dir.path(), "openssl");
    }
    let (_daemon, http) = start(&format!(
        "jwt-public-keys = [\"{}\"]\nmax-connections = 1",
        public.display()
    ));
    let claims = json!({"sub": "gina", "exp": common::unix_now() + 600, "rooms": ["x"]});
    let signed = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap(),
    )
    .unwrap();
    let (mut gina, welcome) = SignalClient::join_server(http, &signed).await;
    assert_eq!(welcome["user"], "gina");
    gina.join("x", "gina").await;
    // One connection in total: the next gets 503, even from another user.
    let refused = SignalClient::connect_with(http, &format!("token={}", token_for("hal")), &[])
        .await
        .err()
        .expect("over max-connections");
    assert_eq!(refused.status, 503);
    assert!(refused.body.contains("too-many-connections"));
    gina.assert_usable().await;
}
