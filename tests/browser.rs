//! icegate as a browser uses it: Debian's Chromium (`/usr/bin/chromium`),
//! driven by npm `playwright-core` through `tests/browser/relay.mjs`, opens
//! two RTCPeerConnections in one page with `iceTransportPolicy: "relay"`,
//! connects them through the real daemon, sends DataChannel messages both
//! ways (one of 64 KiB) and reports what `getStats()` selected.
//!
//! Needs `apt-get install chromium libnss3-tools openssl`, Node.js, and
//! `npm ci --prefix tests/browser`. Nothing leaves the machine: Chromium
//! resolves only the test's TURN host name (to 127.0.0.1), and the daemon
//! listens and relays on 127.0.0.1 only. Every child process runs under a
//! deadline; node runs in its own process group, which is killed if anything
//! is left.

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use common::admin::{Scrape, request};
use common::browser::{
    Report, TURN_HOST, assert_relay_pair, certutil, nss_home_trusting, run_script,
};
use common::{PASSWORD, TestCerts, TestConfig, TestDaemon, USER};

/// relay.mjs bounds itself to this (its `--timeout-ms`).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(40);
/// Beyond this the script is stuck (its own watchdog failed): kill it.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(60);
/// How long the gather mode collects candidates and errors.
const GATHER_FOR: Duration = Duration::from_secs(5);
/// The size of the big DataChannel message relay.mjs sends each way.
const BIG_MESSAGE: u64 = 65536;

/// What relay.mjs does.
#[derive(Clone, Copy)]
enum Mode {
    /// Two peers connect and exchange messages.
    Connect,
    /// One peer gathers candidates for `GATHER_FOR`.
    Gather,
}

/// `[{urls, username, credential}]`, as a page passes it to RTCPeerConnection.
fn ice_servers(url: &str, username: &str, credential: &str) -> Value {
    json!([{ "urls": url, "username": username, "credential": credential }])
}

/// Runs relay.mjs with `ice_servers` and Chromium's HOME set to `home`.
fn run_relay(mode: Mode, ice_servers: &Value, home: &Path) -> Report {
    run_relay_with(mode, ice_servers, home, &[])
}

/// [`run_relay`] with more of relay.mjs's options.
fn run_relay_with(mode: Mode, ice_servers: &Value, home: &Path, more: &[(&str, String)]) -> Report {
    let mode = match mode {
        Mode::Connect => "connect",
        Mode::Gather => "gather",
    };
    let args = [
        ("--mode", mode.to_owned()),
        ("--ice-servers", ice_servers.to_string()),
        ("--turn-host", TURN_HOST.to_owned()),
        ("--timeout-ms", SCRIPT_TIMEOUT.as_millis().to_string()),
        ("--gather-ms", GATHER_FOR.as_millis().to_string()),
    ]
    .into_iter()
    .chain(more.iter().cloned())
    .flat_map(|(flag, value)| [flag.to_owned(), value])
    .collect::<Vec<_>>();
    run_script("relay.mjs", &args, home, SCRIPT_DEADLINE)
}

/// The messages `peer` sent must have arrived at `me`, in order and intact,
/// the 64 KiB one among them.
fn assert_received(report: &Report, me: &str, peer: &str) {
    let json = &report.json;
    let sent = json["sent"][peer].as_array().expect("sent messages");
    let received = json["received"][me].as_array().expect("received messages");
    assert!(
        sent.iter()
            .any(|m| m["kind"] == "binary" && m["bytes"] == BIG_MESSAGE),
        "{peer} sent no {BIG_MESSAGE}-byte message:\n{}",
        report.output
    );
    assert_eq!(
        received.len(),
        sent.len(),
        "{me} received {} of the {} messages {peer} sent:\n{}",
        received.len(),
        sent.len(),
        report.output
    );
    for (got, want) in received.iter().zip(sent) {
        for field in ["kind", "text", "bytes", "fnv1a"] {
            assert_eq!(
                got.get(field),
                want.get(field),
                "{me} received {got} where {peer} sent {want}:\n{}",
                report.output
            );
        }
        if got["kind"] == "binary" {
            assert_eq!(
                got["equalsSent"], true,
                "{me} received {peer}'s {} bytes altered:\n{}",
                got["bytes"], report.output
            );
        }
    }
}

/// Both sides' selected candidate pair must be relay-to-relay, the local one
/// allocated from `url` over `relay_protocol`.
fn assert_relayed(report: &Report, url: &str, relay_protocol: &str) {
    for side in ["a", "b"] {
        let pair = &report.json["selected"][side];
        assert_relay_pair(pair, side, url, relay_protocol, &report.output);
    }
}

