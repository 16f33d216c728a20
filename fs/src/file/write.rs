//! Writing: dirty chunk buffers, full chunks uploaded behind the writer, and truncation.

use std::sync::Arc;

use crypto::ChunkContext;
use format::ids::{ChunkIndex, Generation};
use format::limits::{CHUNK_BYTES, FILE_BYTES_MAX};
use proto::ErrorKind;
use proto::v1::{Attr, GetAttrRequest, PutChunkRequest};

use super::content::{Content, Source};
use super::{
    CHUNK, Dirty, FileState, Ranges, Upload, chunk_len, end_index, indexes, last_index,
    next_generation, pieces,
};
use crate::error::FsError;
use crate::shared::{ChunkRead, Shared, crypto_work};

/// Writes of this size or more reserve a whole chunk's buffer at once.
const LARGE_WRITE_BYTES: usize = 256 * 1024;

impl FileState {
    /// Makes chunk `index` dirty: a whole chunk's buffer when the caller overwrites all of it
    /// or nothing is committed there, else runs written over the committed chunk, which is
    /// not loaded (see `content`).
    pub(super) fn make_dirty(&mut self, index: ChunkIndex, whole: bool) {
        if self.dirty.contains_key(&index) {
            return;
        }
        let base = self.generations.get(&index).copied().unwrap_or_default();
        let dirty = if whole || base == Generation(0) {
            Dirty::full(Vec::new(), base)
        } else {
            Dirty::sparse(base)
        };
        self.dirty.insert(index, dirty);
    }

