//! Users and groups: registration with proof of possession, approval with the site
//! administrator's certificate, groups as principals.

use super::names::check_principal_name;
use super::records;
use super::{Caller, OpError};
use crate::audit;
use crate::meta::{Group, RecordKind, SignedKey, Time, Txn, User};
use crate::settings::VaultSettings;
use format::group::SignedGroup;
use identity::PublicIdentity;

/// The name the site administrator logs in with. No user may register it.
pub use proto::ADMIN_NAME;
/// Vault uids start here (below are the administrator, 0, and reserved numbers).
pub const FIRST_UID: u32 = 1000;
pub const FIRST_GID: u32 = 1000;
const PENDING_LIST_MAX: usize = 1000;
/// Registrations waiting for approval at once: registering needs no account, so without a
/// bound anyone could fill the store. The administrator approves (or the waiting users are
/// removed) before more are taken.
pub const PENDING_MAX: usize = 1000;

pub(crate) fn check_admin(caller: &Caller) -> Result<(), OpError> {
    if caller.admin {
        Ok(())
    } else {
        Err(OpError::AccessDenied(
            "only the site administrator may do this".into(),
        ))
    }
}

fn signature(bytes: &[u8]) -> Result<[u8; 64], OpError> {
    bytes
        .try_into()
        .map_err(|_| OpError::invalid("a signature has 64 bytes"))
}

fn public_key(bytes: &[u8], what: &str) -> Result<[u8; 32], OpError> {
    bytes
        .try_into()
        .map_err(|_| OpError::invalid(format!("a {what} has 32 bytes")))
}

/// Why a registration with a small-order X25519 key is refused.
const LOW_ORDER_KEY: &str =
    "the wrapping key is a low-order X25519 point: keys wrapped to it would be readable by anyone";

/// Records a registration, pending approval. Registering the same name with the same keys
/// again returns the same uid.
pub fn register(
    txn: &mut dyn Txn,
    settings: &VaultSettings,
    name: &str,
    signing_key: &[u8],
    wrapping_key: &[u8],
    proof: &[u8],
    now: Time,
) -> Result<u32, OpError> {
    check_principal_name(name)?;
    if name == ADMIN_NAME {
        return Err(OpError::invalid("the name admin is reserved"));
    }
    let public = PublicIdentity {
        signing: public_key(signing_key, "signing key")?,
        wrapping: public_key(wrapping_key, "wrapping key")?,
    };
    let message =
        proto::register_message(&settings.vault.0, name, &public.signing, &public.wrapping);
    public
        .verify(proto::domains::REGISTER, &message, &signature(proof)?)
        .map_err(|e| OpError::invalid(format!("registration proof: {e}")))?;
    if identity::is_low_order_wrapping_key(&public.wrapping) {
        return Err(OpError::invalid(LOW_ORDER_KEY));
    }
    if let Some(existing) = txn.get_user_by_name(name)? {
        if existing.signing_key == public.signing && existing.wrapping_key == public.wrapping {
            return Ok(existing.uid);
        }
        return Err(OpError::Exists);
    }
    if txn.list_pending_users(PENDING_MAX)?.len() >= PENDING_MAX {
        return Err(OpError::TooLarge(format!(
            "{PENDING_MAX} registrations are waiting for the administrator's approval; try \
             again once they are approved"
        )));
    }
    let uid = txn.next_in_sequence("uid", FIRST_UID)?;
    txn.put_user(&User {
        uid,
        name: name.to_string(),
        signing_key: public.signing,
        wrapping_key: public.wrapping,
        certificate: Vec::new(),
        created: now,
    })?;
    audit::append(txn, uid, "register", audit::NO_FILE, name, now)?;
    Ok(uid)
}

pub fn pending(txn: &mut dyn Txn, caller: &Caller) -> Result<Vec<User>, OpError> {
    check_admin(caller)?;
    Ok(txn.list_pending_users(PENDING_LIST_MAX)?)
}

/// Activates a registration with the administrator's certificate over its name, uid and
/// keys. The daemon only checks the certificate; it cannot make one.
pub fn approve(
    txn: &mut dyn Txn,
    caller: &Caller,
    settings: &VaultSettings,
    name: &str,
    uid: u32,
    certificate: &[u8],
    now: Time,
) -> Result<(), OpError> {
    check_admin(caller)?;
    let mut user = txn.get_user_by_name(name)?.ok_or(OpError::NotFound)?;
    if user.uid != uid {
        return Err(OpError::invalid(format!(
            "user {name} has uid {}, not {uid}",
            user.uid
        )));
    }
    let message = proto::certificate_message(
        &settings.vault.0,
        uid,
        name,
        &user.signing_key,
        &user.wrapping_key,
    );
    settings
        .admin
        .verify(
            proto::domains::USER_CERTIFICATE,
            &message,
            &signature(certificate)?,
        )
        .map_err(|e| OpError::invalid(format!("certificate: {e}")))?;
    user.certificate = certificate.to_vec();
    txn.put_user(&user)?;
    audit::append(txn, caller.uid, "approve", audit::NO_FILE, name, now)?;
    Ok(())
}

