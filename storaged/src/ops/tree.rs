//! The directory tree: lookup, attributes, creating, linking, removing and renaming entries,
//! listing directories.

use super::access::{check_owner, check_read, check_remove, check_write, inherited_acl, may_read};
use super::names::{check_name, check_target};
use super::{Caller, OpError, inode, touch};
use crate::audit;
use crate::meta::{AclEntry, ChunkRef, Entry, Ino, Inode, Kind, Principal, ROOT_INO, Time, Txn};
use proto::limits::CHUNK_BYTES;

/// Creates the root directory of a new vault (owned by the site administrator, uid 0,
/// listable and writable by everyone, sticky).
pub fn init_root(txn: &mut dyn Txn, now: Time) -> Result<(), OpError> {
    if txn.get_inode(ROOT_INO)?.is_some() {
        return Ok(());
    }
    let everyone = AclEntry {
        principal: Principal::Group(super::access::EVERYONE),
        read: true,
        write: true,
    };
    let node = NewNode {
        kind: Kind::Directory,
        perm: 0o1777,
        uid: 0,
        gid: 0,
        rdev: 0,
        target: Vec::new(),
        ino: Some(ROOT_INO),
    };
    let mut root = new_inode(ROOT_INO, &node, 0, ROOT_INO, now);
    root.nlink = 2;
    root.acl = vec![everyone];
    txn.put_inode(&root)?;
    Ok(())
}

/// The inode of a new `node` numbered `ino`, owned by vault user `owner`, in directory
/// `parent`, with no ACL yet.
fn new_inode(ino: Ino, node: &NewNode, owner: u32, parent: Ino, now: Time) -> Inode {
    Inode {
        ino,
        kind: node.kind,
        perm: node.perm & 0o7777,
        uid: node.uid,
        gid: node.gid,
        nlink: 1,
        size: node.target.len() as u64,
        atime: now,
        mtime: now,
        ctime: now,
        rdev: node.rdev,
        owner,
        version: 1,
        parent,
        target: node.target.clone(),
        acl: Vec::new(),
        orphaned_at: None,
    }
}

/// The inode if it is a directory.
pub fn directory(txn: &mut dyn Txn, ino: Ino) -> Result<Inode, OpError> {
    let dir = inode(txn, ino)?;
    if dir.kind != Kind::Directory {
        return Err(OpError::NotDirectory);
    }
    Ok(dir)
}

pub fn lookup(
    txn: &mut dyn Txn,
    caller: &Caller,
    parent: Ino,
    name: &[u8],
) -> Result<Inode, OpError> {
    check_name(name)?;
    let dir = directory(txn, parent)?;
    check_read(caller, &dir)?;
    let entry = txn.get_entry(parent, name)?.ok_or(OpError::NotFound)?;
    let child = inode(txn, entry.ino)?;
    check_read(caller, &child)?;
    Ok(child)
}

pub fn getattr(txn: &mut dyn Txn, caller: &Caller, ino: Ino) -> Result<Inode, OpError> {
    let found = inode(txn, ino)?;
    check_read(caller, &found)?;
    Ok(found)
}

/// What a new entry is.
#[derive(Clone, Debug)]
pub struct NewNode {
    pub kind: Kind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub target: Vec<u8>,
    /// The inode number the client chose (regular files), or none to draw one here.
    pub ino: Option<Ino>,
}

