//! `docs/signaling.md` is the protocol's contract: every example in it is
//! played against the real daemon. Client examples are sent as written;
//! server examples are compared with what the daemon answers, exactly where
//! the scenario makes the values predictable and key by key elsewhere
//! (welcome's token and credentials differ on every run). Every error code in
//! the document's table is provoked, and every limit key it names exists in
//! the shipped config.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use common::TestDaemon;
use common::signal::{JWT_SECRET, SignalClient, signal_config, token, token_for};

/// The document's examples: (section, message heading) → example.
struct Doc {
    examples: BTreeMap<(String, String), Value>,
    error_codes: Vec<String>,
    limit_keys: Vec<String>,
}

fn read_doc() -> Doc {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/signaling.md");
    let text = std::fs::read_to_string(&path).expect("read docs/signaling.md");
    let mut examples = BTreeMap::new();
    let mut error_codes = Vec::new();
    let mut limit_keys = Vec::new();
    let (mut section, mut heading) = (String::new(), String::new());
    let mut block: Option<String> = None;
    for line in text.lines() {
        if let Some(body) = block.as_mut() {
            if line.starts_with("```") {
                let value: Value = serde_json::from_str(body).unwrap_or_else(|e| {
                    panic!("example under {heading} is not JSON ({e}):\n{body}")
                });
                let key = (section.clone(), heading.clone());
                assert!(
                    examples.insert(key, value).is_none(),
                    "two examples under {heading}"
                );
                block = None;
            } else {
                body.push_str(line);
                body.push('\n');
            }
            continue;
        }
        if line == "```json" {
            block = Some(String::new());
        } else if let Some(title) = line.strip_prefix("## ") {
            section = title.to_owned();
        } else if let Some(title) = line.strip_prefix("### ") {
            heading = title.to_owned();
        } else if let Some(row) = line.strip_prefix("| `") {
            let first = row.split('`').next().unwrap_or_default().to_owned();
            match section.as_str() {
                "Server → client" => error_codes.push(first),
                s if s.starts_with("Limits") => {
                    limit_keys.extend(
                        row.split('|')
                            .next()
                            .unwrap_or_default()
                            .split('`')
                            .filter(|k| k.starts_with(char::is_alphabetic))
                            .map(str::to_owned),
                    );
                }
                _ => {}
            }
        }
    }
    Doc {
        examples,
        error_codes,
        limit_keys,
    }
}

impl Doc {
    fn client(&self, message: &str) -> Value {
        self.example("Client → server", message)
    }

    fn server(&self, message: &str) -> Value {
        self.example("Server → client", message)
    }

    fn example(&self, section: &str, message: &str) -> Value {
        self.examples
            .get(&(section.to_owned(), message.to_owned()))
            .unwrap_or_else(|| {
                panic!("docs/signaling.md has no example for {message} in {section}")
            })
            .clone()
    }
}

/// The same keys, recursively, with values of the same JSON type.
fn same_shape(documented: &Value, actual: &Value, path: &str) {
    match (documented, actual) {
        (Value::Object(doc), Value::Object(got)) => {
            let doc_keys: BTreeSet<_> = doc.keys().collect();
            let got_keys: BTreeSet<_> = got.keys().collect();
            assert_eq!(doc_keys, got_keys, "keys of {path}: documented vs sent");
            for (key, value) in doc {
                same_shape(value, &got[key], &format!("{path}.{key}"));
            }
        }
        (Value::Array(doc), Value::Array(got)) => {
            assert_eq!(doc.len(), got.len(), "length of {path}");
            for (i, (d, g)) in doc.iter().zip(got).enumerate() {
                same_shape(d, g, &format!("{path}[{i}]"));
            }
        }
        (d, g) => assert_eq!(
            std::mem::discriminant(d),
            std::mem::discriminant(g),
            "type of {path}: documented {d}, sent {g}"
        ),
    }
}

const LIMITS: &str = "max-peers-per-room = 3\nmax-rooms-per-connection = 2\nmax-message-bytes = 1024\n\
messages-per-second = 20\nmessage-burst = 40\nping-interval = \"1s\"\nresume-grace = \"1s\"\n\
hold-for = \"1s\"";

