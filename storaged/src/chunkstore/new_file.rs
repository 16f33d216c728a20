//! New chunk files: written unnamed (`O_TMPFILE`), or under a temporary name where the
//! filesystem has none, or into a spare, and only then given their name, which fails rather
//! than replace a file.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::{ChunkStoreError, DirChunkStore, io_error};

/// Where an open file can be named by descriptor, for `linkat`.
pub(super) const PROC_FDS: &str = "/proc/self/fd";

/// A chunk file being written: unnamed (`O_TMPFILE`) or under a temporary name.
pub(super) struct NewFile {
    pub file: File,
    temp: Option<TempName>,
    /// Written into this spare, which the naming renames.
    pub spare: Option<u64>,
}

/// A temporary file name, removed when dropped (after the file got its real name, or failed).
struct TempName(PathBuf);

impl Drop for TempName {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

impl NewFile {
    /// A chunk file written into spare `n`, which its naming renames.
    pub(super) fn in_spare(file: File, n: u64) -> NewFile {
        NewFile {
            file,
            temp: None,
            spare: Some(n),
        }
    }

    /// Gives the written file its chunk name, which must not exist yet.
    pub(super) fn name(self, path: &Path) -> Result<File, ChunkStoreError> {
        let NewFile { file, temp, .. } = self;
        let linked = match &temp {
            None => {
                use std::os::fd::AsRawFd;
                let by_fd = format!("{PROC_FDS}/{}", file.as_raw_fd());
                rustix::fs::linkat(
                    rustix::fs::CWD,
                    by_fd.as_str(),
                    rustix::fs::CWD,
                    path,
                    rustix::fs::AtFlags::SYMLINK_FOLLOW,
                )
                .map_err(io::Error::from)
            }
            Some(TempName(temp)) => fs::hard_link(temp, path),
        };
        match linked {
            Ok(()) => Ok(file),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(ChunkStoreError::Exists {
                path: path.to_path_buf(),
            }),
            Err(e) => Err(io_error("linking", path)(e)),
        }
    }
}

/// A fresh name for a temporary file in `dir` (chunk names never start with a dot).
pub(super) fn temp_path(dir: &Path) -> PathBuf {
    dir.join(format!(
        ".tmp-{}",
        hex::encode(identity::random_bytes::<8>())
    ))
}

impl DirChunkStore {
    /// A new, empty file in chunk directory `dir` (created if missing: then true), to be
    /// named once written.
    pub(super) fn new_file(&self, dir: &Path) -> Result<(NewFile, bool), ChunkStoreError> {
        use rustix::fs::{Mode, OFlags};
        if let Some(spare) = self.take_spare() {
            return Ok((spare, false));
        }
        let mut made_dir = false;
        while self.unnamed_files.load(Ordering::Relaxed) {
            let flags = OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC;
            match rustix::fs::open(dir, flags, Mode::from_raw_mode(0o666)) {
                Ok(fd) => {
                    let file = NewFile {
                        file: File::from(fd),
                        temp: None,
                        spare: None,
                    };
                    return Ok((file, made_dir));
                }
                Err(rustix::io::Errno::NOENT) if !made_dir => made_dir = self.ensure_dir(dir)?,
                Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR) => {
                    tracing::info!(dir = %dir.display(), "this filesystem has no unnamed files (O_TMPFILE); new chunk files start under a temporary name");
                    self.unnamed_files.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(io_error("creating a chunk file in", dir)(e.into())),
            }
        }
        made_dir |= self.ensure_dir(dir)?;
        let temp = temp_path(dir);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(io_error("creating", &temp))?;
        let file = NewFile {
            file,
            temp: Some(TempName(temp)),
            spare: None,
        };
        Ok((file, made_dir))
    }
}
