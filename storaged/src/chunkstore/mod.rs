//! The chunk store: one file per sealed chunk under the chunk root, laid out as
//! `docs/format.md` section 3 says (`format::layout`).
//!
//! A chunk file is written once and never changed: an unnamed file (`O_TMPFILE`, or a
//! temporary name where the filesystem has none), linked to its final name (which fails if
//! the name exists, so nothing is ever replaced), and then durable: at
//! once (fsync of the file and of each directory that gained an entry), or, in a store that
//! defers, at the next [`ChunkStore::sync_pending`], which the metadata store calls before
//! any commit naming the chunk becomes durable. Backup tools may copy the tree at any moment.
//! The store checks lengths and headers but cannot decrypt anything.
//!
//! Where storaged is the chunk root's one user (the embedded metadata store), a deleted chunk
//! file keeps its inode: it is renamed into `spare/` and emptied, and a new chunk file is
//! written into a spare and renamed to its name, when there is one (see [`SPARES_MAX`]). On
//! ext4 without a journal, allocating an inode skips, one by one, every inode freed in the
//! last minute (six while its inode table block is dirty): creating files after deleting
//! thousands took up to 1 ms each, in storaged's chunk directories above all, where every
//! file's chunks live.
//!
//! `new_file` makes the unnamed or temporary files new chunks are written into, `spares` keeps
//! the emptied ones, `direct` reads and writes large chunks past the page cache, and `convert`
//! converts a chunk root of an older layout.

mod convert;
mod direct;
mod new_file;
mod spares;

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use format::envelope::Header;
use format::ids::{ChunkIndex, Generation};
use format::layout;
use format::limits::{ENVELOPE_BYTES, SEALED_CHUNK_BYTES_MAX};

use self::direct::{UNCACHED_READ_BYTES, UNCACHED_WRITE_BYTES, read_uncached, write_uncached};
use self::new_file::PROC_FDS;
use self::spares::Spares;
use crate::meta::ChunkRef;

pub use self::spares::SPARES_MAX;

#[derive(Debug, thiserror::Error)]
pub enum ChunkStoreError {
    #[error("chunk file {path} already exists")]
    Exists { path: PathBuf },
    #[error("chunk file {path} is missing")]
    Missing { path: PathBuf },
    #[error("chunk file {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Space on the filesystem that holds the chunks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Space {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub available_bytes: u64,
    pub block_bytes: u32,
}

/// Where sealed chunks live. Operations block: call them from a blocking thread, except work
/// on a few KiB, and a `put` only when the store [`defers`](ChunkStore::defers) its sync.
pub trait ChunkStore: Send + Sync + 'static {
    /// Whether `put` leaves the sync to [`ChunkStore::sync_pending`] (and so does not wait
    /// for the disk).
    fn defers(&self) -> bool;
    /// Stores a new chunk file; fails with `Exists` rather than replace one. Durable on
    /// return unless the store defers, then after the next [`ChunkStore::sync_pending`].
    fn put(&self, chunk: ChunkRef, sealed: &[u8]) -> Result<(), ChunkStoreError>;
    /// Makes every chunk file put before the call durable.
    fn sync_pending(&self) -> Result<(), ChunkStoreError>;
    fn get(&self, chunk: ChunkRef) -> Result<Bytes, ChunkStoreError>;
    /// The header and total length of a stored chunk, without reading its body.
    fn header(&self, chunk: ChunkRef) -> Result<(Header, u64), ChunkStoreError> {
        self.open(chunk).map(|(_, header, len)| (header, len))
    }
    /// A stored chunk file opened for reading, with its header and total length.
    fn open(&self, chunk: ChunkRef) -> Result<(File, Header, u64), ChunkStoreError>;
    /// Removes a chunk file; a missing one is not an error.
    fn delete(&self, chunk: ChunkRef) -> Result<(), ChunkStoreError>;
    /// Every chunk file of every file, with its age in seconds, for the orphan sweep.
    fn list(&self) -> Result<Vec<(ChunkRef, u64)>, ChunkStoreError>;
    fn space(&self) -> Result<Space, ChunkStoreError>;
}

/// A deferred chunk file at least this large starts its writeback at once.
const EARLY_WRITEBACK_BYTES: usize = 1 << 20;

