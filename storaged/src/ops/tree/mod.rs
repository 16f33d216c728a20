//! The directory tree: lookup, attributes, creating, linking, removing and renaming entries,
//! listing directories. Creating (`create`), removing (`remove`) and renaming (`rename`) each
//! have a module; what reads the tree, and attribute changes, are here.

mod create;
mod remove;
mod rename;

pub use create::{NewFile, NewNode, create_dir, create_file, create_node, init_root, link};
pub use remove::{Unlinked, purge, release, rmdir, unlink};
pub use rename::{Rename, RenameMode, RenameSeals, rename};

use super::access::{check_owner, check_read, check_write, may_read};
use super::names::check_name;
use super::{Caller, OpError, inode, touch};
use crate::meta::{ChunkIndex, ChunkRef, EntrySeal, FileId, Inode, Kind, Time, Txn};
use proto::limits::CHUNK_BYTES;

/// The inode if it is a directory.
pub fn directory(txn: &mut dyn Txn, ino: FileId) -> Result<Inode, OpError> {
    let dir = inode(txn, ino)?;
    if dir.kind != Kind::Directory {
        return Err(OpError::NotDirectory);
    }
    Ok(dir)
}

pub fn lookup(
    txn: &mut dyn Txn,
    caller: &Caller,
    parent: FileId,
    name: &[u8],
) -> Result<Inode, OpError> {
    lookup_sealed(txn, caller, parent, name).map(|(child, _)| child)
}

/// A lookup with the seal of the entry found (docs/format.md section 5.6).
pub fn lookup_sealed(
    txn: &mut dyn Txn,
    caller: &Caller,
    parent: FileId,
    name: &[u8],
) -> Result<(Inode, Option<EntrySeal>), OpError> {
    check_name(name)?;
    let dir = directory(txn, parent)?;
    check_read(caller, &dir)?;
    let entry = txn.get_entry(parent, name)?.ok_or(OpError::NotFound)?;
    let child = inode(txn, entry.ino)?;
    check_read(caller, &child)?;
    Ok((child, entry.seal))
}

pub fn getattr(txn: &mut dyn Txn, caller: &Caller, ino: FileId) -> Result<Inode, OpError> {
    let found = inode(txn, ino)?;
    check_read(caller, &found)?;
    Ok(found)
}

pub fn readlink(txn: &mut dyn Txn, caller: &Caller, ino: FileId) -> Result<Vec<u8>, OpError> {
    let link = getattr(txn, caller, ino)?;
    if link.kind != Kind::Symlink {
        return Err(OpError::invalid("not a symlink"));
    }
    Ok(link.target)
}

/// Directory entries with their inodes, in name order.
pub type Listing = Vec<(Vec<u8>, Inode)>;

/// Directory entries with their inodes and the entries' seals, in name order.
pub type SealedListing = Vec<(Vec<u8>, Inode, Option<EntrySeal>)>;

/// A page of a directory listing: the entries the caller may read, after `after`.
pub fn readdir(
    txn: &mut dyn Txn,
    caller: &Caller,
    ino: FileId,
    after: &[u8],
    limit: usize,
) -> Result<(Listing, bool), OpError> {
    let (page, more) = readdir_sealed(txn, caller, ino, after, limit)?;
    let page = page.into_iter().map(|(name, child, _)| (name, child));
    Ok((page.collect(), more))
}

/// [`readdir`] with each entry's seal (docs/format.md section 5.6).
pub fn readdir_sealed(
    txn: &mut dyn Txn,
    caller: &Caller,
    ino: FileId,
    after: &[u8],
    limit: usize,
) -> Result<(SealedListing, bool), OpError> {
    let dir = directory(txn, ino)?;
    check_read(caller, &dir)?;
    let limit = limit.clamp(1, 4096);
    let mut out = Vec::new();
    let mut cursor = after.to_vec();
    loop {
        let page = txn.list_entries(ino, &cursor, limit)?;
        let exhausted = page.len() < limit;
        for (name, entry) in page {
            cursor = name.clone();
            let child = inode(txn, entry.ino)?;
            if may_read(caller, &child) {
                out.push((name, child, entry.seal));
                if out.len() == limit {
                    let more = !txn.list_entries(ino, &cursor, 1)?.is_empty();
                    return Ok((out, more));
                }
            }
        }
        if exhausted {
            return Ok((out, false));
        }
    }
}

/// What `setattr` changes; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct AttrChanges {
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
}

pub fn setattr(
    txn: &mut dyn Txn,
    caller: &Caller,
    ino: FileId,
    changes: &AttrChanges,
    now: Time,
) -> Result<Inode, OpError> {
    let mut node = inode(txn, ino)?;
    if changes.perm.is_some() || changes.uid.is_some() || changes.gid.is_some() {
        check_owner(caller, &node)?;
    } else {
        check_write(caller, &node)?;
    }
    if let Some(perm) = changes.perm {
        node.perm = perm & 0o7777;
    }
    node.uid = changes.uid.unwrap_or(node.uid);
    node.gid = changes.gid.unwrap_or(node.gid);
    node.atime = changes.atime.unwrap_or(node.atime);
    node.mtime = changes.mtime.unwrap_or(node.mtime);
    if let Some(size) = changes.size {
        match node.kind {
            Kind::Regular => {}
            Kind::Directory => return Err(OpError::IsDirectory),
            _ => return Err(OpError::invalid("only regular files have a size to set")),
        }
        check_write(caller, &node)?;
        super::chunks::check_resize_without_rewrite(txn, ino, node.size, size)?;
        truncate_chunks(txn, ino, size)?;
        if size != node.size {
            super::manifest::forget(txn, ino)?;
        }
        node.size = size;
        node.mtime = changes.mtime.unwrap_or(now);
    }
    touch(&mut node, now);
    txn.put_inode(&node)?;
    Ok(node)
}

/// Drops the chunk records past a file of `size` bytes (their files go to the garbage list).
pub fn truncate_chunks(txn: &mut dyn Txn, ino: FileId, size: u64) -> Result<(), OpError> {
    if size > proto::limits::FILE_BYTES_MAX {
        return Err(OpError::TooLarge(format!("file size {size}")));
    }
    drop_chunks_from(txn, ino, ChunkIndex(size.div_ceil(CHUNK_BYTES as u64)))
}

/// Drops the chunk records of `ino` from index `first` on; their files go to the garbage
/// list.
fn drop_chunks_from(txn: &mut dyn Txn, ino: FileId, first: ChunkIndex) -> Result<(), OpError> {
    loop {
        let chunks = txn.list_chunks(ino, first, 1024)?;
        if chunks.is_empty() {
            return Ok(());
        }
        for (index, generation) in chunks {
            txn.add_garbage(ChunkRef {
                ino,
                index,
                generation,
            })?;
            txn.delete_chunk(ino, index)?;
        }
    }
}
