//! The shell of TCP allocations (RFC 6062): the peer sockets the core's
//! connections stand for, kept with the shard that owns them.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::relay_sockets::{PeerStream, RelaySocketTable};
use super::{Server, State};
use crate::metrics::{Direction, Framing};
use crate::turn::AllocId;
use crate::turn::bandwidth::Way;
use crate::turn::connections::PeerConnections;
use crate::turn::core::Core;
use crate::turn::tcp::Connected;

/// A peer connection joined to the client's data connection: the peer's
/// socket, and a signal that fires when the core ends the connection (its
/// allocation ended).
#[derive(Debug)]
pub(crate) struct PeerLink {
    pub(crate) connection: u32,
    pub(crate) peer: TcpStream,
    pub(crate) ended: oneshot::Receiver<()>,
}

/// Takes the waiting peer socket of `connection`, which a ConnectionBind
/// just bound, and leaves the signal that ends the pair in its place.
pub(super) fn join(
    core: &mut Core,
    sockets: &mut RelaySocketTable,
    connection: u32,
) -> Option<PeerLink> {
    match sockets.peers.remove(&connection) {
        Some(PeerStream::Waiting(peer)) => {
            let (end, ended) = oneshot::channel();
            sockets
                .peers
                .insert(connection, PeerStream::Joined { _end: end });
            Some(PeerLink {
                connection,
                peer,
                ended,
            })
        }
        _ => {
            // The core and the sockets disagree: end it on both sides.
            core.peer_connection_closed(connection);
            None
        }
    }
}

impl Server {
    fn connection_shard(&self, connection: u32) -> usize {
        PeerConnections::shard_of(connection, self.shards.len())
    }

    /// The outcome of connecting out for a Connect: true if `out` holds the
    /// response for the client. A connected socket waits for ConnectionBind.
    pub(crate) fn connect_finished(
        &self,
        connection: u32,
        outcome: io::Result<TcpStream>,
        out: &mut Vec<u8>,
    ) -> bool {
        let mut guard = self.shard(self.connection_shard(connection));
        let State { core, sockets } = &mut *guard.0;
        let connected = core.connect_finished(connection, outcome.is_ok(), Instant::now(), out);
        match (connected, outcome) {
            (Connected::Keep, Ok(peer)) => {
                sockets.peers.insert(connection, PeerStream::Waiting(peer));
                true
            }
            (Connected::Refused, _) => true,
            _ => false,
        }
    }

    /// A peer connected to TCP allocation `id`'s relay address: true if
    /// `out` holds the ConnectionAttempt for the client; else the socket
    /// is dropped, which closes it.
    pub(crate) fn peer_connected_in(
        &self,
        id: AllocId,
        peer: SocketAddr,
        stream: TcpStream,
        out: &mut Vec<u8>,
    ) -> bool {
        let mut guard = self.shard(self.shard_of_id(id));
        let State { core, sockets } = &mut *guard.0;
        match core.peer_connected_in(id, peer, Instant::now(), out) {
            Ok(connection) => {
                sockets
                    .peers
                    .insert(connection, PeerStream::Waiting(stream));
                true
            }
            Err(_) => false,
        }
    }

    /// The client or the peer closed a joined connection.
    pub(crate) fn peer_connection_closed(&self, connection: u32) {
        let mut guard = self.shard(self.connection_shard(connection));
        let State { core, sockets } = &mut *guard.0;
        core.peer_connection_closed(connection);
        sockets.close_peer(connection);
    }

    /// Whether `len` bytes may go `way` over joined connection
    /// `connection` now (the bandwidth caps); counted if so.
    pub(crate) fn pass_tcp_data(&self, connection: u32, way: Way, len: usize) -> bool {
        let passed = self
            .lock(self.connection_shard(connection))
            .core
            .pass_peer_data(connection, way, len, Instant::now());
        if passed {
            let direction = match way {
                Way::ToPeer => Direction::ToPeer,
                Way::FromPeer => Direction::FromPeer,
            };
            self.metrics.relayed(direction, Framing::TcpData, len);
        }
        passed
    }

    /// TCP allocations' peer connections now, across every shard.
    pub(crate) fn peer_connection_count(&self) -> usize {
        (0..self.shards.len())
            .map(|shard| self.lock(shard).core.peer_connection_count())
            .sum()
    }
}
