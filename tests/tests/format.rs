//! The format as documented and as stored: the test vectors in `docs/format.md` and the golden
//! fixture under `tests/fixtures/` must open with this build, forever.

use std::collections::HashMap;
use std::fs;

use crypto::{ChunkContext, DataKey, WrapContext, WrapKind, open, unwrap};
use format::envelope::file_tag;
use format::ids::{ChunkIndex, FileId, Generation, VaultId};
use format::layout;
use identity::{KeyFile, KeyKind};
use sha2::{Digest, Sha256};

/// `name = value` lines of the ```vectors blocks in docs/format.md.
fn documented_vectors() -> HashMap<String, String> {
    let text = fs::read_to_string(tests::workspace_root().join("docs/format.md"))
        .expect("docs/format.md is readable");
    let mut vectors = HashMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("```") {
            inside = line == "```vectors";
            continue;
        }
        if let Some((name, value)) = line.split_once(" = ").filter(|_| inside) {
            vectors.insert(name.trim().to_string(), value.trim().to_string());
        }
    }
    vectors
}

fn bytes(vectors: &HashMap<String, String>, name: &str) -> Vec<u8> {
    let value = vectors
        .get(name)
        .unwrap_or_else(|| panic!("vector {name} is documented"));
    hex::decode(value).unwrap_or_else(|_| panic!("vector {name} is hex"))
}

fn array<const N: usize>(vectors: &HashMap<String, String>, name: &str) -> [u8; N] {
    bytes(vectors, name)
        .try_into()
        .unwrap_or_else(|_| panic!("vector {name} has {N} bytes"))
}

fn file_id(vectors: &HashMap<String, String>, name: &str) -> FileId {
    FileId(u64::from_be_bytes(array(vectors, name)))
}

#[test]
fn documented_chunk_vector_opens() {
    let v = documented_vectors();
    let key = DataKey::from_bytes(array(&v, "chunk.data_key"));
    let cipher = key.chunk_cipher();
    assert_eq!(
        cipher.encryption_key()[..],
        bytes(&v, "chunk.encryption_key")[..]
    );
    assert_eq!(cipher.commitment()[..], bytes(&v, "chunk.commitment")[..]);
    let vault = VaultId(array(&v, "chunk.vault"));
    let file = file_id(&v, "chunk.file");
    assert_eq!(file_tag(vault, file)[..], bytes(&v, "chunk.file_tag")[..]);
    let context = ChunkContext {
        vault,
        file,
        index: ChunkIndex(3),
        generation: Generation(7),
        last: true,
    };
    let plaintext = open(&cipher, &context, &bytes(&v, "chunk.sealed")).expect("vector opens");
    assert_eq!(plaintext, bytes(&v, "chunk.plaintext"));
}

/// A range read back from block digests and AES-CTR (`crypto::ChunkBlocks`) is the same bytes
/// as the documented chunk vector's plaintext there: GCM's keystream, at GCM's counters.
#[test]
fn documented_chunk_vector_reads_back_by_range() {
    let v = documented_vectors();
    let cipher = DataKey::from_bytes(array(&v, "chunk.data_key")).chunk_cipher();
    let context = ChunkContext {
        vault: VaultId(array(&v, "chunk.vault")),
        file: file_id(&v, "chunk.file"),
        index: ChunkIndex(3),
        generation: Generation(7),
        last: true,
    };
    let sealed = bytes(&v, "chunk.sealed");
    let plaintext = bytes(&v, "chunk.plaintext");
    let mut opened = sealed.clone();
    let (_, blocks) =
        crypto::open_in_place_keeping_blocks(&cipher, &context, &mut opened).expect("vector opens");
    for start in 0..plaintext.len() {
        for end in [
            start + 1,
            (start + 17).min(plaintext.len()),
            plaintext.len(),
        ] {
            let range = blocks.sealed_range(start, end).expect("in range");
            let got = blocks
                .open_range(&cipher, start, end, &sealed[range])
                .expect("a range opens");
            assert_eq!(got, plaintext[start..end], "{start}..{end}");
        }
    }
}

