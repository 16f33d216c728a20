//! The plain header of a wrapped key (docs/format.md section 5): what a wrapped key is for,
//! readable without any key. `crypto` builds and authenticates it; the server checks that a
//! wrapped key it stores names the right vault, file and recipient.
//!
//! ```text
//! offset len  field
//!      0   2  magic "VW"
//!      2   1  version (1)
//!      3   1  kind: 1 = file key, 2 = drive key
//!      4  16  vault ID
//!     20   8  object ID (file or drive), u64 LE
//!     28  32  recipient's X25519 public key
//!     60  80  HPKE encapsulated key, encrypted key, tag
//! ```

use crate::ids::VaultId;

pub const WRAPPED_KEY_BYTES: usize = 140;
/// The header: the HPKE authenticated data.
pub const HEADER_BYTES: usize = 60;
pub const MAGIC: [u8; 2] = *b"VW";
pub const VERSION_1: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrapKind {
    FileKey = 1,
    DriveKey = 2,
}

/// What a wrapped key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrapHeader {
    pub kind: WrapKind,
    pub vault: VaultId,
    pub object: u64,
    pub recipient: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WrapHeaderError {
    #[error("wrapped key is malformed: {0}")]
    Malformed(&'static str),
    #[error("wrapped key has version {0}, which this build does not know")]
    UnsupportedVersion(u8),
}

impl WrapHeader {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[..2].copy_from_slice(&MAGIC);
        out[2] = VERSION_1;
        out[3] = self.kind as u8;
        out[4..20].copy_from_slice(&self.vault.0);
        out[20..28].copy_from_slice(&self.object.to_le_bytes());
        out[28..60].copy_from_slice(&self.recipient);
        out
    }

    /// Parses the header of a whole wrapped key (and checks its length).
    pub fn parse(wrapped: &[u8]) -> Result<WrapHeader, WrapHeaderError> {
        if wrapped.len() != WRAPPED_KEY_BYTES {
            return Err(WrapHeaderError::Malformed("wrong length"));
        }
        if wrapped[..2] != MAGIC {
            return Err(WrapHeaderError::Malformed("bad magic"));
        }
        if wrapped[2] != VERSION_1 {
            return Err(WrapHeaderError::UnsupportedVersion(wrapped[2]));
        }
        let kind = match wrapped[3] {
            1 => WrapKind::FileKey,
            2 => WrapKind::DriveKey,
            _ => return Err(WrapHeaderError::Malformed("unknown kind")),
        };
        let mut vault = [0u8; 16];
        vault.copy_from_slice(&wrapped[4..20]);
        let mut object = [0u8; 8];
        object.copy_from_slice(&wrapped[20..28]);
        let mut recipient = [0u8; 32];
        recipient.copy_from_slice(&wrapped[28..60]);
        Ok(WrapHeader {
            kind,
            vault: VaultId(vault),
            object: u64::from_le_bytes(object),
            recipient,
        })
    }
}

/// Version 2: a signed wrap of a list of keys (docs/format.md section 5.1).
///
/// ```text
/// offset len  field
///      0   2  magic "VW"
///      2   1  version (2)
///      3   1  kind: 1 = file key, 2 = drive key, 3 = group key
///      4  16  vault ID
///     20   8  object ID (file, drive or group), u64 LE
///     28   1  recipient kind: 1 user, 2 group
///     29   1  key count n (1..=64)
///     30   1  flags (file keys only): bit 0 = the file's every commit carries a manifest;
///             bit 1 = its extended attribute values are sealed (docs/format.md 5.6)
///     31   1  zero
///     32   4  recipient id (uid or gid), u32 LE
///     36  32  recipient's X25519 public key
///     68   4  epoch of the newest key, u32 LE (n <= epoch)
///     72   4  wrapper uid (the signer; 0 = the site administrator), u32 LE
///     76  16  key commitment of the newest file key (zero for group keys)
///     92  32  HPKE encapsulated key
///    124 S*n  HPKE ciphertext of the keys, newest first (S = 32, or 64 for group keys)
/// 124+S*n 16  its AES-GCM tag
/// 140+S*n 64  Ed25519 signature by the wrapper, domain "vault/v2 wrapped key", over bytes
///             0..140+S*n
/// ```
pub const VERSION_2: u8 = 2;
/// The v2 header: the HPKE authenticated data.
pub const V2_HEADER_BYTES: usize = 92;
/// The signature domain of a v2 wrapped key.
pub const V2_DOMAIN: &str = "vault/v2 wrapped key";
/// The most keys one v2 wrap carries (epochs of a file's key, or of a group's key pair).
pub const V2_KEYS_MAX: usize = 64;
const V2_SIGNATURE_BYTES: usize = 64;
const V2_TAG_BYTES: usize = 16;