/// Connects two peers through `url` and checks everything a user would.
fn assert_datachannel_relays(url: &str, relay_protocol: &str, home: &Path) {
    let report = run_relay(Mode::Connect, &ice_servers(url, USER, PASSWORD), home);
    report.expect_success();
    assert_received(&report, "a", "b");
    assert_received(&report, "b", "a");
    assert_relayed(&report, url, relay_protocol);
}

/// Starts a daemon like `common::loopback_config("")`'s with TCP and TLS
/// listeners besides the UDP one, TLS serving a certificate for TURN_HOST
/// from a test CA made in `dir`.
fn start_with_tcp_and_tls(dir: &Path) -> (TestDaemon, TestCerts) {
    let certs = common::make_test_ca_and_cert(dir, TURN_HOST);
    let config = TestConfig {
        tcp: true,
        tls: Some((&certs.cert, &certs.key)),
        ..TestConfig::default()
    };
    (TestDaemon::start(&config.render()), certs)
}

#[test]
fn chromium_relays_datachannel_over_turn_udp() {
    let daemon = TestDaemon::start(&common::loopback_config(""));
    let home = tempfile::tempdir().expect("temp HOME");
    let url = format!("turn:{TURN_HOST}:{}?transport=udp", daemon.udp.port());
    assert_datachannel_relays(&url, "udp", home.path());
}

/// Where the sibling of `a_drained_node_sends_chromium_to_its_sibling...`
/// listens: Chromium refuses a redirect to a loopback address, so the test
/// runs in a network namespace of its own, with this address on a veth.
const SIBLING_IP: &str = "192.0.2.1";
/// Set in the namespace the test re-runs itself in.
const IN_NAMESPACE: &str = "ICEGATE_TEST_IN_NETNS";

/// A drained node hands Chromium to its sibling (300 Try Alternate with
/// ALTERNATE-SERVER): both peers allocate there and connect, relay-only.
#[test]
fn a_drained_node_sends_chromium_to_its_sibling_and_the_call_connects_there() {
    const NAME: &str = "a_drained_node_sends_chromium_to_its_sibling_and_the_call_connects_there";
    if std::env::var_os(IN_NAMESPACE).is_none() {
        let exe = std::env::current_exe().expect("the test binary");
        // A veth pair, not `lo`: Chromium gathers on no network at all when
        // the only interface is a loopback one.
        let setup = format!(
            "ip link set lo up && ip link add v0 type veth peer name v1 && \
             ip addr add {SIBLING_IP}/24 dev v0 && ip link set v0 up && ip link set v1 up && \
             exec \"$0\" \"$@\""
        );
        let ran = std::process::Command::new("unshare")
            .args(["--net", "sh", "-c", &setup])
            .arg(exe)
            .args([NAME, "--exact", "--nocapture"])
            .env(IN_NAMESPACE, "1")
            .output()
            .expect("unshare (util-linux) runs");
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&ran.stdout),
            String::from_utf8_lossy(&ran.stderr)
        );
        assert!(ran.status.success(), "in its namespace:\n{output}");
        assert!(output.contains("1 passed"), "in its namespace:\n{output}");
        return;
    }
    // Both on one address, as behind one NAT: a browser's socket reaches
    // both from one IP, which the nonce for the sibling is bound to.
    let on_sibling_ip = |config: String| {
        config.replacen(
            "address = \"127.0.0.1:0\"",
            &format!("address = \"{SIBLING_IP}:0\""),
            1,
        )
    };
    let sibling = TestDaemon::start(&on_sibling_ip(common::loopback_config("")));
    let drained = TestDaemon::start(&on_sibling_ip(common::loopback_config(&format!(
        "alternate-servers = [\"{}\"]",
        sibling.udp
    ))));
    let answer = request(drained.admin, "POST", "/drain", None, &[]);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let home = tempfile::tempdir().expect("temp HOME");
    let url = format!("turn:{TURN_HOST}:{}?transport=udp", drained.udp.port());
    let rules = [
        format!("MAP {TURN_HOST} {SIBLING_IP}"),
        format!("MAP {TURN_HOST}. {SIBLING_IP}"),
        "MAP * ~NOTFOUND".to_owned(),
        "EXCLUDE localhost".to_owned(),
        "EXCLUDE 127.0.0.1".to_owned(),
    ]
    .join(", ");
    let report = run_relay_with(
        Mode::Connect,
        &ice_servers(&url, USER, PASSWORD),
        home.path(),
        &[("--resolver-rules", rules)],
    );
    report.expect_success();
    assert_received(&report, "a", "b");
    assert_received(&report, "b", "a");
    for side in ["a", "b"] {
        let local = &report.json["selected"][side]["local"];
        assert_eq!(local["candidateType"], "relay", "{}", report.output);
    }
    let created = sibling.log().matches("allocation-created").count();
    assert!(
        created >= 2,
        "the sibling made {created} allocations:\n{}",
        sibling.log()
    );
    assert!(
        !drained.log().contains("allocation-created"),
        "the drained node allocated:\n{}",
        drained.log()
    );
    let redirected =
        Scrape::of(&drained, None).get("icegate_refusals_total", &[("reason", "redirected")]);
    assert!(redirected >= 2.0, "{redirected} Allocates redirected");
}

