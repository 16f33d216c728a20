//! Who a user (or the site administrator) is: an Ed25519 key pair for signatures and an X25519
//! key pair that file keys are wrapped to, their fingerprint, and the passphrase-protected key
//! file that holds the private halves, and the hand-off message that carries them, unlocked,
//! to a VM guest.
//!
//! Pure: no I/O (callers read and write key files), no async. Private key bytes are zeroized
//! when dropped. This crate can verify and sign but cannot open a chunk, so the storage daemon
//! may depend on it.

mod admin_key;
mod fingerprint;
mod handoff;
mod keyfile;

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::{ZeroizeOnDrop, Zeroizing};

pub use admin_key::AdminKeyError;
pub use fingerprint::{CertificateFingerprint, Fingerprint};
pub use handoff::{
    HANDOFF_BYTES_MAX, HANDOFF_CHANNEL, HANDOFF_HEADER_BYTES, HANDOFF_SETTINGS_BYTES_MAX, Handoff,
    HandoffError,
};
pub use keyfile::{KEY_FILE_BYTES, KdfParams, KeyFile, KeyFileError, KeyKind};

pub const PUBLIC_KEY_BYTES: usize = 32;
pub const SIGNATURE_BYTES: usize = 64;
pub const FINGERPRINT_BYTES: usize = 16;

/// Fills an array from the operating system's random number generator.
///
/// # Panics
/// When the operating system cannot give random bytes: nothing secure can go on then.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).expect("the operating system's random number generator failed");
    out
}

/// Whether `key` is an X25519 public key of small order: a Diffie-Hellman with it gives all
/// zeros whatever the other secret, so a key wrapped to it is readable by anyone. Registration,
/// certification and wrapping refuse such keys (`docs/format.md` section 4).
pub fn is_low_order_wrapping_key(key: &[u8; PUBLIC_KEY_BYTES]) -> bool {
    // X25519 ignores the top bit and clamps every secret to a multiple of the cofactor 8, so
    // exactly the points whose order divides 8, on the curve or its twist, give all zeros:
    // these u-coordinates and their non-canonical encodings (as libsodium lists them). A
    // comparison instead of a Diffie-Hellman: this runs for every key wrapped.
    let mut u = *key;
    u[31] &= 0x7f;
    SMALL_ORDER_U.contains(&u)
}

/// The u-coordinates of the points of order 1, 2, 4 and 8 (0, 1, the two of order 8, p - 1)
/// and p, p + 1 (0 and 1 again), little-endian, top bit clear.
const SMALL_ORDER_U: [[u8; 32]; 7] = [
    [0; 32],
    {
        let mut one = [0; 32];
        one[0] = 1;
        one
    },
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    p_plus(-1),
    p_plus(0),
    p_plus(1),
];

/// p + `delta` (p = 2^255 - 19) for a small `delta`, little-endian.
const fn p_plus(delta: i8) -> [u8; 32] {
    let mut out = [0xff; 32];
    out[0] = (0xed_i16 + delta as i16) as u8;
    out[31] = 0x7f;
    out
}

/// The public half of an identity: what the server stores and what others wrap keys to.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicIdentity {
    pub signing: [u8; PUBLIC_KEY_BYTES],
    pub wrapping: [u8; PUBLIC_KEY_BYTES],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signing public key is not a valid Ed25519 point")]
    BadPublicKey,
    #[error("the signature does not verify")]
    Invalid,
}

impl PublicIdentity {
    /// SHA-256 over both public keys, cut to 128 bits: what people compare and clients pin.
    pub fn fingerprint(&self) -> Fingerprint {
        let digest = Sha256::new()
            .chain_update(b"vault/v1 fingerprint")
            .chain_update(self.signing)
            .chain_update(self.wrapping)
            .finalize();
        let mut out = [0u8; FINGERPRINT_BYTES];
        out.copy_from_slice(&digest[..FINGERPRINT_BYTES]);
        Fingerprint(out)
    }

    /// Verifies a signature made by [`Identity::sign`] with the same `domain`. Strict
    /// verification: no malleable or small-order signatures are accepted.
    pub fn verify(
        &self,
        domain: &str,
        message: &[u8],
        signature: &[u8; SIGNATURE_BYTES],
    ) -> Result<(), SignatureError> {
        let key =
            VerifyingKey::from_bytes(&self.signing).map_err(|_| SignatureError::BadPublicKey)?;
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        key.verify_strict(&domain_separated(domain, message), &signature)
            .map_err(|_| SignatureError::Invalid)
    }

    /// Both keys, signing first.
    pub fn to_bytes(&self) -> [u8; 2 * PUBLIC_KEY_BYTES] {
        let mut out = [0u8; 2 * PUBLIC_KEY_BYTES];
        out[..PUBLIC_KEY_BYTES].copy_from_slice(&self.signing);
        out[PUBLIC_KEY_BYTES..].copy_from_slice(&self.wrapping);
        out
    }

    pub fn from_slices(signing: &[u8], wrapping: &[u8]) -> Option<PublicIdentity> {
        Some(PublicIdentity {
            signing: signing.try_into().ok()?,
            wrapping: wrapping.try_into().ok()?,
        })
    }
}

