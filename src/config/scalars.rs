//! Values that one TOML value converts to (strings, paths, counts, durations, addresses,
//! networks, port ranges), each with a message saying what was expected.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use toml::de::DeValue;

/// A value that one TOML value converts to, with a message saying what was expected.
pub(super) trait Scalar: Sized {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String>;
}

/// How a value is shown after "got": strings quoted, tables and arrays by kind.
pub(super) fn got(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => format!("{:?}", &**s),
        DeValue::Integer(i) => i.to_string(),
        DeValue::Float(f) => f.to_string(),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => d.to_string(),
        DeValue::Array(_) => "an array".to_owned(),
        DeValue::Table(_) => "a table".to_owned(),
    }
}

pub(super) fn expected(what: &str, value: &DeValue<'_>) -> String {
    format!("expected {what}, got {}", got(value))
}

pub(super) fn string<'v>(value: &'v DeValue<'_>, what: &str) -> Result<&'v str, String> {
    match value {
        DeValue::String(s) => Ok(&**s),
        other => Err(expected(what, other)),
    }
}

impl Scalar for String {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        string(value, "a string").map(str::to_owned)
    }
}

impl Scalar for PathBuf {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        const WHAT: &str = "a file path like \"/etc/icegate/rest-secret\"";
        match string(value, WHAT)? {
            "" => Err(expected(WHAT, value)),
            path => Ok(PathBuf::from(path)),
        }
    }
}

/// Counts: every count in the schema must be at least 1.
impl Scalar for u32 {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        const WHAT: &str = "a whole number from 1 to 4294967295";
        let DeValue::Integer(i) = value else {
            return Err(expected(WHAT, value));
        };
        match u32::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(expected(WHAT, value)),
        }
    }
}

impl Scalar for bool {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        match value {
            DeValue::Boolean(b) => Ok(*b),
            other => Err(expected("true or false", other)),
        }
    }
}

impl Scalar for Duration {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        match value {
            DeValue::String(s) => parse_duration(s).map_err(|what| expected(&what, value)),
            DeValue::Integer(_) | DeValue::Float(_) => Err(format!(
                "{}; a unit (s, m, h, d) is required",
                expected(DURATION_WHAT, value)
            )),
            other => Err(expected(DURATION_WHAT, other)),
        }
    }
}

/// A duration of keys that zero turns off (`"0s"`): any other value is
/// read as a [`Duration`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ZeroOrDuration(pub(crate) Duration);

impl Scalar for ZeroOrDuration {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        if let DeValue::String(s) = value
            && humantime::parse_duration(s.trim()).is_ok_and(|d| d.is_zero())
        {
            return Ok(Self(Duration::ZERO));
        }
        Duration::from_toml(value).map(Self)
    }
}

const DURATION_WHAT: &str = "a duration like \"10m\", \"90s\" or \"1h30m\"";

/// The longest duration any key or option takes: beyond any sensible
/// setting, and far within what a clock reading can have added to it (a
/// lifetime of 500 billion years made the first Allocate panic).
/// Years of 365.25 days, as humantime reads "y".
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// A humane duration greater than zero and at most 100 years with a unit, as in the config file
/// and on the command line; the error says what was expected.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("{DURATION_WHAT}; a unit (s, m, h, d) is required"));
    }
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("a duration greater than zero".to_owned()),
        Ok(d) if d > MAX_DURATION => Err("a duration of at most 100 years".to_owned()),
        Ok(d) => Ok(d),
        Err(_) => Err(DURATION_WHAT.to_owned()),
    }
}

impl Scalar for SocketAddr {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        const WHAT: &str = "a socket address like \"0.0.0.0:3478\" or \"[::]:3478\"";
        string(value, WHAT)?
            .trim()
            .parse()
            .map_err(|_| expected(WHAT, value))
    }
}

impl Scalar for IpAddr {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        const WHAT: &str = "an IP address like \"0.0.0.0\" or \"::\"";
        string(value, WHAT)?
            .trim()
            .parse()
            .map_err(|_| expected(WHAT, value))
    }
}

