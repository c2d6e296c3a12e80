//! The harness every integration test uses: start the real `icegate` binary
//! with a config written to a temp dir, wait for its "ready" line, and stop
//! it (printing its log) when the test ends.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test file uses part of the harness, through `mod common`"
)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const REALM: &str = "test.local";
pub const SECRET: &str = "integration-test-secret";
pub const USER: &str = "alice";
pub const PASSWORD: &str = "alice-password";

/// A config for tests: UDP on an ephemeral loopback port, relays on
/// 127.0.0.1, loopback peers allowed, one static user and one REST secret.
/// `extra` is appended verbatim inside `[relay]` (e.g. `max-allocations = 1`).
pub fn loopback_config(relay_extra: &str) -> String {
    format!(
        r#"realm = "{REALM}"
[log]
level = "debug"
[[listen]]
address = "127.0.0.1:0"
[relay]
addresses = ["127.0.0.1"]
allow-peers = ["127.0.0.0/8"]
{relay_extra}
[auth]
secrets = ["{SECRET}"]
[[auth.users]]
name = "{USER}"
password = "{PASSWORD}"
"#
    )
}

pub struct TestDaemon {
    child: Child,
    /// The UDP listener's bound address.
    pub udp: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl TestDaemon {
    /// Starts icegate with `config` and waits (at most 10 s) until it is ready.
    pub fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("icegate.toml");
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
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("info listening on udp ") {
                        udp = Some(addr.trim().parse().expect("listen address"));
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

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
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
