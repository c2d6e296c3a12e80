//! Why a peer left a signaling room: what `peer-left` tells clients, and
//! what nodes tell each other across a cluster, in one place.

use serde::{Deserialize, Serialize};

/// Why a peer left a room, as `peer-left` reports it (and as nodes tell each other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum LeaveReason {
    Left,
    Closed,
    Timeout,
    /// Its node stopped sending heartbeats: it died or lost Redis for longer than `node-ttl`.
    NodeLost,
}

impl LeaveReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Closed => "closed",
            LeaveReason::Timeout => "timeout",
            LeaveReason::NodeLost => "node-lost",
        }
    }
}
