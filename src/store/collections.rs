//! Collections for the in-memory index that grow without stalling.
//!
//! The index is one mutex, and everything it holds grows with the jobs kept
//! for `--result-ttl`. A `HashMap` or `VecDeque` grows by moving all of its
//! entries to a table twice the size at once, and every request waits for
//! that under the lock. Measured here: a map of 300-byte jobs took 0.4 s to
//! grow at 230,000 jobs; a `VecDeque` of 24-byte entries 84 ms at a million
//! and 333 ms at four million (mostly page faults on the new table). These
//! grow by a bounded step instead.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};

/// Number of maps a [`ShardedMap`] is split into; a power of two.
const SHARDS: usize = 64;

/// A hash map split into [`SHARDS`] maps by a hash of the key, so that each
/// growth moves a 64th of the entries.
#[derive(Debug)]
pub struct ShardedMap<K, V> {
    shards: Vec<HashMap<K, V, foldhash::fast::RandomState>>,
    /// Picks the shard. Fixed (the shards' own hashers are random), so a
    /// shard's keys do not share the bits its map uses.
    pick: foldhash::fast::FixedState,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl<K, V> ShardedMap<K, V> {
    /// An empty map with room for `n` entries (spread evenly).
    pub fn with_capacity(n: usize) -> Self {
        let per_shard = n.div_ceil(SHARDS);
        ShardedMap {
            shards: (0..SHARDS)
                .map(|_| HashMap::with_capacity_and_hasher(per_shard, Default::default()))
                .collect(),
            pick: foldhash::fast::FixedState::default(),
        }
    }

    /// Every value, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    fn shard<Q: Hash + ?Sized>(&self, k: &Q) -> usize {
        (self.pick.hash_one(k) as usize) & (SHARDS - 1)
    }

    pub fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[self.shard(k)].get(k)
    }

    pub fn get_mut<Q>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let s = self.shard(k);
        self.shards[s].get_mut(k)
    }

    pub fn contains_key<Q>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[self.shard(k)].contains_key(k)
    }

    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        let s = self.shard(&k);
        self.shards[s].insert(k, v)
    }

    pub fn remove<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let s = self.shard(k);
        self.shards[s].remove(k)
    }
}

/// Entries per chunk of a [`ChunkedQueue`].
const CHUNK: usize = 4096;

/// A first-in first-out queue kept in chunks of [`CHUNK`] entries: growing
/// adds a chunk and never moves what is queued.
#[derive(Debug)]
pub struct ChunkedQueue<T> {
    chunks: VecDeque<VecDeque<T>>,
}

impl<T> Default for ChunkedQueue<T> {
    fn default() -> Self {
        ChunkedQueue {
            chunks: VecDeque::new(),
        }
    }
}

impl<T> ChunkedQueue<T> {
    pub fn push_back(&mut self, v: T) {
        match self.chunks.back_mut() {
            Some(last) if last.len() < CHUNK => last.push_back(v),
            _ => {
                let mut chunk = VecDeque::with_capacity(CHUNK);
                chunk.push_back(v);
                self.chunks.push_back(chunk);
            }
        }
    }

    pub fn front(&self) -> Option<&T> {
        self.chunks.front()?.front()
    }

    pub fn pop_front(&mut self) -> Option<T> {
        let first = self.chunks.front_mut()?;
        let v = first.pop_front();
        if first.is_empty() {
            self.chunks.pop_front();
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_map_is_a_map() {
        let mut m: ShardedMap<String, usize> = ShardedMap::with_capacity(10);
        for i in 0..1000 {
            assert_eq!(m.insert(format!("k{i}"), i), None);
        }
        assert_eq!(m.insert("k7".into(), 70), Some(7));
        assert_eq!(m.values().count(), 1000);
        assert!(
            m.shards.iter().all(|s| !s.is_empty()),
            "1000 keys reach every shard"
        );
        assert_eq!(m.get("k7"), Some(&70));
        *m.get_mut("k8").unwrap() += 1;
        assert_eq!(m.get("k8"), Some(&9));
        assert_eq!(m.remove("k9"), Some(9));
        assert!(!m.contains_key("k9") && m.contains_key("k10"));
        assert_eq!(
            m.values().sum::<usize>(),
            (0..1000).sum::<usize>() + 63 + 1 - 9
        );
    }

    #[test]
    fn chunked_queue_is_fifo_across_chunks() {
        let mut q = ChunkedQueue::default();
        assert!(q.front().is_none() && q.pop_front().is_none());
        let n = 3 * CHUNK + 5;
        for i in 0..n {
            q.push_back(i);
        }
        assert_eq!(q.chunks.len(), 4);
        assert_eq!(q.chunks.iter().map(VecDeque::len).sum::<usize>(), n);
        for i in 0..n - 1 {
            assert_eq!(q.front(), Some(&i));
            assert_eq!(q.pop_front(), Some(i));
        }
        q.push_back(n);
        assert_eq!(q.pop_front(), Some(n - 1));
        assert_eq!(q.pop_front(), Some(n));
        assert!(q.chunks.is_empty());
    }
}
