//! Chunk sealing and opening: round trips, every tamper a storage administrator can do, nonce
//! uniqueness, and a differential check against an independent AES-GCM (ring).

use crypto::{ChunkCipher, ChunkContext, DataKey, OpenError, SealError, open, open_in_place, seal};
use format::envelope::{Header, HeaderError};
use format::ids::{ChunkIndex, FileId, Generation, VaultId};
use format::limits::{CHUNK_BYTES, ENVELOPE_BYTES};
use proptest::prelude::*;

const VAULT: VaultId = VaultId([0x5a; 16]);

fn at(file: u64, index: u64, generation: u64, last: bool) -> ChunkContext {
    ChunkContext {
        vault: VAULT,
        file: FileId(file),
        index: ChunkIndex(index),
        generation: Generation(generation),
        last,
    }
}

/// A recognisable plaintext: a 251-byte block (prime, so it never lines up with 4 KiB pages
/// or chunks) repeated. Built with `repeat` because a byte loop is slow in debug builds.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let block: Vec<u8> = (0..251u8)
        .map(|i| i.wrapping_mul(31).wrapping_add(seed))
        .collect();
    let mut out = block.repeat(len / block.len() + 1);
    out.truncate(len);
    out
}

#[test]
fn round_trip_at_the_edges() {
    let cipher = DataKey::generate().chunk_cipher();
    for len in [0, 1, 4095, 4096, CHUNK_BYTES - 1, CHUNK_BYTES] {
        let context = at(7, 2, 1, true);
        let plaintext = pattern(len, 3);
        let sealed = seal(&cipher, &context, &plaintext).expect("seal");
        assert_eq!(
            sealed.len(),
            len + ENVELOPE_BYTES,
            "sealed length for {len}"
        );
        assert_eq!(
            open(&cipher, &context, &sealed).expect("open"),
            plaintext,
            "len {len}"
        );
        let mut in_place = sealed.clone();
        assert_eq!(
            open_in_place(&cipher, &context, &mut in_place).expect("open"),
            &plaintext[..]
        );
    }
    let full = at(7, 0, 1, false);
    let sealed = seal(&cipher, &full, &pattern(CHUNK_BYTES, 1)).expect("seal full");
    assert_eq!(
        open(&cipher, &full, &sealed).expect("open full"),
        pattern(CHUNK_BYTES, 1)
    );
}

#[test]
fn seal_refuses_what_the_format_cannot_hold() {
    let cipher = DataKey::generate().chunk_cipher();
    assert_eq!(
        seal(&cipher, &at(1, 0, 1, true), &vec![0; CHUNK_BYTES + 1]),
        Err(SealError::TooLong {
            len: CHUNK_BYTES + 1
        })
    );
    assert_eq!(
        seal(&cipher, &at(1, 0, 1, false), &[0; 10]),
        Err(SealError::ShortChunk { len: 10 })
    );
    assert_eq!(
        seal(&cipher, &at(1, 1 << 32, 1, true), &[0; 10]),
        Err(SealError::Header(HeaderError::IndexOutOfRange(1 << 32)))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn round_trip_random(
        plaintext in prop::collection::vec(any::<u8>(), 0..20_000),
        file in 2u64..,
        index in 0u64..=u32::MAX as u64,
        generation in 1u64..,
    ) {
        let cipher = DataKey::generate().chunk_cipher();
        let context = at(file, index, generation, true);
        let sealed = seal(&cipher, &context, &plaintext).expect("seal");
        prop_assert_eq!(sealed.len(), plaintext.len() + ENVELOPE_BYTES);
        prop_assert_eq!(open(&cipher, &context, &sealed).expect("open"), plaintext);
    }
}

#[test]
fn round_trip_random_large_lengths() {
    let cipher = DataKey::generate().chunk_cipher();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for round in 0..8 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % (CHUNK_BYTES as u64 + 1)) as usize;
        let plaintext = pattern(len, round);
        let context = at(3, round.into(), 4, true);
        let sealed = seal(&cipher, &context, &plaintext).expect("seal");
        assert_eq!(
            open(&cipher, &context, &sealed).expect("open"),
            plaintext,
            "len {len}"
        );
    }
}

/// A file of two chunks (id 10): a full chunk 0 and a short last chunk 1 written twice,
/// sealed under the file's key. Each tamper test below gets its own error, so that the log
/// line names what happened.
struct Tampered {
    cipher: ChunkCipher,
    full: Vec<u8>,
    chunk0: Vec<u8>,
    chunk1_gen1: Vec<u8>,
    chunk1_gen2: Vec<u8>,
}

impl Tampered {
    fn new() -> Tampered {
        let cipher = DataKey::generate().chunk_cipher();
        let full = pattern(CHUNK_BYTES, 9);
        let chunk0 = seal(&cipher, &at(10, 0, 1, false), &full).expect("seal");
        let chunk1_gen1 = seal(&cipher, &at(10, 1, 1, true), b"old tail").expect("seal");
        let chunk1_gen2 = seal(&cipher, &at(10, 1, 2, true), b"new tail").expect("seal");
        Tampered {
            cipher,
            full,
            chunk0,
            chunk1_gen1,
            chunk1_gen2,
        }
    }

    fn expect_err(&self, context: ChunkContext, sealed: &[u8], want: impl Into<OpenError>) {
        let want = want.into();
        assert_eq!(
            open(&self.cipher, &context, sealed),
            Err(want.clone()),
            "{want}"
        );
    }

    /// The untouched chunks still open.
    fn check_intact(&self) {
        let chunk0 = open(&self.cipher, &at(10, 0, 1, false), &self.chunk0).expect("chunk 0");
        assert_eq!(chunk0, self.full);
        let tail = open(&self.cipher, &at(10, 1, 2, true), &self.chunk1_gen2).expect("tail");
        assert_eq!(tail, b"new tail");
    }
}

