//! The `[[listen]]` tables: the sockets icegate answers on, their transports, what each serves
//! and, for tls and https, the certificate files.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use toml::de::DeValue;

use super::scalars::{Scalar, expected, string};
use super::walk::{Ctx, Item, Section, Val, line_of};
use crate::certificate::{TlsFile, TlsFiles, TlsProblem, load_certified_key};

const LISTEN_KEYS: &[&str] = &[
    "address",
    "transport",
    "certificate",
    "private-key",
    "services",
    "other-address",
];

/// One socket the server answers STUN/TURN requests on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listen {
    pub(crate) address: SocketAddr,
    pub(crate) transport: Transport,
    /// Certificate chain and key (PEM), present exactly when `transport` is tls or https.
    pub(crate) tls: Option<TlsFiles>,
    pub(crate) services: Services,
    /// With RFC 5780 NAT behaviour discovery: the address that differs from
    /// this one in both IP and port, among the four listeners of a UDP
    /// `[[listen]]` with `other-address`.
    pub(crate) other_address: Option<SocketAddr>,
}

/// What a stream listener serves: TURN (and STUN), HTTP, or both on one
/// port, told apart by the first bytes of each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Services {
    pub(crate) turn: bool,
    pub(crate) http: bool,
}

impl Services {
    pub(crate) const TURN: Self = Self {
        turn: true,
        http: false,
    };
    pub(crate) const HTTP: Self = Self {
        turn: false,
        http: true,
    };
}

/// Transport of a [`Listen`] socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) enum Transport {
    #[default]
    Udp,
    Tcp,
    /// TLS over TCP; plain TCP clients on the same port are served too.
    Tls,
    /// Plain HTTP, for running behind a reverse proxy.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Transport {
    /// The spelling used in the file.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Http => "http",
            Transport::Https => "https",
        }
    }

    /// Whether two listeners of these transports compete for the same socket kind.
    fn same_socket_kind(self, other: Self) -> bool {
        (self == Transport::Udp) == (other == Transport::Udp)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Scalar for Transport {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        const WHAT: &str = "one of \"udp\", \"tcp\", \"tls\", \"http\", \"https\"";
        match string(value, WHAT)? {
            "udp" => Ok(Transport::Udp),
            "tcp" => Ok(Transport::Tcp),
            "tls" => Ok(Transport::Tls),
            "http" => Ok(Transport::Http),
            "https" => Ok(Transport::Https),
            "dtls" => Err(format!("{} (dtls is not supported)", expected(WHAT, value))),
            _ => Err(expected(WHAT, value)),
        }
    }
}

