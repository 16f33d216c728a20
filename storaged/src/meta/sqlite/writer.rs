//! The writer thread and durability: group commit of queued operations, each under its own
//! savepoint; durable commits after the chunk files' barrier, visible ones made durable within
//! a second; checkpoints of the WAL only right after a durable commit (see the module comment
//! of `meta::sqlite`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::Instant;

use rusqlite::{Connection, params};
use tokio::sync::oneshot;

use super::txn::SqliteTxn;
use super::{run, unavailable};
use crate::meta::*;

/// How many operations one commit may carry.
const GROUP_COMMIT_OPERATIONS_MAX: usize = 512;
/// Commits between two checkpoints of the WAL into the database file (at least).
const CHECKPOINT_AFTER_COMMITS: u32 = 256;
/// Commits after which the next one is made durable so that a checkpoint may follow; bounds
/// the WAL while only visible writes come.
pub(super) const DURABLE_AFTER_COMMITS: u32 = 1024;
/// The settings row a durable commit writes when visible commits wait for it, so that it
/// syncs the WAL even when it has nothing else to write.
const DURABLE_MARK: &str = "durable_mark";

pub(super) struct Job {
    /// `None`: a sync, which asks only that what came before be durable.
    pub op: Option<Operation>,
    pub durability: Durability,
}

pub(super) enum Message {
    Job(Job, oneshot::Sender<Result<(), OperationFailed>>),
    /// A commit on a caller's thread left the first visible writes waiting for durability
    /// (the writer thread starts counting down to making them durable), or made enough
    /// commits that a durable one is due.
    Undurable,
}

/// The write connection and what its thread knows about durability.
pub(super) struct Writer {
    conn: Connection,
    barrier: Option<Barrier>,
    /// When the oldest commit that is visible but not yet durable was made.
    pub undurable_since: Option<Instant>,
    pub commits_since_checkpoint: u32,
    /// The connection's `synchronous` setting: FULL (true) or NORMAL.
    synchronous_full: bool,
}

impl Writer {
    /// The writer of the connection `conn`, which starts with `synchronous=FULL`.
    pub fn new(conn: Connection, barrier: Option<Barrier>) -> Writer {
        Writer {
            conn,
            barrier,
            undurable_since: None,
            commits_since_checkpoint: 0,
            synchronous_full: true,
        }
    }
}

pub(super) fn lock(writer: &Mutex<Writer>) -> std::sync::MutexGuard<'_, Writer> {
    writer.lock().expect("sqlite writer poisoned")
}

