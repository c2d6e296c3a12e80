//! What goes over the wire: STUN messages, attributes and ChannelData framing.
//!
//! The codec is our own rather than the `stun` crate's `Message`: that one
//! refuses classic RFC 3489 headers (which the Binding responder must answer)
//! and copies every attribute value on decode, which the relay's Send
//! indication path would pay per packet. The `stun` and `turn` crates remain
//! the first independent client in the tests.

pub(crate) mod attr;
mod channel_data;
mod message;

pub(crate) use channel_data::{CHANNEL_DATA_HEADER_LEN, ChannelData, push_channel_data};
#[cfg(any(test, fuzzing))]
pub(crate) use message::MAGIC_COOKIE;
pub(crate) use message::{
    Class, HEADER_LEN, Message, MessageBuilder, Method, TransactionId, data_indication_len,
};

/// What the first byte of a datagram or stream frame says it is (RFC 8656 §12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Stun,
    ChannelData,
    Other,
}

pub(crate) fn classify(first_byte: u8) -> Kind {
    match first_byte {
        0x00..=0x03 => Kind::Stun,
        // 0x50–0x7F only for RFC 5766 channel numbers; the core checks the range.
        0x40..=0x7F => Kind::ChannelData,
        _ => Kind::Other,
    }
}

/// The next frame at the start of a TCP/TLS receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamFrame {
    /// Not enough bytes yet to know or hold the frame.
    Incomplete,
    /// A whole frame: `message` bytes are the STUN or ChannelData message,
    /// `total` adds the padding ChannelData carries on streams (RFC 8656 §12.5).
    Complete { message: usize, total: usize },
    /// The first byte is neither STUN nor ChannelData: the stream is lost.
    Invalid,
}

/// The size a frame at the start of `buf` announces, padding included, once
/// its 4-byte header is there (so an oversized one is refused before it is read).
pub(crate) fn declared_frame_len(buf: &[u8]) -> Option<usize> {
    let header = buf.get(..4)?;
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    match classify(header[0]) {
        Kind::Stun => Some(HEADER_LEN + length),
        Kind::ChannelData => Some(CHANNEL_DATA_HEADER_LEN + length.next_multiple_of(4)),
        Kind::Other => None,
    }
}

pub(crate) fn stream_frame(buf: &[u8]) -> StreamFrame {
    let Some(header) = buf.get(..4) else {
        return if buf.first().is_some_and(|&b| classify(b) == Kind::Other) {
            StreamFrame::Invalid
        } else {
            StreamFrame::Incomplete
        };
    };
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let (message, total) = match classify(header[0]) {
        Kind::Stun => (HEADER_LEN + length, HEADER_LEN + length),
        Kind::ChannelData => (
            CHANNEL_DATA_HEADER_LEN + length,
            CHANNEL_DATA_HEADER_LEN + length.next_multiple_of(4),
        ),
        Kind::Other => return StreamFrame::Invalid,
    };
    if buf.len() < total {
        StreamFrame::Incomplete
    } else {
        StreamFrame::Complete { message, total }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_frames_are_cut_by_their_length_fields() {
        let stun = [0x00, 0x01, 0x00, 0x04, 0x21, 0x12, 0xA4, 0x42];
        assert_eq!(stream_frame(&stun), StreamFrame::Incomplete);
        let mut whole = vec![0u8; 24];
        whole[..8].copy_from_slice(&stun);
        whole.extend_from_slice(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5]);
        assert_eq!(
            stream_frame(&whole),
            StreamFrame::Complete {
                message: 24,
                total: 24
            }
        );
        let rest = &whole[24..];
        assert_eq!(
            stream_frame(rest),
            StreamFrame::Incomplete,
            "padding not here yet"
        );
        let padded = [rest, &[0, 0, 0]].concat();
        assert_eq!(
            stream_frame(&padded),
            StreamFrame::Complete {
                message: 9,
                total: 12
            }
        );
        assert_eq!(stream_frame(&[0x16, 0x03]), StreamFrame::Invalid);
        assert_eq!(stream_frame(&[0x80, 0, 0, 0]), StreamFrame::Invalid);
        // 'G' (0x47) is a channel-number byte: an HTTP request reads as a
        // ChannelData frame of 0x5420 bytes, which the frame limit refuses.
        assert_eq!(stream_frame(b"GET / HTTP/1.1"), StreamFrame::Incomplete);
        assert_eq!(declared_frame_len(b"GET / HTTP/1.1"), Some(4 + 0x5420));
        assert_eq!(stream_frame(&[]), StreamFrame::Incomplete);
    }
}
