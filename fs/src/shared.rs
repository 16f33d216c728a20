//! What every file of a mount shares: the server connection, keys, the chunk cache, the
//! write-back budget, and loading committed chunks (with checks) into the cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use crypto::{ChunkCipher, ChunkContext};
use format::ids::{ChunkIndex, FileId, Generation};
use proto::v1::{GetChunkReply, GetChunkRequest};

use crate::blocks::{Kept, KeptBlocks};
use crate::cache::{ChunkCache, CleanChunk};
use crate::claims::Claims;
use crate::dirs::KnownDirs;
use crate::error::FsError;
use crate::keys::Keys;
use crate::remote::Remote;
use crate::writeback::Writeback;

/// Sizes the client keeps to.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Plaintext chunk cache.
    pub cache_bytes_max: usize,
    /// Dirty chunks (written, not yet committed) across all files.
    pub dirty_bytes_max: usize,
    /// Chunks sealed and uploaded at once.
    pub uploads_in_flight_max: usize,
    /// Chunks read ahead of a sequential reader (four: 32 MiB in flight keeps the disk, the
    /// wire and both cores busy).
    pub prefetch_chunks: u64,
    /// How long another client's change may take to show here: the kernel's entry and
    /// attribute timeout, and how long this client trusts names it knows (see
    /// [`KnownDirs::new`]).
    pub coherence: std::time::Duration,
    /// How long a dirty chunk may go unwritten before the flusher sends it.
    pub dirty_idle: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cache_bytes_max: 256 << 20,
            dirty_bytes_max: 256 << 20,
            uploads_in_flight_max: 4,
            prefetch_chunks: 4,
            coherence: crate::dirs::KNOWN_FOR,
            dirty_idle: crate::writeback::IDLE_DEFAULT,
        }
    }
}

/// The default plaintext cache: an eighth of the machine's memory, from 256 MiB to 4 GiB
/// (3 GiB on a 24 GiB machine). `memory_bytes`: the machine's (see [`machine_memory_bytes`]).
pub fn default_cache_bytes(memory_bytes: u64) -> usize {
    (memory_bytes / 8).clamp(256 << 20, 4 << 30) as usize
}

/// The default budget of written data not sent yet: a sixteenth of the machine's memory, from
/// 128 MiB to 2 GiB (1.5 GiB on a 24 GiB machine).
pub fn default_dirty_bytes(memory_bytes: u64) -> usize {
    (memory_bytes / 16).clamp(128 << 20, 2 << 30) as usize
}

/// The machine's memory (`MemTotal` in /proc/meminfo); 2 GiB when it cannot be read.
pub fn machine_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            kib.checked_mul(1024)
        })
        .unwrap_or(2 << 30)
}

/// One chunk being fetched: every reader that wants it waits for the same fetch and gets the
/// same plaintext (one fetch and one decryption however many wait).
type Loading = Arc<tokio::sync::OnceCell<Arc<CleanChunk>>>;

/// Which fetch a reader waits for: the chunk, and what the reader expects of it.
type LoadKey = (FileId, ChunkIndex, Generation, usize);

#[derive(Debug)]
pub struct Shared {
    pub remote: Remote,
    pub keys: Keys,
    pub cache: Mutex<ChunkCache>,
    pub limits: Limits,
    pub dirty_bytes: AtomicUsize,
    pub uploads: tokio::sync::Semaphore,
    loads: Mutex<HashMap<LoadKey, Loading>>,
    /// What random reads keep of the chunks they opened (see [`KeptBlocks`]).
    pub blocks: KeptBlocks,
    /// The order dirty chunks were written in (see [`Writeback`]).
    pub writeback: Writeback,
    /// The last name each inode was seen under, for log lines.
    names: Mutex<HashMap<FileId, String>>,
    /// New files whose creation waits for their first flush: inode -> where, and the
    /// attributes they were created with.
    pending: Mutex<HashMap<FileId, Pending>>,
    /// Directories whose every name this client knows (see [`KnownDirs`]).
    dirs: Mutex<KnownDirs>,
    /// The mount's runtime, where background work (uploads, read-ahead) runs.
    runtime: tokio::runtime::Handle,
    /// Chunk files as descriptors, from a server on this machine (see [`Claims`]).
    claims: Option<Arc<Claims>>,
    /// The newest manifest seen of each file (see [`crate::manifest`]).
    pub manifests: crate::manifest::Seen,
    /// The name keys of the directories used lately (see [`crate::names`]).
    pub dir_keys: crate::names::Names,
}

/// A new file not yet created on the server (see `Lifecycle::pending` in `file`).
#[derive(Clone, Debug)]
pub struct Pending {
    pub parent: FileId,
    pub name: Vec<u8>,
    pub attr: proto::v1::Attr,
}

