//! Reading: committed chunks through the cache (a read inside one is a slice of its
//! plaintext), dirty ones from their buffers or their written runs over the committed bytes,
//! reading ahead of a sequential reader, and a random reader's blocks read back without
//! opening their chunk whole again (see [`crate::blocks`]).

use std::sync::Arc;

use bytes::Bytes;
use format::ids::{ChunkIndex, Generation};

use super::content::Content;
use super::{FileState, after, chunk_len, indexes, last_index, pieces};
use crate::error::FsError;
use crate::shared::{ChunkRead, Shared};

/// A read that starts this close to where the last one ended continues a sequential pass
/// (the kernel's read-ahead requests may come a little out of order).
const SEQUENTIAL_SLACK_BYTES: u64 = 2 << 20;

/// Reads of a file, each with the newer manifest another writer committed, before a chunk the
/// server keeps offering in a generation newer than the manifest's is refused.
const SUPERSEDED_READS_MAX: usize = 3;

impl FileState {
    /// What reading committed chunk `index` expects; `keep_blocks` for a random reader.
    fn chunk_read(&self, index: ChunkIndex, keep_blocks: bool) -> Option<ChunkRead> {
        let generation = *self.generations.get(&index)?;
        Some(ChunkRead {
            ino: self.ino,
            index,
            generation,
            last: last_index(self.committed_size) == Some(index),
            len: chunk_len(self.committed_size, index),
            keys: self.keys.clone(),
            keep_blocks,
        })
    }

    /// A committed chunk's plaintext. On an integrity failure, or a newer generation than the
    /// file's checked manifest names, re-reads the file and its manifest (another client may
    /// have changed it) and loads what that manifest names; a generation that no checked
    /// manifest names is refused (EIO and a log line).
    pub(super) async fn committed(
        &mut self,
        shared: &Shared,
        index: ChunkIndex,
        keep_blocks: bool,
    ) -> Result<Option<Arc<crate::cache::CleanChunk>>, FsError> {
        self.take_arrived(shared).await;
        let Some(mut read) = self.chunk_read(index, keep_blocks) else {
            return Ok(None);
        };
        let mut reads = 1;
        loop {
            let offered = match shared.load(&read).await {
                Ok(chunk) => return Ok(Some(chunk)),
                Err(FsError::Integrity { .. }) if reads == 1 => None,
                Err(FsError::Superseded { offered, .. }) => Some(offered),
                Err(other) => return Err(other),
            };
            self.refresh(shared).await?;
            let Some(now) = self.chunk_read(index, keep_blocks) else {
                return Ok(None);
            };
            if let Some(offered) = offered
                && (now.generation == read.generation || reads >= SUPERSEDED_READS_MAX)
            {
                // The file's manifest still names the generation the server would not serve.
                let reason = format!(
                    "the server offers generation {offered}, but the file's manifest names {}",
                    now.generation
                );
                return Err(crate::manifest::refused(
                    &shared.name_of(self.ino),
                    self.ino,
                    reason,
                ));
            }
            (read, reads) = (now, reads + 1);
        }
    }

    /// A small file's only chunk that came with the `Open` reply, into the cache.
    async fn take_arrived(&mut self, shared: &Shared) {
        let first = ChunkIndex::default();
        if let Some(small) = self.arrived.take()
            && !self.dirty.contains_key(&first)
            && let Some(read) = self.chunk_read(first, false)
            && read.generation == Generation(small.generation)
        {
            // Into the cache for this read; a chunk that fails its checks is fetched (and
            // reported) again when it is read.
            let _ = shared.accept(&read, small).await;
        }
    }

    /// Bytes `start..end` of committed chunk `index`, as far as it holds them (nothing for a
    /// hole): a slice of the cached plaintext, blocks read back for a `random` reader, or the
    /// chunk loaded whole.
    async fn committed_range(
        &mut self,
        shared: &Shared,
        index: ChunkIndex,
        start: usize,
        end: usize,
        random: bool,
    ) -> Result<Bytes, FsError> {
        self.take_arrived(shared).await;
        let Some(read) = self.chunk_read(index, random) else {
            return Ok(Bytes::new());
        };
        let end = end.min(read.len);
        if start >= end {
            return Ok(Bytes::new());
        }
        if let Some(chunk) = shared.cached_chunk(&read) {
            return Ok(slice(&chunk.plaintext, start, end));
        }
        if random && let Some(bytes) = shared.read_kept(&read, start, end) {
            return Ok(bytes);
        }
        Ok(self
            .committed(shared, index, random)
            .await?
            .map(|chunk| slice(&chunk.plaintext, start, end))
            .unwrap_or_default())
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
        let sequential = offset.abs_diff(self.read_end) <= SEQUENTIAL_SLACK_BYTES;
        // Read ahead only on the second sequential read in a row: a random reader lands near
        // its last read now and then, and a pass of read-ahead would cost it 32 MiB.
        let streak = sequential && self.sequential_reads > 0;
        self.sequential_reads = if sequential {
            self.sequential_reads.saturating_add(1)
        } else {
            0
        };
        self.read_end = end;
        let mut parts = Vec::with_capacity(2);
        for (index, within, n) in pieces(offset, end) {
            parts.push(self.piece(shared, index, within, n, !sequential).await?);
        }
        if streak {
            self.prefetch(shared, ChunkIndex::of_offset(end - 1));
        } else if !sequential {
            self.prefetched_to = ChunkIndex::default();
        }
        // A read inside one committed chunk is a slice of its cached plaintext, not a copy.
        if parts.len() == 1 {
            return Ok(parts.pop().expect("one part"));
        }
        Ok(parts.concat().into())
    }

    /// `n` bytes of chunk `index` from `within`, zeros where nothing is written or stored.
    async fn piece(
        &mut self,
        shared: &Shared,
        index: ChunkIndex,
        within: usize,
        n: usize,
        random: bool,
    ) -> Result<Bytes, FsError> {
        let content = self.dirty.get(&index).map(|d| d.content.clone());
        let bytes = match content {
            Some(Content::Full(data)) => {
                let to = data.len().min(within + n);
                Bytes::copy_from_slice(data.get(within..to).unwrap_or_default())
            }
            Some(Content::Sparse(extents)) => {
                let committed = self
                    .committed_range(shared, index, within, within + n, random)
                    .await?;
                let mut out = vec![0u8; n];
                out[..committed.len()].copy_from_slice(&committed);
                extents.overlay(within, &mut out);
                return Ok(out.into());
            }
            None => {
                self.committed_range(shared, index, within, within + n, random)
                    .await?
            }
        };
        if bytes.len() == n {
            return Ok(bytes);
        }
        let mut padded = Vec::with_capacity(n);
        padded.extend_from_slice(&bytes);
        padded.resize(n, 0);
        Ok(padded.into())
    }

    /// Reads ahead of a sequential reader, in the background.
    fn prefetch(&mut self, shared: &Arc<Shared>, last: ChunkIndex) {
        // Each chunk is asked for once per sequential pass, not once per read request.
        let from = after(last).max(self.prefetched_to);
        let to = ChunkIndex(last.get() + shared.limits.prefetch_chunks);
        self.prefetched_to = after(to);
        for index in indexes(from, to) {
            if self.dirty.contains_key(&index) {
                continue;
            }
            let Some(read) = self.chunk_read(index, false) else {
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

/// `start..end` of `plaintext`, as far as it goes.
fn slice(plaintext: &Bytes, start: usize, end: usize) -> Bytes {
    let end = end.min(plaintext.len());
    if start >= end {
        return Bytes::new();
    }
    plaintext.slice(start..end)
}
