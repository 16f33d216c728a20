//! One file's contents as this client sees them: committed chunks (read through the cache),
//! dirty chunks (written here, not committed yet), and the flush that seals, uploads and
//! commits them in one compare-and-swap.
//!
//! A stream of small writes into one chunk costs one seal and one upload, at flush time (close,
//! fsync, eviction, unmount). Full chunks that the file has grown past are sealed and uploaded
//! in the background while the writer goes on ("write-behind"); the commit that makes them
//! current still happens at flush, with the file's final size.
//!
//! Attribute changes made while there are unflushed writes (`tar` and `cp -p` set each file's
//! times, owner and mode before they close it) are kept here and go with that commit too,
//! instead of a round trip each; this mount shows them at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use crypto::{ChunkCipher, ChunkContext};
use format::ids::{ChunkIndex, FileId, Generation};
use format::limits::{CHUNK_BYTES, FILE_BYTES_MAX};
use proto::ErrorKind;
use proto::v1::{
    Attr, ChunkCommit, CommitChunksRequest, CreateRequest, GetAttrRequest, GetChunkReply,
    ListChunksRequest, OpenReply, OpenRequest, PutChunkReply, PutChunkRequest, SetAttrRequest,
};
use tokio::task::JoinHandle;

use crate::error::FsError;
use crate::shared::{ChunkRead, Shared, crypto_work};

pub const CHUNK: u64 = CHUNK_BYTES as u64;
/// Writes of this size or more reserve a whole chunk's buffer at once.
const LARGE_WRITE_BYTES: usize = 256 * 1024;
/// How often a flush re-reads the file and retries after losing a compare-and-swap. Between
/// attempts it backs off for a random, growing time, so that two writers that keep colliding
/// on one chunk take turns instead of starving each other.
const FLUSH_ATTEMPTS_MAX: usize = 40;
const FLUSH_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_millis(400);

/// The last chunk index of a file of `size` bytes (none when empty).
pub fn last_index(size: u64) -> Option<u64> {
    size.checked_sub(1).map(|s| s / CHUNK)
}

/// The plaintext length chunk `index` has in a file of `size` bytes.
fn chunk_len(size: u64, index: u64) -> usize {
    match last_index(size) {
        Some(last) if index < last => CHUNK_BYTES,
        Some(last) if index == last => (size - last * CHUNK) as usize,
        _ => 0,
    }
}

/// Byte ranges within a chunk, kept sorted and merged.
#[derive(Clone, Debug, Default)]
struct Ranges(Vec<(usize, usize)>);

impl Ranges {
    fn add(&mut self, start: usize, end: usize) {
        self.0.push((start, end));
        self.0.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(self.0.len());
        for &(s, e) in &self.0 {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.0 = merged;
    }

    fn clip(&mut self, len: usize) {
        self.0.retain(|r| r.0 < len);
        for r in &mut self.0 {
            r.1 = r.1.min(len);
        }
    }
}

/// A sealed copy of a dirty chunk on the server, not committed yet.
#[derive(Debug)]
struct Upload {
    generation: u64,
    last: bool,
    len: usize,
    task: Option<JoinHandle<Result<(), FsError>>>,
}

#[derive(Debug)]
struct Dirty {
    data: Arc<Vec<u8>>,
    /// What this client wrote into the chunk: re-applied on top of another writer's chunk
    /// when a commit loses the compare-and-swap.
    written: Ranges,
    /// The committed generation the buffer started from (0: none).
    base: u64,
    upload: Option<Upload>,
    /// The highest generation used for this chunk, so that every upload has a new one.
    last_generation: u64,
}

/// The state of one file while it is open or has dirty data. Callers hold it locked.
#[derive(Debug)]
pub struct FileState {
    pub ino: u64,
    pub cipher: Arc<ChunkCipher>,
    /// The size readers here see: committed size plus local writes and truncations.
    pub size: u64,
    pub committed_size: u64,
    /// The size went down here since the last commit.
    truncated: bool,
    /// Committed generation of every stored chunk.
    generations: BTreeMap<u64, u64>,
    dirty: BTreeMap<u64, Dirty>,
    pub version: u64,
    pub handles: u32,
    /// Unlinked while open: released on the server when the last handle closes.
    pub unlinked: bool,
    /// The index just past the last chunk read, to notice sequential readers.
    next_sequential: u64,
    /// Chunks below this were already read ahead in the current sequential pass.
    prefetched_to: u64,
    /// Another writer's changes were merged into this client's commit since the last one was
    /// recorded: the kernel's cached pages of the file may lack them.
    pub merged_foreign: bool,
    /// The last handle closed and this state left the open-files table: an open that
    /// finds it must start afresh from the server.
    pub retired: bool,
    /// A small file's only chunk that came with the last `Open` reply, taken into the cache
    /// by the first read (after the open has settled what the cache may keep).
    arrived: Option<GetChunkReply>,
    /// A new file this client has not created on the server yet: its first flush creates it
    /// (with its first chunk, in one commit, when it has one).
    pub pending_create: Option<CreateRequest>,
    /// The attributes the server gave last (open, creation, commit).
    server_attr: Option<Attr>,
    /// Attribute changes kept for the next commit (see `keep_attr_changes`).
    attr_changes: Option<SetAttrRequest>,
}

/// A sealed chunk's put that commits it, waiting for its outcome.
#[derive(Debug)]
pub struct InlinePut {
    pub request: PutChunkRequest,
    generation: u64,
    last: bool,
    asked: std::time::Instant,
}

async fn open_call(shared: &Shared, ino: u64) -> Result<OpenReply, FsError> {
    shared
        .remote
        .call("open", |mut api| async move {
            api.open(OpenRequest { ino }).await
        })
        .await
}

fn next_generation(base: u64, used: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    now.max(base + 1).max(used + 1)
}

impl FileState {
    /// Loads a file's committed state: attributes and chunk generations.
    /// Loads a file's committed state (attributes, chunk generations, key) in one call.
    pub async fn open(shared: &Shared, ino: u64) -> Result<FileState, FsError> {
        let reply = open_call(shared, ino).await?;
        let cipher = shared.keys.cipher_from(ino, &reply.keys)?;
        let mut state = FileState::empty(ino, cipher);
        state.take_committed(shared, reply).await?;
        Ok(state)
    }

