//! Chromium as the browser tests drive it: Debian's `/usr/bin/chromium`
//! under npm `playwright-core`, through the node scripts in
//! `tests/browser/`, with a fresh HOME whose NSS database may trust the
//! test CA. Each script prints one JSON line, read back as a [`Report`].
//!
//! Needs `apt-get install chromium libnss3-tools openssl`, Node.js, and
//! `npm ci --prefix tests/browser`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The name TURN URLs and pages use; the scripts map it to 127.0.0.1 in
/// Chromium's resolver, and the test certificates are issued for it.
pub const TURN_HOST: &str = "turn.icegate.test";
pub const CHROMIUM: &str = "/usr/bin/chromium";

pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Fails with the way to get what these tests need, where it is missing:
/// they must fail, not pass silently.
pub fn require_browser_tools() {
    let playwright = browser_dir().join("node_modules/playwright-core");
    assert!(
        playwright.is_dir(),
        "{} is missing: run npm ci in tests/browser (`npm ci --prefix tests/browser`)",
        playwright.display()
    );
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: run `apt-get install chromium`"
    );
}

/// Runs NSS's `certutil` with `args` in `dir`; returns what it printed.
pub fn certutil(args: &[&str], dir: &Path) -> String {
    super::run_tool("certutil", args, dir, "libnss3-tools")
}

/// A fresh HOME under `dir` whose NSS database (`.pki/nssdb`, where Chromium
/// on Linux looks) trusts `ca` for TLS servers. Chromium launched with it
/// accepts certificates the CA issued, as a user who imported it would.
pub fn nss_home_trusting(ca: &Path, dir: &Path) -> PathBuf {
    let home = dir.join("home");
    let nssdb = home.join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).expect("create nssdb dir");
    let db = format!("sql:{}", nssdb.display());
    let ca = ca.to_str().expect("utf-8 CA path");
    certutil(&["-d", &db, "-N", "--empty-password"], dir);
    certutil(
        &[
            "-d",
            &db,
            "-A",
            "-t",
            "C,,",
            "-n",
            "icegate-test-ca",
            "-i",
            ca,
        ],
        dir,
    );
    home
}

/// A script's report: its JSON line, and everything it printed.
pub struct Report {
    pub ok: bool,
    pub json: Value,
    pub output: String,
}

impl Report {
    /// The JSON, or a panic with everything the script said.
    pub fn expect_success(&self) -> &Value {
        assert!(self.ok, "the browser script failed:\n{}", self.output);
        &self.json
    }
}

/// Runs `node SCRIPT ARGS` in tests/browser with Chromium's HOME set to
/// `home` (temp files go under it too), killing its process group after
/// `deadline`, and parses the JSON line it prints last.
pub fn run_script(script: &str, args: &[String], home: &Path, deadline: Duration) -> Report {
    require_browser_tools();
    let tmp = home.join("tmp");
    std::fs::create_dir_all(&tmp).expect("create tmp under HOME");
    let mut command = Command::new("node");
    command
        .current_dir(browser_dir())
        .arg(script)
        .args(args)
        .args(["--chromium", CHROMIUM])
        .env("HOME", home)
        .env("TMPDIR", &tmp)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env_remove("DEBUG");
    let started = Instant::now();
    let done = super::run_bounded_in_group(&mut command, deadline);
    eprintln!("{script} took {:?}, {}", started.elapsed(), done.status);
    let output = format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        done.status, done.stdout, done.stderr
    );
    let json = done
        .stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<Value>(line.trim()).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| panic!("{script} printed no JSON line:\n{output}"));
    let ok = done.status.success() && json.get("error").is_none();
    let output = format!(
        "{output}\nreport:\n{}",
        serde_json::to_string_pretty(&json).unwrap_or_default()
    );
    Report { ok, json, output }
}

/// `pair` (a selected candidate pair as the scripts report it, with `local`
/// and `remote` candidates) must be relay-to-relay, the local candidate
/// allocated from `url` over `relay_protocol`. `side` names it in failures,
/// which print `output`.
pub fn assert_relay_pair(pair: &Value, side: &str, url: &str, relay_protocol: &str, output: &str) {
    assert!(
        pair.is_object(),
        "{side} has no selected candidate pair:\n{output}"
    );
    for end in ["local", "remote"] {
        assert_eq!(
            pair[end]["candidateType"], "relay",
            "{side}'s {end} candidate:\n{output}"
        );
    }
    assert_eq!(
        pair["local"]["relayProtocol"], relay_protocol,
        "{side}'s local relayProtocol:\n{output}"
    );
    assert_eq!(
        pair["local"]["url"], url,
        "{side}'s relay candidate came from another server:\n{output}"
    );
}
