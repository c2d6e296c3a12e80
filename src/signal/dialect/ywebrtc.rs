//! y-webrtc's signaling protocol (the `y-webrtc-signaling` server's): a
//! client subscribes to topics and publishes to them; every subscriber,
//! the sender too, gets each publish with `clients`, the subscriber count.
//! A topic is a room of its own namespace (native clients cannot name it),
//! in which each subscriber has a peer id it never sees.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Acting, Native, Rendered, raw_frame};
use crate::metrics::SignalMessage;
use crate::signal::protocol::{ErrorCode, Problem};

/// Room names of y-webrtc topics start with this.
const ROOM_PREFIX: &str = "\u{2}y-webrtc/";

/// One y-webrtc connection: its topics and how many subscribe to each.
#[derive(Default)]
pub(crate) struct YWebrtc {
    topics: Vec<(String, usize)>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a str>,
    #[serde(default)]
    topics: Option<Vec<Value>>,
    #[serde(default, borrow)]
    topic: Option<&'a str>,
}

fn room_of(topic: &str) -> String {
    format!("{ROOM_PREFIX}{topic}")
}

fn topic_of(room: &str) -> Option<&str> {
    room.strip_prefix(ROOM_PREFIX)
}

impl YWebrtc {
    pub(super) fn act(&mut self, text: &str, acting: &Acting<'_>) -> SignalMessage {
        let message = match serde_json::from_str::<Message<'_>>(text) {
            Ok(message) => message,
            Err(error) => {
                refuse(acting, ErrorCode::BadJson, &format!("not JSON: {error}"));
                return SignalMessage::Invalid;
            }
        };
        match message.kind {
            Some("subscribe") => {
                for topic in message.topics.iter().flatten() {
                    // As y-webrtc's own server: what is not a string is skipped.
                    if let Value::String(topic) = topic {
                        self.subscribe(topic, acting);
                    }
                }
                SignalMessage::Join
            }
            Some("unsubscribe") => {
                for topic in message.topics.iter().flatten() {
                    if let Value::String(topic) = topic
                        && acting.hub.leave(acting.id, &room_of(topic)).is_ok()
                    {
                        self.topics.retain(|(name, _)| name != topic);
                    }
                }
                SignalMessage::Leave
            }
            Some("publish") => {
                let Some(topic) = message.topic else {
                    refuse(acting, ErrorCode::MissingField, "publish needs a \"topic\"");
                    return SignalMessage::Invalid;
                };
                self.publish(topic, text, acting);
                SignalMessage::Broadcast
            }
            Some("ping") => {
                acting.send(r#"{"type":"pong"}"#);
                SignalMessage::Ping
            }
            _ => {
                refuse(
                    acting,
                    ErrorCode::UnknownType,
                    "expected subscribe, unsubscribe, publish or ping",
                );
                SignalMessage::Invalid
            }
        }
    }

    fn subscribe(&mut self, topic: &str, acting: &Acting<'_>) {
        if self.topics.iter().any(|(name, _)| name == topic) {
            return;
        }
        if topic.is_empty() || topic.len() > 64 || topic.chars().any(char::is_control) {
            refuse(
                acting,
                ErrorCode::InvalidField,
                "a topic is 1 to 64 bytes without control characters",
            );
            return;
        }
        if acting.claims.is_some_and(|claims| !claims.may_join(topic)) {
            refuse(
                acting,
                ErrorCode::RoomNotAllowed,
                &format!("the token does not allow topic {topic}"),
            );
            return;
        }
        match acting
            .hub
            .join(acting.id, None, &room_of(topic), None, None, None)
        {
            // Counted when `joined` comes back.
            Ok(()) => {}
            Err(problem) => refuse_with(acting, &problem),
        }
    }

    /// Sends the publish to the topic's other subscribers, and back to the
    /// sender, with `clients` set as y-webrtc's server does.
    fn publish(&self, topic: &str, text: &str, acting: &Acting<'_>) {
        let Some(&(_, clients)) = self.topics.iter().find(|(name, _)| name == topic) else {
            refuse(
                acting,
                ErrorCode::NotInRoom,
                &format!("subscribe to {topic} before publishing to it"),
            );
            return;
        };
        let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(text) else {
            return;
        };
        fields.insert("clients".to_owned(), json!(clients));
        let Ok(data) = serde_json::value::to_raw_value(&Value::Object(fields)) else {
            return;
        };
        let now = tokio::time::Instant::now().into_std();
        match acting
            .hub
            .relay(acting.id, &room_of(topic), None, &data, None, now)
        {
            Ok(()) => acting.outbox.push_spoken(raw_frame(&data)),
            Err(problem) => refuse_with(acting, &problem),
        }
    }

    pub(super) fn render(&mut self, native: &Native<'_>) -> Rendered {
        let topic = native.room.as_deref().and_then(topic_of);
        match (native.kind, topic) {
            ("joined", Some(topic)) => {
                let count = native.peers.as_ref().map_or(0, Vec::len) + 1;
                self.topics.push((topic.to_owned(), count));
                Rendered::Drop
            }
            ("peer-joined", Some(topic)) => {
                self.count(topic, 1);
                Rendered::Drop
            }
            ("peer-left", Some(topic)) => {
                self.count(topic, -1);
                Rendered::Drop
            }
            ("signal", Some(_)) => native
                .data
                .map_or(Rendered::Drop, |data| Rendered::Raw(raw_frame(data))),
            // Errors keep the native shape, which y-webrtc clients ignore.
            ("error", _) => Rendered::Text(error_text(
                native.code.as_deref().unwrap_or("error"),
                &native
                    .message
                    .as_deref()
                    .unwrap_or("")
                    .replace(ROOM_PREFIX, ""),
            )),
            _ => Rendered::Drop,
        }
    }

    fn count(&mut self, topic: &str, change: isize) {
        if let Some((_, count)) = self.topics.iter_mut().find(|(name, _)| name == topic) {
            *count = count.saturating_add_signed(change).max(1);
        }
    }
}

fn refuse(acting: &Acting<'_>, code: ErrorCode, message: &str) {
    acting.send(&error_text(code.as_str(), message));
}

fn refuse_with(acting: &Acting<'_>, problem: &Problem) {
    // The client knows its topics, not the rooms they are here.
    refuse(
        acting,
        problem.code,
        &problem.message.replace(ROOM_PREFIX, ""),
    );
}

fn error_text(code: &str, message: &str) -> String {
    let mut fields = Map::new();
    fields.insert("type".to_owned(), json!("error"));
    fields.insert("code".to_owned(), json!(code));
    fields.insert("message".to_owned(), json!(message));
    Value::Object(fields).to_string()
}
