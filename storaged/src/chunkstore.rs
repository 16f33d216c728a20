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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
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

/// A chunk file at least this large that is not in the page cache is read past it
/// (`O_DIRECT`): the disk fills our buffer directly, without cache pages that would be filled,
/// copied once and reclaimed later (a client caches what it reads itself).
const UNCACHED_READ_BYTES: u64 = 1 << 20;
/// What `O_DIRECT` needs buffers, offsets and lengths aligned to (the largest logical block
/// size in use).
const DIRECT_ALIGN: usize = 4096;

/// A chunk at least this large is written past the page cache (`O_DIRECT`), all but its last
/// partial block: the disk takes it from our buffer, without cache pages to fill and write
/// back (copying into fresh cache pages was most of storaged's time in a stream of puts).
const UNCACHED_WRITE_BYTES: usize = 1 << 20;

thread_local! {
    /// An aligned staging buffer for `O_DIRECT` writes, kept per thread so that its pages stay
    /// mapped from one chunk to the next.
    static STAGING: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes the whole `DIRECT_ALIGN` blocks of `sealed` to the start of a new, empty file past
/// the page cache and returns how many bytes that was; 0 when the filesystem cannot (the
/// caller writes the rest, and everything it gets back, the usual way).
fn write_uncached(file: &File, sealed: &[u8]) -> io::Result<usize> {
    let whole = sealed.len() / DIRECT_ALIGN * DIRECT_ALIGN;
    let written = with_direct_io(file, || {
        STAGING.with(|staging| {
            let mut staging = staging.borrow_mut();
            if staging.len() < whole + DIRECT_ALIGN {
                *staging =
                    vec![0u8; SEALED_CHUNK_BYTES_MAX.next_multiple_of(DIRECT_ALIGN) + DIRECT_ALIGN];
            }
            let skip = staging.as_ptr().align_offset(DIRECT_ALIGN);
            let aligned = &mut staging[skip..skip + whole];
            aligned.copy_from_slice(&sealed[..whole]);
            let mut done = 0;
            while done < whole {
                match rustix::io::pwrite(file, &aligned[done..], done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(rustix::io::Errno::INTR) => {}
                    Err(error) => return Err(error),
                }
            }
            Ok(done)
        })
    })?;
    match written {
        // A short direct write leaves a partial block: start over the usual way.
        Some(Ok(done)) if done % DIRECT_ALIGN == 0 => Ok(done),
        None | Some(Ok(_)) | Some(Err(rustix::io::Errno::INVAL)) => Ok(0),
        Some(Err(error)) => Err(error.into()),
    }
}

/// Runs `io` on `file` with `O_DIRECT` set, and clears it again; `None` when the filesystem
/// does not take the flag.
fn with_direct_io<T>(file: &File, io: impl FnOnce() -> T) -> io::Result<Option<T>> {
    use rustix::fs::OFlags;
    let flags = rustix::fs::fcntl_getfl(file)?;
    if rustix::fs::fcntl_setfl(file, flags | OFlags::DIRECT).is_err() {
        return Ok(None);
    }
    let outcome = io();
    rustix::fs::fcntl_setfl(file, flags)?;
    Ok(Some(outcome))
}

/// Reads a whole chunk file of `len` bytes past the page cache, unless its start is cached
/// (then a buffered read is cheaper) or the filesystem cannot (`None` for both).
fn read_uncached(file: &File, len: usize) -> io::Result<Option<Bytes>> {
    use rustix::io::{Errno, ReadWriteFlags};
    let mut probe = [0u8; 1];
    match rustix::io::preadv2(
        file,
        &mut [io::IoSliceMut::new(&mut probe)],
        0,
        ReadWriteFlags::NOWAIT,
    ) {
        Err(Errno::AGAIN) => {}
        // Cached, or no way to tell.
        _ => return Ok(None),
    }
    let read = with_direct_io(file, || {
        let rounded = len.next_multiple_of(DIRECT_ALIGN);
        let mut buffer = vec![0u8; rounded + DIRECT_ALIGN];
        let skip = buffer.as_ptr().align_offset(DIRECT_ALIGN);
        let mut got = 0;
        loop {
            let window = &mut buffer[skip + got..skip + rounded];
            if window.is_empty() {
                break;
            }
            match rustix::io::pread(file, window, got as u64) {
                Ok(0) => break,
                // A read that ends off the alignment ended at the end of the file.
                Ok(n) if n % DIRECT_ALIGN != 0 => {
                    got += n;
                    break;
                }
                Ok(n) => got += n,
                Err(Errno::INTR) => {}
                Err(error) => return Err(error),
            }
        }
        Ok((got == len).then(|| Bytes::from(buffer).slice(skip..skip + len)))
    })?;
    match read {
        Some(Ok(sealed)) => Ok(sealed),
        // Refused: read it the usual way (as when it changed under us, which chunk files
        // never do).
        None | Some(Err(Errno::INVAL)) => Ok(None),
        Some(Err(error)) => Err(error.into()),
    }
}

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

/// Spare files kept at most: empty inodes, a few hundred bytes of inode table each.
pub const SPARES_MAX: usize = 65_536;
/// The directory of spare files, beside the chunk directories.
const SPARE_DIR: &str = "spare";

/// The spare files (named by decimal numbers in `spare/`).
#[derive(Debug, Default)]
struct Spares {
    /// Spares ready for a new chunk file.
    free: Vec<u64>,
    /// Spare files that exist: free, or being written.
    count: usize,
    /// The next number for a new spare.
    next: u64,
    /// Recycling works here (renames without replacing).
    enabled: bool,
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

/// Where an open file can be named by descriptor, for `linkat`.
const PROC_FDS: &str = "/proc/self/fd";

/// A chunk file being written: unnamed (`O_TMPFILE`) or under a temporary name.
struct NewFile {
    file: File,
    temp: Option<TempName>,
    /// Written into this spare, which the naming renames.
    spare: Option<u64>,
}

/// A temporary file name, removed when dropped (after the file got its real name, or failed).
struct TempName(PathBuf);

impl Drop for TempName {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

impl NewFile {
    /// Gives the written file its chunk name, which must not exist yet.
    fn name(self, path: &Path) -> Result<File, ChunkStoreError> {
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
fn temp_path(dir: &Path) -> PathBuf {
    dir.join(format!(
        ".tmp-{}",
        hex::encode(identity::random_bytes::<8>())
    ))
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

    /// Converts a layout 1 root; refuses an unknown layout.
    fn check_layout(&self) -> Result<(), ChunkStoreError> {
        let root = &self.root;
        let marker = root.join(layout::LAYOUT_FILE);
        match fs::read_to_string(&marker) {
            Ok(text) if text.trim() == layout::LAYOUT_VERSION.to_string() => return Ok(()),
            Ok(text) => {
                return Err(ChunkStoreError::Damaged {
                    path: marker,
                    reason: format!(
                        "names layout {:?}; this build reads layouts 1 and {}",
                        text.trim(),
                        layout::LAYOUT_VERSION
                    ),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("reading", &marker)(e)),
        }
        let moved = self.convert_layout_1()?;
        if moved > 0 {
            tracing::info!(root = %root.display(), chunks = moved, "converted the chunk root from layout 1 to layout {}", layout::LAYOUT_VERSION);
        }
        // The conversion is durable before the marker says it is done.
        sync_filesystem(root)?;
        let temp = temp_path(root);
        fs::write(&temp, format!("{}\n", layout::LAYOUT_VERSION))
            .and_then(|()| File::open(&temp)?.sync_all())
            .and_then(|()| fs::rename(&temp, &marker))
            .map_err(io_error("writing", &marker))?;
        sync_dir(root)
    }

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
    fn take_spare(&self) -> Option<NewFile> {
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
            Ok(file) => Some(NewFile {
                file,
                temp: None,
                spare: Some(n),
            }),
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
    fn name_spare(&self, n: u64, path: &Path) -> Result<bool, ChunkStoreError> {
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
                    self.spares.lock().expect("spares poisoned").free.push(n);
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

    /// Deletes a chunk file by making it an emptied spare, if there is room: true if it is
    /// gone; false if it must be removed instead (no room, or the filesystem cannot).
    fn recycle(&self, path: &Path) -> bool {
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

    /// Moves every chunk file of layout 1 to its layout 2 name (a rename: atomic, and safe to
    /// repeat after a crash) and removes the emptied directories. Returns how many moved.
    fn convert_layout_1(&self) -> Result<usize, ChunkStoreError> {
        let mut moved = 0;
        for first in read_dir_names(&self.root)? {
            let first_dir = self.root.join(&first);
            if first.len() != 2 || !first_dir.is_dir() {
                continue;
            }
            for second in read_dir_names(&first_dir)? {
                let second_dir = first_dir.join(&second);
                if second.len() != 2 || !second_dir.is_dir() {
                    continue;
                }
                for name in read_dir_names(&second_dir)? {
                    let file_dir = second_dir.join(&name);
                    let Some(file) = layout::parse_v1_file_dir(&name) else {
                        continue;
                    };
                    for chunk_name in read_dir_names(&file_dir)? {
                        let Some((index, generation)) = layout::parse_v1_chunk_name(&chunk_name)
                        else {
                            continue;
                        };
                        let to = layout::chunk_path(&self.root, file, index, generation);
                        let from = file_dir.join(&chunk_name);
                        fs::rename(&from, &to).map_err(io_error("moving", &from))?;
                        moved += 1;
                    }
                    let _ = fs::remove_dir(&file_dir);
                }
                let _ = fs::remove_dir(&second_dir);
            }
        }
        Ok(moved)
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

    /// A new, empty file in chunk directory `dir` (created if missing: then true), to be
    /// named once written.
    fn new_file(&self, dir: &Path) -> Result<(NewFile, bool), ChunkStoreError> {
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
                // Emptied again when next taken.
                self.spares.lock().expect("spares poisoned").free.push(n);
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
                        ino: file.0,
                        index,
                        generation,
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
mod tests {
    use super::*;

    fn sealed(len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        bytes[..2].copy_from_slice(b"VC");
        bytes[2] = 1;
        bytes[3] = 1;
        bytes
    }

    /// Both ways of making a chunk file: unnamed until written (`O_TMPFILE`), and under a
    /// temporary name where that is not available.
    #[test]
    fn put_never_replaces_and_get_reads_back() {
        for unnamed in [true, false] {
            put_never_replaces_and_get_reads_back_when(unnamed);
        }
    }

    fn put_never_replaces_and_get_reads_back_when(unnamed: bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DirChunkStore::open(dir.path(), false).expect("open");
        store.unnamed_files.store(unnamed, Ordering::Relaxed);
        let chunk = ChunkRef {
            ino: 0xabcd_0000_0000_0001,
            index: 2,
            generation: 5,
        };
        store.put(chunk, &sealed(100)).expect("put");
        assert_eq!(
            store.unnamed_files.load(Ordering::Relaxed),
            unnamed,
            "a temporary directory on ext4 or tmpfs has unnamed files"
        );
        assert!(matches!(
            store.put(chunk, &sealed(90)),
            Err(ChunkStoreError::Exists { .. })
        ));
        assert_eq!(store.get(chunk).expect("get"), sealed(100));
        let (header, len) = store.header(chunk).expect("header");
        assert!(header.last);
        assert_eq!(len, 100);
        assert!(store.path(chunk).ends_with("ab/abcd000000000001.2.5"));
        assert_eq!(store.list().expect("list"), vec![(chunk, 0)]);
        store.delete(chunk).expect("delete");
        store.delete(chunk).expect("deleting twice is fine");
        assert!(matches!(
            store.get(chunk),
            Err(ChunkStoreError::Missing { .. })
        ));
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("ab")).expect("dir").collect();
        assert!(leftovers.is_empty(), "no temporary files stay");
    }

    #[test]
    fn a_large_chunk_is_written_and_read_past_the_cache_and_reads_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DirChunkStore::open(dir.path(), false).expect("open");
        let chunk = ChunkRef {
            ino: 0xabcd_0000_0000_0003,
            index: 0,
            generation: 1,
        };
        // Not a multiple of the direct-I/O alignment, and with a pattern that shows shifts.
        let mut data = sealed(2 * 1024 * 1024 + 64 + 5);
        for (i, byte) in data.iter_mut().enumerate().skip(64) {
            *byte = (i % 251) as u8;
        }
        store.put(chunk, &data).expect("put");
        assert!(
            fs::read(store.path(chunk)).expect("read the file") == data,
            "the file holds the chunk, its whole blocks written past the cache and its tail not"
        );
        assert!(store.get(chunk).expect("cached") == data);
        let file = File::open(store.path(chunk)).expect("open");
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).expect("evict");
        let read = read_uncached(&file, data.len()).expect("read");
        let read = read.expect("an ext4 or tmpfs temporary directory reads past the cache");
        assert!(read == data, "the uncached read returns the file's bytes");
        assert!(store.get(chunk).expect("again") == data);
    }

    #[test]
    fn a_layout_1_root_is_converted_once_and_then_marked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let chunks = [
            (0xabcd_0000_0000_0001_u64, 0_u64, 1_u64, 100_usize),
            (0xabcd_0000_0000_0001, 1, 7, 90),
            (0x1234_0000_0000_0002, 0, 3, 80),
        ];
        for &(ino, index, generation, len) in &chunks {
            let path = layout::v1_chunk_path(dir.path(), FileId(ino), index, generation);
            fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
            fs::write(&path, sealed(len)).expect("write");
        }
        // Something that is not a chunk stays where it is.
        fs::write(dir.path().join("ab/cd/notes.txt"), b"x").expect("write");
        let store = DirChunkStore::open(dir.path(), true).expect("open converts");
        for &(ino, index, generation, len) in &chunks {
            let chunk = ChunkRef {
                ino,
                index,
                generation,
            };
            assert_eq!(store.get(chunk).expect("moved"), sealed(len));
        }
        assert_eq!(store.list().expect("list").len(), chunks.len());
        assert!(!dir.path().join("12/34").exists(), "emptied dirs go");
        assert!(dir.path().join("ab/cd/notes.txt").exists());
        assert_eq!(
            fs::read_to_string(dir.path().join(layout::LAYOUT_FILE)).expect("marker"),
            "2\n"
        );
        // A layout 1 file appearing later is not looked for: the marker says the root is done.
        DirChunkStore::open(dir.path(), true).expect("opens again");
        fs::write(dir.path().join(layout::LAYOUT_FILE), "9\n").expect("write");
        let error = DirChunkStore::open(dir.path(), true).expect_err("unknown layout");
        assert!(error.to_string().contains("layout"), "{error}");
    }

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
            let chunk = |ino: u64| ChunkRef {
                ino,
                index: 0,
                generation: 1,
            };
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
        let chunk = |ino: u64| ChunkRef {
            ino,
            index: 0,
            generation: 1,
        };
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
