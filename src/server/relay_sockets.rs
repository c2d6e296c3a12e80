//! Relay sockets: one UDP socket per allocation, bound in the configured
//! port range and named by the allocation's id, opened when the core asks
//! and closed when it reports the allocation ended.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustix::net::sockopt;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use crate::turn::{AllocId, RelaySockets};

/// What serves a relay socket's receive side: the socket, and a signal
/// that fires when the allocation has ended.
#[derive(Debug)]
pub(crate) struct RelayReceiver {
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) ended: oneshot::Receiver<()>,
}

#[derive(Debug)]
struct RelaySocket {
    socket: Arc<UdpSocket>,
    /// Dropped with the socket: ends its receive task.
    _ended: oneshot::Sender<()>,
    /// Held until the shell starts the receive task.
    receiver: Option<RelayReceiver>,
}

/// Every open relay socket by allocation.
#[derive(Debug, Default)]
pub(crate) struct RelaySocketTable {
    sockets: HashMap<AllocId, RelaySocket>,
}

impl RelaySocketTable {
    /// The socket that sends for allocation `id`.
    pub(crate) fn get(&self, id: AllocId) -> Option<&Arc<UdpSocket>> {
        self.sockets.get(&id).map(|relay| &relay.socket)
    }

    /// The receive side of a socket just opened, once.
    pub(crate) fn take_receiver(&mut self, id: AllocId) -> Option<RelayReceiver> {
        self.sockets.get_mut(&id)?.receiver.take()
    }

    pub(crate) fn close(&mut self, id: AllocId) {
        self.sockets.remove(&id);
    }
}

impl RelaySockets for RelaySocketTable {
    fn open(&mut self, id: AllocId, address: SocketAddr, dont_fragment: bool) -> io::Result<()> {
        let socket = bind(address, dont_fragment)?;
        let (ended_tx, ended_rx) = oneshot::channel();
        self.sockets.insert(
            id,
            RelaySocket {
                socket: socket.clone(),
                _ended: ended_tx,
                receiver: Some(RelayReceiver {
                    socket,
                    ended: ended_rx,
                }),
            },
        );
        Ok(())
    }
}

fn bind(address: SocketAddr, dont_fragment: bool) -> io::Result<Arc<UdpSocket>> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if dont_fragment {
        if address.is_ipv6() {
            sockopt::set_ipv6_mtu_discover(&socket, sockopt::Ipv6PathMtuDiscovery::DO)?;
        } else {
            sockopt::set_ip_mtu_discover(&socket, sockopt::Ipv4PathMtuDiscovery::DO)?;
        }
    }
    crate::socket_options::allow_bind_before_address_exists(&socket, address)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(Arc::new(UdpSocket::from_std(socket.into())?))
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
