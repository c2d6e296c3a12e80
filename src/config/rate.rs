//! Byte rates, for the bandwidth caps: a whole number of bytes per second
//! (what coturn's `max-bps` means), text with a unit ("40 Mbit/s",
//! "5 MB/s"), or "unlimited".

use std::fmt;

use toml::de::DeValue;

use super::scalars::{Scalar, expected};

/// Below this no call carries even audio; a typo more likely than a wish.
const LOWEST: u64 = 1_000;
const HIGHEST: u64 = 100_000_000_000;
const WHAT: &str = "a rate like \"40 Mbit/s\", \"5 MB/s\", a number of bytes per second, \
                    or \"unlimited\"";

/// A cap in bytes per second; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ByteRate(pub(crate) Option<u64>);

impl ByteRate {
    pub(crate) const UNLIMITED: Self = Self(None);
    /// The slowest and fastest cap a file may set, in bytes per second.
    pub(crate) const LIMITS: std::ops::RangeInclusive<u64> = LOWEST..=HIGHEST;
}

impl fmt::Display for ByteRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("unlimited"),
            Some(bytes) => write!(f, "{bytes} B/s"),
        }
    }
}

impl Scalar for ByteRate {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        let bytes = match value {
            DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix()).ok(),
            DeValue::String(text) if text.trim() == "unlimited" => return Ok(Self::UNLIMITED),
            DeValue::String(text) => parse_rate(text),
            _ => None,
        };
        match bytes {
            Some(bytes) if (LOWEST..=HIGHEST).contains(&bytes) => Ok(Self(Some(bytes))),
            Some(_) => Err(format!(
                "{}; it must lie from 1 kB/s to 100 GB/s",
                expected(WHAT, value)
            )),
            None => Err(expected(WHAT, value)),
        }
    }
}

/// "2.5 Mbit/s" → 312 500 bytes per second. Units are decimal (k = 1000),
/// as link speeds are quoted; `B` is a byte and `bit` a bit.
fn parse_rate(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let bits_per_unit = match unit.trim() {
        "B/s" => 8.0,
        "kB/s" => 8e3,
        "MB/s" => 8e6,
        "GB/s" => 8e9,
        "bit/s" => 1.0,
        "kbit/s" => 1e3,
        "Mbit/s" => 1e6,
        "Gbit/s" => 1e9,
        _ => return None,
    };
    let bytes = (number * bits_per_unit / 8.0).round();
    // Within u64 (NaN is not): the caller's range check rejects the rest.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "checked to lie within u64 first"
    )]
    (0.0..1.8e19).contains(&bytes).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Result<ByteRate, String> {
        ByteRate::from_toml(&DeValue::String(s.into()))
    }

    #[test]
    fn units_bytes_and_bits() {
        assert_eq!(text("40 Mbit/s"), Ok(ByteRate(Some(5_000_000))));
        assert_eq!(text("5MB/s"), Ok(ByteRate(Some(5_000_000))));
        assert_eq!(text("2.5 Mbit/s"), Ok(ByteRate(Some(312_500))));
        assert_eq!(text("64 kbit/s"), Ok(ByteRate(Some(8_000))));
        assert_eq!(text("1 Gbit/s"), Ok(ByteRate(Some(125_000_000))));
        assert_eq!(text(" unlimited "), Ok(ByteRate::UNLIMITED));
    }

    #[test]
    fn bad_rates_say_what_was_expected() {
        for bad in ["40 Mbps", "fast", "", "5 mb/s", "1.2.3 MB/s", "-5 MB/s"] {
            let error = text(bad).unwrap_err();
            assert!(error.starts_with("expected a rate like"), "{bad}: {error}");
        }
        let error = text("100 B/s").unwrap_err();
        assert!(error.contains("from 1 kB/s to 100 GB/s"), "{error}");
        assert!(text("1000 GB/s").is_err());
    }
}
