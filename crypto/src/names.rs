//! A directory's names, entries and symlink targets sealed under the directory's key
//! (docs/format.md section 5.6): names by AES-256-SIV, deterministic so that the server can
//! look a name up and keep it unique without reading it; each entry's target (inode and kind)
//! bound to its name by an HMAC; symlink targets by AES-256-SIV bound to the link's inode.

use aes_siv::aead::KeyInit;
use aes_siv::siv::Aes256Siv;
use format::ids::{FileId, VaultId};
use format::names::{
    ENTRY_SEAL_BYTES, SEALED_MARK, SEALED_NAME_OVERHEAD, SEALED_TARGET_OVERHEAD, is_sealed,
    target_sealer,
};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::DataKey;

const HKDF_SALT: &[u8] = b"vault/v1 data key";
const INFO_NAMES: &[u8] = b"vault/v2 names";
const INFO_ENTRIES: &[u8] = b"vault/v2 entries";
const AD_NAME: &[u8] = b"vault/v2 name";
const AD_TARGET: &[u8] = b"vault/v2 symlink target";
const MAC_ENTRY: &[u8] = b"vault/v2 entry";

/// Why a sealed name, entry or target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("not a sealed name")]
    NotSealed,
    #[error("sealed name failed its authentication (another directory's, or changed)")]
    NameAuthentication,
    #[error("entry failed its check: its name was moved, or pointed at another inode or kind")]
    EntryAuthentication,
    #[error("sealed symlink target is damaged, of another link, or sealed by another directory")]
    TargetAuthentication,
}

/// The subkeys of one directory's key: AES-256-SIV for names and targets, HMAC-SHA256 for
/// entries. Zeroized on drop.
#[derive(ZeroizeOnDrop)]
pub struct NameKeys {
    siv: Zeroizing<[u8; 64]>,
    entries: Zeroizing<[u8; 32]>,
    #[zeroize(skip)]
    vault: VaultId,
    #[zeroize(skip)]
    dir: FileId,
}

impl std::fmt::Debug for NameKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NameKeys(dir {})", self.dir)
    }
}

impl NameKeys {
    /// The name keys of directory `dir` in `vault` whose key is `key`.
    pub fn derive(key: &DataKey, vault: VaultId, dir: FileId) -> NameKeys {
        let hkdf = Hkdf::<Sha256>::new(Some(HKDF_SALT), &key.as_bytes()[..]);
        let mut siv = Zeroizing::new([0u8; 64]);
        let mut entries = Zeroizing::new([0u8; 32]);
        hkdf.expand(INFO_NAMES, &mut siv[..])
            .expect("64 bytes is a valid HKDF-SHA256 output length");
        hkdf.expand(INFO_ENTRIES, &mut entries[..])
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        NameKeys {
            siv,
            entries,
            vault,
            dir,
        }
    }

    pub fn dir(&self) -> FileId {
        self.dir
    }

    fn cipher(&self) -> Aes256Siv {
        Aes256Siv::new(&(*self.siv).into())
    }

    /// A name of this directory as stored: the mark, then AES-SIV of the name with the vault
    /// and the directory as associated data. The same name always seals the same way.
    pub fn seal_name(&self, name: &[u8]) -> Vec<u8> {
        let dir = self.dir.0.to_le_bytes();
        let headers: [&[u8]; 3] = [AD_NAME, &self.vault.0, &dir];
        let sealed = self
            .cipher()
            .encrypt(headers, name)
            .expect("AES-SIV seals any name");
        let mut out = Vec::with_capacity(SEALED_NAME_OVERHEAD + name.len());
        out.push(SEALED_MARK);
        out.extend_from_slice(&sealed);
        out
    }

    /// The name a sealed name of this directory stands for.
    pub fn open_name(&self, sealed: &[u8]) -> Result<Vec<u8>, NameError> {
        if !is_sealed(sealed) || sealed.len() <= SEALED_NAME_OVERHEAD {
            return Err(NameError::NotSealed);
        }
        let dir = self.dir.0.to_le_bytes();
        let headers: [&[u8]; 3] = [AD_NAME, &self.vault.0, &dir];
        self.cipher()
            .decrypt(headers, &sealed[1..])
            .map_err(|_| NameError::NameAuthentication)
    }

