//! The plaintext chunk cache: memory only (plaintext never touches a disk), bounded in bytes,
//! least recently used out first.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use lru::LruCache;

/// A decrypted chunk as the server stored it.
#[derive(Debug)]
pub struct CleanChunk {
    pub generation: u64,
    pub plaintext: Bytes,
}

#[derive(Debug)]
pub struct ChunkCache {
    entries: LruCache<(u64, u64), Arc<CleanChunk>>,
    /// The indexes cached of each file, so that forgetting a file does not scan the cache
    /// (every first open of a file does, and the cache holds thousands of small files' chunks).
    by_file: HashMap<u64, BTreeSet<u64>>,
    bytes: usize,
    bytes_max: usize,
}

impl ChunkCache {
    pub fn new(bytes_max: usize) -> ChunkCache {
        ChunkCache {
            entries: LruCache::unbounded(),
            by_file: HashMap::new(),
            bytes: 0,
            bytes_max,
        }
    }

    pub fn get(&mut self, ino: u64, index: u64) -> Option<Arc<CleanChunk>> {
        self.entries.get(&(ino, index)).cloned()
    }

    pub fn insert(&mut self, ino: u64, index: u64, chunk: Arc<CleanChunk>) {
        if chunk.plaintext.len() > self.bytes_max {
            return;
        }
        self.bytes += chunk.plaintext.len();
        match self.entries.put((ino, index), chunk) {
            Some(old) => self.bytes -= old.plaintext.len(),
            None => {
                self.by_file.entry(ino).or_default().insert(index);
            }
        }
        while self.bytes > self.bytes_max {
            let Some(((ino, index), evicted)) = self.entries.pop_lru() else {
                break;
            };
            self.bytes -= evicted.plaintext.len();
            self.unindex(ino, index);
        }
    }

    pub fn remove(&mut self, ino: u64, index: u64) {
        if let Some(old) = self.entries.pop(&(ino, index)) {
            self.bytes -= old.plaintext.len();
            self.unindex(ino, index);
        }
    }

    fn unindex(&mut self, ino: u64, index: u64) {
        if let Some(indexes) = self.by_file.get_mut(&ino) {
            indexes.remove(&index);
            if indexes.is_empty() {
                self.by_file.remove(&ino);
            }
        }
    }

    /// Forgets every chunk of a file (it changed elsewhere).
    pub fn forget_file(&mut self, ino: u64) {
        for index in self.by_file.remove(&ino).unwrap_or_default() {
            if let Some(old) = self.entries.pop(&(ino, index)) {
                self.bytes -= old.plaintext.len();
            }
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.by_file.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(len: usize) -> Arc<CleanChunk> {
        Arc::new(CleanChunk {
            generation: 1,
            plaintext: vec![0; len].into(),
        })
    }

    #[test]
    fn bounded_in_bytes_lru_first() {
        let mut cache = ChunkCache::new(100);
        cache.insert(1, 0, chunk(40));
        cache.insert(1, 1, chunk(40));
        assert!(cache.get(1, 0).is_some()); // 0 is now the most recently used
        cache.insert(1, 2, chunk(40));
        assert!(cache.get(1, 1).is_none(), "least recently used went first");
        assert!(cache.bytes() <= 100);
        cache.insert(1, 3, chunk(1000));
        assert!(
            cache.get(1, 3).is_none(),
            "larger than the whole cache: not kept"
        );
        cache.forget_file(1);
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn forgetting_a_file_drops_its_chunks_only() {
        let mut cache = ChunkCache::new(100);
        for (ino, index) in [(1, 0), (2, 0), (1, 5), (3, 1)] {
            cache.insert(ino, index, chunk(10));
        }
        cache.insert(1, 5, chunk(20)); // replaced, still one entry
        cache.remove(3, 1);
        cache.forget_file(1);
        assert!(cache.get(1, 0).is_none() && cache.get(1, 5).is_none());
        assert!(cache.get(2, 0).is_some());
        assert_eq!(cache.bytes(), 10);
        // Evicted chunks leave the index too: forgetting their file later finds nothing.
        for index in 0..20 {
            cache.insert(4, index, chunk(10));
        }
        assert!(cache.get(2, 0).is_none(), "evicted");
        cache.forget_file(2);
        cache.forget_file(4);
        assert_eq!(cache.bytes(), 0);
        assert!(cache.by_file.is_empty());
    }
}
