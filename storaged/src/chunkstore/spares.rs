//! Spare chunk files: where storaged is the chunk root's one user, a deleted chunk file is
//! renamed into `spare/` and emptied, and a new one is written into it (see the module comment
//! of `chunkstore`).

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use super::new_file::NewFile;
use super::{ChunkStoreError, DirChunkStore, io_error, read_dir_names};

/// Spare files kept at most: empty inodes, a few hundred bytes of inode table each.
pub const SPARES_MAX: usize = 65_536;
/// The directory of spare files, beside the chunk directories.
const SPARE_DIR: &str = "spare";

/// The spare files (named by decimal numbers in `spare/`).
#[derive(Debug, Default)]
pub(super) struct Spares {
    /// Spares ready for a new chunk file.
    free: Vec<u64>,
    /// Spare files that exist: free, or being written.
    count: usize,
    /// The next number for a new spare.
    next: u64,
    /// Recycling works here (renames without replacing).
    enabled: bool,
}

impl DirChunkStore {
    /// Keeps deleted chunk files as spares for new ones (see the module comment), starting
    /// with those left from before (the directory is made if missing; a file past the bound,
    /// or not named by a number, is removed). Only for the chunk root's one user: storaged
    /// instances sharing a root would write into the same spare.
    pub fn keep_spares(&self) -> Result<(), ChunkStoreError> {
        let dir = self.root.join(SPARE_DIR);
        self.ensure_dir(&dir)?;
        let mut spares = self.spares.lock().expect("spares poisoned");
        for name in read_dir_names(&dir)? {
            match name.parse::<u64>() {
                Ok(n) if spares.count < SPARES_MAX => {
                    spares.free.push(n);
                    spares.count += 1;
                    spares.next = spares.next.max(n + 1);
                }
                _ => {
                    let _ = fs::remove_file(dir.join(&name));
                }
            }
        }
        spares.enabled = true;
        Ok(())
    }

    fn spare_path(&self, n: u64) -> PathBuf {
        self.root.join(SPARE_DIR).join(n.to_string())
    }

    /// A spare file opened for writing a new chunk, emptied (a crash may have left bytes in
    /// it), if there is one.
    pub(super) fn take_spare(&self) -> Option<NewFile> {
        let n = self.spares.lock().expect("spares poisoned").free.pop()?;
        // Truncated only if it is not empty: `O_TRUNC` truncates an empty file too, which
        // cost ext4 about 35 us, more than the rest of taking the spare.
        let opened = OpenOptions::new()
            .write(true)
            .open(self.spare_path(n))
            .and_then(|file| {
                if file.metadata()?.len() != 0 {
                    file.set_len(0)?;
                }
                Ok(file)
            });
        match opened {
            Ok(file) => Some(NewFile::in_spare(file, n)),
            Err(error) => {
                tracing::warn!(%error, spare = n, "a spare chunk file is unusable; dropping it");
                let mut spares = self.spares.lock().expect("spares poisoned");
                spares.count -= 1;
                None
            }
        }
    }

    /// Gives a chunk written into spare `n` its name, which must not exist yet (creating
    /// the chunk directory if missing: then true). A refused name leaves the spare free.
    pub(super) fn name_spare(&self, n: u64, path: &Path) -> Result<bool, ChunkStoreError> {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        let from = self.spare_path(n);
        let dir = path.parent().expect("chunk files are in a directory");
        let mut made_dir = false;
        loop {
            match renameat_with(CWD, &from, CWD, path, RenameFlags::NOREPLACE) {
                Ok(()) => {
                    self.spares.lock().expect("spares poisoned").count -= 1;
                    return Ok(made_dir);
                }
                Err(rustix::io::Errno::NOENT) if !made_dir && !dir.is_dir() => {
                    made_dir = self.ensure_dir(dir)?;
                }
                Err(error) => {
                    self.free_spare(n);
                    return Err(match error {
                        rustix::io::Errno::EXIST => ChunkStoreError::Exists {
                            path: path.to_path_buf(),
                        },
                        _ => io_error("naming", path)(error.into()),
                    });
                }
            }
        }
    }

    /// Gives spare `n` back unused, for another new chunk file (a file written into it
    /// partly is emptied again when next taken).
    pub(super) fn free_spare(&self, n: u64) {
        self.spares.lock().expect("spares poisoned").free.push(n);
    }

