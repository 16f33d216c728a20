//! Who may do what. Every inode has an owner (a vault user) and an ACL of (principal, read,
//! write) entries; a caller has a right when it owns the inode or an entry grants it to the
//! caller or one of its groups. Group 0 is "everyone": every user is in it.
//!
//! Directories with the sticky bit (the root has it) let only an entry's owner, or the
//! directory's, remove or rename that entry, as /tmp does.

use super::{Caller, OpError};
use crate::meta::{AclEntry, Inode, Principal};

/// The implicit group of every user.
pub const EVERYONE: u32 = 0;

const STICKY: u32 = 0o1000;

fn granted(caller: &Caller, acl: &[AclEntry], want: impl Fn(&AclEntry) -> bool) -> bool {
    acl.iter().filter(|e| want(e)).any(|e| match e.principal {
        Principal::User(uid) => uid == caller.uid,
        Principal::Group(gid) => caller.groups.contains(&gid),
    })
}

pub fn may_read(caller: &Caller, inode: &Inode) -> bool {
    inode.owner == caller.uid || granted(caller, &inode.acl, |e| e.read)
}

pub fn may_write(caller: &Caller, inode: &Inode) -> bool {
    inode.owner == caller.uid || granted(caller, &inode.acl, |e| e.write)
}

pub fn check_read(caller: &Caller, inode: &Inode) -> Result<(), OpError> {
    if may_read(caller, inode) {
        Ok(())
    } else {
        Err(OpError::AccessDenied(format!(
            "no read access to {}",
            inode.ino
        )))
    }
}

pub fn check_write(caller: &Caller, inode: &Inode) -> Result<(), OpError> {
    if may_write(caller, inode) {
        Ok(())
    } else {
        Err(OpError::AccessDenied(format!(
            "no write access to {}",
            inode.ino
        )))
    }
}

pub fn check_owner(caller: &Caller, inode: &Inode) -> Result<(), OpError> {
    if inode.owner == caller.uid {
        Ok(())
    } else {
        Err(OpError::AccessDenied(format!(
            "only the owner may do this to {}",
            inode.ino
        )))
    }
}

/// Removing or renaming `child` out of `dir`: write access to the directory, and under the
/// sticky bit, ownership of the child or of the directory.
pub fn check_remove(caller: &Caller, dir: &Inode, child: &Inode) -> Result<(), OpError> {
    check_write(caller, dir)?;
    let sticky = dir.perm & STICKY != 0;
    if sticky && child.owner != caller.uid && dir.owner != caller.uid {
        return Err(OpError::AccessDenied(format!(
            "{} is in a sticky directory and owned by someone else",
            child.ino
        )));
    }
    Ok(())
}

/// The ACL a new inode starts with: its directory's, without the "everyone" entries (so that
/// files created at the root are private).
pub fn inherited_acl(parent: &Inode) -> Vec<AclEntry> {
    parent
        .acl
        .iter()
        .filter(|e| e.principal != Principal::Group(EVERYONE))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{FileId, Kind, Version};

    fn inode(owner: u32, acl: Vec<AclEntry>, perm: u32) -> Inode {
        Inode {
            ino: FileId(5),
            kind: Kind::Directory,
            perm,
            uid: 0,
            gid: 0,
            nlink: 2,
            size: 0,
            atime: 0,
            mtime: 0,
            ctime: 0,
            rdev: 0,
            owner,
            version: Version(1),
            parent: FileId::ROOT,
            target: Vec::new(),
            acl,
            orphaned_at: None,
        }
    }

    fn caller(uid: u32, groups: &[u32]) -> Caller {
        Caller {
            uid,
            groups: groups.to_vec(),
            admin: false,
        }
    }

    #[test]
    fn owner_acl_user_and_group_grant() {
        let acl = vec![
            AclEntry {
                principal: Principal::User(2),
                read: true,
                write: false,
            },
            AclEntry {
                principal: Principal::Group(9),
                read: true,
                write: true,
            },
        ];
        let file = inode(1, acl, 0o644);
        assert!(may_write(&caller(1, &[0]), &file));
        assert!(may_read(&caller(2, &[0]), &file) && !may_write(&caller(2, &[0]), &file));
        assert!(may_write(&caller(3, &[0, 9]), &file));
        assert!(!may_read(&caller(4, &[0]), &file));
    }

    #[test]
    fn sticky_directory_protects_other_owners_entries() {
        let everyone = AclEntry {
            principal: Principal::Group(EVERYONE),
            read: true,
            write: true,
        };
        let root = inode(0, vec![everyone], 0o1777);
        let alices = inode(1, vec![], 0o644);
        assert!(check_remove(&caller(1, &[0]), &root, &alices).is_ok());
        assert!(check_remove(&caller(2, &[0]), &root, &alices).is_err());
        assert!(inherited_acl(&root).is_empty());
    }
}
