//! Closing new files without waiting for the server, under directory leases (NFSv4's write
//! delegations, for creation).
//!
//! A new file is created on the server by its first flush, together with its first chunk.
//! Without a lease, the close waits for that call. With a lease on the file's directory, the
//! close queues the file and returns; the uploader thread sends it right after. Close-to-open
//! consistency holds because storaged holds the lease for this client alone: before it
//! answers another client about the directory (a lookup, a listing, a change in it), it
//! recalls the lease, and this client first creates every file it still holds there
//! ([`crate::vault::Vault`]'s drain), then gives the lease back.
//!
//! What a lease changes for this client: a close no longer reports the server's refusal of
//! the file (it is logged, and the file's data is lost, as it would be at a crash of the
//! client: nothing unsynced is promised), and a killed client loses the files it had not
//! sent yet. `fsync` still waits for everything, the file and all this client's earlier
//! changes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use format::ids::FileId;

/// Larger new files are not held back: their upload costs more than the wait, and a killed
/// client would lose more (with the queue's bound, at most 16 MiB in all).
pub const FILE_BYTES_MAX: u64 = 64 * 1024;
/// Closed files waiting for the uploader at most; a close beyond waits for the server itself.
pub const QUEUED_MAX: usize = 256;
/// A lease no close used for this long goes back to the server.
pub const LEASE_IDLE: Duration = Duration::from_secs(30);
/// Directories whose lease state is kept at most (leases held, asked for, or paused).
const DIRECTORIES_MAX: usize = 4096;
/// After giving a lease back (or being refused one), this client asks again for the same
/// directory no sooner than this: two clients writing in one directory take turns slowly.
pub const LEASE_PAUSE: Duration = Duration::from_secs(1);

/// This client's view of its lease on one directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lease {
    /// Asked for; no answer yet.
    Asking,
    /// Held; last used (a close deferred) then.
    Held(Instant),
    /// The server wants it back: closes here wait for the server until it is given back.
    Recalled,
    /// Not held; not to be asked for again before this.
    Paused(Instant),
}

#[derive(Debug, Default)]
struct Queue {
    order: VecDeque<FileId>,
    queued: HashSet<FileId>,
    stopping: bool,
}

/// The closed files waiting to be created on the server, and the leases that allow it.
#[derive(Debug, Default)]
pub struct Behind {
    queue: Mutex<Queue>,
    ready: Condvar,
    leases: Mutex<HashMap<FileId, Lease>>,
}

impl Behind {
    /// Whether a close of a new file in `dir` may return before the server has it.
    pub fn may_defer(&self, dir: FileId) -> bool {
        self.while_held(dir, || {
            let queue = self.queue.lock().expect("queue poisoned");
            !queue.stopping && queue.order.len() < QUEUED_MAX
        })
    }

    /// Runs `work` while holding the lease on `dir` (a recall's drain starts only after it),
    /// if this client holds it; whether it held it and `work` said yes.
    pub fn while_held(&self, dir: FileId, work: impl FnOnce() -> bool) -> bool {
        let mut leases = self.leases.lock().expect("leases poisoned");
        let Some(Lease::Held(used)) = leases.get_mut(&dir) else {
            return false;
        };
        if !work() {
            return false;
        }
        *used = Instant::now();
        true
    }

    /// Queues a closed file for the uploader (once).
    pub fn defer(&self, ino: FileId) {
        let mut queue = self.queue.lock().expect("queue poisoned");
        if queue.queued.insert(ino) {
            queue.order.push_back(ino);
            self.ready.notify_one();
        }
    }

    /// The next queued files, at most `max`, waiting for one at most `wait`; none once
    /// stopping.
    pub fn next(&self, max: usize, wait: Duration) -> Vec<FileId> {
        let queue = self.queue.lock().expect("queue poisoned");
        let (mut queue, _) = self
            .ready
            .wait_timeout_while(queue, wait, |q| q.order.is_empty() && !q.stopping)
            .expect("queue poisoned");
        let take = queue.order.len().min(max);
        let next: Vec<FileId> = queue.order.drain(..take).collect();
        for ino in &next {
            queue.queued.remove(ino);
        }
        next
    }

