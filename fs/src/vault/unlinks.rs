//! Unlinks answered here under a directory lease and sent in batches (NFSv4's delegations,
//! for removal; [`super::behind`] does the same for creation).
//!
//! While this client holds a directory's lease, storaged recalls it before any other
//! client's call about that directory, and the recall waits until this client has sent what
//! it changed there. So an unlink there returns at once when no file is open here and the
//! name is not a new file still pending: the name is queued, and goes to storaged in an
//! `Unlinks` call of up to 64, when 64 are queued, before anything else this client does
//! with names there (a create, a listing, a rename, an rmdir, see `create::materialize_in`),
//! at a recall, at an fsync of a directory or a file's durable sync, at unmount, and at the
//! latest a second later (the uploader thread). Until then lookups here answer it absent.
//! Another client sees the unlink at its next call about the directory (close-to-open holds,
//! as for files closed under a lease).
//!
//! What the user sees differs from an unlink that waits in one way: storaged's refusal of a
//! queued unlink comes after the call returned (rare: the kernel checked the permissions
//! first, `default_permissions`). It is logged, and the name shows again here at the next
//! lookup, after the kernel's entry timeout. A killed client loses the unlinks it had not
//! sent: those names stay.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use format::ids::FileId;
use proto::ErrorKind;
use proto::limits::UNLINKS_PER_CALL_MAX;
use proto::v1::unlink_outcome::Outcome;
use proto::v1::{UnlinkOutcome, UnlinkReply, UnlinkRequest, UnlinksReply, UnlinksRequest};

use super::Vault;
use crate::error::FsError;

/// Unlinks queued at most; beyond, an unlink waits for the server itself.
pub const QUEUED_MAX: usize = 4 * UNLINKS_PER_CALL_MAX;

/// One queued unlink.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Queued {
    parent: FileId,
    name: Vec<u8>,
    /// On its way to the server (it stays queued until its outcome is applied).
    sending: bool,
}

/// The unlinks answered here and not sent yet (or on their way).
#[derive(Debug, Default)]
pub struct Unlinks {
    /// A leaf lock (see the lock order in `vault`).
    queue: Mutex<VecDeque<Queued>>,
    /// Held while batches are on their way: what must come after the queued unlinks (a
    /// create of one of the names) waits for them.
    sending: tokio::sync::Mutex<()>,
    /// Entries in `queue`, readable without its lock.
    count: AtomicUsize,
}

impl Unlinks {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Queued>> {
        self.queue.lock().expect("unlinks poisoned")
    }

    /// Queues an unlink if there is room; how many are queued then (0: no room).
    fn push(&self, parent: FileId, name: &[u8]) -> usize {
        let mut queue = self.queue();
        if queue.len() >= QUEUED_MAX {
            return 0;
        }
        queue.push_back(Queued {
            parent,
            name: name.to_vec(),
            sending: false,
        });
        self.count.store(queue.len(), Ordering::SeqCst);
        queue.len()
    }

    /// Whether unlinks are queued or on their way.
    pub fn any(&self) -> bool {
        self.count.load(Ordering::SeqCst) > 0
    }

    /// Whether `name` in `parent` was unlinked here and the server has not answered yet.
    pub fn has(&self, parent: FileId, name: &[u8]) -> bool {
        self.any()
            && self
                .queue()
                .iter()
                .any(|q| q.parent == parent && q.name == name)
    }

    /// The next unlinks to send (of `dir`, or anywhere), at most a call's worth, marked as
    /// on their way.
    fn take(&self, dir: Option<FileId>) -> Vec<Queued> {
        let mut queue = self.queue();
        let mut batch = Vec::new();
        for queued in queue.iter_mut() {
            if batch.len() == UNLINKS_PER_CALL_MAX {
                break;
            }
            if !queued.sending && dir.is_none_or(|d| d == queued.parent) {
                queued.sending = true;
                batch.push(queued.clone());
            }
        }
        batch
    }

