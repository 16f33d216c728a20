//! The signed ACL record of an inode (docs/format.md section 5.2): who may read and write it,
//! as its owner or one of its writers signed it. The server stores it beside the inode and
//! enforces the entries; clients wrap keys only to the principals of a record they verified.
//!
//! ```text
//! offset len  field
//!      0   2  magic "VA"
//!      2   1  version (1)
//!      3   1  zero
//!      4  16  vault ID
//!     20   8  inode (file ID), u64 LE
//!     28   8  serial, u64 LE (1 for an inode's first record, +1 for every change)
//!     36   4  owner uid
//!     40   4  signer uid
//!     44   2  entry count n, u16 LE (at most 256)
//!     46   2  zero
//!     48  8n  entries: kind (1 user, 2 group), rights (bit 0 read, bit 1 write), two zero
//!             bytes, principal id u32 LE; sorted by (kind, id), each principal once
//! 48+8n  64  Ed25519 signature by the signer, domain "vault/v2 acl", over bytes 0..48+8n
//! ```

use crate::ids::{FileId, VaultId};

pub const MAGIC: [u8; 2] = *b"VA";
pub const VERSION_1: u8 = 1;
/// The signature domain of an ACL record.
pub const DOMAIN: &str = "vault/v2 acl";
const FIXED_BYTES: usize = 48;
const ENTRY_BYTES: usize = 8;
const SIGNATURE_BYTES: usize = 64;
/// The most entries one record holds (the server's `ACL_ENTRIES_MAX`).
pub const ENTRIES_MAX: usize = 256;

/// Who an entry, or a wrapped key, is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Principal {
    User(u32),
    Group(u32),
}

impl Principal {
    /// The kind byte of the layouts: 1 user, 2 group.
    pub fn kind_byte(self) -> u8 {
        match self {
            Principal::User(_) => 1,
            Principal::Group(_) => 2,
        }
    }

    pub fn id(self) -> u32 {
        match self {
            Principal::User(id) | Principal::Group(id) => id,
        }
    }