pub(super) fn read_listen(cx: &mut Ctx<'_>, top: &Section<'_, '_>) -> Vec<Listen> {
    let tables = top.sections(cx, "listen", LISTEN_KEYS);
    if tables.ok && tables.value.is_empty() {
        cx.report(
            "listen",
            tables.span.as_ref(),
            "expected at least one [[listen]] table, e.g. address = \"0.0.0.0:3478\"",
        );
    }
    let mut listen = Vec::new();
    let mut seen: Vec<(SocketAddr, Transport, Option<usize>)> = Vec::new();
    for section in &tables.value {
        let address = section.opt::<SocketAddr>(cx, "address");
        let transport = section.get(cx, "transport", Transport::default());
        let certificate = section.opt::<PathBuf>(cx, "certificate");
        let private_key = section.opt::<PathBuf>(cx, "private-key");
        let services = section.list::<String>(cx, "services", Vec::new());
        let other_address = section.opt::<SocketAddr>(cx, "other-address");
        let Some(address_value) = address.value else {
            if address.ok {
                cx.report(
                    section.key("address"),
                    section.span.as_ref(),
                    "missing; expected a socket address like \"0.0.0.0:3478\"",
                );
            }
            continue;
        };
        if !transport.ok || !certificate.ok || !private_key.ok || !services.ok || !other_address.ok
        {
            continue;
        }
        if let Some(other) = other_address.value {
            let problem = if transport.value != Transport::Udp {
                Some(format!(
                    "only a udp listener takes other-address, this one is {}",
                    transport.value
                ))
            } else {
                nat_discovery_problem(address_value, other)
            };
            if let Some(message) = problem {
                cx.report(
                    section.key("other-address"),
                    other_address.span.as_ref(),
                    message,
                );
                continue;
            }
        }
        let Some(services) = read_services(cx, section, transport.value, &services) else {
            continue;
        };
        let resolve = |path: PathBuf| match cx.base_dir {
            Some(base) if path.is_relative() => base.join(path),
            _ => path,
        };
        let needs_tls = matches!(transport.value, Transport::Tls | Transport::Https);
        let tls = match (needs_tls, &certificate.value, &private_key.value) {
            (true, Some(certificate_path), Some(key_path)) => {
                let files = TlsFiles {
                    certificate: resolve(certificate_path.clone()),
                    private_key: resolve(key_path.clone()),
                };
                let readable = [
                    (TlsFile::Certificate, &files.certificate),
                    (TlsFile::PrivateKey, &files.private_key),
                ]
                .into_iter()
                .find_map(|(file, path)| {
                    cx.may_read(path)
                        .err()
                        .map(|message| TlsProblem { file, message })
                });
                if let Err(problem) =
                    readable.map_or_else(|| load_certified_key(&files).map(drop), Err)
                {
                    let (key, span) = match problem.file {
                        TlsFile::Certificate => ("certificate", &certificate.span),
                        TlsFile::PrivateKey => ("private-key", &private_key.span),
                    };
                    cx.report(section.key(key), span.as_ref(), problem.message);
                    continue;
                }
                Some(files)
            }
            (true, certificate, _) => {
                let missing = if certificate.is_none() {
                    "certificate"
                } else {
                    "private-key"
                };
                cx.report(
                    section.key(missing),
                    section.span.as_ref(),
                    format!(
                        "missing; a {} listener needs certificate and private-key (PEM files)",
                        transport.value
                    ),
                );
                continue;
            }
            (_, None, None) => None,
            (false, _, _) => {
                let other = transport.value;
                let (key, span) = if certificate.value.is_some() {
                    ("certificate", certificate.span.as_ref())
                } else {
                    ("private-key", private_key.span.as_ref())
                };
                let message = format!(
                    "only a tls or https listener takes a certificate, this one is {other}"
                );
                cx.report(section.key(key), span, message);
                continue;
            }
        };
        let entry = Listen {
            address: address_value,
            transport: transport.value,
            tls,
            services,
            other_address: other_address.value,
        };
        let line = address.span.as_ref().map(|s| line_of(cx.text, s.start));
        // Port 0 asks the system for a free port: two such listeners never clash.
        let clash = seen.iter().find(|(a, t, _)| {
            *a == entry.address && a.port() != 0 && t.same_socket_kind(entry.transport)
        });
        if let Some((_, first_transport, first_line)) = clash {
            let at = first_line.map_or(String::new(), |l| format!(" (line {l})"));
            let (kind, already) = if entry.transport == Transport::Udp {
                ("udp", String::new())
            } else {
                ("tcp/tls", format!(", already {first_transport}"))
            };
            let message = format!(
                "expected each {kind} address to be listed once, got {} again{already}{at}",
                entry.address
            );
            cx.report(section.key("address"), address.span.as_ref(), message);
        } else {
            seen.push((entry.address, entry.transport, line));
            listen.extend(nat_discovery_quad(entry));
        }
    }
    listen
}

/// Why `address` and `other` cannot serve RFC 5780 together: both concrete,
/// of one family, differing in IP and in port.
fn nat_discovery_problem(address: SocketAddr, other: SocketAddr) -> Option<String> {
    if address.ip().is_unspecified() || other.ip().is_unspecified() {
        Some("expected concrete addresses here and in address, not a wildcard".to_owned())
    } else if address.port() == 0 || other.port() == 0 {
        Some("expected a port other than 0 here and in address".to_owned())
    } else if address.is_ipv4() != other.is_ipv4() {
        Some(format!(
            "expected an address of {address}'s family, got {other}"
        ))
    } else if address.ip() == other.ip() || address.port() == other.port() {
        Some(format!(
            "expected an IP and a port both different from {address}'s, got {other}"
        ))
    } else {
        None
    }
}

