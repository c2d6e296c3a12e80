//! RFC 6455 framing for the server side of `/ws`, keeping no buffer per
//! connection while nothing is half received.
//!
//! tokio-tungstenite keeps a read buffer (at least the configured 4 KiB) and
//! a write buffer for each connection as long as it lives: at 10 000 idle
//! signaling connections that was about half of the 9.0 kB each cost
//! (`bench/signaling.sh -n 10000 -- --rooms 4-4`). Here reads go through a
//! buffer on the stack and complete frames are handled where they lie; only
//! the tail of a frame that has not fully arrived is kept. Outgoing frames
//! are encoded once and shared by every recipient. Headers are parsed and
//! written by tungstenite's `FrameHeader`.

use std::io::Cursor;
use std::ops::ControlFlow;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// What a client sent, as the connection acts on it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received<'a> {
    Text(&'a str),
    Binary,
    Ping(&'a [u8]),
    Pong,
    /// A close frame, with its status code if it had one.
    Close(Option<u16>),
    /// A whole message larger than the decoder's limit; it is skipped.
    TooLarge(usize),
}

/// A violation of RFC 6455 that ends the connection with its close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// 1002: unmasked, reserved bits or opcodes, bad fragmentation.
    Protocol(&'static str),
    /// 1007: a text message that is not UTF-8.
    NotUtf8,
    /// 1009: a frame beyond the hard limit; not even read.
    TooLarge,
}

impl FrameError {
    pub(crate) fn close_code(self) -> u16 {
        match self {
            FrameError::Protocol(_) => 1002,
            FrameError::NotUtf8 => 1007,
            FrameError::TooLarge => 1009,
        }
    }

    pub(crate) fn reason(self) -> &'static str {
        match self {
            FrameError::Protocol(why) => why,
            FrameError::NotUtf8 => "text is not UTF-8",
            FrameError::TooLarge => "message too large",
        }
    }
}

/// A fragmented data message being put together.
#[derive(Debug)]
struct Fragments {
    text: bool,
    /// The payload so far; empty (and unallocated) once it is past the limit.
    payload: Vec<u8>,
    /// Bytes seen so far, kept even when the payload is not.
    length: usize,
}

/// Turns the bytes a client sends into [`Received`] frames.
pub(crate) struct Decoder {
    /// The start of a frame that has not fully arrived.
    partial: Vec<u8>,
    fragments: Option<Box<Fragments>>,
    /// Messages longer than this are reported as [`Received::TooLarge`].
    max_message: usize,
    /// Frames longer than this end the connection.
    hard_limit: usize,
}

impl Decoder {
    pub(crate) fn new(max_message: usize, hard_limit: usize) -> Self {
        Self {
            partial: Vec::new(),
            fragments: None,
            max_message,
            hard_limit,
        }
    }

    /// Hands every frame completed by `input` to `handle`, in order, and
    /// keeps what is left for the next read. `input` is unmasked in place.
    /// Stops early, keeping nothing, when `handle` breaks.
    pub(crate) fn feed<B>(
        &mut self,
        input: &mut [u8],
        mut handle: impl FnMut(Received<'_>) -> ControlFlow<B>,
    ) -> Result<ControlFlow<B>, FrameError> {
        if self.partial.is_empty() {
            let used = self.frames(input, &mut handle)?;
            return Ok(match used {
                ControlFlow::Break(b) => ControlFlow::Break(b),
                ControlFlow::Continue(used) => {
                    self.keep(&input[used..]);
                    ControlFlow::Continue(())
                }
            });
        }
        let mut partial = std::mem::take(&mut self.partial);
        partial.extend_from_slice(input);
        let used = self.frames(&mut partial, &mut handle)?;
        Ok(match used {
            ControlFlow::Break(b) => ControlFlow::Break(b),
            ControlFlow::Continue(used) => {
                partial.drain(..used);
                if !partial.is_empty() {
                    // A large frame's buffer is not kept past its end.
                    partial.shrink_to_fit();
                    self.partial = partial;
                }
                ControlFlow::Continue(())
            }
        })
    }

    /// Bytes kept for a frame that has not fully arrived, and for a
    /// fragmented message.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn buffered(&self) -> usize {
        self.partial.len() + self.fragments.as_ref().map_or(0, |f| f.payload.len())
    }

