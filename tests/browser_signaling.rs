//! icegate's demo page as two people use it: Debian's Chromium, driven by
//! npm `playwright-core` through `tests/browser/signaling.mjs`, opens the
//! page icegate itself serves (`web/index.html` with `web/icegate.js`) in
//! two browser profiles. Both join a room over WebSocket signaling with a
//! JWT, the newer one calls the other, and they chat over a DataChannel
//! relayed by icegate's TURN server with the credentials the signaling
//! `welcome` handed out; the test checks the messages and what `getStats()`
//! selected on each side. Two tests do the same across two icegate nodes
//! sharing one Redis server (`[cluster]`): the pages on different nodes,
//! and a page that resumes its session on the other node.
//!
//! The daemon has one TLS port for TURN and HTTPS (the page, `/ws`) and a
//! UDP port, all on 127.0.0.1; Chromium resolves only the test host (to
//! 127.0.0.1) and trusts the test CA through its NSS database, as a user
//! who imported it would. Every child process runs under a deadline.
//! Needs what tests/browser.rs needs; the cluster tests also need
//! Debian's `redis-server`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use common::browser::{Report, TURN_HOST, assert_relay_pair, nss_home_trusting, run_script};
use common::coturn::{EchoPeer, User, assert_uclient_tally, uclient};
use common::redis::TestRedis;
use common::signal::{JWT_SECRET, token_for};
use common::{TestConfig, TestDaemon};

/// signaling.mjs bounds itself to this (its `--timeout-ms`).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(40);
/// Beyond this the script is stuck (its own watchdog failed): kill it.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(60);
const ROOM: &str = "standup";
/// The JWT `sub` of each page; the welcome's TURN credentials name it.
const USERS: [(&str, &str); 2] = [("a", "alice"), ("b", "bob")];
/// Where to keep a copy of the connected page's screenshot, if set.
const SCREENSHOT_ENV: &str = "ICEGATE_DEMO_SCREENSHOT";

/// A daemon with UDP TURN and one TLS port for TURN and HTTPS (the demo
/// page and signaling), a certificate for TURN_HOST from a test CA, and a
/// HOME for Chromium that trusts the CA. From [`Demo::cluster`], page b
/// goes to a second such daemon, a node of the same cluster.
struct Demo {
    daemon: TestDaemon,
    /// Page b's node. Fields drop in order: the nodes stop before their Redis.
    node_b: Option<TestDaemon>,
    _redis: Option<TestRedis>,
    home: PathBuf,
    ca: PathBuf,
    dir: tempfile::TempDir,
}

/// A demo daemon with the certificate in `certs` and `tables` after
/// `[signal]`'s keys.
fn demo_daemon(certs: &common::TestCerts, tables: &str) -> TestDaemon {
    let signal = format!("[signal]\njwt-secrets = [\"{JWT_SECRET}\"]\n{tables}");
    let config = TestConfig {
        tls: Some((&certs.cert, &certs.key)),
        tls_services: &["turn", "http"],
        public_host: Some(TURN_HOST),
        tables: &signal,
        // coturn 4.6's uclient binds channels in the RFC 5766 range.
        relay_extra: "rfc5766-channel-numbers = true",
        ..TestConfig::default()
    };
    TestDaemon::start(&config.render())
}

impl Demo {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = common::make_test_ca_and_cert(dir.path(), TURN_HOST);
        let daemon = demo_daemon(&certs, "");
        let home = nss_home_trusting(&certs.ca, dir.path());
        Self {
            daemon,
            node_b: None,
            _redis: None,
            home,
            ca: certs.ca,
            dir,
        }
    }

    /// Two nodes, `a` and `b`, sharing one Redis server; besides it they
    /// share only what TestConfig gives every daemon (the TURN REST secret)
    /// and the JWT secret. `signal_extra` goes into both `[signal]` tables.
    fn cluster(signal_extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = common::make_test_ca_and_cert(dir.path(), TURN_HOST);
        let redis = TestRedis::start();
        let node = |name: &str| {
            let cluster = format!(
                "{signal_extra}\n[cluster]\nredis = \"{}\"\nnode-name = \"{name}\"\n",
                redis.url()
            );
            demo_daemon(&certs, &cluster)
        };
        let (daemon, node_b) = (node("a"), node("b"));
        let home = nss_home_trusting(&certs.ca, dir.path());
        Self {
            daemon,
            node_b: Some(node_b),
            _redis: Some(redis),
            home,
            ca: certs.ca,
            dir,
        }
    }

    fn tls_port(&self) -> u16 {
        tls_port(&self.daemon)
    }

    /// The second node of [`Demo::cluster`].
    fn node_b(&self) -> &TestDaemon {
        self.node_b.as_ref().expect("a cluster of two nodes")
    }

    /// Runs signaling.mjs: both pages with `relay=1&turn=TURN`, and `extra`
    /// arguments.
    fn chat(&self, turn: &str, screenshot: &Path, extra: &[&str]) -> Report {
        let args = [
            ("--base", format!("https://{TURN_HOST}:{}", self.tls_port())),
            ("--room", ROOM.to_owned()),
            ("--token-a", token_for(USERS[0].1)),
            ("--token-b", token_for(USERS[1].1)),
            ("--turn", turn.to_owned()),
            ("--relay", "1".to_owned()),
            ("--turn-host", TURN_HOST.to_owned()),
            ("--screenshot", screenshot.display().to_string()),
            ("--timeout-ms", SCRIPT_TIMEOUT.as_millis().to_string()),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_owned(), value])
        .chain(extra.iter().map(|arg| (*arg).to_owned()))
        .collect::<Vec<_>>();
        let report = run_script("signaling.mjs", &args, &self.home, SCRIPT_DEADLINE);
        report.expect_success();
        report
    }
}