    /// Deletes a chunk file by making it an emptied spare, if there is room: true if it is
    /// gone; false if it must be removed instead (no room, or the filesystem cannot).
    pub(super) fn recycle(&self, path: &Path) -> bool {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        let n = {
            let mut spares = self.spares.lock().expect("spares poisoned");
            if !spares.enabled || spares.count >= SPARES_MAX {
                return false;
            }
            spares.count += 1;
            spares.next += 1;
            spares.next - 1
        };
        let to = self.spare_path(n);
        if let Err(error) = renameat_with(CWD, path, CWD, &to, RenameFlags::NOREPLACE) {
            let gone = error == rustix::io::Errno::NOENT && !path.exists();
            let mut spares = self.spares.lock().expect("spares poisoned");
            spares.count -= 1;
            if !gone
                && matches!(
                    error,
                    rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::NOENT
                )
            {
                tracing::info!(%error, "chunk files are removed, not kept as spares, here");
                spares.enabled = false;
            }
            return gone;
        }
        // Its blocks are freed now, as a removal would free them.
        let emptied = OpenOptions::new().write(true).truncate(true).open(&to);
        let mut spares = self.spares.lock().expect("spares poisoned");
        match emptied {
            Ok(_) => spares.free.push(n),
            Err(error) => {
                spares.count -= 1;
                drop(spares);
                tracing::warn!(%error, "could not empty a spare chunk file; removing it");
                let _ = fs::remove_file(&to);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunkstore::tests::{chunk, sealed};
    use crate::chunkstore::{ChunkStore, ChunkStoreError};

    fn spares_in(root: &Path) -> Vec<(String, u64)> {
        let mut spares: Vec<(String, u64)> = fs::read_dir(root.join(SPARE_DIR))
            .expect("spare dir")
            .map(|e| {
                let e = e.expect("entry");
                let name = e.file_name().into_string().expect("name");
                (name, e.metadata().expect("metadata").len())
            })
            .collect();
        spares.sort();
        spares
    }

    /// A deleted chunk file keeps its inode, emptied, for the next new one; the spare is no
    /// chunk to the listing, and a name that exists already is refused with the spare kept.
    #[test]
    fn a_deleted_chunk_file_becomes_the_next_new_one() {
        use std::os::unix::fs::MetadataExt;
        for deferred in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = DirChunkStore::open(dir.path(), deferred).expect("open");
            store.keep_spares().expect("spares");
            let chunk = |ino: u64| chunk(ino, 0, 1);
            let (old, new, kept) = (
                chunk(0x1100 << 48),
                chunk(0x2200 << 48),
                chunk(0x3300 << 48),
            );
            store.put(old, &sealed(5000)).expect("put");
            store.put(kept, &sealed(100)).expect("put");
            let inode = fs::metadata(store.path(old)).expect("stat").ino();
            store.delete(old).expect("delete");
            assert!(!store.path(old).exists());
            assert_eq!(spares_in(dir.path()), vec![("0".into(), 0)], "emptied");
            assert_eq!(store.list().expect("list"), vec![(kept, 0)]);

            let mut other = sealed(100);
            other[99] = 7;
            assert!(matches!(
                store.put(kept, &other),
                Err(ChunkStoreError::Exists { .. })
            ));
            assert_eq!(store.get(kept).expect("get").as_ref(), &sealed(100)[..]);
            assert_eq!(
                spares_in(dir.path()).len(),
                1,
                "the refused put left the spare"
            );

            store.put(new, &other).expect("put into the spare");
            assert_eq!(fs::metadata(store.path(new)).expect("stat").ino(), inode);
            assert_eq!(store.get(new).expect("get").as_ref(), &other[..]);
            assert!(spares_in(dir.path()).is_empty());
            store
                .put(chunk(0x4400 << 48), &other)
                .expect("a fresh file when none is spare");
        }
    }

    /// Spares outlive the store, and one a crash left bytes in is emptied before its use.
    #[test]
    fn spares_are_found_again_and_emptied_before_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let chunk = |ino: u64| chunk(ino, 0, 1);
        {
            let store = DirChunkStore::open(dir.path(), true).expect("open");
            store.keep_spares().expect("spares");
            store.put(chunk(0x1100 << 48), &sealed(100)).expect("put");
            store.delete(chunk(0x1100 << 48)).expect("delete");
        }
        fs::write(dir.path().join(SPARE_DIR).join("0"), vec![9u8; 8000]).expect("leftovers");
        fs::write(dir.path().join(SPARE_DIR).join("junk"), b"x").expect("a stray file");
        let store = DirChunkStore::open(dir.path(), true).expect("reopen");
        store.keep_spares().expect("spares");
        assert_eq!(
            spares_in(dir.path()),
            vec![("0".into(), 8000)],
            "strays removed"
        );
        store.put(chunk(0x2200 << 48), &sealed(100)).expect("put");
        assert_eq!(
            store.get(chunk(0x2200 << 48)).expect("get").as_ref(),
            &sealed(100)[..]
        );
        assert!(spares_in(dir.path()).is_empty());
        store.delete(chunk(0x2200 << 48)).expect("delete");
        assert_eq!(
            spares_in(dir.path()),
            vec![("1".into(), 0)],
            "numbers go on"
        );
    }
}