/// Creates a directory entry and its inode: mkdir, mknod, symlink, and create (see
/// [`create_file`] for the wrapped keys a regular file also needs). Returns the new inode and
/// the directory's version right after (`Attr.parent_version` in vault.proto).
pub fn create_node(
    txn: &mut dyn Txn,
    caller: &Caller,
    parent: Ino,
    name: &[u8],
    node: &NewNode,
    now: Time,
) -> Result<(Inode, u64), OpError> {
    check_name(name)?;
    if node.kind == Kind::Symlink {
        check_target(&node.target)?;
    }
    let mut dir = directory(txn, parent)?;
    check_write(caller, &dir)?;
    if txn.get_entry(parent, name)?.is_some() {
        return Err(OpError::Exists);
    }
    let ino = match node.ino {
        Some(ino) => {
            if ino <= ROOT_INO || txn.get_inode(ino)?.is_some() {
                return Err(OpError::invalid(format!(
                    "inode number {ino:016x} is taken or reserved"
                )));
            }
            ino
        }
        None => free_ino(txn)?,
    };
    let mut child = new_inode(ino, node, caller.uid, parent, now);
    child.acl = inherited_acl(&dir);
    if node.kind == Kind::Directory {
        child.nlink = 2;
        dir.nlink += 1;
    }
    dir.mtime = now;
    touch(&mut dir, now);
    txn.put_inode(&child)?;
    txn.put_inode(&dir)?;
    txn.put_entry(
        parent,
        name,
        Entry {
            ino,
            kind: node.kind,
        },
    )?;
    audit::append(
        txn,
        caller.uid,
        "create",
        ino,
        &String::from_utf8_lossy(name),
        now,
    )?;
    Ok((child, dir.version))
}

/// Draws a random unused inode number.
fn free_ino(txn: &mut dyn Txn) -> Result<Ino, OpError> {
    for _ in 0..16 {
        let ino = u64::from_le_bytes(identity::random_bytes());
        if ino > ROOT_INO && txn.get_inode(ino)?.is_none() {
            return Ok(ino);
        }
    }
    Err(OpError::Store(crate::meta::StoreError::Conflict(
        "no free inode number found".into(),
    )))
}

/// A regular file to create: its name, what it is, and its file key wrapped to the
/// principals that may read it.
#[derive(Clone, Debug)]
pub struct NewFile {
    pub parent: Ino,
    pub name: Vec<u8>,
    pub node: NewNode,
    pub wrapped_keys: Vec<(Principal, Vec<u8>)>,
}

/// Creates a regular file with its wrapped keys: the owner's is required, and one for every
/// user the inherited ACL lets read. Returns the file and, when it was created, the
/// directory's version right after; with `exclusive` unset an existing regular file is
/// returned instead (and no version).
pub fn create_file(
    txn: &mut dyn Txn,
    caller: &Caller,
    file: &NewFile,
    exclusive: bool,
    now: Time,
) -> Result<(Inode, Option<u64>), OpError> {
    let NewFile {
        parent,
        ref name,
        ref node,
        ref wrapped_keys,
    } = *file;
    let name = name.as_slice();
    if !exclusive && let Some(entry) = txn.get_entry(parent, name)? {
        let existing = inode(txn, entry.ino)?;
        if existing.kind == Kind::Directory {
            return Err(OpError::IsDirectory);
        }
        check_read(caller, &existing)?;
        return Ok((existing, None));
    }
    let ino = node
        .ino
        .ok_or_else(|| OpError::invalid("a new file needs its inode number"))?;
    let (child, dir_version) = create_node(txn, caller, parent, name, node, now)?;
    let mut needed: Vec<Principal> = child
        .acl
        .iter()
        .filter(|e| e.read && matches!(e.principal, Principal::User(_)))
        .map(|e| e.principal)
        .collect();
    needed.push(Principal::User(caller.uid));
    for principal in needed {
        if !wrapped_keys.iter().any(|(p, _)| *p == principal) {
            return Err(OpError::invalid(format!(
                "the file key must be wrapped to {}",
                principal.key()
            )));
        }
    }
    for (principal, blob) in wrapped_keys {
        super::sharing::check_wrapped_key(txn, ino, *principal, blob)?;
        txn.put_wrapped_key(ino, *principal, blob)?;
    }
    Ok((child, Some(dir_version)))
}

pub fn readlink(txn: &mut dyn Txn, caller: &Caller, ino: Ino) -> Result<Vec<u8>, OpError> {
    let link = getattr(txn, caller, ino)?;
    if link.kind != Kind::Symlink {
        return Err(OpError::invalid("not a symlink"));
    }
    Ok(link.target)
}

