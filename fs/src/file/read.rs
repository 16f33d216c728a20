//! Reading: committed chunks through the cache (a read inside one is a slice of its
//! plaintext), dirty ones from their buffers, and reading ahead of a sequential reader.

use std::sync::Arc;

use bytes::Bytes;
use format::ids::{ChunkIndex, Generation};

use super::{CHUNK, FileState, after, chunk_len, indexes, last_index, pieces};
use crate::error::FsError;
use crate::shared::{ChunkRead, Shared};

impl FileState {
    fn chunk_read(&self, index: ChunkIndex) -> Option<ChunkRead> {
        let generation = *self.generations.get(&index)?;
        Some(ChunkRead {
            ino: self.ino,
            index,
            generation,
            last: last_index(self.committed_size) == Some(index),
            len: chunk_len(self.committed_size, index),
            keys: self.keys.clone(),
        })
    }

    /// A committed chunk's plaintext; on an integrity failure, re-reads the file once (another
    /// client may have changed it) before giving up.
    pub(super) async fn committed(
        &mut self,
        shared: &Shared,
        index: ChunkIndex,
    ) -> Result<Option<Arc<crate::cache::CleanChunk>>, FsError> {
        let first = ChunkIndex::default();
        if let Some(small) = self.arrived.take()
            && !self.dirty.contains_key(&first)
            && let Some(read) = self.chunk_read(first)
            && read.generation == Generation(small.generation)
        {
            // Into the cache for this read; a chunk that fails its checks is fetched (and
            // reported) again below.
            let _ = shared.accept(&read, small).await;
        }
        let Some(read) = self.chunk_read(index) else {
            return Ok(None);
        };
        match shared.load(&read).await {
            Ok(chunk) => Ok(Some(chunk)),
            Err(FsError::Integrity { .. }) => {
                self.refresh(shared).await?;
                let Some(read) = self.chunk_read(index) else {
                    return Ok(None);
                };
                shared.load(&read).await.map(Some)
            }
            Err(other) => Err(other),
        }
    }

    pub async fn read(
        &mut self,
        shared: &Arc<Shared>,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, FsError> {
        let end = self.size.min(offset.saturating_add(u64::from(len)));
        if offset >= end {
            return Ok(Bytes::new());
        }
        // A read inside one committed chunk is a slice of its cached plaintext, not a copy.
        let first = ChunkIndex::of_offset(offset);
        let last = ChunkIndex::of_offset(end - 1);
        if last == first
            && !self.dirty.contains_key(&first)
            && let Some(chunk) = self.committed(shared, first).await?
        {
            let within = (offset % CHUNK) as usize;
            let n = (end - offset) as usize;
            if within + n <= chunk.plaintext.len() {
                self.prefetch(shared, first, first);
                return Ok(chunk.plaintext.slice(within..within + n));
            }
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (index, within, n) in pieces(offset, end) {
            let copied = if let Some(dirty) = self.dirty.get(&index) {
                copy_out(&mut out, &dirty.data, within, n)
            } else if let Some(chunk) = self.committed(shared, index).await? {
                copy_out(&mut out, &chunk.plaintext, within, n)
            } else {
                0
            };
            out.resize(out.len() + (n - copied), 0);
        }
        self.prefetch(shared, first, last);
        Ok(out.into())
    }

    /// Reads ahead of a sequential reader, in the background.
    fn prefetch(&mut self, shared: &Arc<Shared>, first: ChunkIndex, last: ChunkIndex) {
        let sequential = first == self.next_sequential
            || after(first) == self.next_sequential
            || first == ChunkIndex::default();
        self.next_sequential = after(last);
        if !sequential {
            self.prefetched_to = ChunkIndex::default();
            return;
        }
        // Each chunk is asked for once per sequential pass, not once per read request.
        let from = after(last).max(self.prefetched_to);
        let to = ChunkIndex(last.get() + shared.limits.prefetch_chunks);
        self.prefetched_to = after(to);
        for index in indexes(from, to) {
            if self.dirty.contains_key(&index) {
                continue;
            }
            let Some(read) = self.chunk_read(index) else {
                continue;
            };
            let background = shared.clone();
            shared.spawn(async move {
                if let Err(error) = background.load(&read).await {
                    tracing::debug!(%error, "prefetch failed; the reader will retry");
                }
            });
        }
    }
}

/// Copies `n` bytes from `source[within..]` (as far as it goes); returns how many.
fn copy_out(out: &mut Vec<u8>, source: &[u8], within: usize, n: usize) -> usize {
    let available = source.len().saturating_sub(within).min(n);
    if available > 0 {
        out.extend_from_slice(&source[within..within + available]);
    }
    available
}
