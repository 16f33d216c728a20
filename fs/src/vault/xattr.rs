//! Extended attributes: a new file has none yet, and a change creates it on the server first.
//! Their values are sealed under the keys of a file whose wraps say so and of a directory with
//! a key (docs/format.md section 5.6), and checked when read.

use std::sync::Arc;

use crypto::FileKeys;
use format::ids::FileId;
use proto::ErrorKind;
use proto::v1::{FileKind, GetXattrRequest, ListXattrRequest, RemoveXattrRequest, SetXattrRequest};

use super::Vault;
use crate::error::FsError;

impl Vault {
    /// The keys an inode's extended attribute values are sealed under: a regular file's whose
    /// wraps say so, or a directory's with a key; none for the others (their values are
    /// stored as they are).
    async fn xattr_keys(&self, ino: FileId) -> Result<Option<Arc<FileKeys>>, FsError> {
        let attr = self.getattr_async(ino).await?;
        let kind = FileKind::try_from(attr.kind).unwrap_or(FileKind::Unspecified);
        let directory = kind == FileKind::Directory && format::names::is_keyed(ino);
        if kind != FileKind::Regular && !directory {
            return Ok(None);
        }
        let keys = self.shared.keys.file_keys(ino, attr.owner).await?;
        Ok((directory || keys.sealed_xattrs()).then_some(keys))
    }

    pub fn setxattr(
        &self,
        ino: FileId,
        name: &[u8],
        value: &[u8],
        create_only: bool,
        replace_only: bool,
    ) -> Result<(), FsError> {
        self.coherence.forget_fresh();
        self.block(self.materialize(ino))?;
        let value = match self.block(self.xattr_keys(ino))? {
            Some(keys) => crypto::seal_xattr(&keys, self.shared.keys.vault(), ino, name, value),
            None => value.to_vec(),
        };
        let name = name.to_vec();
        self.block(self.shared.remote.send(
            "set_xattr",
            SetXattrRequest {
                lazy: true,
                ino: ino.0,
                name,
                value,
                create_only,
                replace_only,
            },
            |mut api, r| async move { api.set_xattr(r).await },
        ))
        .map(drop)
    }

    pub fn getxattr(&self, ino: FileId, name: &[u8]) -> Result<Vec<u8>, FsError> {
        if self.shared.pending_attr(ino).is_some() {
            // A new file has no attributes yet (and asking must not create it).
            return Err(FsError::local(ErrorKind::NoData, "no such attribute"));
        }
        self.block(async {
            let stored = stored_xattr(&self.shared.remote, ino, name.to_vec()).await?;
            match self.xattr_keys(ino).await? {
                Some(keys) => {
                    let vault = self.shared.keys.vault();
                    crypto::open_xattr(&keys, vault, ino, name, &stored)
                        .map_err(|e| crate::names::entry_error(ino, e))
                }
                None => Ok(stored),
            }
        })
    }

    pub fn listxattr(&self, ino: FileId) -> Result<Vec<Vec<u8>>, FsError> {
        if self.shared.pending_attr(ino).is_some() {
            return Ok(Vec::new());
        }
        self.block(self.shared.remote.send(
            "list_xattr",
            ListXattrRequest { ino: ino.0 },
            |mut api, r| async move { api.list_xattr(r).await },
        ))
        .map(|r| r.names)
    }

    pub fn removexattr(&self, ino: FileId, name: &[u8]) -> Result<(), FsError> {
        self.coherence.forget_fresh();
        self.block(self.materialize(ino))?;
        let name = name.to_vec();
        self.block(self.shared.remote.send(
            "remove_xattr",
            RemoveXattrRequest {
                lazy: true,
                ino: ino.0,
                name,
            },
            |mut api, r| async move { api.remove_xattr(r).await },
        ))
        .map(drop)
    }
}

/// The value of extended attribute `name` of `ino` as storaged has it (sealed or not).
pub(crate) async fn stored_xattr(
    remote: &crate::remote::Remote,
    ino: FileId,
    name: Vec<u8>,
) -> Result<Vec<u8>, FsError> {
    let request = GetXattrRequest { ino: ino.0, name };
    let reply = remote
        .send("get_xattr", request, |mut api, r| async move {
            api.get_xattr(r).await
        })
        .await?;
    Ok(reply.value)
}

/// The extended attributes a vault keeps: the `user.` namespace. The others have meanings the
/// vault does not implement (POSIX ACLs, security labels, file capabilities); it refuses to
/// store them rather than keep bytes that look enforced and are not, and answers "none" to
/// the kernel's and `ls`'s queries for them without asking the server.
pub fn kept_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.")
}
