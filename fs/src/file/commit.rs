//! Committing: the flush that brings the dirty chunks into shape, uploads them and commits
//! them in one compare-and-swap, merging this client's writes over another writer's chunks
//! and trying again when it loses.

use std::sync::Arc;

use format::ids::{ChunkIndex, Generation};
use proto::ErrorKind;
use proto::v1::{Attr, ChunkCommit, CommitChunksRequest};

use super::content::Content;
use super::{FileState, chunk_len, end_index, last_index};
use crate::error::FsError;
use crate::shared::Shared;

/// How often a flush re-reads the file and retries after losing a compare-and-swap. Between
/// attempts it backs off for a random, growing time, so that two writers that keep colliding
/// on one chunk take turns instead of starving each other.
const FLUSH_ATTEMPTS_MAX: usize = 40;
const FLUSH_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_millis(400);

impl FileState {
    /// Makes everything written here current on the server (seen by every later open), and
    /// durable there too if `durable`. Returns the new attributes, or none if there was
    /// nothing to do.
    pub async fn flush(
        &mut self,
        shared: &Arc<Shared>,
        durable: bool,
    ) -> Result<Option<Attr>, FsError> {
        if !self.is_dirty() {
            return self.flush_attr_changes(shared, durable).await;
        }
        if self.life.pending().is_some() && !self.single_dirty() {
            // No chunk to create it with (or several): create it on its own first.
            let created = self.materialize(shared, durable).await?;
            if !self.is_dirty() {
                let changed = self.flush_attr_changes(shared, durable).await?;
                return Ok(changed.or(created));
            }
        }
        for attempt in 1..=FLUSH_ATTEMPTS_MAX {
            self.shape(shared).await?;
            let outcome = if self.single_dirty() {
                self.commit_inline(shared, durable).await
            } else {
                match self.upload_all(shared).await {
                    Ok(()) => self.commit(shared, durable).await,
                    Err(error) => Err(error),
                }
            };
            match outcome {
                Ok(attr) => return Ok(Some(attr)),
                Err(error) if retryable(&error) && attempt < FLUSH_ATTEMPTS_MAX => {
                    tracing::info!(ino = %self.ino, %error, attempt, "another writer changed the file; merging and retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    self.rebase(shared).await?;
                }
                Err(error) => return Err(error),
            }
        }
        Err(FsError::local(
            ErrorKind::Conflict,
            "the file kept changing under this writer",
        ))
    }

    /// Brings the dirty chunks into the shape the commit needs: chunks whose role the size
    /// change alters are rewritten, and every chunk has the length the size implies.
    pub(super) async fn shape(&mut self, shared: &Arc<Shared>) -> Result<(), FsError> {
        let size = self.size;
        let new_last = last_index(size);
        if size != self.committed_size {
            let old_last = last_index(self.committed_size);
            let mut roles_change: Vec<ChunkIndex> = new_last.into_iter().collect();
            if let (Some(old), Some(new)) = (old_last, new_last)
                && old < new
            {
                roles_change.push(old);
            }
            for index in roles_change {
                if self.generations.contains_key(&index) {
                    self.make_dirty(index, false);
                }
            }
        }
        let indexes: Vec<ChunkIndex> = self.dirty.keys().copied().collect();
        for index in indexes {
            let want_len = chunk_len(size, index);
            self.fit(shared, index, want_len);
            let want_last = new_last == Some(index);
            let dirty = self.dirty.get_mut(&index).expect("listed");
            if dirty
                .upload
                .as_ref()
                .is_some_and(|u| u.last != want_last || u.len != want_len)
            {
                dirty.upload = None;
            }
        }
        Ok(())
    }

    /// Seals and uploads every dirty chunk that has no usable upload yet, and waits for all.
    async fn upload_all(&mut self, shared: &Arc<Shared>) -> Result<(), FsError> {
        let new_last = last_index(self.size);
        let size = self.size;
        let missing: Vec<(ChunkIndex, usize)> = self
            .dirty
            .iter()
            .filter(|(_, d)| d.upload.is_none())
            .map(|(&index, _)| (index, chunk_len(size, index)))
            .collect();
        for (index, len) in missing {
            self.start_upload(shared, index, new_last == Some(index), len);
        }
        for dirty in self.dirty.values_mut() {
            let upload = dirty
                .upload
                .as_mut()
                .expect("every dirty chunk is uploading");
            if let Some(task) = upload.task.take()
                && let Err(error) = task.await.expect("upload task panicked")
            {
                dirty.upload = None;
                return Err(error);
            }
        }
        Ok(())
    }

    async fn commit(&mut self, shared: &Arc<Shared>, durable: bool) -> Result<Attr, FsError> {
        let ino = self.ino.0;
        let truncate = self.truncated || self.size < self.committed_size;
        let chunks: Vec<ChunkCommit> = self
            .dirty
            .iter()
            .map(|(&index, d)| ChunkCommit {
                index: index.get(),
                base_generation: d.base.get(),
                generation: d.upload.as_ref().expect("uploaded").generation.get(),
            })
            .collect();
        let request = CommitChunksRequest {
            ino,
            chunks,
            size: self.size,
            truncate,
            rekey: vec![],
            lazy: !durable,
            set_attr: self.attr_changes,
            manifest: vec![],
        };
        let attr = self.send_commit(shared, request).await?;
        Ok(self.committed_now(shared, attr, truncate))
    }

    /// Sends `request` with the manifest of the chunk map it leaves (its chunks at its size).
    pub(super) async fn send_commit(
        &mut self,
        shared: &Shared,
        mut request: CommitChunksRequest,
    ) -> Result<Attr, FsError> {
        let committed: Vec<_> = request.chunks.iter().map(committed_chunk).collect();
        let (manifest, counter) =
            self.manifest_after(shared, &committed, request.size, request.truncate);
        request.manifest = manifest;
        let attr = shared
            .remote
            .send("commit_chunks", request, |mut api, r| async move {
                api.commit_chunks(r).await
            })
            .await?;
        self.manifest_committed(shared, counter);
        Ok(attr)
    }

    /// After a successful commit: the dirty chunks are clean now (their plaintext stays in the
    /// cache), and the committed state is the server's.
    pub(super) fn committed_now(&mut self, shared: &Shared, attr: Attr, truncate: bool) -> Attr {
        let ino = self.ino;
        let indexes: Vec<ChunkIndex> = self.dirty.keys().copied().collect();
        for index in indexes {
            self.clean(shared, index);
        }
        if truncate {
            let keep = end_index(attr.size);
            let dropped: Vec<ChunkIndex> =
                self.generations.range(keep..).map(|(i, _)| *i).collect();
            for &index in &dropped {
                self.generations.remove(&index);
                shared
                    .cache
                    .lock()
                    .expect("cache poisoned")
                    .remove(ino, index);
                shared.blocks.remove(ino, index);
            }
        }
        self.committed_size = attr.size;
        self.size = attr.size;
        self.truncated = false;
        self.heard(attr);
        // Every commit carries the changes kept so far (and nothing changes them meanwhile:
        // the state is locked through the flush).
        self.attr_changes = None;
        attr
    }

    /// After losing a compare-and-swap: re-read the file and re-apply this client's writes on
    /// top of the other writer's chunks.
    async fn rebase(&mut self, shared: &Arc<Shared>) -> Result<(), FsError> {
        self.refresh(shared).await?;
        let indices: Vec<ChunkIndex> = self.dirty.keys().copied().collect();
        for index in indices {
            let current = self.generations.get(&index).copied().unwrap_or_default();
            if self.dirty[&index].base == current {
                continue;
            }
            self.merged_foreign = true;
            let theirs = match &self.dirty[&index].content {
                // Written runs are laid over whatever is committed when the chunk is sealed.
                Content::Sparse(_) => None,
                Content::Full(_) => Some(
                    self.committed(shared, index, false)
                        .await?
                        .map(|c| c.plaintext.to_vec())
                        .unwrap_or_default(),
                ),
            };
            let dirty = self.dirty.get_mut(&index).expect("listed");
            if let (Some(mut merged), Content::Full(data)) = (theirs, &dirty.content) {
                for &(start, end) in &dirty.written.0 {
                    if merged.len() < end {
                        merged.resize(end, 0);
                    }
                    merged[start..end].copy_from_slice(&data[start..end]);
                }
                shared.add_dirty(merged.len());
                shared.sub_dirty(data.len());
                dirty.content = Content::Full(Arc::new(merged));
            }
            dirty.base = current;
            dirty.last_generation = dirty.last_generation.max(current);
            dirty.upload = None;
        }
        Ok(())
    }
}

/// A chunk of a commit: its index and new generation.
fn committed_chunk(chunk: &ChunkCommit) -> (ChunkIndex, Generation) {
    (ChunkIndex(chunk.index), Generation(chunk.generation))
}

/// A random pause that grows with the attempt: 10 ms times 2^attempt at most, capped.
fn backoff(attempt: usize) -> std::time::Duration {
    let ceiling = (10u64 << attempt.min(6)).min(FLUSH_BACKOFF_MAX.as_millis() as u64);
    let random = u64::from_le_bytes(identity::random_bytes()) % ceiling.max(1);
    std::time::Duration::from_millis(random + 1)
}

fn retryable(error: &FsError) -> bool {
    // A chunk under written runs moved on (another writer): rebasing re-reads the manifest.
    matches!(error, FsError::Superseded { .. })
        || matches!(
            error.kind(),
            ErrorKind::StaleGeneration | ErrorKind::Conflict
        )
        || matches!(error, FsError::Remote { kind: ErrorKind::Invalid | ErrorKind::BadChunk, message } if message.contains("resizing") || message.contains("does not fit"))
}
