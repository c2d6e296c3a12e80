//! Peer address policy: which addresses icegate may relay to.
//!
//! Refusing peers in special-purpose ranges is what keeps a TURN relay from
//! becoming a way into the operator's own network; CVE-2020-26262 and
//! CVE-2026-27624 bypassed exactly this check with `0.0.0.0` and
//! IPv4-mapped IPv6. [`PeerPolicy::check`] applies these rules:
//!
//! 1. Canonicalise: IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible
//!    (`::a.b.c.d`) IPv6 addresses are checked as the IPv4 address; `::` and
//!    `::1` stay IPv6 (unspecified, loopback). The IPv6 spelling is not
//!    consulted again, so allowing an IPv6 prefix such as `::/0` never lets a
//!    mapped private IPv4 address through.
//! 2. Embedded IPv4: NAT64 (`64:ff9b::/96`, last 32 bits), IPv4-translated
//!    SIIT (`::ffff:0:0:0/96`, last 32 bits), 6to4 (`2002::/16`, bits
//!    16..48) and Teredo (`2001::/32`, server in bits 32..64, client in the
//!    last 32 bits inverted) are also checked as those IPv4 addresses.
//!    A peer is refused when its IPv6 address or any embedded IPv4 address is.
//! 3. Each of those addresses is allowed if an `allow-peers` prefix contains
//!    it; otherwise it is refused if a `deny-peers` prefix or a built-in
//!    range contains it; otherwise it is allowed.
//! 4. Allow and deny prefixes written as IPv4-mapped IPv6
//!    (`::ffff:10.0.0.0/104`) are taken as the IPv4 prefix (`10.0.0.0/8`).
//!
//! The built-in ranges are `DEFAULT_REFUSED_V4` and `DEFAULT_REFUSED_V6`,
//! from the IANA special-purpose address registries. Matching is a linear
//! scan over prefixes precomputed in [`PeerPolicy::new`]; `check` does not
//! allocate.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::BitAnd;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

// `new_assert` in a const context turns a bad prefix length into a compile
// error, so the tables below need no runtime unwrap.
const fn v4_net(octets: [u8; 4], prefix_len: u8) -> Ipv4Net {
    let [a, b, c, d] = octets;
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix_len)
}

const fn v6_net(segments: [u16; 8], prefix_len: u8) -> Ipv6Net {
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), prefix_len)
}

const PRIVATE: &str = "private, RFC 1918";
const DOCUMENTATION: &str = "documentation";
const AS112: &str = "AS112";

/// IPv4 ranges refused unless `allow-peers` covers them, with the name a
/// refusal gives. None overlap, so the order does not matter.
const DEFAULT_REFUSED_V4: &[(Ipv4Net, &str)] = &[
    (v4_net([0, 0, 0, 0], 8), "this network"),
    (v4_net([10, 0, 0, 0], 8), PRIVATE),
    (v4_net([172, 16, 0, 0], 12), PRIVATE),
    (v4_net([192, 168, 0, 0], 16), PRIVATE),
    (v4_net([100, 64, 0, 0], 10), "shared address space, CGNAT"),
    (v4_net([127, 0, 0, 0], 8), "loopback"),
    // Includes 169.254.169.254, the cloud metadata service.
    (v4_net([169, 254, 0, 0], 16), "link-local"),
    (v4_net([192, 0, 0, 0], 24), "IETF protocol assignments"),
    (v4_net([192, 0, 2, 0], 24), DOCUMENTATION),
    (v4_net([198, 51, 100, 0], 24), DOCUMENTATION),
    (v4_net([203, 0, 113, 0], 24), DOCUMENTATION),
    (v4_net([192, 31, 196, 0], 24), AS112),
    (v4_net([192, 52, 193, 0], 24), "AMT"),
    (v4_net([192, 88, 99, 0], 24), "6to4 relay anycast"),
    (v4_net([192, 175, 48, 0], 24), AS112),
    (v4_net([198, 18, 0, 0], 15), "benchmarking"),
    (v4_net([224, 0, 0, 0], 4), "multicast"),
    // Includes 255.255.255.255, limited broadcast.
    (v4_net([240, 0, 0, 0], 4), "reserved"),
];