/// The chunk store storaged serves from: chunk files in a directory tree on a local
/// filesystem (or one that storaged instances share).
#[derive(Debug)]
pub struct DirChunkStore {
    root: PathBuf,
    /// Puts leave syncing to [`ChunkStore::sync_pending`].
    deferred: bool,
    /// A deferred put happened since the last sync.
    pending: AtomicBool,
    /// New chunk files start unnamed (`O_TMPFILE`) and get their name once written; false
    /// where the filesystem or a missing `/proc` cannot, and they start under a temporary name.
    unnamed_files: AtomicBool,
    /// Emptied files in `spare/`, for new chunk files; none where the filesystem cannot
    /// rename without replacing.
    spares: Mutex<Spares>,
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ChunkStoreError + 'a {
    move |source| ChunkStoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), ChunkStoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("syncing directory", dir))
}

/// One syncfs writes out every file and directory of the filesystem holding `root` and commits
/// its journal once: far cheaper than a sync per file when many are pending.
fn sync_filesystem(root: &Path) -> Result<(), ChunkStoreError> {
    File::open(root)
        .and_then(|d| rustix::fs::syncfs(&d).map_err(io::Error::from))
        .map_err(io_error("syncing the filesystem of", root))
}

impl DirChunkStore {
    /// Opens the chunk root, converting a layout 1 root to layout 2 first (see
    /// [`format::layout`]). `deferred`: puts are not synced one by one; whoever commits
    /// metadata durably calls [`ChunkStore::sync_pending`] first.
    pub fn open(root: &Path, deferred: bool) -> Result<DirChunkStore, ChunkStoreError> {
        fs::create_dir_all(root).map_err(io_error("creating chunk root", root))?;
        let store = DirChunkStore {
            root: root.to_path_buf(),
            deferred,
            pending: AtomicBool::new(false),
            unnamed_files: AtomicBool::new(Path::new(PROC_FDS).is_dir()),
            spares: Mutex::new(Spares::default()),
        };
        store.check_layout()?;
        Ok(store)
    }

    /// Where `chunk`'s file is.
    pub fn path(&self, chunk: ChunkRef) -> PathBuf {
        let ChunkRef {
            ino,
            index,
            generation,
        } = chunk;
        layout::chunk_path(&self.root, ino, index.get(), generation.get())
    }

    /// Opens a stored chunk file: its path, the file, and its length.
    fn open_chunk(&self, chunk: ChunkRef) -> Result<(PathBuf, File, u64), ChunkStoreError> {
        let path = self.path(chunk);
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ChunkStoreError::Missing { path: path.clone() },
            _ => io_error("opening", &path)(e),
        })?;
        let len = file.metadata().map_err(io_error("reading", &path))?.len();
        Ok((path, file, len))
    }

    /// Creates a chunk directory if missing; true if the root gained it (the root must then
    /// be synced before a new chunk file in it counts as durable).
    fn ensure_dir(&self, dir: &Path) -> Result<bool, ChunkStoreError> {
        if dir.is_dir() {
            return Ok(false);
        }
        match fs::create_dir(dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_error("creating", dir)(e)),
        }
    }
}

impl ChunkStore for DirChunkStore {
    fn defers(&self) -> bool {
        self.deferred
    }

    fn put(&self, chunk: ChunkRef, sealed: &[u8]) -> Result<(), ChunkStoreError> {
        assert!(
            (ENVELOPE_BYTES..=SEALED_CHUNK_BYTES_MAX).contains(&sealed.len()),
            "chunk of {} bytes reached the chunk store unchecked",
            sealed.len()
        );
        let path = self.path(chunk);
        let dir = path.parent().expect("chunk files are in a directory");
        let mut gained = vec![dir.to_path_buf()];
        let (new, mut made_dir) = self.new_file(dir)?;
        let done = if sealed.len() >= UNCACHED_WRITE_BYTES {
            write_uncached(&new.file, sealed)
        } else {
            Ok(0)
        };
        let written = done.and_then(|done| {
            use std::os::unix::fs::FileExt;
            new.file.write_all_at(&sealed[done..], done as u64)
        });
        if let Err(error) = written {
            if let Some(n) = new.spare {
                self.free_spare(n);
            }
            return Err(io_error("writing", &path)(error));
        }
        let file = match new.spare {
            Some(n) => {
                made_dir |= self.name_spare(n, &path)?;
                new.file
            }
            None => new.name(&path)?,
        };
        if made_dir {
            gained.push(self.root.clone());
        }
        if self.deferred {
            if sealed.len() >= EARLY_WRITEBACK_BYTES {
                // Start writing it out now, so that the next sync finds little left to do and
                // a stream of large chunks overlaps its disk writes with the network.
                let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
            }
            self.pending.store(true, Ordering::Release);
            return Ok(());
        }
        // The data and every directory that gained an entry are synced at once: the
        // filesystem journals them together, so this costs about one sync, not several. The
        // chunk counts only once the metadata commit that follows names it.
        std::thread::scope(|scope| {
            let syncs: Vec<_> = gained
                .iter()
                .map(|d| scope.spawn(move || sync_dir(d)))
                .collect();
            let data = file.sync_all().map_err(io_error("syncing", &path));
            syncs
                .into_iter()
                .map(|s| s.join().expect("sync thread panicked"))
                .chain([data])
                .collect()
        })
    }