pub(super) fn writer_loop(
    writer: &Mutex<Writer>,
    queued: &AtomicUsize,
    messages: mpsc::Receiver<Message>,
) {
    loop {
        let undurable_since = lock(writer).undurable_since;
        let first = match undurable_since {
            None => messages.recv().ok(),
            Some(since) => {
                let wait = (since + VISIBLE_WRITES_DURABLE_WITHIN)
                    .saturating_duration_since(Instant::now());
                match messages.recv_timeout(wait) {
                    Ok(message) => Some(message),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        sync_ahead(writer);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => None,
                }
            }
        };
        let Some(first) = first else { break };
        let (mut batch, mut replies) = (Vec::new(), Vec::new());
        let mut next = Some(first);
        while let Some(message) = next {
            if let Message::Job(job, reply) = message {
                queued.fetch_sub(1, Ordering::AcqRel);
                batch.push(job);
                replies.push(reply);
            }
            next = match batch.len() < GROUP_COMMIT_OPERATIONS_MAX {
                true => messages.try_recv().ok(),
                false => None,
            };
        }
        if !batch.is_empty() {
            let outcomes = lock(writer).run_batch(&mut batch);
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
        if lock(writer).durability_due() {
            sync_ahead(writer);
        }
    }
    // Stopping: the connection checkpoints as it closes, which must not come before the
    // chunk files of the visible commits.
    lock(writer).make_durable();
}

/// Makes the visible commits durable without stopping visible writes for long: the barrier
/// first runs without the connection (the chunk files written so far, in bulk), while visible
/// commits go on; then, with the connection held, the durable commit calls it again, for the
/// chunk files of the commits made meanwhile only. (With the barrier held throughout, each
/// such commit stopped every write for the 20-70 ms a sync of a second's files takes.)
fn sync_ahead(writer: &Mutex<Writer>) {
    let barrier = {
        let writer = lock(writer);
        if writer.undurable_since.is_none() {
            return;
        }
        writer.barrier.clone()
    };
    if let Some(barrier) = barrier
        && let Err(error) = barrier()
    {
        // The barrier under the connection tries again, and fails the commit if it must.
        tracing::warn!(%error, "could not sync the chunk files ahead of a durable commit");
    }
    lock(writer).make_durable();
}

impl Writer {
    /// Whether the writer thread should make the visible commits durable now.
    fn durability_due(&self) -> bool {
        let Some(since) = self.undurable_since else {
            return false;
        };
        self.commits_since_checkpoint >= DURABLE_AFTER_COMMITS
            || since.elapsed() >= VISIBLE_WRITES_DURABLE_WITHIN
    }

    /// A durable commit of nothing but the mark, when visible commits wait for one.
    fn make_durable(&mut self) {
        if self.undurable_since.is_none() {
            return;
        }
        if let Err(error) = self.commit(&mut [], true) {
            tracing::error!(%error, "could not make the visible metadata writes durable; will retry");
            // Retry in a while, not at once.
            self.undurable_since = Some(Instant::now());
        }
    }

    /// Runs a batch in one transaction, each operation under its own savepoint, and commits
    /// it as durably as its most demanding member asks.
    pub fn run_batch(&mut self, batch: &mut [Job]) -> Vec<Result<(), OperationFailed>> {
        let durable = batch.iter().any(|j| j.durability == Durability::Durable);
        let only_syncs = batch.iter().all(|j| j.op.is_none());
        if only_syncs && self.undurable_since.is_none() {
            // Everything acknowledged is durable already.
            return batch.iter().map(|_| Ok(())).collect();
        }
        match self.commit(batch, durable) {
            Ok(outcomes) => outcomes,
            Err(error) => batch
                .iter()
                .map(|_| Err(OperationFailed::Store(error.clone())))
                .collect(),
        }
    }

    /// Runs the jobs of `batch` in one transaction, durable or visible only, and commits it.
    fn commit(
        &mut self,
        batch: &mut [Job],
        durable: bool,
    ) -> Result<Vec<Result<(), OperationFailed>>, StoreError> {
        self.set_synchronous(durable)?;
        if durable && let Some(barrier) = &self.barrier {
            // Every job in the batch was queued after its chunk files were written.
            barrier()
                .map_err(|e| StoreError::Unavailable(format!("syncing the chunk files: {e}")))?;
        }
        let conn = &self.conn;
        run(conn, "BEGIN IMMEDIATE")?;
        // An operation alone in its transaction rolls back with it if it fails.
        let alone = batch.len() == 1 && !durable;
        let mut outcomes = Vec::with_capacity(batch.len());
        for job in batch.iter_mut() {
            let outcome = run_job(conn, job, alone);
            if alone && outcome.is_err() {
                let _ = run(conn, "ROLLBACK");
                return Ok(vec![outcome]);
            }
            outcomes.push(outcome);
        }
        if let Err(error) = self.commit_marked(durable) {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(error);
        }
        self.committed(durable);
        Ok(outcomes)
    }

    /// Sets the connection's `synchronous` to FULL for a durable commit, NORMAL otherwise.
    fn set_synchronous(&mut self, durable: bool) -> Result<(), StoreError> {
        if self.synchronous_full != durable {
            let level = if durable { "FULL" } else { "NORMAL" };
            self.conn
                .pragma_update(None, "synchronous", level)
                .map_err(unavailable)?;
            self.synchronous_full = durable;
        }
        Ok(())
    }

    /// Commits the open transaction; a durable commit that visible commits wait for writes
    /// the mark first.
    fn commit_marked(&self, durable: bool) -> Result<(), StoreError> {
        if durable && self.undurable_since.is_some() {
            // Earlier visible commits wait for this one's WAL sync, but a commit with
            // nothing written syncs nothing: the mark makes sure it does.
            let mark = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            self.conn
                .execute(
                    "INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)",
                    params![DURABLE_MARK, mark.to_le_bytes().to_vec()],
                )
                .map_err(unavailable)?;
        }
        run(&self.conn, "COMMIT")
    }

    /// Counts a commit, and after a durable one checkpoints the WAL when it is due.
    fn committed(&mut self, durable: bool) {
        self.commits_since_checkpoint += 1;
        if durable {
            self.undurable_since = None;
            if self.commits_since_checkpoint >= CHECKPOINT_AFTER_COMMITS {
                // Right after a durable commit: everything the WAL holds may become durable.
                match self
                    .conn
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                {
                    Ok(()) => self.commits_since_checkpoint = 0,
                    Err(error) => tracing::warn!(%error, "WAL checkpoint failed; will retry"),
                }
            }
        } else if self.undurable_since.is_none() {
            self.undurable_since = Some(Instant::now());
        }
    }
}

/// Runs one job's operation in the open transaction: under a savepoint of its own, which rolls
/// back alone if the operation fails, unless it is `alone` in the transaction.
fn run_job(conn: &Connection, job: &mut Job, alone: bool) -> Result<(), OperationFailed> {
    let Some(op) = job.op.as_mut() else {
        return Ok(());
    };
    let mut txn = SqliteTxn {
        conn,
        writable: true,
    };
    if alone {
        return op(&mut txn);
    }
    let outcome = run(conn, "SAVEPOINT op").map_err(Into::into);
    let outcome = outcome.and_then(|()| op(&mut txn));
    let end = match outcome.is_ok() {
        true => run(conn, "RELEASE op"),
        false => run(conn, "ROLLBACK TO op").and_then(|()| run(conn, "RELEASE op")),
    };
    match end {
        Ok(()) => outcome,
        Err(error) => Err(OperationFailed::Store(error)),
    }
}