    fn keep(&mut self, rest: &[u8]) {
        if !rest.is_empty() {
            self.partial = rest.to_vec();
        }
    }

    /// Handles the complete frames at the start of `bytes`; returns how many
    /// bytes they took.
    fn frames<B>(
        &mut self,
        bytes: &mut [u8],
        handle: &mut impl FnMut(Received<'_>) -> ControlFlow<B>,
    ) -> Result<ControlFlow<B, usize>, FrameError> {
        let mut at = 0;
        while at < bytes.len() {
            let mut cursor = Cursor::new(&bytes[at..]);
            let (header, length) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(_) => return Err(FrameError::Protocol("reserved opcode")),
            };
            let Ok(length) = usize::try_from(length) else {
                return Err(FrameError::TooLarge);
            };
            if length > self.hard_limit {
                return Err(FrameError::TooLarge);
            }
            let start = at + usize::try_from(cursor.position()).unwrap_or(usize::MAX);
            let Some(end) = start.checked_add(length).filter(|&end| end <= bytes.len()) else {
                break;
            };
            let Some(mask) = header.mask else {
                return Err(FrameError::Protocol("client frames must be masked"));
            };
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(FrameError::Protocol("no extension was negotiated"));
            }
            let payload = &mut bytes[start..end];
            unmask(payload, mask);
            at = end;
            if let ControlFlow::Break(b) = self.frame(&header, payload, handle)? {
                return Ok(ControlFlow::Break(b));
            }
        }
        Ok(ControlFlow::Continue(at))
    }

    fn frame<B>(
        &mut self,
        header: &FrameHeader,
        payload: &[u8],
        handle: &mut impl FnMut(Received<'_>) -> ControlFlow<B>,
    ) -> Result<ControlFlow<B>, FrameError> {
        let text = match header.opcode {
            OpCode::Control(control) => {
                if !header.is_final || payload.len() > 125 {
                    return Err(FrameError::Protocol("bad control frame"));
                }
                return Ok(handle(match control {
                    Control::Ping => Received::Ping(payload),
                    Control::Pong => Received::Pong,
                    Control::Close => Received::Close(close_code(payload)?),
                    Control::Reserved(_) => return Err(FrameError::Protocol("reserved opcode")),
                }));
            }
            OpCode::Data(Data::Continue) => {
                let Some(fragments) = self.fragments.as_mut() else {
                    return Err(FrameError::Protocol("continuation without a message"));
                };
                fragments.length += payload.len();
                if fragments.length > self.hard_limit {
                    return Err(FrameError::TooLarge);
                }
                if fragments.length <= self.max_message {
                    fragments.payload.extend_from_slice(payload);
                } else {
                    fragments.payload = Vec::new();
                }
                if !header.is_final {
                    return Ok(ControlFlow::Continue(()));
                }
                let Some(whole) = self.fragments.take() else {
                    return Ok(ControlFlow::Continue(()));
                };
                return deliver(
                    whole.text,
                    &whole.payload,
                    whole.length,
                    self.max_message,
                    handle,
                );
            }
            OpCode::Data(Data::Text) => true,
            OpCode::Data(Data::Binary) => false,
            OpCode::Data(Data::Reserved(_)) => {
                return Err(FrameError::Protocol("reserved opcode"));
            }
        };
        if self.fragments.is_some() {
            return Err(FrameError::Protocol(
                "a new message inside a fragmented one",
            ));
        }
        if header.is_final {
            return deliver(text, payload, payload.len(), self.max_message, handle);
        }
        let kept = if payload.len() <= self.max_message {
            payload.to_vec()
        } else {
            Vec::new()
        };
        self.fragments = Some(Box::new(Fragments {
            text,
            payload: kept,
            length: payload.len(),
        }));
        Ok(ControlFlow::Continue(()))
    }
}

