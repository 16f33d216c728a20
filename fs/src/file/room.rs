//! Sending some dirty chunks before the file's flush: to make room in the dirty budget (the
//! least recently written first) and for chunks no one wrote for a moment.
//!
//! When the file's size and its other dirty chunks can stay as they are (a writer rewriting
//! a file in place, as databases and VM drives do), the chunks are sealed, sent and
//! committed alone, each over the generation it started from (compare-and-swap, as every
//! commit); anything else (a file that grew, was cut, or is new) is flushed whole.

use std::sync::Arc;

use format::ids::ChunkIndex;
use proto::v1::{Attr, ChunkCommit, CommitChunksRequest};

use super::content::Content;
use super::{FileState, chunk_len, last_index};
use crate::cache::CleanChunk;
use crate::error::FsError;
use crate::shared::Shared;

/// Oldest dirty chunks looked at when making room in one file.
const OLDEST_LOOKED_AT: usize = 4096;

impl FileState {
    /// Over the dirty budget: sends this file's least recently written chunks (not those of
    /// `written`, the write just made) until the budget has an eighth of room again. Chunks
    /// of other files are the flusher's (woken here). Returns the attributes of a commit.
    pub(super) async fn make_room(
        &mut self,
        shared: &Arc<Shared>,
        written: (ChunkIndex, ChunkIndex),
    ) -> Result<Option<Attr>, FsError> {
        if !shared.over_dirty_budget() {
            return Ok(None);
        }
        let target = shared.limits.dirty_bytes_max / 8 * 7;
        let mut to_free = shared.dirty_bytes().saturating_sub(target);
        let mut victims = Vec::new();
        for entry in shared.writeback.oldest(OLDEST_LOOKED_AT) {
            if entry.ino != self.ino || (written.0..=written.1).contains(&entry.index) {
                continue;
            }
            if let Some(dirty) = self.dirty.get(&entry.index) {
                victims.push(entry.index);
                to_free = to_free.saturating_sub(dirty.bytes());
                if to_free == 0 {
                    break;
                }
            }
        }
        shared.writeback.room_needed.notify_one();
        if victims.is_empty() {
            return Ok(None);
        }
        self.send_chunks(shared, &victims).await
    }

    /// Seals, sends and commits dirty chunks `indexes` now: alone when the file's size and
    /// other dirty chunks can stay as they are, else the whole file. Returns the attributes
    /// of the commit, if one was made.
    pub async fn send_chunks(
        &mut self,
        shared: &Arc<Shared>,
        indexes: &[ChunkIndex],
    ) -> Result<Option<Attr>, FsError> {
        let indexes: Vec<ChunkIndex> = indexes
            .iter()
            .copied()
            .filter(|index| self.dirty.contains_key(index))
            .collect();
        if indexes.is_empty() {
            return Ok(None);
        }
        let alone = self.life.pending().is_none()
            && !self.truncated
            && self.size == self.committed_size
            && self.attr_changes.is_none()
            && indexes.len() < self.dirty.len();
        if alone {
            match self.commit_some(shared, &indexes).await {
                Ok(attr) => return Ok(Some(attr)),
                Err(error) => {
                    tracing::debug!(ino = %self.ino, %error, "could not commit some chunks alone; flushing the file");
                }
            }
        }
        self.flush(shared, false).await
    }

    /// Gives a whole chunk's buffer the length `len`, as the file's size needs.
    pub(super) fn fit(&mut self, shared: &Shared, index: ChunkIndex, len: usize) {
        let dirty = self.dirty.get_mut(&index).expect("fitting a dirty chunk");
        match &mut dirty.content {
            Content::Full(data) if data.len() != len => {
                let buffer = Arc::make_mut(data);
                shared.add_dirty(len);
                shared.sub_dirty(buffer.len());
                buffer.resize(len, 0);
                dirty.written.clip(len);
                dirty.upload = None;
            }
            Content::Sparse(extents) if extents.end() > len => {
                let extents = Arc::make_mut(extents);
                let before = extents.bytes();
                extents.clip(len);
                shared.sub_dirty(before - extents.bytes());
                dirty.upload = None;
            }
            _ => {}
        }
    }

