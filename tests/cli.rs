//! The `icegate` command line as an operator runs it: `check-config` on the
//! shipped config and on every file in tests/data/bad, `credentials`,
//! `--version`, and `run` with the embedded default config. Every child
//! process runs under a deadline and is killed if it overstays.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use stun::agent::TransactionId;
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::error_code::ErrorCodeAttribute;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter, METHOD_ALLOCATE, METHOD_BINDING, Message,
    MessageType, Setter,
};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use turn::proto::PROTO_UDP;
use turn::proto::reqtrans::RequestedTransport;

use common::{Finished, collect, rest_password, text_of, unix_now};

const ICEGATE: &str = env!("CARGO_BIN_EXE_icegate");
/// Commands other than `run` finish at once; beyond this they hang.
const COMMAND_DEADLINE: Duration = Duration::from_secs(10);
/// The longest a STUN exchange may take.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The secret the temp copies of the shipped config read from their secrets-file.
const SECRET: &str = "cli-test-secret-0123456789abcdef";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Runs `icegate args...` to completion, killing it after `COMMAND_DEADLINE`.
fn icegate(args: &[&str]) -> Finished {
    common::run_bounded(Command::new(ICEGATE).args(args), COMMAND_DEADLINE)
}

/// config/icegate.toml as shipped, copied into `dir` with its secrets-file
/// (/etc/icegate/rest-secret) replaced by a file in `dir` holding `SECRET`.
fn shipped_config_copy(dir: &Path) -> PathBuf {
    let shipped =
        std::fs::read_to_string(repo_path("config/icegate.toml")).expect("read shipped config");
    let original = r#"secrets-file = "/etc/icegate/rest-secret""#;
    assert!(
        shipped.contains(original),
        "config/icegate.toml no longer has `{original}`"
    );
    let secrets_file = dir.join("rest-secret");
    std::fs::write(&secrets_file, format!("# made by tests/cli.rs\n{SECRET}\n"))
        .expect("write secrets file");
    let secrets_file = secrets_file.to_str().expect("temp path is UTF-8");
    let copy = dir.join("icegate.toml");
    std::fs::write(
        &copy,
        shipped.replace(original, &format!("secrets-file = {secrets_file:?}")),
    )
    .expect("write config copy");
    copy
}

/// The pretty-printed JSON object at the end of `output`: from the first
/// line that is `{` to the end.
fn trailing_json(output: &str) -> Value {
    let start = output
        .find("\n{\n")
        .map(|i| i + 1)
        .or_else(|| output.starts_with("{\n").then_some(0))
        .unwrap_or_else(|| panic!("no JSON object in:\n{output}"));
    serde_json::from_str(&output[start..])
        .unwrap_or_else(|error| panic!("invalid JSON ({error}) in:\n{output}"))
}

/// The TURN entry of an iceServers object: its URLs, username and credential.
fn turn_entry(servers: &Value) -> (Vec<String>, String, String) {
    let list = servers["iceServers"]
        .as_array()
        .unwrap_or_else(|| panic!("no iceServers array in {servers}"));
    let turn = list
        .iter()
        .find(|server| server.get("username").is_some())
        .unwrap_or_else(|| panic!("no iceServers entry with credentials in {servers}"));
    let urls: Vec<&str> = turn["urls"]
        .as_array()
        .expect("urls is an array")
        .iter()
        .map(|url| url.as_str().expect("url is a string"))
        .collect();
    assert!(
        list.iter()
            .any(|server| server["urls"].as_array().is_some_and(|urls| urls
                .iter()
                .any(|u| u.as_str().is_some_and(|u| u.starts_with("stun:"))))),
        "a stun: URL in {servers}"
    );
    (
        urls.iter().map(|url| (*url).to_owned()).collect(),
        turn["username"].as_str().expect("username").to_owned(),
        turn["credential"].as_str().expect("credential").to_owned(),
    )
}

