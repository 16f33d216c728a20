//! Wrapped keys and access-control lists: who may open a file and who holds its key.

use super::access::{check_owner, check_read};
use super::{Caller, OpError, inode, touch};
use crate::audit;
use crate::meta::{AclEntry, FileId, Inode, Kind, Principal, Time, Txn};
use format::wrapped::{WrapHeader, WrapKind};

/// A wrapped key must be a file key for this file, addressed to the principal's wrapping
/// key. The server cannot open it, but it can refuse one that no one could use.
pub fn check_wrapped_key(
    txn: &mut dyn Txn,
    ino: FileId,
    principal: Principal,
    blob: &[u8],
) -> Result<(), OpError> {
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

/// Grants `entry` on `ino` (replacing the principal's previous entry) and, for a regular
/// file, stores its key wrapped to the principal. Owner only.
pub fn share(
    txn: &mut dyn Txn,
    caller: &Caller,
    ino: FileId,
    entry: AclEntry,
    wrapped_key: &[u8],
    now: Time,
) -> Result<Inode, OpError> {
    let mut node = inode(txn, ino)?;
    check_owner(caller, &node)?;
    match entry.principal {
        Principal::User(uid) => {
            txn.get_user(uid)?
                .filter(|u| u.is_active())
                .ok_or_else(|| OpError::invalid(format!("no active user {uid}")))?;
        }
        Principal::Group(gid) => {
            txn.get_group(gid)?
                .ok_or_else(|| OpError::invalid(format!("no group {gid}")))?;
        }
    }
    if node.kind == Kind::Regular && entry.read {
        check_wrapped_key(txn, ino, entry.principal, wrapped_key)?;
        txn.put_wrapped_key(ino, entry.principal, wrapped_key)?;
    } else if !wrapped_key.is_empty() {
        return Err(OpError::invalid(
            "only readers of regular files get a wrapped key",
        ));
    }
    node.acl.retain(|e| e.principal != entry.principal);
    if node.acl.len() >= ACL_ENTRIES_MAX {
        return Err(OpError::TooLarge(format!(
            "more than {ACL_ENTRIES_MAX} ACL entries"
        )));
    }
    node.acl.push(entry);
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
pub const ACL_ENTRIES_MAX: usize = 256;

/// Revokes a principal's access and removes its wrapped key. Owner only. (The client then
/// re-keys the file, so that later writes are safe from the revoked principal.)
pub fn unshare(
    txn: &mut dyn Txn,
    caller: &Caller,
    ino: FileId,
    principal: Principal,
    now: Time,
) -> Result<Inode, OpError> {
    let mut node = inode(txn, ino)?;
    check_owner(caller, &node)?;
    if principal == Principal::User(node.owner) {
        return Err(OpError::invalid("the owner's access cannot be revoked"));
    }
    node.acl.retain(|e| e.principal != principal);
    txn.delete_wrapped_key(ino, principal)?;
    touch(&mut node, now);
    txn.put_inode(&node)?;
    audit::append(txn, caller.uid, "unshare", ino, &principal.key(), now)?;
    Ok(node)
}

/// The owner and ACL of an inode the caller may read.
pub fn acl(
    txn: &mut dyn Txn,
    caller: &Caller,
    ino: FileId,
) -> Result<(u32, Vec<AclEntry>), OpError> {
    let node = inode(txn, ino)?;
    check_read(caller, &node)?;
    Ok((node.owner, node.acl))
}
