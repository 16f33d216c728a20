//! The plaintext chunk cache: memory only (plaintext never touches a disk), bounded in bytes,
//! least recently used out first.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use format::ids::{ChunkIndex, FileId, Generation};
use lru::LruCache;

/// A decrypted chunk as the server stored it.
#[derive(Debug)]
pub struct CleanChunk {
    pub generation: Generation,
    pub plaintext: Bytes,
}

#[derive(Debug)]
pub struct ChunkCache {
    entries: LruCache<(FileId, ChunkIndex), Arc<CleanChunk>>,
    /// The indexes cached of each file, so that forgetting a file does not scan the cache
    /// (every first open of a file does, and the cache holds thousands of small files' chunks).
    by_file: HashMap<FileId, BTreeSet<ChunkIndex>>,
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

    pub fn get(&mut self, ino: FileId, index: ChunkIndex) -> Option<Arc<CleanChunk>> {
        self.entries.get(&(ino, index)).cloned()
    }

    pub fn insert(&mut self, ino: FileId, index: ChunkIndex, chunk: Arc<CleanChunk>) {
        if chunk.plaintext.len() > self.bytes_max {
            return;
        }
        keystore::memory::exclude_from_dumps(&chunk.plaintext);
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

    pub fn remove(&mut self, ino: FileId, index: ChunkIndex) {
        if let Some(old) = self.entries.pop(&(ino, index)) {
            self.bytes -= old.plaintext.len();
            self.unindex(ino, index);
        }
    }

    fn unindex(&mut self, ino: FileId, index: ChunkIndex) {
        if let Some(indexes) = self.by_file.get_mut(&ino) {
            indexes.remove(&index);
            if indexes.is_empty() {
                self.by_file.remove(&ino);
            }
        }
    }

    /// Forgets every chunk of a file (it changed elsewhere).
    pub fn forget_file(&mut self, ino: FileId) {
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
            generation: Generation::FIRST,
            plaintext: vec![0; len].into(),
        })
    }

    #[test]
    fn bounded_in_bytes_lru_first() {
        let mut cache = ChunkCache::new(100);
        cache.insert(FileId(1), ChunkIndex(0), chunk(40));
        cache.insert(FileId(1), ChunkIndex(1), chunk(40));
        assert!(cache.get(FileId(1), ChunkIndex(0)).is_some()); // 0 is now the most recently used
        cache.insert(FileId(1), ChunkIndex(2), chunk(40));
        assert!(
            cache.get(FileId(1), ChunkIndex(1)).is_none(),
            "least recently used went first"
        );
        assert!(cache.bytes() <= 100);
        cache.insert(FileId(1), ChunkIndex(3), chunk(1000));
        assert!(
            cache.get(FileId(1), ChunkIndex(3)).is_none(),
            "larger than the whole cache: not kept"
        );
        cache.forget_file(FileId(1));
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn forgetting_a_file_drops_its_chunks_only() {
        let mut cache = ChunkCache::new(100);
        for (ino, index) in [(1, 0), (2, 0), (1, 5), (3, 1)] {
            cache.insert(FileId(ino), ChunkIndex(index), chunk(10));
        }
        cache.insert(FileId(1), ChunkIndex(5), chunk(20)); // replaced, still one entry
        cache.remove(FileId(3), ChunkIndex(1));
        cache.forget_file(FileId(1));
        assert!(
            cache.get(FileId(1), ChunkIndex(0)).is_none()
                && cache.get(FileId(1), ChunkIndex(5)).is_none()
        );
        assert!(cache.get(FileId(2), ChunkIndex(0)).is_some());
        assert_eq!(cache.bytes(), 10);
        // Evicted chunks leave the index too: forgetting their file later finds nothing.
        for index in 0..20 {
            cache.insert(FileId(4), ChunkIndex(index), chunk(10));
        }
        assert!(cache.get(FileId(2), ChunkIndex(0)).is_none(), "evicted");
        cache.forget_file(FileId(2));
        cache.forget_file(FileId(4));
        assert_eq!(cache.bytes(), 0);
        assert!(cache.by_file.is_empty());
    }
}
