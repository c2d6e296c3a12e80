//! The `[signal]` table: who may use the WebSocket signaling endpoint (JWT secrets and public
//! keys, allowed origins) and its limits.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::io_message;
use super::scalars::ZeroOrDuration;
use super::walk::{Ctx, Section, values};

const SIGNAL_KEYS: &[&str] = &[
    "auth",
    "jwt-secrets",
    "jwt-public-keys",
    "allowed-origins",
    "max-message-bytes",
    "messages-per-second",
    "message-burst",
    "max-peers-per-room",
    "max-rooms-per-connection",
    "max-metadata-bytes",
    "max-connections",
    "max-connections-per-ip",
    "max-queued-bytes",
    "handshake-timeout",
    "ping-interval",
    "resume-grace",
    "hold-for",
    "max-held-per-room",
    "max-held-bytes-per-room",
    "max-held-per-sender",
    "max-held-bytes-per-sender",
    "y-webrtc-path",
    "peerjs-path",
    "peerjs-keys",
    "peerjs-discovery",
    "peerjs-max-peers",
];
/// HS256 secrets shorter than the hash output are guessable offline from one token.
const MIN_JWT_SECRET_CHARS: usize = 32;
pub(crate) const DEFAULT_SIGNAL_LIMITS: SignalLimits = SignalLimits {
    max_message_bytes: 64 * 1024,
    messages_per_second: 50,
    message_burst: 100,
    max_peers_per_room: 16,
    max_rooms_per_connection: 8,
    max_metadata_bytes: 4096,
    max_connections: 10_000,
    max_connections_per_ip: 64,
    max_queued_bytes: 1024 * 1024,
    handshake_timeout: Duration::from_secs(10),
    ping_interval: Duration::from_secs(30),
    resume_grace: Duration::from_secs(30),
    hold_for: Duration::from_secs(10),
    max_held_per_room: 64,
    max_held_bytes_per_room: 256 * 1024,
    max_held_per_sender: 16,
    max_held_bytes_per_sender: 64 * 1024,
    // What the PeerJS server's `concurrent_limit` defaults to.
    peerjs_max_peers: 5000,
};

/// The `[signal]` table: who may use the WebSocket signaling endpoint, and
/// its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SignalConfig {
    pub(crate) auth: SignalAuth,
    /// HS256 secrets; the first signs tokens made by `icegate token`.
    pub(crate) jwt_secrets: Vec<String>,
    /// ES256 and RS256 verification keys, read and checked at load time.
    pub(crate) jwt_public_keys: Vec<PublicKey>,
    /// Browser origins accepted besides icegate's own (`*` accepts any).
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) limits: SignalLimits,
    /// Where the endpoints of other signaling protocols are served.
    pub(crate) dialects: Dialects,
}

/// The endpoints that speak other projects' signaling protocols, on the
/// same rooms, auth and limits as `/ws`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dialects {
    /// The y-webrtc signaling WebSocket; None when turned off ("").
    pub(crate) y_webrtc_path: Option<String>,
    /// The PeerJS server's routes (`{path}/{key}/id`, `{path}/peerjs`); None when off.
    pub(crate) peerjs_path: Option<String>,
    /// The PeerJS API keys clients may name.
    pub(crate) peerjs_keys: Vec<String>,
    /// Whether `{path}/{key}/peers` lists the connected ids.
    pub(crate) peerjs_discovery: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignalAuth {
    /// Every connection presents a JWT.
    Jwt,
    /// Anyone may connect (set explicitly; warned about at start).
    None,
    /// No key and no explicit `auth`: `/ws` is not served.
    Off,
}

/// A PEM public key for verifying signaling tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublicKey {
    pub(crate) path: PathBuf,
    pub(crate) algorithm: PublicKeyAlgorithm,
    pub(crate) pem: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PublicKeyAlgorithm {
    Es256,
    Rs256,
}

