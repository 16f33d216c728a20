//! Vault-wide settings kept in the metadata store, set when the vault is first served.

use crate::meta::{StoreError, Txn};
use crate::ops::OpError;
use format::ids::VaultId;
use identity::PublicIdentity;

pub const VAULT_ID: &str = "vault_id";
pub const ADMIN_SIGNING_KEY: &str = "admin_signing_key";
pub const ADMIN_WRAPPING_KEY: &str = "admin_wrapping_key";
/// The key that authenticates login challenges; shared by every storaged of the vault.
pub const CHALLENGE_SECRET: &str = "challenge_secret";

/// What every request needs to know about the vault.
#[derive(Clone, Debug)]
pub struct VaultSettings {
    pub vault: VaultId,
    pub admin: PublicIdentity,
    pub challenge_secret: [u8; 32],
}

/// Initialises a new vault (vault ID, secrets, root directory) or checks an existing one
/// against the configured administrator key.
pub fn init_or_load(
    txn: &mut dyn Txn,
    admin: &PublicIdentity,
    now: crate::meta::Time,
) -> Result<VaultSettings, OpError> {
    if txn.get_setting(VAULT_ID)?.is_none() {
        txn.put_setting(VAULT_ID, &identity::random_bytes::<16>())?;
        txn.put_setting(CHALLENGE_SECRET, &identity::random_bytes::<32>())?;
        txn.put_setting(ADMIN_SIGNING_KEY, &admin.signing)?;
        txn.put_setting(ADMIN_WRAPPING_KEY, &admin.wrapping)?;
        crate::ops::tree::init_root(txn, now)?;
    }
    let loaded = load(txn)?;
    if loaded.admin != *admin {
        return Err(OpError::invalid(format!(
            "this vault's site administrator key is {}, but storaged was given {}",
            loaded.admin.fingerprint(),
            admin.fingerprint()
        )));
    }
    Ok(loaded)
}

pub fn load(txn: &mut dyn Txn) -> Result<VaultSettings, OpError> {
    let mut get = |key: &str| -> Result<Vec<u8>, OpError> {
        txn.get_setting(key)?
            .ok_or_else(|| OpError::Store(StoreError::Corrupt(format!("setting {key} is missing"))))
    };
    fn fixed<const N: usize>(bytes: Vec<u8>, key: &str) -> Result<[u8; N], OpError> {
        bytes
            .try_into()
            .map_err(|_| OpError::Store(StoreError::Corrupt(format!("setting {key}"))))
    }
    Ok(VaultSettings {
        vault: VaultId(fixed(get(VAULT_ID)?, VAULT_ID)?),
        admin: PublicIdentity {
            signing: fixed(get(ADMIN_SIGNING_KEY)?, ADMIN_SIGNING_KEY)?,
            wrapping: fixed(get(ADMIN_WRAPPING_KEY)?, ADMIN_WRAPPING_KEY)?,
        },
        challenge_secret: fixed(get(CHALLENGE_SECRET)?, CHALLENGE_SECRET)?,
    })
}