#[test]
fn check_config_prints_ok_for_the_shipped_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = shipped_config_copy(dir.path());
    let finished = icegate(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(
        finished.status.success(),
        "exit {:?}, stderr:\n{}",
        finished.status.code(),
        finished.stderr
    );
    assert_eq!(finished.stdout, "ok\n");
    assert_eq!(finished.stderr, "");
}

#[test]
fn check_config_exits_78_and_names_every_problem_of_each_bad_config() {
    let dir = repo_path("tests/data/bad");
    let mut configs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read tests/data/bad")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    configs.sort();
    assert!(
        configs.len() >= 20,
        "only {} bad configs found",
        configs.len()
    );
    let mut failures = Vec::new();
    for config in &configs {
        let name = config.file_name().unwrap().to_string_lossy().into_owned();
        let expected_path = config.with_extension("expected");
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|error| panic!("{name} has no .expected file: {error}"));
        let finished = icegate(&["check-config", "--config", config.to_str().unwrap()]);
        if finished.status.code() != Some(78) {
            failures.push(format!(
                "{name}: exit {:?}, not 78; stdout {:?}, stderr {:?}",
                finished.status.code(),
                finished.stdout,
                finished.stderr
            ));
            continue;
        }
        if finished.stdout.contains("ok") {
            failures.push(format!("{name}: stdout says {:?}", finished.stdout));
        }
        for line in expected.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !finished.stderr.contains(line) {
                failures.push(format!(
                    "{name}: stderr lacks {line:?}; it was:\n{}",
                    finished.stderr
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems over {} bad configs:\n{}",
        failures.len(),
        configs.len(),
        failures.join("\n")
    );
}

#[test]
fn check_config_report_ends_with_a_newline() {
    // Otherwise the shell prompt lands on the last problem's line.
    let config = repo_path("tests/data/bad/three-problems.toml");
    let finished = icegate(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(finished.status.code(), Some(78));
    assert!(
        finished.stderr.ends_with('\n'),
        "stderr does not end with a newline: {:?}",
        finished.stderr
    );
}

#[test]
fn credentials_prints_a_rest_username_password_and_ice_servers_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = shipped_config_copy(dir.path());
    let before = unix_now();
    let finished = icegate(&[
        "credentials",
        "--user",
        "alice",
        "--ttl",
        "1h",
        "--config",
        config.to_str().unwrap(),
    ]);
    let after = unix_now();
    assert!(
        finished.status.success(),
        "exit {:?}, stderr:\n{}",
        finished.status.code(),
        finished.stderr
    );
    let field = |name: &str| {
        finished
            .stdout
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no `{name}:` line in:\n{}", finished.stdout))
            .to_owned()
    };
    let username = field("username");
    let password = field("password");
    let (expiry, user) = username
        .split_once(':')
        .unwrap_or_else(|| panic!("username {username:?} is not expiry:user"));
    assert_eq!(user, "alice");
    let expiry: u64 = expiry.parse().expect("expiry is unix seconds");
    assert!(
        (before + 3600..=after + 3600).contains(&expiry),
        "expiry {expiry} is not now + 1h ({before}..={after} + 3600)"
    );
    assert_eq!(
        password,
        rest_password(SECRET, &username),
        "password is base64(HMAC-SHA1(secret from secrets-file, username))"
    );
    assert_eq!(field("ttl"), "3600");

    let servers = trailing_json(&finished.stdout);
    let (turn_urls, json_username, credential) = turn_entry(&servers);
    // The shipped config listens on 3478 over UDP and TCP.
    assert_eq!(turn_urls.len(), 2, "turn URLs {turn_urls:?}");
    for (url, transport) in turn_urls.iter().zip(["udp", "tcp"]) {
        assert!(
            url.starts_with("turn:") && url.ends_with(&format!(":3478?transport={transport}")),
            "turn URL {url:?}"
        );
        assert!(field("uris").contains(url.as_str()));
    }
    assert_eq!(json_username, username);
    assert_eq!(credential, password);
}

#[test]
fn version_flag_prints_the_package_version() {
    let finished = icegate(&["--version"]);
    assert!(finished.status.success());
    assert_eq!(
        finished.stdout.trim(),
        format!("icegate {}", env!("CARGO_PKG_VERSION"))
    );
}

/// A child process killed and reaped when the test ends, however it ends.
struct Daemon {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- icegate stdout ---\n{}\n--- icegate stderr ---\n{}",
                text_of(&self.stdout),
                text_of(&self.stderr)
            );
        }
    }
}

