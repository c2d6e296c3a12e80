//! The signaling dialects of other libraries, as their own users run them:
//! Debian's Chromium, driven by npm `playwright-core` through
//! `tests/browser/dialects.mjs`, loads npm `yjs` with `y-webrtc` and npm
//! `peerjs` (bundled by esbuild from tests/browser/node_modules) into pages
//! of icegate's own origin. The pages fetch ICE servers with TURN
//! credentials from `GET /ice-servers?token=JWT` and go relay-only, so every
//! call crosses icegate's TURN server; signaling goes through icegate's
//! `/y-webrtc` (the y-webrtc signaling server's protocol) and `/peerjs`
//! (the PeerJS server's) endpoints with the JWT in the query.
//!
//! - yjs: two pages edit one shared text; each sees the other's edit, over
//!   a relay-to-relay candidate pair. Once on one daemon, once with each
//!   page on its own node of a cluster sharing one Redis server.
//! - PeerJS: a DataConnection with a message each way; an offer to a peer
//!   that connects two seconds later, held by the server and delivered;
//!   an offer to a peer that never comes, answered by EXPIRE, which PeerJS
//!   reports as `peer-unavailable`.
//!
//! Plain HTTP on 127.0.0.1 (a secure context to Chromium); Chromium
//! resolves no name but the test host. Needs what tests/browser.rs needs;
//! the cluster test also needs Debian's `redis-server`.

mod common;

use std::time::Duration;

use serde_json::Value;

use common::browser::{Report, assert_relay_pair, run_script};
use common::redis::TestRedis;
use common::signal::{JWT_SECRET, token_for};
use common::{TestConfig, TestDaemon};

/// dialects.mjs bounds itself to this (its `--timeout-ms`).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(45);
/// Beyond this the script is stuck (its own watchdog failed): kill it.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(70);
/// How long the server holds a signal for a peer not (yet) connected.
const HOLD_FOR: Duration = Duration::from_secs(3);
/// When the held offer's target connects, after the offer.
const LATE_AFTER: Duration = Duration::from_secs(2);

/// A daemon with UDP TURN and a plain HTTP listener on 127.0.0.1 for the
/// pages' `/ice-servers`, `/y-webrtc` and `/peerjs`, with `[signal]` keys
/// `signal_extra` (and then any more tables) after the JWT secret.
fn dialect_daemon(signal_extra: &str) -> TestDaemon {
    let signal = format!(
        "[signal]\njwt-secrets = [\"{JWT_SECRET}\"]\nhold-for = \"{}s\"\n{signal_extra}\n",
        HOLD_FOR.as_secs()
    );
    let config = TestConfig {
        http: true,
        public_host: Some("127.0.0.1"),
        tables: &signal,
        ..TestConfig::default()
    };
    TestDaemon::start(&config.render())
}

/// Where `daemon` serves its pages, as dialects.mjs's `--base-a` takes it.
fn base(daemon: &TestDaemon) -> String {
    format!("http://{}", daemon.listener("http"))
}

/// `daemon`'s y-webrtc signaling URL (the token goes in the query).
fn y_webrtc_url(daemon: &TestDaemon) -> String {
    format!("ws://{}/y-webrtc", daemon.listener("http"))
}

/// The TURN URL the pages' relay candidates come from.
fn turn_url(daemon: &TestDaemon) -> String {
    format!("turn:127.0.0.1:{}?transport=udp", daemon.udp.port())
}

/// Runs dialects.mjs with `args`, tokens for alice (page a) and bob (b).
fn run_dialects(args: &[(&str, String)]) -> Report {
    let home = tempfile::tempdir().expect("temp dir");
    let args = [
        ("--token-a", token_for("alice")),
        ("--token-b", token_for("bob")),
        ("--timeout-ms", SCRIPT_TIMEOUT.as_millis().to_string()),
    ]
    .iter()
    .chain(args)
    .flat_map(|(flag, value)| [(*flag).to_owned(), value.clone()])
    .collect::<Vec<_>>();
    let report = run_script("dialects.mjs", &args, home.path(), SCRIPT_DEADLINE);
    report.expect_success();
    report
}