    /// The attributes the server last sent for this file.
    pub fn server_attr(&self) -> Option<Attr> {
        self.server_attr
    }

    /// The state of a file this client just created: empty, nothing to ask the server.
    pub fn created(ino: u64, cipher: Arc<ChunkCipher>, attr: &Attr) -> FileState {
        let mut state = FileState::empty(ino, cipher);
        state.version = attr.version;
        state.server_attr = Some(*attr);
        state
    }

    fn empty(ino: u64, cipher: Arc<ChunkCipher>) -> FileState {
        FileState {
            ino,
            cipher,
            size: 0,
            committed_size: 0,
            truncated: false,
            generations: BTreeMap::new(),
            dirty: BTreeMap::new(),
            version: 0,
            handles: 0,
            unlinked: false,
            next_sequential: 0,
            prefetched_to: 0,
            merged_foreign: false,
            retired: false,
            arrived: None,
            pending_create: None,
            server_attr: None,
            attr_changes: None,
        }
    }

    /// `attr` as this client sees it: the newer of it and what this state last heard from the
    /// server (an attribute cache may hold one from before this file's latest commit), with
    /// the local size and the attribute changes kept for the next commit.
    pub fn view(&self, attr: Attr) -> Attr {
        let mut attr = match self.server_attr {
            Some(known) if known.ino == attr.ino && known.version > attr.version => known,
            _ => attr,
        };
        attr.size = self.size;
        if let Some(changes) = &self.attr_changes {
            attr.perm = changes.perm.map_or(attr.perm, |p| p & 0o7777);
            attr.uid = changes.uid.unwrap_or(attr.uid);
            attr.gid = changes.gid.unwrap_or(attr.gid);
            // A time set to "now" carries this client's clock for the view (the server sets
            // its own at the commit).
            attr.atime = changes.atime.or(attr.atime);
            attr.mtime = changes.mtime.or(attr.mtime);
        }
        attr
    }

    /// Keeps attribute changes (no size) for the next commit instead of a round trip now,
    /// when a commit is to come (unflushed writes) and the server will allow them: the checks
    /// `SetAttr` makes are that the owner changes mode and owner, and a writer the times.
    /// Returns the attributes the file shows now, or `None`: the changes must go now.
    pub fn keep_attr_changes(&mut self, changes: SetAttrRequest, uid: u32) -> Option<Attr> {
        let attr = self.server_attr?;
        if changes.size.is_some() || !self.is_dirty() {
            return None;
        }
        let owner_change = changes.perm.is_some() || changes.uid.is_some() || changes.gid.is_some();
        let time_change = changes.atime.is_some()
            || changes.atime_now
            || changes.mtime.is_some()
            || changes.mtime_now;
        let times_fit = [changes.atime, changes.mtime]
            .iter()
            .flatten()
            .all(|t| t.as_nanos().is_some());
        if (owner_change && attr.owner != uid) || (time_change && !attr.may_write) || !times_fit {
            return None;
        }
        let mut changes = changes;
        let now = crate::vault::stamp(std::time::SystemTime::now());
        if changes.atime_now {
            changes.atime = Some(now);
        }
        if changes.mtime_now {
            changes.mtime = Some(now);
        }
        let kept = self
            .attr_changes
            .get_or_insert_with(SetAttrRequest::default);
        merge_attr_changes(kept, changes);
        Some(self.view(attr))
    }

    /// The changes kept for the next commit with `newer` on top, to go to the server now
    /// (then call `kept_attr_changes_sent`).
    pub fn with_kept_attr_changes(&self, newer: SetAttrRequest) -> SetAttrRequest {
        match self.attr_changes {
            Some(mut kept) => {
                // The request is the newer one's: its file and durability.
                let (ino, lazy) = (newer.ino, newer.lazy);
                merge_attr_changes(&mut kept, newer);
                SetAttrRequest { ino, lazy, ..kept }
            }
            None => newer,
        }
    }

