//! A file's manifest (docs/format.md section 5.5) sealed and checked: its plain fields
//! (`format::manifest`) under an HMAC-SHA256 whose key is the file key's manifest subkey, so
//! that only a holder of the file's key (a writer) makes one a reader accepts.

use format::ids::{FileId, VaultId};
use format::manifest::{BODY_BYTES, MAC_BYTES, Manifest, ManifestError};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::FileKeys;

/// Why a manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestOpenError {
    #[error(transparent)]
    Layout(#[from] ManifestError),
    #[error("manifest is of another vault or file")]
    WrongContext,
    #[error("manifest is MACed under a key this file does not have (epoch {0})")]
    UnknownKey(u32),
    #[error("manifest failed its authentication")]
    AuthenticationFailed,
}

fn mac_over(keys: &FileKeys, at: usize, body: &[u8]) -> Hmac<Sha256> {
    let key = keys.manifest_key(at);
    let mut mac = Hmac::<Sha256>::new_from_slice(&key[..]).expect("HMAC takes a key of any length");
    mac.update(body);
    mac
}

/// Seals `manifest` (its key fields set here) under the newest of `keys`.
pub fn seal_manifest(keys: &FileKeys, manifest: &Manifest) -> Vec<u8> {
    let manifest = Manifest {
        epoch: keys.epoch(),
        commitment: *keys.newest().commitment(),
        ..*manifest
    };
    let body = manifest.encode_body();
    let tag = mac_over(keys, 0, &body).finalize().into_bytes();
    let mut out = Vec::with_capacity(BODY_BYTES + MAC_BYTES);
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    out
}

/// Checks a manifest of file `file` in `vault` under the key of `keys` it names, and returns
/// its fields. (Whether they describe the file as the server sent it is the caller's check.)
pub fn open_manifest(
    keys: &FileKeys,
    vault: VaultId,
    file: FileId,
    bytes: &[u8],
) -> Result<Manifest, ManifestOpenError> {
    let manifest = Manifest::parse(bytes)?;
    if manifest.vault != vault || manifest.file != file {
        return Err(ManifestOpenError::WrongContext);
    }
    let at = keys
        .position_of(&manifest.commitment)
        .ok_or(ManifestOpenError::UnknownKey(manifest.epoch))?;
    mac_over(keys, at, &bytes[..BODY_BYTES])
        .verify_slice(&bytes[BODY_BYTES..])
        .map_err(|_| ManifestOpenError::AuthenticationFailed)?;
    Ok(manifest)
}
