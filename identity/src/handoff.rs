//! The hand-off message: an unlocked identity and the settings that go with it, as `vmctl`
//! hands a user's key to a VM guest over a virtio-serial channel (docs/format.md section 11).
//! It exists only in memory and on that channel: never in a file.
//!
//! ```text
//! offset len  field
//!      0   8  magic "VAULTHND"
//!      8   1  version (1)
//!      9   1  kind: 1 = user (as in the key file)
//!     10   2  settings length L, u16 LE, at most 8192
//!     12  32  Ed25519 public key
//!     44  32  X25519 public key
//!     76  32  Ed25519 seed
//!    108  32  X25519 secret
//!    140   L  settings, UTF-8 (the client config's TOML)
//!  140+L  32  SHA-256 of bytes 0..140+L
//! ```

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{Identity, KeyKind, PublicIdentity};

/// The name of the virtio-serial port the message travels on (the guest finds its device by it).
pub const HANDOFF_CHANNEL: &str = "org.vault.handoff.0";
/// The fixed part before the settings; a reader learns the whole length from it.
pub const HANDOFF_HEADER_BYTES: usize = 140;
/// The settings are a short client config; anything longer is not a hand-off.
pub const HANDOFF_SETTINGS_BYTES_MAX: usize = 8192;
/// The longest message: header, settings, checksum.
pub const HANDOFF_BYTES_MAX: usize = HANDOFF_HEADER_BYTES + HANDOFF_SETTINGS_BYTES_MAX + 32;

const MAGIC: [u8; 8] = *b"VAULTHND";
const VERSION_1: u8 = 1;
const SECRETS_AT: usize = 76;

const _: () = assert!(HANDOFF_SETTINGS_BYTES_MAX <= u16::MAX as usize);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandoffError {
    #[error("not a hand-off message (bad magic)")]
    BadMagic,
    #[error("hand-off version {0} is unknown")]
    UnknownVersion(u8),
    #[error("the hand-off carries a key of kind {found}, not of kind {expected}")]
    WrongKind { expected: u8, found: u8 },
    #[error("hand-off settings of {0} bytes (at most {HANDOFF_SETTINGS_BYTES_MAX})")]
    SettingsTooLong(usize),
    #[error("the hand-off is {found} bytes, not {expected}")]
    WrongLength { expected: usize, found: usize },
    #[error("the hand-off is damaged (checksum)")]
    Damaged,
    #[error("the hand-off's private keys do not match its public keys")]
    KeysMismatch,
    #[error("the hand-off settings are not UTF-8")]
    NotUtf8,
}

/// A decoded hand-off: the identity (zeroized on drop) and its settings (not secret).
#[derive(Debug)]
pub struct Handoff {
    pub identity: Identity,
    pub settings: String,
}

impl Handoff {
    /// The message for `identity` of `kind` with `settings`, in memory that is zeroized on drop.
    pub fn encode(
        identity: &Identity,
        kind: KeyKind,
        settings: &str,
    ) -> Result<Zeroizing<Vec<u8>>, HandoffError> {
        let length = settings.len();
        if length > HANDOFF_SETTINGS_BYTES_MAX {
            return Err(HandoffError::SettingsTooLong(length));
        }
        let mut message = Zeroizing::new(Vec::with_capacity(HANDOFF_HEADER_BYTES + length + 32));
        message.extend_from_slice(&MAGIC);
        message.extend_from_slice(&[VERSION_1, kind as u8]);
        message.extend_from_slice(&(length as u16).to_le_bytes());
        message.extend_from_slice(&identity.public().to_bytes());
        message.extend_from_slice(&identity.signing_seed()[..]);
        message.extend_from_slice(identity.wrapping_secret());
        message.extend_from_slice(settings.as_bytes());
        let checksum: [u8; 32] = Sha256::digest(&message[..]).into();
        message.extend_from_slice(&checksum);
        Ok(message)
    }

    /// The whole message's length, from its first [`HANDOFF_HEADER_BYTES`] (or fewer: at
    /// least 12). Checks the magic, version and settings length on the way.
    pub fn message_len(header: &[u8]) -> Result<usize, HandoffError> {
        if header.len() < 12 {
            return Err(HandoffError::WrongLength {
                expected: HANDOFF_HEADER_BYTES,
                found: header.len(),
            });
        }
        if header[..8] != MAGIC {
            return Err(HandoffError::BadMagic);
        }
        if header[8] != VERSION_1 {
            return Err(HandoffError::UnknownVersion(header[8]));
        }
        let length = usize::from(u16::from_le_bytes([header[10], header[11]]));
        if length > HANDOFF_SETTINGS_BYTES_MAX {
            return Err(HandoffError::SettingsTooLong(length));
        }
        Ok(HANDOFF_HEADER_BYTES + length + 32)
    }