/// A listener with `other-address` is four (RFC 5780 §4.1): its own
/// address, the other one, and the two that mix their IPs and ports; each
/// knows the one that differs from it in both.
fn nat_discovery_quad(listen: Listen) -> Vec<Listen> {
    let Some(other) = listen.other_address else {
        return vec![listen];
    };
    let here = listen.address;
    let mixed = |ip: SocketAddr, port: SocketAddr| SocketAddr::new(ip.ip(), port.port());
    [
        (here, other),
        (other, here),
        (mixed(here, other), mixed(other, here)),
        (mixed(other, here), mixed(here, other)),
    ]
    .into_iter()
    .map(|(address, diagonal)| Listen {
        address,
        other_address: Some(diagonal),
        ..listen.clone()
    })
    .collect()
}

/// What a listener serves: `services` may only be given on a tls listener,
/// where it can add "http" to TURN on one port; others serve what their
/// transport says.
fn read_services(
    cx: &mut Ctx<'_>,
    section: &Section<'_, '_>,
    transport: Transport,
    listed: &Val<Vec<Item<String>>>,
) -> Option<Services> {
    let default = match transport {
        Transport::Udp | Transport::Tcp | Transport::Tls => Services::TURN,
        Transport::Http | Transport::Https => Services::HTTP,
    };
    if listed.span.is_none() {
        return Some(default);
    }
    let key = section.key("services");
    if transport != Transport::Tls {
        let message = format!("only a tls listener takes services, this one is {transport}");
        cx.report(key, listed.span.as_ref(), message);
        return None;
    }
    let mut services = Services {
        turn: false,
        http: false,
    };
    for (i, item) in listed.value.iter().enumerate() {
        match item.value.as_str() {
            "turn" => services.turn = true,
            "http" => services.http = true,
            other => {
                let message = format!("expected \"turn\" or \"http\", got {other:?}");
                cx.report(format!("{key}[{i}]"), item.span.as_ref(), message);
                return None;
            }
        }
    }
    if !services.turn && !services.http {
        cx.report(
            key,
            listed.span.as_ref(),
            "expected [\"turn\"], [\"http\"] or both",
        );
        return None;
    }
    Some(services)
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{parse_err, parse_ok};

    const AUTH: &str = "[auth]\nsecrets = [\"0123456789abcdef\"]\n";

    #[test]
    fn other_address_makes_four_listeners_for_nat_discovery() {
        let text = format!(
            "[[listen]]\naddress = \"192.0.2.1:3478\"\nother-address = \"192.0.2.2:3479\"\n{AUTH}"
        );
        let config = parse_ok(&text);
        let quad: Vec<(String, String)> = config
            .listen
            .iter()
            .map(|l| (l.address.to_string(), l.other_address.unwrap().to_string()))
            .collect();
        let pairs = [
            ("192.0.2.1:3478", "192.0.2.2:3479"),
            ("192.0.2.2:3479", "192.0.2.1:3478"),
            ("192.0.2.1:3479", "192.0.2.2:3478"),
            ("192.0.2.2:3478", "192.0.2.1:3479"),
        ];
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        assert_eq!(quad, pairs);
    }

    #[test]
    fn other_address_needs_two_concrete_ips_and_ports() {
        for (address, other, transport, says) in [
            ("0.0.0.0:3478", "192.0.2.2:3479", "udp", "wildcard"),
            ("192.0.2.1:3478", "192.0.2.1:3479", "udp", "both different"),
            ("192.0.2.1:3478", "192.0.2.2:3478", "udp", "both different"),
            ("192.0.2.1:3478", "[2001:db8::2]:3479", "udp", "family"),
            ("192.0.2.1:0", "192.0.2.2:3479", "udp", "other than 0"),
            (
                "192.0.2.1:3478",
                "192.0.2.2:3479",
                "tcp",
                "only a udp listener",
            ),
        ] {
            let text = format!(
                "[[listen]]\naddress = \"{address}\"\ntransport = \"{transport}\"\n\
                 other-address = \"{other}\"\n{AUTH}"
            );
            let errors = parse_err(&text);
            let problem = &errors.problems[0];
            assert_eq!(problem.key, "listen[0].other-address", "{errors}");
            assert_eq!(problem.line, Some(4), "{errors}");
            assert!(problem.message.contains(says), "{errors}");
        }
    }
}
