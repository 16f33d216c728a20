//! Sealing and opening one chunk: AES-256-GCM under the file's chunk subkey, with the
//! envelope header in front. See `docs/format.md` for the layout and the reasoning.

use aes_gcm::aead::AeadInOut;
use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::{Nonce, Tag};
use format::envelope::{ChunkContext, Header, HeaderError, PREFIX_BYTES};
use format::limits::{CHUNK_BYTES, ENVELOPE_BYTES};
use subtle::ConstantTimeEq;

use crate::keys::ChunkCipher;

/// Length of the authenticated data: the header prefix, the vault ID and the file ID.
pub const AAD_BYTES: usize = PREFIX_BYTES + 16 + 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("chunk plaintext of {len} bytes exceeds {CHUNK_BYTES}")]
    TooLong { len: usize },
    #[error("only the last chunk may hold fewer than {CHUNK_BYTES} bytes, this one holds {len}")]
    ShortChunk { len: usize },
    #[error(transparent)]
    Header(#[from] HeaderError),
}

/// Why a chunk did not open. Every variant means the reader must not see these bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("chunk was sealed under a different key (key commitment mismatch)")]
    KeyMismatch,
    #[error("chunk failed authentication (corrupted or forged)")]
    AuthenticationFailed,
}

/// The authenticated data: the header's first 20 bytes (magic, version, flags, index,
/// generation, file tag), then the vault ID and the file ID (u64 LE).
pub fn authenticated_data(header: &Header, context: &ChunkContext) -> [u8; AAD_BYTES] {
    let mut out = [0u8; AAD_BYTES];
    out[..PREFIX_BYTES].copy_from_slice(&header.prefix());
    out[PREFIX_BYTES..PREFIX_BYTES + 16].copy_from_slice(&context.vault.0);
    out[PREFIX_BYTES + 16..].copy_from_slice(&context.file.0.to_le_bytes());
    out
}

/// Seals `plaintext` as the chunk at `context`: the result is exactly
/// `plaintext.len() + 64` bytes. Every call draws a fresh random nonce.
pub fn seal(
    cipher: &ChunkCipher,
    context: &ChunkContext,
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let len = plaintext.len();
    if len > CHUNK_BYTES {
        return Err(SealError::TooLong { len });
    }
    if !context.last && len != CHUNK_BYTES {
        return Err(SealError::ShortChunk { len });
    }
    let mut header = Header::for_context(context)?;
    header.nonce = identity::random_bytes();
    header.commitment = cipher.commitment;
    let aad = authenticated_data(&header, context);

    let mut sealed = vec![0u8; ENVELOPE_BYTES + len];
    let body = InOutBuf::new(plaintext, &mut sealed[ENVELOPE_BYTES..])
        .expect("output sized to the plaintext");
    let tag = cipher
        .aead
        .encrypt_inout_detached(&Nonce::from(header.nonce), &aad, body)
        .expect("a chunk is within AES-GCM's length limits");
    header.tag = tag.into();
    sealed[..ENVELOPE_BYTES].copy_from_slice(&header.encode());
    debug_assert_eq!(sealed.len(), len + ENVELOPE_BYTES);
    Ok(sealed)
}

/// Opens a sealed chunk that must be the one at `expected`, returning its plaintext.
///
/// Checks, in order: length and header form, whose chunk it is (file, index, generation,
/// last-chunk flag), the key commitment, then the GCM tag. Only then are bytes returned.
pub fn open(
    cipher: &ChunkCipher,
    expected: &ChunkContext,
    sealed: &[u8],
) -> Result<Vec<u8>, OpenError> {
    let header = check_envelope(cipher, expected, sealed)?;
    let mut plaintext = vec![0u8; sealed.len() - ENVELOPE_BYTES];
    let body = InOutBuf::new(&sealed[ENVELOPE_BYTES..], &mut plaintext)
        .expect("output sized to the ciphertext");
    decrypt(cipher, expected, &header, body)?;
    Ok(plaintext)
}

/// Like [`open`], decrypting in the chunk's own buffer (no second 8 MiB allocation); returns
/// the plaintext, which is the buffer past the envelope header. On an error the buffer holds
/// no plaintext, but it may no longer hold the ciphertext either.
pub fn open_in_place<'a>(
    cipher: &ChunkCipher,
    expected: &ChunkContext,
    sealed: &'a mut [u8],
) -> Result<&'a mut [u8], OpenError> {
    let header = check_envelope(cipher, expected, sealed)?;
    let body = &mut sealed[ENVELOPE_BYTES..];
    decrypt(cipher, expected, &header, (&mut *body).into())?;
    Ok(body)
}

fn check_envelope(
    cipher: &ChunkCipher,
    expected: &ChunkContext,
    sealed: &[u8],
) -> Result<Header, OpenError> {
    let header = Header::parse(sealed)?;
    header.check_context(expected)?;
    if !bool::from(header.commitment.ct_eq(&cipher.commitment)) {
        return Err(OpenError::KeyMismatch);
    }
    Ok(header)
}

fn decrypt(
    cipher: &ChunkCipher,
    expected: &ChunkContext,
    header: &Header,
    body: InOutBuf<'_, '_, u8>,
) -> Result<(), OpenError> {
    let aad = authenticated_data(header, expected);
    cipher
        .aead
        .decrypt_inout_detached(
            &Nonce::from(header.nonce),
            &aad,
            body,
            &Tag::from(header.tag),
        )
        .map_err(|_| OpenError::AuthenticationFailed)
}