impl fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicIdentity({})", self.fingerprint())
    }
}

/// A private identity. Both secrets are zeroized on drop.
#[derive(ZeroizeOnDrop)]
pub struct Identity {
    /// Zeroizes itself (ed25519-dalek's `zeroize` feature), checked below.
    #[zeroize(skip)]
    signing: SigningKey,
    wrapping: Zeroizing<[u8; 32]>,
    /// Derived once: every unwrap checks that a key was wrapped to it, and deriving it is a
    /// scalar multiplication.
    #[zeroize(skip)]
    wrapping_public: [u8; 32],
}

const _: fn() = || {
    fn zeroizes_on_drop<T: ZeroizeOnDrop>() {}
    zeroizes_on_drop::<SigningKey>();
};

impl Identity {
    pub fn generate() -> Identity {
        let mut seed = Zeroizing::new(random_bytes::<32>());
        let identity = Identity::from_secrets(&seed, &random_bytes::<32>());
        zeroize::Zeroize::zeroize(&mut *seed);
        identity
    }

    /// Rebuilds an identity from its two 32-byte secrets (the Ed25519 seed and the X25519
    /// scalar), as stored in the key file.
    pub fn from_secrets(signing_seed: &[u8; 32], wrapping_secret: &[u8; 32]) -> Identity {
        let wrapping = x25519_dalek::StaticSecret::from(*wrapping_secret);
        Identity {
            signing: SigningKey::from_bytes(signing_seed),
            wrapping: Zeroizing::new(*wrapping_secret),
            wrapping_public: x25519_dalek::PublicKey::from(&wrapping).to_bytes(),
        }
    }

    pub fn public(&self) -> PublicIdentity {
        PublicIdentity {
            signing: self.signing.verifying_key().to_bytes(),
            wrapping: self.wrapping_public,
        }
    }

    /// Signs `message` in `domain`: the signature covers `domain || 0x00 || message`, so a
    /// signature made for one purpose can never be replayed for another.
    pub fn sign(&self, domain: &str, message: &[u8]) -> [u8; SIGNATURE_BYTES] {
        self.signing
            .sign(&domain_separated(domain, message))
            .to_bytes()
    }

    /// The X25519 secret that key wrapping decapsulates with.
    pub fn wrapping_secret(&self) -> &[u8; 32] {
        &self.wrapping
    }

    /// The Ed25519 seed, for sealing the identity away (a key file, or a group's secrets
    /// wrapped to its members).
    pub fn signing_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Identity({}, secrets hidden)",
            self.public().fingerprint()
        )
    }
}

fn domain_separated(domain: &str, message: &[u8]) -> Vec<u8> {
    assert!(
        !domain.as_bytes().contains(&0),
        "signature domain {domain:?} contains NUL"
    );
    let mut out = Vec::with_capacity(domain.len() + 1 + message.len());
    out.extend_from_slice(domain.as_bytes());
    out.push(0);
    out.extend_from_slice(message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Diffie-Hellman definition of a small-order key: all zeros with a clamped secret.
    fn gives_all_zeros(key: &[u8; 32]) -> bool {
        let probe = x25519_dalek::StaticSecret::from([0x55; 32]);
        !probe
            .diffie_hellman(&x25519_dalek::PublicKey::from(*key))
            .was_contributory()
    }

    /// The list agrees with the Diffie-Hellman on every listed point (both top bits), on
    /// every small value and every non-canonical encoding, and on random keys.
    #[test]
    fn the_small_order_list_is_what_diffie_hellman_says() {
        let mut keys: Vec<[u8; 32]> = SMALL_ORDER_U.to_vec();
        for small in 0..=40u8 {
            let mut key = [0; 32];
            key[0] = small;
            keys.push(key);
        }
        for delta in -20..=18i8 {
            keys.push(p_plus(delta));
        }
        for _ in 0..200 {
            keys.push(random_bytes());
        }
        for key in keys.clone() {
            let mut high = key;
            high[31] ^= 0x80;
            keys.push(high);
        }
        let mut small = 0;
        for key in &keys {
            assert_eq!(
                is_low_order_wrapping_key(key),
                gives_all_zeros(key),
                "{key:02x?}"
            );
            small += usize::from(gives_all_zeros(key));
        }
        // The list, and again 0, 1, p - 1, p and p + 1 among the values added; each twice.
        assert_eq!(small, 2 * (SMALL_ORDER_U.len() + 5));
    }

    #[test]
    fn signatures_verify_only_in_their_domain() {
        let me = Identity::generate();
        let signature = me.sign("vault/v1 login", b"challenge");
        let public = me.public();
        assert_eq!(
            public.verify("vault/v1 login", b"challenge", &signature),
            Ok(())
        );
        assert_eq!(
            public.verify("vault/v1 user", b"challenge", &signature),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            public.verify("vault/v1 login", b"challengf", &signature),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn identities_differ() {
        assert_ne!(Identity::generate().public(), Identity::generate().public());
    }
}
