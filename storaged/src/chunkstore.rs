//! The chunk store: one file per sealed chunk under the chunk root, laid out as
//! `docs/format.md` section 3 says (`format::layout`).
//!
//! A chunk file is written once and never changed: temporary file, hard link to its final
//! name (which fails if the name exists, so nothing is ever replaced), and then durable: at
//! once (fsync of the file and of each directory that gained an entry), or, in a store that
//! defers, at the next [`ChunkStore::sync_pending`], which the metadata store calls before
//! any commit naming the chunk becomes durable. Backup tools may copy the tree at any moment.
//! The store checks lengths and headers but cannot decrypt anything.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use format::envelope::Header;
use format::ids::FileId;
use format::layout;
use format::limits::{ENVELOPE_BYTES, SEALED_CHUNK_BYTES_MAX};

use crate::meta::ChunkRef;

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

/// Where sealed chunks live. Operations block (call them from a blocking thread).
pub trait ChunkStore: Send + Sync + 'static {
    /// Stores a new chunk file; fails with `Exists` rather than replace one. Durable on
    /// return unless the store defers, then after the next [`ChunkStore::sync_pending`].
    fn put(&self, chunk: ChunkRef, sealed: &[u8]) -> Result<(), ChunkStoreError>;
    /// Makes every chunk file put before the call durable.
    fn sync_pending(&self) -> Result<(), ChunkStoreError>;
    fn get(&self, chunk: ChunkRef) -> Result<Vec<u8>, ChunkStoreError>;
    /// The header and total length of a stored chunk, without reading its body.
    fn header(&self, chunk: ChunkRef) -> Result<(Header, u64), ChunkStoreError>;
    /// Removes a chunk file; a missing one is not an error.
    fn delete(&self, chunk: ChunkRef) -> Result<(), ChunkStoreError>;
    /// Every chunk file of every file, with its age in seconds, for the orphan sweep.
    fn list(&self) -> Result<Vec<(ChunkRef, u64)>, ChunkStoreError>;
    fn space(&self) -> Result<Space, ChunkStoreError>;
}

/// A deferred chunk file at least this large starts its writeback at once.
const EARLY_WRITEBACK_BYTES: usize = 1 << 20;

#[derive(Debug)]
pub struct DirChunkStore {
    root: PathBuf,
    /// Puts leave syncing to [`ChunkStore::sync_pending`].
    deferred: bool,
    /// A deferred put happened since the last sync.
    pending: AtomicBool,
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

impl DirChunkStore {
    /// Opens the chunk root. `deferred`: puts are not synced one by one; whoever commits
    /// metadata durably calls [`ChunkStore::sync_pending`] first.
    pub fn open(root: &Path, deferred: bool) -> Result<DirChunkStore, ChunkStoreError> {
        fs::create_dir_all(root).map_err(io_error("creating chunk root", root))?;
        Ok(DirChunkStore {
            root: root.to_path_buf(),
            deferred,
            pending: AtomicBool::new(false),
        })
    }

    pub fn path(&self, chunk: ChunkRef) -> PathBuf {
        layout::chunk_path(&self.root, FileId(chunk.ino), chunk.index, chunk.generation)
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

    /// Creates the file's directory and any missing parent, and notes each parent that gained
    /// an entry: it must be synced before a new chunk file in it counts as durable.
    fn ensure_dir(&self, dir: &Path, gained: &mut Vec<PathBuf>) -> Result<(), ChunkStoreError> {
        if dir.is_dir() {
            return Ok(());
        }
        let parent = dir.parent().expect("chunk directories are below the root");
        self.ensure_dir(parent, gained)?;
        match fs::create_dir(dir) {
            Ok(()) => {
                gained.push(parent.to_path_buf());
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io_error("creating", dir)(e)),
        }
    }
}

impl ChunkStore for DirChunkStore {
    fn put(&self, chunk: ChunkRef, sealed: &[u8]) -> Result<(), ChunkStoreError> {
        assert!(
            (ENVELOPE_BYTES..=SEALED_CHUNK_BYTES_MAX).contains(&sealed.len()),
            "chunk of {} bytes reached the chunk store unchecked",
            sealed.len()
        );
        let path = self.path(chunk);
        let dir = path.parent().expect("chunk files are in a directory");
        let mut gained = vec![dir.to_path_buf()];
        self.ensure_dir(dir, &mut gained)?;
        let temp = dir.join(format!(
            ".tmp-{}",
            hex::encode(identity::random_bytes::<8>())
        ));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .and_then(|mut file| file.write_all(sealed).map(|()| file));
        let file = written.map_err(io_error("writing", &temp));
        let linked = file.and_then(|file| {
            fs::hard_link(&temp, &path)
                .map(|()| file)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => ChunkStoreError::Exists { path: path.clone() },
                    _ => io_error("linking", &path)(e),
                })
        });
        let _ = fs::remove_file(&temp);
        let file = linked?;
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
        // One syncfs writes out every file and directory of the chunk filesystem and commits
        // its journal once: far cheaper than a sync per chunk file when many are pending.
        let synced = File::open(&self.root)
            .and_then(|root| rustix::fs::syncfs(&root).map_err(io::Error::from));
        if let Err(error) = synced {
            self.pending.store(true, Ordering::Release);
            return Err(io_error("syncing the filesystem of", &self.root)(error));
        }
        Ok(())
    }

