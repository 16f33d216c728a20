//! Renaming entries, across directories too: replacing a target (which may leave an
//! orphan), exchanging two entries, and never moving a directory below itself.

use super::directory;
use super::remove::drop_link;
use crate::audit;
use crate::meta::{Entry, EntrySeal, FileId, Inode, Kind, Time, Txn};
use crate::ops::access::{check_remove, check_write};
use crate::ops::names::check_name;
use crate::ops::{Caller, OpError, inode, touch};

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
    pub parent: FileId,
    pub name: &'a [u8],
    pub new_parent: FileId,
    pub new_name: &'a [u8],
    pub mode: RenameMode,
    pub seals: RenameSeals,
}

/// What a client that seals names sends with a rename (docs/format.md section 5.6): the
/// inodes it sealed the new entries for, and their seals.
#[derive(Clone, Copy, Debug, Default)]
pub struct RenameSeals {
    /// The inode `name` must name (none: any).
    pub ino: Option<FileId>,
    /// With an exchange, the inode `new_name` must name (none: any).
    pub new_ino: Option<FileId>,
    /// The seal of the entry at `new_name`.
    pub new_entry_seal: Option<EntrySeal>,
    /// With an exchange, the seal of the entry at `name`.
    pub entry_seal: Option<EntrySeal>,
}

/// Refuses a rename whose entry names another inode than the client sealed it for.
fn check_sealed_for(expected: Option<FileId>, found: FileId) -> Result<(), OpError> {
    match expected {
        Some(ino) if ino != found => Err(OpError::invalid(format!(
            "the entry names inode {found}, not {ino} as the rename expected (changed meanwhile)"
        ))),
        _ => Ok(()),
    }
}

/// Renames (or with [`RenameMode::Exchange`] swaps) an entry, across directories too.
/// Returns the inode that lost its last link by being replaced, if any: it is kept as an
/// orphan for a client that may hold it open, which releases it.
pub fn rename(
    txn: &mut dyn Txn,
    caller: &Caller,
    rename: &Rename<'_>,
    now: Time,
) -> Result<Option<FileId>, OpError> {
    let Rename {
        parent,
        name,
        new_parent,
        new_name,
        mode,
        seals,
    } = *rename;
    check_name(name)?;
    check_name(new_name)?;
    let source_dir = directory(txn, parent)?;
    let target_dir = directory(txn, new_parent)?;
    let entry = txn.get_entry(parent, name)?.ok_or(OpError::NotFound)?;
    check_sealed_for(seals.ino, entry.ino)?;
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
            check_sealed_for(seals.new_ino, other.ino)?;
            let other = inode(txn, other.ino)?;
            check_remove(caller, &target_dir, &other)?;
            if other.kind == Kind::Directory {
                check_not_inside(txn, other.ino, parent)?;
            }
            exchange(
                txn,
                (parent, name, moving, seals.entry_seal),
                (new_parent, new_name, other, seals.new_entry_seal),
                now,
            )?;
            Ok(None)
        }
        (_, existing) => {
            let replaced = match existing {
                Some(old) => Some(replace_target(txn, caller, &moving, &target_dir, old, now)?),
                None => None,
            };
            let to = (new_parent, new_name, seals.new_entry_seal);
            move_entry(txn, (parent, name), to, &moving, now)?;
            Ok(replaced.flatten())
        }
    }
}

/// Refuses to move directory `moving` into itself or below it.
fn check_not_inside(txn: &mut dyn Txn, moving: FileId, destination: FileId) -> Result<(), OpError> {
    let mut at = destination;
    for _ in 0..proto::limits::PATH_BYTES_MAX {
        if at == moving {
            return Err(OpError::invalid("cannot move a directory into itself"));
        }
        if at == FileId::ROOT {
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
) -> Result<Option<FileId>, OpError> {
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
    (parent, name): (FileId, &[u8]),
    (new_parent, new_name, seal): (FileId, &[u8], Option<EntrySeal>),
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
            seal,
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
    (parent, name, first, first_seal): (FileId, &[u8], Inode, Option<EntrySeal>),
    (new_parent, new_name, second, second_seal): (FileId, &[u8], Inode, Option<EntrySeal>),
    now: Time,
) -> Result<(), OpError> {
    // Each name now names the other inode, under the seal made for that.
    txn.put_entry(
        parent,
        name,
        Entry {
            ino: second.ino,
            kind: second.kind,
            seal: first_seal,
        },
    )?;
    txn.put_entry(
        new_parent,
        new_name,
        Entry {
            ino: first.ino,
            kind: first.kind,
            seal: second_seal,
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