#[tokio::test]
async fn every_example_in_the_protocol_document_holds() {
    let doc = read_doc();
    let config = signal_config(LIMITS).replace(
        "public-host = \"127.0.0.1\"",
        "public-host = \"turn.example.org\"",
    ) + "[[listen]]\naddress = \"127.0.0.1:0\"\ntransport = \"tcp\"\n";
    let daemon = TestDaemon::start(&config);
    let http = daemon.listener("http");

    // welcome: the same fields; ice_servers with stun, then turn over UDP and TCP.
    let (mut alice, welcome) = SignalClient::join_server(http, &token_for("alice")).await;
    let mut documented = doc.server("welcome");
    // This daemon has no turns: listener; the document's has one.
    documented["ice_servers"][1]["urls"]
        .as_array_mut()
        .unwrap()
        .pop();
    same_shape(&documented, &welcome, "welcome");
    assert_eq!(welcome["user"], "alice");
    assert_eq!(welcome["resume_seconds"], 1);
    assert!(
        welcome["ice_servers"][1]["urls"][0]
            .as_str()
            .unwrap()
            .starts_with("turn:turn.example.org:")
    );

    let (mut bob, _) = SignalClient::join_server(http, &token_for("bob")).await;
    bob.send(json!({"type": "join", "room": "standup", "peer": "bob-phone", "metadata": {"name": "Bob"}})).await;
    bob.expect("joined").await;

    // join → joined, exactly as documented.
    alice.send(doc.client("join")).await;
    assert_eq!(alice.expect("joined").await, doc.server("joined"));
    bob.expect("peer-joined").await;

    // peer-joined, exactly.
    let (mut carol, _) = SignalClient::join_server(http, &token_for("carol")).await;
    carol.send(json!({"type": "join", "room": "standup", "peer": "carol-desk", "metadata": {"name": "Carol"}})).await;
    carol.expect("joined").await;
    assert_eq!(alice.expect("peer-joined").await, doc.server("peer-joined"));
    assert_eq!(bob.expect("peer-joined").await, doc.server("peer-joined"));

    // signal → signal with `from`.
    let sent = doc.client("signal");
    alice.send(sent.clone()).await;
    let received = bob.expect("signal").await;
    // `data` is the application's own: only the envelope is compared.
    let without_data = |mut message: Value| {
        message["data"] = Value::Null;
        message
    };
    same_shape(
        &without_data(doc.server("signal")),
        &without_data(received.clone()),
        "signal",
    );
    assert_eq!(
        received,
        json!({"type": "signal", "room": "standup", "from": "alice-laptop", "data": sent["data"]})
    );

    // broadcast → signal with "broadcast": true to every other peer.
    let sent = doc.client("broadcast");
    alice.send(sent.clone()).await;
    for peer in [&mut bob, &mut carol] {
        let received = peer.expect("signal").await;
        assert_eq!(
            received,
            json!({"type": "signal", "room": "standup", "from": "alice-laptop", "broadcast": true, "data": sent["data"]})
        );
    }
    alice.expect_silence(Duration::from_millis(200)).await;

    // ping → pong, exactly.
    alice.send(doc.client("ping")).await;
    assert_eq!(alice.expect("pong").await, doc.server("pong"));

    // error, exactly: a signal to a room alice is not in.
    alice
        .send(json!({"type": "signal", "id": 12, "room": "lobby", "to": "bob-tablet", "data": {}}))
        .await;
    assert_eq!(alice.expect("error").await, doc.server("error"));

    // expired: a signal held for a peer that never comes (hold-for is 1 s
    // here, 10 s in the document's message).
    alice
        .send(json!({"type": "signal", "id": 13, "room": "standup", "to": "dave", "data": {}}))
        .await;
    let mut want = doc.server("expired");
    want["message"] = json!("dave did not join room standup within 1 s");
    assert_eq!(alice.expect("expired").await, want);

    // peer-left with reason timeout, exactly: bob stops answering pings.
    // (Alice and Carol read meanwhile, so their clients answer theirs.)
    let _stalled = bob.into_inner();
    let (to_alice, to_carol) = tokio::join!(alice.expect("peer-left"), carol.expect("peer-left"));
    assert_eq!(to_alice, doc.server("peer-left"));
    assert_eq!(to_carol, doc.server("peer-left"));

    // leave: the others see peer-left with reason left.
    alice.send(doc.client("leave")).await;
    assert_eq!(
        carol.expect("peer-left").await,
        json!({"type": "peer-left", "room": "standup", "peer": "alice-laptop", "reason": "left"})
    );
    alice.assert_usable().await;

    // The error table, on a daemon with the usable 30 s ping interval.
    let config = signal_config(&LIMITS.replace("ping-interval = \"1s\"", "").replace(
        "hold-for = \"1s\"",
        // A signal to an absent peer is answered at once.
        "hold-for = \"0s\"",
    ));
    let errors = TestDaemon::start(&config);
    provoke_every_error_code(&doc, errors.listener("http")).await;
    every_limit_key_is_in_the_shipped_config(&doc);
}

