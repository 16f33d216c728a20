//! Data keys (one per file or drive) and the per-purpose subkeys derived from them.

use std::fmt;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::KeyInit;
use format::envelope::COMMITMENT_BYTES;
use hkdf::Hkdf;
use keystore::LockedKey;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub const DATA_KEY_BYTES: usize = 32;

const HKDF_SALT: &[u8] = b"vault/v1 data key";
const INFO_CHUNK_ENCRYPTION: &[u8] = b"vault/v1 chunk encryption";
const INFO_KEY_COMMITMENT: &[u8] = b"vault/v1 key commitment";
const INFO_MANIFEST: &[u8] = b"vault/v1 manifest";

/// A file's (or a VM drive's) random 256-bit key. It is never used directly: every use has
/// its own subkey derived with HKDF-SHA256. Kept in locked memory out of core dumps
/// (`keystore::LockedKey`), zeroized on drop.
#[derive(Clone, ZeroizeOnDrop)]
pub struct DataKey(LockedKey);

impl DataKey {
    pub fn generate() -> DataKey {
        let mut key = LockedKey::zeroed();
        getrandom::fill(key.as_mut_bytes()).expect("the operating system's random source");
        DataKey(key)
    }

    pub fn from_bytes(mut bytes: [u8; DATA_KEY_BYTES]) -> DataKey {
        let key = DataKey(LockedKey::new(&bytes));
        bytes.zeroize();
        key
    }

    pub fn as_bytes(&self) -> &[u8; DATA_KEY_BYTES] {
        self.0.as_bytes()
    }

    /// The subkey that MACs the file's manifests (docs/format.md section 5.5).
    pub(crate) fn manifest_key(&self) -> Zeroizing<[u8; 32]> {
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(HKDF_SALT), self.as_bytes())
            .expand(INFO_MANIFEST, &mut key[..])
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        key
    }

    /// The subkeys for sealing and opening chunks. Deriving them costs an HKDF and an AES key
    /// schedule, so callers keep one `ChunkCipher` per open file.
    pub fn chunk_cipher(&self) -> ChunkCipher {
        let hkdf = Hkdf::<Sha256>::new(Some(HKDF_SALT), self.as_bytes());
        let mut encryption = LockedKey::zeroed();
        let mut commitment = [0u8; COMMITMENT_BYTES];
        hkdf.expand(INFO_CHUNK_ENCRYPTION, encryption.as_mut_bytes())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        hkdf.expand(INFO_KEY_COMMITMENT, &mut commitment)
            .expect("16 bytes is a valid HKDF-SHA256 output length");
        ChunkCipher {
            aead: Aes256Gcm::new(encryption.as_bytes().into()),
            encryption_key: encryption,
            commitment,
        }
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(hidden)")
    }
}

/// What sealing and opening chunks of one file need: the AES-256-GCM key schedule of the
/// chunk encryption subkey and the key commitment.
#[derive(ZeroizeOnDrop)]
pub struct ChunkCipher {
    /// Zeroizes its key schedule itself (aes-gcm's `zeroize` feature), checked below.
    #[zeroize(skip)]
    pub(crate) aead: Aes256Gcm,
    encryption_key: LockedKey,
    /// Derived from the key, but no secret: it stands in every chunk's header.
    #[zeroize(skip)]
    pub(crate) commitment: [u8; COMMITMENT_BYTES],
}

/// The AEAD's key schedule is as secret as the key it came from.
const _: fn() = || {
    fn zeroizes_on_drop<T: ZeroizeOnDrop>() {}
    zeroizes_on_drop::<Aes256Gcm>();
};

impl ChunkCipher {
    /// The chunk encryption subkey. Exposed so that tests can check the format against an
    /// independent AES-GCM implementation; nothing else needs it.
    pub fn encryption_key(&self) -> &[u8; 32] {
        self.encryption_key.as_bytes()
    }

    /// The 128-bit key commitment written into every chunk's envelope.
    pub fn commitment(&self) -> &[u8; COMMITMENT_BYTES] {
        &self.commitment
    }
}

impl fmt::Debug for ChunkCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkCipher(hidden)")
    }
}