#[test]
fn a_chunk_in_another_place_fails_with_its_own_error() {
    let file = Tampered::new();
    // Another file's chunk (sealed under that file's key) put in place of ours.
    let other = DataKey::generate().chunk_cipher();
    let foreign = seal(&other, &at(11, 1, 2, true), b"new tail").expect("seal");
    file.expect_err(at(10, 1, 2, true), &foreign, HeaderError::WrongFile);
    // Our chunk 0 presented as chunk 1; a full chunk 0 marked last is still refused for its
    // index.
    let wrong_index = HeaderError::WrongIndex {
        expected: 1,
        found: 0,
    };
    file.expect_err(at(10, 1, 2, true), &file.chunk0, wrong_index.clone());
    let mut moved = file.chunk0.clone();
    moved[3] |= 1;
    file.expect_err(at(10, 1, 2, true), &moved, wrong_index);
    // An older generation put back.
    let stale = HeaderError::StaleGeneration {
        expected: 2,
        found: 1,
    };
    file.expect_err(at(10, 1, 2, true), &file.chunk1_gen1, stale);
    // A non-last chunk presented as last: the file was cut at a chunk boundary.
    file.expect_err(at(10, 0, 1, true), &file.chunk0, HeaderError::Truncated);
    // A last chunk where the file should go on.
    file.expect_err(
        at(10, 1, 2, false),
        &file.chunk1_gen2,
        HeaderError::UnexpectedLast,
    );
    file.check_intact();
}

#[test]
fn flipped_bits_and_a_wrong_key_fail_with_their_own_error() {
    let file = Tampered::new();
    for (what, at_byte) in [("nonce", 25), ("body", ENVELOPE_BYTES + 3), ("tag", 40)] {
        let mut flipped = file.chunk1_gen2.clone();
        flipped[at_byte] ^= 0x01;
        let opened = open(&file.cipher, &at(10, 1, 2, true), &flipped);
        assert_eq!(
            opened,
            Err(OpenError::AuthenticationFailed),
            "flip in {what}"
        );
    }
    // Flipped bits in the header's other fields.
    let mut flipped = file.chunk1_gen2.clone();
    flipped[0] ^= 0x01;
    file.expect_err(at(10, 1, 2, true), &flipped, HeaderError::BadMagic);
    let mut flipped = file.chunk1_gen2.clone();
    flipped[50] ^= 0x01;
    file.expect_err(at(10, 1, 2, true), &flipped, OpenError::KeyMismatch);
    // The right chunk, the wrong key.
    let other = DataKey::generate().chunk_cipher();
    let opened = open(&other, &at(10, 1, 2, true), &file.chunk1_gen2);
    assert_eq!(opened, Err(OpenError::KeyMismatch));
    file.check_intact();
}

#[test]
fn a_chunk_of_the_wrong_length_fails_with_its_own_error() {
    let file = Tampered::new();
    let short = &file.chunk1_gen2[..63];
    file.expect_err(at(10, 1, 2, true), short, HeaderError::TooShort { len: 63 });
    let mut too_long = file.chunk0.clone();
    too_long.push(0);
    let len = CHUNK_BYTES + ENVELOPE_BYTES + 1;
    file.expect_err(at(10, 0, 1, false), &too_long, HeaderError::TooLong { len });
    // A last chunk cut short is caught by the tag.
    let mut cut = file.chunk1_gen2.clone();
    cut.pop();
    file.expect_err(at(10, 1, 2, true), &cut, OpenError::AuthenticationFailed);
    file.check_intact();
}

#[test]
fn nonces_are_never_reused() {
    let cipher = DataKey::generate().chunk_cipher();
    let context = at(5, 0, 1, true);
    let mut nonces = std::collections::HashSet::new();
    for _ in 0..20_000 {
        let sealed = seal(&cipher, &context, b"same plaintext").expect("seal");
        let header = Header::parse(&sealed).expect("header");
        assert!(nonces.insert(header.nonce), "nonce repeated");
    }
}

/// The body and tag are plain AES-256-GCM: ring, given the same key, nonce and authenticated
/// data, produces identical bytes and opens ours.
#[test]
fn differential_against_ring() {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    for round in 0..16u8 {
        let key = DataKey::generate();
        let cipher = key.chunk_cipher();
        let len = [0, 1, 15, 16, 17, 4096, 65_537, CHUNK_BYTES][usize::from(round % 8)];
        let mut plaintext = vec![0u8; len];
        getrandom::fill(&mut plaintext).expect("random bytes");
        let context = at(u64::from(round) + 2, u64::from(round), 3, true);
        let sealed = seal(&cipher, &context, &plaintext).expect("seal");
        let header = Header::parse(&sealed).expect("header");
        let aad = crypto::authenticated_data(&header, &context);

        let ring_key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, cipher.encryption_key()).expect("ring key"),
        );
        let mut theirs = plaintext.clone();
        let tag = ring_key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(header.nonce),
                Aad::from(aad),
                &mut theirs,
            )
            .expect("ring seal");
        assert_eq!(
            &sealed[ENVELOPE_BYTES..],
            &theirs[..],
            "ciphertext, len {len}"
        );
        assert_eq!(tag.as_ref(), &header.tag[..], "tag, len {len}");

        let mut ours = sealed[ENVELOPE_BYTES..].to_vec();
        ours.extend_from_slice(&header.tag);
        let opened = ring_key
            .open_in_place(
                Nonce::assume_unique_for_key(header.nonce),
                Aad::from(aad),
                &mut ours,
            )
            .expect("ring opens ours");
        assert_eq!(opened, &plaintext[..]);
    }
}
