//! HTTP and HTTPS listeners: `GET /ice-servers` fetched with curl, its
//! credentials used by coturn's uclient against icegate's own TURN, and TURN
//! plus HTTPS on one TLS port.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::coturn::{EchoPeer, assert_uclient_tally, uclient};
use common::{SECRET, TestCerts, TestDaemon, make_test_ca_and_cert, run_bounded};
use serde_json::Value;

const HOST: &str = "turn.icegate.test";
const API_KEY: &str = "api-key-for-the-tests-0123";

/// A config with UDP TURN, a TLS listener serving TURN and HTTP on one
/// port, an HTTPS-only listener and a plain HTTP one, all on ephemeral
/// loopback ports; `http_extra` goes into `[http]`.
fn config(certs: &TestCerts, http_extra: &str) -> String {
    format!(
        r#"realm = "test.local"
public-host = "{HOST}"
[log]
level = "debug"
[[listen]]
address = "127.0.0.1:0"
[[listen]]
address = "127.0.0.1:0"
transport = "tls"
services = ["turn", "http"]
certificate = "{cert}"
private-key = "{key}"
[[listen]]
address = "127.0.0.1:0"
transport = "https"
certificate = "{cert}"
private-key = "{key}"
[[listen]]
address = "127.0.0.1:0"
transport = "http"
[relay]
addresses = ["127.0.0.1"]
allow-peers = ["127.0.0.0/8"]
rfc5766-channel-numbers = true
[auth]
secrets = ["{SECRET}"]
[http]
api-keys = ["{API_KEY}"]
{http_extra}
"#,
        cert = certs.cert.display(),
        key = certs.key.display(),
    )
}

struct Reply {
    status: u16,
    http_version: String,
    body: String,
}

/// Fetches `url` with curl, trusting the test CA and resolving the test
/// host to 127.0.0.1 only (nothing leaves the machine).
fn curl(url: &str, address: SocketAddr, ca: &Path, headers: &[&str], method: &str) -> Reply {
    let mut command = Command::new("curl");
    command
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            "--request",
            method,
        ])
        .arg("--resolve")
        .arg(format!("{HOST}:{}:127.0.0.1", address.port()))
        .arg("--cacert")
        .arg(ca)
        .args(["--write-out", "\n%{http_code} %{http_version}"]);
    for header in headers {
        command.args(["--header", header]);
    }
    let finished = run_bounded(command.arg(url), Duration::from_secs(15));
    assert!(
        finished.status.success(),
        "curl {url} failed: {}",
        finished.stderr
    );
    let (body, trailer) = finished
        .stdout
        .rsplit_once('\n')
        .expect("curl wrote its status line");
    let (status, http_version) = trailer.split_once(' ').expect("code and version");
    Reply {
        status: status.parse().expect("numeric status"),
        http_version: http_version.to_owned(),
        body: body.to_owned(),
    }
}

fn json(reply: &Reply) -> Value {
    serde_json::from_str(&reply.body)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {}", reply.body))
}

/// Checks both answer shapes and returns the TURN username and password.
fn assert_ice_servers(body: &Value, user: &str) -> (String, String) {
    let username = body["username"].as_str().expect("draft field username");
    let password = body["password"].as_str().expect("draft field password");
    let (expiry, name) = username.split_once(':').expect("expiry:user");
    assert_eq!(name, user);
    assert!(expiry.parse::<u64>().is_ok(), "{username}");
    assert_eq!(body["ttl"], 86_400);
    assert_eq!(body["iceTransportPolicy"], "all");
    let servers = body["iceServers"].as_array().expect("iceServers array");
    let turn = servers
        .iter()
        .find(|s| s.get("username").is_some())
        .expect("a TURN entry with credentials");
    assert_eq!(turn["username"], username);
    assert_eq!(turn["credential"], password);
    let mut urls: Vec<&str> = servers
        .iter()
        .flat_map(|s| s["urls"].as_array().expect("urls array"))
        .map(|u| u.as_str().expect("url string"))
        .collect();
    assert!(urls.iter().any(|u| u.starts_with(&format!("stun:{HOST}:"))));
    assert!(
        urls.iter()
            .any(|u| u.starts_with(&format!("turn:{HOST}:")) && u.ends_with("?transport=udp"))
    );
    assert!(
        urls.iter()
            .any(|u| u.starts_with(&format!("turns:{HOST}:")) && u.ends_with("?transport=tcp"))
    );
    let mut uris: Vec<&str> = body["uris"]
        .as_array()
        .expect("draft field uris")
        .iter()
        .map(|u| u.as_str().expect("uri string"))
        .collect();
    urls.sort_unstable();
    uris.sort_unstable();
    assert_eq!(urls, uris, "uris lists the same servers as iceServers");
    (username.to_owned(), password.to_owned())
}

fn minted_credentials(username: &str, password: &str) -> Vec<String> {
    vec!["-u".into(), username.into(), "-w".into(), password.into()]
}