/// The kind of a v2 wrap's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// Data keys (32 bytes each) of a file or drive.
    Data(WrapKind),
    /// A group's Ed25519 seed and X25519 secret (64 bytes each).
    Group,
}

impl KeyKind {
    pub fn code(self) -> u8 {
        match self {
            KeyKind::Data(kind) => kind as u8,
            KeyKind::Group => 3,
        }
    }

    /// Bytes per key in the ciphertext.
    pub fn key_bytes(self) -> usize {
        match self {
            KeyKind::Data(_) => 32,
            KeyKind::Group => 64,
        }
    }

    fn from_code(code: u8) -> Option<KeyKind> {
        match code {
            1 => Some(KeyKind::Data(WrapKind::FileKey)),
            2 => Some(KeyKind::Data(WrapKind::DriveKey)),
            3 => Some(KeyKind::Group),
            _ => None,
        }
    }
}

/// The plain fields of a v2 wrapped key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignedWrapHeader {
    pub kind: KeyKind,
    pub vault: VaultId,
    pub object: u64,
    pub recipient: crate::acl::Principal,
    pub recipient_key: [u8; 32],
    pub keys: u8,
    pub epoch: u32,
    pub wrapper: u32,
    pub commitment: [u8; 16],
    /// Flag bit 0: every commit of the file carries a manifest (`crate::manifest`), so a
    /// reader refuses the file without one unless it is empty (file keys only).
    pub manifests: bool,
    /// Flag bit 1: the file's extended attribute values are sealed under its keys
    /// (docs/format.md section 5.6), so a reader refuses one that is not (file keys only).
    pub sealed_xattrs: bool,
}

/// The flag bit of [`SignedWrapHeader::manifests`].
const FLAG_MANIFESTS: u8 = 1;
/// The flag bit of [`SignedWrapHeader::sealed_xattrs`].
const FLAG_SEALED_XATTRS: u8 = 2;

impl SignedWrapHeader {
    pub fn encode(&self) -> [u8; V2_HEADER_BYTES] {
        let mut out = [0u8; V2_HEADER_BYTES];
        out[..2].copy_from_slice(&MAGIC);
        out[2] = VERSION_2;
        out[3] = self.kind.code();
        out[4..20].copy_from_slice(&self.vault.0);
        out[20..28].copy_from_slice(&self.object.to_le_bytes());
        out[28] = self.recipient.kind_byte();
        out[29] = self.keys;
        out[30] = if self.manifests { FLAG_MANIFESTS } else { 0 }
            | if self.sealed_xattrs {
                FLAG_SEALED_XATTRS
            } else {
                0
            };
        out[32..36].copy_from_slice(&self.recipient.id().to_le_bytes());
        out[36..68].copy_from_slice(&self.recipient_key);
        out[68..72].copy_from_slice(&self.epoch.to_le_bytes());
        out[72..76].copy_from_slice(&self.wrapper.to_le_bytes());
        out[76..92].copy_from_slice(&self.commitment);
        out
    }

