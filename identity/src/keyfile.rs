//! The key file: an identity's private keys under a passphrase (Argon2id, then AES-256-GCM).
//!
//! ```text
//! offset len  field
//!      0   8  magic "VAULTKEY"
//!      8   1  version (1)
//!      9   1  kind: 1 = user, 2 = site administrator
//!     10   2  zero
//!     12   4  Argon2id memory in KiB, u32 LE
//!     16   4  Argon2id iterations, u32 LE
//!     20   4  Argon2id lanes, u32 LE
//!     24  16  salt
//!     40  32  Ed25519 public key
//!     72  32  X25519 public key
//!    104  12  AES-GCM nonce
//!    116  64  encrypted: Ed25519 seed || X25519 secret
//!    180  16  AES-GCM tag (authenticated data: bytes 0..116)
//!    196  32  SHA-256 of bytes 0..196
//! ```
//! The unkeyed checksum tells accidental damage from a wrong passphrase; tampering is caught
//! by the GCM tag, which covers every field before the ciphertext.

use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use argon2::{Algorithm, Argon2, Params, Version};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{Identity, PublicIdentity, random_bytes};

pub const KEY_FILE_BYTES: usize = 228;

const MAGIC: [u8; 8] = *b"VAULTKEY";
const VERSION_1: u8 = 1;
const SALT_AT: usize = 24;
const SIGNING_PUBLIC_AT: usize = 40;
const WRAPPING_PUBLIC_AT: usize = 72;
const NONCE_AT: usize = 104;
const CIPHERTEXT_AT: usize = 116;
const TAG_AT: usize = 180;
const CHECKSUM_AT: usize = 196;

/// Whose keys a key file holds; checked when the file is opened so that an administrator key
/// is never used as a user key by mistake, or the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    User = 1,
    SiteAdmin = 2,
}

/// Argon2id cost. Recorded in the file, so that stronger defaults never lock out old files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub lanes: u32,
}