    fn get(&self, chunk: ChunkRef) -> Result<Vec<u8>, ChunkStoreError> {
        let (path, mut file, len) = self.open_chunk(chunk)?;
        if len > SEALED_CHUNK_BYTES_MAX as u64 || len < ENVELOPE_BYTES as u64 {
            return Err(ChunkStoreError::Damaged {
                path,
                reason: format!("{len} bytes"),
            });
        }
        let mut sealed = Vec::with_capacity(len as usize);
        file.read_to_end(&mut sealed)
            .map_err(io_error("reading", &path))?;
        Ok(sealed)
    }

    fn header(&self, chunk: ChunkRef) -> Result<(Header, u64), ChunkStoreError> {
        let (path, mut file, len) = self.open_chunk(chunk)?;
        let mut head = vec![0u8; ENVELOPE_BYTES];
        file.read_exact(&mut head)
            .map_err(io_error("reading", &path))?;
        // Header::parse checks lengths against the buffer; check the real length here.
        if len > SEALED_CHUNK_BYTES_MAX as u64 {
            return Err(ChunkStoreError::Damaged {
                path,
                reason: format!("{len} bytes"),
            });
        }
        let mut probe = head.clone();
        probe.resize(len as usize, 0);
        let header = Header::parse(&probe).map_err(|e| ChunkStoreError::Damaged {
            path,
            reason: e.to_string(),
        })?;
        Ok((header, len))
    }

    fn delete(&self, chunk: ChunkRef) -> Result<(), ChunkStoreError> {
        let path = self.path(chunk);
        match fs::remove_file(&path) {
            Ok(()) => {
                let dir = path.parent().expect("chunk files are in a directory");
                // Leave no empty directories behind; a concurrent put recreates them.
                let _ = fs::remove_dir(dir);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("removing", &path)(e)),
        }
    }

    fn list(&self) -> Result<Vec<(ChunkRef, u64)>, ChunkStoreError> {
        let mut out = Vec::new();
        for first in read_dir_names(&self.root)? {
            for second in read_dir_names(&self.root.join(&first))? {
                for file in read_dir_names(&self.root.join(&first).join(&second))? {
                    let Ok(ino) = u64::from_str_radix(&file, 16) else {
                        continue;
                    };
                    let dir = self.root.join(&first).join(&second).join(&file);
                    for name in read_dir_names(&dir)? {
                        let Some((index, generation)) = layout::parse_chunk_name(&name) else {
                            continue;
                        };
                        let age = fs::metadata(dir.join(&name))
                            .and_then(|m| m.modified())
                            .ok()
                            .and_then(|t| t.elapsed().ok())
                            .map_or(0, |d| d.as_secs());
                        out.push((
                            ChunkRef {
                                ino,
                                index,
                                generation,
                            },
                            age,
                        ));
                    }
                }
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
mod tests {
    use super::*;

    fn sealed(len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        bytes[..2].copy_from_slice(b"VC");
        bytes[2] = 1;
        bytes[3] = 1;
        bytes
    }

    #[test]
    fn put_never_replaces_and_get_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DirChunkStore::open(dir.path(), false).expect("open");
        let chunk = ChunkRef {
            ino: 0xabcd_0000_0000_0001,
            index: 2,
            generation: 5,
        };
        store.put(chunk, &sealed(100)).expect("put");
        assert!(matches!(
            store.put(chunk, &sealed(90)),
            Err(ChunkStoreError::Exists { .. })
        ));
        assert_eq!(store.get(chunk).expect("get"), sealed(100));
        let (header, len) = store.header(chunk).expect("header");
        assert!(header.last);
        assert_eq!(len, 100);
        assert!(store.path(chunk).ends_with("ab/cd/abcd000000000001/2.5"));
        assert_eq!(store.list().expect("list"), vec![(chunk, 0)]);
        store.delete(chunk).expect("delete");
        store.delete(chunk).expect("deleting twice is fine");
        assert!(matches!(
            store.get(chunk),
            Err(ChunkStoreError::Missing { .. })
        ));
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("ab/cd"))
            .expect("dir")
            .collect();
        assert!(
            leftovers.is_empty(),
            "no temporary files or empty directories stay"
        );
    }
}
