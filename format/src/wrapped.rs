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
