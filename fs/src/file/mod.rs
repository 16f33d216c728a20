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
//!
//! This module holds the state and what the others share; `read`, `write` and
//! `commit` the three paths through it, `inline` the one-call commit of a single chunk,
//! `create` the creation of a new file on the server, `attrs` the attribute changes kept
//! for a commit, `lifecycle` the stages a file goes through in this client.

mod attrs;
mod commit;
mod content;
mod create;
mod inline;
mod lifecycle;
mod manifests;
mod read;
mod room;
mod write;

use std::collections::BTreeMap;
use std::sync::Arc;

use crypto::FileKeys;
use format::ids::{ChunkIndex, FileId, Generation, Version};
use format::limits::CHUNK_BYTES;
use proto::v1::{
    Attr, ChunkInfo, CreateRequest, GetChunkReply, ListChunksRequest, OpenReply, OpenRequest,
    SetAttrRequest,
};
use tokio::task::JoinHandle;

use crate::error::FsError;
use crate::shared::Shared;

use content::Content;
pub use inline::InlinePut;
pub use lifecycle::Lifecycle;

pub const CHUNK: u64 = CHUNK_BYTES as u64;

/// The last chunk index of a file of `size` bytes (none when empty).
pub fn last_index(size: u64) -> Option<ChunkIndex> {
    size.checked_sub(1).map(ChunkIndex::of_offset)
}

/// The index just past the last chunk of a file of `size` bytes.
fn end_index(size: u64) -> ChunkIndex {
    ChunkIndex(size.div_ceil(CHUNK))
}

/// The plaintext length chunk `index` has in a file of `size` bytes.
fn chunk_len(size: u64, index: ChunkIndex) -> usize {
    match last_index(size) {
        Some(last) if index < last => CHUNK_BYTES,
        Some(last) if index == last => (size - last.start()) as usize,
        _ => 0,
    }
}

/// The pieces of the byte range `start..end` in each chunk: the chunk's index, the offset
/// within it, and the length.
fn pieces(start: u64, end: u64) -> impl Iterator<Item = (ChunkIndex, usize, usize)> {
    let mut pos = start;
    std::iter::from_fn(move || {
        (pos < end).then(|| {
            let within = pos % CHUNK;
            let n = (CHUNK - within).min(end - pos);
            let piece = (ChunkIndex::of_offset(pos), within as usize, n as usize);
            pos += n;
            piece
        })
    })
}

/// The chunk after `index`.
fn after(index: ChunkIndex) -> ChunkIndex {
    ChunkIndex(index.get() + 1)
}

/// The chunk indexes from `first` to `last`, both included.
fn indexes(first: ChunkIndex, last: ChunkIndex) -> impl Iterator<Item = ChunkIndex> {
    (first.get()..=last.get()).map(ChunkIndex)
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
    generation: Generation,
    last: bool,
    len: usize,
    task: Option<JoinHandle<Result<(), FsError>>>,
}

#[derive(Debug)]
struct Dirty {
    content: Content,
    /// What this client wrote into a whole (`Content::Full`) chunk: re-applied on top of
    /// another writer's chunk when a commit loses the compare-and-swap. (Written runs say it
    /// themselves.)
    written: Ranges,
    /// The committed generation the buffer started from (0: none).
    base: Generation,
    upload: Option<Upload>,
    /// The highest generation used for this chunk, so that every upload has a new one.
    last_generation: Generation,
}

impl Dirty {
    /// A whole chunk's buffer: `data`, over `base`.
    fn full(data: Vec<u8>, base: Generation) -> Dirty {
        Dirty {
            content: Content::Full(Arc::new(data)),
            written: Ranges::default(),
            base,
            upload: None,
            last_generation: base,
        }
    }

    /// Runs written over the committed chunk `base`, which is not loaded.
    fn sparse(base: Generation) -> Dirty {
        Dirty {
            content: Content::Sparse(Arc::default()),
            ..Dirty::full(Vec::new(), base)
        }
    }

    /// Memory held against the dirty budget.
    fn bytes(&self) -> usize {
        self.content.bytes()
    }

    /// The length of a whole chunk's buffer (none for written runs).
    fn full_len(&self) -> Option<usize> {
        match &self.content {
            Content::Full(data) => Some(data.len()),
            Content::Sparse(_) => None,
        }
    }
}

