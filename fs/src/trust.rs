//! What this client believes about principals and ACLs, and why: a user's keys only with the
//! pinned site administrator's certificate, a group's keys only from a record that key signed,
//! and an inode's ACL only from a record its owner or one of its writers signed. Nothing the
//! server says about them is used before it is checked here (docs/format.md section 5).
//!
//! Each pin remembers the newest record seen (an ACL's serial, a group's epoch), so that the
//! server cannot roll one back while this client runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crypto::{GroupKeys, Recipient};
use format::acl::{self as acl_layout, AclRecord, Principal, SignedAcl};
use format::group::SignedGroup;
use format::ids::{FileId, VaultId};
use identity::PublicIdentity;
use proto::ErrorKind;
use proto::v1::{
    GetAclRequest, GetGroupKeyRequest, GetGroupRequest, GetUserRequest, get_group_request,
    get_user_request, principal,
};

use crate::error::FsError;
use crate::remote::Remote;

/// How long a directory's verified ACL is used for new files' keys before it is read again.
const ACL_CACHE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(1);
const CACHE_ENTRIES_MAX: usize = 10_000;

/// A record the server sent that this client does not believe: logged, as every tamper is.
fn refused(what: impl std::fmt::Display) -> FsError {
    let what = what.to_string();
    tracing::warn!(%what, "refused what the server sent");
    FsError::local(ErrorKind::AccessDenied, what)
}

/// An inode's ACL as its signed record says (empty when it never had one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedAcl {
    pub owner: u32,
    pub serial: u64,
    pub entries: Vec<acl_layout::Entry>,
}

impl VerifiedAcl {
    /// Whether `uid` may write by this ACL: the owner or a user entry with write.
    pub fn lets_write(&self, uid: u32) -> bool {
        uid == self.owner
            || self
                .entries
                .iter()
                .any(|e| e.principal == Principal::User(uid) && e.write)
    }

    /// The principals that hold the key of a file with this ACL: owner and readers.
    pub fn key_holders(&self) -> Vec<Principal> {
        let mut holders = vec![Principal::User(self.owner)];
        holders.extend(
            self.entries
                .iter()
                .filter(|e| e.read && e.principal != Principal::User(self.owner))
                .map(|e| e.principal),
        );
        holders
    }
}

/// A group's key pairs, as a member fetched them.
#[derive(Debug)]
struct KnownGroup {
    keys: Option<Arc<GroupKeys>>,
}

#[derive(Debug)]
pub struct Trust {
    remote: Remote,
    vault: VaultId,
    /// The site administrator's key, pinned when the user logged in first.
    admin: PublicIdentity,
    users: Mutex<HashMap<u32, PublicIdentity>>,
    groups: Mutex<HashMap<u32, KnownGroup>>,
    /// Directories' verified ACLs for new files, with when they were read.
    acls: Mutex<HashMap<FileId, (Instant, VerifiedAcl)>>,
    /// The newest ACL serial seen per inode and group epoch seen per group.
    serials: Mutex<HashMap<FileId, u64>>,
    epochs: Mutex<HashMap<u32, u32>>,
}

impl Trust {
    pub fn new(remote: Remote, vault: VaultId, admin: PublicIdentity) -> Trust {
        Trust {
            remote,
            vault,
            admin,
            users: Mutex::default(),
            groups: Mutex::default(),
            acls: Mutex::default(),
            serials: Mutex::default(),
            epochs: Mutex::default(),
        }
    }

    pub fn admin(&self) -> &PublicIdentity {
        &self.admin
    }