    /// `batch` did not reach the server: queued again, to be sent by the next attempt.
    fn unsend(&self, batch: &[Queued]) {
        for queued in self.queue().iter_mut() {
            if batch
                .iter()
                .any(|b| b.parent == queued.parent && b.name == queued.name)
            {
                queued.sending = false;
            }
        }
    }

    /// The server answered `batch`: it leaves the queue.
    fn done(&self, batch: &[Queued]) {
        let mut queue = self.queue();
        queue.retain(|q| !(q.sending && batch.contains(q)));
        self.count.store(queue.len(), Ordering::SeqCst);
    }
}

impl Vault {
    /// Answers an unlink of `name` in `parent` here, if this client holds the directory's
    /// lease, has no file open and does not hold the name as a pending new file (see the
    /// module's doc); whether it did. A full batch goes to the server at once.
    pub(super) fn unlink_here(&self, parent: FileId, name: &[u8]) -> bool {
        let remote = &self.shared.remote;
        if !remote.server_has(proto::features::UNLINKS)
            || self.table.open_files() > 0
            || self.shared.pending_named(parent, name).is_some()
        {
            return false;
        }
        let mut queued = 0;
        let held = self.behind.while_held(parent, || {
            queued = self.unlinks.push(parent, name);
            queued > 0
        });
        if held && queued >= UNLINKS_PER_CALL_MAX {
            self.send_all_unlinks();
        }
        held
    }

    /// The attributes of a directory this client holds the lease on, `before` an unlink
    /// answered here (if they were fresh), as that unlink leaves them: changed now. They
    /// answer the kernel's getattr of the directory, which follows each unlink, for a moment
    /// (no other client changes the directory before the lease is back).
    pub(super) fn changed_here(&self, before: Option<proto::v1::Attr>) {
        if let Some(mut attr) = before {
            let now = Some(super::stamp(std::time::SystemTime::now()));
            (attr.mtime, attr.ctime) = (now, now);
            self.coherence.learn(&attr);
        }
    }

    /// Sends every queued unlink now, for no caller that waits for them: a failure is logged
    /// and they stay queued (the uploader thread tries again within a second).
    pub(super) fn send_all_unlinks(&self) {
        if let Err(error) = self.block(self.send_unlinks(None)) {
            tracing::warn!(%error, "could not send the unlinks answered here; will try again");
        }
    }

    /// Sends the queued unlinks of `dir` (or all), and waits for those on their way.
    pub(super) async fn send_unlinks(&self, dir: Option<FileId>) -> Result<(), FsError> {
        if !self.unlinks.any() {
            return Ok(());
        }
        let _sending = self.unlinks.sending.lock().await;
        // Bounded: unlinks queued meanwhile go with the next sender.
        for _ in 0..=QUEUED_MAX / UNLINKS_PER_CALL_MAX {
            let batch = self.unlinks.take(dir);
            if batch.is_empty() {
                break;
            }
            self.send_batch(batch).await?;
        }
        Ok(())
    }

    /// Sends one batch of queued unlinks and applies each outcome.
    async fn send_batch(&self, batch: Vec<Queued>) -> Result<(), FsError> {
        let mut unlinks = Vec::with_capacity(batch.len());
        for q in &batch {
            let names = match self.shared.dir_names(q.parent).await {
                Ok(names) => names,
                Err(error) => {
                    self.unlinks.unsend(&batch);
                    return Err(error);
                }
            };
            unlinks.push(UnlinkRequest {
                lazy: true,
                parent: q.parent.0,
                name: names.wire(&q.name),
                keep_open: false,
            });
        }
        let remote = &self.shared.remote;
        let (asked, changes) = (Instant::now(), remote.changes());
        let reply = remote
            .send(
                "unlinks",
                UnlinksRequest { unlinks },
                |mut api, r| async move { api.unlinks(r).await },
            )
            .await
            .and_then(|reply| matching(reply, batch.len()));
        let outcomes = match reply {
            Ok(outcomes) => outcomes,
            Err(error) => {
                self.unlinks.unsend(&batch);
                return Err(error);
            }
        };
        self.apply(&batch, outcomes, asked, (changes, remote.changes()));
        self.unlinks.done(&batch);
        Ok(())
    }

