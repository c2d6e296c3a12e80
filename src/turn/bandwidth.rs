//! Byte-rate caps on the relay path: each direction of an allocation
//! (`max-bps`), each direction of a user's allocations together
//! (`max-bps-per-user`), and the node (`bps-capacity`). A datagram over any
//! cap is dropped and counted.
//!
//! Each cap is a GCRA cell: one atomic "theoretical arrival time", so the
//! per-user and node cells, which several shards' threads touch, need no
//! lock; a relayed datagram costs one compare-and-swap per cap configured.
//! Time comes in as an [`Instant`] and is counted from the cells' origin.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::config::{BandwidthCaps, ByteRate};
use crate::reject::Reject;

const NANOS_PER_SECOND: u128 = 1_000_000_000;
/// A cap lets this much of a second through at once, so that a video
/// frame's burst of packets passes whole...
const BURST_SECONDS_DIVISOR: u64 = 4;
/// ...and at least this many bytes, so that even at a low cap the largest
/// datagram can pass.
const MIN_BURST_BYTES: u64 = 65_536;

/// One cap's state: when, in nanoseconds after the origin, the bytes taken
/// so far would have drained at the cap's rate.
#[derive(Debug, Default)]
pub(crate) struct Cell(AtomicU64);

impl Cell {
    /// Takes `len` bytes at `at` if they fit under `rate` bytes per second
    /// with its burst; false (nothing taken) if they do not.
    fn take(&self, at: u64, len: usize, rate: u64) -> bool {
        let cost = nanos_for(len as u64, rate);
        let limit = at.saturating_add(nanos_for(burst_bytes(rate), rate));
        let mut tat = self.0.load(Ordering::Relaxed);
        loop {
            let next = tat.max(at).saturating_add(cost);
            if next > limit {
                return false;
            }
            match self
                .0
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => tat = seen,
            }
        }
    }
}

fn burst_bytes(rate: u64) -> u64 {
    (rate / BURST_SECONDS_DIVISOR).max(MIN_BURST_BYTES)
}

fn nanos_for(bytes: u64, rate: u64) -> u64 {
    let nanos = u128::from(bytes) * NANOS_PER_SECOND / u128::from(rate.max(1));
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

/// A direction of relayed data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Way {
    ToPeer,
    FromPeer,
}

/// One cell per direction: an allocation's, or a user's shared by their allocations.
#[derive(Debug, Default)]
pub(crate) struct Cells {
    to_peer: Cell,
    from_peer: Cell,
}

impl Cells {
    fn way(&self, way: Way) -> &Cell {
        match way {
            Way::ToPeer => &self.to_peer,
            Way::FromPeer => &self.from_peer,
        }
    }
}

/// What a relayed datagram is checked against: the caps in force and the node's state.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gate<'a> {
    caps: &'a BandwidthCaps,
    node: &'a NodeBandwidth,
}

impl<'a> Gate<'a> {
    pub(crate) fn new(caps: &'a BandwidthCaps, node: &'a NodeBandwidth) -> Self {
        Self { caps, node }
    }

    pub(crate) fn admit(
        self,
        allocation: &Cells,
        user: &Cells,
        way: Way,
        now: Instant,
        len: usize,
    ) -> Result<(), Reject> {
        self.node.admit(self.caps, allocation, user, way, now, len)
    }
}

/// The node's cap, shared by every shard.
#[derive(Debug)]
pub(crate) struct NodeBandwidth {
    origin: Instant,
    cell: Cell,
    /// Nanoseconds after the origin of the last drop at the node's cap, plus one (0: never).
    full_at: AtomicU64,
}

/// A second after the node last dropped for its cap, Allocates are taken again.
const AT_CAPACITY_NANOS: u64 = 1_000_000_000;