    /// Commits chunks `indexes` alone, the size as it is (see the module comment).
    async fn commit_some(
        &mut self,
        shared: &Arc<Shared>,
        indexes: &[ChunkIndex],
    ) -> Result<Attr, FsError> {
        let last = last_index(self.size);
        for &index in indexes {
            let len = chunk_len(self.size, index);
            self.fit(shared, index, len);
            let want_last = last == Some(index);
            let usable = self.dirty[&index]
                .upload
                .as_ref()
                .is_some_and(|u| u.len == len && u.last == want_last);
            if !usable {
                self.start_upload(shared, index, want_last, len);
            }
        }
        let mut chunks = Vec::with_capacity(indexes.len());
        for &index in indexes {
            let dirty = self.dirty.get_mut(&index).expect("listed");
            let upload = dirty.upload.as_mut().expect("uploading");
            if let Some(task) = upload.task.take()
                && let Err(error) = task.await.expect("upload task panicked")
            {
                dirty.upload = None;
                return Err(error);
            }
            chunks.push(ChunkCommit {
                index: index.get(),
                base_generation: dirty.base.get(),
                generation: upload.generation.get(),
            });
        }
        let request = CommitChunksRequest {
            ino: self.ino.0,
            chunks,
            size: self.committed_size,
            truncate: false,
            rekey: vec![],
            lazy: true,
            set_attr: None,
            manifest: vec![],
        };
        let attr = self.send_commit(shared, request).await?;
        let size_before = self.committed_size;
        for &index in indexes {
            self.clean(shared, index);
        }
        self.heard(attr);
        if attr.size != size_before {
            // Another client changed the size meanwhile: take its chunk map too.
            return self.refresh(shared).await;
        }
        Ok(attr)
    }

    /// Dirty chunk `index` was committed: its generation is current, its plaintext (when this
    /// client holds all of it) goes to the cache, and it is clean.
    pub(super) fn clean(&mut self, shared: &Shared, index: ChunkIndex) {
        let dirty = self.dirty.remove(&index).expect("cleaning a dirty chunk");
        let generation = dirty.upload.as_ref().expect("uploaded").generation;
        shared.sub_dirty(dirty.bytes());
        shared.writeback.clean(self.ino, index);
        shared.blocks.remove(self.ino, index);
        self.generations.insert(index, generation);
        let mut cache = shared.cache.lock().expect("cache poisoned");
        match dirty.content {
            Content::Full(data) => {
                let plaintext = Arc::try_unwrap(data)
                    .unwrap_or_else(|shared| (*shared).clone())
                    .into();
                let chunk = CleanChunk {
                    generation,
                    plaintext,
                };
                cache.insert(self.ino, index, Arc::new(chunk));
            }
            // Only the runs written here: laid over the committed chunk they were sealed
            // over, when the cache still holds it, they are the new generation's plaintext
            // (a random writer's chunks stay cached); else the cache's copy is stale.
            Content::Sparse(extents) => {
                let len = dirty.upload.as_ref().expect("uploaded").len;
                let merged = cache
                    .get(self.ino, index)
                    .filter(|old| old.generation == dirty.base)
                    .map(|old| {
                        let mut plaintext = vec![0u8; len];
                        let n = old.plaintext.len().min(len);
                        plaintext[..n].copy_from_slice(&old.plaintext[..n]);
                        extents.overlay(0, &mut plaintext);
                        plaintext
                    });
                match merged {
                    Some(plaintext) => {
                        let chunk = CleanChunk {
                            generation,
                            plaintext: plaintext.into(),
                        };
                        cache.insert(self.ino, index, Arc::new(chunk));
                    }
                    None => cache.remove(self.ino, index),
                }
            }
        }
    }
}