    /// The server took the changes of `with_kept_attr_changes`; it replied `attr`.
    pub fn kept_attr_changes_sent(&mut self, attr: &Attr) {
        self.attr_changes = None;
        self.server_attr = Some(*attr);
    }

    /// A write or size change sets the modification time itself (to the commit's): one kept
    /// from before it no longer applies.
    fn forget_kept_mtime(&mut self) {
        if let Some(changes) = &mut self.attr_changes {
            changes.mtime = None;
            changes.mtime_now = false;
        }
    }

    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
            || self.size != self.committed_size
            || self.truncated
            || self.pending_create.is_some()
    }

    /// Creates a pending new file on the server now (see `pending_create`). A creation the
    /// server refuses (the name was taken meanwhile by another client, the directory went)
    /// drops what was written locally and returns the error.
    pub async fn materialize(
        &mut self,
        shared: &Shared,
        durable: bool,
    ) -> Result<Option<Attr>, FsError> {
        let Some(mut request) = self.pending_create.take() else {
            return Ok(None);
        };
        request.lazy = !durable;
        let asked = std::time::Instant::now();
        let created = shared
            .remote
            .call("create", |mut api| {
                let request = request.clone();
                async move { api.create(request).await }
            })
            .await;
        self.creation_settled(shared, &request, created.as_ref().map(Some), asked);
        let attr = created?;
        self.version = attr.version;
        self.server_attr = Some(attr);
        Ok(Some(attr))
    }

    /// Sends the attribute changes kept for a commit when there is no commit to carry them.
    async fn flush_attr_changes(
        &mut self,
        shared: &Shared,
        durable: bool,
    ) -> Result<Option<Attr>, FsError> {
        let Some(mut request) = self.attr_changes.take() else {
            return Ok(None);
        };
        request.ino = self.ino;
        request.lazy = !durable;
        let changed = shared
            .remote
            .call(
                "set_attr",
                |mut api| async move { api.set_attr(request).await },
            )
            .await;
        match changed {
            Ok(attr) => {
                self.version = attr.version;
                self.server_attr = Some(attr);
                Ok(Some(attr))
            }
            Err(error) => {
                self.attr_changes = Some(request);
                Err(error)
            }
        }
    }

    /// After the call that carried this file's pending creation (asked for at `asked`; the
    /// file's attributes it replied with, or its error): it is no longer pending, and a
    /// refused creation drops what was written (nothing of it exists on the server).
    fn creation_settled(
        &mut self,
        shared: &Shared,
        request: &CreateRequest,
        outcome: Result<Option<&Attr>, &FsError>,
        asked: std::time::Instant,
    ) {
        let reply = outcome.ok().flatten();
        shared
            .dirs()
            .added(request.parent, &request.name, reply, asked);
        if let Err(error) = outcome
            && error.kind() == ErrorKind::Unavailable
        {
            // The server was not reached (or its answer was lost): the file stays new, and
            // the next flush asks again (one that had reached it finds the name taken).
            self.pending_create = Some(request.clone());
            return;
        }
        shared.forget_pending(self.ino);
        if let Err(error) = outcome {
            tracing::error!(
                file = %String::from_utf8_lossy(&request.name),
                %error,
                "the server refused to create a new file at its first flush; its data is lost"
            );
            self.discard(shared);
        }
    }

    /// At most one dirty chunk, none of it uploaded yet (a new file of one chunk).
    pub fn small(&self) -> bool {
        self.dirty.len() <= 1 && self.dirty.values().all(|d| d.upload.is_none())
    }

    /// One dirty chunk, not uploaded yet: a flush seals and commits it in one call.
    fn single_dirty(&self) -> bool {
        self.dirty.len() == 1 && self.small()
    }

    /// Re-reads the committed size and chunk map.
    async fn refresh(&mut self, shared: &Shared) -> Result<Attr, FsError> {
        let reply = open_call(shared, self.ino).await?;
        self.take_committed(shared, reply).await
    }

    /// Adopts the server's committed state from an `Open` reply (paging in the rest of a
    /// large file's chunk map).
    async fn take_committed(&mut self, shared: &Shared, reply: OpenReply) -> Result<Attr, FsError> {
        let ino = self.ino;
        let attr = reply.attr.ok_or_else(|| {
            FsError::local(ErrorKind::Internal, "an open reply without attributes")
        })?;
        let mut generations: BTreeMap<u64, u64> = reply
            .chunks
            .iter()
            .map(|c| (c.index, c.generation))
            .collect();
        let mut more = reply.more_chunks;
        while more {
            let from = generations.keys().next_back().map_or(0, |last| last + 1);
            let page = shared
                .remote
                .call("list_chunks", |mut api| async move {
                    api.list_chunks(ListChunksRequest {
                        ino,
                        from_index: from,
                        limit: 4096,
                    })
                    .await
                })
                .await?;
            generations.extend(page.chunks.iter().map(|c| (c.index, c.generation)));
            more = page.more && !page.chunks.is_empty();
        }
        if !self.is_dirty() {
            self.size = attr.size;
        } else if !self.truncated {
            self.size = self.size.max(attr.size);
        }
        self.committed_size = attr.size;
        self.generations = generations;
        self.version = attr.version;
        self.server_attr = Some(attr);
        self.arrived = reply.small_chunk;
        Ok(attr)
    }

