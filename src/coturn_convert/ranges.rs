//! coturn's peer address ranges (`a.b.c.d-e.f.g.h`, a single address, or a network) as the
//! networks icegate's `allow-peers` and `deny-peers` take.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Subnets, Ipv6Subnets};

/// The networks that together cover exactly the range `text`, or why it is no range.
pub(super) fn range_networks(text: &str) -> Result<Vec<IpNet>, String> {
    if let Ok(network) = text.parse::<IpNet>() {
        return Ok(vec![network.trunc()]);
    }
    let (first, last) = match text.split_once('-') {
        Some((first, last)) => (address(first)?, address(last)?),
        None => {
            let only = address(text)?;
            (only, only)
        }
    };
    match (first, last) {
        (IpAddr::V4(first), IpAddr::V4(last)) if first <= last => {
            Ok(Ipv4Subnets::new(first, last, 0).map(IpNet::V4).collect())
        }
        (IpAddr::V6(first), IpAddr::V6(last)) if first <= last => {
            Ok(Ipv6Subnets::new(first, last, 0).map(IpNet::V6).collect())
        }
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
            Err(format!("the range {text:?} ends before it starts"))
        }
        _ => Err(format!("the range {text:?} mixes IPv4 and IPv6")),
    }
}

fn address(text: &str) -> Result<IpAddr, String> {
    let text = text.trim();
    text.parse()
        .map_err(|_| format!("expected an IP address, got {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(text: &str) -> Vec<String> {
        range_networks(text)
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn aligned_ranges_are_one_network() {
        assert_eq!(nets("10.0.0.0-10.255.255.255"), ["10.0.0.0/8"]);
        assert_eq!(nets("172.16.0.0 - 172.31.255.255"), ["172.16.0.0/12"]);
        assert_eq!(
            nets("fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ["fc00::/7"]
        );
        assert_eq!(nets("0.0.0.0-255.255.255.255"), ["0.0.0.0/0"]);
    }

    #[test]
    fn unaligned_ranges_are_covered_exactly() {
        assert_eq!(
            nets("192.168.1.5-192.168.1.17"),
            [
                "192.168.1.5/32",
                "192.168.1.6/31",
                "192.168.1.8/29",
                "192.168.1.16/31"
            ]
        );
    }

    #[test]
    fn addresses_and_networks_stand_for_themselves() {
        assert_eq!(nets("203.0.113.7"), ["203.0.113.7/32"]);
        assert_eq!(nets("::1"), ["::1/128"]);
        assert_eq!(nets("10.1.2.3/8"), ["10.0.0.0/8"]);
    }

    #[test]
    fn bad_ranges_say_why() {
        for bad in [
            "",
            "10.0.0.9-10.0.0.1",
            "10.0.0.1-::1",
            "nope",
            "1.2.3.4-",
            "-",
        ] {
            assert!(range_networks(bad).is_err(), "{bad:?}");
        }
    }
}
