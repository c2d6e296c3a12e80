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

/// Writes the 4-byte header in front of `data_len` bytes already placed at
/// `buf[4..]`, so payloads are received straight into their final position.
pub(crate) fn write_channel_data(buf: &mut [u8], channel: u16, data_len: usize) {
    #[expect(clippy::cast_possible_truncation, reason = "udp payloads are < 64 KiB")]
    let length = data_len as u16;
    buf[..2].copy_from_slice(&channel.to_be_bytes());
    buf[2..4].copy_from_slice(&length.to_be_bytes());
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
