//! Creating entries: the root of a new vault, directories, special files, symlinks and
//! regular files with their wrapped keys, and hard links.

use super::directory;
use crate::audit;
use crate::meta::{
    AclEntry, Entry, EntrySeal, FileId, Inode, Kind, Principal, RecordKind, SignedKey, Time, Txn,
    Version,
};
use crate::ops::access::{check_read, check_write, inherited_acl};
use crate::ops::names::{audit_name, check_name, check_target};
use crate::ops::records::{check_acl_record, key_holders};
use crate::ops::{Caller, OpError, inode, touch};

/// Creates the root directory of a new vault (owned by the site administrator, uid 0,
/// listable and writable by everyone, sticky).
pub fn init_root(txn: &mut dyn Txn, now: Time) -> Result<(), OpError> {
    if txn.get_inode(FileId::ROOT)?.is_some() {
        return Ok(());
    }
    let everyone = AclEntry {
        principal: Principal::Group(crate::ops::access::EVERYONE),
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
        ino: Some(FileId::ROOT),
        acl_record: Vec::new(),
        entry_seal: None,
    };
    let mut root = new_inode(FileId::ROOT, &node, 0, FileId::ROOT, now);
    root.nlink = 2;
    root.acl = vec![everyone];
    txn.put_inode(&root)?;
    Ok(())
}

/// The inode of a new `node` numbered `ino`, owned by vault user `owner`, in directory
/// `parent`, with no ACL yet.
fn new_inode(ino: FileId, node: &NewNode, owner: u32, parent: FileId, now: Time) -> Inode {
    Inode {
        ino,
        kind: node.kind,
        perm: node.perm & 0o7777,
        uid: node.uid,
        gid: node.gid,
        nlink: 1,
        size: format::names::target_bytes(&node.target) as u64,
        atime: now,
        mtime: now,
        ctime: now,
        rdev: node.rdev,
        owner,
        version: Version(1),
        parent,
        target: node.target.clone(),
        acl: Vec::new(),
        orphaned_at: None,
    }
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
    /// The inode number the client chose (regular files, and directories with an ACL
    /// record), or none to draw one here.
    pub ino: Option<FileId>,
    /// The new inode's signed ACL record, by its creator (docs/format.md section 5.2); empty:
    /// it takes the ACL its directory passes on, unsigned.
    pub acl_record: Vec<u8>,
    /// The seal of its entry (docs/format.md section 5.6); none in a directory of plaintext
    /// names.
    pub entry_seal: Option<EntrySeal>,
}

/// Creates a directory entry and its inode: mkdir, mknod, symlink, and create (see
/// [`create_file`] for the wrapped keys a regular file also needs). Returns the new inode and
/// the directory's version right after (`Attr.parent_version` in vault.proto).
pub fn create_node(
    txn: &mut dyn Txn,
    caller: &Caller,
    parent: FileId,
    name: &[u8],
    node: &NewNode,
    now: Time,
) -> Result<(Inode, Version), OpError> {
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
            if ino <= FileId::ROOT || txn.get_inode(ino)?.is_some() {
                return Err(OpError::invalid(format!(
                    "inode number {ino} is taken or reserved"
                )));
            }
            ino
        }
        None => free_ino(txn)?,
    };
    let mut child = new_inode(ino, node, caller.uid, parent, now);
    if node.acl_record.is_empty() {
        child.acl = inherited_acl(&dir);
    } else {
        child.acl = check_acl_record(txn, &child, &node.acl_record, &[])?;
        txn.put_signed(SignedKey(RecordKind::Acl, ino.0, 0), &node.acl_record)?;
    }
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
            seal: node.entry_seal,
        },
    )?;
    audit::append(txn, caller.uid, "create", ino, &audit_name(name), now)?;
    Ok((child, dir.version))
}

