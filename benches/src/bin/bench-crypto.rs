//! Seal and open throughput of one 8 MiB chunk on one core, with ring's AES-256-GCM on the same
//! buffer for reference; then what a lookup in a directory of sealed names adds (sealing the
//! name, checking the entry). Run with `benches/crypto.sh`.

use std::time::Duration;

use benches::{gigabytes_per_second, median_time, print_table};
use crypto::{ChunkContext, DataKey, NameKeys, open, open_in_place, seal};
use format::ids::{ChunkIndex, FileId, Generation, VaultId};
use format::limits::CHUNK_BYTES;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

fn main() {
    let budget = Duration::from_secs(2);
    let cipher = DataKey::generate().chunk_cipher();
    let context = ChunkContext {
        vault: VaultId([1; 16]),
        file: FileId(2),
        index: ChunkIndex(0),
        generation: Generation::FIRST,
        last: false,
    };
    let plaintext: Vec<u8> = (0..CHUNK_BYTES).map(|i| (i % 253) as u8).collect();
    let sealed = seal(&cipher, &context, &plaintext).expect("seal");

    let seal_time = median_time(10, budget, || {
        std::hint::black_box(seal(&cipher, &context, &plaintext).expect("seal"));
    });
    let open_time = median_time(10, budget, || {
        std::hint::black_box(open(&cipher, &context, &sealed).expect("open"));
    });
    let open_in_place_time = median_time(10, budget, || {
        let mut copy = sealed.clone();
        std::hint::black_box(open_in_place(&cipher, &context, &mut copy).expect("open"));
    });
    let copy_time = median_time(10, budget, || {
        std::hint::black_box(sealed.clone());
    });

    let ring_key =
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, cipher.encryption_key()).expect("ring key"));
    let mut buffer = plaintext.clone();
    let ring_time = median_time(10, budget, || {
        let tag = ring_key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([7; 12]),
                Aad::empty(),
                &mut buffer,
            )
            .expect("ring seal");
        let _ = std::hint::black_box(tag);
    });

    let gbs = |time| format!("{:.2}", gigabytes_per_second(CHUNK_BYTES, time));
    let ms = |time: Duration| format!("{:.2}", time.as_secs_f64() * 1e3);
    print_table(
        &["operation (8 MiB chunk, 1 core)", "GB/s", "ms per chunk"],
        &[
            vec![
                "vault seal (aes-gcm 0.11)".into(),
                gbs(seal_time),
                ms(seal_time),
            ],
            vec!["vault open".into(), gbs(open_time), ms(open_time)],
            vec![
                "vault open in place (incl. 8 MiB copy)".into(),
                gbs(open_in_place_time),
                ms(open_in_place_time),
            ],
            vec![
                "memcpy of 8 MiB (reference)".into(),
                gbs(copy_time),
                ms(copy_time),
            ],
            vec![
                "ring 0.17 AES-256-GCM seal (reference)".into(),
                gbs(ring_time),
                ms(ring_time),
            ],
        ],
    );
    names(budget);
}

/// A lookup's added work in a directory of sealed names (docs/format.md section 5.6): seal
/// the name (AES-SIV), check the entry's seal (HMAC-SHA256); per operation, 1,000 at a time.
fn names(budget: Duration) {
    let keys = NameKeys::derive(&DataKey::generate(), VaultId([1; 16]), FileId(3));
    let name = b"a-typical-file-name.txt";
    let sealed = keys.seal_name(name);
    let seal = keys.entry_seal(&sealed, FileId(4), 1);
    let per_op = |work: &dyn Fn()| {
        let time = median_time(10, budget, || (0..1000).for_each(|_| work()));
        format!("{:.2}", time.as_secs_f64() * 1e6 / 1000.0)
    };
    print_table(
        &["directory of sealed names (23-byte name)", "us per op"],
        &[
            vec![
                "seal a name (AES-256-SIV)".into(),
                per_op(&|| {
                    std::hint::black_box(keys.seal_name(std::hint::black_box(name)));
                }),
            ],
            vec![
                "open a name (a listing's)".into(),
                per_op(&|| {
                    std::hint::black_box(keys.open_name(&sealed).expect("opens"));
                }),
            ],
            vec![
                "check an entry seal (HMAC-SHA256)".into(),
                per_op(&|| {
                    let checked = keys.check_entry(&sealed, FileId(4), 1, &seal);
                    std::hint::black_box(checked).expect("checks");
                }),
            ],
        ],
    );
}
