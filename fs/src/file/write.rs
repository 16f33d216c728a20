//! Writing: dirty chunk buffers, full chunks uploaded behind the writer, and truncation.

use std::sync::Arc;

use crypto::ChunkContext;
use format::ids::{ChunkIndex, Generation};
use format::limits::{CHUNK_BYTES, FILE_BYTES_MAX};
use proto::ErrorKind;
use proto::v1::{Attr, GetAttrRequest, PutChunkRequest};

use super::{
    CHUNK, Dirty, FileState, Ranges, Upload, end_index, indexes, last_index, next_generation,
    pieces,
};
use crate::error::FsError;
use crate::shared::{Shared, crypto_work};

/// Writes of this size or more reserve a whole chunk's buffer at once.
const LARGE_WRITE_BYTES: usize = 256 * 1024;

impl FileState {
    /// Makes chunk `index` dirty, starting from its committed content unless `whole` says the
    /// caller overwrites all of it.
    pub(super) async fn make_dirty(
        &mut self,
        shared: &Shared,
        index: ChunkIndex,
        whole: bool,
    ) -> Result<(), FsError> {
        if self.dirty.contains_key(&index) {
            return Ok(());
        }
        let base = self.generations.get(&index).copied().unwrap_or_default();
        let content = match (whole, base) {
            (true, _) | (_, Generation(0)) => Vec::new(),
            _ => self
                .committed(shared, index)
                .await?
                .map(|c| c.plaintext.to_vec())
                .unwrap_or_default(),
        };
        let base = self.generations.get(&index).copied().unwrap_or_default();
        shared.add_dirty(content.len());
        self.dirty.insert(
            index,
            Dirty {
                data: Arc::new(content),
                written: Ranges::default(),
                base,
                upload: None,
                last_generation: base,
            },
        );
        Ok(())
    }

    pub async fn write(
        &mut self,
        shared: &Arc<Shared>,
        offset: u64,
        data: &[u8],
    ) -> Result<(), FsError> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= FILE_BYTES_MAX)
            .ok_or_else(|| {
                FsError::local(
                    ErrorKind::TooLarge,
                    "write past the largest file the format holds",
                )
            })?;
        for (index, within, n) in pieces(offset, end) {
            self.make_dirty(shared, index, within == 0 && n == CHUNK_BYTES)
                .await?;
            let dirty = self.dirty.get_mut(&index).expect("made dirty above");
            let buffer = Arc::make_mut(&mut dirty.data);
            if buffer.len() < within + n {
                if n >= LARGE_WRITE_BYTES {
                    // A large writer will likely fill the chunk: grow it once, not by doubling.
                    buffer.reserve_exact(CHUNK_BYTES - buffer.len());
                }
                shared.add_dirty(within + n - buffer.len());
                buffer.resize(within + n, 0);
            }
            let from = (index.start() + within as u64 - offset) as usize;
            buffer[within..within + n].copy_from_slice(&data[from..from + n]);
            dirty.written.add(within, within + n);
            dirty.upload = None;
        }
        self.size = self.size.max(end);
        self.forget_kept_mtime();
        if self.life.pending().is_some() && self.size > CHUNK {
            // Full chunks upload before the commit: the file must exist for them.
            self.materialize(shared, false).await?;
        }
        let before = ChunkIndex::of_offset(offset).get().saturating_sub(1);
        self.write_behind(shared, ChunkIndex(before), ChunkIndex::of_offset(end - 1));
        if shared.over_dirty_budget() {
            self.flush(shared, false).await?;
        }
        Ok(())
    }

    /// Starts uploading full chunks in `first..=last` that the file has grown past.
    fn write_behind(&mut self, shared: &Arc<Shared>, first: ChunkIndex, last: ChunkIndex) {
        let Some(file_last) = last_index(self.size) else {
            return;
        };
        let below_last = ChunkIndex(file_last.get().saturating_sub(1));
        for index in indexes(first, last.min(below_last)) {
            if index >= file_last {
                break;
            }
            let full = self
                .dirty
                .get(&index)
                .is_some_and(|d| d.upload.is_none() && d.data.len() == CHUNK_BYTES);
            if full {
                self.start_upload(shared, index, false, CHUNK_BYTES);
            }
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
        let dirty = self.dirty.get_mut(&index).expect("uploading a dirty chunk");
        let generation = next_generation(dirty.base, dirty.last_generation);
        dirty.last_generation = generation;
        let data = dirty.data.clone();
        let background = shared.clone();
        let task = shared.spawn(async move {
            let shared = background;
            let _slot = shared
                .uploads
                .acquire()
                .await
                .expect("upload semaphore closed");
            let context = ChunkContext {
                vault,
                file: ino,
                index,
                generation,
                last,
            };
            let sealed = crypto_work(len, move || {
                crypto::seal(keys.newest(), &context, &data[..len])
            })
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
                shared.sub_dirty(dirty.data.len());
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
