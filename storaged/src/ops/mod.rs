//! The semantics of every operation on the vault's metadata, written once against
//! [`Txn`] and shared by every backend.
//!
//! Each function checks its input and the caller's rights, then reads and writes records.
//! Functions that change several records run inside one write transaction (the caller wraps
//! them with `meta::write`), so a failure anywhere leaves nothing half-done.

pub mod access;
pub mod chunks;
pub mod manifest;
pub mod names;
pub mod records;
pub mod sharing;
pub mod tree;
pub mod users;
pub mod xattrs;

use crate::meta::{ChunkIndex, FileId, Generation, Inode, StoreError, Txn};
use proto::ErrorKind;

/// Why an operation was refused. Each maps to one [`ErrorKind`] on the wire.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpError {
    #[error("no such file or directory")]
    NotFound,
    #[error("already exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDirectory,
    #[error("is a directory")]
    IsDirectory,
    #[error("name longer than {} bytes", proto::limits::NAME_BYTES_MAX)]
    NameTooLong,
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error(
        "stale generation: chunk {index} is at generation {current}, the writer based on {base}"
    )]
    StaleGeneration {
        index: ChunkIndex,
        base: Generation,
        current: Generation,
    },
    #[error("stale manifest: {0}")]
    StaleManifest(String),
    #[error("bad chunk: {0}")]
    BadChunk(String),
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("no such attribute")]
    NoData,
    #[error("not supported: {0}")]
    NotSupported(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OpError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            OpError::NotFound => ErrorKind::NotFound,
            OpError::Exists => ErrorKind::Exists,
            OpError::NotEmpty => ErrorKind::NotEmpty,
            OpError::NotDirectory => ErrorKind::NotDirectory,
            OpError::IsDirectory => ErrorKind::IsDirectory,
            OpError::NameTooLong => ErrorKind::NameTooLong,
            OpError::Invalid(_) => ErrorKind::Invalid,
            OpError::AccessDenied(_) => ErrorKind::AccessDenied,
            OpError::StaleGeneration { .. } | OpError::StaleManifest(_) => {
                ErrorKind::StaleGeneration
            }
            OpError::BadChunk(_) => ErrorKind::BadChunk,
            OpError::Unauthenticated(_) => ErrorKind::Unauthenticated,
            OpError::TooLarge(_) => ErrorKind::TooLarge,
            OpError::NoData => ErrorKind::NoData,
            OpError::NotSupported(_) => ErrorKind::NotSupported,
            OpError::Store(StoreError::Conflict(_)) => ErrorKind::Conflict,
            OpError::Store(StoreError::Unavailable(_)) => ErrorKind::Unavailable,
            OpError::Store(_) => ErrorKind::Internal,
        }
    }

    pub fn invalid(what: impl Into<String>) -> OpError {
        OpError::Invalid(what.into())
    }
}

/// Who is asking: an authenticated session's user and its groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    /// Every group the user belongs to, [`access::EVERYONE`] included.
    pub groups: Vec<u32>,
    /// The site administrator: manages users and groups, reads no one's files.
    pub admin: bool,
}

/// The inode, or `NotFound`.
pub fn inode(txn: &mut dyn Txn, ino: FileId) -> Result<Inode, OpError> {
    txn.get_inode(ino)?.ok_or(OpError::NotFound)
}

/// Marks an inode changed now: bumps its version and ctime.
pub fn touch(inode: &mut Inode, now: crate::meta::Time) {
    inode.version = inode.version.next();
    inode.ctime = now;
}
