//! Client-side helpers for tests that talk to storaged directly: files with real keys and
//! real sealed chunks, as vaultfs makes them.

use client::ClientError;
use crypto::{ChunkCipher, ChunkContext, DataKey, WrapContext, WrapKind};
use format::ids::{ChunkIndex, FileId, Generation, VaultId};
use proto::v1::{
    Attr, CreateRequest, GetChunkRequest, GetWrappedKeysRequest, Principal, PutChunkRequest,
    WrappedKey, principal,
};

use crate::daemon::TestUser;

/// A file this test created, with its key.
#[derive(Debug)]
pub struct TestFile {
    pub ino: u64,
    pub vault: VaultId,
    pub cipher: ChunkCipher,
}

pub fn principal_user(uid: u32) -> Principal {
    Principal {
        kind: Some(principal::Kind::User(uid)),
    }
}

pub async fn vault_id(user: &TestUser) -> VaultId {
    let bytes = user.connection.hello().await.expect("hello").vault_id;
    VaultId(bytes.try_into().expect("16-byte vault id"))
}

/// Creates a regular file with a fresh key wrapped to its owner.
pub async fn create_file(
    user: &TestUser,
    parent: u64,
    name: &str,
) -> Result<(TestFile, Attr), ClientError> {
    let vault = vault_id(user).await;
    let ino = u64::from_le_bytes(identity::random_bytes()) | 2;
    let key = DataKey::generate();
    let blob = crypto::wrap(
        &key,
        &user.identity.public(),
        &WrapContext {
            vault,
            kind: WrapKind::FileKey,
            object: ino,
        },
    )
    .expect("wrap");
    let attr = user
        .connection
        .api()
        .create(CreateRequest {
            parent,
            name: name.as_bytes().to_vec(),
            perm: 0o644,
            uid: 1000,
            gid: 1000,
            ino,
            wrapped_keys: vec![WrappedKey {
                principal: Some(principal_user(user.uid)),
                blob,
            }],
            exclusive: true,
            lazy: false,
            acl_record: Vec::new(),
            entry_seal: Vec::new(),
        })
        .await?
        .into_inner();
    Ok((
        TestFile {
            ino,
            vault,
            cipher: key.chunk_cipher(),
        },
        attr,
    ))
}

/// Opens a file someone shared: unwraps its key with the user's identity.
pub async fn open_file(user: &TestUser, ino: u64) -> Result<TestFile, ClientError> {
    let vault = vault_id(user).await;
    let keys = user
        .connection
        .api()
        .get_wrapped_keys(GetWrappedKeysRequest { ino })
        .await?
        .into_inner()
        .keys;
    let blob = &keys.first().expect("a wrapped key for me").blob;
    let key = crypto::unwrap(
        blob,
        &user.identity,
        &WrapContext {
            vault,
            kind: WrapKind::FileKey,
            object: ino,
        },
    )
    .expect("unwrap");
    Ok(TestFile {
        ino,
        vault,
        cipher: key.chunk_cipher(),
    })
}

impl TestFile {
    pub fn seal(&self, index: u64, generation: u64, last: bool, plaintext: &[u8]) -> Vec<u8> {
        let context = ChunkContext {
            vault: self.vault,
            file: FileId(self.ino),
            index: ChunkIndex(index),
            generation: Generation(generation),
            last,
        };
        crypto::seal(&self.cipher, &context, plaintext).expect("seal")
    }

    /// Writes a whole small file as its only chunk, committing it.
    pub async fn write_single(
        &self,
        user: &TestUser,
        base: u64,
        generation: u64,
        plaintext: &[u8],
    ) -> Result<Attr, ClientError> {
        let data = self.seal(0, generation, true, plaintext);
        let reply = user
            .connection
            .api()
            .put_chunk(PutChunkRequest {
                ino: self.ino,
                index: 0,
                data: data.into(),
                commit: true,
                base_generation: base,
                size: plaintext.len() as u64,
                truncate: true,
                lazy: false,
                create: None,
                set_attr: None,
                // A file of the raw API (key version 1) carries no manifest.
                manifest: Default::default(),
            })
            .await?
            .into_inner();
        Ok(reply.attr.expect("a committed put returns attributes"))
    }

    /// Reads and opens chunk `index` as stored now: (generation, plaintext).
    pub async fn read_chunk(
        &self,
        user: &TestUser,
        index: u64,
        last: bool,
    ) -> Result<(u64, Vec<u8>), ClientError> {
        let reply = user
            .connection
            .api()
            .get_chunk(GetChunkRequest {
                ino: self.ino,
                index,
                descriptor: false,
            })
            .await?
            .into_inner();
        if reply.generation == 0 {
            return Ok((0, Vec::new()));
        }
        let context = ChunkContext {
            vault: self.vault,
            file: FileId(self.ino),
            index: ChunkIndex(index),
            generation: Generation(reply.generation),
            last,
        };
        let plaintext =
            crypto::open(&self.cipher, &context, &reply.data).expect("the stored chunk opens");
        Ok((reply.generation, plaintext))
    }
}

/// The signed ACL record `user` (the owner) makes for `ino` at `serial`, granting `entries`
/// (principal, read, write), as vaultfs signs them (docs/format.md section 5.2).
pub fn signed_acl(
    user: &TestUser,
    (vault, ino, serial): (VaultId, u64, u64),
    entries: &[(format::acl::Principal, bool, bool)],
) -> Vec<u8> {
    let record = format::acl::AclRecord {
        vault,
        ino: FileId(ino),
        serial,
        owner: user.uid,
        signer: user.uid,
        entries: entries
            .iter()
            .map(|&(principal, read, write)| format::acl::Entry {
                principal,
                read,
                write,
            })
            .collect(),
    }
    .normalized();
    let signature = user
        .identity
        .sign(format::acl::DOMAIN, &record.signed_bytes());
    record.with_signature(&signature)
}
