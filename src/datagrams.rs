//! Sending a run of datagrams to one destination with as few system calls
//! as the kernel allows: equal-sized neighbours go out as one UDP GSO send
//! (quinn-udp falls back to one datagram a call where GSO is missing).

use std::net::{IpAddr, SocketAddr};

use quinn_udp::{Transmit, UdpSocketState};
use tokio::net::UdpSocket;

/// The most one GSO send may carry: its datagrams share one 16-bit IP length.
const MAX_GSO_BYTES: usize = 65_000;

/// Datagrams placed back to back, each with its length, reused run after run.
#[derive(Debug, Default)]
pub(crate) struct Run {
    pub(crate) bytes: Vec<u8>,
    lens: Vec<usize>,
    /// Where the datagram being appended starts.
    start: usize,
}

impl Run {
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.lens.clear();
        self.start = 0;
    }

    pub(crate) fn push(&mut self, datagram: &[u8]) {
        self.bytes.extend_from_slice(datagram);
        self.close_datagram();
    }

    /// Ends a datagram whose bytes the caller appended to `bytes` since the last one.
    pub(crate) fn close_datagram(&mut self) {
        self.lens.push(self.bytes.len() - self.start);
        self.start = self.bytes.len();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// The datagrams one by one.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut offset = 0;
        self.lens.iter().map(move |&len| {
            let datagram = &self.bytes[offset..offset + len];
            offset += len;
            datagram
        })
    }

    /// Sends every datagram to `destination` from `socket` (from `src_ip`
    /// when the socket is bound to a wildcard address). A full send buffer
    /// drops what does not fit, as a congested link would.
    pub(crate) fn send(
        &self,
        state: &UdpSocketState,
        socket: &UdpSocket,
        destination: SocketAddr,
        src_ip: Option<IpAddr>,
    ) {
        let max_segments = state.max_gso_segments().max(1);
        let mut offset = 0;
        let mut i = 0;
        while i < self.lens.len() {
            let len = self.lens[i];
            let mut end = i + 1;
            let mut total = len;
            while end < self.lens.len()
                && self.lens[end] == len
                && end - i < max_segments
                && total + len <= MAX_GSO_BYTES
            {
                total += len;
                end += 1;
            }
            let transmit = Transmit {
                destination,
                ecn: None,
                contents: &self.bytes[offset..offset + total],
                segment_size: (end - i > 1).then_some(len),
                src_ip,
            };
            if let Err(error) = state.try_send(socket.into(), &transmit) {
                log::debug!("send to {destination} failed: {error}");
            }
            offset += total;
            i = end;
        }
    }
}
