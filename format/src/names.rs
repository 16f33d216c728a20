//! The plain framing of encrypted names, entry seals and sealed symlink targets
//! (docs/format.md section 5.6): what the server checks without a key, and which inode IDs
//! belong to directories and symlinks whose names and targets are sealed.

use crate::ids::FileId;

/// The first byte of a sealed name or target. A plaintext name or target never holds NUL, so
/// a sealed one is never taken for a plaintext one.
pub const SEALED_MARK: u8 = 0;
/// AES-SIV's synthetic IV, in front of the ciphertext.
pub const SIV_BYTES: usize = 16;
/// A sealed name: the mark, the SIV, and the ciphertext, as long as the name.
pub const SEALED_NAME_OVERHEAD: usize = 1 + SIV_BYTES;
/// A sealed symlink target: the mark, the directory whose key sealed it (u64 LE), the SIV,
/// and the ciphertext.
pub const SEALED_TARGET_OVERHEAD: usize = 1 + 8 + SIV_BYTES;
/// A sealed extended attribute value: the mark, the key commitment of the data key that
/// sealed it, the SIV, and the ciphertext, as long as the value.
pub const SEALED_XATTR_OVERHEAD: usize = 1 + 16 + SIV_BYTES;
/// The tag that binds an entry's name to its inode and kind.
pub const ENTRY_SEAL_BYTES: usize = 16;

/// The top 24 bits of every inode ID of a directory or symlink whose names (or target) are
/// sealed: `"VND"`. The client reads an inode's format from its ID, which wrapped keys,
/// entry seals and sealed targets all bind, so that no one can make it treat such a directory
/// as one of plaintext names by deleting its keys.
pub const KEYED_ID_TAG: u64 = 0x56_4E_44;
const TAG_SHIFT: u32 = 40;

/// Whether `ino` is the ID of a directory or symlink of sealed names (or target).
pub fn is_keyed(ino: FileId) -> bool {
    ino.0 >> TAG_SHIFT == KEYED_ID_TAG
}

/// The keyed ID made of 40 random bits.
pub fn keyed_id(random: u64) -> FileId {
    FileId((KEYED_ID_TAG << TAG_SHIFT) | (random & ((1 << TAG_SHIFT) - 1)))
}

/// Whether a name or symlink target as stored is sealed (else it is plaintext, of a legacy
/// directory).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.first() == Some(&SEALED_MARK)
}

/// The length of the sealed form of a name of `plain` bytes.
pub fn sealed_name_bytes(plain: usize) -> usize {
    SEALED_NAME_OVERHEAD + plain
}

/// The length of the target a symlink target as stored stands for (its `st_size`): a sealed
/// one's ciphertext is as long as the target.
pub fn target_bytes(stored: &[u8]) -> usize {
    if is_sealed(stored) {
        stored.len().saturating_sub(SEALED_TARGET_OVERHEAD)
    } else {
        stored.len()
    }
}

/// The directory whose key sealed a sealed symlink target, if the target is long enough.
pub fn target_sealer(sealed: &[u8]) -> Option<FileId> {
    if !is_sealed(sealed) || sealed.len() < SEALED_TARGET_OVERHEAD {
        return None;
    }
    let bytes: [u8; 8] = sealed[1..9].try_into().ok()?;
    Some(FileId(u64::from_le_bytes(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_ids_carry_the_tag_and_random_bits() {
        let id = keyed_id(u64::MAX);
        assert!(is_keyed(id));
        assert_eq!(id.0, 0x564E_44FF_FFFF_FFFF);
        assert!(is_keyed(keyed_id(0)));
        assert!(!is_keyed(FileId::ROOT));
        assert!(!is_keyed(FileId(0x564E_4300_0000_0000)));
    }

    #[test]
    fn sealed_bytes_start_with_nul() {
        assert!(is_sealed(&[0, 1, 2]));
        assert!(!is_sealed(b"name"));
        assert!(!is_sealed(b""));
        let mut target = vec![0u8];
        target.extend_from_slice(&7u64.to_le_bytes());
        target.extend_from_slice(&[9; SIV_BYTES]);
        assert_eq!(target_sealer(&target), Some(FileId(7)));
        assert_eq!(target_sealer(&target[..10]), None);
    }
}
