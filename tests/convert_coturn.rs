//! `icegate convert-coturn` as someone moving off coturn runs it: Debian's shipped example
//! `turnserver.conf` and a hand-written one with users, a secret, quotas, denied ranges, a
//! certificate and alternate servers, each converted by the real binary and then passed to
//! its `check-config`; and `check-config` naming icegate's key for a coturn option.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Finished, make_test_ca_and_cert};
use toml::{Table, Value};

const ICEGATE: &str = env!("CARGO_BIN_EXE_icegate");
const COMMAND_DEADLINE: Duration = Duration::from_secs(10);
/// What `apt-get install coturn` ships.
const DEBIAN_EXAMPLE: &str = "/usr/share/doc/coturn/examples/etc/turnserver.conf";

fn icegate(args: &[&str]) -> Finished {
    common::run_bounded(Command::new(ICEGATE).args(args), COMMAND_DEADLINE)
}

/// Converts `coturn_file` and checks the result with `check-config`; the converted text.
fn convert_and_check(coturn_file: &Path, dir: &Path) -> String {
    let converted = icegate(&["convert-coturn", &coturn_file.display().to_string()]);
    assert!(
        converted.status.success(),
        "convert-coturn failed: {}",
        converted.stderr
    );
    let toml_file = dir.join("icegate.toml");
    std::fs::write(&toml_file, &converted.stdout).expect("write the converted file");
    let checked = icegate(&["check-config", "--config", &toml_file.display().to_string()]);
    assert!(
        checked.status.success() && checked.stdout.trim() == "ok",
        "check-config refused the converted file:\n{}\n--- converted:\n{}",
        checked.stderr,
        converted.stdout
    );
    every_setting_names_its_coturn_option(&converted.stdout);
    converted.stdout
}

fn every_setting_names_its_coturn_option(text: &str) {
    for line in text.lines() {
        let setting = !line.is_empty() && !line.starts_with('#') && !line.starts_with('[');
        assert!(
            !setting || line.contains("  # coturn: "),
            "{line:?} names no coturn option"
        );
    }
}

fn table<'t>(root: &'t Table, name: &str) -> &'t Table {
    root.get(name)
        .and_then(Value::as_table)
        .unwrap_or_else(|| panic!("no [{name}]"))
}

