//! The `[relay]` table: where relay sockets bind, which peers they may reach, and how long
//! allocations, permissions and channels last.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use ipnet::IpNet;

use super::rate::ByteRate;
use super::scalars::PortRange;
use super::walk::{Ctx, Item, Section, values};

const DEFAULT_PORTS: PortRange = PortRange {
    low: 49152,
    high: 65535,
};
const DEFAULT_MAX_ALLOCATIONS: u32 = 10_000;
const DEFAULT_MAX_ALLOCATIONS_PER_USER: u32 = 50;
/// A browser permits each remote candidate's address, a handful per peer
/// connection; 64 leaves room for a client that talks to a dozen peers over
/// one allocation, while bounding what one client can make the server hold
/// and the expiry timer walk. coturn has no such cap.
const DEFAULT_MAX_PERMISSIONS_PER_ALLOCATION: u32 = 64;
/// Browsers bind one channel per peer they relay to; same reasoning.
const DEFAULT_MAX_CHANNELS_PER_ALLOCATION: u32 = 64;
const PERMISSIONS_PER_ALLOCATION: RangeInclusive<u32> = 1..=65536;
/// RFC 8656 §12 gives 0x1000 channel numbers, RFC 5766 0x4000.
const CHANNELS_PER_ALLOCATION: RangeInclusive<u32> = 1..=0x4000;
/// Peer connections of one TCP allocation (RFC 6062), waiting or carrying
/// data: each holds two sockets (the peer's and the client's data connection).
const DEFAULT_MAX_TCP_CONNECTIONS_PER_ALLOCATION: u32 = 32;
const TCP_CONNECTIONS_PER_ALLOCATION: RangeInclusive<u32> = 1..=1024;
// RFC 8656 §3.2, §9 and §12: 600 s allocations, 300 s permissions, 600 s channels.
pub(crate) const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(3600);
const DEFAULT_PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
const DEFAULT_CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// SO_RCVBUF of each relay socket: a burst from a peer waits here for the
/// task that reads it. The kernel caps it at net.core.rmem_max.
const DEFAULT_RECEIVE_BUFFER_BYTES: u32 = 1 << 20;
/// SO_RCVBUF of each UDP listener socket, which every client shares.
const DEFAULT_LISTENER_RECEIVE_BUFFER_BYTES: u32 = 4 << 20;
const BUFFER_BYTES: RangeInclusive<u32> = 4096..=(256 << 20);
/// Each direction of one allocation: 40 Mbit/s carries a call with screen
/// sharing or a dozen received video streams, and keeps one client (or a
/// stolen credential's one allocation) from taking a whole uplink.
const DEFAULT_MAX_BPS: ByteRate = ByteRate(Some(5_000_000));
const RELAY_KEYS: &[&str] = &[
    "addresses",
    "external-addresses",
    "ports",
    "allow-peers",
    "deny-peers",
    "max-allocations",
    "max-allocations-per-user",
    "max-permissions-per-allocation",
    "max-channels-per-allocation",
    "max-tcp-connections-per-allocation",
    "default-lifetime",
    "max-lifetime",
    "permission-lifetime",
    "channel-lifetime",
    "rfc5766-channel-numbers",
    "receive-buffer-bytes",
    "listener-receive-buffer-bytes",
    "max-bps",
    "max-bps-per-user",
    "bps-capacity",
    "alternate-servers",
    "alternate-tls-servers",
    "alternate-domain",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelayConfig {
    /// Where relay sockets bind: at most one address per family, never empty.
    pub(crate) addresses: Vec<IpAddr>,
    /// Advertised relayed addresses behind a 1:1 NAT: at most one per family, each for a family
    /// that `addresses` has.
    pub(crate) external_addresses: Vec<IpAddr>,
    pub(crate) ports: PortRange,
    pub(crate) allow_peers: Vec<IpNet>,
    pub(crate) deny_peers: Vec<IpNet>,
    pub(crate) max_allocations: u32,
    pub(crate) max_allocations_per_user: u32,
    /// Peer addresses one allocation may hold permissions for at once.
    pub(crate) max_permissions_per_allocation: u32,
    /// Channels one allocation may have bound at once.
    pub(crate) max_channels_per_allocation: u32,
    /// Peer connections one TCP allocation may hold at once, connecting,
    /// waiting for ConnectionBind or carrying data.
    pub(crate) max_tcp_connections_per_allocation: u32,
    pub(crate) default_lifetime: Duration,
    /// At least `default_lifetime`.
    pub(crate) max_lifetime: Duration,
    pub(crate) permission_lifetime: Duration,
    pub(crate) channel_lifetime: Duration,
    /// Accept channel numbers 0x5000–0x7FFF as RFC 5766 did (older clients
    /// such as coturn 4.6's turnutils_uclient pick them); RFC 8656 allows 0x4000–0x4FFF.
    pub(crate) rfc5766_channel_numbers: bool,
    /// SO_RCVBUF of each relay socket.
    pub(crate) socket_receive_buffer: usize,
    /// SO_RCVBUF of each UDP listener socket.
    pub(crate) listener_receive_buffer: usize,
    pub(crate) bandwidth: BandwidthCaps,
    pub(crate) alternates: Alternates,
}

/// Sibling nodes that take this node's clients while it drains or is full:
/// an Allocate it cannot take is answered 300 with one of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Alternates {
    /// For clients over UDP and TCP.
    pub(crate) servers: Vec<SocketAddr>,
    /// For clients over TLS.
    pub(crate) tls_servers: Vec<SocketAddr>,
    /// The name the siblings' certificates hold, sent to TLS clients as
    /// ALTERNATE-DOMAIN to check the certificate against.
    pub(crate) domain: Option<String>,
}

