use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

use super::{Environment, convert};
use crate::config::{ByteRate, Config, Transport, UserCredential};

const FRESH_SECRET: &str = "fresh-secret-for-the-test-0123456789";

fn tls_loads(_: &Path, _: &Path) -> Result<(), String> {
    Ok(())
}

fn tls_fails(_: &Path, _: &Path) -> Result<(), String> {
    Err("no such file or directory".to_owned())
}

fn converted(text: &str, check_tls: &dyn Fn(&Path, &Path) -> Result<(), String>) -> String {
    let env = Environment {
        source: "turnserver.conf",
        config_dir: Path::new("/etc"),
        fresh_secret: FRESH_SECRET,
        check_tls,
    };
    convert(text, &env)
}

/// The converted text, which must load; certificates are not read (`tls_loads` said yes).
fn loaded(text: &str) -> (String, Config) {
    let toml = converted(text, &tls_loads);
    // The certificate files of the test do not exist: take the tls listeners out to load.
    let without_tls = toml.replace("transport = \"tls\"", "transport = \"tcp\"");
    let without_tls: String = without_tls
        .lines()
        .filter(|l| !l.starts_with("certificate") && !l.starts_with("private-key"))
        .map(|l| format!("{l}\n"))
        .collect();
    match Config::parse(&without_tls, "converted.toml") {
        Ok(config) => (toml, config),
        Err(e) => panic!("{e}\n--- converted:\n{toml}"),
    }
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn an_empty_file_gets_coturns_defaults_and_a_fresh_secret() {
    let (toml, config) = loaded("# nothing\n");
    let listeners: Vec<(String, Transport)> = config
        .listen
        .iter()
        .map(|l| (l.address.to_string(), l.transport))
        .collect();
    assert_eq!(
        listeners,
        [
            ("0.0.0.0:3478".to_owned(), Transport::Udp),
            ("0.0.0.0:3478".to_owned(), Transport::Tcp)
        ]
    );
    assert_eq!(config.auth.secrets, [FRESH_SECRET]);
    assert!(toml.contains("No TLS listener"), "{toml}");
}

#[test]
fn a_full_coturn_file_maps_to_icegates_keys() {
    let (toml, config) = loaded(
        "listening-port=3479\n--tls-listening-port 5350\nlistening-ip=192.0.2.10\n\
         alt-listening-port=3480\nrelay-ip=192.0.2.10\nmin-port=50000\nmax-port=50999\n\
         external-ip=203.0.113.10/192.0.2.10\nrealm=turn.example.org\nlt-cred-mech\n\
         user=alice:wonderland\nuser=bob:0x0123456789abcdef0123456789abcdef\n\
         use-auth-secret\nstatic-auth-secret=0123456789abcdef\ntotal-quota=300\n\
         user-quota=12\nmax-bps=250000\nbps-capacity=0\n\
         denied-peer-ip=10.0.0.0-10.255.255.255\ndenied-peer-ip=192.168.1.5-192.168.1.17\n\
         allowed-peer-ip=10.1.2.3\nallow-loopback-peers\ncert=/etc/ssl/turn.pem\n\
         pkey=/etc/ssl/turn.key\nalternate-server=198.51.100.1\n\
         tls-alternate-server=198.51.100.1:443\nprometheus\nstale-nonce=300\n\
         max-allocate-lifetime=1800\nchannel-lifetime=900\npermission-lifetime=240\n\
         verbose\nno-cli\ncli-password=secret\nfrobnicate=1\nrelay-ip=nope\n",
    );
    let listeners: Vec<(String, Transport)> = config
        .listen
        .iter()
        .map(|l| (l.address.to_string(), l.transport))
        .collect();
    assert_eq!(
        listeners,
        [
            ("192.0.2.10:3479".to_owned(), Transport::Udp),
            ("192.0.2.10:3479".to_owned(), Transport::Tcp),
            ("192.0.2.10:3480".to_owned(), Transport::Udp),
            ("192.0.2.10:3480".to_owned(), Transport::Tcp),
            // tls, made tcp by `loaded`.
            ("192.0.2.10:5350".to_owned(), Transport::Tcp),
        ]
    );
    assert!(
        toml.contains(
            "address = \"192.0.2.10:5350\"  # coturn: listening-ip, tls-listening-port\n\
         transport = \"tls\"  # coturn: listening-ip, tls-listening-port\n\
         certificate = \"/etc/ssl/turn.pem\"  # coturn: cert\n\
         private-key = \"/etc/ssl/turn.key\"  # coturn: pkey\n"
        ),
        "{toml}"
    );
    let relay = &config.relay;
    assert_eq!(relay.addresses, ips(&["192.0.2.10"]));
    assert_eq!(relay.external_addresses, ips(&["203.0.113.10"]));
    assert_eq!((relay.ports.low, relay.ports.high), (50000, 50999));
    assert_eq!(
        relay.deny_peers,
        nets(&[
            "10.0.0.0/8",
            "192.168.1.5/32",
            "192.168.1.6/31",
            "192.168.1.8/29",
            "192.168.1.16/31"
        ])
    );
    assert_eq!(
        relay.allow_peers,
        nets(&["10.1.2.3/32", "127.0.0.0/8", "::1/128"])
    );
    assert_eq!(relay.max_allocations, 300);
    assert_eq!(relay.max_allocations_per_user, 12);
    assert_eq!(relay.bandwidth.allocation, ByteRate(Some(250_000)));
    assert_eq!(relay.bandwidth.node, ByteRate::UNLIMITED);
    assert_eq!(relay.max_lifetime, Duration::from_secs(1800));
    assert_eq!(relay.channel_lifetime, Duration::from_secs(900));
    assert_eq!(relay.permission_lifetime, Duration::from_secs(240));
    assert_eq!(
        relay.alternates.servers,
        ["198.51.100.1:3478".parse::<std::net::SocketAddr>().unwrap()]
    );
    assert_eq!(
        relay.alternates.tls_servers,
        ["198.51.100.1:443".parse::<std::net::SocketAddr>().unwrap()]
    );
    assert!(toml.contains("# coturn: tls-alternate-server"), "{toml}");
    assert_eq!(config.realm, "turn.example.org");
    assert_eq!(config.auth.secrets, ["0123456789abcdef"]);
    assert_eq!(config.auth.nonce_lifetime, Duration::from_secs(300));
    let users: Vec<(&str, bool)> = config
        .auth
        .users
        .iter()
        .map(|u| {
            (
                u.name.as_str(),
                matches!(u.credential, UserCredential::Password(_)),
            )
        })
        .collect();
    assert_eq!(users, [("alice", true), ("bob", false)]);
    assert_eq!(config.admin.address.to_string(), "127.0.0.1:9641");
    assert_eq!(config.log.level, crate::config::LogLevel::Debug);
    for leftover in [
        "  lt-cred-mech: long-term credentials are icegate's only mechanism",
        "  line 33: no-cli: use the [admin] listener",
        "  line 35: frobnicate=1: not a coturn option",
        "  line 36: relay-ip=nope: expected an IP address, got \"nope\"",
    ] {
        assert!(
            toml.contains(&format!("# {leftover}")),
            "{leftover:?} in\n{toml}"
        );
    }
}

#[test]
fn tls_that_does_not_load_is_left_out_with_the_reason() {
    let toml = converted("cert=turn.pem\npkey=turn.key\n", &tls_fails);
    assert!(!toml.contains("\ntransport = \"tls\""), "{toml}");
    assert!(
        toml.contains("(/etc/turn.pem, /etc/turn.key) do not load: no such file"),
        "{toml}"
    );
    Config::parse(&toml, "converted.toml").unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_tls_port_equal_to_the_plain_one_serves_tcp_too() {
    let toml = converted(
        "listening-port=443\ntls-listening-port=443\ncert=a.pem\npkey=a.key\n",
        &tls_loads,
    );
    assert_eq!(
        toml.matches("address = \"0.0.0.0:443\"").count(),
        2,
        "{toml}"
    );
    assert!(toml.contains("transport = \"udp\"") && toml.contains("transport = \"tls\""));
    assert!(!toml.contains("transport = \"tcp\""), "{toml}");
}

#[test]
fn no_listener_left_still_gives_one() {
    let (toml, config) = loaded("no-udp\nno-tcp\nno-tls\n");
    assert_eq!(config.listen.len(), 1);
    assert!(toml.contains("coturn listened on nothing icegate serves"));
}

#[test]
fn an_ipv6_external_address_gets_an_ipv6_relay_address() {
    let (_, config) = loaded("external-ip=2001:db8::1\nexternal-ip=203.0.113.1\n");
    assert_eq!(config.relay.addresses, ips(&["0.0.0.0", "::"]));
    assert_eq!(
        config.relay.external_addresses,
        ips(&["2001:db8::1", "203.0.113.1"])
    );
    let (_, config) = loaded("relay-ip=192.0.2.1\nexternal-ip=2001:db8::1\n");
    assert_eq!(config.relay.addresses, ips(&["192.0.2.1", "::"]));
}

#[test]
fn short_lifetimes_lower_the_default_lifetime_too() {
    let (_, config) = loaded("max-allocate-lifetime=300\n");
    assert_eq!(config.relay.default_lifetime, Duration::from_secs(300));
    assert_eq!(config.relay.max_lifetime, Duration::from_secs(300));
}

#[test]
fn hostile_input_converts_to_a_loadable_file() {
    let text = "realm=a\u{7}b\"c\nuser=n\u{1}:p\"w\\\nuser=x\nfoo\u{0}=bar\r\n--\n=\n\
                denied-peer-ip=-\nexternal-ip=/\nstatic-auth-secret=\"\"\"\"\"\"\"\"\"\n";
    let (toml, _) = loaded(text);
    assert!(toml.contains("\u{FFFD}"), "{toml}");
}

#[test]
fn without_relay_ip_coturn_relayed_from_its_private_and_listening_addresses() {
    let (_, config) = loaded(
        "listening-ip=192.0.2.1\nlistening-ip=2001:db8::1\nexternal-ip=203.0.113.10/192.0.2.1\n",
    );
    assert_eq!(config.relay.addresses, ips(&["192.0.2.1", "2001:db8::1"]));
    assert_eq!(config.relay.external_addresses, ips(&["203.0.113.10"]));
}