impl NodeBandwidth {
    pub(crate) fn new(origin: Instant) -> Self {
        Self {
            origin,
            cell: Cell::default(),
            full_at: AtomicU64::new(0),
        }
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether the node dropped data for `bps-capacity` within the last second.
    pub(crate) fn at_capacity(&self, caps: &BandwidthCaps, now: Instant) -> bool {
        if caps.node == ByteRate::UNLIMITED {
            return false;
        }
        let full_at = self.full_at.load(Ordering::Relaxed);
        full_at != 0 && self.nanos(now) < full_at.saturating_add(AT_CAPACITY_NANOS)
    }

    /// Takes `len` bytes going `way` from the allocation's, its user's and
    /// the node's caps, in that order; the first cap that has no room
    /// refuses the datagram.
    pub(crate) fn admit(
        &self,
        caps: &BandwidthCaps,
        allocation: &Cells,
        user: &Cells,
        way: Way,
        now: Instant,
        len: usize,
    ) -> Result<(), Reject> {
        let at = self.nanos(now);
        let fits = |cap: ByteRate, cell: &Cell| cap.0.is_none_or(|rate| cell.take(at, len, rate));
        if !fits(caps.allocation, allocation.way(way)) {
            return Err(Reject::AllocationBandwidth);
        }
        if !fits(caps.user, user.way(way)) {
            return Err(Reject::UserBandwidth);
        }
        if !fits(caps.node, &self.cell) {
            self.full_at.store(at.saturating_add(1), Ordering::Relaxed);
            return Err(Reject::NodeBandwidth);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn caps(allocation: Option<u64>, user: Option<u64>, node: Option<u64>) -> BandwidthCaps {
        BandwidthCaps {
            allocation: ByteRate(allocation),
            user: ByteRate(user),
            node: ByteRate(node),
        }
    }

    /// Bytes of `size`-byte datagrams let through while sending `offered`
    /// bytes per second for `seconds`, in 1 ms steps.
    fn passed(
        node: &NodeBandwidth,
        caps: &BandwidthCaps,
        cells: (&Cells, &Cells),
        offered: u64,
        seconds: u64,
        size: usize,
    ) -> u64 {
        let per_ms = offered / 1000 / size as u64;
        let mut passed = 0;
        for ms in 0..seconds * 1000 {
            let now = node.origin + Duration::from_millis(ms);
            for _ in 0..per_ms {
                if node
                    .admit(caps, cells.0, cells.1, Way::ToPeer, now, size)
                    .is_ok()
                {
                    passed += size as u64;
                }
            }
        }
        passed
    }

    #[test]
    fn a_cap_holds_the_rate_after_its_burst() {
        let node = NodeBandwidth::new(Instant::now());
        let caps = caps(Some(1_000_000), None, None);
        let (own, user) = (Cells::default(), Cells::default());
        let got = passed(&node, &caps, (&own, &user), 4_000_000, 10, 1000);
        // 10 s at 1 MB/s plus the quarter-second burst.
        let expected = 10 * 1_000_000 + 250_000;
        assert!(got.abs_diff(expected) <= 2000, "{got}");
    }

    #[test]
    fn under_the_cap_everything_passes() {
        let node = NodeBandwidth::new(Instant::now());
        let caps = caps(Some(1_000_000), Some(1_000_000), Some(1_000_000));
        let (own, user) = (Cells::default(), Cells::default());
        let got = passed(&node, &caps, (&own, &user), 900_000, 5, 100);
        assert_eq!(got, 5 * 900_000);
        assert!(!node.at_capacity(&caps, node.origin + Duration::from_secs(5)));
    }

    #[test]
    fn a_low_cap_still_passes_the_largest_datagram() {
        let node = NodeBandwidth::new(Instant::now());
        let caps = caps(Some(1000), None, None);
        let (own, user) = (Cells::default(), Cells::default());
        let now = node.origin;
        let admit = |len| node.admit(&caps, &own, &user, Way::FromPeer, now, len);
        assert_eq!(admit(65_535), Ok(()));
        assert_eq!(admit(1000), Err(Reject::AllocationBandwidth));
        // The other direction has its own cell.
        assert_eq!(
            node.admit(&caps, &own, &user, Way::ToPeer, now, 1000),
            Ok(())
        );
    }

    #[test]
    fn a_users_allocations_share_the_user_cap_and_the_node_marks_itself_full() {
        let node = NodeBandwidth::new(Instant::now());
        let user_cap = caps(None, Some(100_000), None);
        let (first, second, user) = (Cells::default(), Cells::default(), Cells::default());
        let now = node.origin;
        let mut taken = 0;
        while node
            .admit(&user_cap, &first, &user, Way::ToPeer, now, 1000)
            .is_ok()
        {
            taken += 1000;
        }
        assert_eq!(taken, 65_000);
        assert_eq!(
            node.admit(&user_cap, &second, &user, Way::ToPeer, now, 1000),
            Err(Reject::UserBandwidth)
        );

        let node_cap = caps(None, None, Some(100_000));
        let later = now + Duration::from_secs(60);
        assert!(!node.at_capacity(&node_cap, later));
        while node
            .admit(&node_cap, &first, &user, Way::ToPeer, later, 1000)
            .is_ok()
        {}
        assert!(node.at_capacity(&node_cap, later));
        assert!(node.at_capacity(&node_cap, later + Duration::from_millis(900)));
        assert!(!node.at_capacity(&node_cap, later + Duration::from_millis(1100)));
    }
}