    /// The seal of the entry `sealed_name` of this directory naming inode `child` of `kind`
    /// (docs/format.md section 5.6).
    pub fn entry_seal(
        &self,
        sealed_name: &[u8],
        child: FileId,
        kind: u8,
    ) -> [u8; ENTRY_SEAL_BYTES] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.entries[..])
            .expect("HMAC takes a key of any length");
        mac.update(MAC_ENTRY);
        mac.update(&self.vault.0);
        mac.update(&self.dir.0.to_le_bytes());
        mac.update(&child.0.to_le_bytes());
        mac.update(&[kind]);
        mac.update(sealed_name);
        let full = mac.finalize().into_bytes();
        let mut seal = [0u8; ENTRY_SEAL_BYTES];
        seal.copy_from_slice(&full[..ENTRY_SEAL_BYTES]);
        seal
    }

    /// Checks that the entry `sealed_name` names `child` of `kind`, as its seal says.
    pub fn check_entry(
        &self,
        sealed_name: &[u8],
        child: FileId,
        kind: u8,
        seal: &[u8],
    ) -> Result<(), NameError> {
        use subtle::ConstantTimeEq;
        let expected = self.entry_seal(sealed_name, child, kind);
        if seal.len() == ENTRY_SEAL_BYTES && bool::from(expected.ct_eq(seal)) {
            Ok(())
        } else {
            Err(NameError::EntryAuthentication)
        }
    }

    /// The target of symlink `link` sealed by this directory: the mark, this directory's ID,
    /// then AES-SIV of the target with the vault, this directory and the link as associated
    /// data.
    pub fn seal_target(&self, link: FileId, target: &[u8]) -> Vec<u8> {
        let dir = self.dir.0.to_le_bytes();
        let link = link.0.to_le_bytes();
        let headers: [&[u8]; 4] = [AD_TARGET, &self.vault.0, &dir, &link];
        let sealed = self
            .cipher()
            .encrypt(headers, target)
            .expect("AES-SIV seals any target");
        let mut out = Vec::with_capacity(SEALED_TARGET_OVERHEAD + target.len());
        out.push(SEALED_MARK);
        out.extend_from_slice(&dir);
        out.extend_from_slice(&sealed);
        out
    }

    /// The target of symlink `link`, sealed by this directory.
    pub fn open_target(&self, link: FileId, sealed: &[u8]) -> Result<Vec<u8>, NameError> {
        if target_sealer(sealed) != Some(self.dir) || sealed.len() <= SEALED_TARGET_OVERHEAD {
            return Err(NameError::TargetAuthentication);
        }
        let dir = self.dir.0.to_le_bytes();
        let link = link.0.to_le_bytes();
        let headers: [&[u8]; 4] = [AD_TARGET, &self.vault.0, &dir, &link];
        self.cipher()
            .decrypt(headers, &sealed[9..])
            .map_err(|_| NameError::TargetAuthentication)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(dir: u64) -> NameKeys {
        NameKeys::derive(&DataKey::from_bytes([7; 32]), VaultId([1; 16]), FileId(dir))
    }

    #[test]
    fn names_seal_deterministically_per_directory_and_open_only_there() {
        let a = keys(10);
        let sealed = a.seal_name(b"report.pdf");
        assert_eq!(sealed, a.seal_name(b"report.pdf"), "deterministic");
        assert_eq!(sealed.len(), SEALED_NAME_OVERHEAD + 10);
        assert_eq!(sealed[0], SEALED_MARK);
        assert_eq!(a.open_name(&sealed).expect("opens"), b"report.pdf");
        assert_ne!(keys(11).seal_name(b"report.pdf"), sealed);
        assert_eq!(
            keys(11).open_name(&sealed),
            Err(NameError::NameAuthentication)
        );
        let mut flipped = sealed.clone();
        flipped[5] ^= 1;
        assert_eq!(a.open_name(&flipped), Err(NameError::NameAuthentication));
        assert_eq!(a.open_name(b"plain"), Err(NameError::NotSealed));
    }

    #[test]
    fn an_entry_seal_binds_name_inode_and_kind() {
        let a = keys(10);
        let name = a.seal_name(b"x");
        let seal = a.entry_seal(&name, FileId(5), 1);
        assert_eq!(a.check_entry(&name, FileId(5), 1, &seal), Ok(()));
        let refused = Err(NameError::EntryAuthentication);
        assert_eq!(a.check_entry(&name, FileId(6), 1, &seal), refused);
        assert_eq!(a.check_entry(&name, FileId(5), 3, &seal), refused);
        assert_eq!(
            a.check_entry(&a.seal_name(b"y"), FileId(5), 1, &seal),
            refused
        );
        assert_eq!(keys(11).check_entry(&name, FileId(5), 1, &seal), refused);
        assert_eq!(a.check_entry(&name, FileId(5), 1, &seal[..8]), refused);
    }

    #[test]
    fn a_target_opens_only_for_its_link_and_directory() {
        let a = keys(10);
        let sealed = a.seal_target(FileId(5), b"../data/file");
        assert_eq!(target_sealer(&sealed), Some(FileId(10)));
        assert_eq!(
            a.open_target(FileId(5), &sealed).expect("opens"),
            b"../data/file"
        );
        let refused = Err(NameError::TargetAuthentication);
        assert_eq!(a.open_target(FileId(6), &sealed), refused);
        assert_eq!(keys(11).open_target(FileId(5), &sealed), refused);
        assert_eq!(a.open_target(FileId(5), b"/etc/passwd"), refused);
    }
}