/// The signaling frames page `side` sent (`out`) or received (`in`) on
/// `path`, as JSON.
fn frames(report: &Report, side: &str, path: &str, dir: &str) -> Vec<Value> {
    report.json["pages"][side]["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .filter(|f| f["path"] == path && f["dir"] == dir)
        .filter_map(|f| serde_json::from_str(f["data"].as_str()?).ok())
        .collect()
}

/// No page logged an error or threw, but for lines that `expected` accepts.
fn assert_no_page_errors(report: &Report, expected: impl Fn(&str) -> bool) {
    for side in ["a", "b"] {
        let errors: Vec<&Value> = report.json["pages"][side]["console"]
            .as_array()
            .expect("console")
            .iter()
            .filter(|line| {
                line.as_str().is_some_and(|l| {
                    (l.starts_with("error:") || l.starts_with("pageerror:"))
                        && !l.ends_with("/favicon.ico)")
                        && !expected(l)
                })
            })
            .collect();
        assert!(
            errors.is_empty(),
            "{side}'s console has errors {errors:?}:\n{}",
            report.output
        );
    }
}

/// Both pages hold the same text, with both edits, synced over one
/// WebRTC connection each (no BroadcastChannel between the two browser
/// contexts) whose selected pair is relay-to-relay, page a's allocated
/// from `urls[0]` and page b's from `urls[1]`; and the signaling server
/// spoke y-webrtc's protocol.
fn assert_synced(report: &Report, urls: [&str; 2]) {
    let result = &report.json["result"];
    let texts = [result["a"]["text"].as_str(), result["b"]["text"].as_str()];
    assert_eq!(texts[0], texts[1], "the texts differ:\n{}", report.output);
    let text = texts[0].unwrap_or_default();
    assert!(
        text.contains("hello from a") && text.contains("hello from b"),
        "the text {text:?} lacks an edit:\n{}",
        report.output
    );
    for (side, url) in ["a", "b"].into_iter().zip(urls) {
        let state = &result[side];
        assert_eq!(
            state["broadcastPeers"], 0,
            "{side} synced over BroadcastChannel:\n{}",
            report.output
        );
        let peers = state["webrtcPeers"].as_array().expect("webrtcPeers");
        assert!(
            peers.len() == 1 && peers[0]["connected"] == true,
            "{side}'s WebRTC peers {peers:?}:\n{}",
            report.output
        );
        assert!(
            state["signaling"]
                .as_array()
                .is_some_and(|s| s.len() == 1 && s[0]["connected"] == true),
            "{side}'s signaling:\n{}",
            report.output
        );
        let pairs = state["pairs"].as_array().expect("pairs");
        assert_eq!(pairs.len(), 1, "{side}'s pairs:\n{}", report.output);
        assert_relay_pair(&pairs[0]["pair"], side, url, "udp", &report.output);

        // y-webrtc's protocol: the page subscribed to the room and
        // published; what the server passed on came as `publish` messages
        // on the topic, counted in `clients`.
        let sent = frames(report, side, "/y-webrtc", "out");
        assert!(
            sent.iter().any(|m| m["type"] == "subscribe"
                && m["topics"]
                    .as_array()
                    .is_some_and(|t| t.contains(&Value::from("dialects")))),
            "{side} did not subscribe:\n{}",
            report.output
        );
        let got = frames(report, side, "/y-webrtc", "in");
        assert!(
            got.iter().any(|m| m["type"] == "publish"
                && m["topic"] == "dialects"
                && m["clients"].as_u64().is_some_and(|n| n >= 1)),
            "{side} got no publish with `clients` from the server:\n{}",
            report.output
        );
    }
    assert_no_page_errors(report, |_| false);
}

#[test]
fn yjs_documents_sync_through_y_webrtc_signaling_and_a_turn_relay() {
    let daemon = dialect_daemon("");
    let report = run_dialects(&[
        ("--scenario", "yjs".to_owned()),
        ("--base-a", base(&daemon)),
        ("--ws-a", y_webrtc_url(&daemon)),
    ]);
    let url = turn_url(&daemon);
    assert_synced(&report, [&url, &url]);
}

/// Two nodes sharing one Redis server, page a's y-webrtc signaling on node
/// a and page b's on node b: what each publishes reaches the other's
/// subscribers across the nodes, and each page relays through its own
/// node's TURN server.
#[test]
fn yjs_pages_on_two_cluster_nodes_sync_each_relayed_by_its_own_node() {
    let redis = TestRedis::start();
    let node = |name: &str| {
        dialect_daemon(&format!(
            "[cluster]\nredis = \"{}\"\nnode-name = \"{name}\"\n",
            redis.url()
        ))
    };
    let (node_a, node_b) = (node("a"), node("b"));
    let report = run_dialects(&[
        ("--scenario", "yjs".to_owned()),
        ("--base-a", base(&node_a)),
        ("--base-b", base(&node_b)),
        ("--ws-a", y_webrtc_url(&node_a)),
        ("--ws-b", y_webrtc_url(&node_b)),
    ]);
    let urls = [turn_url(&node_a), turn_url(&node_b)];
    assert_ne!(urls[0], urls[1], "the two nodes share a UDP port");
    assert_synced(&report, [&urls[0], &urls[1]]);
    // Each side's remote candidate is the other's relay address.
    let pair = |side: &str| &report.json["result"][side]["pairs"][0]["pair"];
    for (me, other) in [("a", "b"), ("b", "a")] {
        assert_eq!(
            pair(me)["remote"]["port"],
            pair(other)["local"]["port"],
            "{me}'s remote candidate is not {other}'s relay address:\n{}",
            report.output
        );
    }
    drop((node_a, node_b));
    drop(redis);
}

/// PeerJS as its users call it: a DataConnection relayed by TURN with a
/// message each way; an offer to a peer that connects later, held and
/// then delivered; and an offer to a peer that never comes, expired.
#[test]
fn peerjs_connects_relayed_delivers_a_held_offer_and_expires_one_to_nobody() {
    let daemon = dialect_daemon("");
    let report = run_dialects(&[
        ("--scenario", "peerjs".to_owned()),
        ("--base-a", base(&daemon)),
        ("--late-after-ms", LATE_AFTER.as_millis().to_string()),
    ]);
    let result = &report.json["result"];
    let url = turn_url(&daemon);
    let out = &report.output;

    // The direct connection.
    let direct = &result["direct"];
    assert_eq!(direct["a"]["id"], "alice1", "{out}");
    let bob = direct["b"]["id"].as_str().unwrap_or_default();
    assert!(
        !bob.is_empty() && bob != "alice1",
        "b's server-given id {bob:?}:\n{out}"
    );
    for (side, text) in [("a", "hello from b"), ("b", "hello from a")] {
        assert_eq!(
            direct[side]["connection"]["received"],
            serde_json::json!([text]),
            "{side}'s messages:\n{out}"
        );
        assert_relay_pair(&direct[side]["pair"], side, &url, "udp", out);
    }

    // The held offer: late1 connected LATE_AFTER after b's offer, got it,
    // and the two talked.
    let held = &result["held"];
    assert!(
        held["lateOpenedMs"]
            .as_u64()
            .is_some_and(|ms| Duration::from_millis(ms) >= LATE_AFTER),
        "late1 opened too early:\n{out}"
    );
    assert_eq!(
        held["late"]["received"],
        serde_json::json!(["b to late1"]),
        "{out}"
    );
    assert_eq!(
        held["b"]["received"],
        serde_json::json!(["late1 to b"]),
        "{out}"
    );
    let errors = report.json["pages"]["b"]["peerErrors"]
        .as_array()
        .expect("peerErrors");
    assert!(
        !errors
            .iter()
            .any(|e| e["message"].as_str().is_some_and(|m| m.contains("late1"))),
        "b got an error about late1:\n{out}"
    );

    // The offer to nobody: EXPIRE after the hold, peer-unavailable.
    let expired = &result["expired"];
    assert_eq!(expired["error"]["type"], "peer-unavailable", "{out}");
    let after = Duration::from_millis(expired["afterMs"].as_u64().unwrap_or_default());
    assert!(
        after >= HOLD_FOR - Duration::from_millis(500) && after < HOLD_FOR + Duration::from_secs(5),
        "peer-unavailable came {after:?} after the offer, for a hold of {HOLD_FOR:?}:\n{out}"
    );
    let expire = frames(&report, "b", "/peerjs/peerjs", "in");
    assert!(
        expire
            .iter()
            .any(|m| m["type"] == "EXPIRE" && m["src"] == "ghost1"),
        "b got no EXPIRE from ghost1:\n{out}"
    );
    for side in ["a", "b"] {
        assert!(
            frames(&report, side, "/peerjs/peerjs", "in")
                .iter()
                .any(|m| m["type"] == "OPEN"),
            "{side} got no OPEN:\n{out}"
        );
    }
    // PeerJS logs the peer-unavailable error it reports for ghost1.
    assert_no_page_errors(&report, |line| line.contains("ghost1"));
}