/// The smallest chunk taken as a descriptor from a local server: below this, the claim's
/// round trip and system calls cost more than the copies it saves.
const DESCRIPTOR_BYTES_MIN: usize = 128 * 1024;

/// What reading a committed chunk expects of it.
#[derive(Clone, Debug)]
pub struct ChunkRead {
    pub ino: FileId,
    pub index: ChunkIndex,
    /// The generation the file's checked manifest names: the only one accepted (the server
    /// may have a newer one, which the reader takes only with the manifest that names it).
    pub generation: Generation,
    pub last: bool,
    pub len: usize,
    pub keys: Arc<crypto::FileKeys>,
    /// Keep what reading a few bytes of the chunk again needs (a random reader's chunk).
    pub keep_blocks: bool,
}

impl Shared {
    /// `runtime`: the mount's, where background work runs (see [`Shared::spawn`]).
    pub fn new(
        remote: Remote,
        keys: Keys,
        limits: Limits,
        runtime: tokio::runtime::Handle,
    ) -> Shared {
        let claims = match &remote.connection().target {
            client::Target::Unix(api) => Some(Arc::new(Claims::new(api))),
            _ => None,
        };
        Shared {
            claims,
            remote,
            keys,
            cache: Mutex::new(ChunkCache::new(limits.cache_bytes_max)),
            uploads: tokio::sync::Semaphore::new(limits.uploads_in_flight_max),
            limits,
            dirty_bytes: AtomicUsize::new(0),
            loads: Mutex::new(HashMap::new()),
            blocks: KeptBlocks::new(limits.cache_bytes_max / 16),
            writeback: Writeback::default(),
            names: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            dirs: Mutex::new(KnownDirs::new(limits.coherence)),
            runtime,
            manifests: crate::manifest::Seen::default(),
            dir_keys: crate::names::Names::default(),
        }
    }

    pub fn remember_name(&self, ino: FileId, name: &[u8]) {
        let mut names = self.names.lock().expect("names poisoned");
        if names.len() > 100_000 {
            names.clear();
        }
        names.insert(ino, String::from_utf8_lossy(name).into_owned());
    }

    pub fn name_of(&self, ino: FileId) -> String {
        self.names
            .lock()
            .expect("names poisoned")
            .get(&ino)
            .cloned()
            .unwrap_or_else(|| "?".into())
    }