    /// Whether `ino` waits in the queue.
    pub fn is_queued(&self, ino: FileId) -> bool {
        self.queue
            .lock()
            .expect("queue poisoned")
            .queued
            .contains(&ino)
    }

    /// Files still queued.
    pub fn queued(&self) -> usize {
        self.queue.lock().expect("queue poisoned").order.len()
    }

    /// Ends the uploader's waiting (the mount is going away).
    pub fn stop(&self) {
        self.queue.lock().expect("queue poisoned").stopping = true;
        self.ready.notify_all();
    }

    pub fn stopping(&self) -> bool {
        self.queue.lock().expect("queue poisoned").stopping
    }

    /// Whether to ask the server for a lease on `dir` now; if so, it counts as asked.
    pub fn should_ask(&self, dir: FileId) -> bool {
        let mut leases = self.leases.lock().expect("leases poisoned");
        let now = Instant::now();
        match leases.get(&dir) {
            Some(Lease::Paused(until)) if *until <= now => {}
            Some(_) => return false,
            None => {}
        }
        if leases.len() >= DIRECTORIES_MAX {
            leases.retain(|_, lease| !matches!(lease, Lease::Paused(until) if *until <= now));
            if leases.len() >= DIRECTORIES_MAX {
                return false;
            }
        }
        leases.insert(dir, Lease::Asking);
        true
    }

    /// The server's answer to asking for `dir`.
    pub fn answered(&self, dir: FileId, granted: bool) {
        let mut leases = self.leases.lock().expect("leases poisoned");
        if leases.get(&dir) == Some(&Lease::Asking) {
            let lease = if granted {
                Lease::Held(Instant::now())
            } else {
                Lease::Paused(Instant::now() + LEASE_PAUSE)
            };
            leases.insert(dir, lease);
        }
    }

    /// The server recalls `dir`: no close there returns early from now on.
    pub fn recalled(&self, dir: FileId) {
        self.leases
            .lock()
            .expect("leases poisoned")
            .insert(dir, Lease::Recalled);
    }

    /// The lease on `dir` went back to the server.
    pub fn given_back(&self, dir: FileId) {
        self.leases
            .lock()
            .expect("leases poisoned")
            .insert(dir, Lease::Paused(Instant::now() + LEASE_PAUSE));
    }

    /// The server forgot every lease (its recall stream ended): none is held any more, and
    /// none is asked for before it is back. Returns the directories that were held.
    pub fn lost_all(&self) -> Vec<FileId> {
        let mut leases = self.leases.lock().expect("leases poisoned");
        let held = leases
            .iter()
            .filter(|(_, lease)| matches!(lease, Lease::Held(_) | Lease::Recalled))
            .map(|(&dir, _)| dir)
            .collect();
        let until = Instant::now() + LEASE_PAUSE;
        for lease in leases.values_mut() {
            *lease = Lease::Paused(until);
        }
        held
    }

    /// Leases no close used for `idle`: they are being given back (no close there returns
    /// early from now on).
    pub fn idle(&self, idle: Duration) -> Vec<FileId> {
        let mut leases = self.leases.lock().expect("leases poisoned");
        let now = Instant::now();
        let mut idle_dirs = Vec::new();
        for (&dir, lease) in leases.iter_mut() {
            if matches!(lease, Lease::Held(used) if now.duration_since(*used) >= idle) {
                *lease = Lease::Recalled;
                idle_dirs.push(dir);
            }
        }
        idle_dirs
    }

