//! The namespace: making, linking, removing and renaming names, and what each change proves
//! about its directories (see [`crate::dirs`]).

use std::future::Future;
use std::time::Instant;

use crypto::FileKeys;
use format::ids::FileId;
use format::names::keyed_id;
use proto::v1::{
    Attr, FileKind, LinkRequest, MkdirRequest, MknodRequest, ReleaseRequest, RenameRequest,
    RmdirRequest, SymlinkRequest, UnlinkRequest, WrappedKey,
};

use super::{Node, Owner, RenameMode, SharedFile, Vault};
use crate::error::FsError;
use crate::names::DirNames;

impl Vault {
    pub fn mkdir(
        &self,
        parent: FileId,
        name: &[u8],
        perm: u32,
        owner: Owner,
    ) -> Result<Attr, FsError> {
        let made = async {
            let names = self.shared.dir_names(parent).await?;
            // A directory's ACL record and key bind its ID: this client draws it.
            let (ino, wrapped_keys, acl_record) = self.new_dir_access(parent).await?;
            let wire = names.wire(name);
            let request = MkdirRequest {
                lazy: true,
                parent: parent.0,
                entry_seal: names.seal(&wire, ino, FileKind::Directory),
                name: wire,
                perm,
                uid: owner.uid,
                gid: owner.gid,
                ino: ino.0,
                acl_record,
                wrapped_keys,
            };
            let remote = &self.shared.remote;
            remote
                .send(
                    "mkdir",
                    request,
                    |mut api, r| async move { api.mkdir(r).await },
                )
                .await
        };
        self.make_name(parent, name, made)
    }

    /// A new directory's ID, its key wrapped to its owner and readers, and its ACL record
    /// (docs/format.md section 5.6); a server without sealed names gets a directory of
    /// plaintext names, as before.
    async fn new_dir_access(
        &self,
        parent: FileId,
    ) -> Result<(FileId, Vec<WrappedKey>, Vec<u8>), FsError> {
        if !self.shared.remote.server_has(proto::features::SEALED_NAMES) {
            let ino = super::create::new_ino();
            let record = self.shared.keys.new_dir_record(ino, parent).await?;
            return Ok((ino, Vec::new(), record));
        }
        let ino = keyed_id(u64::from_le_bytes(identity::random_bytes()));
        let keys = FileKeys::generate().with_manifests(false);
        let access = self.shared.keys.new_file_access(ino, &keys, parent).await?;
        self.shared.remember_dir_keys(ino, &keys);
        self.shared.keys.remember(ino, keys);
        Ok((ino, access.wrapped_keys, access.acl_record))
    }

    /// Makes a special file (a FIFO, a socket, a device node).
    pub fn mknod(
        &self,
        parent: FileId,
        name: &[u8],
        node: Node,
        owner: Owner,
    ) -> Result<Attr, FsError> {
        let made = async {
            let names = self.shared.dir_names(parent).await?;
            // Its entry's seal binds its ID: this client draws it.
            let ino = super::create::new_ino();
            let wire = names.wire(name);
            let request = MknodRequest {
                lazy: true,
                parent: parent.0,
                entry_seal: names.seal(&wire, ino, node.kind),
                name: wire,
                kind: node.kind as i32,
                perm: node.perm,
                uid: owner.uid,
                gid: owner.gid,
                rdev: node.rdev,
                ino: if names.is_sealed() { ino.0 } else { 0 },
            };
            let remote = &self.shared.remote;
            remote
                .send(
                    "mknod",
                    request,
                    |mut api, r| async move { api.mknod(r).await },
                )
                .await
        };
        self.make_name(parent, name, made)
    }

    pub fn symlink(
        &self,
        parent: FileId,
        name: &[u8],
        target: &[u8],
        owner: Owner,
    ) -> Result<Attr, FsError> {
        let made = async {
            let names = self.shared.dir_names(parent).await?;
            let mut request = SymlinkRequest {
                lazy: true,
                parent: parent.0,
                name: names.wire(name),
                target: target.to_vec(),
                uid: owner.uid,
                gid: owner.gid,
                ..SymlinkRequest::default()
            };
            if let DirNames::Sealed(keys) = &names {
                // A keyed ID: its target is sealed, bound to it (docs/format.md section 5.6).
                let ino = keyed_id(u64::from_le_bytes(identity::random_bytes()));
                request.target = keys.seal_target(ino, target);
                request.entry_seal = names.seal(&request.name, ino, FileKind::Symlink);
                request.ino = ino.0;
            }
            let remote = &self.shared.remote;
            remote
                .send("symlink", request, |mut api, r| async move {
                    api.symlink(r).await
                })
                .await
        };
        self.make_name(parent, name, made)
    }

    /// Makes `name` in `parent` by the call `made` (not started yet), and notes the new name
    /// in the known directories, with the version the reply proves; a new directory is known
    /// empty.
    fn make_name(
        &self,
        parent: FileId,
        name: &[u8],
        made: impl Future<Output = Result<Attr, FsError>>,
    ) -> Result<Attr, FsError> {
        // The server must not find a name an unlink answered here removed.
        self.block(self.send_unlinks(Some(parent)))?;
        let asked = Instant::now();
        let made = self.block(made);
        let mut dirs = self.shared.dirs();
        dirs.added(parent, name, made.as_ref().ok(), asked);
        if let Ok(attr) = &made
            && attr.kind == FileKind::Directory as i32
        {
            dirs.made(attr, asked);
        }
        made
    }