/// The state of one file while it is open or has dirty data. Callers hold it locked.
#[derive(Debug)]
pub struct FileState {
    pub ino: FileId,
    /// The file's keys: the newest seals, each opens the chunks sealed under it.
    pub keys: Arc<FileKeys>,
    /// The size readers here see: committed size plus local writes and truncations.
    pub size: u64,
    pub committed_size: u64,
    /// The size went down here since the last commit.
    truncated: bool,
    /// Committed generation of every stored chunk.
    generations: BTreeMap<ChunkIndex, Generation>,
    /// The counter of the manifest that describes the committed state (0: none).
    manifest: u64,
    dirty: BTreeMap<ChunkIndex, Dirty>,
    pub version: Version,
    /// Open or closed here, and what the file still needs on the server (see
    /// [`Lifecycle`]).
    pub life: Lifecycle,
    /// Where the last read ended, to notice sequential readers (their chunks are read ahead;
    /// a random reader's are kept for reading blocks again, see [`crate::blocks`]).
    read_end: u64,
    /// Reads in a row that each continued the last one.
    sequential_reads: u32,
    /// Chunks below this were already read ahead in the current sequential pass.
    prefetched_to: ChunkIndex,
    /// Where the last write ended, to notice sequential writers (the chunks they move past
    /// are sealed and sent behind them).
    write_end: u64,
    /// Another writer's changes were merged into this client's commit since the last one was
    /// recorded: the kernel's cached pages of the file may lack them. A fact about the
    /// kernel's cache, not the file's lifecycle: it holds in any stage.
    pub merged_foreign: bool,
    /// A small file's only chunk that came with the last `Open` reply, taken into the cache
    /// by the first read (after the open has settled what the cache may keep).
    arrived: Option<GetChunkReply>,
    /// The attributes the server gave last (open, creation, commit).
    server_attr: Option<Attr>,
    /// Attribute changes kept for the next commit (see `keep_attr_changes`).
    attr_changes: Option<SetAttrRequest>,
}

async fn open_call(shared: &Shared, ino: FileId) -> Result<OpenReply, FsError> {
    shared
        .remote
        .send(
            "open",
            OpenRequest { ino: ino.0 },
            |mut api, r| async move { api.open(r).await },
        )
        .await
}

/// A generation for a new upload of a chunk that started from `base` and last used `used`:
/// the clock's nanoseconds, so that a restarted client never reuses one, and always past
/// both.
fn next_generation(base: Generation, used: Generation) -> Generation {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Generation(now).max(base.next()).max(used.next())
}

/// A committed chunk of a listing: its index and generation.
fn committed_chunk(chunk: &ChunkInfo) -> (ChunkIndex, Generation) {
    (ChunkIndex(chunk.index), Generation(chunk.generation))
}

/// A file's whole committed chunk map: the chunks of its `Open` reply and, for a large file,
/// the pages that follow.
pub async fn chunk_map(
    remote: &crate::remote::Remote,
    ino: FileId,
    reply: &OpenReply,
) -> Result<BTreeMap<ChunkIndex, Generation>, FsError> {
    let mut generations: BTreeMap<ChunkIndex, Generation> =
        reply.chunks.iter().map(committed_chunk).collect();
    let mut more = reply.more_chunks;
    while more {
        let from = generations
            .keys()
            .next_back()
            .map_or(0, |last| last.get() + 1);
        let request = ListChunksRequest {
            ino: ino.0,
            from_index: from,
            limit: 4096,
        };
        let page = remote
            .send("list_chunks", request, |mut api, r| async move {
                api.list_chunks(r).await
            })
            .await?;
        generations.extend(page.chunks.iter().map(committed_chunk));
        more = page.more && !page.chunks.is_empty();
    }
    Ok(generations)
}

impl FileState {
    /// Loads a file's committed state (attributes, chunk generations, key) in one call.
    pub async fn open(shared: &Shared, ino: FileId) -> Result<FileState, FsError> {
        FileState::open_from(shared, ino, open_call(shared, ino).await?).await
    }

    /// A file's committed state from the `Open` reply `reply`, checked as every `Open` reply
    /// is (the keys' signatures, the manifest).
    pub async fn open_from(
        shared: &Shared,
        ino: FileId,
        mut reply: OpenReply,
    ) -> Result<FileState, FsError> {
        let attr = reply.attr.unwrap_or_default();
        let mut keys = shared.keys.keys_from(ino, &reply.keys, attr.owner).await?;
        let legacy = crate::keys::Keys::is_legacy(&reply.keys);
        if attr.may_write && (reply.rekey_needed || legacy) {
            // A group lost a member, or the keys are unsigned: a new key epoch first, so
            // that nothing written here is sealed under a key someone removed still holds.
            shared.keys.rekey(ino, &keys, attr.size).await?;
            reply = open_call(shared, ino).await?;
            keys = shared.keys.keys_from(ino, &reply.keys, attr.owner).await?;
        }
        let mut state = FileState::empty(ino, keys);
        state.take_committed(shared, reply).await?;
        Ok(state)
    }