    /// Writes `data` at `offset`. Returns the file's attributes when making room for it in
    /// the dirty budget committed something.
    pub async fn write(
        &mut self,
        shared: &Arc<Shared>,
        offset: u64,
        data: &[u8],
    ) -> Result<Option<Attr>, FsError> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= FILE_BYTES_MAX)
            .ok_or_else(|| {
                FsError::local(
                    ErrorKind::TooLarge,
                    "write past the largest file the format holds",
                )
            })?;
        if offset == end {
            return Ok(None);
        }
        let sequential = offset == self.write_end;
        for (index, within, n) in pieces(offset, end) {
            self.make_dirty(index, within == 0 && n == CHUNK_BYTES);
            let committed_len = chunk_len(self.committed_size, index);
            let from = (index.start() + within as u64 - offset) as usize;
            let dirty = self.dirty.get_mut(&index).expect("made dirty above");
            let before = dirty.bytes();
            write_into(dirty, within, &data[from..from + n], committed_len);
            shared.add_dirty(dirty.bytes());
            shared.sub_dirty(before);
            dirty.upload = None;
            shared.writeback.written(self.ino, index);
        }
        self.size = self.size.max(end);
        self.write_end = end;
        self.forget_kept_mtime();
        if self.life.pending().is_some() && self.size > CHUNK {
            // Full chunks upload before the commit: the file must exist for them.
            self.materialize(shared, false).await?;
        }
        if sequential {
            self.write_behind(shared, offset, end);
        }
        let written = (
            ChunkIndex::of_offset(offset),
            ChunkIndex::of_offset(end - 1),
        );
        self.make_room(shared, written).await
    }

    /// Starts sealing and sending the chunks a sequential writer has moved past (its write
    /// `offset..end` went on into a later chunk), unless they are the file's last.
    fn write_behind(&mut self, shared: &Arc<Shared>, offset: u64, end: u64) {
        let Some(file_last) = last_index(self.size) else {
            return;
        };
        let now_in = ChunkIndex::of_offset(end - 1);
        let from = ChunkIndex(ChunkIndex::of_offset(offset).get().saturating_sub(1));
        for index in indexes(from, now_in) {
            if index >= now_in || index >= file_last {
                break;
            }
            let ready = self.dirty.get(&index).is_some_and(|d| {
                d.upload.is_none() && d.full_len().is_none_or(|len| len == CHUNK_BYTES)
            });
            if ready {
                self.start_upload(shared, index, false, CHUNK_BYTES);
            }
        }
    }

    /// What the committed chunk `base` at `index` is read as (none for a hole).
    pub(super) fn base_read(&self, index: ChunkIndex, base: Generation) -> Option<ChunkRead> {
        (base != Generation(0)).then(|| ChunkRead {
            ino: self.ino,
            index,
            generation: base,
            last: last_index(self.committed_size) == Some(index),
            len: chunk_len(self.committed_size, index),
            keys: self.keys.clone(),
            keep_blocks: false,
        })
    }

    /// What sealing dirty chunk `index` starts from.
    pub(super) fn source(&self, index: ChunkIndex) -> Source {
        let dirty = &self.dirty[&index];
        match &dirty.content {
            Content::Full(data) => Source::Full(data.clone()),
            Content::Sparse(extents) => Source::Sparse {
                base: self.base_read(index, dirty.base),
                extents: extents.clone(),
            },
        }
    }

    pub(super) fn start_upload(
        &mut self,
        shared: &Arc<Shared>,
        index: ChunkIndex,
        last: bool,
        len: usize,
    ) {
        let ino = self.ino;
        let vault = shared.keys.vault();
        let keys = self.keys.clone();
        let source = self.source(index);
        let dirty = self.dirty.get_mut(&index).expect("uploading a dirty chunk");
        let generation = next_generation(dirty.base, dirty.last_generation);
        dirty.last_generation = generation;
        let background = shared.clone();
        let task = shared.spawn(async move {
            let shared = background;
            let _slot = shared
                .uploads
                .acquire()
                .await
                .expect("upload semaphore closed");
            let data = source.bytes(&shared, len).await?;
            let context = ChunkContext {
                vault,
                file: ino,
                index,
                generation,
                last,
            };
            let sealed = crypto_work(len, move || crypto::seal(keys.newest(), &context, &data))
                .await
                .map_err(|e| FsError::local(ErrorKind::Internal, e.to_string()))?;
            shared
                .remote
                .send(
                    "put_chunk",
                    PutChunkRequest {
                        ino: ino.0,
                        index: index.get(),
                        data: bytes::Bytes::from(sealed),
                        ..Default::default()
                    },
                    |mut api, r| async move { api.put_chunk(r).await },
                )
                .await
                .map(drop)
        });
        dirty.upload = Some(Upload {
            generation,
            last,
            len,
            task: Some(task),
        });
    }

    /// Sets the size: drops what lies past a smaller one, reads zeros up to a larger one, and
    /// commits at once (a truncation is visible to others right away).
    pub async fn truncate(&mut self, shared: &Arc<Shared>, size: u64) -> Result<Attr, FsError> {
        if size > FILE_BYTES_MAX {
            return Err(FsError::local(
                ErrorKind::TooLarge,
                "size past the largest file the format holds",
            ));
        }
        self.forget_kept_mtime();
        if size < self.size {
            self.truncated = true;
            let gone: Vec<ChunkIndex> = self
                .dirty
                .range(end_index(size)..)
                .map(|(i, _)| *i)
                .collect();
            for index in gone {
                let dirty = self.dirty.remove(&index).expect("listed");
                shared.sub_dirty(dirty.bytes());
                shared.writeback.clean(self.ino, index);
            }
        }
        self.size = size;
        match self.flush(shared, false).await? {
            Some(attr) => Ok(attr),
            None => {
                let ino = self.ino.0;
                shared
                    .remote
                    .send(
                        "get_attr",
                        GetAttrRequest { ino },
                        |mut api, r| async move { api.get_attr(r).await },
                    )
                    .await
            }
        }
    }
}

/// Writes `data` at `within` into a dirty chunk: into its buffer, or as a run over the
/// committed chunk (`committed_len` bytes long), which becomes a whole buffer once one run
/// covers all the committed bytes.
fn write_into(dirty: &mut Dirty, within: usize, data: &[u8], committed_len: usize) {
    let n = data.len();
    match &mut dirty.content {
        Content::Full(buffer) => {
            let buffer = Arc::make_mut(buffer);
            if buffer.len() < within + n {
                if n >= LARGE_WRITE_BYTES {
                    // A large writer will likely fill the chunk: grow it once, not by doubling.
                    buffer.reserve_exact(CHUNK_BYTES - buffer.len());
                    // Plaintext being written stays out of core dumps, as cached chunks do.
                    keystore::memory::exclude_allocation_from_dumps(buffer);
                }
                buffer.resize(within + n, 0);
            }
            buffer[within..within + n].copy_from_slice(data);
            dirty.written.add(within, within + n);
        }
        Content::Sparse(extents) => {
            let extents = Arc::make_mut(extents);
            extents.write(within, data);
            if let Some(whole) = extents.take_whole(committed_len) {
                keystore::memory::exclude_allocation_from_dumps(&whole);
                dirty.written = Ranges(vec![(0, whole.len())]);
                dirty.content = Content::Full(Arc::new(whole));
            }
        }
    }
}
