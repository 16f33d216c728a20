//! The order in which dirty chunks were last written, across every file of a mount: when the
//! dirty budget needs room, the least recently written chunks are sealed and sent first, and
//! chunks no one wrote for a moment are sent too ([`crate::vault`]'s flusher).
//!
//! Each dirty chunk is entered once, under the sequence number of its latest write; a write
//! moves it to the end. Idleness is the file's: a chunk is idle once its file was not written
//! for the idle time (a random writer keeps its chunks in memory while it writes, instead of
//! sealing 8 MiB behind every few writes), or once the chunk itself was not written for
//! [`AGE_MAX`]. A leaf lock: nothing else is taken while it is held.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use format::ids::{ChunkIndex, FileId};

/// How long a chunk may stay dirty without being written before the flusher sends it, unless
/// the mount says otherwise (`Limits::dirty_idle`).
pub const IDLE_DEFAULT: Duration = Duration::from_secs(2);
/// A chunk no one wrote for this long is idle even while its file is still being written
/// (as the kernel's own `dirty_expire_centisecs`).
pub const AGE_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct Order {
    next: u64,
    /// Sequence number -> the chunk and when it was written.
    by_seq: BTreeMap<u64, (FileId, ChunkIndex, Instant)>,
    /// The chunk -> its sequence number.
    seq_of: HashMap<(FileId, ChunkIndex), u64>,
    /// A file with dirty chunks -> when it was last written and how many it has.
    files: HashMap<FileId, (Instant, usize)>,
}

/// A dirty chunk as the order sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub ino: FileId,
    pub index: ChunkIndex,
    pub written: Instant,
    /// When the chunk's file was last written.
    pub file_written: Instant,
}

impl Entry {
    /// Whether the chunk is idle at `now` (see the module's comment).
    pub fn idle(&self, now: Instant, idle: Duration) -> bool {
        now.duration_since(self.file_written) >= idle || now.duration_since(self.written) >= AGE_MAX
    }
}

#[derive(Debug, Default)]
pub struct Writeback {
    order: Mutex<Order>,
    /// Wakes the flusher: the dirty budget needs room.
    pub room_needed: tokio::sync::Notify,
    /// Wakes writers waiting for room: some was made.
    pub room_made: tokio::sync::Notify,
}

impl Writeback {
    fn lock(&self) -> std::sync::MutexGuard<'_, Order> {
        self.order.lock().expect("writeback order poisoned")
    }

    /// Chunk `index` of `ino` was written just now; returns its sequence number.
    pub fn written(&self, ino: FileId, index: ChunkIndex) -> u64 {
        let mut order = self.lock();
        let seq = order.next;
        let now = Instant::now();
        order.next += 1;
        let new = match order.seq_of.insert((ino, index), seq) {
            Some(old) => {
                order.by_seq.remove(&old);
                0
            }
            None => 1,
        };
        order.by_seq.insert(seq, (ino, index, now));
        let file = order.files.entry(ino).or_insert((now, 0));
        *file = (now, file.1 + new);
        seq
    }

    /// The chunk is clean again (committed, or dropped).
    pub fn clean(&self, ino: FileId, index: ChunkIndex) {
        let mut order = self.lock();
        if let Some(seq) = order.seq_of.remove(&(ino, index)) {
            order.by_seq.remove(&seq);
            if let Some(file) = order.files.get_mut(&ino) {
                file.1 -= 1;
                if file.1 == 0 {
                    order.files.remove(&ino);
                }
            }
        }
    }

    /// The least recently written dirty chunks, oldest first, at most `max`.
    pub fn oldest(&self, max: usize) -> Vec<Entry> {
        let order = self.lock();
        order
            .by_seq
            .iter()
            .take(max)
            .map(|(&seq, &(ino, index, written))| Entry {
                seq,
                ino,
                index,
                written,
                file_written: order.files.get(&ino).map_or(written, |f| f.0),
            })
            .collect()
    }

    /// Dirty chunks entered.
    pub fn len(&self) -> usize {
        self.lock().by_seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_written_first() {
        let writeback = Writeback::default();
        let (a, b) = (FileId(2), FileId(3));
        writeback.written(a, ChunkIndex(0));
        writeback.written(b, ChunkIndex(5));
        writeback.written(a, ChunkIndex(1));
        writeback.written(a, ChunkIndex(0)); // again: now the most recent
        let order: Vec<_> = writeback
            .oldest(10)
            .iter()
            .map(|e| (e.ino, e.index))
            .collect();
        assert_eq!(
            order,
            vec![(b, ChunkIndex(5)), (a, ChunkIndex(1)), (a, ChunkIndex(0))]
        );
        writeback.clean(b, ChunkIndex(5));
        writeback.clean(b, ChunkIndex(5));
        assert_eq!(writeback.len(), 2);
        assert_eq!(writeback.oldest(1)[0].index, ChunkIndex(1));
    }

    #[test]
    fn a_chunk_is_idle_when_its_file_is() {
        let writeback = Writeback::default();
        let (a, b) = (FileId(2), FileId(3));
        writeback.written(a, ChunkIndex(0));
        writeback.written(b, ChunkIndex(0));
        writeback.written(a, ChunkIndex(1));
        let idle = Duration::from_secs(2);
        let entries = writeback.oldest(10);
        let (a0, b0, a1) = (entries[0], entries[1], entries[2]);
        assert_eq!((a0.ino, b0.ino, a1.ino), (a, b, a));
        // a's chunk 0 was written first, but a was written since: idle only when a is.
        assert_eq!(a0.file_written, a1.written);
        assert!(!a0.idle(a1.written + idle - Duration::from_millis(1), idle));
        assert!(a0.idle(a1.written + idle, idle));
        assert!(b0.idle(b0.written + idle, idle));
        // A chunk not written for AGE_MAX is idle though its file is still being written.
        assert!(entries[0].idle(entries[0].written + AGE_MAX, AGE_MAX * 2));
        writeback.clean(a, ChunkIndex(0));
        writeback.clean(a, ChunkIndex(1));
        writeback.clean(a, ChunkIndex(1));
        assert_eq!(writeback.lock().files.len(), 1);
    }
}
