//! The 64-byte chunk envelope header (format version 1). See `docs/format.md`.
//!
//! ```text
//! offset len  field
//!      0   2  magic "VC"
//!      2   1  format version (1)
//!      3   1  flags: bit 0 = last chunk of the file; bits 1-7 zero
//!      4   4  chunk index, u32 little-endian
//!      8   8  write generation, u64 little-endian (1 for a chunk's first write)
//!     16   4  file tag: SHA-256("vault/v1 file tag" || vault id || file id LE)[0..4]
//!     20  12  AES-GCM nonce, random
//!     32  16  AES-GCM tag
//!     48  16  key commitment
//! ```
//! Bytes 0..20 (the "prefix") are authenticated data; see the `crypto` crate.

use sha2::{Digest, Sha256};

use crate::ids::{ChunkIndex, FileId, Generation, VaultId};
use crate::limits::{CHUNK_BYTES, CHUNK_INDEX_MAX, ENVELOPE_BYTES, SEALED_CHUNK_BYTES_MAX};

pub const MAGIC: [u8; 2] = *b"VC";
pub const VERSION_1: u8 = 1;
pub const FLAG_LAST: u8 = 0x01;

pub const PREFIX_BYTES: usize = 20;
pub const NONCE_BYTES: usize = 12;
pub const TAG_BYTES: usize = 16;
pub const COMMITMENT_BYTES: usize = 16;
pub const FILE_TAG_BYTES: usize = 4;

const NONCE_AT: usize = PREFIX_BYTES;
const TAG_AT: usize = NONCE_AT + NONCE_BYTES;
const COMMITMENT_AT: usize = TAG_AT + TAG_BYTES;
pub(crate) const HEADER_LAYOUT_BYTES: usize = COMMITMENT_AT + COMMITMENT_BYTES;

/// Where a chunk belongs: everything a reader expects of it before looking at its bytes.
/// Both the authenticated data and the header checks are made from this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkContext {
    pub vault: VaultId,
    pub file: FileId,
    pub index: ChunkIndex,
    pub generation: Generation,
    pub last: bool,
}

/// A parsed envelope header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub last: bool,
    pub index: u32,
    pub generation: u64,
    pub file_tag: [u8; FILE_TAG_BYTES],
    pub nonce: [u8; NONCE_BYTES],
    pub tag: [u8; TAG_BYTES],
    pub commitment: [u8; COMMITMENT_BYTES],
}

/// Why a chunk's length or header is not what its reader expects. Each tamper a storage
/// administrator can do with whole chunk files has its own variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("chunk of {len} bytes is shorter than its {ENVELOPE_BYTES}-byte envelope")]
    TooShort { len: usize },
    #[error("chunk of {len} bytes exceeds the maximum of {SEALED_CHUNK_BYTES_MAX}")]
    TooLong { len: usize },
    #[error("chunk does not start with the envelope magic")]
    BadMagic,
    #[error("chunk has format version {0}, which this build does not know")]
    UnsupportedVersion(u8),
    #[error("chunk has unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    #[error("chunk index {0} is beyond the format's maximum")]
    IndexOutOfRange(u64),
    #[error("chunk belongs to another file")]
    WrongFile,
    #[error("chunk is chunk {found} of its file, expected chunk {expected}")]
    WrongIndex { expected: u64, found: u64 },
    #[error("chunk is generation {found}, older than the current {expected} (rolled back)")]
    StaleGeneration { expected: u64, found: u64 },
    #[error("chunk is generation {found}, expected {expected}")]
    UnexpectedGeneration { expected: u64, found: u64 },
    #[error("chunk is not the last of its file, but the file ends here (truncated)")]
    Truncated,
    #[error("chunk is marked last, but the file goes on")]
    UnexpectedLast,
    #[error(
        "chunk holds {len} plaintext bytes, but only the last chunk may hold fewer than {CHUNK_BYTES}"
    )]
    ShortChunk { len: usize },
}

impl Header {
    /// The header bytes, as written in front of the ciphertext.
    pub fn encode(&self) -> [u8; ENVELOPE_BYTES] {
        let mut out = [0u8; ENVELOPE_BYTES];
        out[..PREFIX_BYTES].copy_from_slice(&self.prefix());
        out[NONCE_AT..TAG_AT].copy_from_slice(&self.nonce);
        out[TAG_AT..COMMITMENT_AT].copy_from_slice(&self.tag);
        out[COMMITMENT_AT..].copy_from_slice(&self.commitment);
        out
    }

    /// The authenticated prefix: magic, version, flags, index, generation, file tag.
    pub fn prefix(&self) -> [u8; PREFIX_BYTES] {
        let mut out = [0u8; PREFIX_BYTES];
        out[0..2].copy_from_slice(&MAGIC);
        out[2] = self.version;
        out[3] = if self.last { FLAG_LAST } else { 0 };
        out[4..8].copy_from_slice(&self.index.to_le_bytes());
        out[8..16].copy_from_slice(&self.generation.to_le_bytes());
        out[16..20].copy_from_slice(&self.file_tag);
        out
    }

    /// A version 1 header for `context`, with the cryptographic fields zeroed for the sealer
    /// to fill in.
    pub fn for_context(context: &ChunkContext) -> Result<Header, HeaderError> {
        let index = u32::try_from(context.index.get())
            .ok()
            .filter(|&i| u64::from(i) <= CHUNK_INDEX_MAX)
            .ok_or(HeaderError::IndexOutOfRange(context.index.get()))?;
        Ok(Header {
            version: VERSION_1,
            last: context.last,
            index,
            generation: context.generation.get(),
            file_tag: file_tag(context.vault, context.file),
            nonce: [0; NONCE_BYTES],
            tag: [0; TAG_BYTES],
            commitment: [0; COMMITMENT_BYTES],
        })
    }