    fn chunk_read(&self, index: u64) -> Option<ChunkRead> {
        let generation = *self.generations.get(&index)?;
        Some(ChunkRead {
            ino: self.ino,
            index,
            generation,
            last: last_index(self.committed_size) == Some(index),
            len: chunk_len(self.committed_size, index),
            cipher: self.cipher.clone(),
        })
    }

    /// A committed chunk's plaintext; on an integrity failure, re-reads the file once (another
    /// client may have changed it) before giving up.
    async fn committed(
        &mut self,
        shared: &Shared,
        index: u64,
    ) -> Result<Option<Arc<crate::cache::CleanChunk>>, FsError> {
        if let Some(small) = self.arrived.take()
            && !self.dirty.contains_key(&0)
            && let Some(read) = self.chunk_read(0)
            && read.generation == small.generation
        {
            // Into the cache for this read; a chunk that fails its checks is fetched (and
            // reported) again below.
            let _ = shared.accept(&read, small).await;
        }
        let Some(read) = self.chunk_read(index) else {
            return Ok(None);
        };
        match shared.load(&read).await {
            Ok(chunk) => Ok(Some(chunk)),
            Err(FsError::Integrity { .. }) => {
                self.refresh(shared).await?;
                let Some(read) = self.chunk_read(index) else {
                    return Ok(None);
                };
                shared.load(&read).await.map(Some)
            }
            Err(other) => Err(other),
        }
    }

    pub async fn read(
        &mut self,
        shared: &Arc<Shared>,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, FsError> {
        let end = self.size.min(offset.saturating_add(u64::from(len)));
        if offset >= end {
            return Ok(Bytes::new());
        }
        // A read inside one committed chunk is a slice of its cached plaintext, not a copy.
        let first = offset / CHUNK;
        if (end - 1) / CHUNK == first
            && !self.dirty.contains_key(&first)
            && let Some(chunk) = self.committed(shared, first).await?
        {
            let within = (offset % CHUNK) as usize;
            let n = (end - offset) as usize;
            if within + n <= chunk.plaintext.len() {
                self.prefetch(shared, first, first);
                return Ok(chunk.plaintext.slice(within..within + n));
            }
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut pos = offset;
        while pos < end {
            let index = pos / CHUNK;
            let within = (pos % CHUNK) as usize;
            let n = (CHUNK - pos % CHUNK).min(end - pos) as usize;
            let copied = if let Some(dirty) = self.dirty.get(&index) {
                copy_out(&mut out, &dirty.data, within, n)
            } else if let Some(chunk) = self.committed(shared, index).await? {
                copy_out(&mut out, &chunk.plaintext, within, n)
            } else {
                0
            };
            out.resize(out.len() + (n - copied), 0);
            pos += n as u64;
        }
        self.prefetch(shared, offset / CHUNK, (end - 1) / CHUNK);
        Ok(out.into())
    }

    /// Reads ahead of a sequential reader, in the background.
    fn prefetch(&mut self, shared: &Arc<Shared>, first: u64, last: u64) {
        let sequential =
            first == self.next_sequential || first + 1 == self.next_sequential || first == 0;
        self.next_sequential = last + 1;
        if !sequential {
            self.prefetched_to = 0;
            return;
        }
        // Each chunk is asked for once per sequential pass, not once per read request.
        let from = (last + 1).max(self.prefetched_to);
        let to = last + shared.limits.prefetch_chunks;
        self.prefetched_to = to + 1;
        for index in from..=to {
            if self.dirty.contains_key(&index) {
                continue;
            }
            let Some(read) = self.chunk_read(index) else {
                continue;
            };
            let background = shared.clone();
            shared.spawn(async move {
                if let Err(error) = background.load(&read).await {
                    tracing::debug!(%error, "prefetch failed; the reader will retry");
                }
            });
        }
    }

    /// Makes chunk `index` dirty, starting from its committed content unless `whole` says the
    /// caller overwrites all of it.
    async fn make_dirty(
        &mut self,
        shared: &Shared,
        index: u64,
        whole: bool,
    ) -> Result<(), FsError> {
        if self.dirty.contains_key(&index) {
            return Ok(());
        }
        let base = self.generations.get(&index).copied().unwrap_or(0);
        let content = match (whole, base) {
            (true, _) | (_, 0) => Vec::new(),
            _ => self
                .committed(shared, index)
                .await?
                .map(|c| c.plaintext.to_vec())
                .unwrap_or_default(),
        };
        let base = self.generations.get(&index).copied().unwrap_or(0);
        shared.add_dirty(content.len());
        self.dirty.insert(
            index,
            Dirty {
                data: Arc::new(content),
                written: Ranges::default(),
                base,
                upload: None,
                last_generation: base,
            },
        );
        Ok(())
    }

    pub async fn write(
        &mut self,
        shared: &Arc<Shared>,
        offset: u64,
        data: &[u8],
    ) -> Result<(), FsError> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= FILE_BYTES_MAX)
            .ok_or_else(|| {
                FsError::local(
                    ErrorKind::TooLarge,
                    "write past the largest file the format holds",
                )
            })?;
        let mut pos = offset;
        while pos < end {
            let index = pos / CHUNK;
            let within = (pos % CHUNK) as usize;
            let n = (CHUNK - pos % CHUNK).min(end - pos) as usize;
            self.make_dirty(shared, index, within == 0 && n == CHUNK_BYTES)
                .await?;
            let dirty = self.dirty.get_mut(&index).expect("made dirty above");
            let buffer = Arc::make_mut(&mut dirty.data);
            if buffer.len() < within + n {
                if n >= LARGE_WRITE_BYTES {
                    // A large writer will likely fill the chunk: grow it once, not by doubling.
                    buffer.reserve_exact(CHUNK_BYTES - buffer.len());
                }
                shared.add_dirty(within + n - buffer.len());
                buffer.resize(within + n, 0);
            }
            let from = (pos - offset) as usize;
            buffer[within..within + n].copy_from_slice(&data[from..from + n]);
            dirty.written.add(within, within + n);
            dirty.upload = None;
            pos += n as u64;
        }
        self.size = self.size.max(end);
        self.forget_kept_mtime();
        if self.pending_create.is_some() && self.size > CHUNK {
            // Full chunks upload before the commit: the file must exist for them.
            self.materialize(shared, false).await?;
        }
        self.write_behind(
            shared,
            (offset / CHUNK).saturating_sub(1),
            (end - 1) / CHUNK,
        );
        if shared.over_dirty_budget() {
            self.flush(shared, false).await?;
        }
        Ok(())
    }

