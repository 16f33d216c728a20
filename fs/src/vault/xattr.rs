//! Extended attributes: a new file has none yet, and a change creates it on the server first.

use format::ids::FileId;
use proto::ErrorKind;
use proto::v1::{GetXattrRequest, ListXattrRequest, RemoveXattrRequest, SetXattrRequest};

use super::Vault;
use crate::error::FsError;

impl Vault {
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
        let (name, value) = (name.to_vec(), value.to_vec());
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
        let name = name.to_vec();
        self.block(self.shared.remote.send(
            "get_xattr",
            GetXattrRequest { ino: ino.0, name },
            |mut api, r| async move { api.get_xattr(r).await },
        ))
        .map(|r| r.value)
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

/// The extended attributes a vault keeps: the `user.` namespace. The others have meanings the
/// vault does not implement (POSIX ACLs, security labels, file capabilities); it refuses to
/// store them rather than keep bytes that look enforced and are not, and answers "none" to
/// the kernel's and `ls`'s queries for them without asking the server.
pub fn kept_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.")
}
