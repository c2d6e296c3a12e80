//! The PeerJS server's protocol: a client connects with its id (its own,
//! or one from `{path}/{key}/id`), gets `OPEN`, and sends `OFFER`, `ANSWER`,
//! `CANDIDATE`, `LEAVE` and `EXPIRE` to other ids; the server sets `src`
//! and passes them on. A message to an id not connected waits for it (the
//! native held signals) and comes back as `EXPIRE` when it waits too long.
//!
//! Each key's clients share one quiet room, with the PeerJS id as peer id:
//! an id taken is `ID-TAKEN`, and nobody hears of anyone else arriving.

use std::borrow::Cow;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

use super::{Acting, Native, Rendered, raw_frame};
use crate::metrics::SignalMessage;
use crate::signal::hub::QUIET_ROOM_PREFIX;
use crate::signal::protocol::ErrorCode;

/// One PeerJS connection: its id, and its key's room.
pub(crate) struct PeerJs {
    id: String,
    room: String,
    /// Why the connection cannot be served (no id, an unknown key...): its
    /// first and last words are this `ERROR`.
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    dst: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
}

/// A message passed on to its `dst`, in the PeerJS server's field order.
#[derive(Serialize)]
struct Passed<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    src: &'a str,
    dst: &'a str,
    payload: Option<&'a RawValue>,
}

/// The room of a PeerJS key's clients.
pub(crate) fn peerjs_room(key: &str) -> String {
    format!("{QUIET_ROOM_PREFIX}peerjs/{key}")
}

/// A fresh id, shaped as the PeerJS server's (a random UUID).
pub(crate) fn peerjs_id() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-4{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[13..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Whether `id` is one a PeerJS client accepts: letters and digits, with
/// single spaces, dashes or underscores between them, at most 64 bytes.
pub(crate) fn valid_peerjs_id(id: &str) -> bool {
    let mut previous_separator = true;
    id.len() <= 64
        && !id.is_empty()
        && id.bytes().all(|b| {
            let separator = matches!(b, b' ' | b'-' | b'_');
            let ok = b.is_ascii_alphanumeric() || (separator && !previous_separator);
            previous_separator = separator;
            ok
        })
        && !previous_separator
}

impl PeerJs {
    pub(crate) fn new(key: &str, id: String) -> Self {
        Self {
            id,
            room: peerjs_room(key),
            refusal: None,
        }
    }

    /// A connection told `message` in an `ERROR`, then closed.
    pub(crate) fn refused(message: &str) -> Self {
        Self {
            id: String::new(),
            room: String::new(),
            refusal: Some(message.to_owned()),
        }
    }

    pub(crate) fn is_refused(&self) -> bool {
        self.refusal.is_some()
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn room(&self) -> &str {
        &self.room
    }

    /// PeerJS's server answers nothing to a message it cannot use, and an
    /// `ERROR` would make the client give up: such messages are counted and
    /// dropped.
    pub(super) fn act(&self, text: &str, acting: &Acting<'_>) -> SignalMessage {
        if self.refusal.is_some() {
            return SignalMessage::Invalid;
        }
        let Ok(message) = serde_json::from_str::<Message<'_>>(text) else {
            return SignalMessage::Invalid;
        };
        let kind = message.kind.as_deref().unwrap_or("");
        match kind {
            "HEARTBEAT" => SignalMessage::Ping,
            "OFFER" | "ANSWER" | "CANDIDATE" | "LEAVE" | "EXPIRE" => {
                let Some(dst) = message.dst.as_deref() else {
                    return SignalMessage::Invalid;
                };
                self.pass_on(kind, dst, message.payload, acting);
                SignalMessage::Signal
            }
            _ => SignalMessage::Invalid,
        }
    }

    fn pass_on(&self, kind: &str, dst: &str, payload: Option<&RawValue>, acting: &Acting<'_>) {
        // The payload goes on byte for byte, as the client wrote it.
        let message = Passed {
            kind,
            src: &self.id,
            dst,
            payload,
        };
        let Ok(data) = serde_json::value::to_raw_value(&message) else {
            return;
        };
        // The message's type rides as its id, so that an `expired` can
        // tell what did not arrive.
        let Ok(type_id) = serde_json::value::to_raw_value(kind) else {
            return;
        };
        let now = tokio::time::Instant::now().into_std();
        let sent = acting
            .hub
            .relay(acting.id, &self.room, Some(dst), &data, Some(&type_id), now);
        if let Err(problem) = sent
            && problem.code == ErrorCode::PeerNotFound
            && !goes_unanswered(kind)
        {
            // Nothing held (holding is off, or full): it expires at once.
            acting.send(&self.expire(dst));
        }
    }

    fn expire(&self, dst: &str) -> String {
        json!({ "type": "EXPIRE", "src": dst, "dst": self.id }).to_string()
    }

    pub(super) fn render(&self, native: &Native<'_>) -> Rendered {
        if let Some(refusal) = &self.refusal {
            return Rendered::Last(error_text(refusal), "refused");
        }
        match native.kind {
            "joined" => Rendered::Text(r#"{"type":"OPEN"}"#.to_owned()),
            "signal" => native
                .data
                .map_or(Rendered::Drop, |data| Rendered::Raw(raw_frame(data))),
            "expired" => {
                let kind = native
                    .in_reply_to
                    .as_ref()
                    .and_then(|reply| reply.id)
                    .and_then(|id| serde_json::from_str::<String>(id.get()).ok());
                match (native.to.as_deref(), kind.as_deref()) {
                    (Some(_), Some(kind)) if goes_unanswered(kind) => Rendered::Drop,
                    (Some(dst), _) => Rendered::Text(self.expire(dst)),
                    (None, _) => Rendered::Drop,
                }
            }
            "error" => match native.code.as_deref() {
                Some("peer-id-taken") => Rendered::Last(
                    json!({ "type": "ID-TAKEN", "payload": { "msg": "ID is taken" } }).to_string(),
                    "id taken",
                ),
                // The id could not be had: the client cannot go on.
                Some("room-full" | "room-not-allowed") => Rendered::Last(
                    error_text(
                        &native
                            .message
                            .as_deref()
                            .unwrap_or("")
                            .replace(&self.room, "this key"),
                    ),
                    "refused",
                ),
                _ => Rendered::Drop,
            },
            _ => Rendered::Drop,
        }
    }
}

/// Messages the PeerJS server drops rather than holds or expires.
fn goes_unanswered(kind: &str) -> bool {
    matches!(kind, "LEAVE" | "EXPIRE")
}

/// `ERROR` with its message, as the PeerJS server words it.
pub(crate) fn error_text(message: &str) -> String {
    json!({ "type": "ERROR", "payload": { "msg": message } }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_as_the_client_checks_them() {
        for good in ["alice1", "a b", "a-b_c", "0", &peerjs_id()] {
            assert!(valid_peerjs_id(good), "{good}");
        }
        for bad in ["", "-a", "a-", "a--b", "a/b", "ä", &"a".repeat(65)] {
            assert!(!valid_peerjs_id(bad), "{bad}");
        }
    }

    #[test]
    fn expired_leave_and_expire_go_unanswered() {
        assert!(goes_unanswered("LEAVE"));
        assert!(!goes_unanswered("OFFER"));
    }
}
