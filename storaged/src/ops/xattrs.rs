//! Extended attributes: small named values on an inode.

use super::access::{check_read, check_write};
use super::{Caller, OpError, inode, touch};
use crate::meta::{FileId, Time, Txn};
use proto::limits::NAME_BYTES_MAX;

/// The largest value, as Linux allows.
pub const XATTR_VALUE_BYTES_MAX: usize = 64 * 1024;
/// The most attributes one inode may carry.
pub const XATTRS_PER_INODE_MAX: usize = 128;

fn check_xattr_name(name: &[u8]) -> Result<(), OpError> {
    if name.is_empty() || name.contains(&0) {
        return Err(OpError::invalid(
            "an attribute name must be non-empty, without NUL",
        ));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(OpError::NameTooLong);
    }
    Ok(())
}

/// How `set` treats an existing attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetMode {
    Either,
    CreateOnly,
    ReplaceOnly,
}

pub fn set(
    txn: &mut dyn Txn,
    caller: &Caller,
    ino: FileId,
    name: &[u8],
    value: &[u8],
    mode: SetMode,
    now: Time,
) -> Result<(), OpError> {
    check_xattr_name(name)?;
    // A sealed value (docs/format.md section 5.6) carries its key's commitment and an SIV.
    let sealed = format::names::is_sealed(value);
    let overhead = if sealed {
        format::names::SEALED_XATTR_OVERHEAD
    } else {
        0
    };
    if value.len() > XATTR_VALUE_BYTES_MAX + overhead {
        return Err(OpError::TooLarge(format!(
            "attribute value of {} bytes",
            value.len()
        )));
    }
    let mut node = inode(txn, ino)?;
    check_write(caller, &node)?;
    let exists = txn.get_xattr(ino, name)?.is_some();
    match (mode, exists) {
        (SetMode::CreateOnly, true) => return Err(OpError::Exists),
        (SetMode::ReplaceOnly, false) => return Err(OpError::NoData),
        _ => {}
    }
    if !exists && txn.list_xattrs(ino)?.len() >= XATTRS_PER_INODE_MAX {
        return Err(OpError::TooLarge(format!(
            "more than {XATTRS_PER_INODE_MAX} attributes"
        )));
    }
    txn.put_xattr(ino, name, value)?;
    touch(&mut node, now);
    txn.put_inode(&node)?;
    Ok(())
}

pub fn get(
    txn: &mut dyn Txn,
    caller: &Caller,
    ino: FileId,
    name: &[u8],
) -> Result<Vec<u8>, OpError> {
    check_xattr_name(name)?;
    let node = inode(txn, ino)?;
    check_read(caller, &node)?;
    txn.get_xattr(ino, name)?.ok_or(OpError::NoData)
}

pub fn list(txn: &mut dyn Txn, caller: &Caller, ino: FileId) -> Result<Vec<Vec<u8>>, OpError> {
    let node = inode(txn, ino)?;
    check_read(caller, &node)?;
    Ok(txn
        .list_xattrs(ino)?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}

pub fn remove(
    txn: &mut dyn Txn,
    caller: &Caller,
    ino: FileId,
    name: &[u8],
    now: Time,
) -> Result<(), OpError> {
    check_xattr_name(name)?;
    let mut node = inode(txn, ino)?;
    check_write(caller, &node)?;
    if txn.get_xattr(ino, name)?.is_none() {
        return Err(OpError::NoData);
    }
    txn.delete_xattr(ino, name)?;
    touch(&mut node, now);
    txn.put_inode(&node)?;
    Ok(())
}