fn strings(value: Option<&Value>) -> Vec<&str> {
    value
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn listeners(root: &Table) -> Vec<(String, String)> {
    root.get("listen")
        .and_then(Value::as_array)
        .expect("[[listen]]")
        .iter()
        .map(|l| {
            let get = |key: &str| l.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
            (get("address"), get("transport"))
        })
        .collect()
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

#[test]
fn debians_example_converts_to_a_config_that_loads() {
    let dir = scratch();
    let text = convert_and_check(Path::new(DEBIAN_EXAMPLE), dir.path());
    let root: Table = text.parse().expect("the output is TOML");
    // The example sets no listener: coturn's defaults, without TLS (no certificate).
    assert_eq!(
        listeners(&root),
        [
            ("0.0.0.0:3478".to_owned(), "udp".to_owned()),
            ("0.0.0.0:3478".to_owned(), "tcp".to_owned())
        ]
    );
    // Nor credentials: a fresh REST secret, different each time.
    let secrets = strings(table(&root, "auth").get("secrets"));
    assert_eq!(secrets.len(), 1);
    assert!(secrets[0].len() >= 32, "{secrets:?}");
    // Its active options are accounted for.
    for option in [
        "syslog: icegate logs to the journal",
        "no-rfc5780: icegate does not implement RFC 5780",
        "no-stun-backward-compatibility:",
    ] {
        assert!(text.contains(option), "{option:?} not in\n{text}");
    }
}

/// Every option of the example at once, its comments taken away: whatever coturn takes,
/// the output still loads.
#[test]
fn debians_example_with_every_option_uncommented_still_loads() {
    let dir = scratch();
    let example = std::fs::read_to_string(DEBIAN_EXAMPLE).expect("read the example");
    let uncommented: String = example
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_alphabetic()) => rest,
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let coturn_file = dir.path().join("turnserver.conf");
    std::fs::write(&coturn_file, uncommented).expect("write turnserver.conf");
    let text = convert_and_check(&coturn_file, dir.path());
    let root: Table = text.parse().expect("the output is TOML");
    assert_eq!(
        root.get("realm").and_then(Value::as_str),
        Some("mycompany.org")
    );
    let relay = table(&root, "relay");
    assert_eq!(strings(relay.get("external-addresses")), ["60.70.80.91"]);
    assert!(text.contains("# Unknown lines:\n"), "{text}");
}

#[test]
fn a_hand_written_config_keeps_what_users_care_about() {
    let dir = scratch();
    let certs = make_test_ca_and_cert(dir.path(), "turn.example.org");
    let coturn_file = dir.path().join("turnserver.conf");
    std::fs::write(
        &coturn_file,
        format!(
            "# coturn for turn.example.org\n\
             listening-port=3478\n\
             tls-listening-port=5349\n\
             listening-ip=127.0.0.1\n\
             relay-ip=127.0.0.1\n\
             external-ip=203.0.113.10/127.0.0.1\n\
             min-port=40000\n\
             max-port=40999\n\
             realm=turn.example.org\n\
             fingerprint\n\
             lt-cred-mech\n\
             user=alice:wonderland\n\
             user=bob:0x0123456789abcdef0123456789abcdef\n\
             use-auth-secret\n\
             static-auth-secret=north-pole-0123456789\n\
             total-quota=100\n\
             user-quota=4\n\
             max-bps=125000\n\
             bps-capacity=12500000\n\
             denied-peer-ip=10.0.0.0-10.255.255.255\n\
             denied-peer-ip=192.168.0.0-192.168.255.255\n\
             denied-peer-ip=100.64.0.5-100.64.0.9\n\
             allowed-peer-ip=10.10.0.1\n\
             no-loopback-peers\n\
             cert={}\n\
             --pkey {}\n\
             alternate-server=198.51.100.7\n\
             tls-alternate-server=198.51.100.7:5349\n\
             stale-nonce=900\n\
             max-allocate-lifetime=7200\n\
             no-cli\n\
             web-admin\n\
             what-is-this=42\n",
            certs.cert.display(),
            certs.key.display()
        ),
    )
    .expect("write turnserver.conf");
    let text = convert_and_check(&coturn_file, dir.path());
    let root: Table = text.parse().expect("the output is TOML");

    assert_eq!(
        root.get("realm").and_then(Value::as_str),
        Some("turn.example.org")
    );
    assert_eq!(
        listeners(&root),
        [
            ("127.0.0.1:3478".to_owned(), "udp".to_owned()),
            ("127.0.0.1:3478".to_owned(), "tcp".to_owned()),
            ("127.0.0.1:5349".to_owned(), "tls".to_owned()),
        ]
    );
    let tls = &root["listen"].as_array().expect("listen")[2];
    assert_eq!(
        tls.get("certificate").and_then(Value::as_str),
        Some(certs.cert.to_str().expect("utf-8 path"))
    );

    let relay = table(&root, "relay");
    assert_eq!(strings(relay.get("addresses")), ["127.0.0.1"]);
    assert_eq!(strings(relay.get("external-addresses")), ["203.0.113.10"]);
    assert_eq!(
        relay.get("ports").and_then(Value::as_str),
        Some("40000-40999")
    );
    assert_eq!(
        strings(relay.get("deny-peers")),
        [
            "10.0.0.0/8",
            "192.168.0.0/16",
            "100.64.0.5/32",
            "100.64.0.6/31",
            "100.64.0.8/31"
        ]
    );
    assert_eq!(strings(relay.get("allow-peers")), ["10.10.0.1/32"]);
    assert_eq!(
        relay.get("max-allocations").and_then(Value::as_integer),
        Some(100)
    );
    assert_eq!(
        relay
            .get("max-allocations-per-user")
            .and_then(Value::as_integer),
        Some(4)
    );
    assert_eq!(
        relay.get("max-bps").and_then(Value::as_integer),
        Some(125_000)
    );
    assert_eq!(
        relay.get("bps-capacity").and_then(Value::as_integer),
        Some(12_500_000)
    );
    assert_eq!(
        relay.get("max-lifetime").and_then(Value::as_str),
        Some("7200s")
    );
    assert_eq!(
        strings(relay.get("alternate-servers")),
        ["198.51.100.7:3478"]
    );
    assert_eq!(
        strings(relay.get("alternate-tls-servers")),
        ["198.51.100.7:5349"]
    );

    let auth = table(&root, "auth");
    assert_eq!(strings(auth.get("secrets")), ["north-pole-0123456789"]);
    assert_eq!(
        auth.get("nonce-lifetime").and_then(Value::as_str),
        Some("900s")
    );
    let users: Vec<(&str, Option<&str>, Option<&str>)> = auth
        .get("users")
        .and_then(Value::as_array)
        .expect("[[auth.users]]")
        .iter()
        .map(|u| {
            let get = |key| u.get(key).and_then(Value::as_str);
            (get("name").unwrap_or(""), get("password"), get("key"))
        })
        .collect();
    assert_eq!(
        users,
        [
            ("alice", Some("wonderland"), None),
            ("bob", None, Some("0x0123456789abcdef0123456789abcdef"))
        ]
    );

    for leftover in [
        "#   lt-cred-mech: long-term credentials are icegate's only mechanism",
        "#   no-loopback-peers: icegate refuses loopback peers",
        "#   line 10: fingerprint: ",
        "#   line 31: no-cli: use the [admin] listener",
        "#   line 32: web-admin: ",
        "#   line 33: what-is-this=42: not a coturn option",
    ] {
        assert!(text.contains(leftover), "{leftover:?} not in\n{text}");
    }
}

#[test]
fn an_unreadable_file_is_exit_66() {
    let missing: PathBuf = scratch().path().join("absent.conf");
    let done = icegate(&["convert-coturn", &missing.display().to_string()]);
    assert_eq!(done.status.code(), Some(66), "{}", done.stderr);
    assert!(done.stderr.contains("absent.conf"), "{}", done.stderr);
    assert!(done.stdout.is_empty());
}

#[test]
fn check_config_names_icegates_key_for_coturn_options() {
    let dir = scratch();
    let file = dir.path().join("icegate.toml");
    std::fs::write(
        &file,
        "[[listen]]\naddress = \"127.0.0.1:3478\"\n\
         [relay]\ntotal-quota = 100\nmax-alocations = 5\n\
         [auth]\nsecrets = [\"0123456789abcdef\"]\nstatic-auth-secret = \"x\"\n",
    )
    .expect("write icegate.toml");
    let done = icegate(&["check-config", "--config", &file.display().to_string()]);
    assert_eq!(done.status.code(), Some(78));
    let origin = file.display();
    for want in [
        format!(
            "{origin}:4: relay.total-quota: unknown key; coturn's option, in icegate: \
             [relay] max-allocations"
        ),
        format!("{origin}:5: relay.max-alocations: unknown key; did you mean max-allocations?"),
        format!(
            "{origin}:8: auth.static-auth-secret: unknown key; coturn's option, in icegate: \
             [auth] secrets"
        ),
    ] {
        assert!(
            done.stderr.contains(&want),
            "{want:?} not in\n{}",
            done.stderr
        );
    }
}
