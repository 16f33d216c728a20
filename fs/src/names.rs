//! Names under directory keys (docs/format.md section 5.6): a directory whose ID carries the
//! keyed tag has a key, wrapped like a file's, and its names, entries and the targets of the
//! symlinks made in it are sealed under it. Every name leaves this client sealed and every
//! entry the server names is checked before use; its plaintext lives only here. A directory
//! without the tag (the root, and those of older builds) has plaintext names, as before.
//!
//! The unwrapped name keys of the directories used lately are kept (least recently used
//! first out, at most `DIR_KEYS_MAX`), so that a lookup costs no unwrap.

use std::sync::{Arc, Mutex};

use crypto::{FileKeys, NameKeys};
use format::ids::FileId;
use format::names::{is_keyed, is_sealed};
use proto::v1::{Attr, FileKind, GetAttrRequest};

use crate::error::FsError;
use crate::shared::Shared;

/// Directories whose name keys are kept at most (about 150 bytes each).
const DIR_KEYS_MAX: std::num::NonZeroUsize = std::num::NonZeroUsize::new(16_384).expect("not zero");

/// The name keys of the directories used lately.
#[derive(Debug)]
pub struct Names {
    keys: Mutex<lru::LruCache<FileId, Arc<NameKeys>>>,
}

impl Default for Names {
    fn default() -> Names {
        Names {
            keys: Mutex::new(lru::LruCache::new(DIR_KEYS_MAX)),
        }
    }
}

impl Names {
    fn kept(&self, dir: FileId) -> Option<Arc<NameKeys>> {
        self.keys
            .lock()
            .expect("name keys poisoned")
            .get(&dir)
            .cloned()
    }

    /// Keeps the name keys of `dir` (a directory this client just made or unwrapped).
    pub fn remember(&self, keys: NameKeys) -> Arc<NameKeys> {
        let keys = Arc::new(keys);
        let mut kept = self.keys.lock().expect("name keys poisoned");
        kept.put(keys.dir(), keys.clone());
        keys
    }
}

/// How a directory's names go to the server.
#[derive(Clone, Debug)]
pub enum DirNames {
    /// As they are: a directory of plaintext names (the root, older directories).
    Plain(FileId),
    /// Sealed under the directory's key.
    Sealed(Arc<NameKeys>),
}

/// The error of an entry, name or target that fails its check: EIO, and a log line.
pub fn entry_error(dir: FileId, reason: impl std::fmt::Display) -> FsError {
    let error = FsError::Entry {
        dir,
        reason: reason.to_string(),
    };
    tracing::error!(%dir, %error, "refused what the server said of a directory");
    error
}

/// The kind byte an entry seal binds: `FileKind`'s number on the wire.
pub fn kind_byte(kind: FileKind) -> u8 {
    kind as i32 as u8
}

impl DirNames {
    pub fn dir(&self) -> FileId {
        match self {
            DirNames::Plain(dir) => *dir,
            DirNames::Sealed(keys) => keys.dir(),
        }
    }

    pub fn is_sealed(&self) -> bool {
        matches!(self, DirNames::Sealed(_))
    }

    /// `name` as the server stores it.
    pub fn wire(&self, name: &[u8]) -> Vec<u8> {
        match self {
            DirNames::Plain(_) => name.to_vec(),
            DirNames::Sealed(keys) => keys.seal_name(name),
        }
    }

    /// The seal of an entry `wire` naming `ino` of `kind` (empty for plaintext names).
    pub fn seal(&self, wire: &[u8], ino: FileId, kind: FileKind) -> Vec<u8> {
        match self {
            DirNames::Plain(_) => Vec::new(),
            DirNames::Sealed(keys) => keys.entry_seal(wire, ino, kind_byte(kind)).to_vec(),
        }
    }

    /// Checks the entry `wire` the server answered with `attr` (a lookup's or a listing's):
    /// in a directory of sealed names its seal must bind the name to that inode and kind.
    pub fn check(&self, wire: &[u8], attr: &Attr) -> Result<(), FsError> {
        let DirNames::Sealed(keys) = self else {
            return Ok(());
        };
        let seal = proto::attr_seal(attr).unwrap_or_default();
        keys.check_entry(wire, FileId(attr.ino), attr.kind as u8, &seal)
            .map_err(|e| entry_error(keys.dir(), format!("inode {}: {e}", FileId(attr.ino))))
    }

    /// The name an entry of a listing stands for, after checking it as [`DirNames::check`]
    /// does.
    pub fn open(&self, wire: &[u8], attr: &Attr) -> Result<Vec<u8>, FsError> {
        match self {
            DirNames::Plain(dir) if is_sealed(wire) => Err(entry_error(
                *dir,
                "a sealed name in a directory of plaintext names",
            )),
            DirNames::Plain(_) => Ok(wire.to_vec()),
            DirNames::Sealed(keys) => {
                let name = keys
                    .open_name(wire)
                    .map_err(|e| entry_error(keys.dir(), e))?;
                self.check(wire, attr)?;
                Ok(name)
            }
        }
    }
}

impl Shared {
    /// How the names of `dir` go to the server: sealed under its key when its ID carries
    /// the keyed tag (the key unwrapped once, then kept), else plaintext.
    pub async fn dir_names(&self, dir: FileId) -> Result<DirNames, FsError> {
        if !is_keyed(dir) {
            return Ok(DirNames::Plain(dir));
        }
        if let Some(keys) = self.dir_keys.kept(dir) {
            return Ok(DirNames::Sealed(keys));
        }
        let attr = self
            .remote
            .send(
                "get_attr",
                GetAttrRequest { ino: dir.0 },
                |mut api, r| async move { api.get_attr(r).await },
            )
            .await?;
        if attr.kind != FileKind::Directory as i32 {
            return Err(entry_error(dir, "a directory's ID names something else"));
        }
        let keys = self
            .keys
            .file_keys(dir, attr.owner)
            .await
            .map_err(|e| entry_error(dir, format!("its key: {e}")))?;
        Ok(DirNames::Sealed(self.remember_dir_keys(dir, &keys)))
    }

    /// Keeps the name keys of directory `dir` whose keys are `keys`.
    pub fn remember_dir_keys(&self, dir: FileId, keys: &FileKeys) -> Arc<NameKeys> {
        self.dir_keys
            .remember(keys.name_keys(self.keys.vault(), dir))
    }

    /// The target of symlink `link` as the server stores it (`stored`): opened under the
    /// key of the directory that sealed it when the link's ID carries the keyed tag (which
    /// then needs a sealed target), else as it is.
    pub async fn open_target(&self, link: FileId, stored: Vec<u8>) -> Result<Vec<u8>, FsError> {
        if !is_keyed(link) {
            if is_sealed(&stored) {
                return Err(entry_error(link, "a sealed target of a plaintext symlink"));
            }
            return Ok(stored);
        }
        let Some(sealer) = format::names::target_sealer(&stored) else {
            return Err(entry_error(
                link,
                "a symlink of sealed target has a plaintext one",
            ));
        };
        match self.dir_names(sealer).await? {
            DirNames::Sealed(keys) => keys
                .open_target(link, &stored)
                .map_err(|e| entry_error(link, e)),
            DirNames::Plain(_) => Err(entry_error(
                link,
                "its target names a directory without a key",
            )),
        }
    }
}
