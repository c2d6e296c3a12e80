//! The messages of signaling protocol version 1 (`docs/signaling.md`):
//! parsing what clients send and writing what the server sends.
//!
//! `data` and `metadata` are kept as raw JSON text from the client's frame
//! and written out unchanged, so forwarding never re-encodes (or reorders)
//! an application's payload.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::websocket;
pub(crate) use crate::presence::LeaveReason;

/// Longest room name or peer id, in bytes.
pub(crate) const MAX_NAME_BYTES: usize = 64;

/// Stable error codes, as listed in `docs/signaling.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    BadJson,
    BinaryNotSupported,
    UnknownType,
    MissingField,
    InvalidField,
    NotInRoom,
    PeerNotFound,
    PeerIdTaken,
    RoomNotAllowed,
    RoomFull,
    TooManyRooms,
    MessageTooLarge,
    RateLimited,
    AlreadyJoined,
    /// A signal for a peer on another node that could not cross.
    Undeliverable,
}

impl ErrorCode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad-json",
            ErrorCode::BinaryNotSupported => "binary-not-supported",
            ErrorCode::UnknownType => "unknown-type",
            ErrorCode::MissingField => "missing-field",
            ErrorCode::InvalidField => "invalid-field",
            ErrorCode::NotInRoom => "not-in-room",
            ErrorCode::PeerNotFound => "peer-not-found",
            ErrorCode::PeerIdTaken => "peer-id-taken",
            ErrorCode::RoomNotAllowed => "room-not-allowed",
            ErrorCode::RoomFull => "room-full",
            ErrorCode::TooManyRooms => "too-many-rooms",
            ErrorCode::MessageTooLarge => "message-too-large",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::AlreadyJoined => "already-joined",
            ErrorCode::Undeliverable => "undeliverable",
        }
    }
}

/// A refusal of one message: what goes into the `error` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl Problem {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Every field any client message may have; which ones are required
/// depends on `type`, so presence and types are checked afterwards, one
/// field at a time, to name the field that is wrong.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    room: Option<&'a RawValue>,
    #[serde(borrow, default)]
    peer: Option<&'a RawValue>,
    #[serde(borrow, default)]
    to: Option<&'a RawValue>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// A client message that names its room, peers and payload correctly.
#[derive(Debug)]
pub(crate) enum Request<'a> {
    Join {
        room: String,
        peer: Option<String>,
        metadata: Option<&'a RawValue>,
    },
    Leave {
        room: String,
    },
    Signal {
        room: String,
        to: String,
        data: &'a RawValue,
    },
    Broadcast {
        room: String,
        data: &'a RawValue,
    },
    Ping,
}

/// One parsed frame: what it asked for, and how to refer back to it.
pub(crate) struct Incoming<'a> {
    pub(crate) kind: Option<String>,
    pub(crate) id: Option<&'a RawValue>,
    pub(crate) request: Result<Request<'a>, Problem>,
}

impl<'a> Incoming<'a> {
    pub(crate) fn parse(text: &'a str) -> Self {
        // serde would also read a struct from an array.
        let parsed = if text.trim_start().starts_with('{') {
            serde_json::from_str(text)
                .map_err(|e| e.to_string())
                .and_then(|envelope| {
                    // Raw values (the echoed id, forwarded payloads) are
                    // checked by serde for syntax only: what strict client
                    // parsers refuse must not be forwarded to them.
                    match refused_by_strict_parsers(text) {
                        Some(what) => Err(format!("{what} is not accepted")),
                        None => Ok(envelope),
                    }
                })
        } else {
            Err("not an object".to_owned())
        };
        let envelope: Envelope<'a> = match parsed {
            Ok(envelope) => envelope,
            Err(error) => {
                return Self {
                    kind: None,
                    id: None,
                    request: Err(Problem::new(
                        ErrorCode::BadJson,
                        format!("expected one JSON object per frame: {error}"),
                    )),
                };
            }
        };
        let kind: Option<String> = envelope
            .kind
            .and_then(|raw| serde_json::from_str(raw.get()).ok());
        // Echo back only ids a client can match on.
        let id = envelope.id.filter(|raw| {
            matches!(
                raw.get().as_bytes().first(),
                Some(b'"' | b'-' | b'0'..=b'9')
            )
        });
        let request = match kind.as_deref() {
            Some("join") => (|| {
                Ok(Request::Join {
                    room: name(envelope.room, "room")?,
                    peer: envelope
                        .peer
                        .map(|raw| name(Some(raw), "peer"))
                        .transpose()?,
                    metadata: envelope.metadata,
                })
            })(),
            Some("leave") => name(envelope.room, "room").map(|room| Request::Leave { room }),
            Some("signal") => (|| {
                Ok(Request::Signal {
                    room: name(envelope.room, "room")?,
                    to: name(envelope.to, "to")?,
                    data: required(envelope.data, "data")?,
                })
            })(),
            Some("broadcast") => (|| {
                Ok(Request::Broadcast {
                    room: name(envelope.room, "room")?,
                    data: required(envelope.data, "data")?,
                })
            })(),
            Some("ping") => Ok(Request::Ping),
            Some(other) => Err(Problem::new(
                ErrorCode::UnknownType,
                format!("unknown type {other:?}; expected join, leave, signal, broadcast or ping"),
            )),
            None => Err(Problem::new(
                ErrorCode::UnknownType,
                "the message has no string \"type\"",
            )),
        };
        Self { kind, id, request }
    }
}