/// Draws a random unused inode number.
fn free_ino(txn: &mut dyn Txn) -> Result<FileId, OpError> {
    for _ in 0..16 {
        let ino = FileId(u64::from_le_bytes(identity::random_bytes()));
        if ino > FileId::ROOT && txn.get_inode(ino)?.is_none() {
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
    pub parent: FileId,
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
) -> Result<(Inode, Option<Version>), OpError> {
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
    if node.ino.is_none() {
        return Err(OpError::invalid("a new file needs its inode number"));
    }
    let (child, dir_version) = create_node(txn, caller, parent, name, node, now)?;
    store_wrapped_keys(txn, caller, &child, node, wrapped_keys)?;
    Ok((child, Some(dir_version)))
}

/// Creates a directory; with `wrapped_keys`, one whose names are sealed under its key
/// (docs/format.md section 5.6), wrapped as a new file's key is. Returns it and its
/// directory's version right after.
pub fn create_dir(
    txn: &mut dyn Txn,
    caller: &Caller,
    (parent, name): (FileId, &[u8]),
    node: &NewNode,
    wrapped_keys: &[(Principal, Vec<u8>)],
    now: Time,
) -> Result<(Inode, Version), OpError> {
    if node.kind != Kind::Directory {
        return Err(OpError::invalid("create_dir makes directories only"));
    }
    if !wrapped_keys.is_empty() && node.ino.is_none() {
        return Err(OpError::invalid(
            "a directory with a key needs its inode number",
        ));
    }
    let (child, dir_version) = create_node(txn, caller, parent, name, node, now)?;
    if !wrapped_keys.is_empty() {
        store_wrapped_keys(txn, caller, &child, node, wrapped_keys)?;
    }
    Ok((child, dir_version))
}

/// Checks and stores the wrapped keys of a new inode (a file, or a directory with a key).
fn store_wrapped_keys(
    txn: &mut dyn Txn,
    caller: &Caller,
    child: &Inode,
    node: &NewNode,
    wrapped_keys: &[(Principal, Vec<u8>)],
) -> Result<(), OpError> {
    check_key_holders(caller, child, node, wrapped_keys)?;
    for (principal, blob) in wrapped_keys {
        crate::ops::sharing::check_wrapped_key(txn, caller.uid, child.ino, *principal, blob)?;
        txn.put_wrapped_key(child.ino, *principal, blob)?;
    }
    Ok(())
}

/// A new file's key must be wrapped to its owner and every reader: by its signed ACL record
/// exactly those, else (an ACL passed on unsigned) at least the owner and the user readers.
fn check_key_holders(
    caller: &Caller,
    child: &Inode,
    node: &NewNode,
    wrapped_keys: &[(Principal, Vec<u8>)],
) -> Result<(), OpError> {
    let mut given: Vec<Principal> = wrapped_keys.iter().map(|(p, _)| *p).collect();
    given.sort();
    if !node.acl_record.is_empty() {
        if given != key_holders(caller.uid, &child.acl) {
            return Err(OpError::invalid(
                "the file key must be wrapped to its owner and each reader of its ACL record, \
                 once",
            ));
        }
        return Ok(());
    }
    let mut needed: Vec<Principal> = child
        .acl
        .iter()
        .filter(|e| e.read && matches!(e.principal, Principal::User(_)))
        .map(|e| e.principal)
        .collect();
    needed.push(Principal::User(caller.uid));
    for principal in needed {
        if !given.contains(&principal) {
            return Err(OpError::invalid(format!(
                "the file key must be wrapped to {}",
                principal.key()
            )));
        }
    }
    Ok(())
}

/// Adds a name for a file, its entry sealed by `seal`; returns the file and the directory's
/// version right after.
pub fn link(
    txn: &mut dyn Txn,
    caller: &Caller,
    ino: FileId,
    (new_parent, new_name, seal): (FileId, &[u8], Option<EntrySeal>),
    now: Time,
) -> Result<(Inode, Version), OpError> {
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
            seal,
        },
    )?;
    txn.put_inode(&target)?;
    txn.put_inode(&dir)?;
    Ok((target, dir.version))
}
