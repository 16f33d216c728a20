//! Extended attribute values sealed under the keys of their file or directory (docs/format.md
//! section 5.6): AES-256-SIV under a subkey of the newest data key, named by its commitment,
//! with the vault, the inode and the attribute's name as associated data, so that a value
//! moved to another attribute or inode, or changed, does not open.

use aes_siv::aead::KeyInit;
use aes_siv::siv::Aes256Siv;
use format::envelope::COMMITMENT_BYTES;
use format::ids::{FileId, VaultId};
use format::names::{SEALED_MARK, SEALED_XATTR_OVERHEAD};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::{DataKey, FileKeys};

const HKDF_SALT: &[u8] = b"vault/v1 data key";
const INFO_XATTRS: &[u8] = b"vault/v2 xattr values";
const AD_XATTR: &[u8] = b"vault/v2 xattr value";

/// Why a stored extended attribute value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XattrError {
    #[error("an extended attribute value is not sealed, though its file's keys say it must be")]
    NotSealed,
    #[error("an extended attribute value is sealed under a key this inode does not have")]
    UnknownKey,
    #[error("an extended attribute value failed its authentication (changed, or another's)")]
    Authentication,
}

fn cipher(key: &DataKey) -> Aes256Siv {
    let mut subkey = Zeroizing::new([0u8; 64]);
    Hkdf::<Sha256>::new(Some(HKDF_SALT), &key.as_bytes()[..])
        .expand(INFO_XATTRS, &mut subkey[..])
        .expect("64 bytes is a valid HKDF-SHA256 output length");
    Aes256Siv::new(&(*subkey).into())
}

/// The value of attribute `name` of `ino` as stored: the mark, the commitment of the newest
/// of `keys`, then AES-SIV of the value.
pub fn seal_xattr(
    keys: &FileKeys,
    vault: VaultId,
    ino: FileId,
    name: &[u8],
    value: &[u8],
) -> Vec<u8> {
    let ino_bytes = ino.0.to_le_bytes();
    let headers: [&[u8]; 4] = [AD_XATTR, &vault.0, &ino_bytes, name];
    let sealed = cipher(keys.key_at(0))
        .encrypt(headers, value)
        .expect("AES-SIV seals any value");
    let mut out = Vec::with_capacity(SEALED_XATTR_OVERHEAD + value.len());
    out.push(SEALED_MARK);
    out.extend_from_slice(keys.newest().commitment());
    out.extend_from_slice(&sealed);
    out
}

/// The value a stored attribute `name` of `ino` stands for, under the key of `keys` it
/// names.
pub fn open_xattr(
    keys: &FileKeys,
    vault: VaultId,
    ino: FileId,
    name: &[u8],
    stored: &[u8],
) -> Result<Vec<u8>, XattrError> {
    if stored.first() != Some(&SEALED_MARK) || stored.len() < SEALED_XATTR_OVERHEAD {
        return Err(XattrError::NotSealed);
    }
    let commitment = &stored[1..1 + COMMITMENT_BYTES];
    let at = keys.position_of(commitment).ok_or(XattrError::UnknownKey)?;
    let ino_bytes = ino.0.to_le_bytes();
    let headers: [&[u8]; 4] = [AD_XATTR, &vault.0, &ino_bytes, name];
    cipher(keys.key_at(at))
        .decrypt(headers, &stored[1 + COMMITMENT_BYTES..])
        .map_err(|_| XattrError::Authentication)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_opens_only_for_its_inode_and_name_under_a_key_it_names() {
        let keys = FileKeys::generate();
        let (vault, ino) = (VaultId([3; 16]), FileId(9));
        let stored = seal_xattr(&keys, vault, ino, b"user.note", b"hello");
        assert_eq!(stored.len(), SEALED_XATTR_OVERHEAD + 5);
        assert_eq!(
            open_xattr(&keys, vault, ino, b"user.note", &stored),
            Ok(b"hello".to_vec())
        );
        let refused = Err(XattrError::Authentication);
        assert_eq!(
            open_xattr(&keys, vault, FileId(8), b"user.note", &stored),
            refused
        );
        assert_eq!(
            open_xattr(&keys, vault, ino, b"user.other", &stored),
            refused
        );
        let mut flipped = stored.clone();
        *flipped.last_mut().expect("bytes") ^= 1;
        assert_eq!(
            open_xattr(&keys, vault, ino, b"user.note", &flipped),
            refused
        );
        assert_eq!(
            open_xattr(&keys, vault, ino, b"user.note", b"plain"),
            Err(XattrError::NotSealed)
        );
        let rotated = keys.rotated().expect("rotates");
        assert_eq!(
            open_xattr(&rotated, vault, ino, b"user.note", &stored),
            Ok(b"hello".to_vec())
        );
        assert_eq!(
            open_xattr(&FileKeys::generate(), vault, ino, b"user.note", &stored),
            Err(XattrError::UnknownKey)
        );
    }
}
