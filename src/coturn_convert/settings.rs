//! What a `turnserver.conf` sets, read option by option into typed values; a value that
//! icegate could not take is set aside with the reason, so the output still loads.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use super::lines::{OptionLine, option_lines};
use super::ranges::range_networks;
use crate::config::{
    ByteRate, Equivalent, MAX_DURATION, MAX_REALM_CHARS, MAX_USERNAME_BYTES, MIN_SECRET_CHARS,
    coturn_option,
};

/// coturn's ports when its file names none: `listening-port`, `tls-listening-port` and
/// `prometheus-port`.
pub(super) const COTURN_PORT: u16 = 3478;
pub(super) const COTURN_TLS_PORT: u16 = 5349;
pub(super) const COTURN_PROMETHEUS_PORT: u16 = 9641;
/// What a bare `stale-nonce` means to coturn, in seconds.
const COTURN_STALE_NONCE_SECS: u64 = 600;

/// A static user's credential as `user=name:credential` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Credential {
    Password(String),
    /// coturn's `0x` + MD5(name:realm:password).
    Key(String),
}

/// An option line nothing was made of, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SetAside {
    pub(super) line: usize,
    pub(super) text: String,
    pub(super) why: String,
}

/// The options of one `turnserver.conf` that icegate has an equivalent for.
#[derive(Debug, Default)]
pub(super) struct Settings {
    pub(super) listening_port: Option<u16>,
    pub(super) tls_listening_port: Option<u16>,
    pub(super) alt_listening_port: Option<u16>,
    pub(super) alt_tls_listening_port: Option<u16>,
    pub(super) listening_ips: Vec<IpAddr>,
    pub(super) no_udp: bool,
    pub(super) no_tcp: bool,
    pub(super) no_tls: bool,
    pub(super) relay_ips: Vec<IpAddr>,
    pub(super) min_port: Option<u16>,
    pub(super) max_port: Option<u16>,
    /// The public address, and the private one it stands for (`public/private`).
    pub(super) external_ips: Vec<(IpAddr, Option<IpAddr>)>,
    pub(super) realm: Option<String>,
    pub(super) users: Vec<(String, Credential)>,
    pub(super) use_auth_secret: bool,
    pub(super) secrets: Vec<String>,
    pub(super) total_quota: Option<u32>,
    pub(super) user_quota: Option<u32>,
    /// Bytes per second; 0 is coturn's unlimited.
    pub(super) max_bps: Option<u64>,
    pub(super) bps_capacity: Option<u64>,
    pub(super) denied_peers: Vec<IpNet>,
    pub(super) allowed_peers: Vec<IpNet>,
    pub(super) allow_loopback_peers: bool,
    pub(super) cert: Option<String>,
    pub(super) pkey: Option<String>,
    pub(super) alternate_servers: Vec<SocketAddr>,
    pub(super) tls_alternate_servers: Vec<SocketAddr>,
    pub(super) prometheus: bool,
    pub(super) prometheus_port: Option<u16>,
    /// Seconds.
    pub(super) stale_nonce: Option<u64>,
    pub(super) max_allocate_lifetime: Option<u64>,
    pub(super) channel_lifetime: Option<u64>,
    pub(super) permission_lifetime: Option<u64>,
    /// "debug" for `verbose`, "trace" for `Verbose`.
    pub(super) log_level: Option<&'static str>,
    /// Options icegate needs no line for, with why, in file order, each once.
    pub(super) builtin: Vec<(String, &'static str)>,
    /// Options icegate has nothing like, with why, in file order.
    pub(super) missing: Vec<SetAside>,
    /// Options whose value icegate could not take.
    pub(super) rejected: Vec<SetAside>,
    /// Lines that are no coturn option icegate knows of.
    pub(super) unknown: Vec<SetAside>,
}

impl Settings {
    /// Reads every option line of `text`.
    pub(super) fn read(text: &str) -> Self {
        let mut settings = Self::default();
        for line in option_lines(text) {
            match coturn_option(line.name) {
                Some(Equivalent::Key(_)) => {
                    if let Err(why) = settings.take(&line) {
                        settings.rejected.push(set_aside(&line, why));
                    }
                }
                Some(Equivalent::Builtin(why)) => {
                    if !settings.builtin.iter().any(|(name, _)| name == line.name) {
                        settings.builtin.push((line.name.to_owned(), why));
                    }
                }
                Some(Equivalent::Missing(why)) => {
                    settings.missing.push(set_aside(&line, why.to_owned()));
                }
                None => settings
                    .unknown
                    .push(set_aside(&line, "not a coturn option".to_owned())),
            }
        }
        settings
    }

