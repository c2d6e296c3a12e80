//! Where a client comes from, as per-source limits count it: an IPv4
//! address, or the /64 an IPv6 address lies in. One host or home network
//! is given a whole /64 and may send from any address in it, so counting
//! IPv6 addresses one by one would give it 2^64 allowances.

use std::net::{IpAddr, Ipv6Addr};

use crate::policy::canonical;

/// The source `ip` counts as: itself for IPv4 (IPv4-mapped IPv6 included),
/// its /64 network address for IPv6.
pub(crate) fn source_of(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_64_is_one_source_and_ipv4_addresses_are_their_own() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(source_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            source_of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(source_of(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(source_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }
}