    /// The length of the whole wrapped key this header begins.
    pub fn wrapped_bytes(&self) -> usize {
        V2_HEADER_BYTES
            + 32
            + self.kind.key_bytes() * usize::from(self.keys)
            + V2_TAG_BYTES
            + V2_SIGNATURE_BYTES
    }

    /// Where the signature starts (the end of the signed bytes).
    pub fn signature_at(&self) -> usize {
        self.wrapped_bytes() - V2_SIGNATURE_BYTES
    }

    /// Parses the header of a whole v2 wrapped key, checking its length.
    pub fn parse(wrapped: &[u8]) -> Result<SignedWrapHeader, WrapHeaderError> {
        use WrapHeaderError::Malformed;
        if wrapped.len() < V2_HEADER_BYTES {
            return Err(Malformed("wrong length"));
        }
        if wrapped[..2] != MAGIC {
            return Err(Malformed("bad magic"));
        }
        if wrapped[2] != VERSION_2 {
            return Err(WrapHeaderError::UnsupportedVersion(wrapped[2]));
        }
        let kind = KeyKind::from_code(wrapped[3]).ok_or(Malformed("unknown kind"))?;
        let id = crate::acl::u32_at(wrapped, 32);
        let recipient =
            crate::acl::Principal::from_parts(wrapped[28], id).ok_or(Malformed("recipient"))?;
        let header = SignedWrapHeader {
            kind,
            vault: VaultId(wrapped[4..20].try_into().expect("16 bytes")),
            object: crate::acl::u64_at(wrapped, 20),
            recipient,
            recipient_key: wrapped[36..68].try_into().expect("32 bytes"),
            keys: wrapped[29],
            epoch: crate::acl::u32_at(wrapped, 68),
            wrapper: crate::acl::u32_at(wrapped, 72),
            commitment: wrapped[76..92].try_into().expect("16 bytes"),
            manifests: wrapped[30] & FLAG_MANIFESTS != 0,
            sealed_xattrs: wrapped[30] & FLAG_SEALED_XATTRS != 0,
        };
        let keys = usize::from(header.keys);
        if keys == 0 || keys > V2_KEYS_MAX || header.epoch < u32::from(header.keys) {
            return Err(Malformed("key count"));
        }
        let flags_allowed = match kind {
            KeyKind::Data(WrapKind::FileKey) => FLAG_MANIFESTS | FLAG_SEALED_XATTRS,
            _ => 0,
        };
        if wrapped[30] & !flags_allowed != 0 || wrapped[31] != 0 {
            return Err(Malformed("reserved bits are not zero"));
        }
        if wrapped.len() != header.wrapped_bytes() {
            return Err(Malformed("wrong length"));
        }
        Ok(header)
    }
}

/// The version byte of a wrapped key (1 or 2), for callers that accept both.
pub fn version_of(wrapped: &[u8]) -> Option<u8> {
    (wrapped.len() > 2 && wrapped[..2] == MAGIC).then(|| wrapped[2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::Principal;

    #[test]
    fn v2_headers_round_trip_and_bound_their_length() {
        let header = SignedWrapHeader {
            kind: KeyKind::Group,
            vault: VaultId([1; 16]),
            object: 77,
            recipient: Principal::User(1000),
            recipient_key: [2; 32],
            keys: 2,
            epoch: 5,
            wrapper: 0,
            commitment: [0; 16],
            manifests: false,
            sealed_xattrs: false,
        };
        let mut bytes = header.encode().to_vec();
        bytes.resize(header.wrapped_bytes(), 0);
        assert_eq!(bytes.len(), 92 + 32 + 128 + 16 + 64);
        assert_eq!(SignedWrapHeader::parse(&bytes), Ok(header));
        assert_eq!(version_of(&bytes), Some(2));
        assert!(SignedWrapHeader::parse(&bytes[..bytes.len() - 1]).is_err());
        bytes[29] = 9;
        assert!(
            SignedWrapHeader::parse(&bytes).is_err(),
            "epoch below count"
        );
    }
}
