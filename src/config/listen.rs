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
];

/// One socket the server answers STUN/TURN requests on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listen {
    pub(crate) address: SocketAddr,
    pub(crate) transport: Transport,
    /// Certificate chain and key (PEM), present exactly when `transport` is tls or https.
    pub(crate) tls: Option<TlsFiles>,
    pub(crate) services: Services,
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
        if !transport.ok || !certificate.ok || !private_key.ok || !services.ok {
            continue;
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
            listen.push(entry);
        }
    }
    listen
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