#[test]
fn ice_servers_over_https_carry_credentials_icegate_turn_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_test_ca_and_cert(dir.path(), HOST);
    let daemon = TestDaemon::start(&config(&certs, ""));
    let https = daemon.listener("https");
    let url = format!("https://{HOST}:{}/ice-servers?username=carol", https.port());
    let reply = curl(
        &url,
        https,
        &certs.ca,
        &[&format!("Authorization: Bearer {API_KEY}")],
        "GET",
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (username, password) = assert_ice_servers(&json(&reply), "carol");
    assert!(daemon.wait_for_log("ice-servers client=127.0.0.1 user=carol"));

    // The minted credentials allocate and relay on icegate's own TURN.
    let peer = EchoPeer::start();
    let run = uclient(
        daemon.udp,
        minted_credentials(&username, &password),
        Some(&peer),
        2,
        &["-c"],
        Duration::from_secs(45),
    );
    assert_uclient_tally(&run, 2);
    assert!(daemon.wait_for_log(&format!("allocation-created user={username}")));
}

#[test]
fn ice_servers_without_a_valid_api_key_get_401_and_with_one_in_the_query_200() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_test_ca_and_cert(dir.path(), HOST);
    let daemon = TestDaemon::start(&config(&certs, ""));
    let https = daemon.listener("https");
    let base = format!("https://{HOST}:{}/ice-servers", https.port());
    for headers in [&[][..], &["Authorization: Bearer wrong-key-0123456789"][..]] {
        let reply = curl(&base, https, &certs.ca, headers, "GET");
        assert_eq!(reply.status, 401, "{}", reply.body);
        assert_eq!(json(&reply)["error"]["code"], "unauthorized");
    }
    let wrong_query = curl(&format!("{base}?key=nope"), https, &certs.ca, &[], "GET");
    assert_eq!(wrong_query.status, 401);
    let right_query = curl(
        &format!("{base}?key={API_KEY}"),
        https,
        &certs.ca,
        &[],
        "GET",
    );
    assert_eq!(right_query.status, 200, "{}", right_query.body);
    assert_ice_servers(&json(&right_query), "ice");
    assert!(daemon.wait_for_log("ice-servers-refused client=127.0.0.1 reason=api-key"));
}

#[test]
fn unknown_paths_get_404_and_other_methods_405() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_test_ca_and_cert(dir.path(), HOST);
    let daemon = TestDaemon::start(&config(&certs, ""));
    let https = daemon.listener("https");
    let origin = format!("https://{HOST}:{}", https.port());
    let missing = curl(
        &format!("{origin}/nothing-here"),
        https,
        &certs.ca,
        &[],
        "GET",
    );
    assert_eq!(missing.status, 404);
    assert_eq!(json(&missing)["error"]["code"], "not-found");
    let post = curl(
        &format!("{origin}/ice-servers"),
        https,
        &certs.ca,
        &[],
        "POST",
    );
    assert_eq!(post.status, 405);
}

#[test]
fn turn_over_tls_and_https_share_one_port() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_test_ca_and_cert(dir.path(), HOST);
    let daemon = TestDaemon::start(&config(&certs, ""));
    let shared = daemon.listener("tls");

    // A browser-like client: curl offers ALPN h2 and http/1.1, gets http/1.1.
    let url = format!("https://{HOST}:{}/ice-servers?username=dave", shared.port());
    let reply = curl(
        &url,
        shared,
        &certs.ca,
        &[&format!("Authorization: Bearer {API_KEY}")],
        "GET",
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.http_version, "1.1");
    let (username, password) = assert_ice_servers(&json(&reply), "dave");

    // A TURN client on the very same port: uclient over TLS (`-t -S`).
    let peer = EchoPeer::start();
    let ca = certs.ca.display().to_string();
    let run = uclient(
        shared,
        minted_credentials(&username, &password),
        Some(&peer),
        2,
        &["-t", "-S", "-E", &ca, "-c"],
        Duration::from_secs(45),
    );
    assert_uclient_tally(&run, 2);
}

#[test]
fn plain_http_listener_believes_forwarded_for_only_from_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_test_ca_and_cert(dir.path(), HOST);
    for (trusted, logged) in [
        ("trusted-proxies = [\"127.0.0.1/32\"]", "203.0.113.9"),
        ("", "127.0.0.1"),
    ] {
        let daemon = TestDaemon::start(&config(&certs, trusted));
        let http = daemon.listener("http");
        let url = format!("http://127.0.0.1:{}/ice-servers?username=erin", http.port());
        let reply = curl(
            &url,
            http,
            &certs.ca,
            &[
                &format!("Authorization: Bearer {API_KEY}"),
                "X-Forwarded-For: 203.0.113.9",
            ],
            "GET",
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(
            daemon.wait_for_log(&format!("ice-servers client={logged} user=erin")),
            "with {trusted:?} the client is {logged}:\n{}",
            daemon.log()
        );
    }
}