/// What in `json`, valid JSON as serde reads raw values, a strict parser
/// (serde's own full parse among them) would refuse: a number beyond a
/// double's range, or a `\u` escape of half a surrogate pair. One pass that
/// jumps through strings with memchr (most of a signal is SDP in strings);
/// only numbers with an exponent or hundreds of digits can be out of range,
/// so only those are parsed.
fn refused_by_strict_parsers(json: &str) -> Option<&'static str> {
    let bytes = json.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                loop {
                    let rest = bytes.get(i..).unwrap_or_default();
                    match memchr::memchr2(b'"', b'\\', rest) {
                        Some(k) if rest[k] == b'\\' => {
                            i += k;
                            if bytes.get(i + 1) != Some(&b'u') {
                                i += 2;
                            } else if lone_surrogate(bytes, i) {
                                return Some("a \\u escape of half a surrogate pair");
                            } else if surrogate(bytes, i).is_some() {
                                // A whole pair: its second half is no lone one.
                                i += 12;
                            } else {
                                i += 6;
                            }
                        }
                        Some(k) => {
                            i += k + 1;
                            break;
                        }
                        None => return None,
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let number = &json[start..i];
                let may_overflow = number.len() > 300 || number.contains(['e', 'E']);
                if may_overflow && !number.parse::<f64>().is_ok_and(f64::is_finite) {
                    return Some("a number beyond a double's range");
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// The code unit of the `\uXXXX` escape at `at`, if it is half a surrogate pair.
fn surrogate(bytes: &[u8], at: usize) -> Option<u16> {
    let hex = std::str::from_utf8(bytes.get(at + 2..at + 6)?).ok()?;
    u16::from_str_radix(hex, 16)
        .ok()
        .filter(|unit| (0xD800..=0xDFFF).contains(unit))
}

/// Whether the `\u` escape at `at` is a surrogate without its other half.
fn lone_surrogate(bytes: &[u8], at: usize) -> bool {
    match surrogate(bytes, at) {
        None => false,
        Some(0xD800..=0xDBFF) => {
            bytes.get(at + 6..at + 8) != Some(b"\\u")
                || !surrogate(bytes, at + 6).is_some_and(|low| (0xDC00..=0xDFFF).contains(&low))
        }
        Some(_) => true,
    }
}

fn required<'a>(raw: Option<&'a RawValue>, field: &str) -> Result<&'a RawValue, Problem> {
    raw.filter(|raw| raw.get() != "null").ok_or_else(|| {
        Problem::new(
            ErrorCode::MissingField,
            format!("the message needs \"{field}\""),
        )
    })
}

/// A room name or peer id: a non-empty string of at most 64 bytes without
/// control characters (they end up in logs).
fn name(raw: Option<&RawValue>, field: &str) -> Result<String, Problem> {
    let raw = required(raw, field)?;
    let value: String = serde_json::from_str(raw.get()).map_err(|_| {
        Problem::new(
            ErrorCode::MissingField,
            format!("\"{field}\" must be a string"),
        )
    })?;
    if value.is_empty() || value.len() > MAX_NAME_BYTES || value.chars().any(char::is_control) {
        return Err(Problem::new(
            ErrorCode::InvalidField,
            format!("\"{field}\" must be 1 to {MAX_NAME_BYTES} bytes without control characters"),
        ));
    }
    Ok(value)
}

// ---------------------------------------------------------------------------------------------
// Server messages

#[derive(Serialize)]
struct Welcome<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    user: &'a str,
    peer: &'a str,
    resumed: bool,
    resume_token: &'a str,
    resume_seconds: u64,
    ice_servers: &'a serde_json::Value,
}

