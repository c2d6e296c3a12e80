//! What nodes tell each other through Redis pub/sub: one compact JSON object a message,
//! `{"node":"NAME","msg":{"KIND":{...}}}`, where `node` is the node the message comes from (for
//! a sweep's `peer-left`, the dead node it speaks for). Payloads (`data`, `metadata`) are raw
//! JSON text, forwarded byte for byte as the client sent them.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::store;
use crate::presence::LeaveReason;

/// A message between nodes. Room messages go to the room's channel, which every node with a
/// local member subscribes to; notices for one node go to that node's inbox.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) enum ClusterMessage {
    /// A peer joined the room on the sending node, or moved to it (a session resumed there,
    /// or presence restored after an outage): for a peer already known, only its node and
    /// metadata change.
    PeerJoined {
        room: String,
        peer: String,
        metadata: Box<RawValue>,
    },
    PeerLeft {
        room: String,
        peer: String,
        reason: LeaveReason,
    },
    /// For `to`, a peer on `to_node` (as the sender's presence view says); if `to_node` has no
    /// such peer it answers the sending node with [`ClusterMessage::Undeliverable`].
    Signal {
        room: String,
        from: String,
        to: String,
        to_node: String,
        data: Box<RawValue>,
    },
    /// For every peer of the room on the other nodes.
    Broadcast {
        room: String,
        from: String,
        data: Box<RawValue>,
    },
    /// To `sender_node`'s inbox: the signal from `from` to `to` found no such peer.
    Undeliverable {
        room: String,
        from: String,
        to: String,
        sender_node: String,
    },
    /// To `from_node`'s inbox: the session it holds for a resume (`session`, the key its
    /// resume record was stored under) resumed on `to_node`, which now owns its peer ids;
    /// `from_node` drops it without telling anyone it left.
    Takeover {
        session: String,
        from_node: String,
        to_node: String,
    },
}

/// Where a message is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Channel<'a> {
    Room(&'a str),
    Inbox(&'a str),
}

impl Channel<'_> {
    pub(crate) fn name(&self) -> String {
        match self {
            Self::Room(room) => store::room_channel(room),
            Self::Inbox(node) => store::inbox_channel(node),
        }
    }
}

impl ClusterMessage {
    pub(crate) fn channel(&self) -> Channel<'_> {
        match self {
            Self::PeerJoined { room, .. }
            | Self::PeerLeft { room, .. }
            | Self::Signal { room, .. }
            | Self::Broadcast { room, .. } => Channel::Room(room),
            Self::Undeliverable { sender_node, .. } => Channel::Inbox(sender_node),
            Self::Takeover { from_node, .. } => Channel::Inbox(from_node),
        }
    }
}

#[derive(Serialize)]
struct Outgoing<'a> {
    node: &'a str,
    msg: &'a ClusterMessage,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Incoming {
    node: String,
    msg: ClusterMessage,
}

/// The message as `node` publishes it.
pub(crate) fn encode(node: &str, msg: &ClusterMessage) -> String {
    // Strings and raw JSON only: serialising cannot fail.
    serde_json::to_string(&Outgoing { node, msg }).unwrap_or_default()
}

/// The sending node and the message, if `payload` is one of ours and belongs on `channel`
/// (a room message on its room's channel, a notice in an inbox).
pub(crate) fn decode(channel: &str, payload: &[u8]) -> Option<(String, ClusterMessage)> {
    let Incoming { node, msg } = serde_json::from_slice(payload).ok()?;
    let fits = match msg.channel() {
        Channel::Room(room) => store::room_of_channel(channel) == Some(room),
        Channel::Inbox(_) => store::is_inbox_channel(channel),
    };
    fits.then_some((node, msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn payloads_cross_byte_for_byte() {
        let msg = ClusterMessage::Signal {
            room: "r".into(),
            from: "a".into(),
            to: "b".into(),
            to_node: "n2".into(),
            data: raw(r#"{"sdp": "v=0\r\n", "n": 1.50}"#),
        };
        let text = encode("n1", &msg);
        assert_eq!(
            text,
            r#"{"node":"n1","msg":{"signal":{"room":"r","from":"a","to":"b","to_node":"n2","data":{"sdp": "v=0\r\n", "n": 1.50}}}}"#
        );
        let (node, back) = decode("icegate:room:r", text.as_bytes()).expect("decodes");
        assert_eq!(node, "n1");
        let ClusterMessage::Signal { data, .. } = back else {
            panic!("{back:?}")
        };
        assert_eq!(data.get(), r#"{"sdp": "v=0\r\n", "n": 1.50}"#);
    }

    #[test]
    fn the_sweep_scripts_peer_left_decodes() {
        // As Redis's cjson writes it: any key order, `/` escaped.
        let text = r#"{"msg":{"peer-left":{"reason":"node-lost","peer":"p\/1","room":"r"}},"node":"dead"}"#;
        let (node, msg) = decode("icegate:room:r", text.as_bytes()).expect("decodes");
        assert_eq!(node, "dead");
        let ClusterMessage::PeerLeft { peer, reason, .. } = msg else {
            panic!("{msg:?}")
        };
        assert_eq!((peer.as_str(), reason), ("p/1", LeaveReason::NodeLost));
    }

    #[test]
    fn foreign_or_misplaced_messages_are_refused() {
        let left = encode(
            "n1",
            &ClusterMessage::PeerLeft {
                room: "r".into(),
                peer: "p".into(),
                reason: LeaveReason::Left,
            },
        );
        assert!(decode("icegate:room:other", left.as_bytes()).is_none());
        assert!(decode("icegate:inbox:n2", left.as_bytes()).is_none());
        for bad in [
            "",
            "null",
            "{}",
            r#"{"node":"n","msg":{"nope":{}}}"#,
            r#"{"node":"n","msg":{"peer-left":{"room":"r","peer":"p","reason":"bored"}}}"#,
            "\u{0}\u{ff}",
        ] {
            assert!(decode("icegate:room:r", bad.as_bytes()).is_none(), "{bad}");
        }
        let takeover = encode(
            "n2",
            &ClusterMessage::Takeover {
                session: "s".into(),
                from_node: "n1".into(),
                to_node: "n2".into(),
            },
        );
        assert!(decode("icegate:inbox:n1", takeover.as_bytes()).is_some());
        assert!(decode("icegate:room:r", takeover.as_bytes()).is_none());
    }
}
