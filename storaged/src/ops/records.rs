//! Signed records on the server (docs/format.md section 5): ACL records, group records and
//! signed wraps. The server cannot make any of them; it checks them so that a client that
//! sends a bad one gets a clear error and nothing changes. Clients check them again before
//! they use them: nothing here is what keeps the storage administrator out.

use format::acl::{self as layout, SignedAcl};
use format::group::SignedGroup;
use format::ids::VaultId;
use format::wrapped::{KeyKind, SignedWrapHeader, V2_DOMAIN, WrapKind};
use identity::PublicIdentity;

use super::OpError;
use super::access::EVERYONE;
use crate::meta::{AclEntry, FileId, Inode, Principal, RecordKind, SignedKey, Txn};
use crate::settings;

/// The vault's ID and the site administrator's key, from the settings.
pub fn vault_and_admin(txn: &mut dyn Txn) -> Result<(VaultId, PublicIdentity), OpError> {
    let mut setting = |key| -> Result<Vec<u8>, OpError> {
        txn.get_setting(key)?
            .ok_or_else(|| OpError::invalid(format!("the vault has no {key} yet")))
    };
    let vault = VaultId(
        setting(settings::VAULT_ID)?
            .try_into()
            .map_err(|_| OpError::invalid("malformed vault ID"))?,
    );
    let signing = setting(settings::ADMIN_SIGNING_KEY)?;
    let wrapping = setting(settings::ADMIN_WRAPPING_KEY)?;
    let admin = PublicIdentity::from_slices(&signing, &wrapping)
        .ok_or_else(|| OpError::invalid("malformed administrator key"))?;
    Ok((vault, admin))
}

/// An active user's public keys; uid 0 is the site administrator.
pub fn public_keys(txn: &mut dyn Txn, uid: u32) -> Result<PublicIdentity, OpError> {
    if uid == 0 {
        return Ok(vault_and_admin(txn)?.1);
    }
    let user = txn
        .get_user(uid)?
        .filter(|u| u.is_active())
        .ok_or_else(|| OpError::invalid(format!("no active user {uid}")))?;
    Ok(PublicIdentity {
        signing: user.signing_key,
        wrapping: user.wrapping_key,
    })
}

fn signature_by(
    txn: &mut dyn Txn,
    signer: u32,
    domain: &str,
    signed: &[u8],
    signature: &[u8; 64],
) -> Result<(), OpError> {
    public_keys(txn, signer)?
        .verify(domain, signed, signature)
        .map_err(|_| OpError::invalid(format!("the signature of user {signer} does not verify")))
}

pub fn to_layout(principal: Principal) -> layout::Principal {
    match principal {
        Principal::User(uid) => layout::Principal::User(uid),
        Principal::Group(gid) => layout::Principal::Group(gid),
    }
}

fn from_layout(principal: layout::Principal) -> Principal {
    match principal {
        layout::Principal::User(uid) => Principal::User(uid),
        layout::Principal::Group(gid) => Principal::Group(gid),
    }
}

/// The entries of an ACL that a record covers: all but the implicit "everyone" group's.
pub fn signed_part(acl: &[AclEntry]) -> Vec<AclEntry> {
    let mut entries: Vec<AclEntry> = acl
        .iter()
        .filter(|e| e.principal != Principal::Group(EVERYONE) && (e.read || e.write))
        .copied()
        .collect();
    entries.sort_by_key(|e| to_layout(e.principal));
    entries
}

fn entries_of(record: &SignedAcl) -> Vec<AclEntry> {
    record
        .record
        .entries
        .iter()
        .map(|e| AclEntry {
            principal: from_layout(e.principal),
            read: e.read,
            write: e.write,
        })
        .collect()
}

/// The signed ACL record stored for an inode, if any.
pub fn stored_acl(txn: &mut dyn Txn, ino: FileId) -> Result<Option<Vec<u8>>, OpError> {
    Ok(txn.get_signed(SignedKey(RecordKind::Acl, ino.0, 0))?)
}

