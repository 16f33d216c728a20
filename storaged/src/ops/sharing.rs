//! Wrapped keys and access-control lists: who may open a file and who holds its key. Every
//! change of an ACL comes with the inode's new signed ACL record (`super::records`).

use super::access::{EVERYONE, check_read, check_write};
use super::records::{self, check_acl_record, key_holders, signed_part};
use super::{Caller, OpError, inode, touch};
use crate::audit;
use crate::meta::{AclEntry, FileId, Inode, Kind, Principal, RecordKind, SignedKey, Time, Txn};
use format::wrapped::{WrapHeader, WrapKind};

/// A wrapped key must be a file key for this file, addressed to the principal's wrapping
/// key; a signed one (version 2) must also be signed by `caller`, its sender. The server
/// cannot open it, but it can refuse one that no one could use.
pub fn check_wrapped_key(
    txn: &mut dyn Txn,
    caller: u32,
    ino: FileId,
    principal: Principal,
    blob: &[u8],
) -> Result<(), OpError> {
    if format::wrapped::version_of(blob) == Some(format::wrapped::VERSION_2) {
        return records::check_file_wrap(txn, ino, principal, caller, blob);
    }
    let header = WrapHeader::parse(blob).map_err(|e| OpError::invalid(e.to_string()))?;
    if header.kind != WrapKind::FileKey || header.object != ino.0 {
        return Err(OpError::invalid(format!(
            "wrapped key is not the key of file {ino}"
        )));
    }
    if let Some(vault) = vault_id(txn)?
        && header.vault != vault
    {
        return Err(OpError::invalid("wrapped key belongs to another vault"));
    }
    match principal {
        Principal::User(uid) => {
            let user = txn
                .get_user(uid)?
                .filter(|u| u.is_active())
                .ok_or_else(|| {
                    OpError::invalid(format!("no active user {uid} to wrap a key to"))
                })?;
            if header.recipient != user.wrapping_key {
                return Err(OpError::invalid(format!(
                    "wrapped key is addressed to someone other than user {uid}"
                )));
            }
        }
        Principal::Group(gid) => {
            txn.get_group(gid)?
                .ok_or_else(|| OpError::invalid(format!("no group {gid}")))?;
        }
    }
    Ok(())
}

/// The vault ID, once the vault is initialised.
pub fn vault_id(txn: &mut dyn Txn) -> Result<Option<format::ids::VaultId>, OpError> {
    Ok(txn
        .get_setting(crate::settings::VAULT_ID)?
        .and_then(|bytes| bytes.try_into().ok())
        .map(format::ids::VaultId))
}

/// The wrapped keys of `ino` that the caller can open: its own and its groups'.
pub fn my_wrapped_keys(
    txn: &mut dyn Txn,
    caller: &Caller,
    ino: FileId,
) -> Result<Vec<(Principal, Vec<u8>)>, OpError> {
    let file = inode(txn, ino)?;
    check_read(caller, &file)?;
    Ok(txn
        .list_wrapped_keys(ino)?
        .into_iter()
        .filter(|(p, _)| match p {
            Principal::User(uid) => *uid == caller.uid,
            Principal::Group(gid) => caller.groups.contains(gid),
        })
        .collect())
}