pub(crate) struct WelcomeFields<'a> {
    pub(crate) user: &'a str,
    pub(crate) peer: &'a str,
    pub(crate) resumed: bool,
    pub(crate) resume_token: &'a str,
    pub(crate) resume_seconds: u64,
    pub(crate) ice_servers: &'a serde_json::Value,
}

pub(crate) fn welcome(fields: &WelcomeFields<'_>) -> String {
    to_text(&Welcome {
        kind: "welcome",
        user: fields.user,
        peer: fields.peer,
        resumed: fields.resumed,
        resume_token: fields.resume_token,
        resume_seconds: fields.resume_seconds,
        ice_servers: fields.ice_servers,
    })
}

#[derive(Serialize)]
pub(crate) struct PeerEntry<'a> {
    pub(crate) peer: &'a str,
    pub(crate) metadata: &'a RawValue,
}

#[derive(Serialize)]
struct Joined<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    peer: &'a str,
    peers: &'a [PeerEntry<'a>],
}

pub(crate) fn joined(room: &str, peer: &str, peers: &[PeerEntry<'_>]) -> String {
    to_text(&Joined {
        kind: "joined",
        room,
        peer,
        peers,
    })
}

#[derive(Serialize)]
struct PeerJoined<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    peer: &'a str,
    metadata: &'a RawValue,
}

pub(crate) fn peer_joined(room: &str, peer: &str, metadata: &RawValue) -> String {
    to_text(&PeerJoined {
        kind: "peer-joined",
        room,
        peer,
        metadata,
    })
}

#[derive(Serialize)]
struct PeerLeft<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    peer: &'a str,
    reason: &'static str,
}

pub(crate) fn peer_left(room: &str, peer: &str, reason: LeaveReason) -> String {
    to_text(&PeerLeft {
        kind: "peer-left",
        room,
        peer,
        reason: reason.as_str(),
    })
}

#[derive(Serialize)]
struct Signal<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    from: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    broadcast: bool,
    data: &'a RawValue,
}

/// A signal as a WebSocket frame, written once for all its recipients.
pub(crate) fn signal(room: &str, from: &str, data: &RawValue, broadcast: bool) -> Bytes {
    let message = Signal {
        kind: "signal",
        room,
        from,
        broadcast,
        data,
    };
    // The fields are ASCII names and valid raw JSON: escaping adds little.
    let size = 64 + room.len() + from.len() + data.get().len();
    websocket::text_with(size, |out| {
        // Plain structs of strings and already-valid raw JSON always encode.
        let _ = serde_json::to_writer(out, &message);
    })
}

#[derive(Serialize)]
struct InReplyTo<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Error<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    in_reply_to: Option<InReplyTo<'a>>,
}

pub(crate) fn error(problem: &Problem, kind: Option<&str>, id: Option<&RawValue>) -> String {
    let in_reply_to = (kind.is_some() || id.is_some()).then_some(InReplyTo { kind, id });
    to_text(&Error {
        kind: "error",
        code: problem.code.as_str(),
        message: &problem.message,
        in_reply_to,
    })
}

#[derive(Serialize)]
struct Expired<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    to: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    in_reply_to: Option<InReplyTo<'a>>,
}

/// A held signal's addressee did not join in time; `id` is the signal's own.
pub(crate) fn expired(room: &str, to: &str, waited_seconds: u64, id: Option<&RawValue>) -> String {
    let message = format!("{to} did not join room {room} within {waited_seconds} s");
    to_text(&Expired {
        kind: "expired",
        room,
        to,
        message: &message,
        in_reply_to: id.map(|id| InReplyTo {
            kind: Some("signal"),
            id: Some(id),
        }),
    })
}

