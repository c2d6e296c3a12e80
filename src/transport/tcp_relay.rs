//! The sockets of TCP allocations (RFC 6062): peers accepted on a relay
//! address, connections out to peers for Connect, and the bytes carried
//! between a client's data connection and its peer once ConnectionBind
//! joined them.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::server::{PeerLink, Server, TcpRelayReceiver, reusable_tcp_socket};
use crate::transport::ClientRoute;
use crate::turn::AllocId;
use crate::turn::bandwidth::Way;

/// How long a connection out to a peer may take before Connect gets 447.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes one read of a joined pair carries; each direction has one buffer.
const CHUNK: usize = 16 * 1024;
/// How long a chunk over a bandwidth cap waits before it asks again.
const PACE: Duration = Duration::from_millis(10);
/// How long the other direction may finish after one side closed.
const DRAIN_ON_CLOSE: Duration = Duration::from_secs(2);

/// Accepts peers on TCP allocation `id`'s relay address until it ends,
/// telling the client of each the core lets in (ConnectionAttempt).
pub(crate) async fn accept_peers(
    server: Arc<Server>,
    id: AllocId,
    receiver: TcpRelayReceiver,
    route: ClientRoute,
) {
    let TcpRelayReceiver {
        listener,
        mut ended,
    } = receiver;
    let mut out = Vec::with_capacity(64);
    loop {
        let accepted = tokio::select! {
            _ = &mut ended => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors: wait instead of spinning.
                log::warn!("TCP relay of allocation {} accept error: {error}", id.0);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if server.peer_connected_in(id, peer, stream, &mut out) {
            route.send(&out);
        }
    }
}

/// Connects from `from` (the allocation's relay address) to `peer` and
/// answers the client's Connect.
pub(crate) async fn connect(
    server: Arc<Server>,
    connection: u32,
    from: SocketAddr,
    peer: SocketAddr,
    route: ClientRoute,
) {
    let outcome = tokio::time::timeout(CONNECT_TIMEOUT, connect_from(from, peer))
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()));
    if let Err(error) = &outcome {
        log::debug!("connect from {from} to peer {peer} failed: {error}");
    }
    let mut out = Vec::with_capacity(128);
    if server.connect_finished(connection, outcome, &mut out) {
        route.send(&out);
    }
}

async fn connect_from(from: SocketAddr, peer: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::from_std_stream(reusable_tcp_socket(from)?.into());
    let stream = socket.connect(peer).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Carries bytes both ways between a client's data connection (`reader`,
/// `writer`, and `early`: what it sent right after ConnectionBind) and its
/// peer, until either closes or the allocation ends; then closes both.
pub(crate) async fn join<R, W>(
    server: &Arc<Server>,
    link: PeerLink,
    mut reader: R,
    mut writer: W,
    early: Vec<u8>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let PeerLink {
        connection,
        peer,
        mut ended,
    } = link;
    let (mut peer_reader, mut peer_writer) = peer.into_split();
    let to_peer = async {
        for chunk in early.chunks(CHUNK) {
            pace(server, connection, Way::ToPeer, chunk.len()).await;
            peer_writer.write_all(chunk).await?;
        }
        drop(early);
        copy(
            server,
            connection,
            Way::ToPeer,
            &mut reader,
            &mut peer_writer,
        )
        .await
    };
    let from_peer = copy(
        server,
        connection,
        Way::FromPeer,
        &mut peer_reader,
        &mut writer,
    );
    let mut to_peer = std::pin::pin!(to_peer);
    let mut from_peer = std::pin::pin!(from_peer);
    // Whichever way ends first, the other gets a moment to deliver what is
    // on its way (a client may send its last bytes and close at once).
    let rest = tokio::select! {
        _ = &mut ended => None,
        _ = &mut to_peer => Some(false),
        _ = &mut from_peer => Some(true),
    };
    match rest {
        Some(false) => {
            let _ = tokio::time::timeout(DRAIN_ON_CLOSE, &mut from_peer).await;
        }
        Some(true) => {
            let _ = tokio::time::timeout(DRAIN_ON_CLOSE, &mut to_peer).await;
        }
        None => {}
    }
    server.peer_connection_closed(connection);
}

/// Copies until `from` closes, then half-closes `to`.
async fn copy<R, W>(
    server: &Server,
    connection: u32,
    way: Way,
    from: &mut R,
    to: &mut W,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        pace(server, connection, way, n).await;
        to.write_all(&buffer[..n]).await?;
        to.flush().await?;
    }
}

/// Waits until the bandwidth caps let `len` bytes through: while it waits
/// nothing more is read, so TCP slows the sender down.
async fn pace(server: &Server, connection: u32, way: Way, len: usize) {
    while !server.pass_tcp_data(connection, way, len) {
        tokio::time::sleep(PACE).await;
    }
}
