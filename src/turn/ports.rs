//! The relay port pool: every free port of the configured range, taken at
//! random in O(1) so relayed addresses are hard to guess and allocation never
//! fails while a port is free (random probing does, under high occupancy).

use rand::Rng;

use crate::config::PortRange;

const NOT_FREE: u32 = u32::MAX;

#[derive(Debug)]
pub(crate) struct PortPool {
    low: u16,
    free: Vec<u16>,
    /// For each port of the range, its index in `free`, or NOT_FREE.
    position: Vec<u32>,
}

impl PortPool {
    pub(crate) fn new(range: PortRange) -> Self {
        let free: Vec<u16> = (range.low..=range.high).collect();
        let position = (0..range.len())
            .map(|i| u32::try_from(i).expect("at most 65536 ports"))
            .collect();
        Self {
            low: range.low,
            free,
            position,
        }
    }

    /// Any free port.
    pub(crate) fn take_any(&mut self, rng: &mut impl Rng) -> Option<u16> {
        if self.free.is_empty() {
            return None;
        }
        let port = self.free[rng.random_range(0..self.free.len())];
        self.take(port).then_some(port)
    }

    /// A free even port whose successor is free too (EVEN-PORT with R bit
    /// needs both); random tries first, then a scan.
    pub(crate) fn take_even(&mut self, rng: &mut impl Rng, with_next: bool) -> Option<u16> {
        let usable = |pool: &Self, port: u16| {
            port.is_multiple_of(2)
                && (!with_next || port.checked_add(1).is_some_and(|next| pool.is_free(next)))
        };
        let mut chosen = None;
        for _ in 0..32 {
            if self.free.is_empty() {
                return None;
            }
            let port = self.free[rng.random_range(0..self.free.len())];
            if usable(self, port) {
                chosen = Some(port);
                break;
            }
        }
        let port = chosen.or_else(|| self.free.iter().copied().find(|&p| usable(self, p)))?;
        self.take(port);
        if with_next {
            self.take(port + 1);
        }
        Some(port)
    }

    pub(crate) fn is_free(&self, port: u16) -> bool {
        self.slot(port)
            .is_some_and(|slot| self.position[slot] != NOT_FREE)
    }

    /// Removes `port` from the pool; false if it was not free.
    pub(crate) fn take(&mut self, port: u16) -> bool {
        let Some(slot) = self.slot(port) else {
            return false;
        };
        let index = self.position[slot];
        if index == NOT_FREE {
            return false;
        }
        let index = index as usize;
        self.free.swap_remove(index);
        if let Some(&moved) = self.free.get(index) {
            let moved_slot = usize::from(moved - self.low);
            self.position[moved_slot] = u32::try_from(index).expect("at most 65536 ports");
        }
        self.position[slot] = NOT_FREE;
        true
    }

    /// Returns `port` to the pool (ports outside the range are ignored).
    pub(crate) fn release(&mut self, port: u16) {
        let Some(slot) = self.slot(port) else {
            return;
        };
        if self.position[slot] != NOT_FREE {
            return;
        }
        self.position[slot] = u32::try_from(self.free.len()).expect("at most 65536 ports");
        self.free.push(port);
    }

    fn slot(&self, port: u16) -> Option<usize> {
        let slot = usize::from(port.checked_sub(self.low)?);
        (slot < self.position.len()).then_some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn every_port_is_handed_out_once_then_none() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut pool = PortPool::new(PortRange {
            low: 50000,
            high: 50099,
        });
        let mut seen = std::collections::HashSet::new();
        while let Some(port) = pool.take_any(&mut rng) {
            assert!((50000..=50099).contains(&port));
            assert!(seen.insert(port));
        }
        assert_eq!(seen.len(), 100);
        pool.release(50042);
        assert_eq!(pool.take_any(&mut rng), Some(50042));
        assert_eq!(pool.take_any(&mut rng), None);
    }

    #[test]
    fn even_port_with_next_reserves_a_pair() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut pool = PortPool::new(PortRange {
            low: 40001,
            high: 40006,
        });
        assert!(pool.take(40002));
        let port = pool.take_even(&mut rng, true).unwrap();
        assert_eq!(port, 40004);
        assert!(!pool.is_free(40005));
        assert_eq!(pool.take_even(&mut rng, true), None);
        assert_eq!(pool.take_even(&mut rng, false), Some(40006));
    }
}