/// Where `daemon` serves the demo page (and `/ws`), as signaling.mjs's
/// `--base` and `--base-b` take it.
fn base(daemon: &TestDaemon) -> String {
    format!("https://{TURN_HOST}:{}", tls_port(daemon))
}

fn tls_port(daemon: &TestDaemon) -> u16 {
    daemon
        .tls
        .expect("icegate announced its tls listener")
        .port()
}

fn page<'r>(report: &'r Report, name: &str) -> &'r Value {
    &report.json["pages"][name]
}

/// Each page was welcomed as its token's user, with TURN credentials for
/// that user, and offered its RTCPeerConnection only the TURN URLs of the
/// chosen transport (`wanted(page, url)`).
fn assert_welcomed(report: &Report, wanted: impl Fn(&str, &str) -> bool) {
    for (name, user) in USERS {
        let page = page(report, name);
        let welcome = &page["welcome"];
        assert_eq!(
            welcome["user"], user,
            "{name}'s welcome:\n{}",
            report.output
        );
        let turn = welcome["iceServers"]
            .as_array()
            .and_then(|servers| servers.iter().find(|s| s["username"].is_string()))
            .unwrap_or_else(|| panic!("{name}'s welcome has no TURN server:\n{}", report.output));
        assert!(
            turn["username"]
                .as_str()
                .is_some_and(|u| u.ends_with(&format!(":{user}"))),
            "{name}'s TURN user name is not a REST one for {user}:\n{}",
            report.output
        );
        let used: Vec<&str> = page["iceServersUsed"]
            .as_array()
            .expect("iceServersUsed")
            .iter()
            .flat_map(|urls| urls.as_array().expect("urls"))
            .filter_map(Value::as_str)
            .filter(|url| url.starts_with("turn"))
            .collect();
        assert!(
            !used.is_empty() && used.iter().all(|url| wanted(name, url)),
            "{name} used TURN URLs {used:?}:\n{}",
            report.output
        );
        let errors: Vec<&Value> = page["console"]
            .as_array()
            .expect("console")
            .iter()
            .filter(|line| {
                // A browser asks for /favicon.ico by itself; icegate has none.
                line.as_str().is_some_and(|l| {
                    (l.starts_with("error:") || l.starts_with("pageerror:"))
                        && !l.ends_with("/favicon.ico)")
                })
            })
            .collect();
        assert!(
            errors.is_empty(),
            "{name}'s console has errors {errors:?}:\n{}",
            report.output
        );
        assert!(
            page["status"]["signaling"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("connected as {user}"))),
            "{name}'s status:\n{}",
            report.output
        );
    }
}

/// The two pages called each other and each received the other's message,
/// from the other's peer id, over the DataChannel.
fn assert_chatted(report: &Report) {
    for (me, other) in [("a", "b"), ("b", "a")] {
        let (mine, theirs) = (page(report, me), page(report, other));
        assert!(
            theirs["peer"].is_string() && mine["remotePeer"] == theirs["peer"],
            "{me} talks to {} rather than {other} ({}):\n{}",
            mine["remotePeer"],
            theirs["peer"],
            report.output
        );
        assert_eq!(mine["channel"], "open", "{me}:\n{}", report.output);
        assert_eq!(mine["connection"], "connected", "{me}:\n{}", report.output);
        let expected = json!({ "from": theirs["peer"], "text": format!("hello from {other}") });
        let messages = mine["messages"].as_array().expect("messages");
        assert!(
            messages.contains(&expected),
            "{me} did not receive {expected}:\n{}",
            report.output
        );
        assert!(
            messages.contains(&json!({ "from": "me", "text": format!("hello from {me}") })),
            "{me} did not send its message:\n{}",
            report.output
        );
    }
}