    /// Starts uploading full chunks in `first..=last` that the file has grown past.
    fn write_behind(&mut self, shared: &Arc<Shared>, first: u64, last: u64) {
        let Some(file_last) = last_index(self.size) else {
            return;
        };
        for index in first..=last.min(file_last.saturating_sub(1)) {
            if index >= file_last {
                break;
            }
            let full = self
                .dirty
                .get(&index)
                .is_some_and(|d| d.upload.is_none() && d.data.len() == CHUNK_BYTES);
            if full {
                self.start_upload(shared, index, false, CHUNK_BYTES);
            }
        }
    }

    fn start_upload(&mut self, shared: &Arc<Shared>, index: u64, last: bool, len: usize) {
        let ino = self.ino;
        let vault = shared.keys.vault();
        let cipher = self.cipher.clone();
        let dirty = self.dirty.get_mut(&index).expect("uploading a dirty chunk");
        let generation = next_generation(dirty.base, dirty.last_generation);
        dirty.last_generation = generation;
        let data = dirty.data.clone();
        let background = shared.clone();
        let task = shared.spawn(async move {
            let shared = background;
            let _slot = shared
                .uploads
                .acquire()
                .await
                .expect("upload semaphore closed");
            let context = ChunkContext {
                vault,
                file: FileId(ino),
                index: ChunkIndex(index),
                generation: Generation(generation),
                last,
            };
            let sealed = crypto_work(len, move || crypto::seal(&cipher, &context, &data[..len]))
                .await
                .map_err(|e| FsError::local(ErrorKind::Internal, e.to_string()))?;
            let sealed = bytes::Bytes::from(sealed);
            shared
                .remote
                .call("put_chunk", |mut api| {
                    let data = sealed.clone();
                    async move {
                        api.put_chunk(PutChunkRequest {
                            ino,
                            index,
                            data,
                            ..Default::default()
                        })
                        .await
                    }
                })
                .await
                .map(drop)
        });
        dirty.upload = Some(Upload {
            generation,
            last,
            len,
            task: Some(task),
        });
    }

    /// Sets the size: drops what lies past a smaller one, reads zeros up to a larger one, and
    /// commits at once (a truncation is visible to others right away).
    pub async fn truncate(&mut self, shared: &Arc<Shared>, size: u64) -> Result<Attr, FsError> {
        if size > FILE_BYTES_MAX {
            return Err(FsError::local(
                ErrorKind::TooLarge,
                "size past the largest file the format holds",
            ));
        }
        self.forget_kept_mtime();
        if size < self.size {
            self.truncated = true;
            let keep = last_index(size).map_or(0, |l| l + 1);
            let gone: Vec<u64> = self.dirty.range(keep..).map(|(i, _)| *i).collect();
            for index in gone {
                let dirty = self.dirty.remove(&index).expect("listed");
                shared.sub_dirty(dirty.data.len());
            }
        }
        self.size = size;
        match self.flush(shared, false).await? {
            Some(attr) => Ok(attr),
            None => {
                let ino = self.ino;
                shared
                    .remote
                    .call("get_attr", |mut api| async move {
                        api.get_attr(GetAttrRequest { ino }).await
                    })
                    .await
            }
        }
    }