/// Limits of the signaling endpoint; each protects the daemon or the other
/// connections from one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SignalLimits {
    pub(crate) max_message_bytes: u32,
    pub(crate) messages_per_second: u32,
    pub(crate) message_burst: u32,
    pub(crate) max_peers_per_room: u32,
    pub(crate) max_rooms_per_connection: u32,
    pub(crate) max_metadata_bytes: u32,
    pub(crate) max_connections: u32,
    pub(crate) max_connections_per_ip: u32,
    /// Bytes waiting to be sent to one connection (or held for a dropped one
    /// until it resumes); beyond it the connection is closed.
    pub(crate) max_queued_bytes: u32,
    pub(crate) handshake_timeout: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) resume_grace: Duration,
    /// How long a signal to a peer not (yet) in its room waits for it; zero
    /// answers `peer-not-found` at once.
    pub(crate) hold_for: Duration,
    /// Signals held in one room, and their bytes.
    pub(crate) max_held_per_room: u32,
    pub(crate) max_held_bytes_per_room: u32,
    /// Signals held from one sender in one room, and their bytes.
    pub(crate) max_held_per_sender: u32,
    pub(crate) max_held_bytes_per_sender: u32,
    /// PeerJS clients of one key at once (they share one quiet room).
    pub(crate) peerjs_max_peers: u32,
}

