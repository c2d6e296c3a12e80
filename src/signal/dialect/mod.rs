//! Other projects' signaling protocols on icegate's rooms: y-webrtc's and
//! PeerJS's. A connection that speaks one is a session like any other (the
//! same hub, auth, limits and nodes); its dialect turns the client's
//! messages into hub requests, and the native messages queued for it into
//! the ones its library expects.

mod peerjs;
mod ywebrtc;

use std::collections::VecDeque;
use std::ops::ControlFlow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::hub::{Hub, SessionId};
use super::outbox::{Outbox, Queued};
use super::token::Claims;
use super::websocket;
use crate::metrics::SignalMessage;
pub(crate) use peerjs::{PeerJs, peerjs_id, peerjs_room, valid_peerjs_id};
pub(crate) use ywebrtc::YWebrtc;

/// Which protocol a signaling connection speaks.
pub(crate) enum Dialect {
    /// icegate's own (`docs/signaling.md`).
    Native,
    YWebrtc(YWebrtc),
    PeerJs(PeerJs),
}

/// What a dialect acts on a client's message with.
pub(crate) struct Acting<'a> {
    pub(crate) hub: &'a Hub,
    pub(crate) id: SessionId,
    pub(crate) outbox: &'a Outbox,
    pub(crate) claims: Option<&'a Claims>,
}

impl Acting<'_> {
    /// Queues one message of the dialect's for the client.
    fn send(&self, json: &str) {
        self.outbox.push_spoken(websocket::text(json));
    }
}

/// A native message queued for the client, as far as a dialect reads it.
#[derive(Deserialize)]
struct Native<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default, borrow)]
    room: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    peers: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    to: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    code: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    in_reply_to: Option<InReplyTo<'a>>,
}

#[derive(Deserialize)]
struct InReplyTo<'a> {
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
}

/// What a native message becomes in a dialect.
enum Rendered {
    /// Nothing: the dialect has no such message.
    Drop,
    /// The client gets this instead.
    Text(String),
    /// The client gets this frame as it is (a signal's data, already JSON).
    Raw(Bytes),
    /// The client gets this, and then the connection closes.
    Last(String, &'static str),
}

impl Dialect {
    /// The `protocol` label of metrics and logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::YWebrtc(_) => "y-webrtc",
            Self::PeerJs(_) => "peerjs",
        }
    }

    pub(crate) fn is_native(&self) -> bool {
        matches!(self, Self::Native)
    }

    /// Whether a dropped connection's session waits for a resume: the
    /// dialects have no resume token to come back with, so their sessions
    /// (and a PeerJS id) end at once.
    pub(crate) fn resumable(&self) -> bool {
        self.is_native()
    }

    /// Acts on one text message from the client of a dialect; what kind it
    /// was, for the metrics.
    pub(crate) fn act(&mut self, text: &str, acting: &Acting<'_>) -> SignalMessage {
        match self {
            Self::Native => SignalMessage::Invalid,
            Self::YWebrtc(dialect) => dialect.act(text, acting),
            Self::PeerJs(dialect) => dialect.act(text, acting),
        }
    }

    /// Rewrites the frames just taken for the client (native messages) into
    /// the dialect's; `Break` with a reason when the connection must close
    /// once they are sent.
    pub(crate) fn translate(
        &mut self,
        frames: &mut VecDeque<Queued>,
        acting: &Acting<'_>,
    ) -> ControlFlow<&'static str> {
        if self.is_native() {
            return ControlFlow::Continue(());
        }
        let mut closing = None;
        let taken = std::mem::take(frames);
        for queued in taken {
            if closing.is_some() {
                break;
            }
            let text = match websocket::text_payload(&queued.frame) {
                // Pings, pongs and closes are the same in every dialect.
                Some(text) if !queued.spoken => text,
                _ => {
                    frames.push_back(queued);
                    continue;
                }
            };
            let Ok(native) = serde_json::from_str::<Native<'_>>(text) else {
                continue;
            };
            let rendered = match self {
                Self::Native => Rendered::Drop,
                Self::YWebrtc(dialect) => dialect.render(&native, acting),
                Self::PeerJs(dialect) => dialect.render(&native),
            };
            match rendered {
                Rendered::Drop => {}
                Rendered::Text(json) => frames.push_back(Queued::spoken(websocket::text(&json))),
                Rendered::Raw(frame) => frames.push_back(Queued::spoken(frame)),
                Rendered::Last(json, why) => {
                    frames.push_back(Queued::spoken(websocket::text(&json)));
                    closing = Some(why);
                }
            }
        }
        match closing {
            Some(why) => ControlFlow::Break(why),
            None => ControlFlow::Continue(()),
        }
    }
}

/// A signal's data as the frame the client gets: the data was a whole
/// message of the dialect's, sent on as it came.
fn raw_frame(data: &RawValue) -> Bytes {
    websocket::text(data.get())
}
