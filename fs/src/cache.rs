//! The plaintext chunk cache: memory only (plaintext never touches a disk), bounded in bytes,
//! least recently used out first.

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
    bytes: usize,
    bytes_max: usize,
}

impl ChunkCache {
    pub fn new(bytes_max: usize) -> ChunkCache {
        ChunkCache {
            entries: LruCache::unbounded(),
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
        if let Some(old) = self.entries.put((ino, index), chunk) {
            self.bytes -= old.plaintext.len();
        }
        while self.bytes > self.bytes_max {
            let Some((_, evicted)) = self.entries.pop_lru() else {
                break;
            };
            self.bytes -= evicted.plaintext.len();
        }
    }

    pub fn remove(&mut self, ino: u64, index: u64) {
        if let Some(old) = self.entries.pop(&(ino, index)) {
            self.bytes -= old.plaintext.len();
        }
    }

    /// Forgets every chunk of a file (it changed elsewhere).
    pub fn forget_file(&mut self, ino: u64) {
        let keys: Vec<_> = self
            .entries
            .iter()
            .map(|(k, _)| *k)
            .filter(|(i, _)| *i == ino)
            .collect();
        for (ino, index) in keys {
            self.remove(ino, index);
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn clear(&mut self) {
        self.entries.clear();
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
}