    pub fn from_parts(kind: u8, id: u32) -> Option<Principal> {
        match kind {
            1 => Some(Principal::User(id)),
            2 => Some(Principal::Group(id)),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub principal: Principal,
    pub read: bool,
    pub write: bool,
}

/// An ACL record's content (everything the signature covers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclRecord {
    pub vault: VaultId,
    pub ino: FileId,
    pub serial: u64,
    pub owner: u32,
    pub signer: u32,
    /// Sorted by principal, each principal once (see [`AclRecord::normalized`]).
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclRecordError {
    #[error("ACL record is malformed: {0}")]
    Malformed(&'static str),
    #[error("ACL record has version {0}, which this build does not know")]
    UnsupportedVersion(u8),
}

/// A record as stored: its content and the signature over [`AclRecord::signed_bytes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedAcl {
    pub record: AclRecord,
    pub signature: [u8; SIGNATURE_BYTES],
}

impl AclRecord {
    /// Sorts the entries by principal and drops entries that grant nothing.
    pub fn normalized(mut self) -> AclRecord {
        self.entries.retain(|e| e.read || e.write);
        self.entries.sort_by_key(|e| e.principal);
        self.entries.dedup_by_key(|e| e.principal);
        self
    }

    /// The bytes the signer signs (bytes 0..48+8n of the layout).
    pub fn signed_bytes(&self) -> Vec<u8> {
        assert!(
            self.entries.len() <= ENTRIES_MAX,
            "an ACL record holds at most {ENTRIES_MAX} entries"
        );
        let mut out = Vec::with_capacity(FIXED_BYTES + ENTRY_BYTES * self.entries.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[VERSION_1, 0]);
        out.extend_from_slice(&self.vault.0);
        out.extend_from_slice(&self.ino.0.to_le_bytes());
        out.extend_from_slice(&self.serial.to_le_bytes());
        out.extend_from_slice(&self.owner.to_le_bytes());
        out.extend_from_slice(&self.signer.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        for entry in &self.entries {
            let rights = u8::from(entry.read) | (u8::from(entry.write) << 1);
            out.extend_from_slice(&[entry.principal.kind_byte(), rights, 0, 0]);
            out.extend_from_slice(&entry.principal.id().to_le_bytes());
        }
        out
    }

    /// The whole record with its signature.
    pub fn with_signature(&self, signature: &[u8; SIGNATURE_BYTES]) -> Vec<u8> {
        let mut out = self.signed_bytes();
        out.extend_from_slice(signature);
        out
    }

    /// The entry of `principal`, if any.
    pub fn entry(&self, principal: Principal) -> Option<&Entry> {
        self.entries.iter().find(|e| e.principal == principal)
    }

    /// Whether `uid` may write by this record: the owner, or a user entry with write.
    pub fn lets_write(&self, uid: u32) -> bool {
        uid == self.owner
            || self
                .entry(Principal::User(uid))
                .is_some_and(|entry| entry.write)
    }
}

impl SignedAcl {
    /// Parses a stored record, checking its layout (not its signature).
    pub fn parse(bytes: &[u8]) -> Result<SignedAcl, AclRecordError> {
        use AclRecordError::Malformed;
        if bytes.len() < FIXED_BYTES + SIGNATURE_BYTES {
            return Err(Malformed("too short"));
        }
        if bytes[..2] != MAGIC {
            return Err(Malformed("bad magic"));
        }
        if bytes[2] != VERSION_1 {
            return Err(AclRecordError::UnsupportedVersion(bytes[2]));
        }
        let count = usize::from(u16::from_le_bytes([bytes[44], bytes[45]]));
        if count > ENTRIES_MAX {
            return Err(Malformed("too many entries"));
        }
        let end = FIXED_BYTES + ENTRY_BYTES * count;
        if bytes.len() != end + SIGNATURE_BYTES {
            return Err(Malformed("wrong length"));
        }
        if bytes[3] != 0 || bytes[46..48] != [0, 0] {
            return Err(Malformed("reserved bytes are not zero"));
        }
        let mut entries = Vec::with_capacity(count);
        for raw in bytes[FIXED_BYTES..end].chunks(ENTRY_BYTES) {
            let id = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
            let principal =
                Principal::from_parts(raw[0], id).ok_or(Malformed("unknown principal kind"))?;
            if raw[1] & !3 != 0 || raw[1] == 0 || raw[2..4] != [0, 0] {
                return Err(Malformed("bad entry rights"));
            }
            if entries
                .last()
                .is_some_and(|last: &Entry| last.principal >= principal)
            {
                return Err(Malformed("entries are not sorted or repeat a principal"));
            }
            entries.push(Entry {
                principal,
                read: raw[1] & 1 != 0,
                write: raw[1] & 2 != 0,
            });
        }
        let record = AclRecord {
            vault: VaultId(bytes[4..20].try_into().expect("16 bytes")),
            ino: FileId(u64_at(bytes, 20)),
            serial: u64_at(bytes, 28),
            owner: u32_at(bytes, 36),
            signer: u32_at(bytes, 40),
            entries,
        };
        Ok(SignedAcl {
            record,
            signature: bytes[end..].try_into().expect("64 bytes"),
        })
    }
}

pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AclRecord {
        AclRecord {
            vault: VaultId([7; 16]),
            ino: FileId(0x1234),
            serial: 3,
            owner: 1000,
            signer: 1001,
            entries: vec![
                Entry {
                    principal: Principal::Group(9),
                    read: true,
                    write: false,
                },
                Entry {
                    principal: Principal::User(1001),
                    read: true,
                    write: true,
                },
            ],
        }
        .normalized()
    }

    #[test]
    fn records_round_trip_and_sort() {
        let record = record();
        assert_eq!(record.entries[0].principal, Principal::User(1001));
        let bytes = record.with_signature(&[5; 64]);
        assert_eq!(bytes.len(), 48 + 16 + 64);
        let parsed = SignedAcl::parse(&bytes).expect("parses");
        assert_eq!(parsed.record, record);
        assert_eq!(parsed.signature, [5; 64]);
        assert!(record.lets_write(1000) && record.lets_write(1001) && !record.lets_write(9));
    }

    #[test]
    fn malformed_records_are_refused() {
        let bytes = record().with_signature(&[5; 64]);
        let mut unsorted = bytes.clone();
        unsorted.swap(48, 56);
        assert!(SignedAcl::parse(&unsorted).is_err());
        assert!(SignedAcl::parse(&bytes[..bytes.len() - 1]).is_err());
        let mut version = bytes.clone();
        version[2] = 9;
        assert_eq!(
            SignedAcl::parse(&version),
            Err(AclRecordError::UnsupportedVersion(9))
        );
        let mut rights = bytes;
        rights[49] = 4;
        assert!(SignedAcl::parse(&rights).is_err());
    }
}
