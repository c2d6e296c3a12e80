//! The peer connections of one shard's TCP allocations (RFC 6062), named
//! by CONNECTION-ID, and the stage each is in; the methods that move them
//! along are in `tcp.rs`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::turn::AllocId;
use crate::wire::TransactionId;

/// How long a peer connection waits for the client's ConnectionBind
/// before it is closed (RFC 6062 §5.2, §5.3: 30 seconds).
pub(crate) const BIND_WAIT: Duration = Duration::from_secs(30);

/// How the response to a Connect is signed, kept while the connection is made.
#[derive(Debug, Clone, Copy)]
pub(super) struct DeferredReply {
    pub(super) transaction: TransactionId,
    pub(super) sha256: bool,
    pub(super) fingerprint: bool,
}

#[derive(Debug)]
pub(super) enum Stage {
    /// Connect asked for it; the shell is connecting.
    Connecting(DeferredReply),
    /// Connected (either way); the client's ConnectionBind is due by then.
    AwaitingBind(Instant),
    /// Joined to the client's data connection.
    Bound,
}

#[derive(Debug)]
pub(super) struct PeerConnection {
    pub(super) allocation: AllocId,
    pub(super) peer: SocketAddr,
    pub(super) stage: Stage,
}

/// One shard's peer connections. Ids name their shard as allocation ids do,
/// so a ConnectionBind on another connection finds its way here.
#[derive(Debug, Default)]
pub(crate) struct PeerConnections {
    pub(super) by_id: HashMap<u32, PeerConnection>,
    next: u64,
    shard: u64,
    stride: u64,
    /// When each wait for ConnectionBind ends, oldest first (every wait is
    /// [`BIND_WAIT`] long, so this is in order).
    pub(super) bind_deadlines: VecDeque<(Instant, u32)>,
    /// Ended by the core (allocation gone, bind too late): the shell closes them.
    pub(super) ended: Vec<u32>,
}

impl PeerConnections {
    pub(crate) fn new(shard: u64, shards: u64) -> Self {
        Self {
            shard,
            stride: shards.max(1),
            ..Self::default()
        }
    }

    pub(super) fn add(&mut self, allocation: AllocId, peer: SocketAddr, stage: Stage) -> u32 {
        loop {
            let id = self.next * self.stride + self.shard;
            self.next += 1;
            let Ok(id) = u32::try_from(id) else {
                // Past u32: start over, skipping ids still in use.
                self.next = 0;
                continue;
            };
            if self.by_id.contains_key(&id) {
                continue;
            }
            self.by_id.insert(
                id,
                PeerConnection {
                    allocation,
                    peer,
                    stage,
                },
            );
            return id;
        }
    }

    pub(super) fn await_bind(&mut self, id: u32, now: Instant) {
        if let Some(connection) = self.by_id.get_mut(&id) {
            connection.stage = Stage::AwaitingBind(now + BIND_WAIT);
            self.bind_deadlines.push_back((now + BIND_WAIT, id));
        }
    }

    /// The shard of the connection a CONNECTION-ID names.
    pub(crate) fn shard_of(id: u32, shards: usize) -> usize {
        id as usize % shards.max(1)
    }
}
