//! The `[connections]` table: limits on TCP and TLS connections.

use std::time::Duration;

use super::walk::{Ctx, Section};

const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A TURN client allocates within seconds of connecting; Binding requests
/// alone must not keep a connection (and its memory) for ever.
const DEFAULT_UNAUTHENTICATED_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 64;
const DEFAULT_MAX_QUEUED_BYTES: u32 = 256 * 1024;
const DEFAULT_MAX_FRAME_BYTES: u32 = 16 * 1024;
/// The largest frame the stream format can carry: a STUN header plus a 16-bit length.
const LARGEST_FRAME_BYTES: u32 = 20 + 0xFFFF;
const CONNECTION_KEYS: &[&str] = &[
    "tls-handshake-timeout",
    "idle-timeout",
    "unauthenticated-timeout",
    "max-connections",
    "max-connections-per-ip",
    "max-queued-bytes",
    "max-frame-bytes",
];

/// Limits for TCP and TLS connections, each a defence against a client that
/// would otherwise hold server memory or sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionLimits {
    /// A TLS handshake not finished by then is dropped.
    pub(crate) tls_handshake_timeout: Duration,
    /// A connection without an allocation that sends nothing for this long is closed.
    pub(crate) idle_timeout: Duration,
    /// A connection that has had no allocation for this long since it
    /// opened is closed, whatever it sends.
    pub(crate) unauthenticated_timeout: Duration,
    pub(crate) max_connections: u32,
    pub(crate) max_connections_per_ip: u32,
    /// Bytes waiting to be written to one client; beyond it the client is
    /// not reading and its connection is dropped.
    pub(crate) max_queued_bytes: u32,
    /// The largest STUN message or ChannelData frame a client may send.
    pub(crate) max_frame_bytes: u32,
}

pub(super) fn read_connections(cx: &mut Ctx<'_>, top: &Section<'_, '_>) -> ConnectionLimits {
    let table = top.section(cx, "connections", CONNECTION_KEYS);
    let tls_handshake_timeout =
        table.get(cx, "tls-handshake-timeout", DEFAULT_TLS_HANDSHAKE_TIMEOUT);
    let idle_timeout = table.get(cx, "idle-timeout", DEFAULT_IDLE_TIMEOUT);
    let unauthenticated_timeout = table.get(
        cx,
        "unauthenticated-timeout",
        DEFAULT_UNAUTHENTICATED_TIMEOUT,
    );
    let max_connections = table.get(cx, "max-connections", DEFAULT_MAX_CONNECTIONS);
    let max_connections_per_ip =
        table.get(cx, "max-connections-per-ip", DEFAULT_MAX_CONNECTIONS_PER_IP);
    let max_queued_bytes = table.get(cx, "max-queued-bytes", DEFAULT_MAX_QUEUED_BYTES);
    let max_frame_bytes = table.get(cx, "max-frame-bytes", DEFAULT_MAX_FRAME_BYTES);
    if max_frame_bytes.ok && !(64..=LARGEST_FRAME_BYTES).contains(&max_frame_bytes.value) {
        let message = format!(
            "expected a size from 64 to {LARGEST_FRAME_BYTES} bytes, got {}",
            max_frame_bytes.value
        );
        cx.report(
            table.key("max-frame-bytes"),
            max_frame_bytes.span.as_ref(),
            message,
        );
    }
    ConnectionLimits {
        tls_handshake_timeout: tls_handshake_timeout.value,
        idle_timeout: idle_timeout.value,
        unauthenticated_timeout: unauthenticated_timeout.value,
        max_connections: max_connections.value,
        max_connections_per_ip: max_connections_per_ip.value,
        max_queued_bytes: max_queued_bytes.value,
        max_frame_bytes: max_frame_bytes.value,
    }
}
