//! Removing entries: unlink (a file open elsewhere lingers, orphaned, until its release),
//! rmdir, and freeing a file's records and chunks.

use super::{directory, drop_chunks_from};
use crate::audit;
use crate::meta::{ChunkIndex, FileId, Inode, Kind, Time, Txn};
use crate::ops::access::{check_remove, check_write};
use crate::ops::names::check_name;
use crate::ops::{Caller, OpError, inode, touch};

/// Removes a non-directory entry. When that was the last link, the file's data goes too,
/// unless `keep_open` (a client has it open): then it lingers until [`release`].
pub fn unlink(
    txn: &mut dyn Txn,
    caller: &Caller,
    parent: FileId,
    name: &[u8],
    keep_open: bool,
    now: Time,
) -> Result<Unlinked, OpError> {
    let (mut dir, child) = to_remove(txn, caller, (parent, name), false)?;
    txn.delete_entry(parent, name)?;
    dir.mtime = now;
    touch(&mut dir, now);
    txn.put_inode(&dir)?;
    let links_left = drop_link(txn, caller, child, keep_open, now)?;
    Ok(Unlinked {
        parent: dir,
        links_left,
    })
}

/// The directory `parent` and the inode its entry `name` names, which is a directory just
/// when `a_directory` and which the caller may remove.
fn to_remove(
    txn: &mut dyn Txn,
    caller: &Caller,
    (parent, name): (FileId, &[u8]),
    a_directory: bool,
) -> Result<(Inode, Inode), OpError> {
    check_name(name)?;
    let dir = directory(txn, parent)?;
    let entry = txn.get_entry(parent, name)?.ok_or(OpError::NotFound)?;
    let child = inode(txn, entry.ino)?;
    match (child.kind == Kind::Directory, a_directory) {
        (true, false) => return Err(OpError::IsDirectory),
        (false, true) => return Err(OpError::NotDirectory),
        _ => {}
    }
    check_remove(caller, &dir, &child)?;
    Ok((dir, child))
}

/// What an unlink changed: its directory as it is now, and the links the file has left (0:
/// gone, or kept until its release when it is open).
#[derive(Debug)]
pub struct Unlinked {
    pub parent: Inode,
    pub links_left: u32,
}

/// One link of `child` is gone: count it down and free the file when none is left.
pub(super) fn drop_link(
    txn: &mut dyn Txn,
    caller: &Caller,
    mut child: Inode,
    keep_open: bool,
    now: Time,
) -> Result<u32, OpError> {
    child.nlink = child.nlink.saturating_sub(1);
    touch(&mut child, now);
    if child.nlink > 0 {
        txn.put_inode(&child)?;
    } else if keep_open {
        child.orphaned_at = Some(now);
        txn.put_inode(&child)?;
    } else {
        audit::append(txn, caller.uid, "delete", child.ino, "", now)?;
        purge(txn, child.ino)?;
    }
    Ok(child.nlink)
}

/// Frees an inode: its chunk files go to the garbage list, its records away.
pub fn purge(txn: &mut dyn Txn, ino: FileId) -> Result<(), OpError> {
    drop_chunks_from(txn, ino, ChunkIndex(0))?;
    txn.delete_inode(ino)?;
    Ok(())
}

/// A client closed a file that was unlinked while open: free it now.
pub fn release(txn: &mut dyn Txn, caller: &Caller, ino: FileId, now: Time) -> Result<(), OpError> {
    let Some(orphan) = txn.get_inode(ino)? else {
        return Ok(());
    };
    if orphan.nlink == 0 && orphan.orphaned_at.is_some() {
        check_write(caller, &orphan)?;
        audit::append(txn, caller.uid, "delete", ino, "released", now)?;
        purge(txn, ino)?;
    }
    Ok(())
}

pub fn rmdir(
    txn: &mut dyn Txn,
    caller: &Caller,
    parent: FileId,
    name: &[u8],
    now: Time,
) -> Result<Inode, OpError> {
    let (mut dir, child) = to_remove(txn, caller, (parent, name), true)?;
    if !txn.list_entries(child.ino, b"", 1)?.is_empty() {
        return Err(OpError::NotEmpty);
    }
    txn.delete_entry(parent, name)?;
    dir.nlink = dir.nlink.saturating_sub(1);
    dir.mtime = now;
    touch(&mut dir, now);
    txn.put_inode(&dir)?;
    let name = crate::ops::names::audit_name(name);
    audit::append(txn, caller.uid, "delete", child.ino, &name, now)?;
    txn.delete_inode(child.ino)?;
    Ok(dir)
}