    /// Leases held (for `vaultfs status`).
    pub fn held(&self) -> usize {
        self.leases
            .lock()
            .expect("leases poisoned")
            .values()
            .filter(|lease| matches!(lease, Lease::Held(_)))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_held_lease_defers_closes() {
        let behind = Behind::default();
        assert!(!behind.may_defer(FileId(7)), "no lease asked for");
        assert!(behind.should_ask(FileId(7)));
        assert!(!behind.should_ask(FileId(7)), "asked once");
        assert!(!behind.may_defer(FileId(7)), "asked, not granted yet");
        behind.answered(FileId(7), true);
        assert!(behind.may_defer(FileId(7)));
        assert!(!behind.may_defer(FileId(8)), "another directory");
        behind.recalled(FileId(7));
        assert!(!behind.may_defer(FileId(7)), "recalled");
        behind.given_back(FileId(7));
        assert!(!behind.may_defer(FileId(7)));
        assert!(!behind.should_ask(FileId(7)), "paused after giving it back");
    }

    #[test]
    fn a_refused_lease_is_asked_for_again_after_the_pause() {
        let behind = Behind::default();
        assert!(behind.should_ask(FileId(3)));
        behind.answered(FileId(3), false);
        assert!(!behind.may_defer(FileId(3)));
        assert!(!behind.should_ask(FileId(3)));
        behind
            .leases
            .lock()
            .expect("leases")
            .insert(FileId(3), Lease::Paused(Instant::now()));
        assert!(behind.should_ask(FileId(3)));
    }

    #[test]
    fn an_answer_after_a_recall_does_not_grant() {
        let behind = Behind::default();
        assert!(behind.should_ask(FileId(5)));
        behind.recalled(FileId(5));
        behind.answered(FileId(5), true);
        assert!(!behind.may_defer(FileId(5)));
    }

    #[test]
    fn work_runs_only_under_a_held_lease() {
        let behind = Behind::default();
        assert!(!behind.while_held(FileId(2), || panic!("no lease")));
        assert!(behind.should_ask(FileId(2)));
        behind.answered(FileId(2), true);
        assert!(behind.while_held(FileId(2), || true));
        assert!(!behind.while_held(FileId(2), || false));
        behind.recalled(FileId(2));
        assert!(!behind.while_held(FileId(2), || panic!("recalled")));
    }

    #[test]
    fn an_idle_lease_goes_back() {
        let behind = Behind::default();
        assert!(behind.should_ask(FileId(4)));
        behind.answered(FileId(4), true);
        assert!(behind.idle(Duration::from_secs(60)).is_empty());
        assert_eq!(behind.idle(Duration::ZERO), vec![FileId(4)]);
        assert!(!behind.may_defer(FileId(4)), "being given back");
        assert!(behind.idle(Duration::ZERO).is_empty());
    }

    #[test]
    fn losing_the_server_drops_every_lease() {
        let behind = Behind::default();
        for dir in [1, 2] {
            assert!(behind.should_ask(FileId(dir)));
            behind.answered(FileId(dir), true);
        }
        let mut lost = behind.lost_all();
        lost.sort();
        assert_eq!(lost, vec![FileId(1), FileId(2)]);
        assert!(!behind.may_defer(FileId(1)) && !behind.may_defer(FileId(2)));
        assert_eq!(behind.held(), 0);
    }

    #[test]
    fn the_queue_holds_a_file_once_and_bounds_deferring() {
        let behind = Behind::default();
        assert!(behind.should_ask(FileId(1)));
        behind.answered(FileId(1), true);
        behind.defer(FileId(10));
        behind.defer(FileId(10));
        assert_eq!(behind.queued(), 1);
        behind.defer(FileId(11));
        behind.defer(FileId(12));
        assert_eq!(behind.next(2, Duration::ZERO), [10, 11].map(FileId));
        assert_eq!(behind.next(2, Duration::ZERO), vec![FileId(12)]);
        assert!(behind.next(2, Duration::ZERO).is_empty());
        for ino in 0..QUEUED_MAX as u64 {
            behind.defer(FileId(100 + ino));
        }
        assert!(!behind.may_defer(FileId(1)), "the queue is full");
        behind.stop();
        assert!(behind.stopping());
    }
}