#[test]
fn documented_key_file_and_wrap_vectors_open() {
    let v = documented_vectors();
    let file = KeyFile::parse(&bytes(&v, "keyfile.bytes")).expect("key file parses");
    assert_public_keys(&file.public(), &v, "keyfile");
    assert_eq!(
        file.public().fingerprint().0[..],
        bytes(&v, "keyfile.fingerprint")[..]
    );
    let me = file
        .open(&bytes(&v, "keyfile.passphrase"), KeyKind::User)
        .expect("opens");

    let context = WrapContext {
        vault: VaultId(array(&v, "wrap.vault")),
        kind: WrapKind::FileKey,
        object: file_id(&v, "wrap.object").0,
    };
    let key = unwrap(&bytes(&v, "wrap.wrapped"), &me, &context).expect("unwraps");
    assert_eq!(key.as_bytes()[..], bytes(&v, "wrap.data_key")[..]);
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    vault: String,
    passphrase: String,
    key_file: String,
    file: Vec<ManifestFile>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    id: String,
    wrapped_key: String,
    chunk: Vec<ManifestChunk>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestChunk {
    index: u64,
    generation: u64,
    last: bool,
    plaintext_sha256: String,
}

#[test]
fn golden_fixture_v1_opens() {
    let dir = tests::golden_dir();
    let manifest: Manifest =
        toml::from_str(&fs::read_to_string(dir.join("manifest.toml")).expect("manifest"))
            .expect("manifest parses");
    let vault = VaultId::from_hex(&manifest.vault).expect("vault id");
    let key_file = KeyFile::parse(&fs::read(dir.join(&manifest.key_file)).expect("key file"))
        .expect("key file parses");
    let me = key_file
        .open(manifest.passphrase.as_bytes(), KeyKind::User)
        .expect("opens");
    let mut opened = 0;
    // The fixture's chunk root is in layout 1, as the build that made it wrote it; storaged
    // converts such a root when it opens it. Read every chunk from a converted copy.
    let converted = tempfile::tempdir().expect("tempdir");
    for entry in &manifest.file {
        let file = FileId(u64::from_str_radix(&entry.id, 16).expect("file id"));
        for chunk in &entry.chunk {
            let from =
                layout::v1_chunk_path(&dir.join("chunks"), file, chunk.index, chunk.generation);
            let to = layout::v1_chunk_path(converted.path(), file, chunk.index, chunk.generation);
            fs::create_dir_all(to.parent().expect("chunk dir")).expect("mkdir");
            fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        }
    }
    storaged::chunkstore::DirChunkStore::open(converted.path(), false).expect("converts");
    for entry in &manifest.file {
        let file = FileId(u64::from_str_radix(&entry.id, 16).expect("file id"));
        let wrapped = fs::read(dir.join(&entry.wrapped_key)).expect("wrapped key");
        let context = WrapContext {
            vault,
            kind: WrapKind::FileKey,
            object: file.0,
        };
        let cipher = unwrap(&wrapped, &me, &context)
            .expect("file key unwraps")
            .chunk_cipher();
        for chunk in &entry.chunk {
            let path = layout::chunk_path(converted.path(), file, chunk.index, chunk.generation);
            let sealed = fs::read(&path).expect("chunk file");
            let context = ChunkContext {
                vault,
                file,
                index: ChunkIndex(chunk.index),
                generation: Generation(chunk.generation),
                last: chunk.last,
            };
            let plaintext = open(&cipher, &context, &sealed)
                .unwrap_or_else(|e| panic!("{} does not open: {e}", path.display()));
            assert_eq!(
                hex::encode(Sha256::digest(&plaintext)),
                chunk.plaintext_sha256
            );
            opened += 1;
        }
    }
    assert_eq!(opened, 3, "the fixture holds three chunks");
}

#[test]
fn documented_handoff_vector_decodes() {
    let v = documented_vectors();
    let identity = identity::Identity::from_secrets(
        &array(&v, "handoff.signing_seed"),
        &array(&v, "handoff.wrapping_secret"),
    );
    let settings = String::from_utf8(bytes(&v, "handoff.settings")).expect("UTF-8 settings");
    let message = bytes(&v, "handoff.bytes");
    let opened = identity::Handoff::decode(&message, KeyKind::User).expect("vector decodes");
    assert_eq!(opened.identity.public(), identity.public());
    assert_public_keys(&identity.public(), &v, "handoff");
    assert_eq!(opened.settings, settings);
    let encoded = identity::Handoff::encode(&identity, KeyKind::User, &settings).expect("encode");
    assert_eq!(encoded[..], message[..]);
}

/// `public` holds the vectors' `PREFIX.signing_public` and `PREFIX.wrapping_public`.
fn assert_public_keys(
    public: &identity::PublicIdentity,
    v: &HashMap<String, String>,
    prefix: &str,
) {
    let signing = bytes(v, &format!("{prefix}.signing_public"));
    let wrapping = bytes(v, &format!("{prefix}.wrapping_public"));
    assert_eq!(public.signing[..], signing[..], "{prefix}.signing_public");
    assert_eq!(
        public.wrapping[..],
        wrapping[..],
        "{prefix}.wrapping_public"
    );
}

/// HMAC-SHA256 written out from its definition (RFC 2104), so that the manifest vector is
/// checked against more than the code that made it.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// `manifest.map`: `INDEX:GENERATION` pairs, ascending.
fn chunk_map(text: &str) -> Vec<(ChunkIndex, Generation)> {
    let pair = |p: &str| {
        let (index, generation) = p.split_once(':').expect("INDEX:GENERATION");
        let number = |n: &str| n.parse::<u64>().expect("a number");
        (ChunkIndex(number(index)), Generation(number(generation)))
    };
    text.split_whitespace().map(pair).collect()
}

#[test]
fn documented_manifest_vector_seals_and_opens() {
    let v = documented_vectors();
    let number = |name: &str| v[name].parse::<u64>().expect("a number");
    let data_key: [u8; 32] = array(&v, "manifest.data_key");
    // HKDF-SHA256 (RFC 5869), one block: PRK = HMAC(salt, key), OKM = HMAC(PRK, info || 1).
    let prk = hmac_sha256(b"vault/v1 data key", &data_key);
    let subkey = hmac_sha256(&prk, b"vault/v1 manifest\x01");
    assert_eq!(
        subkey[..],
        bytes(&v, "manifest.key")[..],
        "the manifest subkey"
    );

    let (vault, file) = (
        VaultId(array(&v, "manifest.vault")),
        file_id(&v, "manifest.file"),
    );
    let map = chunk_map(&v["manifest.map"]);
    let mut digest = Sha256::new().chain_update(b"vault/v1 chunk map");
    for (index, generation) in &map {
        digest.update(index.get().to_le_bytes());
        digest.update(generation.get().to_le_bytes());
    }
    assert_eq!(digest.finalize()[..], bytes(&v, "manifest.digest")[..]);

    let sealed = bytes(&v, "manifest.bytes");
    assert_eq!(sealed.len(), format::manifest::MANIFEST_BYTES);
    assert_eq!(sealed[104..], hmac_sha256(&subkey, &sealed[..104]));
    assert_eq!(sealed[104..], bytes(&v, "manifest.hmac")[..]);

    let keys = crypto::FileKeys::single(DataKey::from_bytes(data_key));
    let size = number("manifest.size");
    let manifest = format::manifest::Manifest {
        counter: number("manifest.counter"),
        ..format::manifest::Manifest::describing(vault, file, size, map.iter().copied())
    };
    assert_eq!(
        crypto::seal_manifest(&keys, &manifest),
        sealed,
        "this build seals it"
    );
    let opened = crypto::open_manifest(&keys, vault, file, &sealed).expect("the vector opens");
    assert_eq!(u64::from(opened.epoch), number("manifest.epoch"));
    assert_eq!(opened.commitment[..], keys.newest().commitment()[..]);
    assert_eq!(opened.counter, manifest.counter);
    assert!(opened.describes(size, map.iter().copied()));
}

/// The sealed name, entry seal, sealed target and sealed attribute value of docs/format.md
/// section 9 are what this build makes, and open.
#[test]
fn documented_name_vectors_seal_and_open() {
    let v = documented_vectors();
    let key = DataKey::from_bytes(array(&v, "chunk.data_key"));
    let vault = VaultId(array(&v, "chunk.vault"));
    let dir = file_id(&v, "names.dir");
    assert!(format::names::is_keyed(dir));
    let keys = crypto::NameKeys::derive(&key, vault, dir);
    let name = bytes(&v, "names.name");
    let sealed = bytes(&v, "names.sealed_name");
    assert_eq!(keys.seal_name(&name), sealed);
    assert_eq!(keys.open_name(&sealed).expect("opens"), name);
    let child = file_id(&v, "names.child");
    let seal = bytes(&v, "names.entry_seal");
    assert_eq!(keys.entry_seal(&sealed, child, 1)[..], seal[..]);
    keys.check_entry(&sealed, child, 1, &seal)
        .expect("the entry checks");
    let link = file_id(&v, "names.link");
    let target = bytes(&v, "names.target");
    let sealed_target = bytes(&v, "names.sealed_target");
    assert_eq!(keys.seal_target(link, &target), sealed_target);
    assert_eq!(
        keys.open_target(link, &sealed_target).expect("opens"),
        target
    );
    let file = crypto::FileKeys::single(key);
    let (ino, name) = (file_id(&v, "xattr.file"), bytes(&v, "xattr.name"));
    let value = bytes(&v, "xattr.value");
    let stored = bytes(&v, "xattr.sealed");
    assert_eq!(crypto::seal_xattr(&file, vault, ino, &name, &value), stored);
    assert_eq!(
        crypto::open_xattr(&file, vault, ino, &name, &stored).expect("opens"),
        value
    );
}
