//! The harness every integration test uses: start the real `icegate` binary
//! with a config written to a temp dir, wait for its "ready" line, and stop
//! it (printing its log) when the test ends.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test file uses part of the harness, through `mod common`"
)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rustls::pki_types::pem::PemObject;
use sha1::Sha1;

pub mod admin;
pub mod browser;
pub mod coturn;
pub mod redis;
pub mod signal;
pub mod stun_client;
pub mod turn;

pub const REALM: &str = "test.local";
pub const SECRET: &str = "integration-test-secret";
pub const USER: &str = "alice";
pub const PASSWORD: &str = "alice-password";

/// A config for tests, as TOML text ([`TestConfig::render`]): UDP (and, if
/// asked, TCP and TLS) on ephemeral loopback ports, relays on 127.0.0.1,
/// loopback peers allowed, one static user and one REST secret. Start from
/// `TestConfig::default()` and change what the test needs.
#[derive(Clone, Copy, Debug)]
pub struct TestConfig<'a> {
    /// `[relay] addresses`.
    pub relay_addresses: &'a [&'a str],
    /// Whether `[relay]` allows loopback peers (`allow-peers =
    /// ["127.0.0.0/8"]`); without, the default peer policy applies.
    pub allow_loopback: bool,
    /// Appended verbatim inside `[relay]` (e.g. `max-allocations = 1`).
    pub relay_extra: &'a str,
    /// Keys for a `[connections]` table, one a line; no table if empty.
    pub connections_extra: &'a str,
    /// Appended verbatim inside `[auth]`, after `secrets`.
    pub auth_extra: &'a str,
    /// A `tcp` listener on 127.0.0.1:0 besides the UDP one.
    pub tcp: bool,
    /// A plain `http` listener on 127.0.0.1:0 (for `/ws` and `/ice-servers`).
    pub http: bool,
    /// A `tls` listener on 127.0.0.1:0 with this (certificate, private key).
    pub tls: Option<(&'a Path, &'a Path)>,
    /// The tls listener's `services` (e.g. `["turn", "http"]`); the
    /// default (TURN only) if empty.
    pub tls_services: &'a [&'a str],
    /// `public-host`, the name ICE server URLs carry.
    pub public_host: Option<&'a str>,
    /// More tables (e.g. `[signal]`), appended verbatim at the end.
    pub tables: &'a str,
    /// Keys inside `[admin]`, whose address is 127.0.0.1:0 (e.g. `token = "..."`).
    pub admin_extra: &'a str,
    /// The top-level `shutdown-grace` (e.g. "1s"); the default if None.
    pub shutdown_grace: Option<&'a str>,
    /// The top-level `state-directory`, for state that must outlive one
    /// daemon; if None, [`TestDaemon::start`] gives each daemon its own.
    pub state_directory: Option<&'a Path>,
}

impl Default for TestConfig<'_> {
    fn default() -> Self {
        Self {
            relay_addresses: &["127.0.0.1"],
            allow_loopback: true,
            relay_extra: "",
            connections_extra: "",
            auth_extra: "",
            tcp: false,
            http: false,
            tls: None,
            tls_services: &[],
            public_host: None,
            tables: "",
            admin_extra: "",
            shutdown_grace: None,
            state_directory: None,
        }
    }
}

impl TestConfig<'_> {
    /// The config file's text.
    pub fn render(&self) -> String {
        let listen = |keys: &str| format!("[[listen]]\naddress = \"127.0.0.1:0\"\n{keys}");
        let mut listeners = listen("");
        if self.tcp {
            listeners += &listen("transport = \"tcp\"\n");
        }
        if self.http {
            listeners += &listen("transport = \"http\"\n");
        }
        if let Some((cert, key)) = self.tls {
            let services = if self.tls_services.is_empty() {
                String::new()
            } else {
                format!("services = [{}]\n", quoted_list(self.tls_services))
            };
            listeners += &listen(&format!(
                "transport = \"tls\"\n{services}certificate = \"{}\"\nprivate-key = \"{}\"\n",
                cert.display(),
                key.display()
            ));
        }
        let addresses = quoted_list(self.relay_addresses);
        let public_host = self
            .public_host
            .map(|host| format!("public-host = \"{host}\"\n"))
            .unwrap_or_default();
        let allow_peers = if self.allow_loopback {
            "allow-peers = [\"127.0.0.0/8\"]\n"
        } else {
            ""
        };
        let connections = if self.connections_extra.is_empty() {
            String::new()
        } else {
            format!("[connections]\n{}\n", self.connections_extra)
        };
        let mut shutdown_grace = self
            .shutdown_grace
            .map(|grace| format!("shutdown-grace = \"{grace}\"\n"))
            .unwrap_or_default();
        if let Some(dir) = self.state_directory {
            shutdown_grace += &format!("state-directory = \"{}\"\n", dir.display());
        }
        let Self {
            relay_extra,
            auth_extra,
            tables,
            admin_extra,
            ..
        } = self;
        format!(
            r#"realm = "{REALM}"
{shutdown_grace}{public_host}[log]
level = "debug"
{listeners}[relay]
addresses = [{addresses}]
{allow_peers}{relay_extra}
{connections}[auth]
secrets = ["{SECRET}"]
{auth_extra}
[[auth.users]]
name = "{USER}"
password = "{PASSWORD}"
[admin]
address = "127.0.0.1:0"
{admin_extra}
{tables}"#
        )
    }
}

