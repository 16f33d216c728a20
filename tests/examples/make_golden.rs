//! Writes the golden fixture of the current format version and prints the test vectors for
//! `docs/format.md`. Run once per format version; the output is committed and never rewritten:
//! `cargo run -p tests --example make_golden -- tests/fixtures/golden-v1`.

use std::fs;
use std::path::Path;

use crypto::{ChunkContext, DataKey, WrapContext, WrapKind, seal, wrap};
use format::ids::{ChunkIndex, FileId, Generation, VaultId};
use format::layout;
use identity::{Identity, KdfParams, KeyFile, KeyKind};
use sha2::{Digest, Sha256};

const PASSPHRASE: &str = "golden fixture v1";

fn main() -> std::io::Result<()> {
    let out = std::env::args()
        .nth(1)
        .expect("usage: make_golden OUTPUT_DIR");
    let out = Path::new(&out);
    fs::create_dir_all(out.join("chunks"))?;
    fs::create_dir_all(out.join("keys"))?;

    let vault = VaultId(identity::random_bytes());
    let user = Identity::generate();
    let key_file = KeyFile::seal(
        &user,
        KeyKind::User,
        PASSPHRASE.as_bytes(),
        KdfParams::MINIMUM,
    )
    .expect("seal");
    fs::write(out.join("user.vkey"), key_file.as_bytes())?;

    let mut manifest = format!(
        "# Golden fixture, format version 1. Never edit: old data must always open.\n\
         vault = \"{}\"\npassphrase = \"{PASSPHRASE}\"\nkey_file = \"user.vkey\"\n",
        vault.to_hex()
    );
    // (file ID, index, generation, plaintext bytes): a 1-byte file, one page rewritten three
    // times, and the tail chunk of a sparse file.
    let files: [(u64, u64, u64, usize); 3] = [
        (0x1a2b_3c4d_5e6f_7081, 0, 1, 1),
        (0x9f8e_7d6c_5b4a_3928, 0, 3, 4096),
        (0x0123_4567_89ab_cdef, 5, 2, 100_000),
    ];
    for (id, index, generation, len) in files {
        let file = FileId(id);
        let key = DataKey::generate();
        let cipher = key.chunk_cipher();
        let wrapped = wrap(
            &key,
            &user.public(),
            &WrapContext {
                vault,
                kind: WrapKind::FileKey,
                object: id,
            },
        )
        .map_err(std::io::Error::other)?;
        let wrapped_name = format!("keys/{}.wrapped", file.to_hex());
        fs::write(out.join(&wrapped_name), &wrapped)?;
        manifest += &format!(
            "\n[[file]]\nid = \"{}\"\nwrapped_key = \"{wrapped_name}\"\n",
            file.to_hex()
        );
        {
            let plaintext: Vec<u8> = (0..len).map(|i| (i % 251) as u8 ^ (index as u8)).collect();
            let context = ChunkContext {
                vault,
                file,
                index: ChunkIndex(index),
                generation: Generation(generation),
                last: true,
            };
            let sealed = seal(&cipher, &context, &plaintext).expect("seal");
            // The fixture is layout 1, as its name says (storaged converts it on open).
            let path = layout::v1_chunk_path(&out.join("chunks"), file, index, generation);
            fs::create_dir_all(path.parent().expect("chunk dir"))?;
            fs::write(&path, &sealed)?;
            manifest += &format!(
                "[[file.chunk]]\nindex = {index}\ngeneration = {generation}\nlast = true\n\
                 plaintext_sha256 = \"{}\"\n",
                hex::encode(Sha256::digest(&plaintext))
            );
        }
    }
    fs::write(out.join("manifest.toml"), manifest)?;
    print_vectors(vault);
    Ok(())
}

fn print_vectors(vault: VaultId) {
    let key = DataKey::generate();
    let cipher = key.chunk_cipher();
    let file = FileId(0x0000_0000_0000_0002);
    let context = ChunkContext {
        vault,
        file,
        index: ChunkIndex(3),
        generation: Generation(7),
        last: true,
    };
    let plaintext = b"vault format v1 test vector";
    let sealed = seal(&cipher, &context, plaintext).expect("seal");
    println!("chunk.data_key = {}", hex::encode(key.as_bytes()));
    println!(
        "chunk.encryption_key = {}",
        hex::encode(cipher.encryption_key())
    );
    println!("chunk.commitment = {}", hex::encode(cipher.commitment()));
    println!("chunk.vault = {}", vault.to_hex());
    println!("chunk.file = {}", file.to_hex());
    println!("chunk.index = 3");
    println!("chunk.generation = 7");
    println!("chunk.last = true");
    println!(
        "chunk.file_tag = {}",
        hex::encode(format::envelope::file_tag(vault, file))
    );
    println!("chunk.plaintext = {}", hex::encode(plaintext));
    println!("chunk.sealed = {}", hex::encode(&sealed));

    let recipient = Identity::generate();
    let wrapped = wrap(
        &key,
        &recipient.public(),
        &WrapContext {
            vault,
            kind: WrapKind::FileKey,
            object: file.0,
        },
    )
    .expect("a generated key is never of low order");
    let recipient_file = KeyFile::seal(
        &recipient,
        KeyKind::User,
        b"test vector",
        KdfParams::MINIMUM,
    )
    .expect("seal");
    println!("keyfile.passphrase = {}", hex::encode(b"test vector"));
    println!("keyfile.bytes = {}", hex::encode(recipient_file.as_bytes()));
    println!(
        "keyfile.signing_public = {}",
        hex::encode(recipient.public().signing)
    );
    println!(
        "keyfile.wrapping_public = {}",
        hex::encode(recipient.public().wrapping)
    );
    println!(
        "keyfile.fingerprint = {}",
        recipient.public().fingerprint().to_hex()
    );
    println!("wrap.vault = {}", vault.to_hex());
    println!("wrap.kind = 1");
    println!("wrap.object = {}", file.to_hex());
    println!("wrap.recipient_key_file = keyfile.bytes");
    println!("wrap.wrapped = {}", hex::encode(&wrapped));
    println!("wrap.data_key = {}", hex::encode(key.as_bytes()));
}