impl KdfParams {
    /// RFC 9106's second recommended option with one lane: 64 MiB, 3 passes (~0.2 s here).
    pub const DEFAULT: KdfParams = KdfParams {
        memory_kib: 64 * 1024,
        iterations: 3,
        lanes: 1,
    };
    /// The weakest parameters a key file may carry: for tests and fixtures only.
    pub const MINIMUM: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        lanes: 1,
    };
    /// Bounds on what a file may ask for, so that a crafted file cannot make opening it take
    /// all memory or hours.
    const MEMORY_KIB_MAX: u32 = 4 * 1024 * 1024;
    const ITERATIONS_MAX: u32 = 64;
    const LANES_MAX: u32 = 16;

    fn check(&self) -> Result<Params, KeyFileError> {
        let in_bounds = (Self::MINIMUM.memory_kib..=Self::MEMORY_KIB_MAX)
            .contains(&self.memory_kib)
            && (1..=Self::ITERATIONS_MAX).contains(&self.iterations)
            && (1..=Self::LANES_MAX).contains(&self.lanes)
            && self.memory_kib >= 8 * self.lanes;
        if !in_bounds {
            return Err(KeyFileError::Damaged("Argon2id parameters out of bounds"));
        }
        Params::new(self.memory_kib, self.iterations, self.lanes, Some(32))
            .map_err(|_| KeyFileError::Damaged("Argon2id parameters rejected"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("wrong passphrase for this key file")]
    WrongPassphrase,
    #[error("key file is damaged: {0}")]
    Damaged(&'static str),
    #[error("key file has version {0}, which this build does not know")]
    UnsupportedVersion(u8),
    #[error("key file holds a {found:?} key, expected a {expected:?} key")]
    WrongKind { expected: KeyKind, found: KeyKind },
}

/// A sealed key file's bytes and what can be read from them without the passphrase.
#[derive(Clone, Debug)]
pub struct KeyFile {
    bytes: [u8; KEY_FILE_BYTES],
    kind: KeyKind,
    public: PublicIdentity,
}

impl KeyFile {
    /// Seals `identity` under `passphrase`.
    pub fn seal(
        identity: &Identity,
        kind: KeyKind,
        passphrase: &[u8],
        params: KdfParams,
    ) -> Result<KeyFile, KeyFileError> {
        let argon_params = params.check()?;
        let public = identity.public();
        let mut bytes = [0u8; KEY_FILE_BYTES];
        bytes[..8].copy_from_slice(&MAGIC);
        bytes[8] = VERSION_1;
        bytes[9] = kind as u8;
        bytes[12..16].copy_from_slice(&params.memory_kib.to_le_bytes());
        bytes[16..20].copy_from_slice(&params.iterations.to_le_bytes());
        bytes[20..24].copy_from_slice(&params.lanes.to_le_bytes());
        bytes[SALT_AT..SIGNING_PUBLIC_AT].copy_from_slice(&random_bytes::<16>());
        bytes[SIGNING_PUBLIC_AT..WRAPPING_PUBLIC_AT].copy_from_slice(&public.signing);
        bytes[WRAPPING_PUBLIC_AT..NONCE_AT].copy_from_slice(&public.wrapping);
        bytes[NONCE_AT..CIPHERTEXT_AT].copy_from_slice(&random_bytes::<12>());

        let cipher =
            passphrase_cipher(passphrase, &bytes[SALT_AT..SIGNING_PUBLIC_AT], argon_params)?;
        let mut secrets = Zeroizing::new([0u8; 64]);
        secrets[..32].copy_from_slice(&*identity.signing_seed());
        secrets[32..].copy_from_slice(identity.wrapping_secret());
        let (header, rest) = bytes.split_at_mut(CIPHERTEXT_AT);
        let nonce = Nonce::from(take::<12>(header, NONCE_AT));
        let tag = cipher
            .encrypt_inout_detached(
                &nonce,
                header,
                InOutBuf::new(&secrets[..], &mut rest[..64]).expect("equal lengths"),
            )
            .expect("64 bytes are within AES-GCM's limits");
        bytes[TAG_AT..CHECKSUM_AT].copy_from_slice(&tag);
        let checksum = Sha256::digest(&bytes[..CHECKSUM_AT]);
        bytes[CHECKSUM_AT..].copy_from_slice(&checksum);
        Ok(KeyFile {
            bytes,
            kind,
            public,
        })
    }

    /// Parses a key file's bytes: checks everything that can be checked without the
    /// passphrase.
    pub fn parse(bytes: &[u8]) -> Result<KeyFile, KeyFileError> {
        let bytes: [u8; KEY_FILE_BYTES] = bytes
            .try_into()
            .map_err(|_| KeyFileError::Damaged("wrong length"))?;
        if bytes[..8] != MAGIC {
            return Err(KeyFileError::Damaged("not a vault key file (bad magic)"));
        }
        if Sha256::digest(&bytes[..CHECKSUM_AT])[..] != bytes[CHECKSUM_AT..] {
            return Err(KeyFileError::Damaged("checksum mismatch"));
        }
        if bytes[8] != VERSION_1 {
            return Err(KeyFileError::UnsupportedVersion(bytes[8]));
        }
        let kind = match bytes[9] {
            1 => KeyKind::User,
            2 => KeyKind::SiteAdmin,
            _ => return Err(KeyFileError::Damaged("unknown key kind")),
        };
        if bytes[10..12] != [0, 0] {
            return Err(KeyFileError::Damaged("reserved bytes are not zero"));
        }
        let file = KeyFile {
            public: PublicIdentity {
                signing: take(&bytes, SIGNING_PUBLIC_AT),
                wrapping: take(&bytes, WRAPPING_PUBLIC_AT),
            },
            kind,
            bytes,
        };
        file.params().check()?;
        Ok(file)
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    pub fn public(&self) -> PublicIdentity {
        self.public
    }

    pub fn params(&self) -> KdfParams {
        KdfParams {
            memory_kib: u32::from_le_bytes(take(&self.bytes, 12)),
            iterations: u32::from_le_bytes(take(&self.bytes, 16)),
            lanes: u32::from_le_bytes(take(&self.bytes, 20)),
        }
    }

    pub fn as_bytes(&self) -> &[u8; KEY_FILE_BYTES] {
        &self.bytes
    }

    /// Opens the file with `passphrase`, expecting a key of `kind`.
    pub fn open(&self, passphrase: &[u8], kind: KeyKind) -> Result<Identity, KeyFileError> {
        if self.kind != kind {
            return Err(KeyFileError::WrongKind {
                expected: kind,
                found: self.kind,
            });
        }
        let cipher = passphrase_cipher(
            passphrase,
            &self.bytes[SALT_AT..SIGNING_PUBLIC_AT],
            self.params().check()?,
        )?;
        let mut secrets = Zeroizing::new([0u8; 64]);
        let nonce = Nonce::from(take::<12>(&self.bytes, NONCE_AT));
        let tag = Tag::from(take::<16>(&self.bytes, TAG_AT));
        cipher
            .decrypt_inout_detached(
                &nonce,
                &self.bytes[..CIPHERTEXT_AT],
                InOutBuf::new(&self.bytes[CIPHERTEXT_AT..TAG_AT], &mut secrets[..])
                    .expect("equal lengths"),
                &tag,
            )
            .map_err(|_| KeyFileError::WrongPassphrase)?;
        let identity = Identity::from_secrets(&take(&secrets[..], 0), &take(&secrets[..], 32));
        if identity.public() != self.public {
            // The tag verified, so the file was sealed this way: only a buggy writer can get here.
            return Err(KeyFileError::Damaged(
                "private keys do not match the public keys",
            ));
        }
        Ok(identity)
    }
}

fn passphrase_cipher(
    passphrase: &[u8],
    salt: &[u8],
    params: Params,
) -> Result<Aes256Gcm, KeyFileError> {
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase, salt, &mut key[..])
        .map_err(|_| KeyFileError::Damaged("Argon2id refused the parameters"))?;
    Ok(Aes256Gcm::new(&(*key).into()))
}

fn take<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed() -> (Identity, KeyFile) {
        let identity = Identity::generate();
        let file = KeyFile::seal(
            &identity,
            KeyKind::User,
            b"correct horse",
            KdfParams::MINIMUM,
        )
        .expect("seal");
        (identity, file)
    }

    #[test]
    fn round_trip() {
        let (identity, file) = sealed();
        let parsed = KeyFile::parse(file.as_bytes()).expect("parse");
        assert_eq!(parsed.public(), identity.public());
        let opened = parsed.open(b"correct horse", KeyKind::User).expect("open");
        assert_eq!(opened.public(), identity.public());
        assert_eq!(opened.wrapping_secret(), identity.wrapping_secret());
    }

    #[test]
    fn wrong_passphrase_and_damage_are_told_apart() {
        let (_, file) = sealed();
        assert_eq!(
            file.open(b"wrong", KeyKind::User).map(|_| ()),
            Err(KeyFileError::WrongPassphrase)
        );
        for at in [0, 9, 30, 50, 120, 190, 220] {
            let mut bytes = *file.as_bytes();
            bytes[at] ^= 0x40;
            assert!(
                matches!(KeyFile::parse(&bytes), Err(KeyFileError::Damaged(_))),
                "flip at {at}"
            );
        }
        assert!(matches!(
            KeyFile::parse(&file.as_bytes()[..100]),
            Err(KeyFileError::Damaged(_))
        ));
    }

    #[test]
    fn kind_is_checked() {
        let (_, file) = sealed();
        assert_eq!(
            file.open(b"correct horse", KeyKind::SiteAdmin).map(|_| ()),
            Err(KeyFileError::WrongKind {
                expected: KeyKind::SiteAdmin,
                found: KeyKind::User
            })
        );
    }

    #[test]
    fn absurd_parameters_are_refused_before_any_work() {
        let (_, file) = sealed();
        let mut bytes = *file.as_bytes();
        bytes[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        let checksum = Sha256::digest(&bytes[..CHECKSUM_AT]);
        bytes[CHECKSUM_AT..].copy_from_slice(&checksum);
        assert!(matches!(
            KeyFile::parse(&bytes),
            Err(KeyFileError::Damaged(_))
        ));
    }
}
