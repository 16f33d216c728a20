//! A file's manifest (docs/format.md section 5.5): the size and chunk map its writer committed,
//! authenticated under the file's key. The server checks the plain fields against the chunk
//! map a commit leaves (so that the stored manifest always describes the stored map) and
//! stores it; readers check the MAC (`crypto::manifest`) and then the map they were given.
//!
//! ```text
//! offset len  field
//!      0   2  magic "VM"
//!      2   1  version (1)
//!      3   1  zero
//!      4  16  vault ID
//!     20   8  file ID, u64 LE
//!     28   4  key epoch of the key whose subkey MACs it, u32 LE
//!     32  16  that key's commitment (docs/format.md section 1)
//!     48   8  counter, u64 LE: 1 for the file's first manifest, +1 for every commit
//!     56   8  size, u64 LE
//!     64   8  stored chunk count, u64 LE
//!     72  32  chunk map digest (see `map_digest`)
//!    104  32  HMAC-SHA256 under the manifest subkey, over bytes 0..104
//! ```

use sha2::{Digest, Sha256};

use crate::acl::{u32_at, u64_at};
use crate::ids::{ChunkIndex, FileId, Generation, VaultId};

pub const MAGIC: [u8; 2] = *b"VM";
pub const VERSION_1: u8 = 1;
/// The bytes the MAC covers.
pub const BODY_BYTES: usize = 104;
pub const MAC_BYTES: usize = 32;
pub const MANIFEST_BYTES: usize = BODY_BYTES + MAC_BYTES;
const MAP_DOMAIN: &[u8] = b"vault/v1 chunk map";

/// The plain fields of a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub vault: VaultId,
    pub file: FileId,
    pub epoch: u32,
    pub commitment: [u8; 16],
    pub counter: u64,
    pub size: u64,
    pub chunks: u64,
    pub digest: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is malformed: {0}")]
    Malformed(&'static str),
    #[error("manifest has version {0}, which this build does not know")]
    UnsupportedVersion(u8),
}

impl Manifest {
    /// The manifest of a file of `size` bytes whose stored chunks are `map` (ascending), with
    /// the key fields and counter left to fill in.
    pub fn describing(
        vault: VaultId,
        file: FileId,
        size: u64,
        map: impl IntoIterator<Item = (ChunkIndex, Generation)>,
    ) -> Manifest {
        let (chunks, digest) = map_digest(map);
        Manifest {
            vault,
            file,
            epoch: 0,
            commitment: [0; 16],
            counter: 0,
            size,
            chunks,
            digest,
        }
    }

    /// Whether this manifest describes a file of `size` bytes whose stored chunks are `map`.
    pub fn describes(
        &self,
        size: u64,
        map: impl IntoIterator<Item = (ChunkIndex, Generation)>,
    ) -> bool {
        let (chunks, digest) = map_digest(map);
        self.size == size && self.chunks == chunks && self.digest == digest
    }

    /// The bytes the MAC covers.
    pub fn encode_body(&self) -> [u8; BODY_BYTES] {
        let mut out = [0u8; BODY_BYTES];
        out[..2].copy_from_slice(&MAGIC);
        out[2] = VERSION_1;
        out[4..20].copy_from_slice(&self.vault.0);
        out[20..28].copy_from_slice(&self.file.0.to_le_bytes());
        out[28..32].copy_from_slice(&self.epoch.to_le_bytes());
        out[32..48].copy_from_slice(&self.commitment);
        out[48..56].copy_from_slice(&self.counter.to_le_bytes());
        out[56..64].copy_from_slice(&self.size.to_le_bytes());
        out[64..72].copy_from_slice(&self.chunks.to_le_bytes());
        out[72..104].copy_from_slice(&self.digest);
        out
    }

    /// Parses a whole manifest (its MAC unchecked: that needs the file's key).
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        use ManifestError::Malformed;
        if bytes.len() != MANIFEST_BYTES {
            return Err(Malformed("wrong length"));
        }
        if bytes[..2] != MAGIC {
            return Err(Malformed("bad magic"));
        }
        if bytes[2] != VERSION_1 {
            return Err(ManifestError::UnsupportedVersion(bytes[2]));
        }
        if bytes[3] != 0 {
            return Err(Malformed("reserved byte is not zero"));
        }
        Ok(Manifest {
            vault: VaultId(bytes[4..20].try_into().expect("16 bytes")),
            file: FileId(u64_at(bytes, 20)),
            epoch: u32_at(bytes, 28),
            commitment: bytes[32..48].try_into().expect("16 bytes"),
            counter: u64_at(bytes, 48),
            size: u64_at(bytes, 56),
            chunks: u64_at(bytes, 64),
            digest: bytes[72..104].try_into().expect("32 bytes"),
        })
    }
}

/// The count of a chunk map's entries and its digest: SHA-256("vault/v1 chunk map" || for
/// every stored chunk, ascending by index: index u64 LE || generation u64 LE).
pub fn map_digest(map: impl IntoIterator<Item = (ChunkIndex, Generation)>) -> (u64, [u8; 32]) {
    let mut hasher = Sha256::new();
    hasher.update(MAP_DOMAIN);
    let mut count = 0u64;
    for (index, generation) in map {
        hasher.update(index.get().to_le_bytes());
        hasher.update(generation.get().to_le_bytes());
        count += 1;
    }
    (count, hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_round_trip_and_describe_only_their_map() {
        let map = [
            (ChunkIndex(0), Generation(5)),
            (ChunkIndex(2), Generation(9)),
        ];
        let manifest = Manifest {
            counter: 3,
            epoch: 2,
            ..Manifest::describing(VaultId([7; 16]), FileId(42), 20 << 20, map)
        };
        let mut bytes = manifest.encode_body().to_vec();
        bytes.extend_from_slice(&[0; MAC_BYTES]);
        assert_eq!(Manifest::parse(&bytes), Ok(manifest));
        assert!(manifest.describes(20 << 20, map));
        assert!(!manifest.describes(16 << 20, map), "another size");
        let older = [
            (ChunkIndex(0), Generation(4)),
            (ChunkIndex(2), Generation(9)),
        ];
        assert!(!manifest.describes(20 << 20, older), "an older generation");
        assert!(
            !manifest.describes(20 << 20, map[..1].iter().copied()),
            "a hole"
        );
        bytes[3] = 1;
        assert!(Manifest::parse(&bytes).is_err());
        assert!(Manifest::parse(&bytes[..100]).is_err());
    }
}