    /// Takes one option that has an icegate key (every `Key` of the table).
    fn take(&mut self, line: &OptionLine<'_>) -> Result<(), String> {
        let value = line.value;
        match line.name {
            "listening-port" => self.listening_port = Some(port(value)?),
            "tls-listening-port" => self.tls_listening_port = Some(port(value)?),
            "alt-listening-port" => self.alt_listening_port = nonzero_port(value)?,
            "alt-tls-listening-port" => self.alt_tls_listening_port = nonzero_port(value)?,
            "listening-ip" => push_new(&mut self.listening_ips, ip(value)?),
            "no-udp" => self.no_udp = flag(value)?,
            "no-tcp" => self.no_tcp = flag(value)?,
            "no-tls" => self.no_tls = flag(value)?,
            "relay-ip" => push_new(&mut self.relay_ips, ip(value)?),
            "min-port" => self.min_port = Some(port(value)?),
            "max-port" => self.max_port = Some(port(value)?),
            "external-ip" => self.external_ips.push(external_ip(value)?),
            "realm" => self.realm = Some(realm(value)?),
            "user" => self.take_user(required(value)?)?,
            "use-auth-secret" => self.use_auth_secret = flag(value)?,
            "static-auth-secret" => push_new(&mut self.secrets, secret(value)?),
            "total-quota" => self.total_quota = Some(count(value)?),
            "user-quota" => self.user_quota = Some(count(value)?),
            "max-bps" => self.max_bps = Some(byte_rate(value)?),
            "bps-capacity" => self.bps_capacity = Some(byte_rate(value)?),
            "denied-peer-ip" => self.denied_peers.extend(range_networks(required(value)?)?),
            "allowed-peer-ip" => self.allowed_peers.extend(range_networks(required(value)?)?),
            "allow-loopback-peers" => self.allow_loopback_peers = flag(value)?,
            "cert" => self.cert = Some(required(value)?.to_owned()),
            "pkey" => self.pkey = Some(required(value)?.to_owned()),
            "alternate-server" => {
                push_new(&mut self.alternate_servers, server(value, COTURN_PORT)?)
            }
            "tls-alternate-server" => {
                push_new(
                    &mut self.tls_alternate_servers,
                    server(value, COTURN_TLS_PORT)?,
                );
            }
            "prometheus" => self.prometheus = flag(value)?,
            "prometheus-port" => self.prometheus_port = Some(port(value)?),
            "stale-nonce" => {
                self.stale_nonce = Some(value.map_or(Ok(COTURN_STALE_NONCE_SECS), seconds)?);
            }
            "max-allocate-lifetime" => self.max_allocate_lifetime = Some(lifetime(value)?),
            "channel-lifetime" => self.channel_lifetime = Some(lifetime(value)?),
            "permission-lifetime" => self.permission_lifetime = Some(lifetime(value)?),
            "verbose" => self.log_level = Some("debug"),
            "Verbose" => self.log_level = Some("trace"),
            other => return Err(format!("{other} has an icegate key but no conversion")),
        }
        Ok(())
    }

