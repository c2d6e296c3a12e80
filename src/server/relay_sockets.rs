//! Relay sockets: one UDP socket per allocation (two for a dual-stack one,
//! IPv4 and IPv6; a listening TCP socket for a TCP allocation), bound in
//! the configured port range and named by the allocation's id, opened when
//! the core asks and closed when it reports the allocation (or one relay
//! of a dual-stack one) ended; and the sockets of TCP allocations' peer
//! connections, named by CONNECTION-ID.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::datagrams::BatchSocket;
use crate::sparse::shrink_if_sparse;
use crate::turn::{AllocId, RelaySockets};

/// One relay socket, read and written in batches.
pub(crate) type RelaySocket = BatchSocket;

/// What serves a relay socket's receive side: the socket, and a signal
/// that fires when the allocation has ended.
#[derive(Debug)]
pub(crate) struct RelayReceiver {
    pub(crate) socket: Arc<RelaySocket>,
    pub(crate) ended: oneshot::Receiver<()>,
}

#[derive(Debug)]
struct OpenRelay {
    socket: Arc<RelaySocket>,
    /// Dropped with the socket: ends its receive task.
    _ended: oneshot::Sender<()>,
    /// Held until the shell starts the receive task.
    receiver: Option<RelayReceiver>,
    ipv6: bool,
    /// The other family's socket of a dual-stack allocation.
    second: Option<Box<OpenRelay>>,
}

/// What serves a TCP allocation's relay address: the listening socket,
/// and a signal that fires when the allocation has ended.
#[derive(Debug)]
pub(crate) struct TcpRelayReceiver {
    pub(crate) listener: tokio::net::TcpListener,
    pub(crate) ended: oneshot::Receiver<()>,
}

#[derive(Debug)]
struct OpenTcpRelay {
    /// Dropped when the allocation ends: ends the accept task.
    _ended: oneshot::Sender<()>,
    /// Held until the shell starts the accept task.
    receiver: Option<TcpRelayReceiver>,
}

/// A TCP allocation's connection to one peer (RFC 6062).
#[derive(Debug)]
pub(crate) enum PeerStream {
    /// Connected, waiting for the client's ConnectionBind.
    Waiting(tokio::net::TcpStream),
    /// Joined to the client's data connection; dropping `_end` ends the pair.
    Joined { _end: oneshot::Sender<()> },
}

/// Every open relay socket by allocation.
#[derive(Debug, Default)]
pub(crate) struct RelaySocketTable {
    sockets: HashMap<AllocId, OpenRelay>,
    tcp: HashMap<AllocId, OpenTcpRelay>,
    /// Peer connections of TCP allocations by CONNECTION-ID.
    pub(crate) peers: HashMap<u32, PeerStream>,
    /// SO_RCVBUF for new sockets (`relay.receive-buffer-bytes`).
    pub(crate) receive_buffer: usize,
}

impl RelaySocketTable {
    pub(crate) fn new(receive_buffer: usize) -> Self {
        Self {
            sockets: HashMap::new(),
            tcp: HashMap::new(),
            peers: HashMap::new(),
            receive_buffer,
        }
    }

    /// The socket that sends for allocation `id` to `peer`: the one of the
    /// peer's family when the allocation has relays of both.
    pub(crate) fn get(&self, id: AllocId, peer: SocketAddr) -> Option<&Arc<RelaySocket>> {
        let relay = self.sockets.get(&id)?;
        match &relay.second {
            Some(second) if second.ipv6 == peer.is_ipv6() => Some(&second.socket),
            _ => Some(&relay.socket),
        }
    }

    /// The receive sides of the sockets just opened for `id`, once.
    pub(crate) fn take_receivers(&mut self, id: AllocId) -> Vec<RelayReceiver> {
        let Some(relay) = self.sockets.get_mut(&id) else {
            return Vec::new();
        };
        let second = relay
            .second
            .as_mut()
            .and_then(|second| second.receiver.take());
        relay.receiver.take().into_iter().chain(second).collect()
    }

    /// The listening side of a TCP relay just opened, once.
    pub(crate) fn take_tcp_receiver(&mut self, id: AllocId) -> Option<TcpRelayReceiver> {
        self.tcp.get_mut(&id)?.receiver.take()
    }

    pub(crate) fn close(&mut self, id: AllocId) {
        if self.sockets.remove(&id).is_some() {
            shrink_if_sparse(&mut self.sockets);
        } else if self.tcp.remove(&id).is_some() {
            shrink_if_sparse(&mut self.tcp);
        }
    }

    /// Closes a peer connection (or ends its joined pair).
    pub(crate) fn close_peer(&mut self, connection: u32) {
        if self.peers.remove(&connection).is_some() {
            shrink_if_sparse(&mut self.peers);
        }
    }

    /// Closes the socket of family `ipv6` of dual-stack allocation `id`,
    /// which keeps its other one.
    pub(crate) fn close_one(&mut self, id: AllocId, ipv6: bool) {
        let Some(relay) = self.sockets.get_mut(&id) else {
            return;
        };
        match relay.second.take() {
            Some(second) if relay.ipv6 == ipv6 => *relay = *second,
            Some(second) if second.ipv6 != ipv6 => relay.second = Some(second),
            Some(_) => {}
            None if relay.ipv6 == ipv6 => self.close(id),
            None => {}
        }
    }
}

impl RelaySockets for RelaySocketTable {
    fn open(&mut self, id: AllocId, address: SocketAddr, dont_fragment: bool) -> io::Result<()> {
        let socket = Arc::new(bind(address, dont_fragment, self.receive_buffer)?);
        let (ended_tx, ended_rx) = oneshot::channel();
        let relay = OpenRelay {
            socket: socket.clone(),
            _ended: ended_tx,
            receiver: Some(RelayReceiver {
                socket,
                ended: ended_rx,
            }),
            ipv6: address.is_ipv6(),
            second: None,
        };
        // A dual-stack allocation's second relay joins its first.
        match self.sockets.get_mut(&id) {
            Some(first) => first.second = Some(Box::new(relay)),
            None => {
                self.sockets.insert(id, relay);
            }
        }
        Ok(())
    }

    fn open_tcp(&mut self, id: AllocId, address: SocketAddr) -> io::Result<()> {
        let socket = reusable_tcp_socket(address)?;
        socket.listen(128)?;
        let listener = tokio::net::TcpListener::from_std(socket.into())?;
        let (ended_tx, ended_rx) = oneshot::channel();
        self.tcp.insert(
            id,
            OpenTcpRelay {
                _ended: ended_tx,
                receiver: Some(TcpRelayReceiver {
                    listener,
                    ended: ended_rx,
                }),
            },
        );
        Ok(())
    }
}

/// A TCP socket bound to a TCP allocation's relay address. Connections out
/// to peers leave from the address the allocation listens on (RFC 6062
/// §5.2), which binding needs SO_REUSEPORT for, on the listener and each
/// outgoing socket alike; only this user's sockets can share the port.
pub(crate) fn reusable_tcp_socket(address: SocketAddr) -> io::Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    crate::socket_options::allow_bind_before_address_exists(&socket, address)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket)
}

fn bind(
    address: SocketAddr,
    dont_fragment: bool,
    receive_buffer: usize,
) -> io::Result<RelaySocket> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    crate::socket_options::allow_bind_before_address_exists(&socket, address)?;
    socket.bind(&address.into())?;
    BatchSocket::new(socket, dont_fragment, receive_buffer)
}
