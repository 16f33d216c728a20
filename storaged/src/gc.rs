//! Removing chunk files that are no longer current, always after the commit that superseded
//! them: the garbage list (written in that commit), inodes unlinked while open whose client
//! never released them, and files uploaded but never committed.
//!
//! A superseded chunk file stays a grace period (`gc_grace_seconds`) after the commit that
//! superseded it, so that a copy of the chunk root made within that time after a metadata
//! backup holds every chunk file the backup names (`docs/format.md` section 10).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::api::State;
use crate::meta::{ChunkIndex, ChunkRef, FileId, Generation, now};
use crate::ops::{OpError, tree};

const PAGE: usize = 512;
/// An unlinked-while-open file whose client vanished is freed after this long.
const ORPHAN_INODE_GRACE: Duration = Duration::from_secs(24 * 3600);
/// An uploaded chunk is given this long to be committed before it counts as litter.
pub const UPLOAD_GRACE: Duration = Duration::from_secs(3600);

/// Runs forever: collects garbage superseded longer than `grace` ago every `interval`, and
/// sweeps for orphans every hour.
pub async fn run(state: Arc<State>, interval: Duration, grace: Duration) {
    let mut since_sweep = Duration::MAX;
    loop {
        let started = std::time::Instant::now();
        let collected = collect(&state, grace).await;
        // Counted as requests are (`vault_requests_total{op="gc"}`): each pass, done or not.
        state
            .metrics
            .record("gc", started.elapsed(), collected.is_ok());
        if let Err(error) = collected {
            tracing::warn!(%error, "garbage collection failed; will retry");
        }
        if since_sweep >= Duration::from_secs(3600) {
            since_sweep = Duration::ZERO;
            if let Err(error) = sweep(&state, UPLOAD_GRACE).await {
                tracing::warn!(%error, "orphan sweep failed; will retry");
            }
        }
        tokio::time::sleep(interval).await;
        since_sweep = since_sweep.saturating_add(interval);
    }
}

/// Deletes the files on the garbage list superseded longer than `grace` ago, then their
/// entries. Returns how many went.
pub async fn collect(state: &State, grace: Duration) -> Result<usize, OpError> {
    let mut removed = 0;
    loop {
        let before = now() - i64::try_from(grace.as_nanos()).unwrap_or(i64::MAX);
        let garbage = state
            .read(move |txn| Ok(txn.list_garbage(before, None, PAGE)?))
            .await?;
        if garbage.is_empty() {
            return Ok(removed);
        }
        // The commits that put them on the list must be durable before the files go.
        state.store.sync().await?;
        let batch = garbage.clone();
        state
            .blocking_delete(batch)
            .await
            .map_err(|e| OpError::Store(crate::meta::StoreError::Unavailable(e.to_string())))?;
        removed += garbage.len();
        state
            .write(move |txn| {
                for chunk in &garbage {
                    txn.delete_garbage(*chunk)?;
                }
                Ok(())
            })
            .await?;
    }
}

/// Frees inodes orphaned longer than a day, and deletes chunk files that are neither current,
/// nor on the garbage list (the collector's, after its grace), nor younger than
/// `upload_grace` (uploads that were never committed).
pub async fn sweep(state: &State, upload_grace: Duration) -> Result<usize, OpError> {
    let before = now() - i64::try_from(ORPHAN_INODE_GRACE.as_nanos()).unwrap_or(i64::MAX);
    let orphans = state
        .read(move |txn| Ok(txn.list_orphans(before, PAGE)?))
        .await?;
    for ino in orphans {
        state.write(move |txn| tree::purge(txn, ino)).await?;
    }
    let files = state
        .blocking_list()
        .await
        .map_err(|e| OpError::Store(crate::meta::StoreError::Unavailable(e.to_string())))?;
    let mut by_file: HashMap<FileId, Vec<ChunkRef>> = HashMap::new();
    for (chunk, age) in files {
        if age >= upload_grace.as_secs() {
            by_file.entry(chunk.ino).or_default().push(chunk);
        }
    }
    let mut litter = Vec::new();
    for (ino, chunks) in by_file {
        let found = state
            .read(move |txn| {
                let current: HashMap<ChunkIndex, Generation> = txn
                    .list_chunks(ino, ChunkIndex(0), usize::MAX)?
                    .into_iter()
                    .collect();
                let mut litter = Vec::new();
                for chunk in &chunks {
                    if current.get(&chunk.index) != Some(&chunk.generation)
                        && !txn.is_garbage(*chunk)?
                    {
                        litter.push(*chunk);
                    }
                }
                Ok::<_, OpError>(litter)
            })
            .await?;
        litter.extend(found);
    }
    let count = litter.len();
    if count > 0 {
        // What made them superseded must be durable before they go.
        state.store.sync().await?;
        tracing::info!(
            count,
            "removing chunk files that were never committed or are superseded"
        );
        state
            .blocking_delete(litter)
            .await
            .map_err(|e| OpError::Store(crate::meta::StoreError::Unavailable(e.to_string())))?;
    }
    Ok(count)
}

impl State {
    async fn blocking_delete(
        &self,
        chunks: Vec<ChunkRef>,
    ) -> Result<(), crate::chunkstore::ChunkStoreError> {
        let store = self.chunks.clone();
        tokio::task::spawn_blocking(move || chunks.into_iter().try_for_each(|c| store.delete(c)))
            .await
            .expect("chunk store task panicked")
    }

    async fn blocking_list(
        &self,
    ) -> Result<Vec<(ChunkRef, u64)>, crate::chunkstore::ChunkStoreError> {
        let store = self.chunks.clone();
        tokio::task::spawn_blocking(move || store.list())
            .await
            .expect("chunk store task panicked")
    }
}
