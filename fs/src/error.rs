//! The client's errors, and the one place that turns them into errno values.

use client::ClientError;
use format::ids::{ChunkIndex, FileId};
use proto::ErrorKind;

/// Why a filesystem operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FsError {
    /// The server refused or could not do it.
    #[error("{message}")]
    Remote { kind: ErrorKind, message: String },
    /// A chunk did not open: tampered with, rolled back, truncated or corrupted. The reader
    /// gets EIO, never the chunk's bytes.
    #[error("chunk {index} of file {ino} failed its integrity check: {reason}")]
    Integrity {
        ino: FileId,
        index: ChunkIndex,
        reason: String,
    },
    /// The size or chunk map the server sent is not one the file's writer committed (see
    /// `crate::manifest`): the reader gets EIO.
    #[error("file {ino} failed its manifest check: {reason}")]
    Manifest { ino: FileId, reason: String },
    /// The server offers a newer generation of a chunk than the file's checked manifest
    /// names: another writer committed since (the reader re-reads the file and its manifest),
    /// or the chunk's record was changed behind the manifest. EIO if it gets that far.
    #[error(
        "chunk {index} of file {ino}: the server offers generation {offered}, which the manifest this client checked does not name"
    )]
    Superseded {
        ino: FileId,
        index: ChunkIndex,
        offered: format::ids::Generation,
    },
    /// A directory entry, name or symlink target the server sent failed its check against
    /// the directory's key (docs/format.md section 5.6): the caller gets EIO.
    #[error("directory {dir}: {reason}")]
    Entry { dir: FileId, reason: String },
    /// The file's key could not be obtained or opened.
    #[error("no usable key for file {ino}: {reason}")]
    Key { ino: FileId, reason: String },
    /// Something the kernel or caller asked for that the vault does not do or allow.
    #[error("{1}")]
    Local(ErrorKind, String),
}

impl FsError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            FsError::Remote { kind, .. } | FsError::Local(kind, _) => *kind,
            FsError::Integrity { .. }
            | FsError::Manifest { .. }
            | FsError::Superseded { .. }
            | FsError::Entry { .. } => ErrorKind::BadChunk,
            FsError::Key { .. } => ErrorKind::AccessDenied,
        }
    }

    pub fn local(kind: ErrorKind, message: impl Into<String>) -> FsError {
        FsError::Local(kind, message.into())
    }

    /// The server's refusal of one request of a batch, as its outcome says (an unknown
    /// kind is an internal error).
    pub fn refused(kind: i32, message: String) -> FsError {
        FsError::Remote {
            kind: ErrorKind::try_from(kind).unwrap_or(ErrorKind::Internal),
            message,
        }
    }
}

impl From<ClientError> for FsError {
    fn from(error: ClientError) -> Self {
        FsError::Remote {
            kind: error.kind(),
            message: error.to_string(),
        }
    }
}

impl From<tonic::Status> for FsError {
    fn from(status: tonic::Status) -> Self {
        ClientError::from(status).into()
    }
}

/// The errno for an error: the only mapping from errors to errno in the client.
pub fn errno(error: &FsError) -> i32 {
    match error.kind() {
        ErrorKind::NotFound => libc::ENOENT,
        ErrorKind::Exists => libc::EEXIST,
        ErrorKind::NotEmpty => libc::ENOTEMPTY,
        ErrorKind::NotDirectory => libc::ENOTDIR,
        ErrorKind::IsDirectory => libc::EISDIR,
        ErrorKind::NameTooLong => libc::ENAMETOOLONG,
        ErrorKind::Invalid => libc::EINVAL,
        ErrorKind::AccessDenied => libc::EACCES,
        ErrorKind::TooLarge => libc::EFBIG,
        ErrorKind::NoData => libc::ENODATA,
        ErrorKind::NotSupported => libc::EPERM,
        ErrorKind::Loop => libc::ELOOP,
        ErrorKind::StaleGeneration
        | ErrorKind::Conflict
        | ErrorKind::BadChunk
        | ErrorKind::Unauthenticated
        | ErrorKind::Unavailable
        | ErrorKind::Internal
        | ErrorKind::Unspecified => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_an_errno() {
        for code in 0..=18 {
            let kind = ErrorKind::try_from(code).expect("a known kind");
            assert!(errno(&FsError::local(kind, "x")) > 0);
        }
        let integrity = FsError::Integrity {
            ino: FileId(1),
            index: ChunkIndex(0),
            reason: "flipped".into(),
        };
        assert_eq!(errno(&integrity), libc::EIO);
        assert_eq!(
            errno(&FsError::local(ErrorKind::AccessDenied, "no")),
            libc::EACCES
        );
    }
}
