//! Reading a few bytes of a chunk again without opening all of it.
//!
//! The format has one GCM tag per 8 MiB chunk, so a chunk's bytes are trusted only after the
//! tag was checked over all of them. A reader that comes back for 4 KiB of a chunk it opened
//! before would pay that whole check again. Instead, when a chunk opens, the digest of each
//! 4 KiB block of its ciphertext is kept (16 bytes each, 32 KiB per full chunk); a later read
//! takes only the ciphertext blocks that hold the bytes it wants, checks each against its
//! digest, and decrypts just those, with AES-CTR at the counter GCM used for them. A block
//! passes only if it is, byte for byte, the ciphertext whose tag was checked (SHA-256,
//! truncated to 128 bits: finding another block with the same digest is a second preimage).
//!
//! Nothing about the format changes: this is a way to read it, kept in the reader's memory.

use aes::Aes256;
use ctr::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use format::envelope::{ChunkContext, Header, NONCE_BYTES};
use format::limits::ENVELOPE_BYTES;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::chunk::{OpenError, open_in_place};
use crate::keys::ChunkCipher;

/// Ciphertext bytes each digest covers (the last block of a chunk may be shorter).
pub const BLOCK_BYTES: usize = 4096;
/// Bytes kept per block.
pub const DIGEST_BYTES: usize = 16;

const DOMAIN: &[u8] = b"vault/v1 chunk block";

type Ctr = ctr::Ctr32BE<Aes256>;

/// Why bytes read back from a chunk's blocks were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("asked for bytes {start}..{end} of a chunk of {len} bytes")]
    OutOfRange {
        start: usize,
        end: usize,
        len: usize,
    },
    #[error("{got} bytes of blocks where {expected} were needed")]
    WrongLength { expected: usize, got: usize },
    #[error("block {block} is not the ciphertext that was authenticated")]
    Changed { block: usize },
}

/// What reading blocks of one opened chunk needs: its nonce, its length and the digest of
/// every block of its ciphertext. Holds nothing secret (the ciphertext is public).
#[derive(Clone)]
pub struct ChunkBlocks {
    nonce: [u8; NONCE_BYTES],
    len: usize,
    digests: Box<[[u8; DIGEST_BYTES]]>,
}

impl std::fmt::Debug for ChunkBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ChunkBlocks({} bytes, {} blocks)",
            self.len,
            self.digests.len()
        )
    }
}

fn digest(block: usize, bytes: &[u8]) -> [u8; DIGEST_BYTES] {
    let mut hash = Sha256::new();
    hash.update(DOMAIN);
    hash.update((block as u64).to_le_bytes());
    hash.update(bytes);
    let full = hash.finalize();
    let mut out = [0u8; DIGEST_BYTES];
    out.copy_from_slice(&full[..DIGEST_BYTES]);
    out
}

/// Like [`open_in_place`], and also returns the digests of the chunk's blocks, taken from the
/// ciphertext before it was decrypted, so that bytes of it can be read again later (see
/// [`ChunkBlocks::open_range`]). The digests exist only if the whole chunk opened.
pub fn open_in_place_keeping_blocks<'a>(
    cipher: &ChunkCipher,
    expected: &ChunkContext,
    sealed: &'a mut [u8],
) -> Result<(&'a mut [u8], ChunkBlocks), OpenError> {
    let header = Header::parse(sealed)?;
    let body = sealed.get(ENVELOPE_BYTES..).unwrap_or_default();
    let digests = body
        .chunks(BLOCK_BYTES)
        .enumerate()
        .map(|(block, bytes)| digest(block, bytes))
        .collect();
    let blocks = ChunkBlocks {
        nonce: header.nonce,
        len: body.len(),
        digests,
    };
    let plaintext = open_in_place(cipher, expected, sealed)?;
    Ok((plaintext, blocks))
}

impl ChunkBlocks {
    /// The chunk's plaintext length.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Memory this takes, roughly.
    pub fn bytes(&self) -> usize {
        self.digests.len() * DIGEST_BYTES + std::mem::size_of::<Self>()
    }

    /// Where in the sealed chunk (its file: header included) the blocks holding plaintext
    /// bytes `start..end` lie.
    pub fn sealed_range(
        &self,
        start: usize,
        end: usize,
    ) -> Result<std::ops::Range<usize>, BlockError> {
        if start >= end || end > self.len {
            return Err(BlockError::OutOfRange {
                start,
                end,
                len: self.len,
            });
        }
        let first = start / BLOCK_BYTES * BLOCK_BYTES;
        let last = end.div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        Ok(ENVELOPE_BYTES + first..ENVELOPE_BYTES + last.min(self.len))
    }

