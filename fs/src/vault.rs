//! Every filesystem operation as a plain function returning `Result<_, FsError>`: the FUSE
//! adapter is a thin layer over this, and tests can drive it without a mount.
//!
//! The functions are synchronous (FUSE threads call them) and drive their network work on the
//! calling thread (`remote::drive`); background work (uploads, read-ahead) runs on the
//! mount's async runtime ([`Shared::spawn`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crypto::DataKey;
use proto::ErrorKind;
use proto::v1::*;

use crate::behind::Behind;
use crate::dirs::Answer;
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

/// The entries of `dir` with their attributes, page by page, up to about `max`; whether that
/// was all.
async fn read_dir(
    shared: &Shared,
    dir: u64,
    max: usize,
) -> Result<(Vec<(Vec<u8>, Attr)>, bool), FsError> {
    let mut entries = Vec::new();
    let mut after = Vec::new();
    loop {
        let page = shared
            .remote
            .call("read_dir", |mut api| {
                let after = after.clone();
                async move {
                    api.read_dir(ReadDirRequest {
                        ino: dir,
                        after,
                        limit: READDIR_PAGE,
                    })
                    .await
                }
            })
            .await?;
        after = page
            .entries
            .last()
            .map(|e| e.name.clone())
            .unwrap_or_default();
        entries.extend(
            page.entries
                .into_iter()
                .filter_map(|e| Some((e.name, e.attr?))),
        );
        if !page.more || entries.len() >= max {
            return Ok((entries, !page.more));
        }
    }
}

