//! The signed record of a group (docs/format.md section 5.3): its name, members, and the
//! public keys of its current key epoch, signed by the site administrator. Clients wrap keys
//! to a group's key only from a record they verified.
//!
//! ```text
//! offset len  field
//!      0   2  magic "VG"
//!      2   1  version (1)
//!      3   1  zero
//!      4  16  vault ID
//!     20   4  gid, u32 LE
//!     24   4  epoch, u32 LE (1 at creation, +1 at every removal of a member)
//!     28  32  the group's Ed25519 public key of this epoch
//!     60  32  the group's X25519 public key of this epoch
//!     92   4  signer uid (0: the site administrator)
//!     96   2  name length L (1..=64), u16 LE
//!     98   2  member count m (at most 4096), u16 LE
//!    100   L  name (UTF-8)
//!  100+L  4m  member uids, u32 LE, ascending
//! 100+L+4m 64 Ed25519 signature by the signer, domain "vault/v2 group", over everything before
//! ```

use crate::acl::u32_at;
use crate::ids::VaultId;

pub const MAGIC: [u8; 2] = *b"VG";
pub const VERSION_1: u8 = 1;
pub const DOMAIN: &str = "vault/v2 group";
pub const NAME_BYTES_MAX: usize = 64;
pub const MEMBERS_MAX: usize = 4096;
const FIXED_BYTES: usize = 100;
const SIGNATURE_BYTES: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRecord {
    pub vault: VaultId,
    pub gid: u32,
    pub epoch: u32,
    pub signing_key: [u8; 32],
    pub wrapping_key: [u8; 32],
    pub signer: u32,
    pub name: String,
    /// Ascending, each once.
    pub members: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedGroup {
    pub record: GroupRecord,
    pub signature: [u8; SIGNATURE_BYTES],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupRecordError {
    #[error("group record is malformed: {0}")]
    Malformed(&'static str),
    #[error("group record has version {0}, which this build does not know")]
    UnsupportedVersion(u8),
}

impl GroupRecord {
    /// The bytes the signer signs.
    pub fn signed_bytes(&self) -> Vec<u8> {
        assert!(
            !self.name.is_empty() && self.name.len() <= NAME_BYTES_MAX,
            "a group name has 1 to {NAME_BYTES_MAX} bytes"
        );
        assert!(
            self.members.len() <= MEMBERS_MAX,
            "a group has at most {MEMBERS_MAX} members"
        );
        let mut out = Vec::with_capacity(FIXED_BYTES + self.name.len() + 4 * self.members.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[VERSION_1, 0]);
        out.extend_from_slice(&self.vault.0);
        out.extend_from_slice(&self.gid.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.signing_key);
        out.extend_from_slice(&self.wrapping_key);
        out.extend_from_slice(&self.signer.to_le_bytes());
        out.extend_from_slice(&(self.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&(self.members.len() as u16).to_le_bytes());
        out.extend_from_slice(self.name.as_bytes());
        for member in &self.members {
            out.extend_from_slice(&member.to_le_bytes());
        }
        out
    }

    pub fn with_signature(&self, signature: &[u8; SIGNATURE_BYTES]) -> Vec<u8> {
        let mut out = self.signed_bytes();
        out.extend_from_slice(signature);
        out
    }
}

impl SignedGroup {
    pub fn parse(bytes: &[u8]) -> Result<SignedGroup, GroupRecordError> {
        use GroupRecordError::Malformed;
        if bytes.len() < FIXED_BYTES + SIGNATURE_BYTES {
            return Err(Malformed("too short"));
        }
        if bytes[..2] != MAGIC {
            return Err(Malformed("bad magic"));
        }
        if bytes[2] != VERSION_1 {
            return Err(GroupRecordError::UnsupportedVersion(bytes[2]));
        }
        if bytes[3] != 0 {
            return Err(Malformed("reserved byte is not zero"));
        }
        let name_len = usize::from(u16::from_le_bytes([bytes[96], bytes[97]]));
        let count = usize::from(u16::from_le_bytes([bytes[98], bytes[99]]));
        if name_len == 0 || name_len > NAME_BYTES_MAX || count > MEMBERS_MAX {
            return Err(Malformed("name length or member count"));
        }
        let members_at = FIXED_BYTES + name_len;
        let end = members_at + 4 * count;
        if bytes.len() != end + SIGNATURE_BYTES {
            return Err(Malformed("wrong length"));
        }
        let name = std::str::from_utf8(&bytes[FIXED_BYTES..members_at])
            .map_err(|_| Malformed("name is not UTF-8"))?
            .to_string();
        let members: Vec<u32> = (0..count)
            .map(|i| u32_at(bytes, members_at + 4 * i))
            .collect();
        if members.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(Malformed("members are not ascending"));
        }
        let record = GroupRecord {
            vault: VaultId(bytes[4..20].try_into().expect("16 bytes")),
            gid: u32_at(bytes, 20),
            epoch: u32_at(bytes, 24),
            signing_key: bytes[28..60].try_into().expect("32 bytes"),
            wrapping_key: bytes[60..92].try_into().expect("32 bytes"),
            signer: u32_at(bytes, 92),
            name,
            members,
        };
        if record.epoch == 0 {
            return Err(Malformed("epoch 0"));
        }
        Ok(SignedGroup {
            record,
            signature: bytes[end..].try_into().expect("64 bytes"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_records_round_trip_and_refuse_damage() {
        let record = GroupRecord {
            vault: VaultId([3; 16]),
            gid: 1000,
            epoch: 2,
            signing_key: [4; 32],
            wrapping_key: [5; 32],
            signer: 0,
            name: "lab".into(),
            members: vec![1000, 1002],
        };
        let bytes = record.with_signature(&[6; 64]);
        assert_eq!(bytes.len(), 100 + 3 + 8 + 64);
        let parsed = SignedGroup::parse(&bytes).expect("parses");
        assert_eq!(parsed.record, record);
        let mut unsorted = bytes.clone();
        unsorted[103..107].copy_from_slice(&2000u32.to_le_bytes());
        assert!(SignedGroup::parse(&unsorted).is_err());
        assert!(SignedGroup::parse(&bytes[..bytes.len() - 2]).is_err());
    }
}
