//! The `[throttle]` table: how fast one source may be answered without
//! authenticating, and how a user whose password keeps failing is slowed.

use std::ops::RangeInclusive;
use std::time::Duration;

use super::walk::{Ctx, Section};

/// A browser's ICE agent sends a handful of unauthenticated requests per
/// allocation (the first Allocate, a stale nonce now and then): a burst of
/// 20 at 5/s covers several peer connections opened at once.
const DEFAULT_UNAUTHENTICATED_PER_SECOND: u32 = 5;
const DEFAULT_UNAUTHENTICATED_BURST: u32 = 20;
/// ICE connectivity checks and keepalives to a STUN server are a few per
/// second; 100/s with a burst of 200 leaves room for a NAT full of hosts.
const DEFAULT_BINDING_PER_SECOND: u32 = 100;
const DEFAULT_BINDING_BURST: u32 = 200;
/// Sources (and users) tracked at once; each costs some 100 bytes.
const DEFAULT_MAX_TRACKED: u32 = 65_536;
/// Failed logins for one user within `login-failure-window` before it backs off.
const DEFAULT_LOGIN_FAILURES: u32 = 10;
const DEFAULT_LOGIN_FAILURE_WINDOW: Duration = Duration::from_secs(60);
const DEFAULT_LOGIN_BACKOFF_MAX: Duration = Duration::from_secs(300);
const DEFAULT_AUTH_LOG_INTERVAL: Duration = Duration::from_secs(10);
const RATE: RangeInclusive<u32> = 1..=1_000_000;
const TRACKED: RangeInclusive<u32> = 1..=16_777_216;
const FAILURES: RangeInclusive<u32> = 1..=1_000_000;
const WINDOW: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(86_400);
const THROTTLE_KEYS: &[&str] = &[
    "unauthenticated-per-second",
    "unauthenticated-burst",
    "binding-per-second",
    "binding-burst",
    "max-tracked",
    "login-failures",
    "login-failure-window",
    "login-backoff-max",
    "auth-log-interval",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ThrottleConfig {
    /// 401s and failed authentications answered per source (an IPv4 address or an IPv6 /64).
    pub(crate) unauthenticated_per_second: u32,
    pub(crate) unauthenticated_burst: u32,
    /// Binding requests answered per source.
    pub(crate) binding_per_second: u32,
    pub(crate) binding_burst: u32,
    /// Sources tracked at once, and users with failed logins tracked at once.
    pub(crate) max_tracked: u32,
    /// Failed logins within `login_failure_window` before a user backs off.
    pub(crate) login_failures: u32,
    /// A user quiet this long has its failures forgotten.
    pub(crate) login_failure_window: Duration,
    /// The longest backoff; it starts at 1 s and doubles.
    pub(crate) login_backoff_max: Duration,
    /// At most one `auth-failed` line per source this often.
    pub(crate) auth_log_interval: Duration,
}

pub(crate) const DEFAULT_THROTTLE: ThrottleConfig = ThrottleConfig {
    unauthenticated_per_second: DEFAULT_UNAUTHENTICATED_PER_SECOND,
    unauthenticated_burst: DEFAULT_UNAUTHENTICATED_BURST,
    binding_per_second: DEFAULT_BINDING_PER_SECOND,
    binding_burst: DEFAULT_BINDING_BURST,
    max_tracked: DEFAULT_MAX_TRACKED,
    login_failures: DEFAULT_LOGIN_FAILURES,
    login_failure_window: DEFAULT_LOGIN_FAILURE_WINDOW,
    login_backoff_max: DEFAULT_LOGIN_BACKOFF_MAX,
    auth_log_interval: DEFAULT_AUTH_LOG_INTERVAL,
};

pub(super) fn read_throttle(cx: &mut Ctx<'_>, top: &Section<'_, '_>) -> ThrottleConfig {
    let table = top.section(cx, "throttle", THROTTLE_KEYS);
    let number = |cx: &mut Ctx<'_>, key: &str, default: u32, range: RangeInclusive<u32>| {
        let value = table.get(cx, key, default);
        if value.ok && !range.contains(&value.value) {
            let message = format!(
                "expected a whole number from {} to {}, got {}",
                range.start(),
                range.end(),
                value.value
            );
            cx.report(table.key(key), value.span.as_ref(), message);
        }
        value.value
    };
    let unauthenticated_per_second = number(
        cx,
        "unauthenticated-per-second",
        DEFAULT_UNAUTHENTICATED_PER_SECOND,
        RATE,
    );
    let unauthenticated_burst = number(
        cx,
        "unauthenticated-burst",
        DEFAULT_UNAUTHENTICATED_BURST,
        RATE,
    );
    let binding_per_second = number(cx, "binding-per-second", DEFAULT_BINDING_PER_SECOND, RATE);
    let binding_burst = number(cx, "binding-burst", DEFAULT_BINDING_BURST, RATE);
    let max_tracked = number(cx, "max-tracked", DEFAULT_MAX_TRACKED, TRACKED);
    let login_failures = number(cx, "login-failures", DEFAULT_LOGIN_FAILURES, FAILURES);
    let duration = |cx: &mut Ctx<'_>, key: &str, default: Duration| {
        let value = table.get(cx, key, default);
        if value.ok && !WINDOW.contains(&value.value) {
            let message = format!(
                "expected a duration from 1s to 1day, got {}",
                humantime::format_duration(value.value)
            );
            cx.report(table.key(key), value.span.as_ref(), message);
        }
        value.value
    };
    let login_failure_window = duration(cx, "login-failure-window", DEFAULT_LOGIN_FAILURE_WINDOW);
    let login_backoff_max = duration(cx, "login-backoff-max", DEFAULT_LOGIN_BACKOFF_MAX);
    let auth_log_interval = duration(cx, "auth-log-interval", DEFAULT_AUTH_LOG_INTERVAL);
    ThrottleConfig {
        unauthenticated_per_second,
        unauthenticated_burst,
        binding_per_second,
        binding_burst,
        max_tracked,
        login_failures,
        login_failure_window,
        login_backoff_max,
        auth_log_interval,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{MINIMAL, parse_err, parse_ok};

    #[test]
    fn defaults_and_ranges() {
        assert_eq!(parse_ok(MINIMAL).throttle, super::DEFAULT_THROTTLE);
        let e = parse_err(&format!(
            "{MINIMAL}[throttle]\nunauthenticated-burst = 0\nlogin-backoff-max = \"2days\"\n"
        ));
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "throttle.unauthenticated-burst",
                "throttle.login-backoff-max"
            ]
        );
        assert!(e.problems[0].line.is_some());
    }
}
