//! The allocation table of one shard, indexed by 5-tuple and by relay
//! socket address, with the schedule the expiry timer works from.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use crate::sparse::shrink_if_sparse;
use crate::turn::FiveTuple;
use crate::turn::allocation::{AllocId, Allocation};

#[derive(Debug, Default)]
pub(crate) struct AllocationTable {
    by_id: HashMap<AllocId, Allocation>,
    by_five_tuple: HashMap<FiveTuple, AllocId>,
    by_relayed: HashMap<SocketAddr, AllocId>,
    /// One entry per allocation, keyed by its `wake_at`: no later than the
    /// first moment its lifetime, a permission or a channel ends. A deadline
    /// pushed later (a refresh) leaves the entry early, to be found with
    /// nothing due and moved; an earlier one moves it at once. So a timer
    /// tick looks at the entries that are due and nothing else; within a due
    /// allocation it walks permissions and channels, which the caps bound.
    schedule: BTreeSet<(Instant, AllocId)>,
    next_id: u64,
    /// Ids go up by the number of shards, so an id names its shard.
    id_stride: u64,
}

impl AllocationTable {
    /// The table of shard `shard` of `shards`: its ids are `shard` modulo `shards`.
    pub(crate) fn new(shard: u64, shards: u64) -> Self {
        Self {
            next_id: shard,
            id_stride: shards.max(1),
            ..Self::default()
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn next_id(&mut self) -> AllocId {
        self.next_id += self.id_stride;
        AllocId(self.next_id)
    }

    pub(crate) fn insert(&mut self, allocation: Allocation) {
        let id = allocation.id;
        self.by_five_tuple.insert(allocation.five_tuple, id);
        for relayed in allocation.relayed_addresses() {
            self.by_relayed.insert(relayed, id);
        }
        self.schedule.insert((allocation.wake_at, id));
        self.by_id.insert(id, allocation);
    }

    pub(crate) fn remove(&mut self, id: AllocId) -> Option<Allocation> {
        let allocation = self.by_id.remove(&id)?;
        self.schedule.remove(&(allocation.wake_at, id));
        self.by_five_tuple.remove(&allocation.five_tuple);
        for relayed in allocation.relayed_addresses() {
            self.by_relayed.remove(&relayed);
        }
        shrink_if_sparse(&mut self.by_id);
        shrink_if_sparse(&mut self.by_five_tuple);
        shrink_if_sparse(&mut self.by_relayed);
        Some(allocation)
    }

    pub(crate) fn id_for(&self, five_tuple: &FiveTuple) -> Option<AllocId> {
        self.by_five_tuple.get(five_tuple).copied()
    }

    pub(crate) fn by_five_tuple(&mut self, five_tuple: &FiveTuple) -> Option<&mut Allocation> {
        let id = self.by_five_tuple.get(five_tuple)?;
        self.by_id.get_mut(id)
    }

    pub(crate) fn get(&self, id: AllocId) -> Option<&Allocation> {
        self.by_id.get(&id)
    }

    pub(crate) fn get_mut(&mut self, id: AllocId) -> Option<&mut Allocation> {
        self.by_id.get_mut(&id)
    }

    /// The allocation whose advertised relayed address is `relayed`.
    pub(crate) fn by_relayed(&self, relayed: SocketAddr) -> Option<&Allocation> {
        self.by_id.get(self.by_relayed.get(&relayed)?)
    }

    /// Every allocation, to take permissions and channels away (a reload's
    /// tighter policy): taking away never makes a deadline earlier, so the
    /// schedule stays right.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Allocation> {
        self.by_id.values_mut()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Allocation> {
        self.by_id.values()
    }

    /// Sets when allocation `id` ends.
    pub(crate) fn set_expires(&mut self, id: AllocId, expires: Instant) {
        if let Some(allocation) = self.by_id.get_mut(&id) {
            allocation.expires = expires;
        }
        self.wake_by(id, expires);
    }

    /// Sets when the second relay of allocation `id` ends.
    pub(crate) fn set_second_expires(&mut self, id: AllocId, expires: Instant) {
        if let Some(second) = self.by_id.get_mut(&id).and_then(|a| a.second.as_mut()) {
            second.expires = expires;
        }
        self.wake_by(id, expires);
    }

    /// Ends the relay of family `ipv6` of dual-stack allocation `id`, which
    /// keeps its other relay; returns the ended relay's bound and relayed
    /// addresses. None if the allocation has one relay only.
    pub(crate) fn end_relay(
        &mut self,
        id: AllocId,
        ipv6: bool,
    ) -> Option<(SocketAddr, SocketAddr)> {
        let allocation = self.by_id.get_mut(&id)?;
        let second = allocation.second.take()?;
        let (bound, relayed) = if allocation.relayed.is_ipv6() == ipv6 {
            let first = (allocation.bound, allocation.relayed);
            allocation.bound = second.bound;
            allocation.relayed = second.relayed;
            allocation.expires = second.expires;
            first
        } else {
            (second.bound, second.relayed)
        };
        let expires = allocation.expires;
        self.by_relayed.remove(&relayed);
        self.wake_by(id, expires);
        Some((bound, relayed))
    }

    /// Allocation `id` has something that ends at `deadline` (a permission,
    /// a channel, its lifetime): the timer looks at it then at the latest.
    pub(crate) fn wake_by(&mut self, id: AllocId, deadline: Instant) {
        let Some(allocation) = self.by_id.get_mut(&id) else {
            return;
        };
        if deadline < allocation.wake_at {
            self.schedule.remove(&(allocation.wake_at, id));
            self.schedule.insert((deadline, id));
            allocation.wake_at = deadline;
        }
    }

    /// The next allocation whose entry is due at `now`, its entry taken:
    /// the caller removes it or calls [`Self::reschedule`].
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<AllocId> {
        let &(at, _) = self.schedule.first()?;
        if at > now {
            return None;
        }
        self.schedule.pop_first().map(|(_, id)| id)
    }

    /// Puts allocation `id` back in the schedule at its earliest deadline.
    pub(crate) fn reschedule(&mut self, id: AllocId) {
        if let Some(allocation) = self.by_id.get_mut(&id) {
            allocation.wake_at = allocation.next_expiry();
            self.schedule.insert((allocation.wake_at, id));
        }
    }
}