    /// Makes everything written here current on the server (seen by every later open), and
    /// durable there too if `durable`. Returns the new attributes, or none if there was
    /// nothing to do.
    pub async fn flush(
        &mut self,
        shared: &Arc<Shared>,
        durable: bool,
    ) -> Result<Option<Attr>, FsError> {
        if !self.is_dirty() {
            return self.flush_attr_changes(shared, durable).await;
        }
        if self.pending_create.is_some() && !self.single_dirty() {
            // No chunk to create it with (or several): create it on its own first.
            let created = self.materialize(shared, durable).await?;
            if !self.is_dirty() {
                let changed = self.flush_attr_changes(shared, durable).await?;
                return Ok(changed.or(created));
            }
        }
        for attempt in 1..=FLUSH_ATTEMPTS_MAX {
            self.shape(shared).await?;
            let outcome = if self.single_dirty() {
                self.commit_inline(shared, durable).await
            } else {
                match self.upload_all(shared).await {
                    Ok(()) => self.commit(shared, durable).await,
                    Err(error) => Err(error),
                }
            };
            match outcome {
                Ok(attr) => return Ok(Some(attr)),
                Err(error) if retryable(&error) && attempt < FLUSH_ATTEMPTS_MAX => {
                    tracing::info!(ino = %format!("{:016x}", self.ino), %error, attempt, "another writer changed the file; merging and retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    self.rebase(shared).await?;
                }
                Err(error) => return Err(error),
            }
        }
        Err(FsError::local(
            ErrorKind::Conflict,
            "the file kept changing under this writer",
        ))
    }

    /// Brings the dirty chunks into the shape the commit needs: chunks whose role the size
    /// change alters are rewritten, and every chunk has the length the size implies.
    async fn shape(&mut self, shared: &Arc<Shared>) -> Result<(), FsError> {
        let size = self.size;
        let new_last = last_index(size);
        if size != self.committed_size {
            let old_last = last_index(self.committed_size);
            let mut roles_change: Vec<u64> = new_last.into_iter().collect();
            if let (Some(old), Some(new)) = (old_last, new_last)
                && old < new
            {
                roles_change.push(old);
            }
            for index in roles_change {
                if self.generations.contains_key(&index) {
                    self.make_dirty(shared, index, false).await?;
                }
            }
        }
        for (&index, dirty) in self.dirty.iter_mut() {
            let want_len = chunk_len(size, index);
            if dirty.data.len() != want_len {
                let buffer = Arc::make_mut(&mut dirty.data);
                if want_len > buffer.len() {
                    shared.add_dirty(want_len - buffer.len());
                } else {
                    shared.sub_dirty(buffer.len() - want_len);
                }
                buffer.resize(want_len, 0);
                dirty.written.clip(want_len);
                dirty.upload = None;
            }
            let want_last = new_last == Some(index);
            if dirty
                .upload
                .as_ref()
                .is_some_and(|u| u.last != want_last || u.len != want_len)
            {
                dirty.upload = None;
            }
        }
        Ok(())
    }

    /// Seals and uploads every dirty chunk that has no usable upload yet, and waits for all.
    async fn upload_all(&mut self, shared: &Arc<Shared>) -> Result<(), FsError> {
        let new_last = last_index(self.size);
        let missing: Vec<(u64, usize)> = self
            .dirty
            .iter()
            .filter(|(_, d)| d.upload.is_none())
            .map(|(&index, d)| (index, d.data.len()))
            .collect();
        for (index, len) in missing {
            self.start_upload(shared, index, new_last == Some(index), len);
        }
        for dirty in self.dirty.values_mut() {
            let upload = dirty
                .upload
                .as_mut()
                .expect("every dirty chunk is uploading");
            if let Some(task) = upload.task.take()
                && let Err(error) = task.await.expect("upload task panicked")
            {
                dirty.upload = None;
                return Err(error);
            }
        }
        Ok(())
    }

    /// One dirty chunk: seal it and commit it in the same call.
    async fn commit_inline(
        &mut self,
        shared: &Arc<Shared>,
        durable: bool,
    ) -> Result<Attr, FsError> {
        let put = self.seal_inline(shared, durable).await?;
        let reply = shared
            .remote
            .call("put_chunk", |mut api| {
                let request = put.request.clone();
                async move { api.put_chunk(request).await }
            })
            .await;
        self.inline_done(shared, put, reply)
    }

    /// A new file of one dirty chunk, closed: the put that creates it with its chunk, for a
    /// call of several (`PutChunks`); none for any other file. Pass the call's outcome for it
    /// to [`FileState::inline_done`].
    pub async fn creating_put(
        &mut self,
        shared: &Arc<Shared>,
    ) -> Result<Option<InlinePut>, FsError> {
        if self.pending_create.is_none() || !self.small() {
            return Ok(None);
        }
        self.shape(shared).await?;
        if !self.single_dirty() {
            return Ok(None);
        }
        self.seal_inline(shared, false).await.map(Some)
    }

    /// Seals the one dirty chunk for a put that commits it (creating the file if pending).
    async fn seal_inline(
        &mut self,
        shared: &Arc<Shared>,
        durable: bool,
    ) -> Result<InlinePut, FsError> {
        let (ino, size) = (self.ino, self.size);
        let truncate = self.truncated || self.size < self.committed_size;
        let (&index, dirty) = self.dirty.iter_mut().next().expect("one dirty chunk");
        let generation = next_generation(dirty.base, dirty.last_generation);
        dirty.last_generation = generation;
        let context = ChunkContext {
            vault: shared.keys.vault(),
            file: FileId(ino),
            index: ChunkIndex(index),
            generation: Generation(generation),
            last: last_index(size) == Some(index),
        };
        let (cipher, data) = (self.cipher.clone(), dirty.data.clone());
        let sealed = crypto_work(data.len(), move || crypto::seal(&cipher, &context, &data))
            .await
            .map_err(|e| FsError::local(ErrorKind::Internal, e.to_string()))?;
        let base = dirty.base;
        let create = self.pending_create.take();
        Ok(InlinePut {
            request: PutChunkRequest {
                ino,
                index,
                data: bytes::Bytes::from(sealed),
                commit: true,
                base_generation: base,
                size,
                truncate,
                lazy: !durable,
                create,
                set_attr: self.attr_changes,
            },
            generation,
            last: context.last,
            asked: std::time::Instant::now(),
        })
    }

    /// The outcome of a put from [`FileState::seal_inline`]: the file's attributes after it.
    pub fn inline_done(
        &mut self,
        shared: &Arc<Shared>,
        put: InlinePut,
        reply: Result<PutChunkReply, FsError>,
    ) -> Result<Attr, FsError> {
        let InlinePut {
            request,
            generation,
            last,
            asked,
        } = put;
        if let Some(create) = &request.create {
            let outcome = reply.as_ref().map(|r| r.attr.as_ref());
            self.creation_settled(shared, create, outcome, asked);
        }
        let reply = reply?;
        let dirty = self
            .dirty
            .get_mut(&request.index)
            .expect("the committed chunk is still dirty");
        dirty.upload = Some(Upload {
            generation,
            last,
            len: dirty.data.len(),
            task: None,
        });
        let attr = reply.attr.ok_or_else(|| {
            FsError::local(
                ErrorKind::Internal,
                "a committed put returned no attributes",
            )
        })?;
        Ok(self.committed_now(shared, attr, request.truncate))
    }

    async fn commit(&mut self, shared: &Arc<Shared>, durable: bool) -> Result<Attr, FsError> {
        let ino = self.ino;
        let truncate = self.truncated || self.size < self.committed_size;
        let chunks: Vec<ChunkCommit> = self
            .dirty
            .iter()
            .map(|(&index, d)| ChunkCommit {
                index,
                base_generation: d.base,
                generation: d.upload.as_ref().expect("uploaded").generation,
            })
            .collect();
        let request = CommitChunksRequest {
            ino,
            chunks: chunks.clone(),
            size: self.size,
            truncate,
            rekey: vec![],
            lazy: !durable,
            set_attr: self.attr_changes,
        };
        let attr = shared
            .remote
            .call("commit_chunks", |mut api| {
                let request = request.clone();
                async move { api.commit_chunks(request).await }
            })
            .await?;
        Ok(self.committed_now(shared, attr, truncate))
    }

    /// After a successful commit: the dirty chunks are clean now (their plaintext stays in the
    /// cache), and the committed state is the server's.
    fn committed_now(&mut self, shared: &Shared, attr: Attr, truncate: bool) -> Attr {
        let ino = self.ino;
        let mut cache = shared.cache.lock().expect("cache poisoned");
        for (index, dirty) in std::mem::take(&mut self.dirty) {
            let generation = dirty.upload.as_ref().expect("uploaded").generation;
            shared.sub_dirty(dirty.data.len());
            self.generations.insert(index, generation);
            let plaintext = Arc::try_unwrap(dirty.data)
                .unwrap_or_else(|shared| (*shared).clone())
                .into();
            cache.insert(
                ino,
                index,
                Arc::new(crate::cache::CleanChunk {
                    generation,
                    plaintext,
                }),
            );
        }
        if truncate {
            let keep = last_index(attr.size).map_or(0, |l| l + 1);
            let dropped: Vec<u64> = self.generations.range(keep..).map(|(i, _)| *i).collect();
            for index in dropped {
                self.generations.remove(&index);
                cache.remove(ino, index);
            }
        }
        self.committed_size = attr.size;
        self.size = attr.size;
        self.truncated = false;
        self.version = attr.version;
        self.server_attr = Some(attr);
        // Every commit carries the changes kept so far (and nothing changes them meanwhile:
        // the state is locked through the flush).
        self.attr_changes = None;
        attr
    }

    /// After losing a compare-and-swap: re-read the file and re-apply this client's writes on
    /// top of the other writer's chunks.
    async fn rebase(&mut self, shared: &Arc<Shared>) -> Result<(), FsError> {
        self.refresh(shared).await?;
        let indices: Vec<u64> = self.dirty.keys().copied().collect();
        for index in indices {
            let current = self.generations.get(&index).copied().unwrap_or(0);
            if self.dirty[&index].base == current {
                continue;
            }
            let theirs = self
                .committed(shared, index)
                .await?
                .map(|c| c.plaintext.to_vec())
                .unwrap_or_default();
            let dirty = self.dirty.get_mut(&index).expect("listed");
            let mut merged = theirs;
            for &(start, end) in &dirty.written.0 {
                if merged.len() < end {
                    merged.resize(end, 0);
                }
                merged[start..end].copy_from_slice(&dirty.data[start..end]);
            }
            shared.add_dirty(merged.len());
            shared.sub_dirty(dirty.data.len());
            dirty.data = Arc::new(merged);
            dirty.base = current;
            self.merged_foreign = true;
            dirty.last_generation = dirty.last_generation.max(current);
            dirty.upload = None;
        }
        Ok(())
    }

    /// Drops dirty state without committing (the file is gone).
    pub fn discard(&mut self, shared: &Shared) {
        for (_, dirty) in std::mem::take(&mut self.dirty) {
            shared.sub_dirty(dirty.data.len());
        }
        self.size = self.committed_size;
        self.truncated = false;
        self.attr_changes = None;
    }
}

/// Puts `newer` attribute changes on top of `kept` ones.
fn merge_attr_changes(kept: &mut SetAttrRequest, newer: SetAttrRequest) {
    kept.perm = newer.perm.or(kept.perm);
    kept.uid = newer.uid.or(kept.uid);
    kept.gid = newer.gid.or(kept.gid);
    kept.size = newer.size.or(kept.size);
    if newer.atime.is_some() || newer.atime_now {
        (kept.atime, kept.atime_now) = (newer.atime, newer.atime_now);
    }
    if newer.mtime.is_some() || newer.mtime_now {
        (kept.mtime, kept.mtime_now) = (newer.mtime, newer.mtime_now);
    }
}

/// A random pause that grows with the attempt: 10 ms times 2^attempt at most, capped.
fn backoff(attempt: usize) -> std::time::Duration {
    let ceiling = (10u64 << attempt.min(6)).min(FLUSH_BACKOFF_MAX.as_millis() as u64);
    let random = u64::from_le_bytes(identity::random_bytes()) % ceiling.max(1);
    std::time::Duration::from_millis(random + 1)
}

fn retryable(error: &FsError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::StaleGeneration | ErrorKind::Conflict
    ) || matches!(error, FsError::Remote { kind: ErrorKind::Invalid | ErrorKind::BadChunk, message } if message.contains("resizing") || message.contains("does not fit"))
}

