//! Every filesystem operation as a plain function returning `Result<_, FsError>`: the FUSE
//! adapter is a thin layer over this, and tests can drive it without a mount.
//!
//! The functions are synchronous (FUSE threads call them) and drive their network work on the
//! calling thread (`remote::drive`); background work (uploads, read-ahead) runs on the
//! mount's async runtime ([`Shared::spawn`]).
//!
//! By concern: `lookup` (lookups and attributes), `namespace` (making, linking, removing and
//! renaming names), `listing` (directory listings), `create` (new files, and creating them on
//! the server), `files` (open files: reads, writes, flushes, releases), `uploader` and
//! `leases` (closing new files under directory leases, see [`behind`]), `unlinks` (unlinks
//! answered under them, sent in batches), `ahead` (opens answered ahead under them),
//! `coherence` (what the
//! kernel keeps), `xattr`; `table` holds the open files and handles.
//!
//! # Lock order
//!
//! A thread takes locks only downwards in this list. A *leaf* is never held while any other
//! lock is taken, and no `std` mutex is held across an `.await` or a call to the server.
//!
//! 1. **A file's state** (`FileState`, an async mutex; `table::SharedFile`): held across the
//!    calls to the server that read, flush, create or change the file, and may take anything
//!    below.
//!    A thread holds one at a time and never waits for another file's while holding one
//!    (`files::flush_as` lets its file go before `sync_async` creates the others). Only the
//!    uploader (`uploader::send_queued`) holds several, each taken with `try_lock`.
//! 2. **A chunk's load lock** (`Shared::load`, async): held across that chunk's fetch; takes
//!    only leaves (the cache, the loads table, names, the descriptor claims).
//! 3. **The lease table** (`Behind`'s leases): held while `Behind::while_held` runs its
//!    work, which takes only what follows: `Behind::may_defer` the queue (4), and deciding an
//!    `O_EXCL` create here (`create::created_exclusive_here`) the known directories, pending
//!    files, keys, the open-files table and coherence (5 to 9) one after the other, so that
//!    the file is pending and open before a recall's drain can start.
//! 4. **The uploader's queue** (`Behind`'s queue; the uploader waits on it), the queued
//!    unlinks (`unlinks::Unlinks`; an unlink answered here queues under the lease table),
//!    and the replies held for opens (`ahead::Ahead`; taken under the lease table): leaves.
//! 5. **Known directories** (`Shared::dirs`, `KnownDirs`): leaf (it reads the change count,
//!    an atomic).
//! 6. **Pending new files** (`Shared`'s pending table): leaf.
//! 7. **Keys' caches** (`Keys`): leaves (its refiller lock only starts or wakes its thread).
//! 8. **The open-files table** (`table::OpenTable`): leaf.
//! 9. **Coherence** (`coherence::Coherence`: pages, kernel attributes, fresh attributes):
//!    leaves; the kernel is told to drop attributes with none held.
//! 10. **Shared's other tables** (the chunk cache, the loads table, names), the descriptor
//!     claims, and the remote's re-login lock (async, held across a login only): leaves.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use format::ids::FileId;
use proto::v1::{Attr, FileKind, Timestamp};

mod ahead;
pub mod behind;
mod coherence;
mod create;
mod files;
mod flusher;
mod leases;
mod listing;
mod lookup;
mod namespace;
mod table;
mod unlinks;
mod uploader;
mod xattr;

use self::ahead::Ahead;
use self::behind::Behind;
use self::coherence::Coherence;
use self::table::{OpenTable, SharedFile};
use self::unlinks::Unlinks;
use crate::shared::Shared;

pub use self::coherence::Notifier;
pub use self::xattr::kept_xattr;
pub(crate) use self::xattr::stored_xattr;

/// A directory's entries with their attributes, as `opendir` saw them.
pub type Listing = Arc<Vec<(Vec<u8>, Attr)>>;

/// What `setattr` may change.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timestamp>,
    pub mtime: Option<Timestamp>,
    pub atime_now: bool,
    pub mtime_now: bool,
}

/// Who a new file, directory or link belongs to: the calling process's user and group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// A special file for `mknod`: its kind, permission bits and device number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: FileKind,
    pub perm: u32,
    pub rdev: u64,
}

