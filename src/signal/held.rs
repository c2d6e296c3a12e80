//! Signals held for peers on their way: a signal to a peer id that is not
//! (yet) in the room waits there until that peer joins or `hold-for` runs
//! out, as PeerJS's server keeps messages for a peer that has not connected
//! yet and answers `EXPIRE` when they time out.

use std::collections::VecDeque;
use std::time::Instant;

use serde_json::value::RawValue;

use crate::config::SignalLimits;
use crate::metrics::Limit;

/// One signal waiting for its addressee.
pub(crate) struct Held {
    pub(crate) to: Box<str>,
    /// The sender's peer id in the room, and its session (the hub's id).
    pub(crate) from: Box<str>,
    pub(crate) sender: u64,
    /// The signal's `data`, as the sender wrote it: the frame is written on delivery, here
    /// or by the node the peer joins on.
    pub(crate) data: Box<RawValue>,
    /// The sender's message id, echoed in `expired`.
    pub(crate) id: Option<Box<RawValue>>,
    pub(crate) until: Instant,
}

impl Held {
    /// What it counts against the byte limits.
    fn size(&self) -> usize {
        self.data.get().len()
    }
}

/// The signals held in one room, oldest first.
#[derive(Default)]
pub(crate) struct HeldSignals {
    queue: VecDeque<Held>,
    bytes: usize,
}

impl HeldSignals {
    /// Holds `held`, unless that breaks one of the limits, which is returned.
    pub(crate) fn hold(&mut self, held: Held, limits: &SignalLimits) -> Result<(), Limit> {
        let size = held.size();
        if self.queue.len() >= limits.max_held_per_room as usize {
            return Err(Limit::SignalMaxHeldPerRoom);
        }
        if self.bytes + size > limits.max_held_bytes_per_room as usize {
            return Err(Limit::SignalMaxHeldBytesPerRoom);
        }
        let (count, bytes) = self
            .queue
            .iter()
            .filter(|h| h.sender == held.sender && h.from == held.from)
            .fold((0usize, 0usize), |(n, b), h| (n + 1, b + h.size()));
        if count >= limits.max_held_per_sender as usize {
            return Err(Limit::SignalMaxHeldPerSender);
        }
        if bytes + size > limits.max_held_bytes_per_sender as usize {
            return Err(Limit::SignalMaxHeldBytesPerSender);
        }
        self.bytes += size;
        self.queue.push_back(held);
        Ok(())
    }

    /// Takes out, in order, what waits for `peer`.
    pub(crate) fn take_for(&mut self, peer: &str) -> Vec<Held> {
        self.take_where(|held| &*held.to == peer)
    }

    /// Takes out what has waited past its time.
    pub(crate) fn take_expired(&mut self, now: Instant) -> Vec<Held> {
        self.take_where(|held| held.until <= now)
    }

    fn take_where(&mut self, mut taken: impl FnMut(&Held) -> bool) -> Vec<Held> {
        if !self.queue.iter().any(&mut taken) {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut kept = VecDeque::new();
        for held in self.queue.drain(..) {
            if taken(&held) {
                out.push(held);
            } else {
                kept.push_back(held);
            }
        }
        self.queue = kept;
        self.bytes = self.queue.iter().map(Held::size).sum();
        out
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::DEFAULT_SIGNAL_LIMITS;

    fn held(to: &str, sender: u64, size: usize, until: Instant) -> Held {
        Held {
            to: to.into(),
            from: format!("p{sender}").into(),
            sender,
            data: RawValue::from_string(format!("\"{}\"", "x".repeat(size - 2))).unwrap(),
            id: None,
            until,
        }
    }

    #[test]
    fn each_limit_refuses_by_its_key() {
        let now = Instant::now();
        let limits = SignalLimits {
            max_held_per_room: 4,
            max_held_bytes_per_room: 1000,
            max_held_per_sender: 2,
            max_held_bytes_per_sender: 500,
            ..DEFAULT_SIGNAL_LIMITS
        };
        let mut room = HeldSignals::default();
        room.hold(held("b", 1, 100, now), &limits).unwrap();
        room.hold(held("b", 1, 100, now), &limits).unwrap();
        assert_eq!(
            room.hold(held("b", 1, 100, now), &limits),
            Err(Limit::SignalMaxHeldPerSender)
        );
        assert_eq!(
            room.hold(held("b", 2, 501, now), &limits),
            Err(Limit::SignalMaxHeldBytesPerSender)
        );
        room.hold(held("b", 2, 450, now), &limits).unwrap();
        assert_eq!(
            room.hold(held("c", 3, 400, now), &limits),
            Err(Limit::SignalMaxHeldBytesPerRoom)
        );
        room.hold(held("c", 3, 10, now), &limits).unwrap();
        assert_eq!(
            room.hold(held("c", 4, 10, now), &limits),
            Err(Limit::SignalMaxHeldPerRoom)
        );
    }

    #[test]
    fn signals_leave_in_order_for_their_peer_or_their_time() {
        let now = Instant::now();
        let later = now + Duration::from_secs(10);
        let mut room = HeldSignals::default();
        for (to, sender, until) in [("b", 1, now), ("c", 2, later), ("b", 3, later)] {
            room.hold(held(to, sender, 10, until), &DEFAULT_SIGNAL_LIMITS)
                .unwrap();
        }
        let for_b: Vec<u64> = room.take_for("b").iter().map(|h| h.sender).collect();
        assert_eq!(for_b, [1, 3]);
        assert!(room.take_expired(now).is_empty());
        assert_eq!(room.take_expired(later).len(), 1);
        assert_eq!((room.len(), room.bytes), (0, 0));
    }
}