    /// Notes what the server did with each of `batch` (asked for at `asked`, the change count
    /// going from `changes.0` to `changes.1`) in the known directories; a refused unlink is
    /// logged and its directory forgotten, so that the name shows again.
    fn apply(
        &self,
        batch: &[Queued],
        outcomes: Vec<UnlinkOutcome>,
        asked: Instant,
        changes: (u64, u64),
    ) {
        let mut gone_with_inode = true;
        let mut dirs = self.shared.dirs();
        for (queued, outcome) in batch.iter().zip(outcomes) {
            let (parent, name) = (queued.parent, String::from_utf8_lossy(&queued.name));
            match outcome_of(outcome) {
                Ok(reply) => {
                    dirs.removed(parent, &queued.name, reply.parent.as_ref(), asked);
                    gone_with_inode &= reply.nlink == 0;
                    if let Some(attr) = &reply.parent {
                        self.coherence.learn(attr);
                    }
                }
                Err(error) => {
                    gone_with_inode = false;
                    dirs.forget(parent);
                    if error.kind() == ErrorKind::NotFound {
                        // Gone already: what the unlink wanted.
                        tracing::debug!(%parent, %name, "a queued unlink found no name");
                    } else {
                        tracing::error!(%error, %parent, %name, "storaged refused an unlink answered here; the name is back");
                    }
                }
            }
        }
        let parent = batch.first().map(|q| q.parent);
        if gone_with_inode && batch.iter().all(|q| Some(q.parent) == parent) {
            // One change, which left every other entry as it was.
            if let Some(parent) = parent {
                dirs.listing_survives(parent, changes.0, changes.1);
            }
        }
    }
}

/// What the server did with one unlink of a batch.
fn outcome_of(outcome: UnlinkOutcome) -> Result<UnlinkReply, FsError> {
    match outcome.outcome {
        Some(Outcome::Done(reply)) => Ok(reply),
        Some(Outcome::Refused(refusal)) => Err(FsError::refused(refusal.kind, refusal.message)),
        None => Err(FsError::local(
            ErrorKind::Internal,
            "an unlink's outcome says neither done nor refused",
        )),
    }
}

/// The outcomes of an `Unlinks` reply, one per unlink sent (`count`).
fn matching(reply: UnlinksReply, count: usize) -> Result<Vec<UnlinkOutcome>, FsError> {
    if reply.outcomes.len() != count {
        return Err(FsError::local(
            ErrorKind::Internal,
            format!("{} outcomes for {count} unlinks", reply.outcomes.len()),
        ));
    }
    Ok(reply.outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_unlinks_leave_only_when_answered() {
        let unlinks = Unlinks::default();
        assert!(!unlinks.any());
        assert_eq!(unlinks.push(FileId(2), b"a"), 1);
        assert_eq!(unlinks.push(FileId(3), b"b"), 2);
        assert!(unlinks.has(FileId(2), b"a") && !unlinks.has(FileId(3), b"a"));
        let batch = unlinks.take(Some(FileId(3)));
        assert_eq!(batch.len(), 1);
        assert!(unlinks.take(Some(FileId(3))).is_empty(), "on its way");
        assert!(unlinks.has(FileId(3), b"b"), "absent here until answered");
        unlinks.unsend(&batch);
        let batch = unlinks.take(None);
        assert_eq!(batch.len(), 2, "sent again, with the other");
        unlinks.done(&batch);
        assert!(!unlinks.any() && !unlinks.has(FileId(2), b"a"));
    }

    #[test]
    fn the_queue_and_each_batch_are_bounded() {
        let unlinks = Unlinks::default();
        for i in 0..QUEUED_MAX {
            assert!(unlinks.push(FileId(2), i.to_string().as_bytes()) > 0);
        }
        assert_eq!(unlinks.push(FileId(2), b"one more"), 0, "full");
        assert_eq!(unlinks.take(None).len(), UNLINKS_PER_CALL_MAX);
    }
}