/// Adds a name for a file; returns the file and the directory's version right after.
pub fn link(
    txn: &mut dyn Txn,
    caller: &Caller,
    ino: Ino,
    new_parent: Ino,
    new_name: &[u8],
    now: Time,
) -> Result<(Inode, u64), OpError> {
    check_name(new_name)?;
    let mut target = inode(txn, ino)?;
    if target.kind == Kind::Directory {
        return Err(OpError::NotSupported("hard links to directories".into()));
    }
    check_write(caller, &target)?;
    let mut dir = directory(txn, new_parent)?;
    check_write(caller, &dir)?;
    if txn.get_entry(new_parent, new_name)?.is_some() {
        return Err(OpError::Exists);
    }
    target.nlink += 1;
    target.orphaned_at = None;
    touch(&mut target, now);
    dir.mtime = now;
    touch(&mut dir, now);
    txn.put_entry(
        new_parent,
        new_name,
        Entry {
            ino,
            kind: target.kind,
        },
    )?;
    txn.put_inode(&target)?;
    txn.put_inode(&dir)?;
    Ok((target, dir.version))
}

/// Removes a non-directory entry. When that was the last link, the file's data goes too,
/// unless `keep_open` (a client has it open): then it lingers until [`release`].
pub fn unlink(
    txn: &mut dyn Txn,
    caller: &Caller,
    parent: Ino,
    name: &[u8],
    keep_open: bool,
    now: Time,
) -> Result<Unlinked, OpError> {
    check_name(name)?;
    let mut dir = directory(txn, parent)?;
    let entry = txn.get_entry(parent, name)?.ok_or(OpError::NotFound)?;
    let child = inode(txn, entry.ino)?;
    if child.kind == Kind::Directory {
        return Err(OpError::IsDirectory);
    }
    check_remove(caller, &dir, &child)?;
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

/// What an unlink changed: its directory as it is now, and the links the file has left (0:
/// gone, or kept until its release when it is open).
#[derive(Debug)]
pub struct Unlinked {
    pub parent: Inode,
    pub links_left: u32,
}

/// One link of `child` is gone: count it down and free the file when none is left.
fn drop_link(
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
pub fn purge(txn: &mut dyn Txn, ino: Ino) -> Result<(), OpError> {
    loop {
        let chunks = txn.list_chunks(ino, 0, 1024)?;
        if chunks.is_empty() {
            break;
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
    txn.delete_inode(ino)?;
    Ok(())
}

/// A client closed a file that was unlinked while open: free it now.
pub fn release(txn: &mut dyn Txn, caller: &Caller, ino: Ino, now: Time) -> Result<(), OpError> {
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
    parent: Ino,
    name: &[u8],
    now: Time,
) -> Result<Inode, OpError> {
    check_name(name)?;
    let mut dir = directory(txn, parent)?;
    let entry = txn.get_entry(parent, name)?.ok_or(OpError::NotFound)?;
    let child = inode(txn, entry.ino)?;
    if child.kind != Kind::Directory {
        return Err(OpError::NotDirectory);
    }
    check_remove(caller, &dir, &child)?;
    if !txn.list_entries(child.ino, b"", 1)?.is_empty() {
        return Err(OpError::NotEmpty);
    }
    txn.delete_entry(parent, name)?;
    dir.nlink = dir.nlink.saturating_sub(1);
    dir.mtime = now;
    touch(&mut dir, now);
    txn.put_inode(&dir)?;
    audit::append(
        txn,
        caller.uid,
        "delete",
        child.ino,
        &String::from_utf8_lossy(name),
        now,
    )?;
    txn.delete_inode(child.ino)?;
    Ok(dir)
}

/// How a rename treats an existing target name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    Replace,
    NoReplace,
    Exchange,
}

/// A rename: the entry `name` in directory `parent` gets the name `new_name` in
/// `new_parent`, as `mode` says.
#[derive(Clone, Copy, Debug)]
pub struct Rename<'a> {
    pub parent: Ino,
    pub name: &'a [u8],
    pub new_parent: Ino,
    pub new_name: &'a [u8],
    pub mode: RenameMode,
}

/// Renames (or with [`RenameMode::Exchange`] swaps) an entry, across directories too.
/// Returns the inode that lost its last link by being replaced, if any: it is kept as an
/// orphan for a client that may hold it open, which releases it.
pub fn rename(
    txn: &mut dyn Txn,
    caller: &Caller,
    rename: &Rename<'_>,
    now: Time,
) -> Result<Option<Ino>, OpError> {
    let Rename {
        parent,
        name,
        new_parent,
        new_name,
        mode,
    } = *rename;
    check_name(name)?;
    check_name(new_name)?;
    let source_dir = directory(txn, parent)?;
    let target_dir = directory(txn, new_parent)?;
    let entry = txn.get_entry(parent, name)?.ok_or(OpError::NotFound)?;
    let moving = inode(txn, entry.ino)?;
    check_remove(caller, &source_dir, &moving)?;
    check_write(caller, &target_dir)?;
    let existing = txn.get_entry(new_parent, new_name)?;
    if existing.is_some_and(|e| e.ino == entry.ino) {
        return Ok(None); // Renaming onto another name of the same file changes nothing.
    }
    if moving.kind == Kind::Directory {
        check_not_inside(txn, moving.ino, new_parent)?;
    }
    match (mode, existing) {
        (RenameMode::NoReplace, Some(_)) => Err(OpError::Exists),
        (RenameMode::Exchange, None) => Err(OpError::NotFound),
        (RenameMode::Exchange, Some(other)) => {
            let other = inode(txn, other.ino)?;
            check_remove(caller, &target_dir, &other)?;
            if other.kind == Kind::Directory {
                check_not_inside(txn, other.ino, parent)?;
            }
            exchange(
                txn,
                (parent, name, moving),
                (new_parent, new_name, other),
                now,
            )?;
            Ok(None)
        }
        (_, existing) => {
            let replaced = match existing {
                Some(old) => Some(replace_target(txn, caller, &moving, &target_dir, old, now)?),
                None => None,
            };
            move_entry(txn, (parent, name), (new_parent, new_name), &moving, now)?;
            Ok(replaced.flatten())
        }
    }
}

/// Refuses to move directory `moving` into itself or below it.
fn check_not_inside(txn: &mut dyn Txn, moving: Ino, destination: Ino) -> Result<(), OpError> {
    let mut at = destination;
    for _ in 0..proto::limits::PATH_BYTES_MAX {
        if at == moving {
            return Err(OpError::invalid("cannot move a directory into itself"));
        }
        if at == ROOT_INO {
            return Ok(());
        }
        at = inode(txn, at)?.parent;
    }
    Err(OpError::Store(crate::meta::StoreError::Corrupt(
        "directory parents form a loop".into(),
    )))
}

/// Removes the entry a rename replaces. Returns the replaced file's inode when that was its
/// last link (it is kept as an orphan until released).
fn replace_target(
    txn: &mut dyn Txn,
    caller: &Caller,
    moving: &Inode,
    target_dir: &Inode,
    old: Entry,
    now: Time,
) -> Result<Option<Ino>, OpError> {
    let old = inode(txn, old.ino)?;
    check_remove(caller, target_dir, &old)?;
    match (moving.kind == Kind::Directory, old.kind == Kind::Directory) {
        (true, false) => return Err(OpError::NotDirectory),
        (false, true) => return Err(OpError::IsDirectory),
        (true, true) => {
            if !txn.list_entries(old.ino, b"", 1)?.is_empty() {
                return Err(OpError::NotEmpty);
            }
            let mut dir = target_dir.clone();
            dir.nlink = dir.nlink.saturating_sub(1);
            txn.put_inode(&dir)?;
            audit::append(
                txn,
                caller.uid,
                "delete",
                old.ino,
                "replaced by rename",
                now,
            )?;
            txn.delete_inode(old.ino)?;
            return Ok(None);
        }
        (false, false) => {}
    }
    let last = old.nlink <= 1;
    let ino = old.ino;
    drop_link(txn, caller, old, true, now)?;
    Ok(last.then_some(ino))
}

fn move_entry(
    txn: &mut dyn Txn,
    (parent, name): (Ino, &[u8]),
    (new_parent, new_name): (Ino, &[u8]),
    moving: &Inode,
    now: Time,
) -> Result<(), OpError> {
    txn.delete_entry(parent, name)?;
    txn.put_entry(
        new_parent,
        new_name,
        Entry {
            ino: moving.ino,
            kind: moving.kind,
        },
    )?;
    let mut moved = moving.clone();
    touch(&mut moved, now);
    if moving.kind == Kind::Directory && parent != new_parent {
        moved.parent = new_parent;
        let mut old_dir = inode(txn, parent)?;
        old_dir.nlink = old_dir.nlink.saturating_sub(1);
        txn.put_inode(&old_dir)?;
        let mut new_dir = inode(txn, new_parent)?;
        new_dir.nlink += 1;
        txn.put_inode(&new_dir)?;
    }
    txn.put_inode(&moved)?;
    for dir in [parent, new_parent] {
        let mut changed = inode(txn, dir)?;
        changed.mtime = now;
        touch(&mut changed, now);
        txn.put_inode(&changed)?;
    }
    Ok(())
}

fn exchange(
    txn: &mut dyn Txn,
    (parent, name, first): (Ino, &[u8], Inode),
    (new_parent, new_name, second): (Ino, &[u8], Inode),
    now: Time,
) -> Result<(), OpError> {
    txn.put_entry(
        parent,
        name,
        Entry {
            ino: second.ino,
            kind: second.kind,
        },
    )?;
    txn.put_entry(
        new_parent,
        new_name,
        Entry {
            ino: first.ino,
            kind: first.kind,
        },
    )?;
    if parent != new_parent {
        let dirs_moving = [(&first, new_parent), (&second, parent)];
        for (node, to) in dirs_moving {
            let mut moved = node.clone();
            if moved.kind == Kind::Directory {
                moved.parent = to;
            }
            touch(&mut moved, now);
            txn.put_inode(&moved)?;
        }
        let delta =
            i64::from(first.kind == Kind::Directory) - i64::from(second.kind == Kind::Directory);
        for (dir, change) in [(parent, -delta), (new_parent, delta)] {
            let mut changed = inode(txn, dir)?;
            changed.nlink = (i64::from(changed.nlink) + change).max(2) as u32;
            changed.mtime = now;
            touch(&mut changed, now);
            txn.put_inode(&changed)?;
        }
    }
    Ok(())
}

/// Directory entries with their inodes, in name order.
pub type Listing = Vec<(Vec<u8>, Inode)>;

/// A page of a directory listing: the entries the caller may read, after `after`.
pub fn readdir(
    txn: &mut dyn Txn,
    caller: &Caller,
    ino: Ino,
    after: &[u8],
    limit: usize,
) -> Result<(Listing, bool), OpError> {
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
                out.push((name, child));
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
    ino: Ino,
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
        node.size = size;
        node.mtime = changes.mtime.unwrap_or(now);
    }
    touch(&mut node, now);
    txn.put_inode(&node)?;
    Ok(node)
}

/// Drops the chunk records past a file of `size` bytes (their files go to the garbage list).
pub fn truncate_chunks(txn: &mut dyn Txn, ino: Ino, size: u64) -> Result<(), OpError> {
    if size > proto::limits::FILE_BYTES_MAX {
        return Err(OpError::TooLarge(format!("file size {size}")));
    }
    let keep = size.div_ceil(CHUNK_BYTES as u64);
    loop {
        let chunks = txn.list_chunks(ino, keep, 1024)?;
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