/// A network "10.0.0.0/8", or a bare address meaning /32 or /128.
impl Scalar for IpNet {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        const WHAT: &str = "a network like \"10.0.0.0/8\" or an IP address";
        let text = string(value, WHAT)?.trim();
        if !text.contains('/') {
            return text
                .parse::<IpAddr>()
                .map(IpNet::from)
                .map_err(|_| expected(WHAT, value));
        }
        let net: IpNet = text.parse().map_err(|_| expected(WHAT, value))?;
        // "10.0.0.1/8" is most likely a typo: say so rather than silently widening it.
        if net.trunc() != net {
            return Err(format!(
                "expected a network with no host bits set like \"{}\", got {}",
                net.trunc(),
                got(value)
            ));
        }
        Ok(net)
    }
}

/// An inclusive range of UDP ports, `low..=high`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PortRange {
    pub(crate) low: u16,
    pub(crate) high: u16,
}

impl PortRange {
    /// Number of ports in the range.
    pub(crate) fn len(&self) -> usize {
        if self.high < self.low {
            0
        } else {
            usize::from(self.high - self.low) + 1
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

impl Scalar for PortRange {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        const WHAT: &str = "a port range like \"49152-65535\"";
        let text = string(value, WHAT)?;
        let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p != 0);
        let Some((low, high)) = text
            .split_once('-')
            .and_then(|(l, h)| Some((port(l)?, port(h)?)))
        else {
            return Err(expected(WHAT, value));
        };
        if low > high {
            return Err(expected(
                "a port range with the low port first, like \"49152-65535\"",
                value,
            ));
        }
        Ok(PortRange { low, high })
    }
}

/// The kind of a value, for messages that must not quote it.
pub(super) fn kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{MINIMAL, parse_err};

    #[test]
    fn durations() {
        let d = |s: &str| Duration::from_toml(&DeValue::String(s.into()));
        assert_eq!(d("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(d("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("1d"), Ok(Duration::from_secs(86_400)));
        assert!(d("0s").unwrap_err().contains("greater than zero"));
        assert_eq!(d("100y"), Ok(MAX_DURATION));
        assert!(d("101y").unwrap_err().contains("at most 100 years"));
        assert!(
            d("18446744073709551615s")
                .unwrap_err()
                .contains("at most 100 years")
        );
        assert!(
            d("600")
                .unwrap_err()
                .contains("a unit (s, m, h, d) is required")
        );
        assert!(
            d("ten minutes")
                .unwrap_err()
                .contains("expected a duration like \"10m\"")
        );
        let e = parse_err(&format!("{MINIMAL}nonce-lifetime = 600\n"));
        assert!(e.to_string().contains("got 600; a unit"), "{e}");
    }

    #[test]
    fn port_ranges() {
        let p = |s: &str| PortRange::from_toml(&DeValue::String(s.into()));
        assert_eq!(
            p("3478-3478"),
            Ok(PortRange {
                low: 3478,
                high: 3478
            })
        );
        assert_eq!(
            p(" 1 - 65535 "),
            Ok(PortRange {
                low: 1,
                high: 65535
            })
        );
        for bad in ["0-10", "10", "10-", "-10", "1-65536", "a-b", "20-10"] {
            assert!(p(bad).is_err(), "{bad}");
        }
        let r = PortRange { low: 10, high: 12 };
        assert_eq!((r.len(), r.to_string()), (3, "10-12".to_owned()));
    }

    #[test]
    fn networks() {
        let n = |s: &str| IpNet::from_toml(&DeValue::String(s.into()));
        assert_eq!(n("10.0.0.1"), Ok("10.0.0.1/32".parse().unwrap()));
        assert_eq!(n("::1"), Ok("::1/128".parse().unwrap()));
        assert_eq!(n("fd00::/8"), Ok("fd00::/8".parse().unwrap()));
        assert!(n("10.0.0.1/8").unwrap_err().contains("\"10.0.0.0/8\""));
        assert!(n("10.0.0.0/33").is_err());
    }
}