/// Lists `dir` so that the next lookups there are answered here (see `dirs`): its attributes
/// before and after must show one version, or the listing is not used.
async fn list_for_lookups(shared: &Shared, dir: u64) -> Result<(), FsError> {
    let asked = Instant::now();
    let changes = shared.remote.changes();
    let get_attr = || {
        shared.remote.call("get_attr", |mut api| async move {
            api.get_attr(GetAttrRequest { ino: dir }).await
        })
    };
    let before = get_attr().await?;
    if !before.may_read {
        return Ok(());
    }
    let (entries, whole) = read_dir(shared, dir, crate::dirs::LISTED_ENTRIES_MAX + 1).await?;
    if !whole || get_attr().await?.version != before.version {
        return Ok(());
    }
    let mut dirs = shared.dirs();
    dirs.listed(&before, entries, asked, changes, shared.remote.changes());
    Ok(())
}

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

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        self.block(async {
            if let Some(attr) = self.shared.pending_named(parent, name) {
                return Ok(self.local_view(attr).await);
            }
            if let Some(answer) = self.known_answer(parent, name).await {
                return answer;
            }
            if self.shared.dirs().should_list(parent, Instant::now()) {
                // Here, not in the background: changes of this client's own meanwhile (the
                // program's next, say) would void it.
                let started = Instant::now();
                let listed = list_for_lookups(&self.shared, parent).await;
                tracing::debug!(?listed, took = ?started.elapsed(), "listed a directory for lookups");
                if let Some(answer) = self.known_answer(parent, name).await {
                    return answer;
                }
            }
            let name_owned = name.to_vec();
            let attr = self
                .shared
                .remote
                .call("lookup", |mut api| {
                    let name = name_owned.clone();
                    async move { api.lookup(LookupRequest { parent, name }).await }
                })
                .await?;
            self.shared.remember_name(attr.ino, name);
            self.learn_attr(&attr);
            Ok(self.local_view(attr).await)
        })
    }

    /// A lookup's answer from what this client knows of the directory, if it knows enough.
    async fn known_answer(&self, parent: u64, name: &[u8]) -> Option<Result<Attr, FsError>> {
        let changes = self.shared.remote.changes();
        let answer = self
            .shared
            .dirs()
            .answer(parent, name, Instant::now(), changes);
        match answer {
            Answer::Ask => None,
            Answer::Absent => Some(Err(FsError::local(ErrorKind::NotFound, "no such entry"))),
            Answer::Present(listed) => {
                self.shared.remember_name(listed.ino, name);
                let attr = self.fresh_attr(listed.ino).unwrap_or(listed);
                Some(Ok(self.local_view(attr).await))
            }
        }
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        if let Some(attr) = self
            .fresh_attr(ino)
            .or_else(|| self.shared.pending_attr(ino))
        {
            return Ok(self.block(self.local_view(attr)));
        }
        self.block(async {
            let attr = self
                .shared
                .remote
                .call("get_attr", |mut api| async move {
                    api.get_attr(GetAttrRequest { ino }).await
                })
                .await?;
            self.learn_attr(&attr);
            Ok(self.local_view(attr).await)
        })
    }

    /// Attributes this client learnt moments ago (a lookup, a create, a commit): the kernel
    /// asks again right after it changed something in a directory (to check permissions on the
    /// next path walk), and a round trip would tell it nothing new. Any namespace change of
    /// this client forgets them all (unlink and rmdir then learn the directory's new ones).
    fn fresh_attr(&self, ino: u64) -> Option<Attr> {
        let mut attrs = self.attrs.lock().expect("attrs poisoned");
        match attrs.get(&ino) {
            Some((at, attr)) if at.elapsed() < FRESH_ATTR_LIFETIME => Some(*attr),
            Some(_) => {
                attrs.remove(&ino);
                None
            }
            None => None,
        }
    }

    fn learn_attr(&self, attr: &Attr) {
        let mut attrs = self.attrs.lock().expect("attrs poisoned");
        if attrs.len() > 4096 {
            attrs.retain(|_, (at, _)| at.elapsed() < FRESH_ATTR_LIFETIME);
        }
        attrs.insert(attr.ino, (std::time::Instant::now(), *attr));
    }

    pub fn setattr(&self, ino: u64, changes: &Changes) -> Result<Attr, FsError> {
        self.block(async {
            let rest = SetAttrRequest {
                lazy: true,
                ino,
                perm: changes.perm,
                uid: changes.uid,
                gid: changes.gid,
                size: None,
                atime: changes.atime,
                mtime: changes.mtime,
                atime_now: changes.atime_now,
                mtime_now: changes.mtime_now,
            };
            if changes.size.is_none()
                && self
                    .shared
                    .remote
                    .server_has(proto::features::COMMIT_SET_ATTR)
                && let Some(file) = self.open_file(ino)
                && let Some(attr) = file
                    .lock()
                    .await
                    .keep_attr_changes(rest, self.shared.keys.uid())
            {
                // They go with the writes not flushed yet (see `FileState::keep_attr_changes`).
                self.learn_attr(&attr);
                return Ok(attr);
            }
            self.materialize(ino).await?;
            let asked = Instant::now();
            if let Some(size) = changes.size {
                self.truncate(ino, size).await?;
            }
            let set_attr = |request: SetAttrRequest| {
                self.shared
                    .remote
                    .call("set_attr", move |mut api| async move {
                        api.set_attr(request).await
                    })
            };
            let attr = match self.open_file(ino) {
                Some(file) => {
                    // Changes kept for a commit go along, first, so that these override them.
                    let mut state = file.lock().await;
                    let attr = set_attr(state.with_kept_attr_changes(rest)).await?;
                    state.kept_attr_changes_sent(&attr);
                    state.view(attr)
                }
                None => set_attr(rest).await?,
            };
            if attr.kind == FileKind::Directory as i32 {
                self.shared.dirs().touched(ino, attr.version, asked);
            }
            self.learn_attr(&attr);
            Ok(attr)
        })
    }

    async fn truncate(&self, ino: u64, size: u64) -> Result<(), FsError> {
        let file = match self.open_file(ino) {
            Some(file) => file,
            None => Arc::new(tokio::sync::Mutex::new(
                FileState::open(&self.shared, ino).await?,
            )),
        };
        let mut state = file.lock().await;
        let attr = state.truncate(&self.shared, size).await?;
        self.record_commit(&attr, &mut state);
        Ok(())
    }

    pub fn mkdir(
        &self,
        parent: u64,
        name: &[u8],
        perm: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Attr, FsError> {
        let name = name.to_vec();
        let asked = Instant::now();
        let made = self.block(self.shared.remote.call("mkdir", |mut api| {
            let name = name.clone();
            async move {
                api.mkdir(MkdirRequest {
                    lazy: true,
                    parent,
                    name,
                    perm,
                    uid,
                    gid,
                })
                .await
            }
        }));
        let mut dirs = self.shared.dirs();
        dirs.added(parent, &name, made.as_ref().ok(), asked);
        if let Ok(dir) = &made {
            dirs.made(dir, asked);
        }
        made
    }

    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        kind: FileKind,
        perm: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    ) -> Result<Attr, FsError> {
        let name = name.to_vec();
        let asked = Instant::now();
        let made = self.block(self.shared.remote.call("mknod", |mut api| {
            let name = name.clone();
            async move {
                api.mknod(MknodRequest {
                    lazy: true,
                    parent,
                    name,
                    kind: kind as i32,
                    perm,
                    uid,
                    gid,
                    rdev,
                })
                .await
            }
        }));
        let reply = made.as_ref().ok();
        self.shared.dirs().added(parent, &name, reply, asked);
        made
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Attr, FsError> {
        let (name, target) = (name.to_vec(), target.to_vec());
        let asked = Instant::now();
        let made = self.block(self.shared.remote.call("symlink", |mut api| {
            let (name, target) = (name.clone(), target.clone());
            async move {
                api.symlink(SymlinkRequest {
                    lazy: true,
                    parent,
                    name,
                    target,
                    uid,
                    gid,
                })
                .await
            }
        }));
        let reply = made.as_ref().ok();
        self.shared.dirs().added(parent, &name, reply, asked);
        made
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        self.block(self.shared.remote.call("read_link", |mut api| async move {
            api.read_link(ReadLinkRequest { ino }).await
        }))
        .map(|r| r.target)
    }

    pub fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> Result<Attr, FsError> {
        self.attrs.lock().expect("attrs poisoned").clear();
        let new_name = new_name.to_vec();
        self.block(async {
            self.materialize(ino).await?;
            let asked = Instant::now();
            let linked = self
                .shared
                .remote
                .call("link", |mut api| {
                    let new_name = new_name.clone();
                    async move {
                        api.link(LinkRequest {
                            lazy: true,
                            ino,
                            new_parent,
                            new_name,
                        })
                        .await
                    }
                })
                .await;
            let reply = linked.as_ref().ok();
            self.shared
                .dirs()
                .added(new_parent, &new_name, reply, asked);
            Ok(self.local_view(linked?).await)
        })
    }

    /// The inode behind a name, if this client has it open (so that removing the name keeps
    /// the data until the last close).
    async fn open_inode_named(&self, parent: u64, name: &[u8]) -> Option<SharedFile> {
        if self.files.lock().expect("files poisoned").is_empty() {
            return None;
        }
        let name = name.to_vec();
        let attr = self
            .shared
            .remote
            .call("lookup", |mut api| {
                let name = name.clone();
                async move { api.lookup(LookupRequest { parent, name }).await }
            })
            .await
            .ok()?;
        self.open_file(attr.ino)
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        self.attrs.lock().expect("attrs poisoned").clear();
        self.block(async {
            self.materialize_in(Some(parent)).await?;
            let open = self.open_inode_named(parent, name).await;
            let keep_open = open.is_some();
            let name = name.to_vec();
            let asked = Instant::now();
            let changes = self.shared.remote.changes();
            let reply = self
                .shared
                .remote
                .call("unlink", |mut api| {
                    let name = name.clone();
                    async move {
                        api.unlink(UnlinkRequest {
                            lazy: true,
                            parent,
                            name,
                            keep_open,
                        })
                        .await
                    }
                })
                .await;
            let after = reply.as_ref().ok().and_then(|r| r.parent.as_ref());
            {
                let mut dirs = self.shared.dirs();
                dirs.removed(parent, &name, after, asked);
                if reply.as_ref().is_ok_and(|r| r.nlink == 0) {
                    // The inode went with its one name: no other entry's attributes changed.
                    dirs.listing_survives(parent, changes, self.shared.remote.changes());
                }
            }
            let reply = reply?;
            // The kernel asks for the directory's attributes next (they changed).
            if let Some(parent) = &reply.parent {
                self.learn_attr(parent);
            }
            if let Some(file) = open {
                file.lock().await.life.name_removed(reply.nlink == 0);
            }
            Ok(())
        })
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        self.attrs.lock().expect("attrs poisoned").clear();
        // The directory may hold new files not created on the server yet.
        self.block(self.materialize_in(None))?;
        let name = name.to_vec();
        let asked = Instant::now();
        let reply = self.block(self.shared.remote.call("rmdir", |mut api| {
            let name = name.clone();
            async move {
                api.rmdir(RmdirRequest {
                    lazy: true,
                    parent,
                    name,
                })
                .await
            }
        }));
        let after = reply.as_ref().ok().and_then(|r| r.parent.as_ref());
        self.shared.dirs().removed(parent, &name, after, asked);
        let reply = reply?;
        // The kernel asks for the directory's attributes next (they changed).
        if let Some(parent) = &reply.parent {
            self.learn_attr(parent);
        }
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        mode: RenameMode,
    ) -> Result<(), FsError> {
        self.attrs.lock().expect("attrs poisoned").clear();
        let (name, new_name) = (name.to_vec(), new_name.to_vec());
        self.block(async {
            self.materialize_in(Some(parent)).await?;
            self.materialize_in(Some(new_parent)).await?;
            let reply = self
                .shared
                .remote
                .call("rename", |mut api| {
                    let (name, new_name) = (name.clone(), new_name.clone());
                    async move {
                        api.rename(RenameRequest {
                            lazy: true,
                            parent,
                            name,
                            new_parent,
                            new_name,
                            no_replace: mode == RenameMode::NoReplace,
                            exchange: mode == RenameMode::Exchange,
                        })
                        .await
                    }
                })
                .await;
            // Names moved in both directories (and a replaced one may be gone).
            {
                let mut dirs = self.shared.dirs();
                dirs.forget(parent);
                dirs.forget(new_parent);
            }
            let reply = reply?;
            let replaced = reply.replaced_ino;
            if replaced != 0 {
                match self.open_file(replaced) {
                    Some(file) => file.lock().await.life.name_removed(true),
                    None => self.release_orphan(replaced).await,
                }
            }
            Ok(())
        })
    }

    async fn release_orphan(&self, ino: u64) {
        let released = self
            .shared
            .remote
            .call("release", |mut api| async move {
                api.release(ReleaseRequest { lazy: true, ino }).await
            })
            .await;
        if let Err(error) = released {
            tracing::warn!(%error, ino = %format!("{ino:016x}"), "could not free an unlinked file; the server frees it later");
        }
    }

    /// Creates a regular file with a fresh key and opens it.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        perm: u32,
        exclusive: bool,
        uid: u32,
        gid: u32,
    ) -> Result<(Attr, u64), FsError> {
        self.block(async {
            let ino = loop {
                let candidate = u64::from_le_bytes(identity::random_bytes());
                if candidate > 1 {
                    break candidate;
                }
            };
            let key = DataKey::generate();
            let wrapped_keys = self.shared.keys.wrap_new_file(ino, &key, parent).await?;
            // Created on the server at its first flush, with its first chunk (one round trip
            // for a small file instead of two). O_EXCL asks the server now, its answer atomic
            // with the open, unless this client holds the directory's lease and knows its
            // every name: then no other client can take the name before this one is there.
            let pending = CreateRequest {
                lazy: true,
                parent,
                name: name.to_vec(),
                perm,
                uid,
                gid,
                ino,
                wrapped_keys,
                exclusive: true,
            };
            if !exclusive {
                return Ok(self.created_pending(ino, &key, parent, pending));
            }
            if let Some(created) = self.created_exclusive_here(ino, &key, &pending) {
                return Ok(created);
            }
            let asked = Instant::now();
            let created = self
                .shared
                .remote
                .call("create", |mut api| {
                    let request = pending.clone();
                    async move { api.create(request).await }
                })
                .await;
            let reply = created.as_ref().ok();
            self.shared.dirs().added(parent, name, reply, asked);
            let attr = created?;
            self.shared.remember_name(attr.ino, name);
            self.learn_attr(&attr);
            self.ask_lease(parent);
            if attr.ino != ino {
                // Not exclusive, and the name existed: open that file as it is.
                let fh = self.open_async(attr.ino).await?.0;
                return Ok((attr, fh));
            }
            Ok(self.created_known(ino, &key, attr, None))
        })
    }

    /// A new file to be created on the server at its first flush, with the attributes the
    /// server will give it.
    fn created_pending(
        &self,
        ino: u64,
        key: &DataKey,
        parent: u64,
        request: CreateRequest,
    ) -> (Attr, u64) {
        let attr = self.new_file_attr(ino, &request);
        self.shared.add_pending(
            ino,
            crate::shared::Pending {
                parent,
                name: request.name.clone(),
                attr,
            },
        );
        self.created_known(ino, key, attr, Some(request))
    }

    /// An `O_EXCL` create decided here (see `create`): only under the directory's lease, in
    /// a directory whose every name this client knows (proven after the grant), for a name
    /// absent there and not pending. The file is pending and open before the lease can be
    /// recalled, so a recall's drain creates it on the server before anyone else may ask for
    /// the name.
    fn created_exclusive_here(
        &self,
        ino: u64,
        key: &DataKey,
        request: &CreateRequest,
    ) -> Option<(Attr, u64)> {
        let (parent, name) = (request.parent, &request.name);
        let mut created = None;
        self.behind.while_held(parent, || {
            let free = self.shared.dirs().absent(parent, name, Instant::now())
                && self.shared.pending_named(parent, name).is_none();
            if free {
                created = Some(self.created_pending(ino, key, parent, request.clone()));
            }
            free
        });
        created.inspect(|_| self.shared.remember_name(ino, name))
    }

    /// The attributes the server will give a new file it creates from `request`.
    fn new_file_attr(&self, ino: u64, request: &CreateRequest) -> Attr {
        let now = Some(stamp(std::time::SystemTime::now()));
        Attr {
            ino,
            kind: FileKind::Regular as i32,
            perm: request.perm & 0o7777,
            uid: request.uid,
            gid: request.gid,
            nlink: 1,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            rdev: 0,
            owner: self.shared.keys.uid(),
            version: 1,
            may_read: true,
            may_write: true,
            parent_version: 0,
        }
    }

    /// A new file this client made: created on the server already (`pending` is none), or
    /// waiting for its first flush.
    fn created_known(
        &self,
        ino: u64,
        key: &DataKey,
        attr: Attr,
        pending: Option<CreateRequest>,
    ) -> (Attr, u64) {
        // A new, empty file: its state is known without asking the server.
        let cipher = self.shared.keys.remember(ino, key);
        let state = FileState::created(ino, cipher, &attr, pending);
        let file = Arc::new(tokio::sync::Mutex::new(state));
        self.files
            .lock()
            .expect("files poisoned")
            .insert(ino, file.clone());
        self.versions
            .lock()
            .expect("versions poisoned")
            .insert(ino, attr.version);
        self.learn_attr(&attr);
        (
            attr,
            self.add_handle(Handle::File {
                ino,
                file,
                setid_checked: false,
            }),
        )
    }

    /// Creates a pending new file on the server now, before anything that needs it there.
    async fn materialize(&self, ino: u64) -> Result<(), FsError> {
        if self.shared.pending_attr(ino).is_none() {
            return Ok(());
        }
        if let Some(file) = self.open_file(ino) {
            let mut state = file.lock().await;
            if self.closed(&state) {
                // Closed, and queued for the uploader: send it whole now.
                return self.send_closed(ino, &file, &mut state).await;
            }
            if let Some(attr) = state.materialize(&self.shared, false).await? {
                self.record_commit(&attr, &mut state);
            }
        }
        Ok(())
    }

    /// Whether the file was closed: its last handle is gone, or a close queued it while a
    /// release is still to come.
    fn closed(&self, state: &FileState) -> bool {
        state.life.handles() == 0 || self.behind.is_queued(state.ino)
    }

    /// Sends what a closed file (its last handle gone, or closed under a lease, see
    /// [`crate::behind`]) has not sent yet, and retires it once nothing is left; an unlinked
    /// one is freed instead.
    async fn send_closed(
        &self,
        ino: u64,
        file: &SharedFile,
        state: &mut FileState,
    ) -> Result<(), FsError> {
        let sent = if state.life.unlinked() && state.life.handles() == 0 {
            state.discard(&self.shared);
            self.release_orphan(ino).await;
            Ok(())
        } else {
            let flushed = state.flush(&self.shared, false).await;
            flushed.map(|attr| {
                if let Some(attr) = attr {
                    self.record_commit(&attr, state);
                }
            })
        };
        self.retire_if_done(ino, file, state);
        sent
    }

    /// The uploader's part: sends queued files that still wait; the new ones of one chunk
    /// together, in one call.
    fn send_queued(&self, inos: Vec<u64>) {
        self.block(async {
            let mut puts = Vec::new();
            let mut alone = Vec::new();
            for ino in inos {
                let Some(file) = self.open_file(ino) else {
                    continue;
                };
                // Never wait for one file while holding others.
                let Ok(mut state) = file.clone().try_lock_owned() else {
                    alone.push(ino);
                    continue;
                };
                if !state.life.is_closed() {
                    // Opened again (its next close sends it, or queues it again), or retired.
                    continue;
                }
                match state.creating_put(&self.shared).await {
                    Ok(Some(put)) => puts.push((ino, file, state, put)),
                    Ok(None) => alone.push(ino),
                    Err(error) => self.not_sent(ino, error),
                }
            }
            let outcomes = self.put_together(puts.iter().map(|p| &p.3)).await;
            for ((ino, file, mut state, put), outcome) in puts.into_iter().zip(outcomes) {
                match state.inline_done(&self.shared, put, outcome) {
                    Ok(attr) => self.record_commit(&attr, &mut state),
                    Err(error) => self.not_sent(ino, error),
                }
                self.retire_if_done(ino, &file, &mut state);
            }
            for ino in alone {
                let Some(file) = self.open_file(ino) else {
                    continue;
                };
                let mut state = file.lock().await;
                if !state.life.is_closed() {
                    continue;
                }
                if let Err(error) = self.send_closed(ino, &file, &mut state).await {
                    self.not_sent(ino, error);
                }
            }
        });
    }

    /// Sends puts in one `PutChunks` call (one by one to a server without it); the outcome of
    /// each, in order.
    async fn put_together<'a>(
        &self,
        puts: impl Iterator<Item = &'a crate::file::InlinePut>,
    ) -> Vec<Result<PutChunkReply, FsError>> {
        let requests: Vec<PutChunkRequest> = puts.map(|put| put.request.clone()).collect();
        let remote = &self.shared.remote;
        if requests.len() < 2 || !remote.server_has(proto::features::PUT_CHUNKS) {
            let mut outcomes = Vec::with_capacity(requests.len());
            for request in requests {
                let outcome = remote
                    .call("put_chunk", |mut api| {
                        let request = request.clone();
                        async move { api.put_chunk(request).await }
                    })
                    .await;
                outcomes.push(outcome);
            }
            return outcomes;
        }
        let count = requests.len();
        let reply = remote
            .call("put_chunks", |mut api| {
                let puts = requests.clone();
                async move { api.put_chunks(PutChunksRequest { puts }).await }
            })
            .await;
        match reply {
            Ok(reply) if reply.outcomes.len() == count => reply
                .outcomes
                .into_iter()
                .map(|outcome| match outcome.reply {
                    Some(reply) => Ok(reply),
                    None => Err(FsError::Remote {
                        kind: ErrorKind::try_from(outcome.error_kind)
                            .unwrap_or(ErrorKind::Internal),
                        message: outcome.error,
                    }),
                })
                .collect(),
            Ok(reply) => {
                let error = FsError::local(
                    ErrorKind::Internal,
                    format!("{} outcomes for {count} puts", reply.outcomes.len()),
                );
                vec![Err(error); count]
            }
            Err(error) => vec![Err(error); count],
        }
    }

    /// A queued file could not be sent: queued again if storaged was unreachable, else the
    /// error is logged (a refused new file's data is gone, as at a refused close).
    fn not_sent(&self, ino: u64, error: FsError) {
        let name = self.shared.name_of(ino);
        if error.kind() == ErrorKind::Unavailable && !self.behind.stopping() {
            tracing::warn!(%error, file = name, "storaged unreachable; will send a closed new file again");
            self.behind.defer(ino);
        } else {
            tracing::error!(%error, file = name, "could not send a closed new file to the server");
        }
    }

    /// Creates every pending new file in `parent` (or everywhere) on the server now: before
    /// listing, renaming or removing names there.
    async fn materialize_in(&self, parent: Option<u64>) -> Result<(), FsError> {
        for ino in self.shared.pending_in(parent) {
            self.materialize(ino).await?;
        }
        Ok(())
    }

    /// Opens a file: revalidates it against the server (close-to-open consistency) and says
    /// whether the kernel may keep its cached pages.
    pub fn open(&self, ino: u64) -> Result<(u64, bool), FsError> {
        self.block(self.open_async(ino))
    }

    async fn open_async(&self, ino: u64) -> Result<(u64, bool), FsError> {
        // A release racing with this open may retire the state found in the table; it
        // leaves the table first, so a second look finds a fresh one.
        for _ in 0..OPEN_ATTEMPTS {
            let existing = self.open_file(ino);
            let file = match existing {
                Some(file) => file,
                None => {
                    let state = FileState::open(&self.shared, ino).await?;
                    if let Some(attr) = state.server_attr() {
                        self.kernel_catches_up(&attr);
                        // As fresh as a getattr now: the kernel asks for them next.
                        self.learn_attr(&attr);
                    }
                    let file = Arc::new(tokio::sync::Mutex::new(state));
                    self.files
                        .lock()
                        .expect("files poisoned")
                        .entry(ino)
                        .or_insert(file)
                        .clone()
                }
            };
            let version = {
                let mut state = file.lock().await;
                if !state.life.open_handle() {
                    continue;
                }
                state.version
            };
            return Ok(self.opened(ino, file, version));
        }
        Err(FsError::local(
            ErrorKind::Internal,
            format!("file {ino:016x} kept closing while being opened"),
        ))
    }

    /// Registers a handle on a file just opened; says whether the kernel may keep its pages.
    fn opened(&self, ino: u64, file: SharedFile, version: u64) -> (u64, bool) {
        let previous = self
            .versions
            .lock()
            .expect("versions poisoned")
            .insert(ino, version);
        let stale = self
            .stale_pages
            .lock()
            .expect("stale pages poisoned")
            .remove(&ino);
        let keep_cache = previous == Some(version) && !stale;
        if !keep_cache {
            self.shared
                .cache
                .lock()
                .expect("cache poisoned")
                .forget_file(ino);
        }
        (
            self.add_handle(Handle::File {
                ino,
                file,
                setid_checked: false,
            }),
            keep_cache,
        )
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<bytes::Bytes, FsError> {
        let (_, file) = self.file_of(fh)?;
        self.block(async { file.lock().await.read(&self.shared, offset, size).await })
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize, FsError> {
        let (_, file) = self.file_of(fh)?;
        self.block(async { file.lock().await.write(&self.shared, offset, data).await })?;
        Ok(data.len())
    }

    /// A write by a user without CAP_FSETID drops the file's set-user-ID bit, and its
    /// set-group-ID bit when group execution is allowed (what the kernel does itself for
    /// writes through its page cache; for direct writes it leaves it to the filesystem). Checked
    /// once per open file.
    pub fn drop_setid_bits(&self, fh: u64) -> Result<(), FsError> {
        let ino = match self.handles.lock().expect("handles poisoned").get_mut(&fh) {
            Some(Handle::File {
                ino, setid_checked, ..
            }) if !*setid_checked => {
                *setid_checked = true;
                *ino
            }
            _ => return Ok(()),
        };
        let perm = self.getattr(ino)?.perm & 0o7777;
        let cleared = if perm & 0o010 != 0 { 0o6000 } else { 0o4000 };
        if perm & cleared == 0 {
            return Ok(());
        }
        let changes = Changes {
            perm: Some(perm & !cleared),
            ..Changes::default()
        };
        self.setattr(ino, &changes).map(|_| ())
    }

    /// close(2): everything written through this file becomes current on the server, seen by
    /// every later open (close-to-open consistency).
    pub fn flush(&self, fh: u64) -> Result<(), FsError> {
        self.flush_as(fh, false)
    }

    /// fsync(2): as close, and durable on the server, with every change this client made
    /// before (the file's creation and name among them).
    pub fn fsync(&self, fh: u64) -> Result<(), FsError> {
        self.flush_as(fh, true)
    }

    fn flush_as(&self, fh: u64, durable: bool) -> Result<(), FsError> {
        let (ino, file) = self.file_of(fh)?;
        self.block(async {
            if durable {
                // The files this client closed before are on the server before the durable
                // commit that covers them.
                self.send_closed_except(ino).await?;
            }
            let mut state = file.lock().await;
            if !durable && self.defers(&state) {
                return Ok(());
            }
            let new_in = state.life.pending().map(|c| c.parent);
            match state.flush(&self.shared, durable).await? {
                Some(attr) => self.record_commit(&attr, &mut state),
                // A durable commit covers what came before it; without one, ask.
                None if durable => self.sync_async().await?,
                None => {}
            }
            if let Some(dir) = new_in {
                self.ask_lease(dir);
            }
            Ok(())
        })
    }

    /// Whether the close of this file may return before the server has it (see
    /// [`crate::behind`]): a new file, not on the server yet, of at most 64 KiB, in a
    /// directory this client holds a lease on. If so, the file is queued for the uploader.
    fn defers(&self, state: &FileState) -> bool {
        let Some(dir) = state.life.pending().map(|c| c.parent) else {
            return false;
        };
        if state.size > crate::behind::FILE_BYTES_MAX
            || !state.small()
            || !self.behind.may_defer(dir)
        {
            return false;
        }
        self.behind.defer(state.ino);
        true
    }

    /// Asks storaged, in the background, for a lease on `dir`, where this client just created
    /// a file, unless it holds one, asked already, or gave one back a moment ago.
    fn ask_lease(&self, dir: u64) {
        let remote = &self.shared.remote;
        if !remote.server_has(proto::features::LEASES)
            || !self.recalls_heard()
            || !self.behind.should_ask(dir)
        {
            return;
        }
        let Some(me) = self.me.get().cloned() else {
            return;
        };
        let remote = remote.clone();
        self.shared.spawn(async move {
            let reply = lease_call(&remote, dir, false).await;
            if let Err(error) = &reply {
                tracing::debug!(%error, dir = %format!("{dir:016x}"), "no lease");
            }
            let Some(vault) = me.upgrade() else {
                return;
            };
            let granted = reply.is_ok_and(|r| r.granted);
            if granted {
                // The closes from now on go unanswered for a moment: what this client knows
                // of the directory must first be proven by a change asked for after the
                // grant (another client may have changed it just before).
                vault.shared.dirs().distrust(dir, Instant::now());
            }
            vault.behind.answered(dir, granted);
        });
    }

    fn recalls_heard(&self) -> bool {
        self.hearing.load(Ordering::SeqCst)
    }

    /// Starts closing new files under directory leases when the server grants them (see
    /// [`crate::behind`]): the uploader thread, and listening for recalls.
    pub fn start_behind(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        if self.me.set(me.clone()).is_err()
            || !self.shared.remote.server_has(proto::features::LEASES)
        {
            return;
        }
        // One uploader: its calls, and so the directory versions their replies carry, come
        // in order.
        let uploader = me.clone();
        let started = std::thread::Builder::new()
            .name("vaultfs-behind".into())
            .spawn(move || {
                while let Some(vault) = uploader.upgrade() {
                    if vault.behind.stopping() {
                        return;
                    }
                    for dir in vault.behind.idle(crate::behind::LEASE_IDLE) {
                        let giving = vault.clone();
                        vault
                            .shared
                            .spawn(async move { giving.give_back(dir).await });
                    }
                    let queued = vault.behind.next(
                        proto::limits::PUTS_PER_CALL_MAX,
                        std::time::Duration::from_secs(1),
                    );
                    if !queued.is_empty() {
                        vault.send_queued(queued);
                    }
                }
            });
        if let Err(error) = started {
            tracing::warn!(%error, "no uploader thread: every close waits for the server");
            return;
        }
        self.shared
            .spawn(hear_recalls(me, self.shared.remote.clone()));
    }

    /// Gives the lease on `dir` back (storaged recalled it, or no close used it for a while):
    /// sends every new file still held there first.
    async fn give_back(&self, dir: u64) {
        self.behind.recalled(dir);
        if let Err(error) = self.send_held_in(Some(dir)).await {
            tracing::error!(%error, dir = %format!("{dir:016x}"), "could not send the files closed under a recalled lease");
        }
        let given = lease_call(&self.shared.remote, dir, true).await;
        if let Err(error) = given {
            tracing::warn!(%error, dir = %format!("{dir:016x}"), "could not give a lease back; the server takes it");
        }
        self.behind.given_back(dir);
    }

    /// Sends every new file this client closed but has not sent yet, but `skip`.
    async fn send_closed_except(&self, skip: u64) -> Result<(), FsError> {
        for ino in self.shared.pending_in(None) {
            let Some(file) = self.open_file(ino).filter(|_| ino != skip) else {
                continue;
            };
            let mut state = file.lock().await;
            if !state.life.is_retired() && self.closed(&state) {
                self.send_closed(ino, &file, &mut state).await?;
            }
        }
        Ok(())
    }

    /// Sends every new file of `dir` (or everywhere) not on the server yet: whole, also one
    /// still open (a close may have returned before its release came).
    async fn send_held_in(&self, dir: Option<u64>) -> Result<(), FsError> {
        let mut first_error = None;
        for ino in self.shared.pending_in(dir) {
            let Some(file) = self.open_file(ino) else {
                continue;
            };
            let mut state = file.lock().await;
            if state.life.is_retired() {
                continue;
            }
            if let Err(error) = self.send_closed(ino, &file, &mut state).await {
                if state.life.handles() == 0 {
                    // Queued again if storaged was unreachable.
                    self.not_sent(ino, error.clone());
                }
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// fsyncdir(2), and fsync(2) with nothing left to commit: every change acknowledged so far
    /// becomes durable.
    pub fn sync(&self) -> Result<(), FsError> {
        self.block(self.sync_async())
    }

    async fn sync_async(&self) -> Result<(), FsError> {
        // New files not created on the server yet are created first, so they are covered.
        self.materialize_in(None).await?;
        self.shared
            .remote
            .call(
                "sync",
                |mut api| async move { api.sync(SyncRequest {}).await },
            )
            .await
            .map(drop)
    }

    /// The FUSE session's notifier, once it exists.
    pub fn set_notifier(&self, notifier: fuser::Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// The kernel is given `attr` (a reply carries it).
    pub fn kernel_has(&self, attr: &Attr) {
        let mut versions = self
            .kernel_versions
            .lock()
            .expect("kernel versions poisoned");
        if versions.len() >= KERNEL_VERSIONS_MAX {
            versions.clear();
        }
        versions.insert(attr.ino, attr.version);
    }

    /// An open found the file at `attr` on the server: if the kernel keeps attributes of
    /// another version (from a lookup or a listing before another client's close), it must
    /// drop them, or it would end reads at the size it knows (close-to-open consistency).
    fn kernel_catches_up(&self, attr: &Attr) {
        let known = self
            .kernel_versions
            .lock()
            .expect("kernel versions poisoned")
            .get(&attr.ino)
            .copied();
        if known == Some(attr.version) {
            return;
        }
        if let Some(notifier) = self.notifier.get() {
            // Attributes only (a negative offset); the pages go by the open's own flags.
            // Safe inside the open: the kernel takes no lock of the inode for it.
            if let Err(error) = notifier.inval_inode(fuser::INodeNo(attr.ino), -1, 0) {
                tracing::debug!(%error, ino = %format!("{:016x}", attr.ino), "could not drop the kernel's attributes");
            }
        }
    }

    /// After this client committed a file. When another writer's changes were merged into the
    /// commit, the kernel's cached pages of the file lack them: the next open drops them
    /// (whatever this client commits in between).
    fn record_commit(&self, attr: &Attr, state: &mut FileState) {
        if std::mem::take(&mut state.merged_foreign) {
            self.stale_pages
                .lock()
                .expect("stale pages poisoned")
                .insert(attr.ino);
        }
        self.versions
            .lock()
            .expect("versions poisoned")
            .insert(attr.ino, attr.version);
        self.learn_attr(attr);
    }

    pub fn release(&self, fh: u64) -> Result<(), FsError> {
        let (ino, file) = self.file_of(fh)?;
        self.handles.lock().expect("handles poisoned").remove(&fh);
        self.block(async {
            let mut state = file.lock().await;
            if state.life.close_handle() > 0 {
                return Ok(());
            }
            if !state.life.unlinked() && self.defers(&state) {
                return Ok(());
            }
            self.send_closed(ino, &file, &mut state).await
        })
    }

    /// A file with no handle and nothing left to send leaves the open-files table.
    fn retire_if_done(&self, ino: u64, file: &SharedFile, state: &mut FileState) {
        if state.is_dirty() || !state.life.retire() {
            return;
        }
        let mut files = self.files.lock().expect("files poisoned");
        if files.get(&ino).is_some_and(|f| Arc::ptr_eq(f, file)) {
            files.remove(&ino);
        }
    }

    /// Snapshots a directory listing for `readdir`.
    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let mut listing = Vec::new();
        let mut changes = 0;
        self.block(async {
            self.materialize_in(Some(ino)).await?;
            changes = self.shared.remote.changes();
            let (entries, _) = read_dir(&self.shared, ino, READDIR_ENTRIES_MAX).await?;
            for (name, attr) in entries {
                listing.push((name, self.local_view(attr).await));
            }
            Ok::<(), FsError>(())
        })?;
        Ok(self.add_handle(Handle::Dir {
            listing: Arc::new(listing),
            changes,
        }))
    }

    /// The snapshot taken at `opendir`, and whether its attributes are still current: nothing
    /// was changed through this client since (another client's change shows after the attribute
    /// timeout, as with lookups).
    pub fn listing(&self, fh: u64) -> Result<(Listing, bool), FsError> {
        match self.handles.lock().expect("handles poisoned").get(&fh) {
            Some(Handle::Dir { listing, changes }) => {
                Ok((listing.clone(), *changes == self.shared.remote.changes()))
            }
            _ => Err(FsError::local(
                ErrorKind::Invalid,
                format!("no open directory handle {fh}"),
            )),
        }
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.lock().expect("handles poisoned").remove(&fh);
    }

    pub fn statfs(&self) -> Result<StatFsReply, FsError> {
        self.block(self.shared.remote.call("stat_fs", |mut api| async move {
            api.stat_fs(StatFsRequest {}).await
        }))
    }

    pub fn setxattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        create_only: bool,
        replace_only: bool,
    ) -> Result<(), FsError> {
        self.attrs.lock().expect("attrs poisoned").clear();
        self.block(self.materialize(ino))?;
        let (name, value) = (name.to_vec(), value.to_vec());
        self.block(self.shared.remote.call("set_xattr", |mut api| {
            let (name, value) = (name.clone(), value.clone());
            async move {
                api.set_xattr(SetXattrRequest {
                    lazy: true,
                    ino,
                    name,
                    value,
                    create_only,
                    replace_only,
                })
                .await
            }
        }))
        .map(drop)
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, FsError> {
        if self.shared.pending_attr(ino).is_some() {
            // A new file has no attributes yet (and asking must not create it).
            return Err(FsError::local(ErrorKind::NoData, "no such attribute"));
        }
        let name = name.to_vec();
        self.block(self.shared.remote.call("get_xattr", |mut api| {
            let name = name.clone();
            async move { api.get_xattr(GetXattrRequest { ino, name }).await }
        }))
        .map(|r| r.value)
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>, FsError> {
        if self.shared.pending_attr(ino).is_some() {
            return Ok(Vec::new());
        }
        self.block(self.shared.remote.call("list_xattr", |mut api| async move {
            api.list_xattr(ListXattrRequest { ino }).await
        }))
        .map(|r| r.names)
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> Result<(), FsError> {
        self.attrs.lock().expect("attrs poisoned").clear();
        self.block(self.materialize(ino))?;
        let name = name.to_vec();
        self.block(self.shared.remote.call("remove_xattr", |mut api| {
            let name = name.clone();
            async move {
                api.remove_xattr(RemoveXattrRequest {
                    lazy: true,
                    ino,
                    name,
                })
                .await
            }
        }))
        .map(drop)
    }

    /// Flushes every file with dirty data and makes it all durable (unmount, shutdown). Waits
    /// for an unreachable server once in all, not once per call: after one wait, what is left
    /// fails at once.
    pub fn flush_all(&self) -> Result<(), FsError> {
        self.behind.stop();
        self.shared.remote.shutting_down();
        let files: Vec<(u64, SharedFile)> = self
            .files
            .lock()
            .expect("files poisoned")
            .iter()
            .map(|(&ino, file)| (ino, file.clone()))
            .collect();
        let mut first_error = None;
        for (ino, file) in files {
            let outcome = self.block(async { file.lock().await.flush(&self.shared, false).await });
            if let Err(error) = outcome {
                let file = self.shared.name_of(ino);
                tracing::error!(%error, file, "could not flush a file at unmount");
                first_error.get_or_insert(error);
            }
        }
        if let Err(error) = self.sync() {
            tracing::error!(%error, "could not make the changes durable at unmount");
            first_error.get_or_insert(error);
        }
        first_error.map_or(Ok(()), Err)
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

/// Asks for `dir`'s lease, or gives it back.
async fn lease_call(
    remote: &crate::remote::Remote,
    dir: u64,
    give_back: bool,
) -> Result<LeaseReply, FsError> {
    remote
        .call("lease", |mut api| async move {
            api.lease(LeaseRequest { dir, give_back }).await
        })
        .await
}

/// Listens for storaged's recalls while the mount lasts. When the call ends (storaged
/// restarted, the connection dropped), the server has forgotten this client's leases: what
/// was closed under them is sent at once, and listening starts again.
async fn hear_recalls(me: std::sync::Weak<Vault>, remote: crate::remote::Remote) {
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        let recalls = remote
            .call("recalls", |mut api| async move {
                api.recalls(RecallsRequest {}).await
            })
            .await;
        match recalls {
            Ok(mut recalls) => {
                let Some(vault) = me.upgrade() else {
                    return;
                };
                vault.hearing.store(true, Ordering::SeqCst);
                drop(vault);
                pause = std::time::Duration::from_millis(100);
                while let Ok(Some(recall)) = recalls.message().await {
                    let Some(vault) = me.upgrade() else {
                        return;
                    };
                    tokio::spawn(async move { vault.give_back(recall.dir).await });
                }
            }
            Err(error) => tracing::debug!(%error, "not listening for lease recalls"),
        }
        let Some(vault) = me.upgrade() else {
            return;
        };
        vault.hearing.store(false, Ordering::SeqCst);
        if !vault.behind.lost_all().is_empty()
            && let Err(error) = vault.send_held_in(None).await
        {
            tracing::error!(%error, "could not send the files closed under leases the server forgot");
        }
        if vault.behind.stopping() {
            return;
        }
        drop(vault);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(5));
    }
}