    pub fn link(&self, ino: FileId, new_parent: FileId, new_name: &[u8]) -> Result<Attr, FsError> {
        self.coherence.forget_fresh();
        let linked = self.block(async {
            self.materialize(ino).await?;
            self.send_unlinks(Some(new_parent)).await?;
            let names = self.shared.dir_names(new_parent).await?;
            let wire = names.wire(new_name);
            let entry_seal = if names.is_sealed() {
                let kind = FileKind::try_from(self.getattr_async(ino).await?.kind);
                names.seal(&wire, ino, kind.unwrap_or(FileKind::Unspecified))
            } else {
                Vec::new()
            };
            let asked = Instant::now();
            let linked = self
                .shared
                .remote
                .send(
                    "link",
                    LinkRequest {
                        lazy: true,
                        ino: ino.0,
                        new_parent: new_parent.0,
                        new_name: wire,
                        entry_seal,
                    },
                    |mut api, r| async move { api.link(r).await },
                )
                .await;
            let reply = linked.as_ref().ok();
            self.shared.dirs().added(new_parent, new_name, reply, asked);
            Ok(self.local_view(linked?).await)
        });
        self.ahead.forget(ino);
        linked
    }

    /// The inode behind a name, if this client has it open (so that removing the name keeps
    /// the data until the last close).
    async fn open_inode_named(&self, parent: FileId, name: &[u8]) -> Option<SharedFile> {
        if self.table.open_files() == 0 {
            return None;
        }
        let attr = super::lookup::remote_lookup(&self.shared, parent, name)
            .await
            .ok()?;
        self.table.file(FileId(attr.ino))
    }

    pub fn unlink(&self, parent: FileId, name: &[u8]) -> Result<(), FsError> {
        let parent_attr = self.coherence.fresh(parent);
        self.coherence.forget_fresh();
        if self.unlink_here(parent, name) {
            self.changed_here(parent_attr);
            return Ok(());
        }
        let unlinked = self.unlink_now(parent, name);
        if unlinked.is_ok() {
            // The next unlinks there may be answered here (see `unlinks`).
            self.ask_lease(parent);
        }
        unlinked
    }

    /// An unlink that waits for the server.
    fn unlink_now(&self, parent: FileId, name: &[u8]) -> Result<(), FsError> {
        self.block(async {
            self.materialize_in(Some(parent)).await?;
            let open = self.open_inode_named(parent, name).await;
            let keep_open = open.is_some();
            let wire = self.shared.dir_names(parent).await?.wire(name);
            let asked = Instant::now();
            let changes = self.shared.remote.changes();
            let reply = self
                .shared
                .remote
                .send(
                    "unlink",
                    UnlinkRequest {
                        lazy: true,
                        parent: parent.0,
                        name: wire,
                        keep_open,
                    },
                    |mut api, r| async move { api.unlink(r).await },
                )
                .await;
            let after = reply.as_ref().ok().and_then(|r| r.parent.as_ref());
            {
                let mut dirs = self.shared.dirs();
                dirs.removed(parent, name, after, asked);
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
        let wire = self.block(self.shared.dir_names(parent))?.wire(name);
        let asked = Instant::now();
        let reply = self.block(self.shared.remote.send(
            "rmdir",
            RmdirRequest {
                lazy: true,
                parent: parent.0,
                name: wire,
            },
            |mut api, r| async move { api.rmdir(r).await },
        ));
        let after = reply.as_ref().ok().and_then(|r| r.parent.as_ref());
        self.shared.dirs().removed(parent, name, after, asked);
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
        self.block(async {
            self.materialize_in(Some(parent)).await?;
            self.materialize_in(Some(new_parent)).await?;
            let request = self
                .rename_request((parent, name), (new_parent, new_name), mode)
                .await?;
            let reply = self
                .shared
                .remote
                .send("rename", request, |mut api, r| async move {
                    api.rename(r).await
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

    /// A rename's request: names sealed as their directories' are, and, where a directory's
    /// names are sealed, the new entries sealed for the inodes the names have now (checked
    /// lookups), which the server makes sure they still name.
    async fn rename_request(
        &self,
        (parent, name): (FileId, &[u8]),
        (new_parent, new_name): (FileId, &[u8]),
        mode: RenameMode,
    ) -> Result<RenameRequest, FsError> {
        let from = self.shared.dir_names(parent).await?;
        let to = self.shared.dir_names(new_parent).await?;
        let mut request = RenameRequest {
            lazy: true,
            parent: parent.0,
            name: from.wire(name),
            new_parent: new_parent.0,
            new_name: to.wire(new_name),
            no_replace: mode == RenameMode::NoReplace,
            exchange: mode == RenameMode::Exchange,
            ..RenameRequest::default()
        };
        if !from.is_sealed() && !to.is_sealed() {
            return Ok(request);
        }
        let kind = |attr: &Attr| FileKind::try_from(attr.kind).unwrap_or(FileKind::Unspecified);
        let moving = self.lookup_async(parent, name).await?;
        request.ino = moving.ino;
        request.new_entry_seal = to.seal(&request.new_name, FileId(moving.ino), kind(&moving));
        if mode == RenameMode::Exchange {
            let other = self.lookup_async(new_parent, new_name).await?;
            request.new_ino = other.ino;
            request.entry_seal = from.seal(&request.name, FileId(other.ino), kind(&other));
        }
        Ok(request)
    }

    pub(super) async fn release_orphan(&self, ino: FileId) {
        let released = self
            .shared
            .remote
            .send(
                "release",
                ReleaseRequest {
                    lazy: true,
                    ino: ino.0,
                },
                |mut api, r| async move { api.release(r).await },
            )
            .await;
        if let Err(error) = released {
            tracing::warn!(%error, %ino, "could not free an unlinked file; the server frees it later");
        }
    }
}