    /// Plaintext bytes `start..end`, from `sealed` = the bytes of the sealed chunk at
    /// [`ChunkBlocks::sealed_range`]`(start, end)`: each block is checked against its digest
    /// before anything is decrypted.
    pub fn open_range(
        &self,
        cipher: &ChunkCipher,
        start: usize,
        end: usize,
        sealed: &[u8],
    ) -> Result<Vec<u8>, BlockError> {
        let range = self.sealed_range(start, end)?;
        if sealed.len() != range.len() {
            return Err(BlockError::WrongLength {
                expected: range.len(),
                got: sealed.len(),
            });
        }
        let first_block = (range.start - ENVELOPE_BYTES) / BLOCK_BYTES;
        for (i, bytes) in sealed.chunks(BLOCK_BYTES).enumerate() {
            let block = first_block + i;
            let expected = &self.digests[block];
            if !bool::from(digest(block, bytes).ct_eq(expected)) {
                return Err(BlockError::Changed { block });
            }
        }
        let skip = start - (range.start - ENVELOPE_BYTES);
        let mut plaintext = sealed[skip..skip + (end - start)].to_vec();
        // GCM's counter block J0 is the nonce and 1; it masks the tag, and the plaintext's
        // first 16 bytes use J0 + 1: byte `p` of the plaintext is byte `16 + p` of the stream.
        let mut iv = [0u8; 16];
        iv[..NONCE_BYTES].copy_from_slice(&self.nonce);
        iv[15] = 1;
        let mut ctr = Ctr::new(cipher.encryption_key().into(), &iv.into());
        ctr.seek(16 + start as u64);
        ctr.apply_keystream(&mut plaintext);
        Ok(plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DataKey;
    use format::ids::{ChunkIndex, FileId, Generation, VaultId};

    fn context() -> ChunkContext {
        ChunkContext {
            vault: VaultId([7; 16]),
            file: FileId(42),
            index: ChunkIndex(3),
            generation: Generation(9),
            last: true,
        }
    }

    #[test]
    fn ranges_read_back_what_was_sealed_and_refuse_any_change() {
        let cipher = DataKey::generate().chunk_cipher();
        let plaintext: Vec<u8> = (0..3 * BLOCK_BYTES + 100).map(|i| (i * 7) as u8).collect();
        let sealed = crate::seal(&cipher, &context(), &plaintext).expect("seal");
        let mut opened = sealed.clone();
        let (whole, blocks) =
            open_in_place_keeping_blocks(&cipher, &context(), &mut opened).expect("open");
        assert_eq!(whole, &plaintext[..]);
        assert_eq!(blocks.len(), plaintext.len());
        for (start, end) in [
            (0, 1),
            (5, 4096),
            (4095, 4097),
            (100, plaintext.len()),
            (12_300, 12_388),
        ] {
            let range = blocks.sealed_range(start, end).expect("in range");
            let got = blocks
                .open_range(&cipher, start, end, &sealed[range])
                .expect("open a range");
            assert_eq!(got, &plaintext[start..end], "{start}..{end}");
        }
        let range = blocks.sealed_range(5000, 5001).expect("in range");
        let mut changed = sealed[range.clone()].to_vec();
        changed[17] ^= 1;
        assert_eq!(
            blocks.open_range(&cipher, 5000, 5001, &changed),
            Err(BlockError::Changed { block: 1 })
        );
        let elsewhere = blocks.sealed_range(0, 1).expect("in range");
        assert_eq!(
            blocks.open_range(&cipher, 5000, 5001, &sealed[elsewhere]),
            Err(BlockError::Changed { block: 1 }),
            "another block's bytes, moved"
        );
        assert!(matches!(
            blocks.open_range(&cipher, 5000, 5001, &sealed[range.start..range.end - 1]),
            Err(BlockError::WrongLength { .. })
        ));
        assert!(matches!(
            blocks.sealed_range(0, plaintext.len() + 1),
            Err(BlockError::OutOfRange { .. })
        ));
    }

    #[test]
    fn no_digests_from_a_chunk_that_does_not_open() {
        let cipher = DataKey::generate().chunk_cipher();
        let mut sealed = crate::seal(&cipher, &context(), &[1; 5000]).expect("seal");
        sealed[200] ^= 1;
        assert_eq!(
            open_in_place_keeping_blocks(&cipher, &context(), &mut sealed).map(|(_, b)| b.len()),
            Err(OpenError::AuthenticationFailed)
        );
    }
}