    fn take_user(&mut self, value: &str) -> Result<(), String> {
        let Some((name, credential)) = value.split_once(':') else {
            return Err("expected NAME:PASSWORD or NAME:0xKEY".to_owned());
        };
        if name.is_empty() || name.len() > MAX_USERNAME_BYTES {
            return Err(format!(
                "expected a user name of 1 to {MAX_USERNAME_BYTES} bytes"
            ));
        }
        if self.users.iter().any(|(other, _)| other == name) {
            return Err(format!("user {name:?} was given before"));
        }
        let is_key = credential.len() == 34
            && credential.starts_with("0x")
            && credential[2..].bytes().all(|b| b.is_ascii_hexdigit());
        let credential = if is_key {
            Credential::Key(credential.to_owned())
        } else if credential.is_empty() {
            return Err("expected a password after NAME:".to_owned());
        } else {
            Credential::Password(credential.to_owned())
        };
        self.users.push((name.to_owned(), credential));
        Ok(())
    }
}

fn set_aside(line: &OptionLine<'_>, why: String) -> SetAside {
    SetAside {
        line: line.number,
        text: line.text.to_owned(),
        why,
    }
}

fn push_new<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

fn required(value: Option<&str>) -> Result<&str, String> {
    value.ok_or_else(|| "expected a value".to_owned())
}

/// A bare flag, or one written with a boolean value.
fn flag(value: Option<&str>) -> Result<bool, String> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(_) => Err("expected a bare flag".to_owned()),
    }
}

fn number<T: std::str::FromStr>(value: Option<&str>, what: &str) -> Result<T, String> {
    let text = required(value)?;
    text.parse()
        .map_err(|_| format!("expected {what}, got {text:?}"))
}

fn port(value: Option<&str>) -> Result<u16, String> {
    match number(value, "a port from 1 to 65535")? {
        0 => Err("expected a port from 1 to 65535, got 0".to_owned()),
        port => Ok(port),
    }
}

/// coturn's 0 means "the main port plus one", which icegate has no use for.
fn nonzero_port(value: Option<&str>) -> Result<Option<u16>, String> {
    let port: u16 = number(value, "a port from 0 to 65535")?;
    Ok((port != 0).then_some(port))
}

fn ip(value: Option<&str>) -> Result<IpAddr, String> {
    number(value, "an IP address")
}

/// Allocations; coturn's 0 (no limit) is kept as 0.
fn count(value: Option<&str>) -> Result<u32, String> {
    number(value, "a whole number from 0 to 4294967295")
}

fn seconds(value: &str) -> Result<u64, String> {
    let longest = MAX_DURATION.as_secs();
    match number(Some(value), "a number of seconds")? {
        0 => Err("expected at least 1 second".to_owned()),
        secs if secs > longest => Err(format!("icegate takes at most {longest} seconds")),
        secs => Ok(secs),
    }
}

fn lifetime(value: Option<&str>) -> Result<u64, String> {
    seconds(required(value)?)
}

fn byte_rate(value: Option<&str>) -> Result<u64, String> {
    let bytes = number(value, "a number of bytes per second")?;
    if bytes == 0 || ByteRate::LIMITS.contains(&bytes) {
        Ok(bytes)
    } else {
        Err(format!(
            "icegate takes {} to {} bytes per second, got {bytes}",
            ByteRate::LIMITS.start(),
            ByteRate::LIMITS.end()
        ))
    }
}

fn external_ip(value: Option<&str>) -> Result<(IpAddr, Option<IpAddr>), String> {
    let text = required(value)?;
    let (public, private) = match text.split_once('/') {
        Some((public, private)) => (public, Some(private)),
        None => (text, None),
    };
    let public: IpAddr = ip(Some(public.trim()))?;
    if public.is_unspecified() {
        return Err("expected an address that peers can reach".to_owned());
    }
    let private = private.map(|p| ip(Some(p.trim()))).transpose()?;
    if private.is_some_and(|p| p.is_ipv4() != public.is_ipv4()) {
        return Err("expected the public and private address of one family".to_owned());
    }
    Ok((public, private))
}

fn realm(value: Option<&str>) -> Result<String, String> {
    let text = required(value)?;
    if text.chars().count() > MAX_REALM_CHARS {
        return Err(format!("expected at most {MAX_REALM_CHARS} characters"));
    }
    Ok(text.to_owned())
}

fn secret(value: Option<&str>) -> Result<String, String> {
    let text = required(value)?;
    if text.chars().count() < MIN_SECRET_CHARS {
        return Err(format!(
            "icegate takes secrets of at least {MIN_SECRET_CHARS} characters"
        ));
    }
    Ok(text.to_owned())
}