/// Bytes per second the relay carries; beyond a cap, datagrams are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BandwidthCaps {
    /// Each direction of each allocation.
    pub(crate) allocation: ByteRate,
    /// Each direction, across all of one user's allocations.
    pub(crate) user: ByteRate,
    /// Both directions of every allocation together; Allocate gets 486 while it is reached.
    pub(crate) node: ByteRate,
}

pub(super) fn read_relay(cx: &mut Ctx<'_>, top: &Section<'_, '_>) -> RelayConfig {
    let relay = top.section(cx, "relay", RELAY_KEYS);

    let addresses = relay.list::<IpAddr>(cx, "addresses", vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]);
    let addresses_key = relay.key("addresses");
    if addresses.ok && addresses.value.is_empty() {
        cx.report(
            &addresses_key,
            addresses.span.as_ref(),
            "expected at least one address, e.g. [\"0.0.0.0\"]",
        );
    }
    one_per_family(cx, &addresses_key, &addresses.value);

    let external = relay.list::<IpAddr>(cx, "external-addresses", Vec::new());
    let external_key = relay.key("external-addresses");
    one_per_family(cx, &external_key, &external.value);
    for (i, item) in external.value.iter().enumerate() {
        let key = format!("{external_key}[{i}]");
        if item.value.is_unspecified() {
            let message = format!(
                "expected an address that peers can reach, got {}",
                item.value
            );
            cx.report(key, item.span.as_ref(), message);
        } else if addresses.ok
            && !addresses
                .value
                .iter()
                .any(|a| a.value.is_ipv4() == item.value.is_ipv4())
        {
            let message = format!(
                "expected {addresses_key} to have an {} address for {} to stand for, it has none",
                family(&item.value),
                item.value
            );
            cx.report(key, item.span.as_ref(), message);
        }
    }

    let ports = relay.get(cx, "ports", DEFAULT_PORTS);
    let allow_peers = relay.list::<IpNet>(cx, "allow-peers", Vec::new());
    let deny_peers = relay.list::<IpNet>(cx, "deny-peers", Vec::new());
    let max_allocations = relay.get(cx, "max-allocations", DEFAULT_MAX_ALLOCATIONS);
    let max_allocations_per_user = relay.get(
        cx,
        "max-allocations-per-user",
        DEFAULT_MAX_ALLOCATIONS_PER_USER,
    );
    let max_permissions_per_allocation = bounded(
        cx,
        &relay,
        "max-permissions-per-allocation",
        DEFAULT_MAX_PERMISSIONS_PER_ALLOCATION,
        PERMISSIONS_PER_ALLOCATION,
        COUNT,
    );
    let max_channels_per_allocation = bounded(
        cx,
        &relay,
        "max-channels-per-allocation",
        DEFAULT_MAX_CHANNELS_PER_ALLOCATION,
        CHANNELS_PER_ALLOCATION,
        COUNT,
    );
    let max_tcp_connections_per_allocation = bounded(
        cx,
        &relay,
        "max-tcp-connections-per-allocation",
        DEFAULT_MAX_TCP_CONNECTIONS_PER_ALLOCATION,
        TCP_CONNECTIONS_PER_ALLOCATION,
        COUNT,
    );
    let default_lifetime = relay.get(cx, "default-lifetime", DEFAULT_LIFETIME);
    let max_lifetime = relay.get(cx, "max-lifetime", DEFAULT_MAX_LIFETIME);
    let permission_lifetime = relay.get(cx, "permission-lifetime", DEFAULT_PERMISSION_LIFETIME);
    let channel_lifetime = relay.get(cx, "channel-lifetime", DEFAULT_CHANNEL_LIFETIME);
    let rfc5766_channel_numbers = relay.get(cx, "rfc5766-channel-numbers", true);
    let buffer = |cx: &mut Ctx<'_>, key: &str, default: u32| {
        bounded(cx, &relay, key, default, BUFFER_BYTES, BYTES) as usize
    };
    let socket_receive_buffer = buffer(cx, "receive-buffer-bytes", DEFAULT_RECEIVE_BUFFER_BYTES);
    let listener_receive_buffer = buffer(
        cx,
        "listener-receive-buffer-bytes",
        DEFAULT_LISTENER_RECEIVE_BUFFER_BYTES,
    );

    let bandwidth = BandwidthCaps {
        allocation: relay.get(cx, "max-bps", DEFAULT_MAX_BPS).value,
        user: relay.get(cx, "max-bps-per-user", ByteRate::UNLIMITED).value,
        node: relay.get(cx, "bps-capacity", ByteRate::UNLIMITED).value,
    };

    let alternates = Alternates {
        servers: alternate_list(cx, &relay, "alternate-servers"),
        tls_servers: alternate_list(cx, &relay, "alternate-tls-servers"),
        domain: relay.opt::<String>(cx, "alternate-domain").value,
    };

    if default_lifetime.ok && max_lifetime.ok && max_lifetime.value < default_lifetime.value {
        // Point at whichever of the two the operator wrote, the maximum first.
        let (key, span, message) = match &max_lifetime.span {
            Some(span) => (
                "max-lifetime",
                Some(span),
                format!(
                    "expected at least relay.default-lifetime ({}), got {}",
                    humantime::format_duration(default_lifetime.value),
                    humantime::format_duration(max_lifetime.value)
                ),
            ),
            None => (
                "default-lifetime",
                default_lifetime.span.as_ref(),
                format!(
                    "expected at most relay.max-lifetime ({}), got {}",
                    humantime::format_duration(max_lifetime.value),
                    humantime::format_duration(default_lifetime.value)
                ),
            ),
        };
        cx.report(relay.key(key), span, message);
    }

    RelayConfig {
        addresses: values(addresses.value),
        external_addresses: values(external.value),
        ports: ports.value,
        allow_peers: values(allow_peers.value),
        deny_peers: values(deny_peers.value),
        max_allocations: max_allocations.value,
        max_allocations_per_user: max_allocations_per_user.value,
        max_permissions_per_allocation,
        max_channels_per_allocation,
        max_tcp_connections_per_allocation,
        default_lifetime: default_lifetime.value,
        max_lifetime: max_lifetime.value,
        permission_lifetime: permission_lifetime.value,
        channel_lifetime: channel_lifetime.value,
        rfc5766_channel_numbers: rfc5766_channel_numbers.value,
        socket_receive_buffer,
        listener_receive_buffer,
        bandwidth,
        alternates,
    }
}

