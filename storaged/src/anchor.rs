//! The audit log's anchor: the site administrator signs an entry of the hash chain (its
//! sequence number and hash), and storaged keeps the signature. Whoever holds the database
//! can rewrite the whole chain consistently, but not make the rewritten chain match an
//! anchor: that takes the administrator's private key, which storaged never has. `storaged
//! audit verify` checks the chain up to the anchor against it and prints the head, which the
//! administrator may compare with the one they saw last (`docs/format.md` section 7).

use identity::{Fingerprint, PublicIdentity, SIGNATURE_BYTES};

use crate::meta::{MetaStore, StoreError, Time, Txn};
use crate::ops::OpError;
use crate::ops::users::check_admin;
use crate::settings::{self, VaultSettings};
use crate::{audit, ops::Caller};

/// The setting that holds the anchor: seq (u64 LE), hash, signature.
pub const ANCHOR_SETTING: &str = "audit_anchor";
const ANCHOR_BYTES: usize = 8 + 32 + SIGNATURE_BYTES;

/// An entry of the chain, as the administrator signed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    pub seq: u64,
    pub hash: [u8; 32],
    pub signature: [u8; SIGNATURE_BYTES],
}

impl Anchor {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ANCHOR_BYTES);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(&self.signature);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Anchor, StoreError> {
        let corrupt = || StoreError::Corrupt(format!("setting {ANCHOR_SETTING}"));
        if bytes.len() != ANCHOR_BYTES {
            return Err(corrupt());
        }
        let (seq, rest) = bytes.split_at(8);
        let (hash, signature) = rest.split_at(32);
        Ok(Anchor {
            seq: u64::from_le_bytes(seq.try_into().map_err(|_| corrupt())?),
            hash: hash.try_into().map_err(|_| corrupt())?,
            signature: signature.try_into().map_err(|_| corrupt())?,
        })
    }

    /// Whether `admin` signed this anchor for `vault`.
    fn signed_by(&self, admin: &PublicIdentity, vault: &[u8]) -> bool {
        let message = proto::audit_anchor_message(vault, self.seq, &self.hash);
        admin
            .verify(proto::domains::AUDIT_ANCHOR, &message, &self.signature)
            .is_ok()
    }
}

/// The last entry of the chain: (seq, hash), or `None` when it is empty.
pub fn head(txn: &mut dyn Txn, caller: &Caller) -> Result<Option<(u64, [u8; 32])>, OpError> {
    check_admin(caller)?;
    Ok(txn.last_audit()?.map(|entry| (entry.seq, entry.hash)))
}

/// Stores the administrator's anchor at entry `anchor.seq`, which must be in the chain with
/// that hash; anchors only move forward.
pub fn set(
    txn: &mut dyn Txn,
    caller: &Caller,
    settings: &VaultSettings,
    anchor: &Anchor,
    now: Time,
) -> Result<(), OpError> {
    check_admin(caller)?;
    if !anchor.signed_by(&settings.admin, &settings.vault.0) {
        return Err(OpError::invalid(
            "the anchor's signature is not the administrator's",
        ));
    }
    let entry = txn.list_audit(anchor.seq, 1)?.pop();
    if entry.as_ref().map(|e| (e.seq, e.hash)) != Some((anchor.seq, anchor.hash)) {
        return Err(OpError::invalid(format!(
            "audit entry {} is not in the log with that hash",
            anchor.seq
        )));
    }
    if let Some(bytes) = txn.get_setting(ANCHOR_SETTING)?
        && Anchor::decode(&bytes)?.seq > anchor.seq
    {
        return Err(OpError::invalid(
            "the log is anchored at a later entry already",
        ));
    }
    txn.put_setting(ANCHOR_SETTING, &anchor.encode())?;
    let detail = format!("entry {}", anchor.seq);
    Ok(audit::append(
        txn,
        0,
        "audit-anchor",
        audit::NO_FILE,
        &detail,
        now,
    )?)
}

/// What `audit verify` found of the anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorCheck {
    /// No anchor is stored.
    None,
    /// The chain up to entry `seq` is the one the administrator signed.
    Holds { seq: u64, admin: Fingerprint },
    /// What is stored does not hold; the chain may have been rewritten.
    Broken(String),
}

/// The chain and its anchor, as `audit verify` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub walk: audit::Walk,
    pub anchor: AnchorCheck,
}

/// Walks the chain and checks the stored anchor against it and against the administrator
/// key: the vault's own, which must have the `expected` fingerprint when one is given
/// (whoever holds the database could replace the key too).
pub async fn check(
    store: &dyn MetaStore,
    expected: Option<Fingerprint>,
) -> Result<Report, OpError> {
    let (settings, stored) = crate::meta::read(store, |txn| -> Result<_, OpError> {
        Ok((settings::load(txn)?, txn.get_setting(ANCHOR_SETTING)?))
    })
    .await?;
    let anchor = stored.as_deref().map(Anchor::decode).transpose()?;
    let walk = audit::walk(store, anchor.map(|a| a.seq)).await?;
    let admin = settings.admin.fingerprint();
    let check = match (expected, anchor) {
        (Some(expected), _) if expected != admin => AnchorCheck::Broken(format!(
            "the vault's administrator key is {admin}, not the expected {expected}"
        )),
        (_, None) => AnchorCheck::None,
        (_, Some(anchor)) if !anchor.signed_by(&settings.admin, &settings.vault.0) => {
            AnchorCheck::Broken("the anchor's signature is not the administrator's".into())
        }
        (_, Some(anchor)) if walk.kept != Some(anchor.hash) => AnchorCheck::Broken(format!(
            "entry {} is not the one the administrator signed: the log was rewritten",
            anchor.seq
        )),
        (_, Some(anchor)) => AnchorCheck::Holds {
            seq: anchor.seq,
            admin,
        },
    };
    Ok(Report {
        walk,
        anchor: check,
    })
}

impl From<(u64, [u8; 32], [u8; SIGNATURE_BYTES])> for Anchor {
    fn from((seq, hash, signature): (u64, [u8; 32], [u8; SIGNATURE_BYTES])) -> Anchor {
        Anchor {
            seq,
            hash,
            signature,
        }
    }
}
