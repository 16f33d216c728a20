//! Creating regular files, and creating new files on the server before anything needs them
//! there (a new file is created there at its first flush unless something asks first).

use std::sync::Arc;
use std::time::Instant;

use crypto::FileKeys;
use format::ids::{FileId, Handle};
use proto::v1::{Attr, CreateRequest, FileKind, Timestamp};

use super::table::Opened;
use super::{Owner, Vault, stamp};
use crate::error::FsError;
use crate::file::FileState;

impl Vault {
    /// Creates a regular file with a fresh key and opens it.
    pub fn create(
        &self,
        parent: FileId,
        name: &[u8],
        perm: u32,
        exclusive: bool,
        owner: Owner,
    ) -> Result<(Attr, Handle), FsError> {
        let Owner { uid, gid } = owner;
        self.block(async {
            // The server must not find a name an unlink answered here removed.
            self.send_unlinks(Some(parent)).await?;
            let ino = new_ino();
            // Its wraps say every commit carries a manifest when the server keeps them.
            let manifests = self.shared.remote.server_has(proto::features::MANIFESTS);
            // And that its extended attribute values are sealed, when the server seals names.
            let sealed = self.shared.remote.server_has(proto::features::SEALED_NAMES);
            let key = FileKeys::generate().with_manifests(manifests);
            let key = Arc::new(key.with_sealed_xattrs(sealed));
            let access = self.shared.keys.new_file_access(ino, &key, parent).await?;
            let names = self.shared.dir_names(parent).await?;
            let wire = names.wire(name);
            let entry_seal = names.seal(&wire, ino, FileKind::Regular);
            // Created on the server at its first flush, with its first chunk (one round trip
            // for a small file instead of two). O_EXCL asks the server now, its answer atomic
            // with the open, unless this client holds the directory's lease and knows its
            // every name: then no other client can take the name before this one is there.
            let pending = CreateRequest {
                lazy: true,
                parent: parent.0,
                name: wire,
                perm,
                uid,
                gid,
                ino: ino.0,
                wrapped_keys: access.wrapped_keys,
                exclusive: true,
                acl_record: access.acl_record,
                entry_seal,
            };
            if !exclusive {
                return Ok(self.created_pending(ino, &key, name, pending));
            }
            if let Some(created) = self.created_exclusive_here(ino, &key, name, &pending) {
                return Ok(created);
            }
            let asked = Instant::now();
            let created = self
                .shared
                .remote
                .send("create", pending, |mut api, r| async move {
                    api.create(r).await
                })
                .await;
            let reply = created.as_ref().ok();
            self.shared.dirs().added(parent, name, reply, asked);
            let attr = created?;
            self.shared.remember_name(FileId(attr.ino), name);
            self.coherence.learn(&attr);
            self.ask_lease(parent);
            if FileId(attr.ino) != ino {
                // Not exclusive, and the name existed: open that file as it is, once its entry
                // checks (the reply carries no seal).
                let entry = super::lookup::remote_lookup(&self.shared, parent, name).await?;
                if entry.ino != attr.ino {
                    return Err(crate::names::entry_error(
                        parent,
                        "a create found another inode",
                    ));
                }
                let fh = self.open_async(FileId(attr.ino)).await?.0;
                return Ok((attr, fh));
            }
            Ok(self.created_known(ino, &key, attr, None))
        })
    }

