//! The namespace: looking names up, attributes, and making, linking, removing and renaming
//! names.

use std::sync::Arc;
use std::time::Instant;

use format::ids::{FileId, Version};
use proto::ErrorKind;
use proto::v1::{
    Attr, FileKind, GetAttrRequest, LinkRequest, LookupRequest, MkdirRequest, MknodRequest,
    ReadLinkRequest, ReleaseRequest, RenameRequest, RmdirRequest, SetAttrRequest, StatFsReply,
    StatFsRequest, SymlinkRequest, UnlinkRequest,
};

use super::listing::list_for_lookups;
use super::{Changes, RenameMode, SharedFile, Vault};
use crate::dirs::Answer;
use crate::error::FsError;
use crate::file::FileState;

impl Vault {
    pub fn lookup(&self, parent: FileId, name: &[u8]) -> Result<Attr, FsError> {
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
                    async move { api.lookup(LookupRequest { parent: parent.0, name }).await }
                })
                .await?;
            self.shared.remember_name(FileId(attr.ino), name);
            self.coherence.learn(&attr);
            Ok(self.local_view(attr).await)
        })
    }

    /// A lookup's answer from what this client knows of the directory, if it knows enough.
    async fn known_answer(&self, parent: FileId, name: &[u8]) -> Option<Result<Attr, FsError>> {
        let changes = self.shared.remote.changes();
        let answer = self
            .shared
            .dirs()
            .answer(parent, name, Instant::now(), changes);
        match answer {
            Answer::Ask => None,
            Answer::Absent => Some(Err(FsError::local(ErrorKind::NotFound, "no such entry"))),
            Answer::Present(listed) => {
                let ino = FileId(listed.ino);
                self.shared.remember_name(ino, name);
                let attr = self.coherence.fresh(ino).unwrap_or(listed);
                Some(Ok(self.local_view(attr).await))
            }
        }
    }

    pub fn getattr(&self, ino: FileId) -> Result<Attr, FsError> {
        if let Some(attr) = self
            .coherence
            .fresh(ino)
            .or_else(|| self.shared.pending_attr(ino))
        {
            return Ok(self.block(self.local_view(attr)));
        }
        self.block(async {
            let attr = self
                .shared
                .remote
                .call("get_attr", |mut api| async move {
                    api.get_attr(GetAttrRequest { ino: ino.0 }).await
                })
                .await?;
            self.coherence.learn(&attr);
            Ok(self.local_view(attr).await)
        })
    }

    pub fn setattr(&self, ino: FileId, changes: &Changes) -> Result<Attr, FsError> {
        self.block(async {
            let rest = SetAttrRequest {
                lazy: true,
                ino: ino.0,
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
                && let Some(file) = self.table.file(ino)
                && let Some(attr) = file
                    .lock()
                    .await
                    .keep_attr_changes(rest, self.shared.keys.uid())
            {
                // They go with the writes not flushed yet (see `FileState::keep_attr_changes`).
                self.coherence.learn(&attr);
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
            let attr = match self.table.file(ino) {
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
                self.shared
                    .dirs()
                    .touched(ino, Version(attr.version), asked);
            }
            self.coherence.learn(&attr);
            Ok(attr)
        })
    }

    async fn truncate(&self, ino: FileId, size: u64) -> Result<(), FsError> {
        let file = match self.table.file(ino) {
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
        parent: FileId,
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
                    parent: parent.0,
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
        parent: FileId,
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
                    parent: parent.0,
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
        parent: FileId,
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
                    parent: parent.0,
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

    pub fn readlink(&self, ino: FileId) -> Result<Vec<u8>, FsError> {
        self.block(self.shared.remote.call("read_link", |mut api| async move {
            api.read_link(ReadLinkRequest { ino: ino.0 }).await
        }))
        .map(|r| r.target)
    }

    pub fn link(&self, ino: FileId, new_parent: FileId, new_name: &[u8]) -> Result<Attr, FsError> {
        self.coherence.forget_fresh();
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
                            ino: ino.0,
                            new_parent: new_parent.0,
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
    async fn open_inode_named(&self, parent: FileId, name: &[u8]) -> Option<SharedFile> {
        if self.table.open_files() == 0 {
            return None;
        }
        let name = name.to_vec();
        let attr = self
            .shared
            .remote
            .call("lookup", |mut api| {
                let name = name.clone();
                async move {
                    api.lookup(LookupRequest {
                        parent: parent.0,
                        name,
                    })
                    .await
                }
            })
            .await
            .ok()?;
        self.table.file(FileId(attr.ino))
    }

    pub fn unlink(&self, parent: FileId, name: &[u8]) -> Result<(), FsError> {
        self.coherence.forget_fresh();
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
                            parent: parent.0,
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
                self.coherence.learn(parent);
            }
            if let Some(file) = open {
                file.lock().await.life.name_removed(reply.nlink == 0);
            }
            Ok(())
        })
    }

    pub fn rmdir(&self, parent: FileId, name: &[u8]) -> Result<(), FsError> {
        self.coherence.forget_fresh();
        // The directory may hold new files not created on the server yet.
        self.block(self.materialize_in(None))?;
        let name = name.to_vec();
        let asked = Instant::now();
        let reply = self.block(self.shared.remote.call("rmdir", |mut api| {
            let name = name.clone();
            async move {
                api.rmdir(RmdirRequest {
                    lazy: true,
                    parent: parent.0,
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
            self.coherence.learn(parent);
        }
        Ok(())
    }

    pub fn rename(
        &self,
        parent: FileId,
        name: &[u8],
        new_parent: FileId,
        new_name: &[u8],
        mode: RenameMode,
    ) -> Result<(), FsError> {
        self.coherence.forget_fresh();
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
                            parent: parent.0,
                            name,
                            new_parent: new_parent.0,
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
            if reply.replaced_ino != 0 {
                let replaced = FileId(reply.replaced_ino);
                match self.table.file(replaced) {
                    Some(file) => file.lock().await.life.name_removed(true),
                    None => self.release_orphan(replaced).await,
                }
            }
            Ok(())
        })
    }

    pub(super) async fn release_orphan(&self, ino: FileId) {
        let released = self
            .shared
            .remote
            .call("release", |mut api| async move {
                api.release(ReleaseRequest {
                    lazy: true,
                    ino: ino.0,
                })
                .await
            })
            .await;
        if let Err(error) = released {
            tracing::warn!(%error, %ino, "could not free an unlinked file; the server frees it later");
        }
    }

    pub fn statfs(&self) -> Result<StatFsReply, FsError> {
        self.block(self.shared.remote.call("stat_fs", |mut api| async move {
            api.stat_fs(StatFsRequest {}).await
        }))
    }
}
