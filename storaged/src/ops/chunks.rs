//! Chunk generations: which sealed chunk is current at each index of a file, changed only by
//! compare-and-swap, with the file size kept consistent with the chunks' last-chunk flags.
//!
//! The invariant, for a file of size S > 0 and L = ceil(S / 8 MiB) - 1: every stored chunk
//! below L is a full, non-last chunk; a stored chunk L is marked last and holds S - L * 8 MiB
//! bytes; nothing is stored past L. A commit that changes the size must rewrite the chunks
//! whose role changes, so a reader never meets a chunk that disagrees with the size.

use super::access::{check_read, check_write};
use super::manifest::Sent;
use super::tree::truncate_chunks;
use super::{Caller, OpError, inode, touch};
use crate::audit;
use crate::meta::{
    ChunkIndex, ChunkRef, FileId, Generation, Inode, Kind, NO_GENERATION, Principal, Time, Txn,
};
use format::envelope::{Header, file_tag};
use format::ids::VaultId;
use format::limits::{CHUNK_BYTES, CHUNK_INDEX_MAX, ENVELOPE_BYTES, FILE_BYTES_MAX};

const CHUNK: u64 = CHUNK_BYTES as u64;

/// A sealed chunk in the chunk store, as its header and length describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uploaded {
    pub index: ChunkIndex,
    /// The generation the writer read (0: none).
    pub base: Generation,
    pub generation: Generation,
    pub last: bool,
    pub plaintext_bytes: u64,
}

impl Uploaded {
    /// Reads what a commit needs from a sealed chunk's header (already checked by
    /// [`check_upload`]).
    pub fn from_header(header: &Header, sealed_bytes: u64, base: Generation) -> Uploaded {
        Uploaded {
            index: ChunkIndex(header.index.into()),
            base,
            generation: Generation(header.generation),
            last: header.last,
            plaintext_bytes: sealed_bytes.saturating_sub(ENVELOPE_BYTES as u64),
        }
    }
}

fn regular_file(txn: &mut dyn Txn, ino: FileId) -> Result<Inode, OpError> {
    let file = inode(txn, ino)?;
    match file.kind {
        Kind::Regular => Ok(file),
        Kind::Directory => Err(OpError::IsDirectory),
        _ => Err(OpError::invalid("only regular files have chunks")),
    }
}

/// Checks a chunk before it is stored: the caller may write the file, the header names this
/// file and index, and its generation is newer than the current one. Returns the current
/// generation (0 for none).
pub fn check_upload(
    txn: &mut dyn Txn,
    caller: &Caller,
    vault: VaultId,
    ino: FileId,
    index: ChunkIndex,
    header: &Header,
) -> Result<Generation, OpError> {
    let file = regular_file(txn, ino)?;
    check_write(caller, &file)?;
    check_header(vault, ino, index, header)?;
    let current = txn.get_chunk(ino, index)?.unwrap_or(NO_GENERATION);
    if Generation(header.generation) <= current {
        return Err(OpError::StaleGeneration {
            index,
            base: Generation(header.generation),
            current,
        });
    }
    Ok(current)
}

/// What an uploaded chunk's header must say without looking at the file's records: the index
/// it is uploaded as, within the format's range, and the file's tag.
pub fn check_header(
    vault: VaultId,
    ino: FileId,
    index: ChunkIndex,
    header: &Header,
) -> Result<(), OpError> {
    if index.get() > CHUNK_INDEX_MAX {
        return Err(OpError::invalid(format!(
            "chunk index {index} is past the format's maximum"
        )));
    }
    if u64::from(header.index) != index.get() {
        return Err(OpError::BadChunk(format!(
            "header says chunk {}, the request says {index}",
            header.index
        )));
    }
    if header.file_tag != file_tag(vault, ino) {
        return Err(OpError::BadChunk("header names another file".into()));
    }
    Ok(())
}

/// What a commit changes: which uploaded chunks of a file become current, and its size.
#[derive(Clone, Copy, Debug)]
pub struct Commit<'a> {
    pub ino: FileId,
    pub chunks: &'a [Uploaded],
    /// The size the file grows to, or with `truncate` is set to exactly (dropping what is
    /// past it).
    pub size: u64,
    pub truncate: bool,
    /// When not empty, replaces the file's wrapped keys: a new key epoch (owner or writer).
    pub rekey: &'a [(Principal, Vec<u8>)],
    /// The file's manifest after the commit; without one, a change drops the stored one.
    pub manifest: Option<Sent<'a>>,
}