/// Checks a new ACL record for `node`: its layout, vault, inode and owner, a serial one past
/// the stored record's, a signer that may write `node` by the ACL `before` the change (or
/// owns it), and the signer's signature. Returns the entries it grants.
pub fn check_acl_record(
    txn: &mut dyn Txn,
    node: &Inode,
    bytes: &[u8],
    before: &[AclEntry],
) -> Result<Vec<AclEntry>, OpError> {
    if bytes.is_empty() {
        return Err(OpError::invalid(
            "an ACL change needs the inode's new signed ACL record",
        ));
    }
    let signed = SignedAcl::parse(bytes).map_err(|e| OpError::invalid(e.to_string()))?;
    let record = &signed.record;
    let (vault, _) = vault_and_admin(txn)?;
    if record.vault != vault || record.ino != node.ino || record.owner != node.owner {
        return Err(OpError::invalid(format!(
            "the ACL record is not for inode {} of this vault and its owner",
            node.ino
        )));
    }
    let previous = match stored_acl(txn, node.ino)? {
        Some(stored) => {
            SignedAcl::parse(&stored)
                .map_err(|e| OpError::invalid(format!("the stored ACL record: {e}")))?
                .record
                .serial
        }
        None => 0,
    };
    if record.serial != previous + 1 {
        return Err(OpError::invalid(format!(
            "the ACL record has serial {}, the next is {}",
            record.serial,
            previous + 1
        )));
    }
    let may_write = record.signer == node.owner
        || before
            .iter()
            .any(|e| e.write && e.principal == Principal::User(record.signer));
    if !may_write {
        return Err(OpError::AccessDenied(format!(
            "user {} may not change the ACL of {}",
            record.signer, node.ino
        )));
    }
    signature_by(
        txn,
        record.signer,
        layout::DOMAIN,
        &record.signed_bytes(),
        &signed.signature,
    )?;
    Ok(entries_of(&signed))
}

/// The principals a regular file's key must be wrapped to by its ACL: its owner and every
/// reader but "everyone".
pub fn key_holders(owner: u32, acl: &[AclEntry]) -> Vec<Principal> {
    let mut holders = vec![Principal::User(owner)];
    for entry in signed_part(acl).iter().filter(|e| e.read) {
        if !holders.contains(&entry.principal) {
            holders.push(entry.principal);
        }
    }
    holders.sort();
    holders
}

/// A group's signed record, if it has one yet (its first member's addition makes it).
pub fn group_record(txn: &mut dyn Txn, gid: u32) -> Result<Option<SignedGroup>, OpError> {
    txn.get_signed(SignedKey(RecordKind::Group, u64::from(gid), 0))?
        .map(|bytes| {
            SignedGroup::parse(&bytes)
                .map_err(|e| OpError::invalid(format!("the stored record of group {gid}: {e}")))
        })
        .transpose()
}

/// Checks a signed wrap of file `ino`'s keys to `principal`, made by `caller`: layout, vault,
/// object, recipient (the user's key, or the group's current one), wrapper and signature.
pub fn check_file_wrap(
    txn: &mut dyn Txn,
    ino: FileId,
    principal: Principal,
    caller: u32,
    blob: &[u8],
) -> Result<(), OpError> {
    let header = SignedWrapHeader::parse(blob).map_err(|e| OpError::invalid(e.to_string()))?;
    let (vault, _) = vault_and_admin(txn)?;
    if header.kind != KeyKind::Data(WrapKind::FileKey) || header.object != ino.0 {
        return Err(OpError::invalid(format!(
            "wrapped key is not the key of file {ino}"
        )));
    }
    if header.vault != vault || header.recipient != to_layout(principal) {
        return Err(OpError::invalid(format!(
            "wrapped key is not addressed to {} of this vault",
            principal.key()
        )));
    }
    let recipient_key = match principal {
        Principal::User(uid) => public_keys(txn, uid)?.wrapping,
        Principal::Group(gid) => {
            group_record(txn, gid)?
                .ok_or_else(|| OpError::invalid(format!("group {gid} has no keys yet")))?
                .record
                .wrapping_key
        }
    };
    if header.recipient_key != recipient_key {
        return Err(OpError::invalid(format!(
            "wrapped key is not addressed to the current key of {}",
            principal.key()
        )));
    }
    if header.wrapper != caller {
        return Err(OpError::invalid(
            "a wrapped key must be signed by its sender",
        ));
    }
    let at = header.signature_at();
    let signature: [u8; 64] = blob[at..]
        .try_into()
        .expect("the header checked the length");
    signature_by(txn, caller, V2_DOMAIN, &blob[..at], &signature)
}

/// Checks a group's private keys wrapped to `uid` (0: the site administrator) for the group
/// record `group`: kind, vault, group, recipient, epoch, and the administrator's signature.
pub fn check_group_wrap(
    txn: &mut dyn Txn,
    group: &SignedGroup,
    uid: u32,
    blob: &[u8],
) -> Result<(), OpError> {
    let header = SignedWrapHeader::parse(blob).map_err(|e| OpError::invalid(e.to_string()))?;
    let record = &group.record;
    let fits = header.kind == KeyKind::Group
        && header.vault == record.vault
        && header.object == u64::from(record.gid)
        && header.recipient == layout::Principal::User(uid)
        && header.recipient_key == public_keys(txn, uid)?.wrapping
        && header.epoch == record.epoch
        && header.wrapper == 0;
    if !fits {
        return Err(OpError::invalid(format!(
            "the group key for user {uid} is not this group's current keys wrapped to them by \
             the administrator"
        )));
    }
    let at = header.signature_at();
    let signature: [u8; 64] = blob[at..]
        .try_into()
        .expect("the header checked the length");
    signature_by(txn, 0, V2_DOMAIN, &blob[..at], &signature)
}