/// Whether a wrapped key of `ino` is addressed to a group key that is no longer the group's
/// current one (a member left since): the file's next writer should give it a new key.
pub fn rekey_needed(txn: &mut dyn Txn, ino: FileId) -> Result<bool, OpError> {
    for (principal, blob) in txn.list_wrapped_keys(ino)? {
        let Principal::Group(gid) = principal else {
            continue;
        };
        let current = records::group_record(txn, gid)?.map(|g| g.record.wrapping_key);
        let addressed = format::wrapped::SignedWrapHeader::parse(&blob)
            .ok()
            .map(|h| h.recipient_key);
        if current.is_some() && addressed != current {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What a share or an unshare asks for, besides the inode.
#[derive(Clone, Debug, Default)]
pub struct AclChange {
    /// The inode's new signed ACL record.
    pub record: Vec<u8>,
    /// Share: the file key wrapped to the principal (regular files, read access).
    pub wrapped_key: Vec<u8>,
    /// Unshare: the file's new wrapped keys (a new key epoch), for a file the principal read.
    pub rekey: Vec<(Principal, Vec<u8>)>,
}

/// Who may change an inode's ACL: its owner or a writer.
fn check_sharer(caller: &Caller, node: &Inode) -> Result<(), OpError> {
    check_write(caller, node).map_err(|_| {
        OpError::AccessDenied(format!("only the owner or a writer may share {}", node.ino))
    })
}

/// Whom `caller` may share with: an active user other than themself, or a group with keys
/// that the caller is in.
fn check_sharee(txn: &mut dyn Txn, caller: &Caller, principal: Principal) -> Result<(), OpError> {
    match principal {
        Principal::User(uid) if uid == caller.uid => {
            Err(OpError::invalid("you cannot share with yourself"))
        }
        Principal::User(uid) => {
            txn.get_user(uid)?
                .filter(|u| u.is_active())
                .ok_or_else(|| OpError::invalid(format!("no active user {uid}")))?;
            Ok(())
        }
        Principal::Group(EVERYONE) => Err(OpError::invalid(
            "the implicit group of everyone has no keys to share with",
        )),
        Principal::Group(gid) => {
            let group = txn
                .get_group(gid)?
                .ok_or_else(|| OpError::invalid(format!("no group {gid}")))?;
            if !caller.groups.contains(&gid) {
                return Err(OpError::AccessDenied(format!(
                    "you are not in group {}",
                    group.name
                )));
            }
            if records::group_record(txn, gid)?.is_none() {
                return Err(OpError::invalid(format!(
                    "group {} has no keys yet (it has never had a member)",
                    group.name
                )));
            }
            Ok(())
        }
    }
}

/// Replaces the ACL of `node` by a checked record's entries (keeping "everyone"), and stores
/// the record.
fn set_acl(
    txn: &mut dyn Txn,
    node: &mut Inode,
    granted: Vec<AclEntry>,
    record: &[u8],
) -> Result<(), OpError> {
    if granted.len() > ACL_ENTRIES_MAX {
        return Err(OpError::TooLarge(format!(
            "more than {ACL_ENTRIES_MAX} ACL entries"
        )));
    }
    node.acl
        .retain(|e| e.principal == Principal::Group(EVERYONE));
    node.acl.extend(granted);
    txn.put_signed(SignedKey(RecordKind::Acl, node.ino.0, 0), record)?;
    Ok(())
}

/// Grants `entry` on `ino` (replacing the principal's previous entry) as the signed record in
/// `change` says, and, for a regular file, stores its key wrapped to the principal. Owner or
/// writer only.
pub fn share(
    txn: &mut dyn Txn,
    caller: &Caller,
    ino: FileId,
    entry: AclEntry,
    change: &AclChange,
    now: Time,
) -> Result<Inode, OpError> {
    let mut node = inode(txn, ino)?;
    check_sharer(caller, &node)?;
    check_sharee(txn, caller, entry.principal)?;
    let mut wanted = node.acl.clone();
    wanted.retain(|e| e.principal != entry.principal);
    wanted.push(entry);
    let granted = check_acl_record(txn, &node, &change.record, &node.acl)?;
    if granted != signed_part(&wanted) {
        return Err(OpError::invalid(
            "the signed ACL record is not the ACL with this entry",
        ));
    }
    let wrapped_key = &change.wrapped_key;
    // A directory of sealed names has a key, wrapped as a file's (docs/format.md 5.6).
    let has_key = node.kind == Kind::Regular
        || (node.kind == Kind::Directory && format::names::is_keyed(ino));
    if has_key && entry.read {
        check_wrapped_key(txn, caller.uid, ino, entry.principal, wrapped_key)?;
        txn.put_wrapped_key(ino, entry.principal, wrapped_key)?;
    } else if !wrapped_key.is_empty() {
        return Err(OpError::invalid(
            "only readers of regular files and of directories with a key get a wrapped key",
        ));
    }
    set_acl(txn, &mut node, granted, &change.record)?;
    touch(&mut node, now);
    txn.put_inode(&node)?;
    let detail = format!(
        "{} read={} write={}",
        entry.principal.key(),
        entry.read,
        entry.write
    );
    audit::append(txn, caller.uid, "share", ino, &detail, now)?;
    Ok(node)
}

/// The most ACL entries one inode may carry.
pub const ACL_ENTRIES_MAX: usize = format::acl::ENTRIES_MAX;

/// Revokes a principal's access as the signed record in `change` says, and, for a regular
/// file it could read, replaces the file's wrapped keys by a new key epoch's (`rekey`), so
/// that what is written from now on is safe from it. Owner or writer only.
pub fn unshare(
    txn: &mut dyn Txn,
    caller: &Caller,
    ino: FileId,
    principal: Principal,
    change: &AclChange,
    now: Time,
) -> Result<Inode, OpError> {
    let mut node = inode(txn, ino)?;
    check_sharer(caller, &node)?;
    if principal == Principal::User(node.owner) {
        return Err(OpError::invalid("the owner's access cannot be revoked"));
    }
    let had_read = node.acl.iter().any(|e| e.principal == principal && e.read);
    let mut wanted = node.acl.clone();
    wanted.retain(|e| e.principal != principal);
    let granted = check_acl_record(txn, &node, &change.record, &node.acl)?;
    if granted != signed_part(&wanted) {
        return Err(OpError::invalid(
            "the signed ACL record is not the ACL without this principal",
        ));
    }
    if node.kind == Kind::Regular && had_read {
        if change.rekey.is_empty() {
            return Err(OpError::invalid(
                "revoking a reader of a file needs the file's new key epoch",
            ));
        }
        let mut after = node.clone();
        after.acl = granted.clone();
        replace_wrapped_keys(txn, caller.uid, &after, &change.rekey)?;
    } else {
        txn.delete_wrapped_key(ino, principal)?;
    }
    set_acl(txn, &mut node, granted, &change.record)?;
    touch(&mut node, now);
    txn.put_inode(&node)?;
    audit::append(txn, caller.uid, "unshare", ino, &principal.key(), now)?;
    Ok(node)
}

/// Replaces a file's wrapped keys by `keys`: exactly one for its owner and for each reader
/// of its ACL, each checked (a new key epoch, sent by `caller`).
pub fn replace_wrapped_keys(
    txn: &mut dyn Txn,
    caller: u32,
    file: &Inode,
    keys: &[(Principal, Vec<u8>)],
) -> Result<(), OpError> {
    let mut given: Vec<Principal> = keys.iter().map(|(p, _)| *p).collect();
    given.sort();
    if given != key_holders(file.owner, &file.acl) {
        return Err(OpError::invalid(
            "a new key epoch must be wrapped to the file's owner and each of its readers,              once",
        ));
    }
    for (principal, _) in txn.list_wrapped_keys(file.ino)? {
        txn.delete_wrapped_key(file.ino, principal)?;
    }
    for (principal, blob) in keys {
        check_wrapped_key(txn, caller, file.ino, *principal, blob)?;
        txn.put_wrapped_key(file.ino, *principal, blob)?;
    }
    Ok(())
}

/// The owner, ACL and signed ACL record (empty if none) of an inode the caller may read.
pub fn acl(
    txn: &mut dyn Txn,
    caller: &Caller,
    ino: FileId,
) -> Result<(u32, Vec<AclEntry>, Vec<u8>), OpError> {
    let node = inode(txn, ino)?;
    check_read(caller, &node)?;
    let record = records::stored_acl(txn, ino)?.unwrap_or_default();
    Ok((node.owner, node.acl, record))
}