/// Makes uploaded chunks current, atomically, each only if its base is still the current
/// generation, and sets the size, as `commit` says.
pub fn commit(
    txn: &mut dyn Txn,
    caller: &Caller,
    commit: &Commit<'_>,
    now: Time,
) -> Result<Inode, OpError> {
    let Commit {
        ino,
        chunks,
        size,
        truncate,
        rekey,
        manifest,
    } = *commit;
    let mut file = regular_file(txn, ino)?;
    check_write(caller, &file)?;
    if size > FILE_BYTES_MAX {
        return Err(OpError::TooLarge(format!("file size {size}")));
    }
    let new_size = if truncate { size } else { size.max(file.size) };
    check_roles(txn, ino, file.size, new_size, chunks)?;
    for chunk in chunks {
        let current = txn.get_chunk(ino, chunk.index)?.unwrap_or(NO_GENERATION);
        if current != chunk.base {
            return Err(OpError::StaleGeneration {
                index: chunk.index,
                base: chunk.base,
                current,
            });
        }
        if chunk.generation <= chunk.base {
            return Err(OpError::invalid(format!(
                "chunk {} generation {} is not newer than its base {}",
                chunk.index, chunk.generation, chunk.base
            )));
        }
        txn.put_chunk(ChunkRef {
            ino,
            index: chunk.index,
            generation: chunk.generation,
        })?;
        if chunk.base != NO_GENERATION {
            txn.add_garbage(ChunkRef {
                ino,
                index: chunk.index,
                generation: chunk.base,
            })?;
        }
    }
    if truncate {
        truncate_chunks(txn, ino, new_size)?;
    }
    match manifest {
        Some(sent) => super::manifest::store(txn, ino, sent, new_size)?,
        None if !chunks.is_empty() || new_size != file.size => super::manifest::forget(txn, ino)?,
        None => {}
    }
    if !rekey.is_empty() {
        super::sharing::replace_wrapped_keys(txn, caller.uid, &file, rekey)?;
    }
    // A new key epoch alone changes no content.
    if !(chunks.is_empty() && !rekey.is_empty() && new_size == file.size) {
        file.mtime = now;
    }
    file.size = new_size;
    touch(&mut file, now);
    txn.put_inode(&file)?;
    let indices: Vec<String> = chunks
        .iter()
        .map(|c| format!("{}@{}", c.index, c.generation))
        .collect();
    audit::append(txn, caller.uid, "chunk-write", ino, &indices.join(" "), now)?;
    Ok(file)
}

/// The last index of a file of `size` bytes (none for an empty file).
fn last_index(size: u64) -> Option<ChunkIndex> {
    size.checked_sub(1).map(ChunkIndex::of_offset)
}

/// Checks the module invariant for the file after the commit: every committed chunk agrees
/// with the new size, and every stored chunk whose role the size change alters is rewritten.
fn check_roles(
    txn: &mut dyn Txn,
    ino: FileId,
    old_size: u64,
    new_size: u64,
    chunks: &[Uploaded],
) -> Result<(), OpError> {
    let new_last = last_index(new_size);
    for chunk in chunks {
        let Some(last) = new_last.filter(|&l| chunk.index <= l) else {
            return Err(OpError::invalid(format!(
                "chunk {} lies past the end of a {new_size}-byte file",
                chunk.index
            )));
        };
        let (want_last, want_bytes) = if chunk.index == last {
            (true, new_size - last.start())
        } else {
            (false, CHUNK)
        };
        if chunk.last != want_last || chunk.plaintext_bytes != want_bytes {
            return Err(OpError::BadChunk(format!(
                "chunk {} (last: {}, {} bytes) does not fit a {new_size}-byte file (needs last: \
                 {want_last}, {want_bytes} bytes)",
                chunk.index, chunk.last, chunk.plaintext_bytes
            )));
        }
    }
    if old_size == new_size {
        return Ok(());
    }
    let rewritten = |index: ChunkIndex| chunks.iter().any(|c| c.index == index);
    let mut must_rewrite = Vec::new();
    if let Some(last) = new_last {
        must_rewrite.push(last);
    }
    if let Some(old_last) = last_index(old_size).filter(|&o| new_last.is_some_and(|n| o < n)) {
        must_rewrite.push(old_last);
    }
    for index in must_rewrite {
        if !rewritten(index) && txn.get_chunk(ino, index)?.is_some() {
            return Err(OpError::invalid(format!(
                "resizing from {old_size} to {new_size} bytes changes chunk {index}, which the \
                 commit must rewrite"
            )));
        }
    }
    Ok(())
}

/// A size change outside a commit (truncate through setattr) may not alter the role of a
/// stored chunk: that needs the chunk rewritten, through a commit.
pub fn check_resize_without_rewrite(
    txn: &mut dyn Txn,
    ino: FileId,
    old_size: u64,
    new_size: u64,
) -> Result<(), OpError> {
    check_roles(txn, ino, old_size, new_size, &[])
}

/// The current generation of a chunk ([`NO_GENERATION`]: a hole).
pub fn current(
    txn: &mut dyn Txn,
    caller: &Caller,
    ino: FileId,
    index: ChunkIndex,
) -> Result<Generation, OpError> {
    let file = regular_file(txn, ino)?;
    check_read(caller, &file)?;
    Ok(txn.get_chunk(ino, index)?.unwrap_or(NO_GENERATION))
}

pub fn list(
    txn: &mut dyn Txn,
    caller: &Caller,
    ino: FileId,
    from: ChunkIndex,
    limit: usize,
) -> Result<(Vec<(ChunkIndex, Generation)>, bool), OpError> {
    let file = regular_file(txn, ino)?;
    check_read(caller, &file)?;
    let limit = limit.clamp(1, 4096);
    let mut chunks = txn.list_chunks(ino, from, limit + 1)?;
    let more = chunks.len() > limit;
    chunks.truncate(limit);
    Ok((chunks, more))
}