    /// Checks and opens a whole message, expecting a key of `kind`.
    pub fn decode(message: &[u8], kind: KeyKind) -> Result<Handoff, HandoffError> {
        let expected = Handoff::message_len(message)?;
        if message.len() != expected {
            return Err(HandoffError::WrongLength {
                expected,
                found: message.len(),
            });
        }
        let (body, checksum) = message.split_at(expected - 32);
        if Sha256::digest(body)[..] != *checksum {
            return Err(HandoffError::Damaged);
        }
        if body[9] != kind as u8 {
            return Err(HandoffError::WrongKind {
                expected: kind as u8,
                found: body[9],
            });
        }
        let public = PublicIdentity::from_slices(&body[12..44], &body[44..SECRETS_AT])
            .ok_or(HandoffError::KeysMismatch)?;
        let mut seed = Zeroizing::new([0u8; 32]);
        let mut secret = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&body[SECRETS_AT..SECRETS_AT + 32]);
        secret.copy_from_slice(&body[SECRETS_AT + 32..HANDOFF_HEADER_BYTES]);
        let identity = Identity::from_secrets(&seed, &secret);
        if identity.public() != public {
            return Err(HandoffError::KeysMismatch);
        }
        let settings = std::str::from_utf8(&body[HANDOFF_HEADER_BYTES..])
            .map_err(|_| HandoffError::NotUtf8)?
            .to_string();
        Ok(Handoff { identity, settings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: &str = "server = \"https://10.10.0.2:7000\"\nname = \"alice\"\n";

    #[test]
    fn a_handoff_round_trips_and_refuses_damage() {
        let identity = Identity::generate();
        let message = Handoff::encode(&identity, KeyKind::User, SETTINGS).expect("encode");
        assert_eq!(message.len(), HANDOFF_HEADER_BYTES + SETTINGS.len() + 32);
        assert_eq!(Handoff::message_len(&message[..12]), Ok(message.len()));
        let opened = Handoff::decode(&message, KeyKind::User).expect("decode");
        assert_eq!(opened.identity.public(), identity.public());
        assert_eq!(opened.settings, SETTINGS);

        let decode = |bytes: &[u8]| Handoff::decode(bytes, KeyKind::User).map(drop);
        assert_eq!(
            Handoff::decode(&message, KeyKind::SiteAdmin).map(drop),
            Err(HandoffError::WrongKind {
                expected: 2,
                found: 1
            })
        );
        let mut bad = message.to_vec();
        bad[0] ^= 1;
        assert_eq!(decode(&bad), Err(HandoffError::BadMagic));
        let mut bad = message.to_vec();
        bad[8] = 2;
        assert_eq!(decode(&bad), Err(HandoffError::UnknownVersion(2)));
        for at in [12, 80, HANDOFF_HEADER_BYTES + 3, message.len() - 1] {
            let mut bad = message.to_vec();
            bad[at] ^= 0x40;
            assert_eq!(decode(&bad), Err(HandoffError::Damaged), "byte {at}");
        }
        let cut = &message[..message.len() - 1];
        assert!(matches!(decode(cut), Err(HandoffError::WrongLength { .. })));
        let long = "x".repeat(HANDOFF_SETTINGS_BYTES_MAX + 1);
        assert_eq!(
            Handoff::encode(&identity, KeyKind::User, &long).map(drop),
            Err(HandoffError::SettingsTooLong(long.len()))
        );
    }

    #[test]
    fn a_handoff_whose_keys_disagree_is_refused() {
        let identity = Identity::generate();
        let other = Identity::generate();
        let mut message = Handoff::encode(&identity, KeyKind::User, "")
            .expect("encode")
            .to_vec();
        message[12..SECRETS_AT].copy_from_slice(&other.public().to_bytes());
        let length = message.len();
        let checksum: [u8; 32] = Sha256::digest(&message[..length - 32]).into();
        message[length - 32..].copy_from_slice(&checksum);
        assert_eq!(
            Handoff::decode(&message, KeyKind::User).map(drop),
            Err(HandoffError::KeysMismatch)
        );
    }
}
