//! Relay sockets: one UDP socket per allocation, bound in the configured
//! port range, and the task that forwards what peers send to it.
//!
//! The task waits for readability without owning a buffer and reads into a
//! per-thread scratch buffer, so an idle allocation costs a socket and a
//! parked task, not 64 KiB. It ends when the allocation drops its handle.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustix::net::sockopt;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use crate::metrics::{Direction, Framing};
use crate::reject::Reject;
use crate::server::Server;
use crate::transport::ClientRoute;
use crate::turn::allocation::AllocId;
use crate::wire::{self, CHANNEL_DATA_HEADER_LEN};

/// The allocation's side of a relay: the socket to send to peers on and the
/// switch that stops its receive task when dropped.
#[derive(Debug)]
pub(crate) struct RelayHandle {
    socket: Option<Arc<UdpSocket>>,
    bound: SocketAddr,
    _stop: Option<oneshot::Sender<()>>,
}

/// The task's side, handed to the shell to spawn.
#[derive(Debug)]
pub(crate) struct RelayTask {
    socket: Arc<UdpSocket>,
    stop: oneshot::Receiver<()>,
}

impl RelayHandle {
    /// Binds a relay socket; with `dont_fragment` the DF bit is set on what it sends.
    pub(crate) fn open(bind: SocketAddr, dont_fragment: bool) -> io::Result<(Self, RelayTask)> {
        let domain = socket2::Domain::for_address(bind);
        let socket =
            socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        if bind.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        if dont_fragment {
            if bind.is_ipv6() {
                sockopt::set_ipv6_mtu_discover(&socket, sockopt::Ipv6PathMtuDiscovery::DO)?;
            } else {
                sockopt::set_ip_mtu_discover(&socket, sockopt::Ipv4PathMtuDiscovery::DO)?;
            }
        }
        crate::transport::allow_bind_before_address_exists(&socket, bind)?;
        socket.set_nonblocking(true)?;
        socket.bind(&bind.into())?;
        let socket = Arc::new(UdpSocket::from_std(socket.into())?);
        let bound = socket.local_addr()?;
        let (stop_tx, stop_rx) = oneshot::channel();
        Ok((
            Self {
                socket: Some(socket.clone()),
                bound,
                _stop: Some(stop_tx),
            },
            RelayTask {
                socket,
                stop: stop_rx,
            },
        ))
    }

    /// A handle with no socket, for unit tests of allocation bookkeeping.
    #[cfg(test)]
    pub(crate) fn detached(bound: SocketAddr) -> Self {
        Self {
            socket: None,
            bound,
            _stop: None,
        }
    }

    pub(crate) fn bound(&self) -> SocketAddr {
        self.bound
    }

    pub(crate) fn socket(&self) -> Option<&Arc<UdpSocket>> {
        self.socket.as_ref()
    }
}

/// Sends to a peer without waiting: a full socket buffer drops the datagram,
/// as a congested link would. The send goes straight to the socket: tokio's
/// `try_send_to` refuses until its reactor has seen the new socket writable,
/// which would lose the first datagram of a fresh allocation.
pub(crate) fn send_to_peer(socket: &UdpSocket, data: &[u8], peer: SocketAddr) {
    if let Err(error) = rustix::net::sendto(socket, data, rustix::net::SendFlags::empty(), &peer) {
        log::debug!("relay send to {peer} failed: {error}");
    }
}

const SCRATCH_LEN: usize = 65_536 + CHANNEL_DATA_HEADER_LEN;

thread_local! {
    /// Peer data is received at offset 4 so a ChannelData header can be
    /// written in front of it without a copy.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_LEN]);
}

/// Forwards datagrams from peers to the client until the allocation goes away.
pub(crate) async fn run(server: Arc<Server>, id: AllocId, task: RelayTask, route: ClientRoute) {
    let RelayTask { socket, mut stop } = task;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            ready = socket.readable() => {
                if let Err(error) = ready {
                    log::warn!("relay socket for allocation {} failed: {error}", id.0);
                    return;
                }
            }
        }
        // Drain what is queued, bounded so one busy relay cannot starve the thread.
        for _ in 0..64 {
            let done = SCRATCH.with_borrow_mut(|scratch| {
                let (len, peer) =
                    match socket.try_recv_from(&mut scratch[CHANNEL_DATA_HEADER_LEN..]) {
                        Ok(received) => received,
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => return true,
                        // ICMP errors from earlier sends surface here; they end nothing.
                        Err(error) => {
                            log::debug!("relay receive for allocation {} failed: {error}", id.0);
                            return false;
                        }
                    };
                forward_to_client(&server, id, &route, scratch, len, peer);
                false
            });
            if done {
                break;
            }
        }
    }
}

fn forward_to_client(
    server: &Server,
    id: AllocId,
    route: &ClientRoute,
    scratch: &mut [u8],
    len: usize,
    peer: SocketAddr,
) {
    let Some(channel) = server.route_from_peer(id, peer, len) else {
        return;
    };
    let framed_len = match channel {
        Some(_) => Some(CHANNEL_DATA_HEADER_LEN + len),
        None => wire::data_indication_len(peer, len),
    };
    if framed_len.is_none_or(|framed| framed > route.max_frame_len()) {
        server.rejects.count(Reject::TooLargeForClient);
        return;
    }
    match channel {
        Some(channel) => {
            server
                .metrics
                .relayed(Direction::FromPeer, Framing::ChannelData, len);
            wire::write_channel_data(scratch, channel, len);
            route.send_channel_data(&scratch[..CHANNEL_DATA_HEADER_LEN + len]);
        }
        None => {
            server
                .metrics
                .relayed(Direction::FromPeer, Framing::Indication, len);
            let data = &scratch[CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + len];
            route.send_data_indication(peer, data);
        }
    }
}