    fn sync_pending(&self) -> Result<(), ChunkStoreError> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let synced = sync_filesystem(&self.root);
        if synced.is_err() {
            self.pending.store(true, Ordering::Release);
        }
        synced
    }

    fn get(&self, chunk: ChunkRef) -> Result<Bytes, ChunkStoreError> {
        let (path, mut file, len) = self.open_chunk(chunk)?;
        if len > SEALED_CHUNK_BYTES_MAX as u64 || len < ENVELOPE_BYTES as u64 {
            return Err(ChunkStoreError::Damaged {
                path,
                reason: format!("{len} bytes"),
            });
        }
        if len >= UNCACHED_READ_BYTES
            && let Some(sealed) =
                read_uncached(&file, len as usize).map_err(io_error("reading", &path))?
        {
            return Ok(sealed);
        }
        let mut sealed = Vec::with_capacity(len as usize);
        file.read_to_end(&mut sealed)
            .map_err(io_error("reading", &path))?;
        Ok(sealed.into())
    }

    fn open(&self, chunk: ChunkRef) -> Result<(File, Header, u64), ChunkStoreError> {
        use std::os::unix::fs::FileExt;
        let (path, file, len) = self.open_chunk(chunk)?;
        let mut head = [0u8; ENVELOPE_BYTES];
        file.read_exact_at(&mut head, 0)
            .map_err(io_error("reading", &path))?;
        // It checks the length too.
        let header = Header::parse_head(&head, usize::try_from(len).unwrap_or(usize::MAX))
            .map_err(|e| ChunkStoreError::Damaged {
                path,
                reason: e.to_string(),
            })?;
        Ok((file, header, len))
    }

    fn delete(&self, chunk: ChunkRef) -> Result<(), ChunkStoreError> {
        let path = self.path(chunk);
        if self.recycle(&path) {
            return Ok(());
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("removing", &path)(e)),
        }
    }

    fn list(&self) -> Result<Vec<(ChunkRef, u64)>, ChunkStoreError> {
        let mut out = Vec::new();
        for first in read_dir_names(&self.root)? {
            let dir = self.root.join(&first);
            if first.len() != 2 || !dir.is_dir() {
                continue;
            }
            for name in read_dir_names(&dir)? {
                let Some((file, index, generation)) = layout::parse_chunk_name(&name) else {
                    continue;
                };
                let age = fs::metadata(dir.join(&name))
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .map_or(0, |d| d.as_secs());
                out.push((
                    ChunkRef {
                        ino: file,
                        index: ChunkIndex(index),
                        generation: Generation(generation),
                    },
                    age,
                ));
            }
        }
        Ok(out)
    }

    fn space(&self) -> Result<Space, ChunkStoreError> {
        let stat = rustix::fs::statvfs(&self.root)
            .map_err(|e| io_error("measuring", &self.root)(e.into()))?;
        Ok(Space {
            total_bytes: stat.f_blocks * stat.f_frsize,
            free_bytes: stat.f_bfree * stat.f_frsize,
            available_bytes: stat.f_bavail * stat.f_frsize,
            block_bytes: u32::try_from(stat.f_bsize).unwrap_or(4096),
        })
    }
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>, ChunkStoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("listing", dir)(e)),
    };
    Ok(entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}

#[cfg(test)]
mod tests;