/// `"a", "b"`, as a TOML list holds strings.
fn quoted_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|item| format!("\"{item}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// [`TestConfig::default`] with `relay_extra` appended inside `[relay]`.
pub fn loopback_config(relay_extra: &str) -> String {
    TestConfig {
        relay_extra,
        ..TestConfig::default()
    }
    .render()
}

pub struct TestDaemon {
    child: Child,
    /// The UDP listener's bound address.
    pub udp: SocketAddr,
    /// The first `tcp` listener's bound address, if the config has one.
    pub tcp: Option<SocketAddr>,
    /// The first `tls` listener's bound address, if the config has one.
    pub tls: Option<SocketAddr>,
    /// The admin listener's bound address.
    pub admin: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl TestDaemon {
    /// Starts icegate with `config` and waits (at most 10 s) until it is
    /// ready. A config without `[admin]` gets one on 127.0.0.1:0, so that
    /// daemons of tests running side by side do not compete for its port.
    pub fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("icegate.toml");
        let config = if config.contains("[admin]") {
            config.to_owned()
        } else {
            format!("{config}\n[admin]\naddress = \"127.0.0.1:0\"\n")
        };
        // Never the system's /var/lib/icegate: a top-level key goes first.
        let config = if config.contains("state-directory") {
            config
        } else {
            let state = dir.path().join("state");
            format!("state-directory = \"{}\"\n{config}", state.display())
        };
        std::fs::write(&config_path, config).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_icegate"))
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start icegate");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (lines_tx, lines_rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line.clone());
                let _ = lines_tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut udp = None;
        let mut tcp = None;
        let mut tls = None;
        let mut admin = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    for (prefix, slot) in [
                        ("info listening on udp ", &mut udp),
                        ("info listening on tcp ", &mut tcp),
                        ("info listening on tls ", &mut tls),
                        ("info listening on admin ", &mut admin),
                    ] {
                        if let Some(addr) = line.strip_prefix(prefix)
                            && slot.is_none()
                        {
                            *slot = Some(addr.trim().parse().expect("listen address"));
                        }
                    }
                    if line.starts_with("info ready") {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "icegate did not become ready; log:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
        }
        Self {
            child,
            udp: udp.expect("icegate announced its udp listener"),
            tcp,
            tls,
            admin: admin.expect("icegate announced its admin listener"),
            log,
            _dir: dir,
            config_path,
        }
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits up to 5 s for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits up to `limit` for a log line containing `needle`, and returns it.
    pub fn wait_for_line(&self, needle: &str, limit: Duration) -> Option<String> {
        wait_for_line_in(&self.log, needle, limit)
    }

    /// The address the daemon announced for `transport` ("http", "tls", ...).
    pub fn listener(&self, transport: &str) -> SocketAddr {
        let prefix = format!("info listening on {transport} ");
        self.log()
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|addr| addr.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{prefix}ADDR` line in the log:\n{}", self.log()))
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `limit` for the daemon to exit on its own.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_within(&mut self.child, limit)
    }

    /// The daemon's process id, e.g. for /proc/PID or `kill`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (a name `kill` knows, e.g. "HUP") to the daemon.
    pub fn signal(&self, signal: &str) {
        let status = run_bounded(
            Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(self.pid().to_string()),
            Duration::from_secs(5),
        )
        .status;
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Stops the daemon with SIGTERM as a service manager would, waits (at
    /// most 5 s) for it to exit, and returns its last line, the tally
    /// `info stopping; refused or dropped: NAME=N ...`.
    pub fn stop(&mut self) -> String {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.is_running() {
            assert!(
                Instant::now() < deadline,
                "icegate still ran 5 s after SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.wait_for_line("info stopping; ", Duration::from_secs(2))
            .unwrap_or_else(|| panic!("no stopping line after SIGTERM; log:\n{}", self.log()))
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- icegate log ---\n{}", self.log());
        }
    }
}

/// Waits up to `limit` until `lines` (a child's output, collected as it
/// comes) has one containing `needle`, and returns it.
pub fn wait_for_line_in(
    lines: &Mutex<Vec<String>>,
    needle: &str,
    limit: Duration,
) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        let found = lines
            .lock()
            .unwrap()
            .iter()
            .find(|line| line.contains(needle))
            .cloned();
        if found.is_some() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// STUN bytes and TURN REST credentials

/// The IPv4 XOR-MAPPED-ADDRESS of a STUN message, if any.
pub fn xor_mapped_address(message: &[u8]) -> Option<SocketAddr> {
    let mut rest = message.get(20..)?;
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + len)?;
        if kind == 0x0020 && len == 8 && value[1] == 0x01 {
            let port = u16::from_be_bytes([value[2], value[3]]) ^ 0x2112;
            let ip: [u8; 4] = std::array::from_fn(|i| value[4 + i] ^ message[4 + i]);
            return Some(SocketAddr::from((ip, port)));
        }
        rest = rest.get(4 + len.next_multiple_of(4)..)?;
    }
    None
}

/// Seconds since the Unix epoch, as TURN REST user names count expiry.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The TURN REST password for `username` (`expiry:user`): base64 of
/// HMAC-SHA1(`secret`, `username`).
pub fn rest_password(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

// ---------------------------------------------------------------------------------------------
// Bounded child processes

/// Collects everything `source` yields, on a thread.
pub fn collect(mut source: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let sink = Arc::new(Mutex::new(Vec::new()));
    let writer = sink.clone();
    let handle = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(len) = source.read(&mut buf) {
            if len == 0 {
                break;
            }
            writer.lock().unwrap().extend_from_slice(&buf[..len]);
        }
    });
    (sink, handle)
}

/// What [`collect`] has collected so far, as text.
pub fn text_of(sink: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&sink.lock().unwrap()).into_owned()
}

/// Waits up to `limit` for `child` to exit; `None` if it still runs then.
pub fn wait_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a bounded command printed and how it ended.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` with stdin closed, to completion, killing it and failing
/// the test (with what it printed) if it runs longer than `limit`.
pub fn run_bounded(command: &mut Command, limit: Duration) -> Finished {
    run(command, limit, false)
}

/// [`run_bounded`] for a command that starts others (node, Chromium and its
/// helpers): it runs in a process group of its own, and whatever is left
/// of that group is killed when it exits or overstays.
pub fn run_bounded_in_group(command: &mut Command, limit: Duration) -> Finished {
    run(command, limit, true)
}

fn run(command: &mut Command, limit: Duration, own_group: bool) -> Finished {
    let description = format!("{command:?}");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if own_group {
        command.process_group(0);
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {description}: {error}"));
    let (stdout, out_reader) = collect(child.stdout.take().expect("piped stdout"));
    let (stderr, err_reader) = collect(child.stderr.take().expect("piped stderr"));
    let status = wait_within(&mut child, limit);
    if own_group {
        kill_group(child.id());
    }
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{description} still ran after {limit:?}; killed it{}\nstdout:\n{}\nstderr:\n{}",
            if own_group {
                " and its process group"
            } else {
                ""
            },
            text_of(&stdout),
            text_of(&stderr)
        )
    };
    out_reader.join().expect("stdout reader");
    err_reader.join().expect("stderr reader");
    Finished {
        status,
        stdout: text_of(&stdout),
        stderr: text_of(&stderr),
    }
}

/// Whether any process is still in process group `pgid`.
fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.filter_map(Result::ok).any(|entry| {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid pgrp ...; comm may hold spaces and parens.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
            .is_some_and(|pgrp| pgrp == pgid.to_string())
    })
}

/// Kills what is left of the process group `pgid` (a child and everything
/// it started).
fn kill_group(pgid: u32) {
    if group_alive(pgid) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `tests/SCRIPT` with python3 and `args` (at most `limit`), failing
/// the test with its output unless it succeeds, and returns the JSON it
/// prints. A script exits 3 when its PyPI `package` is missing.
pub fn python_json(
    script: &str,
    args: &[String],
    limit: Duration,
    package: &str,
) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let done = run_bounded(Command::new("python3").arg(&path).args(args), limit);
    assert_ne!(
        done.status.code(),
        Some(3),
        "{}these tests need {package}: run `python3 -m pip install {package}`",
        done.stderr
    );
    assert!(
        done.status.success(),
        "{script} {} failed ({}):\n{}{}",
        args.join(" "),
        done.status,
        done.stdout,
        done.stderr
    );
    serde_json::from_str(done.stdout.trim())
        .unwrap_or_else(|error| panic!("{script} printed no JSON ({error}):\n{}", done.stdout))
}

/// Runs `program args` in `dir` (at most 20 s), failing the test with its
/// output unless it succeeds, and returns its stdout. `package` is what to
/// install where the program is missing.
pub fn run_tool(program: &str, args: &[&str], dir: &Path, package: &str) -> String {
    let done = run_bounded(
        Command::new(program).args(args).current_dir(dir),
        Duration::from_secs(20),
    );
    assert!(
        done.status.success(),
        "`{program} {}` failed ({}); is {program} installed (`apt-get install {package}`)?\n\
         stdout:\n{}\nstderr:\n{}",
        args.join(" "),
        done.status,
        done.stdout,
        done.stderr
    );
    done.stdout
}

// ---------------------------------------------------------------------------------------------
// Test certificates

/// A test CA and a leaf certificate it signed, as PEM files.
pub struct TestCerts {
    /// The CA certificate, the one clients trust.
    pub ca: PathBuf,
    /// The CA's private key, to sign more leaves ([`TestCerts::issue_leaf`]).
    pub ca_key: PathBuf,
    /// The leaf certificate alone (clients trust the CA itself).
    pub cert: PathBuf,
    /// The leaf's private key, PKCS#8 (`BEGIN PRIVATE KEY`).
    pub key: PathBuf,
}

/// Runs `openssl ARGS` in `dir`, failing the test with its output unless
/// it succeeds. Every argument is a plain word: file names are relative to `dir`.
fn openssl(dir: &Path, args: &str) {
    run_tool(
        "openssl",
        &args.split_whitespace().collect::<Vec<_>>(),
        dir,
        "openssl",
    );
}

/// A test CA and a leaf certificate for `host` (also valid for IP
/// 127.0.0.1) signed by it, made with the openssl CLI in `dir`: EC P-256
/// keys, PEM files, the leaf's key in PKCS#8, as a rustls server loads them.
pub fn make_test_ca_and_cert(dir: &Path, host: &str) -> TestCerts {
    std::fs::write(
        dir.join("ca.cnf"),
        "[req]\n\
         distinguished_name = dn\n\
         prompt = no\n\
         x509_extensions = ca_ext\n\
         [dn]\n\
         CN = icegate test CA\n\
         [ca_ext]\n\
         basicConstraints = critical, CA:TRUE, pathlen:0\n\
         keyUsage = critical, keyCertSign, cRLSign\n\
         subjectKeyIdentifier = hash\n",
    )
    .expect("write ca.cnf");
    openssl(
        dir,
        "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key",
    );
    openssl(
        dir,
        "req -x509 -new -config ca.cnf -key ca.key -days 7 -sha256 -out ca.pem",
    );
    let mut certs = TestCerts {
        ca: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        cert: PathBuf::new(),
        key: PathBuf::new(),
    };
    (certs.cert, certs.key) = certs.issue_leaf(dir, host, "leaf");
    certs
}

impl TestCerts {
    /// Another leaf for `host` (and IP 127.0.0.1) signed by this CA, with a
    /// fresh key: `dir/STEM.pem` and `dir/STEM.key` (PKCS#8).
    pub fn issue_leaf(&self, dir: &Path, host: &str, stem: &str) -> (PathBuf, PathBuf) {
        let ext = format!("{stem}.ext");
        std::fs::write(
            dir.join(&ext),
            format!(
                "basicConstraints = critical, CA:FALSE\n\
                 keyUsage = critical, digitalSignature\n\
                 extendedKeyUsage = serverAuth\n\
                 subjectAltName = DNS:{host}, IP:127.0.0.1\n\
                 subjectKeyIdentifier = hash\n\
                 authorityKeyIdentifier = keyid, issuer\n"
            ),
        )
        .expect("write leaf extensions");
        // Each leaf its own serial, so no cache ever mixes two of them.
        let serial = format!(
            "0x{:x}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos()
        );
        let ca = self.ca.display();
        let ca_key = self.ca_key.display();
        openssl(
            dir,
            &format!("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {stem}.key"),
        );
        openssl(
            dir,
            &format!("req -new -key {stem}.key -subj /CN={host} -out {stem}.csr"),
        );
        openssl(
            dir,
            &format!(
                "x509 -req -in {stem}.csr -CA {ca} -CAkey {ca_key} -set_serial {serial} \
                 -days 7 -sha256 -extfile {ext} -out {stem}.pem"
            ),
        );
        (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        )
    }
}

/// A rustls client (ring provider, TLS 1.2 and 1.3) trusting only `ca`,
/// without session resumption, so that every handshake shows the
/// certificate the server presents now.
pub fn tls_client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_file(ca).expect("read the test CA"))
        .expect("add the test CA");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring does TLS 1.2 and 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}
