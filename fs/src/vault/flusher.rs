//! The flusher: sends dirty chunks before their file's flush, when the dirty budget needs
//! room (the least recently written chunks first, across every file) and when no one wrote
//! their file for a moment (`Limits::dirty_idle`; see [`crate::writeback`]), so that a file written now and then does not hold its
//! changes in memory until it is closed. A writer that finds the budget full makes room in
//! its own file first (`FileState::make_room`); the flusher takes the rest, and writers wait
//! for it only when the budget is overdrawn by a quarter.
//!
//! It holds one file's state at a time, and never one while it waits for anything else.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use format::ids::{ChunkIndex, FileId};

use super::Vault;

/// How often the flusher looks for idle chunks when nothing wakes it.
const TICK: Duration = Duration::from_millis(500);
/// Oldest dirty chunks looked at in one pass.
const LOOKED_AT_MAX: usize = 1024;
/// Files sent in one pass at most (then the flusher looks again).
const FILES_PER_PASS_MAX: usize = 64;
/// A file whose chunks could not be sent is tried again after this.
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// How long a writer waits for room at most, in steps of [`ROOM_WAIT_STEP`].
const ROOM_WAIT_STEPS: u32 = 300;
const ROOM_WAIT_STEP: Duration = Duration::from_millis(100);

impl Vault {
    /// Starts the flusher on the mount's runtime; it ends when the mount flushes for good.
    pub fn start_flusher(self: &Arc<Self>) {
        if self.flusher_running.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = Arc::downgrade(self);
        let shared = self.shared.clone();
        self.shared.spawn(async move {
            let mut failed: HashMap<FileId, Instant> = HashMap::new();
            loop {
                tokio::select! {
                    () = shared.writeback.room_needed.notified() => {}
                    () = tokio::time::sleep(TICK) => {}
                }
                let Some(vault) = me.upgrade() else {
                    return;
                };
                if vault.behind.stopping() {
                    vault.flusher_running.store(false, Ordering::SeqCst);
                    return;
                }
                failed.retain(|_, until| *until > Instant::now());
                vault.flush_some(&mut failed).await;
            }
        });
    }

    /// One pass: while the budget needs room, and for every idle chunk, the files of the
    /// oldest dirty chunks send them.
    async fn flush_some(&self, failed: &mut HashMap<FileId, Instant>) {
        let shared = &self.shared;
        let target = shared.limits.dirty_bytes_max / 8 * 7;
        let idle = shared.limits.dirty_idle;
        for _ in 0..FILES_PER_PASS_MAX {
            let needs_room = shared.dirty_bytes() > target;
            let now = Instant::now();
            let oldest = shared.writeback.oldest(LOOKED_AT_MAX);
            let Some(first) = oldest
                .iter()
                .find(|e| !failed.contains_key(&e.ino) && (needs_room || e.idle(now, idle)))
            else {
                return;
            };
            let ino = first.ino;
            let indexes: Vec<ChunkIndex> = oldest
                .iter()
                .filter(|e| e.ino == ino && (needs_room || e.idle(now, idle)))
                .map(|e| e.index)
                .collect();
            if !self.send_chunks_of(ino, &indexes).await {
                failed.insert(ino, now + RETRY_AFTER);
            }
            shared.writeback.room_made.notify_waiters();
        }
    }

    /// Sends dirty chunks `indexes` of `ino` (see `FileState::send_chunks`); false if that
    /// failed or is not for the flusher to do.
    async fn send_chunks_of(&self, ino: FileId, indexes: &[ChunkIndex]) -> bool {
        let Some(file) = self.table.file(ino) else {
            // No state holds them any more: nothing is dirty there.
            for &index in indexes {
                self.shared.writeback.clean(ino, index);
            }
            return true;
        };
        let mut state = file.lock().await;
        if state.life.pending().is_some() || self.behind.is_queued(ino) {
            // A new file: its close creates it (or the uploader does).
            return false;
        }
        match state.send_chunks(&self.shared, indexes).await {
            Ok(Some(attr)) => {
                self.record_commit(&attr, &mut state);
                true
            }
            Ok(None) => true,
            Err(error) => {
                let file = self.shared.name_of(ino);
                tracing::warn!(%error, file, "could not send written data ahead of the close; the close sends it");
                false
            }
        }
    }

    /// After a write: while the dirty budget is overdrawn by a quarter (other files' chunks
    /// the flusher has not sent yet), waits for it, a bounded time.
    pub(super) async fn wait_for_room(&self) {
        let shared = &self.shared;
        let hard = shared.limits.dirty_bytes_max + shared.limits.dirty_bytes_max / 4;
        if !self.flusher_running.load(Ordering::SeqCst) {
            return;
        }
        for _ in 0..ROOM_WAIT_STEPS {
            if shared.dirty_bytes() <= hard {
                return;
            }
            shared.writeback.room_needed.notify_one();
            let _ =
                tokio::time::timeout(ROOM_WAIT_STEP, shared.writeback.room_made.notified()).await;
        }
    }
}