/// Both sides' selected candidate pair is relay-to-relay, the local one
/// allocated from `urls[i]` (page a, page b) over `relay_protocol`, and the
/// page says so.
fn assert_relayed(report: &Report, urls: [&str; 2], relay_protocol: &str) {
    for ((side, _), url) in USERS.into_iter().zip(urls) {
        let page = page(report, side);
        let pair = &page["selected"];
        assert_relay_pair(pair, side, url, relay_protocol, &report.output);
        for end in ["local", "remote"] {
            assert_eq!(
                pair[end]["address"], "127.0.0.1",
                "{side}'s {end} candidate:\n{}",
                report.output
            );
        }
        let shown = page["status"]["local"].as_str().unwrap_or_default();
        assert!(
            shown.starts_with("relay ") && shown.contains(&format!("TURN over {relay_protocol}")),
            "{side}'s status shows {shown:?} for its local candidate:\n{}",
            report.output
        );
    }
}

/// The screenshot is a PNG, kept where SCREENSHOT_ENV says if set.
fn keep_screenshot(path: &Path) {
    let png = std::fs::read(path).expect("read the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
    if let Some(keep) = std::env::var_os(SCREENSHOT_ENV) {
        std::fs::copy(path, keep).expect("copy the screenshot");
    }
}

#[test]
fn two_pages_chat_over_turn_udp_with_credentials_from_the_welcome() {
    let demo = Demo::start();
    let screenshot = demo.dir.path().join("demo.png");
    let report = demo.chat("udp", &screenshot, &[]);
    let url = format!("turn:{TURN_HOST}:{}?transport=udp", demo.daemon.udp.port());
    assert_welcomed(&report, |_, u| {
        u.starts_with("turn:") && u.ends_with("?transport=udp")
    });
    assert_chatted(&report);
    assert_relayed(&report, [&url, &url], "udp");
    keep_screenshot(&screenshot);
}

/// TURN over TLS on the very port that served the page and the WebSocket,
/// then coturn's uclient relaying over TLS on that port too.
#[test]
fn two_pages_chat_over_turn_tls_on_the_signaling_port_that_uclient_shares() {
    let demo = Demo::start();
    let screenshot = demo.dir.path().join("demo.png");
    let report = demo.chat("tls", &screenshot, &[]);
    let url = format!("turns:{TURN_HOST}:{}?transport=tcp", demo.tls_port());
    assert_welcomed(&report, |_, u| u == url);
    assert_chatted(&report);
    assert_relayed(&report, [&url, &url], "tls");

    // And coturn's TURN client on that same port, over TLS.
    let peer = EchoPeer::start();
    let ca = demo.ca.display().to_string();
    let run = uclient(
        demo.daemon.tls.expect("tls listener"),
        User::Static.args(),
        Some(&peer),
        2,
        &["-t", "-S", "-E", &ca],
        Duration::from_secs(45),
    );
    assert_uclient_tally(&run, 2);
}

/// Page a reaches icegate through a proxy that then cuts its connections
/// (TCP resets, no WebSocket close), as a network change would: a's client
/// reconnects by itself, resumes with the same peer id, b never sees it
/// leave, signaling works both ways again, and the call goes on.
#[test]
fn a_page_whose_connection_drops_resumes_its_session() {
    let demo = Demo::start();
    let screenshot = demo.dir.path().join("demo.png");
    let report = demo.chat("udp", &screenshot, &["--resume"]);
    let resume = &report.json["resume"];
    assert!(
        resume["connectionsCut"].as_u64().is_some_and(|n| n >= 1),
        "the proxy cut no WebSocket:\n{}",
        report.output
    );
    let peers = &resume["peersBefore"];
    let (seen_a, seen_b) = (&resume["seen"]["a"], &resume["seen"]["b"]);
    assert_eq!(
        seen_a["welcomes"],
        json!([{ "peer": peers["a"], "resumed": true }]),
        "a was not resumed as the same peer:\n{}",
        report.output
    );
    assert_eq!(
        page(&report, "a")["peer"],
        peers["a"],
        "a's peer id changed:\n{}",
        report.output
    );
    assert_eq!(
        seen_b["peerLeft"],
        json!([]),
        "b saw a leave:\n{}",
        report.output
    );
    assert_eq!(
        seen_b["welcomes"],
        json!([]),
        "b reconnected:\n{}",
        report.output
    );
    for (seen, from, text) in [
        (seen_a, &peers["b"], "b after the cut"),
        (seen_b, &peers["a"], "a after the cut"),
    ] {
        assert_eq!(
            seen["signals"],
            json!([{ "from": from, "data": { "text": text } }]),
            "signals after the resume:\n{}",
            report.output
        );
    }
    assert!(
        page(&report, "a")["status"]["signaling"]
            .as_str()
            .is_some_and(|s| s.ends_with("(resumed)")),
        "a's status:\n{}",
        report.output
    );
    assert_chatted(&report);
}

/// Two nodes of a cluster sharing one Redis: page a signals through node
/// a, page b through node b. b finds a in the room across the nodes and
/// calls it; offer, answer and candidates cross through Redis; each page
/// relays (relay-only) through its own node's TURN server with the
/// credentials its own node's welcome gave, and the two chat.
#[test]
fn two_pages_on_two_cluster_nodes_chat_each_relayed_by_its_own_node() {
    let demo = Demo::cluster("");
    let node_b = demo.node_b();
    let screenshot = demo.dir.path().join("demo.png");
    let report = demo.chat("udp", &screenshot, &["--base-b", &base(node_b)]);
    let url = |node: &TestDaemon| format!("turn:{TURN_HOST}:{}?transport=udp", node.udp.port());
    let urls = [url(&demo.daemon), url(node_b)];
    assert_ne!(urls[0], urls[1], "the two nodes share a UDP port");
    assert_welcomed(&report, |side, u| {
        u == if side == "a" { &urls[0] } else { &urls[1] }
    });
    assert_chatted(&report);
    assert_relayed(&report, [&urls[0], &urls[1]], "udp");
    // Each side's remote candidate is the other's relay address, on the
    // other node.
    for (me, other) in [("a", "b"), ("b", "a")] {
        let (mine, theirs) = (
            &page(&report, me)["selected"],
            &page(&report, other)["selected"],
        );
        assert_eq!(
            mine["remote"]["port"], theirs["local"]["port"],
            "{me}'s remote candidate is not {other}'s relay address:\n{}",
            report.output
        );
    }
    keep_screenshot(&screenshot);
}

/// Both pages on node a, page a through a proxy that cuts its connections
/// and then sends its reconnection to node b: a resumes its session on
/// node b, b (still on node a) never sees it leave, not even once a's old
/// connection's resume grace on node a has run out, and signals cross
/// between the nodes both ways.
#[test]
fn a_page_whose_connection_drops_resumes_its_session_on_the_other_node() {
    let grace = Duration::from_secs(2);
    let demo = Demo::cluster(&format!("resume-grace = \"{}s\"", grace.as_secs()));
    let screenshot = demo.dir.path().join("demo.png");
    let watch = (grace + Duration::from_secs(2)).as_millis().to_string();
    let node_b = base(demo.node_b());
    let report = demo.chat(
        "udp",
        &screenshot,
        &[
            "--resume",
            "--resume-to",
            &node_b,
            "--resume-watch-ms",
            &watch,
        ],
    );
    let resume = &report.json["resume"];
    let ports = &resume["upstreamPorts"];
    let (port_a, port_b) = (demo.tls_port(), tls_port(demo.node_b()));
    assert!(
        resume["connectionsCut"].as_u64().is_some_and(|n| n >= 1)
            && ports["beforeCut"]
                .as_array()
                .is_some_and(|p| { !p.is_empty() && p.iter().all(|port| port == port_a) }),
        "a did not reach node a through the proxy before the cut:\n{}",
        report.output
    );
    assert!(
        ports["afterCut"]
            .as_array()
            .is_some_and(|p| !p.is_empty() && p.iter().all(|port| port == port_b)),
        "a did not reconnect to node b:\n{}",
        report.output
    );
    let peers = &resume["peersBefore"];
    let (seen_a, seen_b) = (&resume["seen"]["a"], &resume["seen"]["b"]);
    assert_eq!(
        seen_a["welcomes"],
        json!([{ "peer": peers["a"], "resumed": true }]),
        "a was not resumed on node b as the same peer:\n{}",
        report.output
    );
    assert_eq!(
        seen_b["peerLeft"],
        json!([]),
        "b saw a leave:\n{}",
        report.output
    );
    for (seen, from, text) in [
        (seen_a, &peers["b"], "b after the cut"),
        (seen_b, &peers["a"], "a after the cut"),
    ] {
        assert_eq!(
            seen["signals"],
            json!([{ "from": from, "data": { "text": text } }]),
            "signals across the nodes after the resume:\n{}",
            report.output
        );
    }
    assert!(
        page(&report, "a")["status"]["signaling"]
            .as_str()
            .is_some_and(|s| s.ends_with("(resumed)")),
        "a's status:\n{}",
        report.output
    );
    assert_chatted(&report);
}