    /// A user's public keys, after checking the site administrator's certificate on them;
    /// uid 0 is the site administrator.
    pub async fn user(&self, uid: u32) -> Result<PublicIdentity, FsError> {
        if uid == 0 {
            return Ok(self.admin);
        }
        if let Some(public) = self.users.lock().expect("user cache poisoned").get(&uid) {
            return Ok(*public);
        }
        let user = self
            .remote
            .call("get_user", |mut api| async move {
                let by = Some(get_user_request::By::Uid(uid));
                api.get_user(GetUserRequest { by }).await
            })
            .await?;
        let public = PublicIdentity::from_slices(&user.signing_key, &user.wrapping_key)
            .ok_or_else(|| {
                FsError::local(ErrorKind::Internal, format!("user {uid}: malformed keys"))
            })?;
        let certificate: [u8; 64] = user
            .certificate
            .as_slice()
            .try_into()
            .map_err(|_| refused(format!("user {} is not approved", user.name)))?;
        let message = proto::certificate_message(
            &self.vault.0,
            uid,
            &user.name,
            &public.signing,
            &public.wrapping,
        );
        self.admin
            .verify(proto::domains::USER_CERTIFICATE, &message, &certificate)
            .map_err(|_| {
                refused(format!(
                    "user {}'s keys are not certified by this vault's administrator",
                    user.name
                ))
            })?;
        // A certificate an older vault-admin made, or one slipped in among old records: a key
        // wrapped to such a point would be readable by anyone, so its holder is no principal.
        if identity::is_low_order_wrapping_key(&public.wrapping) {
            return Err(refused(format!(
                "user {}'s certified wrapping key is a low-order X25519 point: refusing it",
                user.name
            )));
        }
        self.users
            .lock()
            .expect("user cache poisoned")
            .insert(uid, public);
        Ok(public)
    }

    /// Checks a group record: this vault and group, the administrator's signature, and an
    /// epoch no older than the newest this client saw.
    fn check_group(&self, gid: u32, bytes: &[u8]) -> Result<SignedGroup, FsError> {
        let signed = SignedGroup::parse(bytes).map_err(|e| refused(format!("group {gid}: {e}")))?;
        let record = &signed.record;
        if record.vault != self.vault || record.gid != gid || record.signer != 0 {
            return Err(refused(format!(
                "group {gid}'s record is for another group"
            )));
        }
        self.admin
            .verify(
                format::group::DOMAIN,
                &record.signed_bytes(),
                &signed.signature,
            )
            .map_err(|_| {
                refused(format!(
                    "group {gid}'s record is not signed by the administrator"
                ))
            })?;
        if identity::is_low_order_wrapping_key(&record.wrapping_key) {
            return Err(refused(format!(
                "group {gid}'s signed wrapping key is a low-order X25519 point: refusing it"
            )));
        }
        let mut epochs = self.epochs.lock().expect("epochs poisoned");
        let seen = epochs.entry(gid).or_insert(record.epoch);
        if record.epoch < *seen {
            return Err(refused(format!(
                "group {gid}'s record was rolled back to epoch {} (seen {seen})",
                record.epoch
            )));
        }
        *seen = record.epoch;
        Ok(signed)
    }

    /// A group's verified current record.
    pub async fn group(&self, gid: u32) -> Result<SignedGroup, FsError> {
        let group = self
            .remote
            .call("get_group", |mut api| async move {
                let by = Some(get_group_request::By::Gid(gid));
                api.get_group(GetGroupRequest { by }).await
            })
            .await?;
        if group.record.is_empty() {
            return Err(refused(format!("group {} has no keys yet", group.name)));
        }
        self.check_group(gid, &group.record)
    }

    /// The key pairs of a group this user is in, including the pair whose X25519 public key
    /// is `wanted` (fetched again when the cached ones lack it).
    pub async fn group_keys(
        &self,
        gid: u32,
        wanted: &[u8; 32],
        me: &identity::Identity,
    ) -> Result<Arc<GroupKeys>, FsError> {
        if let Some(known) = self.groups.lock().expect("groups poisoned").get(&gid)
            && let Some(keys) = &known.keys
            && keys.with_wrapping_key(wanted).is_some()
        {
            return Ok(keys.clone());
        }
        let reply = self
            .remote
            .call("get_group_key", |mut api| async move {
                api.get_group_key(GetGroupKeyRequest { gid }).await
            })
            .await?;
        let record = self.check_group(gid, &reply.record)?;
        let keys = GroupKeys::unwrap(&reply.blob, me, self.vault, gid, &self.admin)
            .map_err(|e| refused(format!("the keys of group {gid}: {e}")))?;
        if keys.epoch() != record.record.epoch
            || keys.newest().public().wrapping != record.record.wrapping_key
        {
            return Err(refused(format!(
                "the keys of group {gid} are not its record's"
            )));
        }
        let keys = Arc::new(keys);
        let mut groups = self.groups.lock().expect("groups poisoned");
        groups.insert(
            gid,
            KnownGroup {
                keys: Some(keys.clone()),
            },
        );
        Ok(keys)
    }