    /// Starts background work on the mount's runtime, never on a thread's own (which runs
    /// only while that thread waits for it: see `remote::drive`).
    pub fn spawn<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.spawn(work)
    }

    /// Directories whose every name this client knows.
    pub fn dirs(&self) -> std::sync::MutexGuard<'_, KnownDirs> {
        self.dirs.lock().expect("known directories poisoned")
    }

    pub fn add_pending(&self, ino: FileId, pending: Pending) {
        self.pending
            .lock()
            .expect("pending poisoned")
            .insert(ino, pending);
    }

    pub fn forget_pending(&self, ino: FileId) {
        self.pending.lock().expect("pending poisoned").remove(&ino);
    }

    /// The attributes of a pending new file.
    pub fn pending_attr(&self, ino: FileId) -> Option<proto::v1::Attr> {
        let pending = self.pending.lock().expect("pending poisoned");
        pending.get(&ino).map(|p| p.attr)
    }

    /// The name (plaintext) of a pending new file.
    pub fn pending_name(&self, ino: FileId) -> Option<Vec<u8>> {
        let pending = self.pending.lock().expect("pending poisoned");
        pending.get(&ino).map(|p| p.name.clone())
    }

    /// The pending new file under this name, if any.
    pub fn pending_named(&self, parent: FileId, name: &[u8]) -> Option<proto::v1::Attr> {
        let pending = self.pending.lock().expect("pending poisoned");
        pending
            .values()
            .find(|p| p.parent == parent && p.name == name)
            .map(|p| p.attr)
    }

    /// Pending new files in `parent`, or everywhere.
    pub fn pending_in(&self, parent: Option<FileId>) -> Vec<FileId> {
        let pending = self.pending.lock().expect("pending poisoned");
        pending
            .iter()
            .filter(|(_, p)| parent.is_none_or(|dir| p.parent == dir))
            .map(|(&ino, _)| ino)
            .collect()
    }

    pub fn add_dirty(&self, bytes: usize) {
        self.dirty_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn sub_dirty(&self, bytes: usize) {
        self.dirty_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub fn over_dirty_budget(&self) -> bool {
        self.dirty_bytes() > self.limits.dirty_bytes_max
    }

    /// Dirty bytes held now, across all files.
    pub fn dirty_bytes(&self) -> usize {
        self.dirty_bytes.load(Ordering::Relaxed)
    }

    /// A committed chunk's plaintext, if the cache holds what `read` expects.
    pub fn cached_chunk(&self, read: &ChunkRead) -> Option<Arc<CleanChunk>> {
        self.cached(read)
    }

    fn cached(&self, read: &ChunkRead) -> Option<Arc<CleanChunk>> {
        let chunk = self
            .cache
            .lock()
            .expect("cache poisoned")
            .get(read.ino, read.index)?;
        (chunk.generation == read.generation && chunk.plaintext.len() == read.len).then_some(chunk)
    }

    /// A committed chunk's plaintext, from the cache or fetched, opened and checked. One fetch
    /// per chunk at a time: concurrent readers of the same chunk wait for the first, and get
    /// what it opened.
    pub async fn load(&self, read: &ChunkRead) -> Result<Arc<CleanChunk>, FsError> {
        if let Some(chunk) = self.cached(read) {
            return Ok(chunk);
        }
        let key = (read.ino, read.index, read.generation, read.len);
        let loading = self
            .loads
            .lock()
            .expect("loads poisoned")
            .entry(key)
            .or_default()
            .clone();
        // A failed fetch leaves the cell empty: the next waiter tries again.
        let result = loading
            .get_or_try_init(|| async {
                match self.cached(read) {
                    Some(chunk) => Ok(chunk),
                    None => self.fetch(read).await,
                }
            })
            .await
            .cloned();
        let mut loads = self.loads.lock().expect("loads poisoned");
        if loads.get(&key).is_some_and(|l| Arc::ptr_eq(l, &loading)) {
            loads.remove(&key);
        }
        result
    }

    /// Bytes `start..end` of a committed chunk from what a random read kept of it (see
    /// [`crate::blocks`]), if anything is kept and still matches; none otherwise (then the
    /// caller loads the chunk whole).
    pub fn read_kept(&self, read: &ChunkRead, start: usize, end: usize) -> Option<Bytes> {
        let kept = self
            .blocks
            .get(read.ino, read.index, read.generation, read.len)?;
        // The key that opened the chunk whole (a file's newest key may have changed since).
        let Some(cipher) = read.keys.with_commitment(&kept.commitment) else {
            self.blocks.remove(read.ino, read.index);
            return None;
        };
        match kept.read(cipher, start, end) {
            Ok(bytes) => Some(bytes),
            Err(reason) => {
                tracing::info!(ino = %read.ino, chunk = %read.index, %reason, "a kept chunk no longer matches; fetching it whole");
                self.blocks.remove(read.ino, read.index);
                None
            }
        }
    }

    async fn fetch(&self, read: &ChunkRead) -> Result<Arc<CleanChunk>, FsError> {
        let descriptor = read.len >= DESCRIPTOR_BYTES_MIN
            && self.claims.as_ref().is_some_and(|claims| claims.usable());
        let mut reply = self.get_chunk(read, descriptor).await?;
        let mut file = None;
        if !reply.descriptor_ticket.is_empty() {
            let claims = self
                .claims
                .as_ref()
                .expect("a ticket only when asked for one");
            let ticket = std::mem::take(&mut reply.descriptor_ticket);
            let claiming = claims.clone();
            let keep = read.keep_blocks;
            let claimed = tokio::task::spawn_blocking(move || claiming.read(&ticket, keep))
                .await
                .expect("claiming a chunk file panicked");
            match claimed {
                Ok((claimed_file, sealed)) => {
                    reply.data = sealed;
                    file = keep.then_some(claimed_file);
                }
                Err(error) => {
                    // An unreachable socket was logged where it was found.
                    if claims.usable() {
                        tracing::warn!(%error, "could not take a chunk file from storaged; asking for its bytes");
                    }
                    reply = self.get_chunk(read, false).await?;
                }
            }
        }
        self.accept_keeping(read, reply, file).await
    }

    /// Asks for a committed chunk: its bytes, or with `descriptor` a ticket for its file.
    async fn get_chunk(
        &self,
        read: &ChunkRead,
        descriptor: bool,
    ) -> Result<GetChunkReply, FsError> {
        let (ino, index) = (read.ino.0, read.index.get());
        self.remote
            .call("get_chunk", |mut api| async move {
                let request = GetChunkRequest {
                    ino,
                    index,
                    descriptor,
                };
                api.get_chunk(request).await
            })
            .await
            .map_err(|e| match e.kind() {
                proto::ErrorKind::BadChunk => self.integrity(read, e.to_string()),
                _ => e,
            })
    }

    /// Checks and opens a chunk the server sent (a `GetChunk` reply, or a small file's chunk
    /// in an `Open` reply) and caches its plaintext.
    pub async fn accept(
        &self,
        read: &ChunkRead,
        reply: GetChunkReply,
    ) -> Result<Arc<CleanChunk>, FsError> {
        self.accept_keeping(read, reply, None).await
    }

    /// [`Shared::accept`]; with the chunk file's descriptor, also keeps what reading blocks
    /// of the chunk again needs (see [`crate::blocks`]).
    async fn accept_keeping(
        &self,
        read: &ChunkRead,
        reply: GetChunkReply,
        file: Option<std::fs::File>,
    ) -> Result<Arc<CleanChunk>, FsError> {
        let (ino, index) = (read.ino, read.index);
        let generation = Generation(reply.generation);
        if generation > read.generation {
            // Another writer's commit, or a record changed behind the manifest: only a
            // manifest that names it may tell (see `FileState::committed`).
            return Err(FsError::Superseded {
                ino,
                index,
                offered: generation,
            });
        }
        if generation < read.generation {
            let reason = if generation == Generation::default() {
                format!(
                    "the server has no chunk, but generation {} was written",
                    read.generation
                )
            } else {
                format!(
                    "the server offers generation {}, older than {} (rolled back)",
                    reply.generation, read.generation
                )
            };
            return Err(self.integrity(read, reason));
        }
        let context = ChunkContext {
            vault: self.keys.vault(),
            file: ino,
            index,
            generation,
            last: read.last,
        };
        let keys = read.keys.clone();
        let keep = file.is_some();
        let (opened, blocks, commitment) = crypto_work(reply.data.len(), move || {
            // The chunk names its key by the commitment in its header.
            let cipher = keys.for_sealed(&reply.data);
            let commitment = *cipher.commitment();
            open_chunk(cipher, &context, reply.data, keep).map(|(o, b)| (o, b, commitment))
        })
        .await
        .map_err(|e| self.integrity(read, e.to_string()))?;
        if opened.len() != read.len {
            return Err(self.integrity(
                read,
                format!(
                    "holds {} bytes where the file size needs {}",
                    opened.len(),
                    read.len
                ),
            ));
        }
        let chunk = Arc::new(CleanChunk {
            generation,
            plaintext: opened,
        });
        self.cache
            .lock()
            .expect("cache poisoned")
            .insert(ino, index, chunk.clone());
        if let (Some(blocks), Some(file)) = (blocks, file) {
            let kept = Kept {
                generation,
                blocks,
                file,
                commitment,
            };
            self.blocks.insert(ino, index, kept);
        }
        Ok(chunk)
    }

    /// An integrity failure: logged with the file and chunk, returned as EIO.
    pub fn integrity(&self, read: &ChunkRead, reason: String) -> FsError {
        tracing::error!(
            file = %self.name_of(read.ino),
            ino = %read.ino,
            chunk = %read.index,
            %reason,
            "chunk failed its integrity check; returning EIO"
        );
        FsError::Integrity {
            ino: read.ino,
            index: read.index,
            reason,
        }
    }
}

/// Sealing or opening up to this many bytes runs on the calling thread (tens of
/// microseconds); more goes to a blocking thread so the async threads stay free.
const CRYPTO_INLINE_BYTES: usize = 128 * 1024;

/// Opens a chunk in the buffer it arrived in when this is its only user and it is not much
/// larger than the chunk (no second allocation, zeroed and faulted in, per chunk read); else
/// into a buffer of its own. With `keep_blocks`, also the digests of its blocks (see
/// [`crate::blocks`]).
fn open_chunk(
    cipher: &ChunkCipher,
    context: &ChunkContext,
    sealed: Bytes,
    keep_blocks: bool,
) -> Result<(Bytes, Option<crypto::ChunkBlocks>), crypto::OpenError> {
    match sealed.try_into_mut() {
        Ok(mut buffer) if buffer.capacity() <= buffer.len() + buffer.len() / 8 => {
            let (len, blocks) = if keep_blocks {
                let (plaintext, blocks) =
                    crypto::open_in_place_keeping_blocks(cipher, context, &mut buffer)?;
                (plaintext.len(), Some(blocks))
            } else {
                (
                    crypto::open_in_place(cipher, context, &mut buffer)?.len(),
                    None,
                )
            };
            let plaintext = buffer.freeze();
            Ok((plaintext.slice(plaintext.len() - len..), blocks))
        }
        Ok(buffer) => Ok((crypto::open(cipher, context, &buffer)?.into(), None)),
        Err(shared) => Ok((crypto::open(cipher, context, &shared)?.into(), None)),
    }
}

/// Runs AES-GCM work on `len` bytes where it costs least (see [`CRYPTO_INLINE_BYTES`]).
pub(crate) async fn crypto_work<T: Send + 'static>(
    len: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    if len <= CRYPTO_INLINE_BYTES {
        work()
    } else {
        tokio::task::spawn_blocking(work)
            .await
            .expect("crypto task panicked")
    }
}
