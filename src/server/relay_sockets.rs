//! Relay sockets: one UDP socket per allocation, bound in the configured
//! port range and named by the allocation's id, opened when the core asks
//! and closed when it reports the allocation ended.

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
}

/// Every open relay socket by allocation.
#[derive(Debug, Default)]
pub(crate) struct RelaySocketTable {
    sockets: HashMap<AllocId, OpenRelay>,
    /// SO_RCVBUF for new sockets (`relay.receive-buffer-bytes`).
    pub(crate) receive_buffer: usize,
}

impl RelaySocketTable {
    pub(crate) fn new(receive_buffer: usize) -> Self {
        Self {
            sockets: HashMap::new(),
            receive_buffer,
        }
    }

    /// The socket that sends for allocation `id`.
    pub(crate) fn get(&self, id: AllocId) -> Option<&Arc<RelaySocket>> {
        self.sockets.get(&id).map(|relay| &relay.socket)
    }

    /// The receive side of a socket just opened, once.
    pub(crate) fn take_receiver(&mut self, id: AllocId) -> Option<RelayReceiver> {
        self.sockets.get_mut(&id)?.receiver.take()
    }

    pub(crate) fn close(&mut self, id: AllocId) {
        self.sockets.remove(&id);
        shrink_if_sparse(&mut self.sockets);
    }
}

impl RelaySockets for RelaySocketTable {
    fn open(&mut self, id: AllocId, address: SocketAddr, dont_fragment: bool) -> io::Result<()> {
        let socket = Arc::new(bind(address, dont_fragment, self.receive_buffer)?);
        let (ended_tx, ended_rx) = oneshot::channel();
        self.sockets.insert(
            id,
            OpenRelay {
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
