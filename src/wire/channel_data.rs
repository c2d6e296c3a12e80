//! ChannelData framing (RFC 8656 §12.4), over borrowed slices.

pub(crate) const CHANNEL_DATA_HEADER_LEN: usize = 4;

/// A ChannelData message borrowing the receive buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChannelData<'a> {
    pub(crate) channel: u16,
    pub(crate) data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parses a datagram: the length field may be shorter than the datagram
    /// (padding is optional over UDP) but never longer.
    pub(crate) fn parse(buf: &'a [u8]) -> Option<Self> {
        let header = buf.get(..CHANNEL_DATA_HEADER_LEN)?;
        let channel = u16::from_be_bytes([header[0], header[1]]);
        let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let data = buf.get(CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + length)?;
        Some(Self { channel, data })
    }
}

/// Appends a ChannelData message carrying `data` (a UDP payload, so under
/// 64 KiB); `padded` adds the zeros that streams need (RFC 8656 §12.5).
pub(crate) fn push_channel_data(out: &mut Vec<u8>, channel: u16, data: &[u8], padded: bool) {
    #[expect(clippy::cast_possible_truncation, reason = "udp payloads are < 64 KiB")]
    let length = data.len() as u16;
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(data);
    if padded {
        let padding = data.len().next_multiple_of(4) - data.len();
        out.extend_from_slice(&[0; 3][..padding]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_longer_than_datagram_is_refused() {
        assert!(ChannelData::parse(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4]).is_none());
        assert!(ChannelData::parse(&[0x40, 0x00]).is_none());
        let frame = ChannelData::parse(&[0x40, 0x01, 0x00, 0x02, 9, 8, 0, 0]).unwrap();
        assert_eq!(frame.channel, 0x4001);
        assert_eq!(frame.data, &[9, 8]);
    }
}
