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

pub(crate) use channel_data::{CHANNEL_DATA_HEADER_LEN, ChannelData, write_channel_data};
pub(crate) use message::{Class, MAGIC_COOKIE, Message, MessageBuilder, Method, TransactionId};

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
