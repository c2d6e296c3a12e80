//! coturn's relay options as `[relay]`: addresses, ports, peers, quotas, rates, lifetimes and
//! alternate servers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::settings::Settings;
use super::writer::{TomlWriter, array, quoted};
use crate::config::DEFAULT_LIFETIME;

/// coturn's relay port range when min-port or max-port is left out.
const COTURN_MIN_PORT: u16 = 49152;
const COTURN_MAX_PORT: u16 = 65535;

/// Writes `[relay]`.
pub(super) fn write_relay(w: &mut TomlWriter, s: &Settings) {
    w.table("[relay]");
    write_addresses(w, s);
    if s.min_port.is_some() || s.max_port.is_some() {
        let low = s.min_port.unwrap_or(COTURN_MIN_PORT);
        let high = s.max_port.unwrap_or(COTURN_MAX_PORT);
        if low <= high {
            w.key(
                "ports",
                quoted(&format!("{low}-{high}")),
                "min-port, max-port",
            );
        } else {
            w.comment(&format!(
                "min-port {low} is above max-port {high}: icegate's default ports apply."
            ));
        }
    }
    write_peers(w, s);
    write_quotas(w, s);
    write_lifetimes(w, s);
    write_alternate_servers(w, s);
}

/// `addresses` and `external-addresses`: at most one of each per family, and an address of
/// each family an external address stands for.
fn write_addresses(w: &mut TomlWriter, s: &Settings) {
    let mut addresses: Vec<IpAddr> = Vec::new();
    let (wanted, from) = if s.relay_ips.is_empty() {
        addresses_without_relay_ip(s)
    } else {
        (s.relay_ips.clone(), "relay-ip")
    };
    for ip in wanted {
        if addresses.iter().any(|a| a.is_ipv4() == ip.is_ipv4()) {
            w.comment(&format!(
                "{from} {ip} left out: icegate relays from one address per family."
            ));
        } else {
            addresses.push(ip);
        }
    }
    let mut external: Vec<IpAddr> = Vec::new();
    for (public, _) in &s.external_ips {
        if external.iter().any(|e| e.is_ipv4() == public.is_ipv4()) {
            w.comment(&format!(
                "external-ip {public} left out: icegate takes one per family."
            ));
            continue;
        }
        external.push(*public);
        if !addresses.iter().any(|a| a.is_ipv4() == public.is_ipv4()) && !addresses.is_empty() {
            addresses.push(unspecified_like(public));
        }
    }
    if !addresses.is_empty() {
        w.key("addresses", array(&addresses), from);
    } else if external.iter().any(IpAddr::is_ipv6) {
        let wildcards = [
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ];
        w.key("addresses", array(&wildcards), "external-ip (its families)");
    }
    if !external.is_empty() {
        w.key("external-addresses", array(&external), "external-ip");
    }
}

/// Without relay-ip, coturn relayed from the private address of each external-ip and, for
/// other families, from the addresses it listened on.
fn addresses_without_relay_ip(s: &Settings) -> (Vec<IpAddr>, &'static str) {
    let mut wanted: Vec<IpAddr> = s
        .external_ips
        .iter()
        .filter_map(|(_, private)| *private)
        .collect();
    let from_external = !wanted.is_empty();
    let mut from_listening = false;
    for ip in s.listening_ips.iter().filter(|ip| !ip.is_unspecified()) {
        if !wanted.iter().any(|w| w.is_ipv4() == ip.is_ipv4()) {
            wanted.push(*ip);
            from_listening = true;
        }
    }
    let from = match (from_external, from_listening) {
        (true, true) => "external-ip (the private address), listening-ip",
        (true, false) => "external-ip (the private address)",
        _ => "listening-ip",
    };
    (wanted, from)
}

fn unspecified_like(ip: &IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// Both coturn and icegate let an allowed address through even inside a denied range.
fn write_peers(w: &mut TomlWriter, s: &Settings) {
    w.comment(
        "icegate refuses peers in private and other special-purpose ranges (10.0.0.0/8,\n\
         192.168.0.0/16, loopback, ...) unless allow-peers has them; coturn refused only\n\
         loopback and multicast. Add your internal networks to allow-peers if clients must reach them.",
    );
    let mut allowed: Vec<IpNet> = s.allowed_peers.clone();
    let mut from = String::from("allowed-peer-ip");
    if s.allow_loopback_peers {
        for loopback in ["127.0.0.0/8", "::1/128"] {
            if let Ok(net) = loopback.parse() {
                allowed.push(net);
            }
        }
        from = if s.allowed_peers.is_empty() {
            "allow-loopback-peers".to_owned()
        } else {
            format!("{from}, allow-loopback-peers")
        };
    }
    if !allowed.is_empty() {
        w.key("allow-peers", array(&allowed), &from);
    }
    if !s.denied_peers.is_empty() {
        w.key("deny-peers", array(&s.denied_peers), "denied-peer-ip");
    }
}

fn write_quotas(w: &mut TomlWriter, s: &Settings) {
    for (quota, key, from) in [
        (s.total_quota, "max-allocations", "total-quota"),
        (s.user_quota, "max-allocations-per-user", "user-quota"),
    ] {
        match quota {
            Some(0) => w.comment(&format!(
                "{from} = 0 (no limit): icegate's default {key} applies."
            )),
            Some(n) => w.key(key, n, from),
            None => {}
        }
    }
    for (rate, key) in [(s.max_bps, "max-bps"), (s.bps_capacity, "bps-capacity")] {
        match rate {
            Some(0) => w.key(key, quoted("unlimited"), key),
            Some(bytes) => w.key(key, bytes, key),
            None => {}
        }
    }
    if s.max_bps.is_none() {
        w.comment("coturn's max-bps was unlimited; icegate's default max-bps applies.");
    }
}

fn write_lifetimes(w: &mut TomlWriter, s: &Settings) {
    if let Some(secs) = s.max_allocate_lifetime {
        // icegate refuses a max-lifetime below its default-lifetime.
        if secs < DEFAULT_LIFETIME.as_secs() {
            w.key(
                "default-lifetime",
                quoted(&format!("{secs}s")),
                "max-allocate-lifetime",
            );
        }
        w.key(
            "max-lifetime",
            quoted(&format!("{secs}s")),
            "max-allocate-lifetime",
        );
    }
    for (secs, key) in [
        (s.channel_lifetime, "channel-lifetime"),
        (s.permission_lifetime, "permission-lifetime"),
    ] {
        if let Some(secs) = secs {
            w.key(key, quoted(&format!("{secs}s")), key);
        }
    }
}

/// coturn's alternate servers: for UDP and TCP clients, and for TLS ones.
fn write_alternate_servers(w: &mut TomlWriter, s: &Settings) {
    if !s.alternate_servers.is_empty() {
        w.key(
            "alternate-servers",
            array(&s.alternate_servers),
            "alternate-server",
        );
    }
    if !s.tls_alternate_servers.is_empty() {
        w.key(
            "alternate-tls-servers",
            array(&s.tls_alternate_servers),
            "tls-alternate-server",
        );
    }
}
