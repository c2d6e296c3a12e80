//! coturn's `turnserver.conf` options and what each is in icegate: the one table that both
//! `icegate convert-coturn` and the unknown-key hints of `check-config` read, so that the two
//! never disagree about where an option went.

/// What a coturn option is in icegate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Equivalent {
    /// The icegate key that does what the option does, as `[table] key`.
    Key(&'static str),
    /// Nothing to write: icegate always behaves this way (why).
    Builtin(&'static str),
    /// icegate has nothing like it (why, or what to do instead).
    Missing(&'static str),
}

use Equivalent::{Builtin, Key, Missing};

const DATABASE: Equivalent = Missing("icegate keeps users and secrets in its config file only");
const TLS_TUNING: Equivalent =
    Missing("icegate's TLS settings are fixed (TLS 1.2 and 1.3, rustls)");
const LOGGING: Equivalent = Missing("icegate logs to the journal or stderr (`icegate run --log`)");
const SYSTEMD: Equivalent = Missing("the systemd unit icegate.service does this");
const CLI: Equivalent = Missing("use the [admin] listener and `icegate ctl`");
const NO_RFC5780: Equivalent = Builtin("icegate does not implement RFC 5780");

/// Every coturn option icegate knows of, as spelt in `turnserver.conf` (without `--`).
pub(crate) const COTURN_OPTIONS: &[(&str, Equivalent)] = &[
    ("listening-port", Key("[[listen]] address (the port)")),
    (
        "tls-listening-port",
        Key("[[listen]] address with transport = \"tls\""),
    ),
    (
        "alt-listening-port",
        Key("another [[listen]] address (the port)"),
    ),
    (
        "alt-tls-listening-port",
        Key("another [[listen]] address with transport = \"tls\""),
    ),
    ("listening-ip", Key("[[listen]] address (the IP)")),
    (
        "no-udp",
        Key("[[listen]] transport = \"udp\" (leave the listener out)"),
    ),
    (
        "no-tcp",
        Key("[[listen]] transport = \"tcp\" (leave the listener out)"),
    ),
    (
        "no-tls",
        Key("[[listen]] transport = \"tls\" (leave the listener out)"),
    ),
    ("no-dtls", Builtin("icegate has no DTLS listener")),
    ("relay-ip", Key("[relay] addresses")),
    ("min-port", Key("[relay] ports")),
    ("max-port", Key("[relay] ports")),
    ("external-ip", Key("[relay] external-addresses")),
    ("realm", Key("realm")),
    ("user", Key("[[auth.users]] name, password or key")),
    (
        "lt-cred-mech",
        Builtin("long-term credentials are icegate's only mechanism"),
    ),
    ("use-auth-secret", Key("[auth] secrets")),
    ("static-auth-secret", Key("[auth] secrets")),
    ("total-quota", Key("[relay] max-allocations")),
    ("user-quota", Key("[relay] max-allocations-per-user")),
    ("max-bps", Key("[relay] max-bps")),
    ("bps-capacity", Key("[relay] bps-capacity")),
    ("denied-peer-ip", Key("[relay] deny-peers")),
    ("allowed-peer-ip", Key("[relay] allow-peers")),
    ("allow-loopback-peers", Key("[relay] allow-peers")),
    (
        "no-loopback-peers",
        Builtin("icegate refuses loopback peers unless allow-peers has them"),
    ),
    (
        "no-multicast-peers",
        Builtin("icegate refuses multicast peers unless allow-peers has them"),
    ),
    ("cert", Key("[[listen]] certificate")),
    ("pkey", Key("[[listen]] private-key")),
    ("alternate-server", Key("[relay] alternate-servers")),
    ("tls-alternate-server", Key("[relay] alternate-tls-servers")),
    ("prometheus", Key("[admin] address (GET /metrics)")),
    ("prometheus-port", Key("[admin] address (GET /metrics)")),
    ("stale-nonce", Key("[auth] nonce-lifetime")),
    ("max-allocate-lifetime", Key("[relay] max-lifetime")),
    ("channel-lifetime", Key("[relay] channel-lifetime")),
    ("permission-lifetime", Key("[relay] permission-lifetime")),
    ("verbose", Key("[log] level")),
    ("Verbose", Key("[log] level")),
    ("no-rfc5780", NO_RFC5780),
    ("response-origin-only-with-rfc5780", NO_RFC5780),
    (
        "no-stun-backward-compatibility",
        Builtin("icegate speaks RFC 5389 STUN and later only"),
    ),
    (
        "rest-api-separator",
        Missing("icegate's REST usernames are EXPIRY:NAME, with ':'"),
    ),
    ("no-auth", Missing("icegate always authenticates TURN")),
    ("stun-only", Missing("icegate always relays")),
    (
        "no-stun",
        Missing("icegate always answers STUN Binding requests"),
    ),
    (
        "secure-stun",
        Missing("icegate answers Binding requests without authentication"),
    ),
    (
        "fingerprint",
        Missing("icegate decides on FINGERPRINT itself"),
    ),
    ("server-name", Missing("use realm and public-host")),
    (
        "listening-device",
        Missing("give [[listen]] addresses instead"),
    ),
    ("relay-device", Missing("give [relay] addresses instead")),
    ("aux-server", Missing("icegate does not implement RFC 5780")),
    (
        "udp-self-balance",
        Missing("icegate does not implement RFC 5780"),
    ),
    (
        "tcp-proxy-port",
        Missing("icegate speaks no PROXY protocol on TURN listeners"),
    ),
    ("relay-threads", Missing("icegate sizes its runtime itself")),
    (
        "mobility",
        Missing("icegate does not implement ICE mobility"),
    ),
    ("no-udp-relay", Missing("icegate relays UDP only")),
    (
        "no-tcp-relay",
        Builtin("icegate relays UDP only (no RFC 6062 TCP relay)"),
    ),
    (
        "allocation-default-address-family",
        Missing("icegate relays on the family the client asks"),
    ),
    (
        "keep-address-family",
        Missing("icegate relays on the family the client asks"),
    ),
    (
        "max-allocate-timeout",
        Missing("icegate has no such timeout"),
    ),
    (
        "check-origin-consistency",
        Missing("icegate ignores the ORIGIN attribute"),
    ),
    (
        "no-software-attribute",
        Missing("icegate's SOFTWARE attribute is fixed"),
    ),
    ("prod", Missing("icegate's SOFTWARE attribute is fixed")),
    (
        "no-dynamic-ip-list",
        Missing("icegate's peer lists come from its config file"),
    ),
    ("no-dynamic-realms", Missing("icegate has one realm")),
    ("no-auth-pings", DATABASE),
    ("userdb", DATABASE),
    ("db", DATABASE),
    ("psql-userdb", DATABASE),
    ("sql-userdb", DATABASE),
    ("mysql-userdb", DATABASE),
    ("mongo-userdb", DATABASE),
    ("redis-userdb", DATABASE),
    (
        "redis-statsdb",
        Missing("use the [admin] listener's GET /metrics"),
    ),
    ("secret-key-file", DATABASE),
    (
        "oauth",
        Missing("icegate has no OAuth (RFC 7635) credentials"),
    ),
    (
        "server-relay",
        Missing("icegate never relays to its own addresses"),
    ),
    ("cipher-list", TLS_TUNING),
    ("ec-curve-name", TLS_TUNING),
    ("dh-file", TLS_TUNING),
    ("dh566", TLS_TUNING),
    ("dh1066", TLS_TUNING),
    ("dh2066", TLS_TUNING),
    ("CA-file", TLS_TUNING),
    (
        "pkey-pwd",
        Missing("icegate reads unencrypted PEM keys only"),
    ),
    ("no-tlsv1", TLS_TUNING),
    ("no-tlsv1_1", TLS_TUNING),
    ("no-tlsv1_2", TLS_TUNING),
    (
        "acme-redirect",
        Missing("icegate does not redirect ACME challenges"),
    ),
    ("log-file", LOGGING),
    ("syslog", LOGGING),
    ("syslog-facility", LOGGING),
    ("no-stdout-log", LOGGING),
    ("simple-log", LOGGING),
    ("new-log-timestamp", LOGGING),
    ("new-log-timestamp-format", LOGGING),
    ("log-binding", LOGGING),
    ("pidfile", SYSTEMD),
    ("proc-user", SYSTEMD),
    ("proc-group", SYSTEMD),
    ("daemon", SYSTEMD),
    ("no-cli", CLI),
    ("cli-ip", CLI),
    ("cli-port", CLI),
    ("cli-password", CLI),
    ("cli-max-output-sessions", CLI),
    ("web-admin", CLI),
    ("web-admin-ip", CLI),
    ("web-admin-port", CLI),
    ("web-admin-listen-on-workers", CLI),
    (
        "ne",
        Missing("icegate uses the current network engine only"),
    ),
];

/// What the coturn option `name` (with or without `--`) is in icegate, if it is one.
pub(crate) fn coturn_option(name: &str) -> Option<Equivalent> {
    let name = name.strip_prefix("--").unwrap_or(name);
    COTURN_OPTIONS
        .iter()
        .find(|(option, _)| *option == name)
        .map(|(_, equivalent)| *equivalent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_listed_once() {
        for (i, (name, _)) in COTURN_OPTIONS.iter().enumerate() {
            assert!(
                !COTURN_OPTIONS[..i].iter().any(|(other, _)| other == name),
                "{name} twice"
            );
        }
    }

    #[test]
    fn lookup_takes_the_long_option_form() {
        assert_eq!(
            coturn_option("--total-quota"),
            Some(Key("[relay] max-allocations"))
        );
        assert_eq!(coturn_option("no-such-option"), None);
    }
}