fn build(setters: Vec<Box<dyn Setter>>) -> Message {
    let mut message = Message::new();
    message.build(&setters).expect("build stun message");
    message
}

fn exchange(socket: &UdpSocket, server: SocketAddr, request: &Message) -> Message {
    socket.send_to(&request.raw, server).expect("send");
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no answer from {server} within {READ_TIMEOUT:?}"
        );
        socket.set_read_timeout(Some(left)).expect("read timeout");
        let (len, from) = socket
            .recv_from(&mut buf)
            .unwrap_or_else(|error| panic!("no answer from {server}: {error}"));
        let mut response = Message::new();
        response.raw = buf[..len].to_vec();
        if from == server
            && response.decode().is_ok()
            && response.transaction_id == request.transaction_id
        {
            return response;
        }
    }
}

/// Fails the test, saying how to fix it, when `address` (`kind` "udp" or
/// "tcp") is taken: the embedded default config's listener `what` it.
fn require_free(kind: &str, address: SocketAddr, what: &str) {
    let taken = if kind == "udp" {
        UdpSocket::bind(address).err()
    } else {
        std::net::TcpListener::bind(address).err()
    };
    if let Some(error) = taken {
        panic!(
            "cannot test `icegate run` without --config: {kind} {address}, which its embedded \
             default config {what}, is taken ({error}); stop whatever holds it \
             (`ss -{}lpn 'sport = {}'`) and rerun",
            &kind[..1],
            address.port()
        );
    }
}

#[test]
fn run_without_config_prints_ice_servers_allows_loopback_peers_and_answers_stun_on_3478() {
    let server: SocketAddr = "127.0.0.1:3478".parse().unwrap();
    require_free("udp", server, "binds");
    let demo: SocketAddr = "127.0.0.1:8478".parse().unwrap();
    require_free("tcp", demo, "serves the demo page on");
    require_free(
        "tcp",
        "127.0.0.1:9641".parse().unwrap(),
        "serves the admin API on",
    );
    let mut child = Command::new(ICEGATE)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start icegate run");
    let (stdout, _) = collect(child.stdout.take().expect("piped stdout"));
    let (stderr, _) = collect(child.stderr.take().expect("piped stderr"));
    let mut daemon = Daemon {
        child,
        stdout,
        stderr,
    };
    let deadline = Instant::now() + COMMAND_DEADLINE;
    loop {
        let banner_done = text_of(&daemon.stdout).contains("\n}\n");
        if banner_done && text_of(&daemon.stderr).contains("info ready") {
            break;
        }
        if let Some(status) = daemon.child.try_wait().expect("check icegate") {
            panic!("icegate run exited early with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "no banner and ready line within {COMMAND_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let banner = text_of(&daemon.stdout);
    assert!(
        banner.to_lowercase().contains("allows loopback peers"),
        "the banner says loopback peers are allowed:\n{banner}"
    );
    assert!(
        banner.contains("http://127.0.0.1:8478/?room=demo"),
        "the banner names the demo page:\n{banner}"
    );
    let page = http_get(demo, "/");
    assert!(
        page.starts_with("HTTP/1.1 200"),
        "GET / answers the page:\n{page}"
    );
    assert!(
        page.to_lowercase().contains("content-type: text/html"),
        "{page}"
    );
    let servers = trailing_json(&banner);
    let (turn_urls, username, password) = turn_entry(&servers);
    assert_eq!(turn_urls, ["turn:127.0.0.1:3478?transport=udp"]);
    assert!(username.ends_with(":demo"), "username {username:?}");
    let secret = banner
        .lines()
        .find_map(|line| line.strip_prefix("TURN REST secret for this run: "))
        .unwrap_or_else(|| panic!("no REST secret in the banner:\n{banner}"));
    assert_eq!(password, rest_password(secret, &username));

    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    let binding = build(vec![
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(METHOD_BINDING, CLASS_REQUEST)),
        Box::new(FINGERPRINT),
    ]);
    let response = exchange(&socket, server, &binding);
    assert_eq!(response.typ.class, CLASS_SUCCESS_RESPONSE, "Binding");
    let mut mapped = XorMappedAddress::default();
    mapped.get_from(&response).expect("XOR-MAPPED-ADDRESS");
    assert_eq!(
        SocketAddr::new(mapped.ip, mapped.port),
        socket.local_addr().unwrap()
    );

    // The printed credentials allocate, as pasted into a browser would.
    let allocate = |extra: Vec<Box<dyn Setter>>| {
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            }),
        ];
        setters.extend(extra);
        setters.push(Box::new(FINGERPRINT));
        exchange(&socket, server, &build(setters))
    };
    let challenge = allocate(vec![]);
    let realm = TextAttribute::get_from_as(&challenge, ATTR_REALM).expect("REALM in the 401");
    let nonce = TextAttribute::get_from_as(&challenge, ATTR_NONCE).expect("NONCE in the 401");
    let response = allocate(vec![
        Box::new(TextAttribute::new(ATTR_USERNAME, username.clone())),
        Box::new(realm.clone()),
        Box::new(nonce),
        Box::new(MessageIntegrity::new_long_term_integrity(
            username, realm.text, password,
        )),
    ]);
    let mut code = ErrorCodeAttribute::default();
    assert_eq!(
        response.typ.class,
        CLASS_SUCCESS_RESPONSE,
        "Allocate with the banner's credentials: {}",
        code.get_from(&response)
            .map(|()| code.to_string())
            .unwrap_or_default()
    );
    drop(daemon);
}