    /// The attributes the server last sent for this file.
    pub fn server_attr(&self) -> Option<Attr> {
        self.server_attr
    }

    /// The server sent `attr` for this file (an open, a creation, a commit): its version is
    /// the one this state now holds.
    fn heard(&mut self, attr: Attr) {
        self.version = Version(attr.version);
        self.server_attr = Some(attr);
    }

    /// The state of a file this client just created, open through the create's handle:
    /// empty, nothing to ask the server. `pending`: the request that creates it on the
    /// server at its first flush, when the server does not have it yet.
    pub fn created(
        ino: FileId,
        keys: Arc<FileKeys>,
        attr: &Attr,
        pending: Option<CreateRequest>,
    ) -> FileState {
        let mut state = FileState::empty(ino, keys);
        state.life = Lifecycle::created_here(pending);
        state.heard(*attr);
        state
    }

    fn empty(ino: FileId, keys: Arc<FileKeys>) -> FileState {
        FileState {
            ino,
            keys,
            size: 0,
            committed_size: 0,
            truncated: false,
            generations: BTreeMap::new(),
            manifest: 0,
            dirty: BTreeMap::new(),
            version: Version::default(),
            life: Lifecycle::from_server(),
            read_end: 0,
            sequential_reads: 0,
            prefetched_to: ChunkIndex::default(),
            write_end: 0,
            merged_foreign: false,
            arrived: None,
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

    /// The directory of a new file not created on the server yet.
    pub fn pending_in(&self) -> Option<FileId> {
        self.life.pending().map(|request| FileId(request.parent))
    }

    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
            || self.size != self.committed_size
            || self.truncated
            || self.life.pending().is_some()
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
        // Before anything of it is used: the writer's own account of this state.
        let manifests::Checked {
            reply,
            attr,
            generations,
            counter,
        } = self.checked(shared, reply).await?;
        self.manifest = counter;
        if !self.is_dirty() {
            self.size = attr.size;
        } else if !self.truncated {
            self.size = self.size.max(attr.size);
        }
        self.committed_size = attr.size;
        self.generations = generations;
        self.heard(attr);
        self.arrived = reply.small_chunk;
        Ok(attr)
    }

    /// Drops dirty state without committing (the file is gone).
    pub fn discard(&mut self, shared: &Shared) {
        for (index, dirty) in std::mem::take(&mut self.dirty) {
            shared.sub_dirty(dirty.bytes());
            shared.writeback.clean(self.ino, index);
        }
        shared.blocks.forget_file(self.ino);
        self.size = self.committed_size;
        self.truncated = false;
        self.attr_changes = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let [first, second, third] = [0, 1, 2].map(ChunkIndex);
        assert_eq!(last_index(0), None);
        assert_eq!(last_index(1), Some(first));
        assert_eq!(last_index(CHUNK), Some(first));
        assert_eq!(last_index(CHUNK + 1), Some(second));
        assert_eq!(chunk_len(CHUNK + 5, first), CHUNK_BYTES);
        assert_eq!(chunk_len(CHUNK + 5, second), 5);
        assert_eq!(chunk_len(CHUNK + 5, third), 0);
        assert_eq!(chunk_len(CHUNK, first), CHUNK_BYTES);
        assert_eq!(
            (end_index(0), end_index(CHUNK), end_index(CHUNK + 1)),
            (first, second, third)
        );
        assert_eq!(
            indexes(first, third).collect::<Vec<_>>(),
            vec![first, second, third]
        );
        let split: Vec<_> = pieces(CHUNK - 2, 2 * CHUNK + 1).collect();
        assert_eq!(
            split,
            vec![
                (first, CHUNK_BYTES - 2, 2),
                (second, 0, CHUNK_BYTES),
                (third, 0, 1)
            ]
        );
        assert_eq!(pieces(5, 5).count(), 0);
    }

    #[test]
    fn generations_always_grow() {
        let five = Generation(5);
        let g1 = next_generation(five, five);
        let g2 = next_generation(five, g1);
        assert!(g1 > five && g2 > g1);
        assert_eq!(
            next_generation(Generation(u64::MAX - 1), Generation(0)),
            Generation(u64::MAX)
        );
    }
}
