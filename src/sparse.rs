//! Maps that give memory back. A `HashMap` keeps the capacity of its
//! busiest moment for ever: after ten thousand sessions or allocations have
//! come and gone, their slots would stay allocated for the daemon's life.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// Below this capacity a map is not worth shrinking.
const SMALLEST_SHRUNK: usize = 64;

/// Shrinks `map` to twice its length once it is less than a quarter full.
/// Called after a removal; a shrink rehashes `len` entries, and before the
/// next one at least as many removals happen, so it costs O(1) per removal.
pub(crate) fn shrink_if_sparse<K: Eq + Hash, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) {
    if map.capacity() > SMALLEST_SHRUNK && map.len() * 4 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_emptied_after_a_peak_gives_its_capacity_back() {
        let mut map: HashMap<u32, [u8; 64]> = (0..10_000).map(|n| (n, [0; 64])).collect();
        let peak = map.capacity();
        for n in 0..10_000 {
            map.remove(&n);
            shrink_if_sparse(&mut map);
        }
        assert!(
            map.capacity() <= SMALLEST_SHRUNK * 2,
            "{} of {peak}",
            map.capacity()
        );
    }

    #[test]
    fn a_map_in_steady_use_is_not_shrunk() {
        let mut map: HashMap<u32, u32> = (0..1_000).map(|n| (n, n)).collect();
        let capacity = map.capacity();
        for n in 0..500 {
            map.remove(&n);
            shrink_if_sparse(&mut map);
        }
        // capacity() counts tombstones out, so it dips a little; a shrink
        // would have halved it.
        assert!(
            map.capacity() * 10 >= capacity * 9,
            "{} of {capacity}",
            map.capacity()
        );
    }
}
