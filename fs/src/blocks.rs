//! Random reads of chunks larger than what the plaintext cache holds.
//!
//! A chunk is authenticated by one tag over its 8 MiB, so the first read of a chunk fetches
//! and opens all of it. When that read was not part of a sequential pass, the client keeps
//! what it needs to come back for a few bytes later without fetching and opening 8 MiB again
//! ([`crypto::ChunkBlocks`]: the digest of each 4 KiB block of the ciphertext, 16 bytes each)
//! and, from a storaged on this machine, the chunk file's read-only descriptor. A later read
//! whose plaintext has left the cache then reads only the 4 KiB blocks it needs from that
//! descriptor, checks each against its digest and decrypts it. A block that does not match
//! (the chunk file changed under the descriptor: a storage administrator's doing, or a chunk
//! file the server reused after the file changed) drops what was kept, and the read fetches
//! the chunk whole, through every check, as the first time.
//!
//! Bounded in bytes (the digests) and in descriptors; least recently used out first.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use crypto::{ChunkBlocks, ChunkCipher};
use format::ids::{ChunkIndex, FileId, Generation};
use lru::LruCache;

/// Chunks whose blocks are kept at most: each holds a descriptor open.
pub const KEPT_CHUNKS_MAX: usize = 512;

/// What is kept of one chunk.
#[derive(Debug)]
pub struct Kept {
    pub generation: Generation,
    pub blocks: ChunkBlocks,
    pub file: File,
    /// The commitment of the key the chunk was opened with: the key its blocks decrypt under.
    pub commitment: [u8; format::envelope::COMMITMENT_BYTES],
}

#[derive(Debug)]
struct Entries {
    lru: LruCache<(FileId, ChunkIndex), Arc<Kept>>,
    bytes: usize,
}

/// The chunks kept for random reads.
#[derive(Debug)]
pub struct KeptBlocks {
    entries: Mutex<Entries>,
    bytes_max: usize,
}

impl KeptBlocks {
    /// Keeps digests of at most `bytes_max` bytes (32 KiB per full chunk).
    pub fn new(bytes_max: usize) -> KeptBlocks {
        KeptBlocks {
            entries: Mutex::new(Entries {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            bytes_max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().expect("kept blocks poisoned")
    }

    pub fn insert(&self, ino: FileId, index: ChunkIndex, kept: Kept) {
        let size = kept.blocks.bytes();
        if size > self.bytes_max {
            return;
        }
        let mut entries = self.lock();
        entries.bytes += size;
        if let Some(old) = entries.lru.put((ino, index), Arc::new(kept)) {
            entries.bytes -= old.blocks.bytes();
        }
        while entries.bytes > self.bytes_max || entries.lru.len() > KEPT_CHUNKS_MAX {
            let Some((_, evicted)) = entries.lru.pop_lru() else {
                break;
            };
            entries.bytes -= evicted.blocks.bytes();
        }
    }

    /// What is kept of a chunk at `generation` holding `len` bytes, if anything.
    pub fn get(
        &self,
        ino: FileId,
        index: ChunkIndex,
        generation: Generation,
        len: usize,
    ) -> Option<Arc<Kept>> {
        let mut entries = self.lock();
        let kept = entries.lru.get(&(ino, index))?.clone();
        (kept.generation == generation && kept.blocks.len() == len).then_some(kept)
    }

    pub fn remove(&self, ino: FileId, index: ChunkIndex) {
        let mut entries = self.lock();
        if let Some(old) = entries.lru.pop(&(ino, index)) {
            entries.bytes -= old.blocks.bytes();
        }
    }

    /// Forgets every chunk of a file (it was removed or cut here), so that no descriptor holds
    /// its chunk files' space on the server.
    pub fn forget_file(&self, ino: FileId) {
        let mut entries = self.lock();
        let gone: Vec<(FileId, ChunkIndex)> = entries
            .lru
            .iter()
            .filter(|((of, _), _)| *of == ino)
            .map(|(key, _)| *key)
            .collect();
        for key in gone {
            if let Some(old) = entries.lru.pop(&key) {
                entries.bytes -= old.blocks.bytes();
            }
        }
    }

    /// Chunks kept now.
    pub fn len(&self) -> usize {
        self.lock().lru.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Kept {
    /// Plaintext bytes `start..end` of the chunk, read from its descriptor and checked block
    /// by block. Blocks the calling thread for one small read.
    pub fn read(&self, cipher: &ChunkCipher, start: usize, end: usize) -> Result<Bytes, String> {
        let range = self
            .blocks
            .sealed_range(start, end)
            .map_err(|e| e.to_string())?;
        let mut sealed = vec![0u8; range.len()];
        self.file
            .read_exact_at(&mut sealed, range.start as u64)
            .map_err(|e| format!("reading the chunk file: {e}"))?;
        self.blocks
            .open_range(cipher, start, end, &sealed)
            .map(Bytes::from)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto::{ChunkContext, DataKey};
    use format::ids::VaultId;
    use std::io::Write;

    fn sealed_chunk(cipher: &ChunkCipher, generation: u64, plaintext: &[u8]) -> (Vec<u8>, Kept) {
        let context = ChunkContext {
            vault: VaultId([1; 16]),
            file: FileId(9),
            index: ChunkIndex(0),
            generation: Generation(generation),
            last: true,
        };
        let sealed = crypto::seal(cipher, &context, plaintext).expect("seal");
        let mut opened = sealed.clone();
        let (_, blocks) =
            crypto::open_in_place_keeping_blocks(cipher, &context, &mut opened).expect("open");
        let mut file = tempfile::tempfile().expect("a temporary file");
        file.write_all(&sealed).expect("write");
        let kept = Kept {
            generation: Generation(generation),
            blocks,
            file,
            commitment: *cipher.commitment(),
        };
        (sealed, kept)
    }

    #[test]
    fn kept_chunks_read_back_and_notice_a_changed_file() {
        let cipher = DataKey::generate().chunk_cipher();
        let plaintext: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let (_, kept) = sealed_chunk(&cipher, 3, &plaintext);
        let got = kept.read(&cipher, 9_000, 13_000).expect("read back");
        assert_eq!(&got[..], &plaintext[9_000..13_000]);
        kept.file.write_all_at(&[0xff], 64 + 8_200).expect("tamper");
        assert!(kept.read(&cipher, 9_000, 9_001).is_err(), "block 2 changed");
        assert!(kept.read(&cipher, 0, 10).is_ok(), "block 0 did not");
    }

    #[test]
    fn bounded_and_matched_by_generation() {
        let cipher = DataKey::generate().chunk_cipher();
        let (_, one) = sealed_chunk(&cipher, 3, &[5; 10_000]);
        let per_chunk = one.blocks.bytes();
        let store = KeptBlocks::new(2 * per_chunk);
        store.insert(FileId(1), ChunkIndex(0), one);
        assert!(
            store
                .get(FileId(1), ChunkIndex(0), Generation(3), 10_000)
                .is_some()
        );
        assert!(
            store
                .get(FileId(1), ChunkIndex(0), Generation(4), 10_000)
                .is_none()
        );
        assert!(
            store
                .get(FileId(1), ChunkIndex(0), Generation(3), 9_999)
                .is_none()
        );
        for index in 1..4 {
            let (_, kept) = sealed_chunk(&cipher, 3, &[5; 10_000]);
            store.insert(FileId(1), ChunkIndex(index), kept);
        }
        assert_eq!(store.len(), 2, "bounded in bytes");
        store.forget_file(FileId(1));
        assert!(store.is_empty());
    }
}