/// Copies `n` bytes from `source[within..]` (as far as it goes); returns how many.
fn copy_out(out: &mut Vec<u8>, source: &[u8], within: usize, n: usize) -> usize {
    let available = source.len().saturating_sub(within).min(n);
    if available > 0 {
        out.extend_from_slice(&source[within..within + available]);
    }
    available
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::Timestamp;

    /// Kept changes go under a newer request's: the request stays the newer one's (its file
    /// and durability), and its changes win where both set something.
    #[test]
    fn kept_attribute_changes_go_under_a_newer_request() {
        let mut state = FileState::created(
            7,
            crypto::DataKey::generate().chunk_cipher().into(),
            &Attr::default(),
        );
        state.attr_changes = Some(SetAttrRequest {
            perm: Some(0o600),
            mtime: Some(Timestamp {
                seconds: 5,
                nanos: 0,
            }),
            ..SetAttrRequest::default()
        });
        let newer = SetAttrRequest {
            ino: 7,
            lazy: true,
            mtime: Some(Timestamp {
                seconds: 9,
                nanos: 0,
            }),
            ..SetAttrRequest::default()
        };
        let sent = state.with_kept_attr_changes(newer);
        assert_eq!((sent.ino, sent.lazy), (7, true));
        assert_eq!(sent.perm, Some(0o600));
        assert_eq!(
            sent.mtime,
            Some(Timestamp {
                seconds: 9,
                nanos: 0
            })
        );
    }

    #[test]
    fn ranges_merge() {
        let mut ranges = Ranges::default();
        ranges.add(10, 20);
        ranges.add(30, 40);
        ranges.add(15, 32);
        assert_eq!(ranges.0, vec![(10, 40)]);
        ranges.add(0, 5);
        ranges.clip(12);
        assert_eq!(ranges.0, vec![(0, 5), (10, 12)]);
    }

    #[test]
    fn chunk_lengths_follow_the_size() {
        assert_eq!(last_index(0), None);
        assert_eq!(last_index(1), Some(0));
        assert_eq!(last_index(CHUNK), Some(0));
        assert_eq!(last_index(CHUNK + 1), Some(1));
        assert_eq!(chunk_len(CHUNK + 5, 0), CHUNK_BYTES);
        assert_eq!(chunk_len(CHUNK + 5, 1), 5);
        assert_eq!(chunk_len(CHUNK + 5, 2), 0);
        assert_eq!(chunk_len(CHUNK, 0), CHUNK_BYTES);
    }

    #[test]
    fn generations_always_grow() {
        let g1 = next_generation(5, 5);
        let g2 = next_generation(5, g1);
        assert!(g1 > 5 && g2 > g1);
        assert_eq!(next_generation(u64::MAX - 1, 0), u64::MAX);
    }
}