#[test]
fn chromium_reports_401_for_a_wrong_password() {
    let daemon = TestDaemon::start(&common::loopback_config(""));
    let home = tempfile::tempdir().expect("temp HOME");
    let url = format!("turn:{TURN_HOST}:{}?transport=udp", daemon.udp.port());
    let report = run_relay(
        Mode::Gather,
        &ice_servers(&url, USER, "not-alice-password"),
        home.path(),
    );
    let json = report.expect_success();
    let candidates = json["candidates"].as_array().expect("candidates");
    assert!(
        !candidates
            .iter()
            .any(|c| c.as_str().is_some_and(|c| c.contains(" typ relay "))),
        "a relay candidate despite the wrong password:\n{}",
        report.output
    );
    let errors = json["candidateErrors"].as_array().expect("candidateErrors");
    assert!(
        errors
            .iter()
            .any(|e| e["errorCode"] == 401 && e["url"] == url.as_str()),
        "no icecandidateerror 401 for {url}:\n{}",
        report.output
    );
}

#[test]
fn test_ca_and_nss_db_are_what_chromium_and_rustls_need() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = common::make_test_ca_and_cert(dir.path(), TURN_HOST);
    let (ca, cert) = (certs.ca.to_str().unwrap(), certs.cert.to_str().unwrap());
    for check in [["-verify_hostname", TURN_HOST], ["-verify_ip", "127.0.0.1"]] {
        let args = [
            &["verify", "-CAfile", ca, "-purpose", "sslserver"],
            &check[..],
            &[cert],
        ];
        let verified = common::run_tool("openssl", &args.concat(), dir.path(), "openssl");
        assert!(verified.contains(": OK"), "{verified}");
    }
    let key_pem = std::fs::read_to_string(&certs.key).expect("read key.pem");
    assert!(
        key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "key.pem is not PKCS#8:\n{key_pem}"
    );
    let home = nss_home_trusting(Path::new(ca), dir.path());
    let db = format!("sql:{}", home.join(".pki/nssdb").display());
    let listed = certutil(&["-d", &db, "-L"], dir.path());
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("icegate-test-ca") && l.trim_end().ends_with("C,,")),
        "the CA is not trusted for TLS servers in the NSS DB:\n{listed}"
    );
}

#[test]
fn chromium_relays_datachannel_over_turn_tcp() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (daemon, _certs) = start_with_tcp_and_tls(dir.path());
    let tcp = daemon.tcp.expect("icegate announced its tcp listener");
    let url = format!("turn:{TURN_HOST}:{}?transport=tcp", tcp.port());
    assert_datachannel_relays(&url, "tcp", dir.path());
}

#[test]
fn chromium_relays_datachannel_over_turns_trusting_the_test_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (daemon, certs) = start_with_tcp_and_tls(dir.path());
    let tls = daemon.tls.expect("icegate announced its tls listener");
    let home = nss_home_trusting(&certs.ca, dir.path());
    let url = format!("turns:{TURN_HOST}:{}?transport=tcp", tls.port());
    assert_datachannel_relays(&url, "tls", &home);
}

/// The other side of the test above: without the CA in its NSS DB,
/// Chromium refuses the certificate, so the CA is what made that one pass.
#[test]
fn chromium_refuses_turns_without_the_test_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (daemon, _certs) = start_with_tcp_and_tls(dir.path());
    let tls = daemon.tls.expect("icegate announced its tls listener");
    let url = format!("turns:{TURN_HOST}:{}?transport=tcp", tls.port());
    let report = run_relay(Mode::Gather, &ice_servers(&url, USER, PASSWORD), dir.path());
    let json = report.expect_success();
    assert!(
        json["candidates"].as_array().is_some_and(Vec::is_empty),
        "a candidate through a server whose certificate is not trusted:\n{}",
        report.output
    );
    // Chromium reports a failed TLS handshake as 701 "Failed to establish
    // connection" (seen with Chromium 156 against `openssl s_server`).
    assert!(
        json["candidateErrors"]
            .as_array()
            .is_some_and(|errors| errors.iter().any(|e| e["url"] == url.as_str())),
        "no icecandidateerror for {url}:\n{}",
        report.output
    );
}