/// One HTTP/1.1 GET over a plain TCP connection; the whole response.
fn http_get(address: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    response
}

/// Addresses that are not on the host yet (at boot, before DHCP) still bind
/// (IP_FREEBIND), so icegate listens on every configured address. Nothing
/// is sent to them: the test only starts and stops the daemon.
#[test]
fn listeners_bind_addresses_the_host_does_not_have_yet() {
    let absent = "192.0.2.77"; // TEST-NET-1, on no interface here
    let config = common::TestConfig::default().render()
        + &format!(
            "[[listen]]\naddress = \"{absent}:0\"\ntransport = \"udp\"\n\
             [[listen]]\naddress = \"{absent}:0\"\ntransport = \"tcp\"\n"
        );
    let mut daemon = common::TestDaemon::start(&config);
    for transport in ["udp", "tcp"] {
        let prefix = format!("info listening on {transport} {absent}:");
        assert!(
            daemon.log().lines().any(|line| line.starts_with(&prefix)),
            "no `{prefix}PORT` line; log:\n{}",
            daemon.log()
        );
    }
    daemon.stop();
}

/// A UDP listener binds one socket per CPU with SO_REUSEPORT; a second
/// icegate on a port the first holds must still fail to start, rather than
/// join the first one's sockets and take some of its clients.
#[test]
fn a_second_daemon_on_a_udp_port_in_use_fails_to_start_and_the_first_serves_on() {
    let first = common::TestDaemon::start(&common::TestConfig::default().render());
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("second.toml");
    let text = common::TestConfig::default().render().replacen(
        "address = \"127.0.0.1:0\"",
        &format!("address = \"{}\"", first.udp),
        1,
    );
    std::fs::write(&config, text).expect("write the second config");
    let second = icegate(&["run", "--config", config.to_str().unwrap()]);
    assert!(
        !second.status.success(),
        "a second daemon started on {}: {}{}",
        first.udp,
        second.stdout,
        second.stderr
    );
    assert!(
        second
            .stderr
            .contains(&format!("cannot listen on udp {}", first.udp)),
        "{}",
        second.stderr
    );
    for _ in 0..20 {
        common::stun_client::Client::new(first.udp).assert_binding_works();
    }
}