#[derive(Serialize)]
struct Pong<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
}

pub(crate) fn pong(id: Option<&RawValue>) -> String {
    to_text(&Pong { kind: "pong", id })
}

fn to_text(message: &impl Serialize) -> String {
    // Plain structs of strings, numbers and already-valid raw JSON always encode.
    serde_json::to_string(message).unwrap_or_default()
}

/// `{}`: the metadata of a peer that gave none.
pub(crate) fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).unwrap_or_else(|_| unreachable!())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str) -> Problem {
        Incoming::parse(text).request.unwrap_err()
    }

    #[test]
    fn each_bad_message_names_its_problem() {
        assert_eq!(problem("not json").code, ErrorCode::BadJson);
        assert_eq!(problem("[1,2]").code, ErrorCode::BadJson);
        assert_eq!(
            problem(r#"{"type":"ping","id":1e999}"#).code,
            ErrorCode::BadJson
        );
        let huge = format!(r#"{{"type":"ping","id":1{}}}"#, "0".repeat(400));
        assert_eq!(problem(&huge).code, ErrorCode::BadJson);
        let in_data =
            r#"{"type":"signal","room":"a","to":"b","data":{"s":"1e999","n":[-2.5E+3,1e-999]}}"#;
        assert!(Incoming::parse(in_data).request.is_ok());
        let escaped = r#"{"type":"signal","room":"a","to":"b","data":{"s":"\"1e999","n":-1E400}}"#;
        assert_eq!(problem(escaped).code, ErrorCode::BadJson);
        let lone = r#"{"type":"signal","room":"a","to":"b","data":{"k\udeaa":1}}"#;
        assert_eq!(problem(lone).code, ErrorCode::BadJson);
        let unpaired = r#"{"type":"signal","room":"a","to":"b","data":"\ud83d\u0041"}"#;
        assert_eq!(problem(unpaired).code, ErrorCode::BadJson);
        let pair = r#"{"type":"signal","room":"a","to":"b","data":"\ud83d\ude00 \u00e9 \\udead"}"#;
        assert!(Incoming::parse(pair).request.is_ok());
        assert_eq!(problem("{}").code, ErrorCode::UnknownType);
        assert_eq!(problem(r#"{"type":"dance"}"#).code, ErrorCode::UnknownType);
        assert_eq!(problem(r#"{"type":"join"}"#).code, ErrorCode::MissingField);
        assert_eq!(
            problem(r#"{"type":"join","room":7}"#).code,
            ErrorCode::MissingField
        );
        assert_eq!(
            problem(r#"{"type":"join","room":""}"#).code,
            ErrorCode::InvalidField
        );
        let long = format!(r#"{{"type":"join","room":"{}"}}"#, "r".repeat(65));
        assert_eq!(problem(&long).code, ErrorCode::InvalidField);
        assert_eq!(
            problem(r#"{"type":"signal","room":"a","to":"b"}"#).message,
            "the message needs \"data\""
        );
    }

    #[test]
    fn payloads_are_forwarded_byte_for_byte() {
        let text = r#"{"type":"signal","id":3,"room":"a","to":"b","data":{"z":1, "a":"\u00e9"}}"#;
        let incoming = Incoming::parse(text);
        assert_eq!(incoming.id.map(RawValue::get), Some("3"));
        let Ok(Request::Signal { data, .. }) = incoming.request else {
            panic!("not a signal");
        };
        assert_eq!(
            websocket::payload(&signal("a", "p1", data, false)),
            br#"{"type":"signal","room":"a","from":"p1","data":{"z":1, "a":"\u00e9"}}"#
        );
    }

    #[test]
    fn errors_refer_back_to_the_message() {
        let incoming = Incoming::parse(r#"{"type":"leave","id":"x1"}"#);
        let problem = incoming.request.as_ref().unwrap_err();
        assert_eq!(
            error(problem, incoming.kind.as_deref(), incoming.id),
            r#"{"type":"error","code":"missing-field","message":"the message needs \"room\"","in_reply_to":{"type":"leave","id":"x1"}}"#
        );
    }
}