pub fn create_group(
    txn: &mut dyn Txn,
    caller: &Caller,
    name: &str,
    now: Time,
) -> Result<Group, OpError> {
    check_admin(caller)?;
    check_principal_name(name)?;
    if txn.get_group_by_name(name)?.is_some() {
        return Err(OpError::Exists);
    }
    let group = Group {
        gid: txn.next_in_sequence("gid", FIRST_GID)?,
        name: name.into(),
        members: vec![],
    };
    txn.put_group(&group)?;
    audit::append(txn, caller.uid, "group-create", audit::NO_FILE, name, now)?;
    Ok(group)
}

/// A change of a group's members: the group's new signed record and its private keys wrapped
/// to whom they must reach (docs/format.md section 5.3).
#[derive(Clone, Debug, Default)]
pub struct MemberChange {
    pub record: Vec<u8>,
    pub keys: Vec<(u32, Vec<u8>)>,
}

/// Adds or removes a member as the site administrator's signed record says. The first
/// addition makes the group's first key pair (epoch 1) and needs its keys wrapped to the
/// administrator and the member; a later one, to the member; a removal starts a new epoch and
/// needs its keys wrapped to every remaining member and the administrator, which replace
/// every wrapped group key stored.
pub fn set_member(
    txn: &mut dyn Txn,
    caller: &Caller,
    gid: u32,
    uid: u32,
    member: bool,
    change: &MemberChange,
    now: Time,
) -> Result<Group, OpError> {
    check_admin(caller)?;
    let mut group = txn.get_group(gid)?.ok_or(OpError::NotFound)?;
    let user = txn.get_user(uid)?.ok_or(OpError::NotFound)?;
    if member && !user.is_active() {
        return Err(OpError::invalid(format!(
            "{} is not approved yet",
            user.name
        )));
    }
    let before = records::group_record(txn, gid)?;
    group.members.retain(|m| *m != uid);
    if member {
        group.members.push(uid);
        group.members.sort_unstable();
    }
    let epoch = match (&before, member) {
        (None, _) => 1,
        (Some(old), true) => old.record.epoch,
        (Some(old), false) => old.record.epoch + 1,
    };
    let signed = check_group_record(txn, &group, epoch, &change.record)?;
    let mut holders: Vec<u32> = change.keys.iter().map(|(u, _)| *u).collect();
    holders.sort_unstable();
    let replaces = before.is_none() || !member;
    let needed: Vec<u32> = if replaces {
        std::iter::once(0)
            .chain(group.members.iter().copied())
            .collect()
    } else {
        vec![uid]
    };
    if holders != needed {
        return Err(OpError::invalid(format!(
            "the group's keys must be wrapped to users {needed:?}, once each"
        )));
    }
    for (holder, blob) in &change.keys {
        records::check_group_wrap(txn, &signed, *holder, blob)?;
    }
    if replaces {
        txn.delete_signed(RecordKind::GroupKey, u64::from(gid))?;
    }
    for (holder, blob) in &change.keys {
        txn.put_signed(
            SignedKey(RecordKind::GroupKey, u64::from(gid), *holder),
            blob,
        )?;
    }
    txn.put_signed(
        SignedKey(RecordKind::Group, u64::from(gid), 0),
        &change.record,
    )?;
    txn.put_group(&group)?;
    let detail = format!("{} {uid}", if member { "add" } else { "remove" });
    audit::append(
        txn,
        caller.uid,
        "group-member",
        audit::NO_FILE,
        &detail,
        now,
    )?;
    Ok(group)
}

/// Checks a group's new signed record: this vault, group, name and members, the expected
/// epoch, and the site administrator's signature.
fn check_group_record(
    txn: &mut dyn Txn,
    group: &Group,
    epoch: u32,
    bytes: &[u8],
) -> Result<SignedGroup, OpError> {
    let signed = SignedGroup::parse(bytes).map_err(|e| OpError::invalid(e.to_string()))?;
    let (vault, admin) = records::vault_and_admin(txn)?;
    let record = &signed.record;
    let fits = record.vault == vault
        && record.gid == group.gid
        && record.name == group.name
        && record.members == group.members
        && record.epoch == epoch
        && record.signer == 0;
    if !fits {
        return Err(OpError::invalid(format!(
            "the group record is not group {}'s at epoch {epoch} with members {:?}",
            group.name, group.members
        )));
    }
    admin
        .verify(
            format::group::DOMAIN,
            &record.signed_bytes(),
            &signed.signature,
        )
        .map_err(|_| OpError::invalid("the group record is not signed by the administrator"))?;
    Ok(signed)
}

/// A group's signed record and its private keys wrapped to the caller (a member, or the
/// administrator): (record, wrapped keys), either empty when there is none.
pub fn group_key(
    txn: &mut dyn Txn,
    caller: &Caller,
    gid: u32,
) -> Result<(Vec<u8>, Vec<u8>), OpError> {
    let group = txn.get_group(gid)?.ok_or(OpError::NotFound)?;
    if !caller.admin && !group.members.contains(&caller.uid) {
        return Err(OpError::AccessDenied(format!(
            "you are not in group {}",
            group.name
        )));
    }
    let holder = if caller.admin { 0 } else { caller.uid };
    let id = u64::from(gid);
    let record = txn
        .get_signed(SignedKey(RecordKind::Group, id, 0))?
        .unwrap_or_default();
    let blob = txn
        .get_signed(SignedKey(RecordKind::GroupKey, id, holder))?
        .unwrap_or_default();
    Ok((record, blob))
}