fn deliver<B>(
    text: bool,
    payload: &[u8],
    length: usize,
    max_message: usize,
    handle: &mut impl FnMut(Received<'_>) -> ControlFlow<B>,
) -> Result<ControlFlow<B>, FrameError> {
    if !text {
        return Ok(handle(Received::Binary));
    }
    if length > max_message {
        return Ok(handle(Received::TooLarge(length)));
    }
    let text = std::str::from_utf8(payload).map_err(|_| FrameError::NotUtf8)?;
    Ok(handle(Received::Text(text)))
}

fn close_code(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload {
        [] => Ok(None),
        [high, low, reason @ ..] => {
            std::str::from_utf8(reason).map_err(|_| FrameError::NotUtf8)?;
            Ok(Some(u16::from_be_bytes([*high, *low])))
        }
        [_] => Err(FrameError::Protocol("a close frame of one byte")),
    }
}

/// XORs the client's mask into the payload, eight bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

/// The whole frame of one server message: written once, sent to any number
/// of connections.
pub(crate) fn frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    frame_with(opcode, payload.len(), |out| out.extend_from_slice(payload))
}

pub(crate) fn text(json: &str) -> Bytes {
    text_with(json.len(), |out| out.extend_from_slice(json.as_bytes()))
}

/// A text frame whose payload `write` puts in place, about `size` bytes.
pub(crate) fn text_with(size: usize, write: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    frame_with(OpCode::Data(Data::Text), size, write)
}

/// A frame whose payload `write` puts in place, about `size` bytes: written
/// straight behind room left for the header, not copied after.
fn frame_with(opcode: OpCode, size: usize, write: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    const ROOM: usize = 10;
    let mut out = Vec::with_capacity(ROOM + size);
    out.resize(ROOM, 0);
    write(&mut out);
    let length = (out.len() - ROOM) as u64;
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let start = ROOM - header.len(length);
    // A server frame's header is at most 10 bytes; writing into memory does not fail.
    let _ = header.format(length, &mut &mut out[start..ROOM]);
    Bytes::from(out).slice(start..)
}

/// The text of a whole server text frame; None for any other frame.
pub(crate) fn text_payload(frame: &[u8]) -> Option<&str> {
    let mut cursor = Cursor::new(frame);
    match FrameHeader::parse(&mut cursor) {
        Ok(Some((header, _))) if header.opcode == OpCode::Data(Data::Text) => {
            let start = usize::try_from(cursor.position()).ok()?;
            std::str::from_utf8(frame.get(start..)?).ok()
        }
        _ => None,
    }
}

/// The payload of a whole server frame.
#[cfg(any(test, fuzzing))]
pub(crate) fn payload(frame: &[u8]) -> &[u8] {
    let mut cursor = Cursor::new(frame);
    match FrameHeader::parse(&mut cursor) {
        Ok(Some(_)) => &frame[usize::try_from(cursor.position()).unwrap_or(0)..],
        _ => panic!("not a whole frame"),
    }
}

pub(crate) fn pong(payload: &[u8]) -> Bytes {
    frame(OpCode::Control(Control::Pong), payload)
}

pub(crate) fn ping() -> Bytes {
    Bytes::from_static(&[0x89, 0x00])
}

/// The answer to a client's close frame: its own code back (RFC 6455 §5.5.1).
pub(crate) fn close_reply(code: Option<u16>) -> Bytes {
    match code {
        Some(code) => close(code, ""),
        None => frame(OpCode::Control(Control::Close), &[]),
    }
}