/// Sends what provokes each code of the document's table and checks the
/// code comes back; a code without a way to provoke it fails the test.
async fn provoke_every_error_code(doc: &Doc, http: std::net::SocketAddr) {
    let (mut a, _) = SignalClient::join_server(http, &token_for("a")).await;
    let (mut b, _) = SignalClient::join_server(http, &token_for("b")).await;
    let (mut c, _) = SignalClient::join_server(http, &token_for("c")).await;
    let (mut d, _) = SignalClient::join_server(http, &token_for("d")).await;
    for (client, peer) in [(&mut a, "a"), (&mut b, "b"), (&mut c, "c")] {
        client.join("full", peer).await;
    }
    let limited = token(JWT_SECRET, "e", 60, Some(&["only-this"]));
    let (mut e, _) = SignalClient::join_server(http, &limited).await;
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(2000));

    let mut provoked = BTreeSet::new();
    for code in &doc.error_codes {
        let (client, frames): (&mut SignalClient, Vec<String>) = match code.as_str() {
            "bad-json" => (&mut d, vec!["{oops".into()]),
            "binary-not-supported" => {
                d.send_binary(&[1, 2, 3]).await;
                (&mut d, vec![])
            }
            "unknown-type" => (&mut d, vec![r#"{"type":"hello"}"#.into()]),
            "missing-field" => (&mut d, vec![r#"{"type":"leave"}"#.into()]),
            "invalid-field" => (&mut d, vec![r#"{"type":"join","room":""}"#.into()]),
            "not-in-room" => (&mut d, vec![r#"{"type":"leave","room":"full"}"#.into()]),
            "peer-not-found" => (
                &mut a,
                vec![r#"{"type":"signal","room":"full","to":"z","data":1}"#.into()],
            ),
            "peer-id-taken" => (
                &mut d,
                vec![
                    r#"{"type":"join","room":"other","peer":"x"}"#.into(),
                    r#"{"type":"join","room":"full","peer":"a"}"#.into(),
                ],
            ),
            "room-not-allowed" => (&mut e, vec![r#"{"type":"join","room":"elsewhere"}"#.into()]),
            "room-full" => (
                &mut d,
                vec![r#"{"type":"join","room":"full","peer":"d"}"#.into()],
            ),
            "too-many-rooms" => (
                &mut a,
                vec![
                    r#"{"type":"join","room":"second"}"#.into(),
                    r#"{"type":"join","room":"third"}"#.into(),
                ],
            ),
            "message-too-large" => (&mut c, vec![big.clone()]),
            "rate-limited" => (&mut b, vec![r#"{"type":"ping"}"#.into(); 45]),
            "already-joined" => (&mut c, vec![r#"{"type":"join","room":"full"}"#.into()]),
            // Needs two nodes and a Redis that goes away: tests/cluster.rs.
            "undeliverable" => continue,
            other => {
                panic!("the document lists error code {other}, which this test cannot provoke")
            }
        };
        for frame in frames {
            client.send_text(&frame).await;
        }
        loop {
            let message = client
                .next()
                .await
                .unwrap_or_else(|| panic!("closed while provoking {code}"));
            if message["type"] == "error" {
                assert_eq!(message["code"].as_str(), Some(code.as_str()), "{message}");
                break;
            }
        }
        provoked.insert(code.clone());
    }
    assert!(provoked.len() >= 14, "the table lists only {provoked:?}");
}

fn every_limit_key_is_in_the_shipped_config(doc: &Doc) {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/icegate.toml"))
            .unwrap();
    let signal = shipped
        .split("[signal]")
        .nth(1)
        .expect("a [signal] table in config/icegate.toml");
    assert!(
        doc.limit_keys.len() >= 10,
        "limit keys found: {:?}",
        doc.limit_keys
    );
    for key in &doc.limit_keys {
        assert!(
            signal.contains(&format!("\n{key} = ")),
            "the documented limit {key} is not in config/icegate.toml"
        );
    }
}
