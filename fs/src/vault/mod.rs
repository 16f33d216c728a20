//! Every filesystem operation as a plain function returning `Result<_, FsError>`: the FUSE
//! adapter is a thin layer over this, and tests can drive it without a mount.
//!
//! The functions are synchronous (FUSE threads call them) and drive their network work on the
//! calling thread (`remote::drive`); background work (uploads, read-ahead) runs on the
//! mount's async runtime ([`Shared::spawn`]).
//!
//! By concern: [`namespace`] (lookups, attributes, names), [`listing`] (directory
//! listings), [`create`] (new files, and creating them on the server), [`files`] (open files:
//! reads, writes, flushes, releases), [`uploader`] and [`leases`] (closing new files under
//! directory leases, see [`behind`]), [`coherence`] (what the kernel keeps), [`xattr`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use proto::ErrorKind;
use proto::v1::{Attr, Timestamp};

pub mod behind;
mod coherence;
mod create;
mod files;
mod leases;
mod listing;
mod namespace;
mod uploader;
mod xattr;

use self::behind::Behind;
use crate::error::FsError;
use crate::file::FileState;
use crate::shared::Shared;

type SharedFile = Arc<tokio::sync::Mutex<FileState>>;
/// A directory's entries with their attributes, as `opendir` saw them.
pub type Listing = Arc<Vec<(Vec<u8>, Attr)>>;

/// Readdir pages fetched from the server at once.
const READDIR_PAGE: u32 = 1024;
/// A directory larger than this is listed only this far (each `opendir` snapshots it).
const READDIR_ENTRIES_MAX: usize = 1_000_000;

#[derive(Debug)]
enum Handle {
    File {
        ino: u64,
        file: SharedFile,
        /// Set-ID bits were checked for a write by a user without CAP_FSETID.
        setid_checked: bool,
    },
    Dir {
        listing: Listing,
        /// `Remote::changes` before the listing was read.
        changes: u64,
    },
}

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
    files: Mutex<HashMap<u64, SharedFile>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_handle: AtomicU64,
    /// The inode version each file had when this client last read or wrote it.
    versions: Mutex<HashMap<u64, u64>>,
    /// Files whose pages in the kernel's cache may lack another writer's merged changes.
    stale_pages: Mutex<std::collections::HashSet<u64>>,
    /// Attributes from this client's own latest commits, trusted for a moment.
    attrs: Mutex<HashMap<u64, (std::time::Instant, Attr)>>,
    /// The inode version of the attributes the kernel was last given for each inode (it keeps
    /// them for `fuse::TTL`).
    kernel_versions: Mutex<HashMap<u64, u64>>,
    /// Tells the kernel to drop attributes it keeps (set once the session exists).
    notifier: std::sync::OnceLock<fuser::Notifier>,
    /// New files closed under a directory lease, waiting for the uploader.
    behind: Behind,
    /// This vault, for its background work (set by [`Vault::start_behind`]).
    me: std::sync::OnceLock<std::sync::Weak<Vault>>,
    /// Listening for storaged's recalls: only then may this client hold leases.
    hearing: std::sync::atomic::AtomicBool,
}

/// A time as the wire carries it.
pub fn stamp(time: std::time::SystemTime) -> Timestamp {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos(),
    }
}

/// How often an open retries when the state it found was retired by a racing release.
const OPEN_ATTEMPTS: usize = 8;
/// Inodes whose kernel-side attribute version is tracked (beyond it, the table starts over:
/// an untracked inode is caught up at its next open anyway).
const KERNEL_VERSIONS_MAX: usize = 100_000;
/// How long attributes from this client's own commit answer `getattr` without a round trip.
const FRESH_ATTR_LIFETIME: std::time::Duration = std::time::Duration::from_millis(250);

impl Vault {
    pub fn new(shared: Arc<Shared>) -> Vault {
        Vault {
            shared,
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            versions: Mutex::new(HashMap::new()),
            attrs: Mutex::new(HashMap::new()),
            kernel_versions: Mutex::new(HashMap::new()),
            notifier: std::sync::OnceLock::new(),
            behind: Behind::default(),
            me: std::sync::OnceLock::new(),
            hearing: std::sync::atomic::AtomicBool::new(false),
            stale_pages: Mutex::new(std::collections::HashSet::new()),
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn block<T>(&self, work: impl Future<Output = T>) -> T {
        crate::remote::drive(work)
    }

    fn add_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .expect("handles poisoned")
            .insert(fh, handle);
        fh
    }

    fn file_of(&self, fh: u64) -> Result<(u64, SharedFile), FsError> {
        match self.handles.lock().expect("handles poisoned").get(&fh) {
            Some(Handle::File { ino, file, .. }) => Ok((*ino, file.clone())),
            _ => Err(FsError::local(
                ErrorKind::Invalid,
                format!("no open file handle {fh}"),
            )),
        }
    }

    fn open_file(&self, ino: u64) -> Option<SharedFile> {
        self.files
            .lock()
            .expect("files poisoned")
            .get(&ino)
            .cloned()
    }

    /// `local_view` for a caller outside the runtime (a listing taken earlier).
    pub fn local_attr(&self, attr: Attr) -> Attr {
        self.block(self.local_view(attr))
    }

    /// A file's attributes as this client sees them: an open file with local writes shows
    /// its local size, and the attribute changes it keeps for its next commit.
    async fn local_view(&self, attr: Attr) -> Attr {
        match self.open_file(attr.ino) {
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
        let open = self.files.lock().expect("files poisoned").len();
        (cache, dirty, open)
    }
}