/// Addresses of sibling nodes: each one a client could be sent to.
fn alternate_list(cx: &mut Ctx<'_>, relay: &Section<'_, '_>, name: &str) -> Vec<SocketAddr> {
    let list = relay.list::<SocketAddr>(cx, name, Vec::new());
    let key = relay.key(name);
    for (i, item) in list.value.iter().enumerate() {
        if item.value.ip().is_unspecified() || item.value.port() == 0 {
            let message = format!(
                "expected an address and port clients can reach, got {}",
                item.value
            );
            cx.report(format!("{key}[{i}]"), item.span.as_ref(), message);
        }
    }
    values(list.value)
}

/// How a bounded number is named in an error: ("a size", " bytes").
type Unit = (&'static str, &'static str);
const COUNT: Unit = ("a whole number", "");
const BYTES: Unit = ("a size", " bytes");

/// A number key that must lie in `range`; a problem names the key and its line.
fn bounded(
    cx: &mut Ctx<'_>,
    section: &Section<'_, '_>,
    key: &str,
    default: u32,
    range: RangeInclusive<u32>,
    (what, unit): Unit,
) -> u32 {
    let number = section.get(cx, key, default);
    if number.ok && !range.contains(&number.value) {
        let message = format!(
            "expected {what} from {} to {}{unit}, got {}",
            range.start(),
            range.end(),
            number.value
        );
        cx.report(section.key(key), number.span.as_ref(), message);
    }
    number.value
}