/// `IP`, `IP:PORT` or `[IPv6]:PORT`; without a port, coturn's default for the transport.
fn server(value: Option<&str>, default_port: u16) -> Result<SocketAddr, String> {
    let text = required(value)?;
    text.parse::<SocketAddr>()
        .or_else(|_| {
            text.parse::<IpAddr>()
                .map(|ip| SocketAddr::new(ip, default_port))
        })
        .map_err(|_| format!("expected IP or IP:PORT, got {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::COTURN_OPTIONS;

    /// Every option the table gives an icegate key is converted, not set aside as unknown.
    #[test]
    fn every_keyed_option_is_taken() {
        for (name, equivalent) in COTURN_OPTIONS {
            if !matches!(equivalent, Equivalent::Key(_)) {
                continue;
            }
            let mut settings = Settings::default();
            let line = OptionLine {
                number: 1,
                name,
                value: None,
                text: name,
            };
            if let Err(why) = settings.take(&line) {
                assert!(!why.contains("no conversion"), "{name}: {why}");
            }
        }
    }

    #[test]
    fn values_are_typed() {
        let s = Settings::read(
            "listening-port=3479\nlistening-ip=10.0.0.1\nlistening-ip=::1\nno-udp\n\
             external-ip=203.0.113.1/10.0.0.1\nuser=alice:pw\n\
             user=bob:0x0123456789abcdef0123456789ABCDEF\nstatic-auth-secret=long-enough\n\
             total-quota=100\nmax-bps=0\ndenied-peer-ip=10.0.0.0-10.255.255.255\n\
             stale-nonce\nalternate-server=[2001:db8::1]:3478\n",
        );
        assert_eq!(s.listening_port, Some(3479));
        assert_eq!(s.listening_ips.len(), 2);
        assert!(s.no_udp && !s.no_tcp);
        assert_eq!(
            s.external_ips,
            [(
                "203.0.113.1".parse().unwrap(),
                Some("10.0.0.1".parse().unwrap())
            )]
        );
        assert_eq!(
            s.users,
            [
                ("alice".to_owned(), Credential::Password("pw".to_owned())),
                (
                    "bob".to_owned(),
                    Credential::Key("0x0123456789abcdef0123456789ABCDEF".to_owned())
                )
            ]
        );
        assert_eq!(s.secrets, ["long-enough"]);
        assert_eq!((s.total_quota, s.max_bps), (Some(100), Some(0)));
        assert_eq!(s.denied_peers, ["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        assert_eq!(s.stale_nonce, Some(600));
        assert_eq!(
            s.alternate_servers,
            ["[2001:db8::1]:3478".parse::<SocketAddr>().unwrap()]
        );
        assert!(s.rejected.is_empty() && s.unknown.is_empty(), "{s:?}");
    }

    #[test]
    fn bad_values_are_set_aside_with_the_reason() {
        let s = Settings::read(
            "listening-port=0\nlistening-port=70000\nrelay-ip=nope\nstatic-auth-secret=short\n\
             user=nocolon\nuser=:pw\nuser=a:x\nuser=a:y\nmax-bps=5\nexternal-ip=0.0.0.0\n\
             external-ip=1.2.3.4/::1\ndenied-peer-ip=10.0.0.9-10.0.0.1\nrealm\n\
             stale-nonce=0\nno-udp=maybe\nalternate-server=example.org\n\
             max-allocate-lifetime=18446744073709551615\n",
        );
        let lines: Vec<usize> = s.rejected.iter().map(|r| r.line).collect();
        assert_eq!(
            lines,
            [1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
        );
        assert_eq!(s.users.len(), 1);
        assert!(s.rejected[3].why.contains("at least 8"));
    }

    #[test]
    fn other_options_are_sorted_by_what_icegate_makes_of_them() {
        let s = Settings::read("lt-cred-mech\nlt-cred-mech\nno-cli\nfrobnicate=1\n");
        assert_eq!(
            s.builtin,
            [(
                "lt-cred-mech".to_owned(),
                "long-term credentials are icegate's only mechanism"
            )]
        );
        assert_eq!(s.missing[0].text, "no-cli");
        assert_eq!(s.unknown[0].line, 4);
    }
}
