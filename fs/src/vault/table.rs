//! The open-files table and the handles the kernel holds: one state per open file, shared by
//! its handles and the uploader, and what each handle stands for. One lock covers both: each
//! use is a lookup or an insertion, and nothing else is taken while it is held.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use format::ids::{FileId, Handle};
use proto::ErrorKind;

use super::Listing;
use crate::error::FsError;
use crate::file::FileState;

/// An open file's state, shared by its handles and the uploader.
pub(super) type SharedFile = Arc<tokio::sync::Mutex<FileState>>;

/// What a handle stands for.
#[derive(Debug)]
pub(super) enum Opened {
    File {
        ino: FileId,
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

#[derive(Debug, Default)]
struct Tables {
    files: HashMap<FileId, SharedFile>,
    handles: HashMap<Handle, Opened>,
}

#[derive(Debug)]
pub(super) struct OpenTable {
    tables: Mutex<Tables>,
    next_handle: AtomicU64,
}

impl OpenTable {
    pub(super) fn new() -> OpenTable {
        OpenTable {
            tables: Mutex::new(Tables::default()),
            next_handle: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().expect("open-files table poisoned")
    }

    /// A new handle for `opened`.
    pub(super) fn add_handle(&self, opened: Opened) -> Handle {
        let fh = Handle(self.next_handle.fetch_add(1, Ordering::Relaxed));
        self.lock().handles.insert(fh, opened);
        fh
    }

    pub(super) fn remove_handle(&self, fh: Handle) {
        self.lock().handles.remove(&fh);
    }

    /// The file an open file handle stands for.
    pub(super) fn file_of(&self, fh: Handle) -> Result<(FileId, SharedFile), FsError> {
        match self.lock().handles.get(&fh) {
            Some(Opened::File { ino, file, .. }) => Ok((*ino, file.clone())),
            _ => Err(FsError::local(
                ErrorKind::Invalid,
                format!("no open file handle {fh}"),
            )),
        }
    }

    /// The listing an open directory handle stands for, and the change count before it.
    pub(super) fn listing_of(&self, fh: Handle) -> Result<(Listing, u64), FsError> {
        match self.lock().handles.get(&fh) {
            Some(Opened::Dir { listing, changes }) => Ok((listing.clone(), *changes)),
            _ => Err(FsError::local(
                ErrorKind::Invalid,
                format!("no open directory handle {fh}"),
            )),
        }
    }

    /// The file of an open file handle whose set-ID bits were not checked yet; they count as
    /// checked from now on.
    pub(super) fn check_setid_once(&self, fh: Handle) -> Option<FileId> {
        match self.lock().handles.get_mut(&fh) {
            Some(Opened::File {
                ino, setid_checked, ..
            }) if !*setid_checked => {
                *setid_checked = true;
                Some(*ino)
            }
            _ => None,
        }
    }

    /// The state of an open file.
    pub(super) fn file(&self, ino: FileId) -> Option<SharedFile> {
        self.lock().files.get(&ino).cloned()
    }

    /// Enters `file` as the state of `ino`, or returns the state entered meanwhile.
    pub(super) fn file_or_insert(&self, ino: FileId, file: SharedFile) -> SharedFile {
        self.lock().files.entry(ino).or_insert(file).clone()
    }

    /// Enters a new file's state (its inode is new, so none is there).
    pub(super) fn insert_file(&self, ino: FileId, file: SharedFile) {
        self.lock().files.insert(ino, file);
    }

    /// Takes `file` out of the table, if it is still the state of `ino` there.
    pub(super) fn remove_file(&self, ino: FileId, file: &SharedFile) {
        let mut tables = self.lock();
        if tables.files.get(&ino).is_some_and(|f| Arc::ptr_eq(f, file)) {
            tables.files.remove(&ino);
        }
    }

    /// Every open file, for a caller that then takes their states one by one.
    pub(super) fn files(&self) -> Vec<(FileId, SharedFile)> {
        let tables = self.lock();
        tables
            .files
            .iter()
            .map(|(&ino, file)| (ino, file.clone()))
            .collect()
    }

    /// How many files are open.
    pub(super) fn open_files(&self) -> usize {
        self.lock().files.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::Attr;

    fn file(ino: u64) -> SharedFile {
        let ino = FileId(ino);
        let cipher = std::sync::Arc::new(crypto::FileKeys::generate());
        let state = FileState::created(ino, cipher, &Attr::default(), None);
        Arc::new(tokio::sync::Mutex::new(state))
    }

    #[test]
    fn handles_stand_for_what_they_opened() {
        let table = OpenTable::new();
        let state = file(7);
        let fh = table.add_handle(Opened::File {
            ino: FileId(7),
            file: state.clone(),
            setid_checked: false,
        });
        let dh = table.add_handle(Opened::Dir {
            listing: Listing::default(),
            changes: 3,
        });
        assert_ne!(fh, dh);
        assert!(Arc::ptr_eq(&table.file_of(fh).expect("a file").1, &state));
        assert_eq!(table.listing_of(dh).expect("a directory").1, 3);
        assert_eq!(
            table.file_of(dh).expect_err("not a file").kind(),
            ErrorKind::Invalid
        );
        assert!(table.listing_of(fh).is_err(), "not a directory");
        assert_eq!(table.check_setid_once(fh), Some(FileId(7)));
        assert_eq!(table.check_setid_once(fh), None, "checked once per handle");
        table.remove_handle(fh);
        assert!(table.file_of(fh).is_err());
    }

    #[test]
    fn only_the_state_in_the_table_leaves_it() {
        let table = OpenTable::new();
        let (first, second) = (file(7), file(7));
        table.insert_file(FileId(7), first.clone());
        assert!(Arc::ptr_eq(
            &table.file_or_insert(FileId(7), second.clone()),
            &first
        ));
        table.remove_file(FileId(7), &second);
        assert_eq!(table.open_files(), 1, "another state: still open");
        table.remove_file(FileId(7), &first);
        assert!(table.file(FileId(7)).is_none() && table.files().is_empty());
    }
}
