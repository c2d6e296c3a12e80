//! UDP sockets read and written in batches, through quinn-udp: a batch of
//! datagrams per receive (recvmmsg, with GRO joining one sender's
//! equal-sized datagrams), and a run of datagrams to one destination with
//! as few sends as the kernel allows (equal-sized neighbours as one GSO
//! send; quinn-udp falls back to one datagram a call where GSO is missing).

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};

use quinn_udp::{BATCH_SIZE, RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A bound UDP socket (a listener's or a relay's) with quinn-udp's state.
#[derive(Debug)]
pub(crate) struct BatchSocket {
    io: AsyncFd<std::net::UdpSocket>,
    state: UdpSocketState,
}

impl BatchSocket {
    /// Takes a bound socket; `receive_buffer` is its SO_RCVBUF.
    pub(crate) fn new(
        socket: socket2::Socket,
        dont_fragment: bool,
        receive_buffer: usize,
    ) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        let local = socket
            .local_addr()?
            .as_socket()
            .ok_or(io::ErrorKind::InvalidInput)?;
        crate::socket_options::relay_defaults(&socket, local, dont_fragment)?;
        // Bursts arrive between two wake-ups of the reader; the kernel's
        // default buffer (~200 KiB) drops them.
        let _ = state.set_recv_buffer_size((&socket).into(), receive_buffer);
        Ok(Self {
            io: readable_only(socket.into())?,
            state,
        })
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    /// Sends one datagram without waiting (from `src_ip` when the socket
    /// is bound to a wildcard address). A full send buffer drops it, as a
    /// congested link would; it goes straight to the socket, so the first
    /// datagram of a fresh socket is not lost waiting for writability.
    pub(crate) fn send(&self, destination: SocketAddr, src_ip: Option<IpAddr>, contents: &[u8]) {
        let transmit = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size: None,
            src_ip,
        };
        if let Err(error) = self.state.try_send(self.io.get_ref().into(), &transmit) {
            log::debug!("send to {destination} failed: {error}");
        }
    }

    /// Waits until datagrams may be waiting.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.io.readable().await?.retain_ready();
        Ok(())
    }

    /// Reads up to a batch; 0 when nothing was waiting. A short batch
    /// means the queue was empty: tokio is told so (as by a WouldBlock,
    /// which clears its readiness), so the next wait is for new datagrams
    /// and no read is spent learning that nothing is left. Datagrams that
    /// arrive meanwhile raise a new edge, and with it readiness again.
    pub(crate) fn recv(
        &self,
        slices: &mut [IoSliceMut<'_>; BATCH_SIZE],
        metas: &mut [RecvMeta; BATCH_SIZE],
    ) -> io::Result<usize> {
        let mut count = 0;
        let outcome = self.io.try_io(Interest::READABLE, |socket| {
            count = self.state.recv(socket.into(), slices, metas)?;
            if count < BATCH_SIZE {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        match outcome {
            Ok(()) => Ok(count),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(count),
            Err(error) => Err(error),
        }
    }
}

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
        socket: &BatchSocket,
        destination: SocketAddr,
        src_ip: Option<IpAddr>,
    ) {
        let max_segments = socket.state.max_gso_segments().max(1);
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
            if let Err(error) = socket.state.try_send(socket.io.get_ref().into(), &transmit) {
                log::debug!("send to {destination} failed: {error}");
            }
            offset += total;
            i = end;
        }
    }
}

/// Registers `socket` for reads only: sends never wait for room, and a
/// registration for writes would report every send's freed buffer as an
/// event, one more `epoll_wait` per datagram sent.
#[expect(
    deprecated,
    reason = "the safe constructor that takes an Interest; its deprecation is for types \
              that do not own their descriptor, and a std UdpSocket owns it"
)]
fn readable_only(socket: std::net::UdpSocket) -> io::Result<AsyncFd<std::net::UdpSocket>> {
    AsyncFd::with_interest(socket, Interest::READABLE)
}