fn family(address: &IpAddr) -> &'static str {
    if address.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Report every address after the first of its family.
fn one_per_family(cx: &mut Ctx<'_>, key: &str, items: &[Item<IpAddr>]) {
    let mut first_v4: Option<IpAddr> = None;
    let mut first_v6: Option<IpAddr> = None;
    for (i, item) in items.iter().enumerate() {
        let first = if item.value.is_ipv4() {
            &mut first_v4
        } else {
            &mut first_v6
        };
        match first {
            Some(first) => {
                let message = format!(
                    "expected at most one {} address, got {first} and {}",
                    family(&item.value),
                    item.value
                );
                cx.report(format!("{key}[{i}]"), item.span.as_ref(), message);
            }
            None => *first = Some(item.value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ByteRate;
    use crate::config::testing::{MINIMAL, parse_err, parse_ok};

    #[test]
    fn relay_address_families() {
        let ok = parse_ok(&format!(
            "{MINIMAL}[relay]\naddresses = [\"0.0.0.0\", \"::\"]\nexternal-addresses = [\"203.0.113.5\", \"2001:db8::5\"]\n"
        ));
        assert_eq!(ok.relay.external_addresses.len(), 2);
        let e = parse_err(&format!(
            "{MINIMAL}[relay]\naddresses = [\"10.0.0.1\", \"10.0.0.2\"]\nexternal-addresses = [\"2001:db8::5\", \"0.0.0.0\"]\n"
        ));
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "relay.addresses[1]",
                "relay.external-addresses[0]",
                "relay.external-addresses[1]"
            ]
        );
    }

    #[test]
    fn bandwidth_caps() {
        let defaults = parse_ok(MINIMAL).relay.bandwidth;
        assert_eq!(defaults.allocation, ByteRate(Some(5_000_000)));
        assert_eq!(
            (defaults.user, defaults.node),
            (ByteRate(None), ByteRate(None))
        );
        let ok = parse_ok(&format!(
            "{MINIMAL}[relay]\nmax-bps = 125000\nmax-bps-per-user = \"2 Mbit/s\"\nbps-capacity = \"1 Gbit/s\"\n"
        ))
        .relay
        .bandwidth;
        assert_eq!(ok.allocation, ByteRate(Some(125_000)));
        assert_eq!(ok.user, ByteRate(Some(250_000)));
        assert_eq!(ok.node, ByteRate(Some(125_000_000)));
        let off = parse_ok(&format!("{MINIMAL}[relay]\nmax-bps = \"unlimited\"\n"));
        assert_eq!(off.relay.bandwidth.allocation, ByteRate::UNLIMITED);
        let e = parse_err(&format!("{MINIMAL}[relay]\nmax-bps = \"40 Mbps\"\n"));
        assert_eq!(e.problems[0].key, "relay.max-bps");
        assert_eq!(e.problems[0].line, Some(6));
        assert!(e.problems[0].message.starts_with("expected a rate like"));
    }

    #[test]
    fn per_allocation_caps() {
        let defaults = parse_ok(MINIMAL);
        assert_eq!(defaults.relay.max_permissions_per_allocation, 64);
        assert_eq!(defaults.relay.max_channels_per_allocation, 64);
        let ok = parse_ok(&format!(
            "{MINIMAL}[relay]\nmax-permissions-per-allocation = 65536\nmax-channels-per-allocation = 1\n"
        ));
        assert_eq!(ok.relay.max_permissions_per_allocation, 65536);
        assert_eq!(ok.relay.max_channels_per_allocation, 1);
        let e = parse_err(&format!(
            "{MINIMAL}[relay]\nmax-permissions-per-allocation = 65537\nmax-channels-per-allocation = 16385\n"
        ));
        let problems: Vec<(&str, Option<usize>, &str)> = e
            .problems
            .iter()
            .map(|p| (p.key.as_str(), p.line, p.message.as_str()))
            .collect();
        assert_eq!(
            problems,
            vec![
                (
                    "relay.max-permissions-per-allocation",
                    Some(6),
                    "expected a whole number from 1 to 65536, got 65537"
                ),
                (
                    "relay.max-channels-per-allocation",
                    Some(7),
                    "expected a whole number from 1 to 16384, got 16385"
                ),
            ]
        );
        let e = parse_err(&format!(
            "{MINIMAL}[relay]\nmax-channels-per-allocation = 0\n"
        ));
        assert_eq!(e.problems[0].key, "relay.max-channels-per-allocation");
        assert_eq!(
            e.problems[0].message,
            "expected a whole number from 1 to 4294967295, got 0"
        );
    }
}