pub(super) fn read_signal(cx: &mut Ctx<'_>, top: &Section<'_, '_>) -> SignalConfig {
    let table = top.section(cx, "signal", SIGNAL_KEYS);
    let auth = table.opt::<String>(cx, "auth");
    let secrets = table.list::<String>(cx, "jwt-secrets", Vec::new());
    for (i, item) in secrets.value.iter().enumerate() {
        let chars = item.value.chars().count();
        if chars < MIN_JWT_SECRET_CHARS {
            let message =
                format!("expected at least {MIN_JWT_SECRET_CHARS} characters, got {chars}");
            let key = format!("{}[{i}]", table.key("jwt-secrets"));
            cx.report(key, item.span.as_ref(), message);
        }
    }
    let key_paths = table.list::<PathBuf>(cx, "jwt-public-keys", Vec::new());
    let mut public_keys = Vec::new();
    for (i, item) in key_paths.value.iter().enumerate() {
        let path = match cx.base_dir {
            Some(base) if item.value.is_relative() => base.join(&item.value),
            _ => item.value.clone(),
        };
        match cx.may_read(&path).and_then(|()| read_public_key(&path)) {
            Ok(key) => public_keys.push(key),
            Err(message) => {
                let key = format!("{}[{i}]", table.key("jwt-public-keys"));
                cx.report(key, item.span.as_ref(), message);
            }
        }
    }
    let origins = table.list::<String>(cx, "allowed-origins", Vec::new());
    for (i, item) in origins.value.iter().enumerate() {
        if !is_origin(&item.value) {
            let message = format!(
                "expected \"*\" or an origin like \"https://app.example.org\" \
                 (scheme, host and optional port; no path), got {:?}",
                item.value
            );
            let key = format!("{}[{i}]", table.key("allowed-origins"));
            cx.report(key, item.span.as_ref(), message);
        }
    }
    let has_keys = !secrets.value.is_empty() || !key_paths.value.is_empty();
    let auth = match auth.value.as_deref() {
        None if has_keys => SignalAuth::Jwt,
        None => SignalAuth::Off,
        Some("jwt") => {
            if !has_keys && secrets.ok && key_paths.ok {
                cx.report(
                    table.key("auth"),
                    auth.span.as_ref(),
                    "auth = \"jwt\" needs signal.jwt-secrets or signal.jwt-public-keys",
                );
            }
            SignalAuth::Jwt
        }
        Some("none") => SignalAuth::None,
        Some(other) => {
            let message = format!("expected \"jwt\" or \"none\", got {other:?}");
            cx.report(table.key("auth"), auth.span.as_ref(), message);
            SignalAuth::Off
        }
    };

    let defaults = DEFAULT_SIGNAL_LIMITS;
    let max_message_bytes = table.get(cx, "max-message-bytes", defaults.max_message_bytes);
    if max_message_bytes.ok && !(256..=MAX_SIGNAL_MESSAGE_BYTES).contains(&max_message_bytes.value)
    {
        let message = format!(
            "expected a size from 256 to {MAX_SIGNAL_MESSAGE_BYTES} bytes, got {}",
            max_message_bytes.value
        );
        cx.report(
            table.key("max-message-bytes"),
            max_message_bytes.span.as_ref(),
            message,
        );
    }
    let limits = SignalLimits {
        max_message_bytes: max_message_bytes.value,
        messages_per_second: table
            .get(cx, "messages-per-second", defaults.messages_per_second)
            .value,
        message_burst: table.get(cx, "message-burst", defaults.message_burst).value,
        max_peers_per_room: table
            .get(cx, "max-peers-per-room", defaults.max_peers_per_room)
            .value,
        max_rooms_per_connection: table
            .get(
                cx,
                "max-rooms-per-connection",
                defaults.max_rooms_per_connection,
            )
            .value,
        max_metadata_bytes: table
            .get(cx, "max-metadata-bytes", defaults.max_metadata_bytes)
            .value,
        max_connections: table
            .get(cx, "max-connections", defaults.max_connections)
            .value,
        max_connections_per_ip: table
            .get(
                cx,
                "max-connections-per-ip",
                defaults.max_connections_per_ip,
            )
            .value,
        max_queued_bytes: table
            .get(cx, "max-queued-bytes", defaults.max_queued_bytes)
            .value,
        handshake_timeout: table
            .get(cx, "handshake-timeout", defaults.handshake_timeout)
            .value,
        ping_interval: table.get(cx, "ping-interval", defaults.ping_interval).value,
        resume_grace: table.get(cx, "resume-grace", defaults.resume_grace).value,
        hold_for: table
            .get(cx, "hold-for", ZeroOrDuration(defaults.hold_for))
            .value
            .0,
        max_held_per_room: table
            .get(cx, "max-held-per-room", defaults.max_held_per_room)
            .value,
        max_held_bytes_per_room: table
            .get(
                cx,
                "max-held-bytes-per-room",
                defaults.max_held_bytes_per_room,
            )
            .value,
        max_held_per_sender: table
            .get(cx, "max-held-per-sender", defaults.max_held_per_sender)
            .value,
        max_held_bytes_per_sender: table
            .get(
                cx,
                "max-held-bytes-per-sender",
                defaults.max_held_bytes_per_sender,
            )
            .value,
        peerjs_max_peers: table
            .get(cx, "peerjs-max-peers", defaults.peerjs_max_peers)
            .value,
    };
    let dialects = Dialects {
        y_webrtc_path: endpoint_path(cx, &table, "y-webrtc-path", "/y-webrtc"),
        peerjs_path: endpoint_path(cx, &table, "peerjs-path", "/peerjs"),
        peerjs_keys: values(
            table
                .list::<String>(cx, "peerjs-keys", vec!["peerjs".to_owned()])
                .value,
        ),
        peerjs_discovery: table.get(cx, "peerjs-discovery", false).value,
    };
    SignalConfig {
        auth,
        jwt_secrets: values(secrets.value),
        jwt_public_keys: public_keys,
        allowed_origins: values(origins.value),
        limits,
        dialects,
    }
}