pub(crate) fn close(code: u16, reason: &str) -> Bytes {
    let mut payload = code.to_be_bytes().to_vec();
    // A close frame's payload is at most 125 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(OpCode::Control(Control::Close), &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame as a browser sends it: masked.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | u8::try_from(n).unwrap()),
            n @ 126..=65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        out
    }

    /// What the decoder makes of `input` fed in pieces of `step` bytes.
    fn decode(input: &[u8], step: usize) -> Result<Vec<String>, FrameError> {
        let mut decoder = Decoder::new(64, 256);
        let mut seen = Vec::new();
        for piece in input.chunks(step) {
            let mut piece = piece.to_vec();
            let flow = decoder.feed(&mut piece, |received| {
                seen.push(format!("{received:?}"));
                ControlFlow::<()>::Continue(())
            })?;
            assert!(flow.is_continue());
        }
        assert!(decoder.partial.is_empty(), "nothing left over");
        Ok(seen)
    }

    #[test]
    fn frames_split_anywhere_decode_the_same() {
        let mut input = client_frame(0x81, b"hello");
        input.extend(client_frame(0x89, b"pi"));
        input.extend(client_frame(0x01, b"frag"));
        input.extend(client_frame(0x8a, b""));
        input.extend(client_frame(0x80, "mented \u{e9}".as_bytes()));
        input.extend(client_frame(0x82, b"\x00\x01"));
        input.extend(client_frame(0x88, b"\x03\xe8bye"));
        let want = [
            "Text(\"hello\")",
            "Ping([112, 105])",
            "Pong",
            "Text(\"fragmented \u{e9}\")",
            "Binary",
            "Close(Some(1000))",
        ];
        for step in [1, 2, 3, 7, 13, input.len()] {
            assert_eq!(decode(&input, step).unwrap(), want, "step {step}");
        }
    }

    #[test]
    fn long_messages_are_skipped_and_huge_frames_refused() {
        let long = "x".repeat(100);
        assert_eq!(
            decode(&client_frame(0x81, long.as_bytes()), 5).unwrap(),
            ["TooLarge(100)"]
        );
        let mut fragmented = client_frame(0x01, &[b'y'; 60]);
        fragmented.extend(client_frame(0x80, &[b'y'; 60]));
        fragmented.extend(client_frame(0x81, b"after"));
        assert_eq!(
            decode(&fragmented, 9).unwrap(),
            ["TooLarge(120)", "Text(\"after\")"]
        );
        let huge = client_frame(0x81, &[b'z'; 300]);
        assert_eq!(decode(&huge[..20], 20), Err(FrameError::TooLarge));
    }

    #[test]
    fn protocol_violations_are_named() {
        let unmasked = [0x81, 0x02, b'h', b'i'];
        assert_eq!(
            decode(&unmasked, 4),
            Err(FrameError::Protocol("client frames must be masked"))
        );
        assert!(matches!(
            decode(&client_frame(0x80, b"x"), 9),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            decode(&client_frame(0xc1, b"x"), 9),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            decode(&client_frame(0x83, b"x"), 9),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            decode(&client_frame(0x09, b"x"), 9),
            Err(FrameError::Protocol(_))
        ));
        assert_eq!(
            decode(&client_frame(0x81, &[0xff, 0xfe]), 9),
            Err(FrameError::NotUtf8)
        );
    }

    #[test]
    fn a_break_stops_at_that_frame() {
        let mut input = client_frame(0x88, b"");
        input.extend(client_frame(0x81, b"never"));
        let mut decoder = Decoder::new(64, 256);
        let mut seen = 0;
        let flow = decoder
            .feed(&mut input, |_| {
                seen += 1;
                ControlFlow::Break(())
            })
            .unwrap();
        assert!(flow.is_break());
        assert_eq!(seen, 1);
    }

    #[test]
    fn server_frames_are_unmasked_with_the_shortest_length() {
        assert_eq!(&text("{}")[..], b"\x81\x02{}");
        let long = "a".repeat(300);
        let framed = text(&long);
        assert_eq!(&framed[..4], &[0x81, 126, 0x01, 0x2c]);
        assert_eq!(framed.len(), 304);
        assert_eq!(&close(1008, "not reading")[..4], &[0x88, 13, 0x03, 0xf0]);
        assert_eq!(close(1000, &"é".repeat(100)).len(), 2 + 2 + 122);
        assert_eq!(&pong(b"ab")[..], b"\x8a\x02ab");
        for size in [0, 5, 125, 126, 300, 70_000] {
            let payload = "p".repeat(size);
            let written = text_with(3, |out| out.extend_from_slice(payload.as_bytes()));
            assert_eq!(written, text(&payload), "{size}");
        }
    }
}