    /// A new file to be created on the server at its first flush, with the attributes the
    /// server will give it.
    fn created_pending(
        &self,
        ino: FileId,
        key: &Arc<FileKeys>,
        name: &[u8],
        request: CreateRequest,
    ) -> (Attr, Handle) {
        let now = stamp(std::time::SystemTime::now());
        let attr = new_file_attr(ino, &request, self.shared.keys.uid(), now);
        self.shared.add_pending(
            ino,
            crate::shared::Pending {
                parent: FileId(request.parent),
                name: name.to_vec(),
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
        ino: FileId,
        key: &Arc<FileKeys>,
        name: &[u8],
        request: &CreateRequest,
    ) -> Option<(Attr, Handle)> {
        let parent = FileId(request.parent);
        let mut created = None;
        self.behind.while_held(parent, || {
            // One lock after the other (both are leaves of the lock order).
            let absent = self.shared.dirs().absent(parent, name, Instant::now());
            let free = absent && self.shared.pending_named(parent, name).is_none();
            if free {
                created = Some(self.created_pending(ino, key, name, request.clone()));
            }
            free
        });
        created.inspect(|_| self.shared.remember_name(ino, name))
    }

    /// A new file this client made: created on the server already (`pending` is none), or
    /// waiting for its first flush.
    fn created_known(
        &self,
        ino: FileId,
        key: &Arc<FileKeys>,
        attr: Attr,
        pending: Option<CreateRequest>,
    ) -> (Attr, Handle) {
        // A new, empty file: its state is known without asking the server.
        let keys = self.shared.keys.remember(ino, key.clone());
        let state = FileState::created(ino, keys, &attr, pending);
        let file = Arc::new(tokio::sync::Mutex::new(state));
        self.table.insert_file(ino, file.clone());
        self.coherence.committed(&attr, false);
        (
            attr,
            self.table.add_handle(Opened::File {
                ino,
                file,
                setid_checked: false,
            }),
        )
    }

    /// Creates a pending new file on the server now, before anything that needs it there.
    pub(super) async fn materialize(&self, ino: FileId) -> Result<(), FsError> {
        if self.shared.pending_attr(ino).is_none() {
            return Ok(());
        }
        if let Some(file) = self.table.file(ino) {
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

    /// Creates every pending new file in `parent` (or everywhere) on the server now: before
    /// listing, renaming or removing names there.
    pub(super) async fn materialize_in(&self, parent: Option<FileId>) -> Result<(), FsError> {
        // Unlinks answered here first: a new file may take a name one of them frees.
        self.send_unlinks(parent).await?;
        for ino in self.shared.pending_in(parent) {
            self.materialize(ino).await?;
        }
        Ok(())
    }
}

/// A random new file or directory ID (0 and 1 are reserved).
pub(super) fn new_ino() -> FileId {
    loop {
        let candidate = FileId(u64::from_le_bytes(identity::random_bytes()));
        if candidate > FileId::ROOT {
            return candidate;
        }
    }
}

/// The attributes the server will give a new file it creates from `request` at `now`, for
/// the vault user `owner`.
fn new_file_attr(ino: FileId, request: &CreateRequest, owner: u32, now: Timestamp) -> Attr {
    Attr {
        ino: ino.0,
        kind: FileKind::Regular as i32,
        perm: request.perm & 0o7777,
        uid: request.uid,
        gid: request.gid,
        nlink: 1,
        size: 0,
        atime: Some(now),
        mtime: Some(now),
        ctime: Some(now),
        rdev: 0,
        owner,
        version: 1,
        may_read: true,
        may_write: true,
        parent_version: 0,
        entry_seal_low: 0,
        entry_seal_high: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_file_shows_what_the_server_will_make_of_it() {
        let request = CreateRequest {
            perm: 0o100640,
            uid: 1000,
            gid: 100,
            ..CreateRequest::default()
        };
        let now = Timestamp {
            seconds: 5,
            nanos: 6,
        };
        let attr = new_file_attr(FileId(7), &request, 42, now);
        assert_eq!(
            (attr.ino, attr.perm, attr.uid, attr.gid),
            (7, 0o640, 1000, 100)
        );
        assert_eq!(
            (attr.owner, attr.version, attr.nlink, attr.size),
            (42, 1, 1, 0)
        );
        assert_eq!(
            (attr.atime, attr.mtime, attr.ctime),
            (Some(now), Some(now), Some(now))
        );
        assert!(attr.may_read && attr.may_write);
        assert_eq!(attr.kind, FileKind::Regular as i32);
    }
}