/// An endpoint's path: `default` when not set, None when set to "" (off).
/// A path starts with `/`, does not end with one, and is not `/ws` or a
/// route icegate serves itself.
fn endpoint_path(
    cx: &mut Ctx<'_>,
    table: &Section<'_, '_>,
    key: &str,
    default: &str,
) -> Option<String> {
    let path = table.get(cx, key, default.to_owned());
    if path.value.is_empty() {
        return None;
    }
    let taken = ["/ws", "/ice-servers", "/icegate.js"].contains(&path.value.as_str());
    // "/" is the libraries' own servers' default: the demo page stays at
    // `GET /`, the protocols take the WebSocket upgrades and their routes.
    let shaped = path.value == "/"
        || path.value.len() > 1
            && path.value.starts_with('/')
            && !path.value.ends_with('/')
            && path
                .value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
    if taken || !shaped {
        let message = format!(
            "expected a path like {default:?} (or \"\" to turn it off), not one of icegate's \
             own routes, got {:?}",
            path.value
        );
        cx.report(table.key(key), path.span.as_ref(), message);
        return None;
    }
    Some(path.value)
}

/// The largest signaling message accepted at all (16 MiB).
const MAX_SIGNAL_MESSAGE_BYTES: u32 = 16 * 1024 * 1024;

/// `*`, or `scheme://host[:port]` as browsers send it in `Origin`.
fn is_origin(text: &str) -> bool {
    if text == "*" {
        return true;
    }
    let Some(authority) = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
    else {
        return false;
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !authority.ends_with(']') => (host, Some(port)),
        _ => (authority, None),
    };
    !host.is_empty()
        && port.is_none_or(|port| port.parse::<u16>().is_ok())
        && authority
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'@'))
}

/// Reads a PEM public key and tells ES256 (P-256) from RS256 by trying both.
fn read_public_key(path: &Path) -> Result<PublicKey, String> {
    let pem = fs::read(path).map_err(|e| {
        format!(
            "cannot read {:?}: {}",
            path.display().to_string(),
            io_message(&e)
        )
    })?;
    let algorithm = if jsonwebtoken::DecodingKey::from_ec_pem(&pem).is_ok() {
        PublicKeyAlgorithm::Es256
    } else if jsonwebtoken::DecodingKey::from_rsa_pem(&pem).is_ok() {
        PublicKeyAlgorithm::Rs256
    } else {
        return Err(format!(
            "expected {:?} to hold an EC (P-256) or RSA public key in PEM form",
            path.display().to_string()
        ));
    };
    Ok(PublicKey {
        path: path.to_owned(),
        algorithm,
        pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{MINIMAL, parse_err, parse_ok};

    #[test]
    fn holding_is_on_by_default_and_zero_turns_it_off() {
        assert_eq!(
            parse_ok(MINIMAL).signal.limits.hold_for,
            Duration::from_secs(10)
        );
        let off = format!("{MINIMAL}\n[signal]\nhold-for = \"0s\"\n");
        assert_eq!(parse_ok(&off).signal.limits.hold_for, Duration::ZERO);
        let unitless = format!("{MINIMAL}\n[signal]\nhold-for = 5\n");
        let errors = parse_err(&unitless).to_string();
        assert!(errors.contains("signal.hold-for"), "{errors}");
        assert!(errors.contains("a unit"), "{errors}");
    }

    #[test]
    fn signaling_auth_follows_the_keys() {
        let with_key = format!(
            "{MINIMAL}\n[signal]\njwt-secrets = [\"{}\"]\n",
            "k".repeat(32)
        );
        assert_eq!(parse_ok(&with_key).signal.auth, SignalAuth::Jwt);
        let open = format!("{MINIMAL}\n[signal]\nauth = \"none\"\n");
        assert_eq!(parse_ok(&open).signal.auth, SignalAuth::None);
    }

    #[test]
    fn origins() {
        for good in [
            "*",
            "https://app.example.org",
            "http://localhost:8080",
            "https://[::1]:8443",
        ] {
            assert!(is_origin(good), "{good}");
        }
        for bad in [
            "app.example.org",
            "https://",
            "https://a.org/",
            "ftp://a.org",
            "https://a.org:x",
            "https://u@a.org",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
    }
}