/// IPv6 ranges refused unless `allow-peers` covers them, with the name a
/// refusal gives. The first match names the refusal, so Teredo comes before
/// the IETF block that contains it.
const DEFAULT_REFUSED_V6: &[(Ipv6Net, &str)] = &[
    (v6_net([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified"),
    (v6_net([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback"),
    // Unreachable after canonicalisation; kept so the table alone is safe.
    (v6_net([0, 0, 0, 0, 0, 0xffff, 0, 0], 96), "IPv4-mapped"),
    (SIIT, "IPv4-translated"),
    (NAT64_WELL_KNOWN, "NAT64"),
    (
        v6_net([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        "NAT64, local use",
    ),
    (v6_net([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "discard"),
    (v6_net([0x100, 0, 0, 1, 0, 0, 0, 0], 64), "dummy"),
    (TEREDO, "Teredo"),
    (
        v6_net([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
        "IETF protocol assignments",
    ),
    (v6_net([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), DOCUMENTATION),
    (v6_net([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), DOCUMENTATION),
    (SIX_TO_FOUR, "6to4"),
    (v6_net([0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0], 48), AS112),
    (v6_net([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16), "SRv6 SIDs"),
    (v6_net([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), "unique local"),
    (v6_net([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (
        v6_net([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        "site-local, deprecated",
    ),
    (v6_net([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

/// RFC 2765 (SIIT) IPv4-translated addresses, `::ffff:0:a.b.c.d`: the IPv4
/// address is the last 32 bits.
const SIIT: Ipv6Net = v6_net([0, 0, 0, 0, 0xffff, 0, 0, 0], 96);
/// RFC 6052 well-known NAT64 prefix: the IPv4 address is the last 32 bits.
const NAT64_WELL_KNOWN: Ipv6Net = v6_net([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
/// RFC 3056 6to4: the IPv4 address is bits 16..48.
const SIX_TO_FOUR: Ipv6Net = v6_net([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);
/// RFC 4380 Teredo: server IPv4 in bits 32..64, client IPv4 inverted in the
/// last 32 bits.
const TEREDO: Ipv6Net = v6_net([0x2001, 0, 0, 0, 0, 0, 0, 0], 32);

/// Where icegate may relay to, built once from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct PeerPolicy {
    allow_v4: Vec<Prefix<u32>>,
    allow_v6: Vec<Prefix<u128>>,
    // `deny-peers` first, then the defaults, so a refusal names the
    // operator's own rule when both match.
    refuse_v4: Vec<Rule<u32>>,
    refuse_v6: Vec<Rule<u128>>,
}

impl PeerPolicy {
    /// allow: config `relay.allow-peers` (CIDRs relayed to even if the
    /// default policy refuses them);
    /// deny: config `relay.deny-peers` (CIDRs refused in addition to the
    /// defaults).
    pub(crate) fn new(allow: &[IpNet], deny: &[IpNet]) -> Self {
        let mut allow_v4 = Vec::new();
        let mut allow_v6 = Vec::new();
        for &net in allow {
            match canonical_net(net) {
                IpNet::V4(net) => allow_v4.push(Prefix::v4(net)),
                IpNet::V6(net) => allow_v6.push(Prefix::v6(net)),
            }
        }

        let mut refuse_v4 = Vec::new();
        let mut refuse_v6 = Vec::new();
        for &net in deny {
            match canonical_net(net) {
                IpNet::V4(net) => refuse_v4.push(Rule::v4(net, Reason::DenyPeers)),
                IpNet::V6(net) => refuse_v6.push(Rule::v6(net, Reason::DenyPeers)),
            }
        }
        refuse_v4.extend(
            DEFAULT_REFUSED_V4
                .iter()
                .map(|&(net, name)| Rule::v4(net, Reason::SpecialPurpose(name))),
        );
        refuse_v6.extend(
            DEFAULT_REFUSED_V6
                .iter()
                .map(|&(net, name)| Rule::v6(net, Reason::SpecialPurpose(name))),
        );

        Self {
            allow_v4,
            allow_v6,
            refuse_v4,
            refuse_v6,
        }
    }

    /// Ok when icegate may relay to `peer`; Err says why not (for the log
    /// line and the 403 reason).
    pub(crate) fn check(&self, peer: IpAddr) -> Result<(), PeerRefused> {
        let refused = |via, range, reason| PeerRefused {
            peer,
            via,
            range,
            reason,
        };
        match canonical(peer) {
            IpAddr::V4(addr) => {
                let via = if peer.is_ipv4() {
                    Via::Itself
                } else {
                    Via::Canonical(addr)
                };
                match self.refusing_rule_v4(addr) {
                    Some(rule) => Err(refused(via, rule.range, rule.reason)),
                    None => Ok(()),
                }
            }
            IpAddr::V6(addr) => {
                if let Some(rule) = refusing_rule(&self.allow_v6, &self.refuse_v6, addr.into()) {
                    return Err(refused(Via::Itself, rule.range, rule.reason));
                }
                // Checked even when the IPv6 address is allowed: allowing
                // 2002::/16 must not open the 10.x hosts it can encode.
                for (embedding, embedded) in embedded_ipv4(addr).into_iter().flatten() {
                    if let Some(rule) = self.refusing_rule_v4(embedded) {
                        let via = Via::Embedded(embedding, embedded);
                        return Err(refused(via, rule.range, rule.reason));
                    }
                }
                Ok(())
            }
        }
    }

    fn refusing_rule_v4(&self, addr: Ipv4Addr) -> Option<&Rule<u32>> {
        refusing_rule(&self.allow_v4, &self.refuse_v4, addr.into())
    }
}

impl Default for PeerPolicy {
    /// The built-in refusals only, as with empty `allow-peers` and `deny-peers`.
    fn default() -> Self {
        Self::new(&[], &[])
    }
}

/// Why a peer was refused; its `Display` is the log line and 403 reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerRefused {
    /// The address as the client sent it.
    peer: IpAddr,
    /// Which form of `peer` fell in `range`.
    via: Via,
    range: IpNet,
    reason: Reason,
}

impl fmt::Display for PeerRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.peer)?;
        match self.via {
            Via::Itself => {}
            Via::Canonical(addr) => write!(f, " (as {addr})")?,
            Via::Embedded(embedding, addr) => write!(f, " ({} {addr})", embedding.describe())?,
        }
        match self.reason {
            Reason::DenyPeers => write!(f, " is in deny-peers {}", self.range),
            Reason::SpecialPurpose(name) => write!(f, " is in {} ({name})", self.range),
        }
    }
}

impl std::error::Error for PeerRefused {}

/// IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d, except ::
/// and ::1) become IPv4; others unchanged.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return v4.into();
    }
    let bits = u128::from(v6);
    // :: and ::1 are IPv6's own unspecified and loopback addresses, not
    // IPv4-compatible 0.0.0.0 and 0.0.0.1.
    if bits >> 32 == 0 && bits > 1 {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "the shift test leaves only the low 32 bits set"
        )]
        return Ipv4Addr::from(bits as u32).into();
    }
    ip
}

/// A configured prefix as an IPv4 prefix when it is written IPv4-mapped,
/// with host bits cleared.
fn canonical_net(net: IpNet) -> IpNet {
    let net = net.trunc();
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(v4_net) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(v4_net);
    }
    net
}

/// The IPv4 addresses an IPv6 address encodes; at most two (Teredo), so a
/// fixed array keeps `check` allocation-free.
#[expect(
    clippy::cast_possible_truncation,
    reason = "each field is cut to its 32 bits on purpose"
)]
fn embedded_ipv4(addr: Ipv6Addr) -> [Option<(Embedding, Ipv4Addr)>; 2] {
    let bits = u128::from(addr);
    // `as u32` keeps the low 32 bits, after shifting the wanted field there.
    let field = |shift: u32| Ipv4Addr::from((bits >> shift) as u32);
    if NAT64_WELL_KNOWN.contains(&addr) {
        [Some((Embedding::Nat64, field(0))), None]
    } else if SIIT.contains(&addr) {
        [Some((Embedding::Siit, field(0))), None]
    } else if SIX_TO_FOUR.contains(&addr) {
        [Some((Embedding::SixToFour, field(80))), None]
    } else if TEREDO.contains(&addr) {
        // RFC 4380 stores the client address inverted so NATs don't rewrite it.
        let client = Ipv4Addr::from(!(bits as u32));
        [
            Some((Embedding::TeredoClient, client)),
            Some((Embedding::TeredoServer, field(64))),
        ]
    } else {
        [None, None]
    }
}

/// The rule refusing `addr`, or None when an allow prefix or no rule covers it.
fn refusing_rule<'a, T: AddrBits>(
    allow: &[Prefix<T>],
    refuse: &'a [Rule<T>],
    addr: T,
) -> Option<&'a Rule<T>> {
    if allow.iter().any(|prefix| prefix.contains(addr)) {
        return None;
    }
    refuse.iter().find(|rule| rule.prefix.contains(addr))
}

/// An address as an integer: u32 for IPv4, u128 for IPv6.
trait AddrBits: Copy + PartialEq + BitAnd<Output = Self> {}
impl AddrBits for u32 {}
impl AddrBits for u128 {}

/// A prefix as (network, mask), so a match is one AND and one compare.
#[derive(Debug, Clone, Copy)]
struct Prefix<T> {
    network: T,
    mask: T,
}

impl<T: AddrBits> Prefix<T> {
    fn contains(self, addr: T) -> bool {
        addr & self.mask == self.network
    }
}

impl Prefix<u32> {
    fn v4(net: Ipv4Net) -> Self {
        Self {
            network: net.network().into(),
            mask: net.netmask().into(),
        }
    }
}

impl Prefix<u128> {
    fn v6(net: Ipv6Net) -> Self {
        Self {
            network: net.network().into(),
            mask: net.netmask().into(),
        }
    }
}

/// A refused prefix, with what a refusal reports.
#[derive(Debug, Clone, Copy)]
struct Rule<T> {
    prefix: Prefix<T>,
    range: IpNet,
    reason: Reason,
}

impl Rule<u32> {
    fn v4(net: Ipv4Net, reason: Reason) -> Self {
        let net = net.trunc();
        Self {
            prefix: Prefix::v4(net),
            range: net.into(),
            reason,
        }
    }
}

impl Rule<u128> {
    fn v6(net: Ipv6Net, reason: Reason) -> Self {
        let net = net.trunc();
        Self {
            prefix: Prefix::v6(net),
            range: net.into(),
            reason,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// The operator's `relay.deny-peers`.
    DenyPeers,
    /// A built-in range, with its short name.
    SpecialPurpose(&'static str),
}

/// Which form of the peer address a refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The address as given.
    Itself,
    /// The IPv4 address an IPv4-mapped or IPv4-compatible address stands for.
    Canonical(Ipv4Addr),
    /// An IPv4 address embedded in an IPv6 address.
    Embedded(Embedding, Ipv4Addr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Embedding {
    Nat64,
    Siit,
    SixToFour,
    TeredoClient,
    TeredoServer,
}

impl Embedding {
    fn describe(self) -> &'static str {
        match self {
            Self::Nat64 => "NAT64 of",
            Self::Siit => "IPv4-translated",
            Self::SixToFour => "6to4 of",
            Self::TeredoClient => "Teredo client",
            Self::TeredoServer => "Teredo server",
        }
    }
}

#[cfg(test)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the test generator slices random bits"
)]
mod tests {
    use super::*;

    /// The default ranges as the specification lists them, written
    /// independently of the tables above.
    const SPEC_V4: &[(&str, &str)] = &[
        ("0.0.0.0/8", "this network"),
        ("10.0.0.0/8", "private, RFC 1918"),
        ("172.16.0.0/12", "private, RFC 1918"),
        ("192.168.0.0/16", "private, RFC 1918"),
        ("100.64.0.0/10", "shared address space, CGNAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("192.31.196.0/24", "AS112"),
        ("192.52.193.0/24", "AMT"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("192.175.48.0/24", "AS112"),
        ("198.18.0.0/15", "benchmarking"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
    ];

    const SPEC_V6: &[(&str, &str)] = &[
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::ffff:0:0/96", "IPv4-mapped"),
        ("::ffff:0:0:0/96", "IPv4-translated"),
        ("64:ff9b::/96", "NAT64"),
        ("64:ff9b:1::/48", "NAT64, local use"),
        ("100::/64", "discard"),
        ("100:0:0:1::/64", "dummy"),
        ("2001::/32", "Teredo"),
        ("2001::/23", "IETF protocol assignments"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("2002::/16", "6to4"),
        ("2620:4f:8000::/48", "AS112"),
        ("5f00::/16", "SRv6 SIDs"),
        ("fc00::/7", "unique local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local, deprecated"),
        ("ff00::/8", "multicast"),
    ];

    fn net(text: &str) -> IpNet {
        text.parse().expect("test prefix literal")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address literal")
    }

    fn nets(texts: &[&str]) -> Vec<IpNet> {
        texts.iter().map(|text| net(text)).collect()
    }

    fn spec_defaults() -> Vec<(IpNet, &'static str)> {
        SPEC_V4
            .iter()
            .chain(SPEC_V6)
            .map(|&(text, name)| (net(text), name))
            .collect()
    }

    fn v4_from_u32(bits: u32) -> IpAddr {
        Ipv4Addr::from(bits).into()
    }

    fn v6_from_u128(bits: u128) -> IpAddr {
        Ipv6Addr::from(bits).into()
    }

    // The IPv6 encodings of an IPv4 address that the policy must see through.
    fn mapped(v4: Ipv4Addr) -> IpAddr {
        v4.to_ipv6_mapped().into()
    }

    fn compatible(v4: Ipv4Addr) -> IpAddr {
        v4.to_ipv6_compatible().into()
    }

    fn nat64(v4: Ipv4Addr) -> IpAddr {
        let [a, b, c, d] = v4.octets();
        let (hi, lo) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo).into()
    }

    fn six_to_four(v4: Ipv4Addr, subnet: u16, host: u16) -> IpAddr {
        let [a, b, c, d] = v4.octets();
        let (hi, lo) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
        Ipv6Addr::new(0x2002, hi, lo, subnet, 0, 0, 0, host).into()
    }

    fn teredo(server: Ipv4Addr, client: Ipv4Addr) -> IpAddr {
        let [a, b, c, d] = server.octets();
        let [e, f, g, h] = client.octets();
        let segment = |x: u8, y: u8| u16::from_be_bytes([x, y]);
        // Flags 0x8000 (cone) and an obfuscated port, as a real client sends.
        Ipv6Addr::new(
            0x2001,
            0,
            segment(a, b),
            segment(c, d),
            0x8000,
            !3478,
            !segment(e, f),
            !segment(g, h),
        )
        .into()
    }

    /// A well-known public address used as the Teredo server.
    const TEREDO_SERVER: Ipv4Addr = Ipv4Addr::new(65, 54, 227, 120);

    fn siit(v4: Ipv4Addr) -> IpAddr {
        let [a, b, c, d] = v4.octets();
        let (hi, lo) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
        Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, hi, lo).into()
    }

    fn all_encodings(v4: Ipv4Addr) -> [(&'static str, IpAddr); 6] {
        [
            ("mapped", mapped(v4)),
            ("compatible", compatible(v4)),
            ("IPv4-translated", siit(v4)),
            ("NAT64", nat64(v4)),
            ("6to4", six_to_four(v4, 1, 1)),
            ("Teredo", teredo(TEREDO_SERVER, v4)),
        ]
    }

    fn refusal(policy: &PeerPolicy, peer: IpAddr) -> String {
        match policy.check(peer) {
            Err(refused) => refused.to_string(),
            Ok(()) => panic!("{peer} should be refused"),
        }
    }

    #[test]
    fn default_tables_match_the_specification() {
        let ours: Vec<(IpNet, &str)> = DEFAULT_REFUSED_V4
            .iter()
            .map(|&(net, name)| (IpNet::V4(net), name))
            .chain(
                DEFAULT_REFUSED_V6
                    .iter()
                    .map(|&(net, name)| (IpNet::V6(net), name)),
            )
            .collect();
        assert_eq!(ours, spec_defaults());
        for (net, _) in ours {
            assert_eq!(net, net.trunc(), "{net} has host bits set");
        }
    }

    #[test]
    fn default_ipv4_ranges_refused_at_first_middle_and_last_address() {
        let policy = PeerPolicy::default();
        for &(text, name) in SPEC_V4 {
            let IpNet::V4(range) = net(text) else {
                unreachable!("SPEC_V4 holds IPv4 prefixes")
            };
            let first = u32::from(range.network());
            let last = u32::from(range.broadcast());
            for addr in [first, first + (last - first) / 2, last].map(v4_from_u32) {
                assert_eq!(
                    refusal(&policy, addr),
                    format!("{addr} is in {range} ({name})")
                );
            }
        }
    }

    #[test]
    fn default_ipv6_ranges_refused_at_first_middle_and_last_address() {
        let policy = PeerPolicy::default();
        for &(text, _) in SPEC_V6 {
            let IpNet::V6(range) = net(text) else {
                unreachable!("SPEC_V6 holds IPv6 prefixes")
            };
            let first = u128::from(range.network());
            let last = u128::from(range.broadcast());
            for addr in [first, first + (last - first) / 2, last].map(v6_from_u128) {
                assert!(policy.check(addr).is_err(), "{addr} in {range}");
            }
        }
    }

    #[test]
    fn public_addresses_allowed() {
        let policy = PeerPolicy::default();
        for text in [
            "8.8.8.8",
            "1.1.1.1",
            "9.255.255.255",
            "11.0.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "::8.8.8.8",
        ] {
            assert_eq!(policy.check(ip(text)), Ok(()), "{text}");
        }
    }

    #[test]
    fn ipv6_special_addresses_refused() {
        let policy = PeerPolicy::default();
        for (text, name) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("fd00::1", "unique local"),
            ("ff02::1", "multicast"),
        ] {
            let message = refusal(&policy, ip(text));
            assert!(message.starts_with(&format!("{text} is in ")), "{message}");
            assert!(message.ends_with(&format!("({name})")), "{message}");
        }
    }

    const PRIVATE_SAMPLES: [Ipv4Addr; 5] = [
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(169, 254, 169, 254),
        Ipv4Addr::new(0, 0, 0, 0),
        Ipv4Addr::new(192, 168, 1, 1),
    ];

    #[test]
    fn every_ipv6_encoding_of_a_private_ipv4_refused() {
        let policy = PeerPolicy::default();
        for v4 in PRIVATE_SAMPLES {
            for (encoding, addr) in all_encodings(v4) {
                assert!(policy.check(addr).is_err(), "{encoding} {addr} of {v4}");
            }
        }
    }

    #[test]
    fn allowing_translation_prefixes_still_refuses_embedded_private_ipv4() {
        let policy = PeerPolicy::new(
            &nets(&["2002::/16", "64:ff9b::/96", "2001::/32", "::ffff:0:0:0/96"]),
            &[],
        );
        for v4 in PRIVATE_SAMPLES {
            for (encoding, addr) in all_encodings(v4) {
                assert!(policy.check(addr).is_err(), "{encoding} {addr} of {v4}");
            }
        }
        let public = Ipv4Addr::new(8, 8, 8, 8);
        for (encoding, addr) in all_encodings(public) {
            assert_eq!(policy.check(addr), Ok(()), "{encoding} {addr}");
        }
        // A private Teredo server is refused as well as a private client.
        let private_server = teredo(Ipv4Addr::new(10, 0, 0, 1), public);
        assert_eq!(
            refusal(&policy, private_server),
            format!(
                "{private_server} (Teredo server 10.0.0.1) is in 10.0.0.0/8 (private, RFC 1918)"
            )
        );
    }

    #[test]
    fn embedded_refusal_names_the_embedded_address() {
        let policy = PeerPolicy::new(&nets(&["2002::/16", "64:ff9b::/96", "2001::/32"]), &[]);
        let loopback = Ipv4Addr::LOCALHOST;
        let cases = [
            (nat64(loopback), "NAT64 of"),
            (six_to_four(loopback, 0, 0), "6to4 of"),
            (teredo(TEREDO_SERVER, loopback), "Teredo client"),
        ];
        for (addr, via) in cases {
            assert_eq!(
                refusal(&policy, addr),
                format!("{addr} ({via} 127.0.0.1) is in 127.0.0.0/8 (loopback)")
            );
        }
        // Without the allow, the translation prefix itself is the reason.
        assert_eq!(
            refusal(&PeerPolicy::default(), six_to_four(loopback, 0, 0)),
            "2002:7f00:1:: is in 2002::/16 (6to4)"
        );
    }

    #[test]
    fn allowing_all_ipv6_does_not_reopen_mapped_or_embedded_ipv4() {
        let policy = PeerPolicy::new(&nets(&["::/0"]), &[]);
        assert_eq!(policy.check(ip("fe80::1")), Ok(()));
        for v4 in PRIVATE_SAMPLES {
            // IPv4-compatible 0.0.0.0 is `::` itself, which ::/0 allows.
            for (encoding, addr) in all_encodings(v4)
                .into_iter()
                .filter(|&(_, a)| a != ip("::"))
            {
                assert!(policy.check(addr).is_err(), "{encoding} {addr} of {v4}");
            }
        }
    }

    #[test]
    fn allow_peers_opens_only_its_range() {
        let loopback = PeerPolicy::new(&nets(&["127.0.0.0/8"]), &[]);
        assert_eq!(loopback.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(loopback.check(ip("::ffff:127.0.0.1")), Ok(()));
        assert!(loopback.check(ip("10.0.0.1")).is_err());
        assert!(loopback.check(ip("::1")).is_err());

        let subnet = PeerPolicy::new(&nets(&["10.1.0.0/16"]), &[]);
        assert_eq!(subnet.check(ip("10.1.2.3")), Ok(()));
        assert!(subnet.check(ip("10.2.0.1")).is_err());

        // Host bits in a configured prefix are ignored.
        let sloppy = PeerPolicy::new(&nets(&["10.1.2.3/16"]), &[]);
        assert_eq!(sloppy.check(ip("10.1.255.255")), Ok(()));
        assert!(sloppy.check(ip("10.2.0.0")).is_err());
    }

    #[test]
    fn deny_peers_refuses_in_every_form() {
        let policy = PeerPolicy::new(&[], &nets(&["8.8.8.0/24"]));
        assert_eq!(
            refusal(&policy, ip("8.8.8.8")),
            "8.8.8.8 is in deny-peers 8.8.8.0/24"
        );
        assert_eq!(
            refusal(&policy, ip("::ffff:8.8.8.8")),
            "::ffff:8.8.8.8 (as 8.8.8.8) is in deny-peers 8.8.8.0/24"
        );
        assert_eq!(policy.check(ip("8.8.4.4")), Ok(()));

        // deny-peers is reported ahead of an overlapping default.
        let overlapping = PeerPolicy::new(&[], &nets(&["198.51.100.0/24"]));
        assert_eq!(
            refusal(&overlapping, ip("198.51.100.7")),
            "198.51.100.7 is in deny-peers 198.51.100.0/24"
        );
    }

    #[test]
    fn mapped_allow_prefix_behaves_as_ipv4_prefix() {
        let mapped_allow = PeerPolicy::new(&nets(&["::ffff:10.0.0.0/104"]), &[]);
        let plain_allow = PeerPolicy::new(&nets(&["10.0.0.0/8"]), &[]);
        for text in [
            "10.0.0.0",
            "10.255.255.255",
            "::ffff:10.1.1.1",
            "9.255.255.255",
            "11.0.0.0",
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:a00:1",
        ] {
            let addr = ip(text);
            assert_eq!(mapped_allow.check(addr), plain_allow.check(addr), "{text}");
        }
        assert_eq!(mapped_allow.check(ip("10.20.30.40")), Ok(()));

        let mapped_deny = PeerPolicy::new(&[], &nets(&["::ffff:8.8.8.0/120"]));
        assert_eq!(
            refusal(&mapped_deny, ip("8.8.8.8")),
            "8.8.8.8 is in deny-peers 8.8.8.0/24"
        );
    }

    #[test]
    fn refusal_message_names_range_and_canonical_address() {
        let policy = PeerPolicy::default();
        assert_eq!(
            refusal(&policy, ip("10.1.2.3")),
            "10.1.2.3 is in 10.0.0.0/8 (private, RFC 1918)"
        );
        assert_eq!(
            refusal(&policy, ip("::ffff:127.0.0.1")),
            "::ffff:127.0.0.1 (as 127.0.0.1) is in 127.0.0.0/8 (loopback)"
        );
        let compatible = compatible(Ipv4Addr::new(169, 254, 169, 254));
        assert_eq!(
            refusal(&policy, compatible),
            format!("{compatible} (as 169.254.169.254) is in 169.254.0.0/16 (link-local)")
        );
        assert_eq!(
            refusal(&policy, ip("2001:db8::1")),
            "2001:db8::1 is in 2001:db8::/32 (documentation)"
        );
        let public_teredo = teredo(TEREDO_SERVER, Ipv4Addr::new(8, 8, 8, 8));
        assert_eq!(
            refusal(&policy, public_teredo),
            format!("{public_teredo} is in 2001::/32 (Teredo)")
        );
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(canonical(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(canonical(ip("::1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(canonical(ip("::2")), ip("0.0.0.2"));
        assert_eq!(canonical(ip("::")), ip("::"));
        assert_eq!(canonical(ip("::1")), ip("::1"));
        assert_eq!(canonical(ip("1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(canonical(ip("64:ff9b::102:304")), ip("64:ff9b::102:304"));
        assert_eq!(canonical(ip("1::ffff:1.2.3.4")), ip("1::ffff:1.2.3.4"));
    }

    // --- Differential test against a plainly written reference model. ---

    /// IPv4 from two IPv6 segments (high, low).
    fn v4_from_segments(high: u16, low: u16) -> Ipv4Addr {
        let [a, b] = high.to_be_bytes();
        let [c, d] = low.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    }

    fn reference_canonical(peer: IpAddr) -> IpAddr {
        let IpAddr::V6(v6) = peer else {
            return peer;
        };
        let s = v6.segments();
        if s[..5] == [0; 5] && s[5] == 0xffff {
            return v4_from_segments(s[6], s[7]).into();
        }
        let is_unspecified_or_loopback = s[6] == 0 && (s[7] == 0 || s[7] == 1);
        if s[..6] == [0; 6] && !is_unspecified_or_loopback {
            return v4_from_segments(s[6], s[7]).into();
        }
        peer
    }

    fn reference_canonical_net(configured: IpNet) -> IpNet {
        if let IpNet::V6(v6) = configured
            && v6.prefix_len() >= 96
        {
            let s = v6.network().segments();
            if s[..5] == [0; 5] && s[5] == 0xffff {
                let v4 = v4_from_segments(s[6], s[7]);
                let len = v6.prefix_len() - 96;
                return format!("{v4}/{len}")
                    .parse::<IpNet>()
                    .expect("valid")
                    .trunc();
            }
        }
        configured
    }

    /// Every address the peer stands for: its canonical form and any IPv4
    /// address embedded by NAT64, 6to4 or Teredo.
    fn reference_addresses(peer: IpAddr) -> Vec<IpAddr> {
        let canonical = reference_canonical(peer);
        let mut addresses = vec![canonical];
        if let IpAddr::V6(v6) = canonical {
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
                addresses.push(v4_from_segments(s[6], s[7]).into());
            }
            if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
                addresses.push(v4_from_segments(s[6], s[7]).into());
            }
            if s[0] == 0x2002 {
                addresses.push(v4_from_segments(s[1], s[2]).into());
            }
            if s[0] == 0x2001 && s[1] == 0 {
                addresses.push(v4_from_segments(s[2], s[3]).into());
                addresses.push(v4_from_segments(!s[6], !s[7]).into());
            }
        }
        addresses
    }

    fn reference_allows(allow: &[IpNet], deny: &[IpNet], peer: IpAddr) -> bool {
        let allow: Vec<IpNet> = allow.iter().map(|&n| reference_canonical_net(n)).collect();
        let mut refuse: Vec<IpNet> = deny.iter().map(|&n| reference_canonical_net(n)).collect();
        refuse.extend(spec_defaults().into_iter().map(|(net, _)| net));
        reference_addresses(peer).into_iter().all(|addr| {
            allow.iter().any(|net| net.contains(&addr))
                || !refuse.iter().any(|net| net.contains(&addr))
        })
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }

        fn u32(&mut self) -> u32 {
            (self.next() >> 32) as u32
        }

        fn u128(&mut self) -> u128 {
            (u128::from(self.next()) << 64) | u128::from(self.next())
        }
    }

    /// first - 1, first, last, last + 1 of every prefix (wrapping at the ends).
    fn boundaries(nets: &[IpNet]) -> (Vec<Ipv4Addr>, Vec<IpAddr>) {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net.trunc() {
                IpNet::V4(net) => {
                    let (first, last) = (u32::from(net.network()), u32::from(net.broadcast()));
                    let around = [first.wrapping_sub(1), first, last, last.wrapping_add(1)];
                    v4.extend(around.map(Ipv4Addr::from));
                }
                IpNet::V6(net) => {
                    let (first, last) = (u128::from(net.network()), u128::from(net.broadcast()));
                    let around = [first.wrapping_sub(1), first, last, last.wrapping_add(1)];
                    v6.extend(around.map(v6_from_u128));
                }
            }
        }
        (v4, v6)
    }

    /// A random address inside `net`.
    fn random_inside(rng: &mut XorShift, net: IpNet) -> IpAddr {
        match net.trunc() {
            IpNet::V4(net) => {
                let host = rng.u32() & !u32::from(net.netmask());
                v4_from_u32(u32::from(net.network()) | host)
            }
            IpNet::V6(net) => {
                let host = rng.u128() & !u128::from(net.netmask());
                v6_from_u128(u128::from(net.network()) | host)
            }
        }
    }

    #[test]
    fn agrees_with_reference_model() {
        let configs: [(&[&str], &[&str]); 6] = [
            (&[], &[]),
            (&["2002::/16", "64:ff9b::/96", "2001::/32"], &[]),
            (
                &[
                    "10.1.0.0/16",
                    "::ffff:127.0.0.0/104",
                    "::/0",
                    "100.64.0.0/10",
                ],
                &["8.8.8.0/24", "2606:4700::/32", "::ffff:1.1.1.0/120"],
            ),
            (&["::ffff:0:0/96"], &["2001:4860::/32"]),
            (
                &["192.168.0.0/16", "2002:c0a8::/32", "fd00::/8"],
                &["2002::/16", "10.0.0.0/8", "::ffff:9.0.0.0/104"],
            ),
            (
                &["169.254.169.254/32", "2001::/23"],
                &["0.0.0.0/0", "2000::/3"],
            ),
        ];

        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut compared = 0usize;
        for (allow, deny) in configs {
            let (allow, deny) = (nets(allow), nets(deny));
            let policy = PeerPolicy::new(&allow, &deny);

            let mut interesting: Vec<IpNet> =
                spec_defaults().into_iter().map(|(net, _)| net).collect();
            interesting.extend(
                allow
                    .iter()
                    .chain(&deny)
                    .map(|&n| reference_canonical_net(n)),
            );
            let (mut v4_pool, mut v6_pool) = boundaries(&interesting);
            for _ in 0..600 {
                let addr = if rng.below(2) == 0 {
                    v4_from_u32(rng.u32())
                } else {
                    let range = interesting[rng.below(interesting.len())];
                    random_inside(&mut rng, range)
                };
                match addr {
                    IpAddr::V4(v4) => v4_pool.push(v4),
                    IpAddr::V6(_) => v6_pool.push(addr),
                }
                v6_pool.push(v6_from_u128(rng.u128()));
            }

            let mut peers: Vec<IpAddr> = v6_pool;
            for &v4 in &v4_pool {
                let other = v4_pool[rng.below(v4_pool.len())];
                let subnet = rng.next() as u16;
                peers.extend([
                    IpAddr::V4(v4),
                    mapped(v4),
                    compatible(v4),
                    nat64(v4),
                    six_to_four(v4, subnet, subnet.rotate_left(3)),
                    teredo(other, v4),
                    teredo(v4, other),
                ]);
            }

            for peer in peers {
                let expected = reference_allows(&allow, &deny, peer);
                let actual = policy.check(peer);
                assert_eq!(
                    actual.is_ok(),
                    expected,
                    "{peer} with allow {allow:?} deny {deny:?}: {actual:?}"
                );
                compared += 1;
            }
        }
        assert!(compared > 20_000, "compared only {compared}");
    }
}
