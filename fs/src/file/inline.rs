//! A file of one dirty chunk commits it in the call that uploads it (`PutChunk` with
//! `commit`), which also creates a new file: one round trip for a small file. The uploader
//! sends several such puts in one call.

use std::sync::Arc;

use crypto::ChunkContext;
use format::ids::{ChunkIndex, Generation};
use proto::ErrorKind;
use proto::v1::{Attr, PutChunkReply, PutChunkRequest};

use super::{FileState, Upload, chunk_len, last_index, next_generation};
use crate::error::FsError;
use crate::shared::{Shared, crypto_work};

/// A sealed chunk's put that commits it, waiting for its outcome.
#[derive(Debug)]
pub struct InlinePut {
    pub request: PutChunkRequest,
    index: ChunkIndex,
    generation: Generation,
    last: bool,
    len: usize,
    asked: std::time::Instant,
    /// The counter of the manifest the put carries.
    manifest: u64,
}

impl FileState {
    /// One dirty chunk: seal it and commit it in the same call.
    pub(super) async fn commit_inline(
        &mut self,
        shared: &Arc<Shared>,
        durable: bool,
    ) -> Result<Attr, FsError> {
        let put = self.seal_inline(shared, durable).await?;
        let reply = shared
            .remote
            .send("put_chunk", put.request.clone(), |mut api, r| async move {
                api.put_chunk(r).await
            })
            .await;
        self.inline_done(shared, put, reply)
    }

    /// A new file of one dirty chunk, closed: the put that creates it with its chunk, for a
    /// call of several (`PutChunks`); none for any other file. Pass the call's outcome for it
    /// to [`FileState::inline_done`].
    pub async fn creating_put(
        &mut self,
        shared: &Arc<Shared>,
    ) -> Result<Option<InlinePut>, FsError> {
        if self.life.pending().is_none() || !self.small() {
            return Ok(None);
        }
        self.shape(shared).await?;
        if !self.single_dirty() {
            return Ok(None);
        }
        self.seal_inline(shared, false).await.map(Some)
    }

    /// Seals the one dirty chunk for a put that commits it (creating the file if pending).
    async fn seal_inline(
        &mut self,
        shared: &Arc<Shared>,
        durable: bool,
    ) -> Result<InlinePut, FsError> {
        let (ino, size) = (self.ino, self.size);
        let truncate = self.truncated || self.size < self.committed_size;
        let index = *self.dirty.keys().next().expect("one dirty chunk");
        let len = chunk_len(size, index);
        let data = self.source(index).bytes(shared, len).await?;
        let dirty = self.dirty.get_mut(&index).expect("one dirty chunk");
        let generation = next_generation(dirty.base, dirty.last_generation);
        dirty.last_generation = generation;
        let context = ChunkContext {
            vault: shared.keys.vault(),
            file: ino,
            index,
            generation,
            last: last_index(size) == Some(index),
        };
        let keys = self.keys.clone();
        let sealed = crypto_work(len, move || crypto::seal(keys.newest(), &context, &data))
            .await
            .map_err(|e| FsError::local(ErrorKind::Internal, e.to_string()))?;
        let base = dirty.base;
        let create = self.life.pending().cloned();
        let (manifest, counter) =
            self.manifest_after(shared, &[(index, generation)], size, truncate);
        Ok(InlinePut {
            request: PutChunkRequest {
                ino: ino.0,
                index: index.get(),
                data: bytes::Bytes::from(sealed),
                commit: true,
                base_generation: base.get(),
                size,
                truncate,
                lazy: !durable,
                create,
                set_attr: self.attr_changes,
                manifest,
            },
            index,
            generation,
            last: context.last,
            len,
            asked: std::time::Instant::now(),
            manifest: counter,
        })
    }

    /// The outcome of a put from `FileState::seal_inline`: the file's attributes after it.
    pub fn inline_done(
        &mut self,
        shared: &Arc<Shared>,
        put: InlinePut,
        reply: Result<PutChunkReply, FsError>,
    ) -> Result<Attr, FsError> {
        let InlinePut {
            request,
            index,
            generation,
            last,
            len,
            asked,
            manifest,
        } = put;
        if let Some(create) = &request.create {
            let outcome = reply.as_ref().map(|r| r.attr.as_ref());
            self.creation_settled(shared, create, outcome, asked);
        }
        let reply = reply?;
        let dirty = self
            .dirty
            .get_mut(&index)
            .expect("the committed chunk is still dirty");
        dirty.upload = Some(Upload {
            generation,
            last,
            len,
            task: None,
        });
        let attr = reply.attr.ok_or_else(|| {
            FsError::local(
                ErrorKind::Internal,
                "a committed put returned no attributes",
            )
        })?;
        self.manifest_committed(shared, manifest);
        Ok(self.committed_now(shared, attr, request.truncate))
    }
}