    /// Where a key for `principal` goes: a user's certified key or a group's current one.
    pub async fn recipient(&self, principal: Principal) -> Result<Recipient, FsError> {
        let wrapping_key = match principal {
            Principal::User(uid) => self.user(uid).await?.wrapping,
            Principal::Group(gid) => self.group(gid).await?.record.wrapping_key,
        };
        Ok(Recipient {
            principal,
            wrapping_key,
        })
    }

    /// An inode's ACL, verified: its signed record (signer the owner or a writer by the
    /// record, certified, signature valid, serial not rolled back) must say exactly what the
    /// server enforces, besides the implicit "everyone" entries.
    pub async fn acl(&self, ino: FileId) -> Result<VerifiedAcl, FsError> {
        let reply = self
            .remote
            .call("get_acl", |mut api| async move {
                api.get_acl(GetAclRequest { ino: ino.0 }).await
            })
            .await?;
        let mut enforced: Vec<acl_layout::Entry> = Vec::new();
        for entry in &reply.entries {
            let principal = match entry.principal.and_then(|p| p.kind) {
                Some(principal::Kind::User(uid)) => Principal::User(uid),
                Some(principal::Kind::Group(0)) | None => continue,
                Some(principal::Kind::Group(gid)) => Principal::Group(gid),
            };
            enforced.push(acl_layout::Entry {
                principal,
                read: entry.read,
                write: entry.write,
            });
        }
        enforced.sort_by_key(|e| e.principal);
        let acl = if reply.record.is_empty() {
            VerifiedAcl {
                owner: reply.owner,
                serial: 0,
                entries: Vec::new(),
            }
        } else {
            self.check_acl(ino, reply.owner, &reply.record).await?
        };
        if acl.entries != enforced {
            return Err(refused(format!(
                "the ACL of {ino} holds entries its owner or writers did not sign"
            )));
        }
        Ok(acl)
    }

    async fn check_acl(
        &self,
        ino: FileId,
        owner: u32,
        bytes: &[u8],
    ) -> Result<VerifiedAcl, FsError> {
        let signed = SignedAcl::parse(bytes).map_err(|e| refused(format!("{ino}: {e}")))?;
        let AclRecord {
            vault,
            ino: for_ino,
            serial,
            owner: signed_owner,
            signer,
            ref entries,
        } = signed.record;
        if vault != self.vault || for_ino != ino || signed_owner != owner {
            return Err(refused(format!(
                "the ACL record of {ino} is for another inode"
            )));
        }
        let acl = VerifiedAcl {
            owner,
            serial,
            entries: entries.clone(),
        };
        if !acl.lets_write(signer) {
            return Err(refused(format!(
                "the ACL record of {ino} is signed by user {signer}, who may not write it"
            )));
        }
        self.user(signer)
            .await?
            .verify(
                acl_layout::DOMAIN,
                &signed.record.signed_bytes(),
                &signed.signature,
            )
            .map_err(|_| refused(format!("the ACL record of {ino} has a bad signature")))?;
        let mut serials = self.serials.lock().expect("serials poisoned");
        let seen = serials.entry(ino).or_insert(serial);
        if serial < *seen {
            return Err(refused(format!(
                "the ACL of {ino} was rolled back to serial {serial} (seen {seen})"
            )));
        }
        *seen = serial;
        Ok(acl)
    }

    /// A directory's verified ACL for a new file's keys, cached for a second so that creating
    /// many files costs one lookup.
    pub async fn dir_acl(&self, dir: FileId) -> Result<VerifiedAcl, FsError> {
        if let Some((at, acl)) = self.acls.lock().expect("acl cache poisoned").get(&dir)
            && at.elapsed() < ACL_CACHE_LIFETIME
        {
            return Ok(acl.clone());
        }
        let acl = self.acl(dir).await?;
        let mut acls = self.acls.lock().expect("acl cache poisoned");
        if acls.len() > CACHE_ENTRIES_MAX {
            acls.clear();
        }
        acls.insert(dir, (Instant::now(), acl.clone()));
        Ok(acl)
    }

    /// Forgets a directory's cached ACL (its sharing changed).
    pub fn forget_acl(&self, dir: FileId) {
        self.acls.lock().expect("acl cache poisoned").remove(&dir);
    }
}
