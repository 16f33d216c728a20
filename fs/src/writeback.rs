//! The order in which dirty chunks were last written, across every file of a mount: when the
//! dirty budget needs room, the least recently written chunks are sealed and sent first, and
//! chunks no one wrote for a moment are sent too ([`crate::vault`]'s flusher).
//!
//! Each dirty chunk is entered once, under the sequence number of its latest write; a write
//! moves it to the end. A leaf lock: nothing else is taken while it is held.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use format::ids::{ChunkIndex, FileId};

/// How long a chunk may stay dirty without being written before the flusher sends it, unless
/// the mount says otherwise (`Limits::dirty_idle`).
pub const IDLE_DEFAULT: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct Order {
    next: u64,
    /// Sequence number -> the chunk and when it was written.
    by_seq: BTreeMap<u64, (FileId, ChunkIndex, Instant)>,
    /// The chunk -> its sequence number.
    seq_of: HashMap<(FileId, ChunkIndex), u64>,
}

/// A dirty chunk as the order sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub ino: FileId,
    pub index: ChunkIndex,
    pub written: Instant,
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
        order.next += 1;
        if let Some(old) = order.seq_of.insert((ino, index), seq) {
            order.by_seq.remove(&old);
        }
        order.by_seq.insert(seq, (ino, index, Instant::now()));
        seq
    }

    /// The chunk is clean again (committed, or dropped).
    pub fn clean(&self, ino: FileId, index: ChunkIndex) {
        let mut order = self.lock();
        if let Some(seq) = order.seq_of.remove(&(ino, index)) {
            order.by_seq.remove(&seq);
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
}
