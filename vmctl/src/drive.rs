//! Encrypted data drives: qcow2 files with QEMU's LUKS encryption under a random 256-bit drive
//! key, which is stored only wrapped to its owner's public key (docs/format.md section 5, kind
//! 2 = drive key, bound to this store's site ID and the drive's object ID).
//!
//! The plaintext key never touches a disk: `qemu-img` reads it from a pipe when the drive is
//! made, and libvirt gets it as an ephemeral private secret when a VM opens the drive.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crypto::{DataKey, WrapContext, WrapKind};
use format::ids::VaultId;
use identity::{Identity, PublicIdentity};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::store::DriveRecord;

/// What a drive key is wrapped for: this store (as the vault) and the drive (as the object).
pub fn wrap_context(site: &str, object: u64) -> Result<WrapContext> {
    let mut vault = [0u8; 16];
    hex::decode_to_slice(site, &mut vault).map_err(|_| Error::State {
        path: "state.json".into(),
        reason: format!("site ID `{site}` is not 32 hex digits"),
    })?;
    Ok(WrapContext {
        vault: VaultId(vault),
        kind: WrapKind::DriveKey,
        object,
    })
}

/// The LUKS passphrase for a drive key: its hex form (no NUL bytes for any tool on the way).
pub fn passphrase(key: &DataKey) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(hex::encode(key.as_bytes()).into_bytes())
}

/// Creates the encrypted qcow2 file. The key goes to `qemu-img` through its standard input.
/// The key is random and full-strength, so LUKS's passphrase stretching is turned down to
/// keep every open fast (`iter-time` 10 ms instead of 2 s).
pub fn create_image(path: &Path, size_gib: u64, key: &DataKey) -> Result<()> {
    let failed = |detail: String| Error::QemuImg {
        action: "create",
        detail,
    };
    let mut child = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .args(["--object", "secret,id=drivekey,file=/dev/stdin"])
        .args([
            "-o",
            "encrypt.format=luks,encrypt.key-secret=drivekey,encrypt.iter-time=10",
        ])
        .arg(path)
        .arg(format!("{size_gib}G"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run qemu-img (install qemu-utils): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&passphrase(key))
            .map_err(|e| failed(format!("passing the key: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(path);
        return Err(failed(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// A new drive's record: a fresh key wrapped to `owner`. Returns the key for `create_image`.
pub fn new_record(
    site: &str,
    size_gib: u64,
    owner: &PublicIdentity,
) -> Result<(DriveRecord, DataKey)> {
    let object = u64::from_le_bytes(identity::random_bytes::<8>());
    let key = DataKey::generate();
    let wrapped =
        crypto::wrap(&key, owner, &wrap_context(site, object)?).map_err(|e| Error::Invalid {
            what: "drive owner's key",
            reason: e.to_string(),
        })?;
    let record = DriveRecord {
        object,
        size_gib,
        owner: hex::encode(owner.to_bytes()),
        wrapped_key: hex::encode(wrapped),
        secret_uuid: new_uuid(),
        attached_to: None,
        target: None,
    };
    Ok((record, key))
}

/// Opens a drive's key with its owner's identity.
pub fn unwrap_key(
    drive: &str,
    record: &DriveRecord,
    site: &str,
    owner: &Identity,
) -> Result<DataKey> {
    let unwrap_error = |source| Error::Unwrap {
        drive: drive.to_string(),
        source,
    };
    let wrapped = hex::decode(&record.wrapped_key)
        .map_err(|_| unwrap_error(crypto::UnwrapError::Malformed("not hex")))?;
    crypto::unwrap(&wrapped, owner, &wrap_context(site, record.object)?).map_err(unwrap_error)
}

/// The owner's fingerprint, for display.
pub fn owner_fingerprint(record: &DriveRecord) -> String {
    fingerprint_of(&record.owner)
}

/// The fingerprint of a public identity recorded as hex (signing then wrapping key).
pub fn fingerprint_of(owner: &str) -> String {
    hex::decode(owner)
        .ok()
        .and_then(|bytes| PublicIdentity::from_slices(bytes.get(..32)?, bytes.get(32..)?))
        .map_or_else(|| "?".to_string(), |owner| owner.fingerprint().to_string())
}

/// A random (version 4) UUID.
pub fn new_uuid() -> String {
    let mut bytes = identity::random_bytes::<16>();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_keys_open_only_for_their_owner_and_drive() {
        let site = hex::encode([7u8; 16]);
        let owner = Identity::generate();
        let (record, key) = new_record(&site, 1, &owner.public()).expect("record");
        let opened = unwrap_key("d", &record, &site, &owner).expect("unwrap");
        assert_eq!(opened.as_bytes(), key.as_bytes());
        assert_eq!(
            hex::decode(&record.wrapped_key).expect("hex")[3],
            2,
            "kind 2"
        );
        let stranger = Identity::generate();
        assert!(unwrap_key("d", &record, &site, &stranger).is_err());
        let mut moved = record.clone();
        moved.object ^= 1;
        assert!(unwrap_key("d", &moved, &site, &owner).is_err());
        assert!(unwrap_key("d", &record, &hex::encode([8u8; 16]), &owner).is_err());
    }

    #[test]
    fn uuids_have_the_version_4_form() {
        let uuid = new_uuid();
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4");
        assert_ne!(uuid, new_uuid());
    }
}