    /// Parses the header at the start of a sealed chunk and checks the chunk's length.
    /// This is what a server can check without knowing where the chunk belongs.
    pub fn parse(sealed: &[u8]) -> Result<Header, HeaderError> {
        Header::parse_head(sealed, sealed.len())
    }

    /// [`Header::parse`] from a chunk's first bytes (`head`, at least the envelope) and its
    /// whole length `len`, for a reader that has not read the body.
    pub fn parse_head(head: &[u8], len: usize) -> Result<Header, HeaderError> {
        if len < ENVELOPE_BYTES || head.len() < ENVELOPE_BYTES {
            return Err(HeaderError::TooShort { len });
        }
        if len > SEALED_CHUNK_BYTES_MAX {
            return Err(HeaderError::TooLong { len });
        }
        if head[0..2] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = head[2];
        if version != VERSION_1 {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let flags = head[3];
        if flags & !FLAG_LAST != 0 {
            return Err(HeaderError::UnknownFlags(flags));
        }
        let last = flags & FLAG_LAST != 0;
        let body = len - ENVELOPE_BYTES;
        if !last && body != CHUNK_BYTES {
            return Err(HeaderError::ShortChunk { len: body });
        }
        Ok(Header {
            version,
            last,
            index: u32::from_le_bytes(take(head, 4)),
            generation: u64::from_le_bytes(take(head, 8)),
            file_tag: take(head, 16),
            nonce: take(head, NONCE_AT),
            tag: take(head, TAG_AT),
            commitment: take(head, COMMITMENT_AT),
        })
    }

    /// Checks that this header is the one a reader at `expected` must find: same file,
    /// position, generation and last-chunk flag. The order of the checks decides which error a
    /// chunk with several faults reports; it goes from coarse (whose chunk) to fine.
    pub fn check_context(&self, expected: &ChunkContext) -> Result<(), HeaderError> {
        if self.file_tag != file_tag(expected.vault, expected.file) {
            return Err(HeaderError::WrongFile);
        }
        let (index, generation) = (expected.index.get(), expected.generation.get());
        if u64::from(self.index) != index {
            return Err(HeaderError::WrongIndex {
                expected: index,
                found: self.index.into(),
            });
        }
        if self.generation < generation {
            return Err(HeaderError::StaleGeneration {
                expected: generation,
                found: self.generation,
            });
        }
        if self.generation != generation {
            return Err(HeaderError::UnexpectedGeneration {
                expected: generation,
                found: self.generation,
            });
        }
        match (self.last, expected.last) {
            (false, true) => Err(HeaderError::Truncated),
            (true, false) => Err(HeaderError::UnexpectedLast),
            _ => Ok(()),
        }
    }
}

/// The 4-byte file tag. It lets a reader (and the server) name a chunk that was moved between
/// files; the security of that check rests on the authenticated data, not on these 32 bits.
pub fn file_tag(vault: VaultId, file: FileId) -> [u8; FILE_TAG_BYTES] {
    let digest = Sha256::new()
        .chain_update(b"vault/v1 file tag")
        .chain_update(vault.0)
        .chain_update(file.0.to_le_bytes())
        .finalize();
    take(&digest, 0)
}

fn take<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(last: bool) -> ChunkContext {
        ChunkContext {
            vault: VaultId([7; 16]),
            file: FileId(42),
            index: ChunkIndex(3),
            generation: Generation(9),
            last,
        }
    }

    #[test]
    fn encode_then_parse_is_identity() {
        let mut header = Header::for_context(&context(true)).expect("header");
        header.nonce = [1; NONCE_BYTES];
        header.tag = [2; TAG_BYTES];
        header.commitment = [3; COMMITMENT_BYTES];
        let mut sealed = header.encode().to_vec();
        sealed.extend_from_slice(b"body");
        assert_eq!(Header::parse(&sealed), Ok(header));
        assert_eq!(
            Header::parse_head(&sealed[..ENVELOPE_BYTES], sealed.len()),
            Ok(header),
            "the envelope and the length are all parsing needs"
        );
        assert_eq!(header.check_context(&context(true)), Ok(()));
    }

    #[test]
    fn non_last_chunk_must_be_full() {
        let header = Header::for_context(&context(false)).expect("header");
        let mut sealed = header.encode().to_vec();
        sealed.extend_from_slice(&[0; 10]);
        assert_eq!(
            Header::parse(&sealed),
            Err(HeaderError::ShortChunk { len: 10 })
        );
    }

    #[test]
    fn bad_lengths_magic_version_and_flags_are_refused() {
        let header = Header::for_context(&context(true))
            .expect("header")
            .encode();
        assert_eq!(
            Header::parse(&header[..63]),
            Err(HeaderError::TooShort { len: 63 })
        );
        let too_long = vec![0u8; SEALED_CHUNK_BYTES_MAX + 1];
        assert!(matches!(
            Header::parse(&too_long),
            Err(HeaderError::TooLong { .. })
        ));
        let mut bad = header;
        bad[0] = b'X';
        assert_eq!(Header::parse(&bad), Err(HeaderError::BadMagic));
        let mut bad = header;
        bad[2] = 2;
        assert_eq!(Header::parse(&bad), Err(HeaderError::UnsupportedVersion(2)));
        let mut bad = header;
        bad[3] |= 0x80;
        assert_eq!(Header::parse(&bad), Err(HeaderError::UnknownFlags(0x81)));
    }

    #[test]
    fn index_beyond_u32_is_refused() {
        let mut ctx = context(true);
        ctx.index = ChunkIndex(u64::from(u32::MAX) + 1);
        assert_eq!(
            Header::for_context(&ctx),
            Err(HeaderError::IndexOutOfRange(ctx.index.get()))
        );
    }
}
