//! The `[admin]` table: the address and token of the admin listener.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::http::MIN_API_KEY_CHARS;
use super::walk::{Ctx, Section};

const DEFAULT_ADMIN_ADDRESS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9641);
const ADMIN_KEYS: &[&str] = &["address", "token", "max-bans"];
/// Bans in force at once; each costs a line of `bans.json` and its memory.
const DEFAULT_MAX_BANS: u32 = 100_000;

/// The `[admin]` table: where `/metrics`, `/healthz`, `/allocations`,
/// `/drain` and `/reload` are served. `Debug` redacts the token.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AdminConfig {
    pub(crate) address: SocketAddr,
    /// A bearer token every request but `/healthz` must present.
    pub(crate) token: Option<String>,
    /// Bans in force at once (`POST /bans` answers 507 past it).
    pub(crate) max_bans: u32,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("max_bans", &self.max_bans)
            .finish()
    }
}

pub(super) fn read_admin(cx: &mut Ctx<'_>, top: &Section<'_, '_>) -> AdminConfig {
    let table = top.section(cx, "admin", ADMIN_KEYS);
    let address = table.get(cx, "address", DEFAULT_ADMIN_ADDRESS);
    let token = table.opt::<String>(cx, "token");
    let max_bans = table.get(cx, "max-bans", DEFAULT_MAX_BANS);
    if let Some(text) = &token.value {
        // Messages never quote the token.
        let chars = text.chars().count();
        let message = if chars < MIN_API_KEY_CHARS {
            Some(format!(
                "expected at least {MIN_API_KEY_CHARS} characters, got {chars}"
            ))
        } else if !text.bytes().all(|b| b.is_ascii_graphic()) {
            Some("expected printable ASCII without spaces, as a bearer token is sent".to_owned())
        } else {
            None
        };
        if let Some(message) = message {
            cx.report(table.key("token"), token.span.as_ref(), message);
        }
    }
    AdminConfig {
        address: address.value,
        token: token.value,
        max_bans: max_bans.value,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::testing::{MINIMAL, parse_ok};

    #[test]
    fn admin_listener_and_shutdown_grace() {
        let config = parse_ok(MINIMAL);
        assert_eq!(config.admin.address, "127.0.0.1:9641".parse().unwrap());
        assert_eq!(config.admin.token, None);
        assert_eq!(config.admin.max_bans, 100_000);
        assert_eq!(config.shutdown_grace, Duration::from_secs(30));
        let token = "admin-token-0123456789";
        let config = parse_ok(&format!(
            "shutdown-grace = \"2m\"\n{MINIMAL}[admin]\naddress = \"[::1]:9000\"\ntoken = \"{token}\"\nmax-bans = 3\n"
        ));
        assert_eq!(config.admin.address, "[::1]:9000".parse().unwrap());
        assert_eq!(config.admin.token.as_deref(), Some(token));
        assert_eq!(config.admin.max_bans, 3);
        assert_eq!(config.shutdown_grace, Duration::from_secs(120));
        assert!(
            !format!("{config:?}").contains(token),
            "Debug leaks the token"
        );
    }
}
