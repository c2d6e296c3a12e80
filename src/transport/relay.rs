//! The receive side of relay sockets: a task per allocation forwards what
//! peers send to the client, framed as ChannelData or a Data indication.
//!
//! The task waits for readability without owning a buffer and reads into a
//! per-thread scratch buffer, so an idle allocation costs a socket and a
//! parked task, not 64 KiB. It ends when the allocation does.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::metrics::{Direction, Framing};
use crate::reject::Reject;
use crate::server::{RelayReceiver, Server};
use crate::transport::ClientRoute;
use crate::turn::AllocId;
use crate::wire::{self, CHANNEL_DATA_HEADER_LEN};

const SCRATCH_LEN: usize = 65_536 + CHANNEL_DATA_HEADER_LEN;

thread_local! {
    /// Peer data is received at offset 4 so a ChannelData header can be
    /// written in front of it without a copy.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_LEN]);
}

/// Forwards datagrams from peers to the client until the allocation goes away.
pub(crate) async fn run(
    server: Arc<Server>,
    id: AllocId,
    receiver: RelayReceiver,
    route: ClientRoute,
) {
    let RelayReceiver { socket, mut ended } = receiver;
    loop {
        tokio::select! {
            _ = &mut ended => return,
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
