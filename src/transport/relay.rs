//! The receive side of relay sockets: a task per allocation forwards what
//! peers send to the client, framed as ChannelData or a Data indication.
//!
//! Each wake-up reads a batch (recvmmsg, with GRO joining a peer's
//! equal-sized datagrams), routes the whole batch under one lock and one
//! clock read, and sends it to the client as one run (GSO over UDP). The
//! buffers belong to the worker thread, not the task, so an idle
//! allocation costs a socket and a parked task.

use std::cell::RefCell;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

use quinn_udp::{BATCH_SIZE, RecvMeta};

use crate::datagrams::{BatchSocket, Run};
use crate::metrics::{Direction, Framing};
use crate::reject::Reject;
use crate::server::{RelayReceiver, Server};
use crate::transport::ClientRoute;
use crate::turn::AllocId;
use crate::wire::{self, CHANNEL_DATA_HEADER_LEN};

/// Room for the largest datagram, or a GRO batch of smaller ones.
const SLOT_LEN: usize = 65_536;
/// Batches one task reads before it lets others run.
const BATCHES_PER_WAKE: usize = 8;

/// One worker thread's buffers for reading and framing a batch.
struct Scratch {
    buffers: Vec<u8>,
    metas: [RecvMeta; BATCH_SIZE],
    /// Each datagram: its peer and where it is in `buffers`.
    datagrams: Vec<(SocketAddr, Range<usize>)>,
    peers: Vec<(SocketAddr, usize)>,
    routes: Vec<Option<Option<u16>>>,
    run: Run,
    indication: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        buffers: vec![0; SLOT_LEN * BATCH_SIZE],
        metas: [RecvMeta::default(); BATCH_SIZE],
        datagrams: Vec::with_capacity(BATCH_SIZE),
        peers: Vec::with_capacity(BATCH_SIZE),
        routes: Vec::with_capacity(BATCH_SIZE),
        run: Run::default(),
        indication: Vec::with_capacity(2048),
    });
}

/// Forwards datagrams from peers to the client until the allocation ends.
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
        for _ in 0..BATCHES_PER_WAKE {
            let more = SCRATCH
                .with_borrow_mut(|scratch| forward_batch(&server, id, &socket, &route, scratch));
            if !more {
                break;
            }
        }
    }
}

/// Reads one batch and forwards it; false once the socket has nothing more.
fn forward_batch(
    server: &Server,
    id: AllocId,
    socket: &BatchSocket,
    route: &ClientRoute,
    scratch: &mut Scratch,
) -> bool {
    let Scratch {
        buffers,
        metas,
        datagrams,
        peers,
        routes,
        run,
        indication,
    } = scratch;
    let received = {
        let mut chunks = buffers.chunks_mut(SLOT_LEN);
        let mut slices: [IoSliceMut<'_>; BATCH_SIZE] =
            std::array::from_fn(|_| IoSliceMut::new(chunks.next().expect("BATCH_SIZE slots")));
        socket.recv(&mut slices, metas)
    };
    let count = match received {
        Ok(0) => return false,
        Ok(count) => count,
        // ICMP errors from earlier sends surface here; they end nothing.
        Err(error) => {
            log::debug!("relay receive for allocation {} failed: {error}", id.0);
            return true;
        }
    };
    datagrams.clear();
    for (slot, meta) in metas.iter().take(count).enumerate() {
        // GRO may have joined several datagrams of one peer: split by stride.
        let stride = meta.stride.max(1);
        let mut start = slot * SLOT_LEN;
        let end = start + meta.len;
        while start < end {
            let len = stride.min(end - start);
            datagrams.push((meta.addr, start..start + len));
            start += len;
        }
    }
    peers.clear();
    peers.extend(datagrams.iter().map(|(peer, data)| (*peer, data.len())));
    server.route_from_peers(id, peers, routes);

    run.clear();
    let max_frame = route.max_frame_len();
    let pad = route.is_stream();
    let mut relayed = [(0, 0); 2];
    for ((peer, data), route) in datagrams.iter().zip(routes.iter()) {
        let Some(channel) = *route else {
            continue;
        };
        let payload = &buffers[data.clone()];
        let framed_len = match channel {
            Some(_) => Some(CHANNEL_DATA_HEADER_LEN + payload.len()),
            None => wire::data_indication_len(*peer, payload.len()),
        };
        if framed_len.is_none_or(|framed| framed > max_frame) {
            server.rejects.count(Reject::TooLargeForClient);
            continue;
        }
        match channel {
            Some(channel) => {
                wire::push_channel_data(&mut run.bytes, channel, payload, pad);
                run.close_datagram();
                relayed[0].0 += 1;
                relayed[0].1 += payload.len();
            }
            None => {
                super::data_indication(*peer, payload, indication);
                run.push(indication);
                relayed[1].0 += 1;
                relayed[1].1 += payload.len();
            }
        }
    }
    if !run.is_empty() {
        route.send_run(run);
    }
    for ((packets, bytes), framing) in relayed
        .into_iter()
        .zip([Framing::ChannelData, Framing::Indication])
    {
        if packets > 0 {
            server
                .metrics
                .relayed_many(Direction::FromPeer, framing, packets, bytes);
        }
    }
    count == BATCH_SIZE
}