impl Node {
    /// The special file a `mknod` mode asks for: its format bits, and the permission bits the
    /// caller's umask leaves. None for a format that is not a special file's.
    pub fn from_mode(mode: u32, umask: u32, rdev: u64) -> Option<Node> {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            _ => return None,
        };
        let perm = mode & !umask & 0o7777;
        Some(Node { kind, perm, rdev })
    }
}

/// How `rename` treats an existing target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    Replace,
    NoReplace,
    Exchange,
}

#[derive(Debug)]
pub struct Vault {
    shared: Arc<Shared>,
    /// Open files, and what the kernel's handles stand for.
    table: OpenTable,
    /// What the kernel's caches hold, and the attributes this client learnt moments ago.
    coherence: Coherence,
    /// New files closed under a directory lease, waiting for the uploader.
    behind: Behind,
    /// Unlinks answered under a directory lease, waiting to be sent (see `unlinks`).
    unlinks: Unlinks,
    /// `Open` replies held for later opens under directory leases (see `ahead`).
    ahead: Ahead,
    /// This vault, for its background work (set by [`Vault::start_behind`]).
    me: OnceLock<Weak<Vault>>,
    /// Listening for storaged's recalls: only then may this client hold leases.
    hearing: AtomicBool,
    /// The flusher runs (see `flusher`).
    flusher_running: AtomicBool,
}

/// A time as the wire carries it.
pub fn stamp(time: SystemTime) -> Timestamp {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos(),
    }
}

/// A time the wire carries, as the system's (the epoch for none, or one out of range).
pub fn system_time(stamp: Option<&Timestamp>) -> SystemTime {
    stamp
        .and_then(|t| {
            let secs = u64::try_from(t.seconds).ok()?;
            UNIX_EPOCH.checked_add(Duration::new(secs, t.nanos))
        })
        .unwrap_or(UNIX_EPOCH)
}

impl Vault {
    pub fn new(shared: Arc<Shared>) -> Vault {
        Vault {
            shared,
            table: OpenTable::new(),
            coherence: Coherence::default(),
            behind: Behind::default(),
            unlinks: Unlinks::default(),
            ahead: Ahead::default(),
            me: OnceLock::new(),
            hearing: AtomicBool::new(false),
            flusher_running: AtomicBool::new(false),
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn block<T>(&self, work: impl Future<Output = T>) -> T {
        crate::remote::drive(work)
    }

    /// `local_view` for a caller outside the runtime (a listing taken earlier).
    pub fn local_attr(&self, attr: Attr) -> Attr {
        self.block(self.local_view(attr))
    }

    /// A file's attributes as this client sees them: an open file with local writes shows
    /// its local size, and the attribute changes it keeps for its next commit.
    async fn local_view(&self, attr: Attr) -> Attr {
        match self.table.file(FileId(attr.ino)) {
            Some(file) => file.lock().await.view(attr),
            None => attr,
        }
    }

    /// Files closed under leases and not sent yet, and leases held, for `vaultfs status`.
    pub fn behind_usage(&self) -> (usize, usize) {
        (self.behind.queued(), self.behind.held())
    }

    /// Cache and write-back figures for `vaultfs status`.
    pub fn usage(&self) -> (usize, usize, usize) {
        let cache = self.shared.cache.lock().expect("cache poisoned").bytes();
        let dirty = self.shared.dirty_bytes.load(Ordering::Relaxed);
        let open = self.table.open_files();
        (cache, dirty, open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mknod_modes_name_special_files_only() {
        let fifo = Node::from_mode(libc::S_IFIFO | 0o4666, 0o022, 0).expect("a FIFO");
        assert_eq!((fifo.kind, fifo.perm), (FileKind::Fifo, 0o4644));
        let device = Node::from_mode(libc::S_IFCHR | 0o600, 0, 0x0103).expect("a device");
        assert_eq!((device.kind, device.rdev), (FileKind::CharDevice, 0x0103));
        assert!(
            Node::from_mode(libc::S_IFREG | 0o644, 0, 0).is_none(),
            "created instead"
        );
        assert!(Node::from_mode(libc::S_IFDIR | 0o755, 0, 0).is_none());
    }

    #[test]
    fn times_cross_the_wire_unchanged() {
        let time = UNIX_EPOCH + Duration::new(1_700_000_000, 123);
        assert_eq!(system_time(Some(&stamp(time))), time);
        assert_eq!(system_time(None), UNIX_EPOCH);
        let before_the_epoch = Timestamp {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(system_time(Some(&before_the_epoch)), UNIX_EPOCH);
    }
}
