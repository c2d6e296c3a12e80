//! The one allocation table every listener shares, indexed by 5-tuple, by
//! relay socket address and by username.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::turn::FiveTuple;
use crate::turn::allocation::{AllocId, Allocation};

#[derive(Debug, Default)]
pub(crate) struct AllocationTable {
    by_id: HashMap<AllocId, Allocation>,
    by_five_tuple: HashMap<FiveTuple, AllocId>,
    by_relayed: HashMap<SocketAddr, AllocId>,
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
        self.by_relayed.insert(allocation.relayed, id);
        self.by_id.insert(id, allocation);
    }

    pub(crate) fn remove(&mut self, id: AllocId) -> Option<Allocation> {
        let allocation = self.by_id.remove(&id)?;
        self.by_five_tuple.remove(&allocation.five_tuple);
        self.by_relayed.remove(&allocation.relayed);
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

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Allocation> {
        self.by_id.values()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Allocation> {
        self.by_id.values_mut()
    }
}
