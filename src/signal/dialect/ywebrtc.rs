//! y-webrtc's signaling protocol (the `y-webrtc-signaling` server's): a
//! client subscribes to topics and publishes to them; every subscriber,
//! the sender too, gets each publish with `clients`, the subscriber count.
//! A topic is a room of its own namespace (native clients cannot name it),
//! in which each subscriber has a peer id it never sees.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{Acting, Native, Rendered, raw_frame};
use crate::metrics::SignalMessage;
use crate::signal::protocol::{ErrorCode, Problem};

/// Room names of y-webrtc topics start with this.
const ROOM_PREFIX: &str = "\u{2}y-webrtc/";

/// Publishes one topic keeps while its subscription is on its way (with
/// `[cluster]`, the other nodes agree first): y-webrtc announces itself
/// right after subscribing, and a lost announce leaves it alone.
const MAX_WAITING: usize = 16;

/// One y-webrtc connection's topics.
#[derive(Default)]
pub(crate) struct YWebrtc {
    topics: Vec<Topic>,
}

struct Topic {
    name: String,
    /// Subscribers, this one included, as presence news tells.
    clients: usize,
    /// Whether the hub has seated it (`joined` came).
    joined: bool,
    /// Publishes sent before that, in order.
    waiting: Vec<String>,
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
                    if let Value::String(topic) = topic {
                        let _ = acting.hub.leave(acting.id, &room_of(topic));
                        self.topics.retain(|known| known.name != *topic);
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
        if self.topics.iter().any(|known| known.name == topic) {
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
            // Seated (and counted) when `joined` comes back.
            Ok(()) => self.topics.push(Topic {
                name: topic.to_owned(),
                clients: 1,
                joined: false,
                waiting: Vec::new(),
            }),
            Err(problem) => refuse_with(acting, &problem),
        }
    }

    /// Sends the publish to the topic's other subscribers, and back to the
    /// sender, with `clients` set as y-webrtc's server does; one sent while
    /// the subscription is on its way waits for it.
    fn publish(&mut self, topic: &str, text: &str, acting: &Acting<'_>) {
        let Some(known) = self.topics.iter_mut().find(|known| known.name == topic) else {
            refuse(
                acting,
                ErrorCode::NotInRoom,
                &format!("subscribe to {topic} before publishing to it"),
            );
            return;
        };
        if known.joined {
            send_publish(topic, text, known.clients, acting);
        } else if known.waiting.len() < MAX_WAITING {
            known.waiting.push(text.to_owned());
        } else {
            refuse(
                acting,
                ErrorCode::RateLimited,
                &format!("{topic} is still being subscribed to; publish again once it is"),
            );
        }
    }

    pub(super) fn render(&mut self, native: &Native<'_>, acting: &Acting<'_>) -> Rendered {
        let topic = native.room.as_deref().and_then(topic_of);
        match (native.kind, topic) {
            ("joined", Some(topic)) => {
                let clients = native.peers.as_ref().map_or(0, Vec::len) + 1;
                if let Some(known) = self.topics.iter_mut().find(|known| known.name == topic) {
                    known.joined = true;
                    known.clients = clients;
                    for text in std::mem::take(&mut known.waiting) {
                        send_publish(topic, &text, clients, acting);
                    }
                }
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
        if let Some(known) = self.topics.iter_mut().find(|known| known.name == topic) {
            known.clients = known.clients.saturating_add_signed(change).max(1);
        }
    }
}

/// Relays a publish to the topic's room and echoes it to its sender.
fn send_publish(topic: &str, text: &str, clients: usize, acting: &Acting<'_>) {
    let Some(data) = with_clients(text, clients) else {
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

/// The publish with `clients` set, as y-webrtc's server sends it on: its
/// members in their order and their values byte for byte, `clients` last.
fn with_clients(text: &str, clients: usize) -> Option<Box<RawValue>> {
    let members: Vec<(Cow<'_, str>, &RawValue)> = serde_json::from_str::<Members<'_>>(text)
        .ok()?
        .0
        .into_iter()
        .filter(|(name, _)| name != "clients")
        .collect();
    let mut out = String::with_capacity(text.len() + 16);
    out.push('{');
    for (name, value) in &members {
        out.push_str(&serde_json::to_string(name).ok()?);
        out.push(':');
        out.push_str(value.get());
        out.push(',');
    }
    out.push_str(&format!("\"clients\":{clients}}}"));
    RawValue::from_string(out).ok()
}

/// A JSON object's members in the order they came.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
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
    json!({ "type": "error", "code": code, "message": message }).to_string()
}
