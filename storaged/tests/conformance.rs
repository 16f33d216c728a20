//! The `MetaStore` conformance suite: every operation's semantics, run against every backend
//! with the same expectations (the way ripgrep runs each test once per regex engine).

use std::sync::Arc;

use format::ids::VaultId;
use format::wrapped::{WRAPPED_KEY_BYTES, WrapHeader, WrapKind};
use identity::Identity;
use storaged::meta::{
    self, ChunkIndex, Durability, FileId, Generation, Kind, MetaStore, Principal, StoreError,
    memory::MemoryStore, mongo::MongoStore, now, sqlite::SqliteStore,
};
use storaged::ops::chunks::{self, Uploaded};
use storaged::ops::tree::{self, AttrChanges, NewFile, NewNode, Rename, RenameMode};
use storaged::ops::{Caller, OpError, sharing, users, xattrs};
use storaged::settings::{self, VaultSettings};

const MIB8: u64 = 8 * 1024 * 1024;

struct World {
    store: Arc<dyn MetaStore>,
    settings: VaultSettings,
    alice: Caller,
    alice_key: [u8; 32],
    bob: Caller,
    bob_key: [u8; 32],
    admin: Caller,
    /// The identities that sign ACL and group records: alice's, bob's, the administrator's.
    signers: [Arc<Identity>; 3],
}

async fn world(store: Arc<dyn MetaStore>) -> World {
    let admin_identity = Identity::generate();
    let admin_public = admin_identity.public();
    let settings: VaultSettings = meta::write(&*store, move |txn| {
        settings::init_or_load(txn, &admin_public, now())
    })
    .await
    .expect("init vault");
    let admin = Caller {
        uid: 0,
        groups: vec![0],
        admin: true,
    };
    let mut made = Vec::new();
    let mut signers = Vec::new();
    for name in ["alice", "bob"] {
        let me = Identity::generate();
        let public = me.public();
        let message =
            proto::register_message(&settings.vault.0, name, &public.signing, &public.wrapping);
        let proof = me.sign(proto::domains::REGISTER, &message);
        let s = settings.clone();
        let uid = meta::write(&*store, move |txn| {
            users::register(
                txn,
                &s,
                name,
                &public.signing,
                &public.wrapping,
                &proof,
                now(),
            )
        })
        .await
        .expect("register");
        let certificate = admin_identity.sign(
            proto::domains::USER_CERTIFICATE,
            &proto::certificate_message(
                &settings.vault.0,
                uid,
                name,
                &public.signing,
                &public.wrapping,
            ),
        );
        let (s, a) = (settings.clone(), admin.clone());
        meta::write(&*store, move |txn| {
            users::approve(txn, &a, &s, name, uid, &certificate, now())
        })
        .await
        .expect("approve");
        made.push((
            Caller {
                uid,
                groups: vec![0],
                admin: false,
            },
            public.wrapping,
        ));
        signers.push(Arc::new(me));
    }
    signers.push(Arc::new(admin_identity));
    let (bob, bob_key) = made.pop().expect("bob");
    let (alice, alice_key) = made.pop().expect("alice");
    World {
        store,
        settings,
        alice,
        alice_key,
        bob,
        bob_key,
        admin,
        signers: signers.try_into().expect("three signers"),
    }
}

impl World {
    /// An ACL record for `ino` owned by `owner`, signed by `signer` (alice 0, bob 1).
    fn acl_record(
        &self,
        ino: FileId,
        serial: u64,
        (owner, signer): (u32, usize),
        entries: &[meta::AclEntry],
    ) -> Vec<u8> {
        let signer_uid = [self.alice.uid, self.bob.uid, 0][signer];
        let record = format::acl::AclRecord {
            vault: self.settings.vault,
            ino,
            serial,
            owner,
            signer: signer_uid,
            entries: entries
                .iter()
                .map(|e| format::acl::Entry {
                    principal: storaged::ops::records::to_layout(e.principal),
                    read: e.read,
                    write: e.write,
                })
                .collect(),
        }
        .normalized();
        let signature = self.signers[signer].sign(format::acl::DOMAIN, &record.signed_bytes());
        record.with_signature(&signature)
    }

    /// The change that makes group `gid` (named `name`) hold `members` at `epoch`: its record
    /// and its keys (opaque here, as the server sees them) for `holders`, signed by the
    /// administrator.
    fn group_change(
        &self,
        (gid, name): (u32, &str),
        epoch: u32,
        members: &[u32],
        holders: &[(u32, [u8; 32])],
    ) -> users::MemberChange {
        let admin = &self.signers[2];
        let record = format::group::GroupRecord {
            vault: self.settings.vault,
            gid,
            epoch,
            signing_key: [1; 32],
            wrapping_key: [2; 32],
            signer: 0,
            name: name.into(),
            members: members.to_vec(),
        };
        let signature = admin.sign(format::group::DOMAIN, &record.signed_bytes());
        let keys = holders
            .iter()
            .map(|&(uid, wrapping_key)| {
                let header = format::wrapped::SignedWrapHeader {
                    kind: format::wrapped::KeyKind::Group,
                    vault: self.settings.vault,
                    object: u64::from(gid),
                    recipient: format::acl::Principal::User(uid),
                    recipient_key: wrapping_key,
                    keys: 1,
                    epoch,
                    wrapper: 0,
                    commitment: [0; 16],
                    manifests: false,
                    sealed_xattrs: false,
                };
                let mut blob = header.encode().to_vec();
                blob.resize(header.signature_at(), 3);
                let signature = admin.sign(format::wrapped::V2_DOMAIN, &blob);
                blob.extend_from_slice(&signature);
                (uid, blob)
            })
            .collect();
        users::MemberChange {
            record: record.with_signature(&signature),
            keys,
        }
    }
}

/// A wrapped key the server accepts: a valid header for (file, recipient) and opaque rest.
fn wrapped(vault: VaultId, ino: FileId, recipient: [u8; 32]) -> Vec<u8> {
    let mut blob = WrapHeader {
        kind: WrapKind::FileKey,
        vault,
        object: ino.0,
        recipient,
    }
    .encode()
    .to_vec();
    blob.resize(WRAPPED_KEY_BYTES, 7);
    blob
}

fn node(kind: Kind, ino: Option<FileId>) -> NewNode {
    NewNode {
        kind,
        perm: 0o755,
        uid: 1000,
        gid: 1000,
        rdev: 0,
        target: Vec::new(),
        ino,
        acl_record: Vec::new(),
        entry_seal: None,
    }
}

impl World {
    async fn write<T: Send + 'static>(
        &self,
        op: impl FnMut(&mut dyn meta::Txn) -> Result<T, OpError> + Send + 'static,
    ) -> Result<T, OpError> {
        meta::write(&*self.store, op).await
    }

    async fn read<T: Send + 'static>(
        &self,
        op: impl FnMut(&mut dyn meta::Txn) -> Result<T, OpError> + Send + 'static,
    ) -> Result<T, OpError> {
        meta::read(&*self.store, op).await
    }

    async fn mkdir(
        &self,
        who: &Caller,
        parent: FileId,
        name: &str,
    ) -> Result<meta::Inode, OpError> {
        let (who, name) = (who.clone(), name.to_string());
        self.write(move |txn| {
            tree::create_node(
                txn,
                &who,
                parent,
                name.as_bytes(),
                &node(Kind::Directory, None),
                now(),
            )
            .map(|(dir, _)| dir)
        })
        .await
    }

    async fn create(
        &self,
        who: &Caller,
        key: [u8; 32],
        parent: FileId,
        name: &str,
    ) -> Result<meta::Inode, OpError> {
        let ino = FileId(u64::from_le_bytes(identity::random_bytes()) | 2);
        let file = NewFile {
            parent,
            name: name.as_bytes().to_vec(),
            node: node(Kind::Regular, Some(ino)),
            wrapped_keys: vec![(
                Principal::User(who.uid),
                wrapped(self.settings.vault, ino, key),
            )],
        };
        let who = who.clone();
        self.write(move |txn| {
            tree::create_file(txn, &who, &file, true, now()).map(|(inode, _)| inode)
        })
        .await
    }

    async fn lookup(
        &self,
        who: &Caller,
        parent: FileId,
        name: &str,
    ) -> Result<meta::Inode, OpError> {
        let (who, name) = (who.clone(), name.to_string());
        self.read(move |txn| tree::lookup(txn, &who, parent, name.as_bytes()))
            .await
    }

    async fn names(&self, who: &Caller, dir: FileId) -> Vec<String> {
        let who = who.clone();
        let (listing, _) = self
            .read(move |txn| tree::readdir(txn, &who, dir, b"", 1000))
            .await
            .expect("readdir");
        listing
            .into_iter()
            .map(|(n, _)| String::from_utf8(n).expect("utf-8"))
            .collect()
    }

    async fn rename(
        &self,
        who: &Caller,
        from: (FileId, &str),
        to: (FileId, &str),
        mode: RenameMode,
    ) -> Result<Option<FileId>, OpError> {
        let who = who.clone();
        let (a, b) = (from.1.to_string(), to.1.to_string());
        self.write(move |txn| {
            let rename = Rename {
                parent: from.0,
                name: a.as_bytes(),
                new_parent: to.0,
                new_name: b.as_bytes(),
                mode,
                seals: Default::default(),
            };
            tree::rename(txn, &who, &rename, now())
        })
        .await
    }

    /// Sets the size of `ino` through setattr.
    async fn set_size(&self, who: &Caller, ino: FileId, size: u64) -> Result<meta::Inode, OpError> {
        let changes = AttrChanges {
            size: Some(size),
            ..Default::default()
        };
        self.write(by(who, move |txn, who| {
            tree::setattr(txn, who, ino, &changes, now())
        }))
        .await
    }

    /// The first chunks of `ino` (ten at most), and whether there are more.
    async fn chunks(&self, who: &Caller, ino: FileId) -> (Vec<(ChunkIndex, Generation)>, bool) {
        self.read(by(who, move |txn, who| {
            chunks::list(txn, who, ino, ChunkIndex(0), 10)
        }))
        .await
        .expect("list")
    }

    /// The chunk files waiting to be deleted.
    async fn garbage(&self) -> Vec<meta::ChunkRef> {
        self.read(|txn| Ok(txn.list_garbage(i64::MAX, None, 100)?))
            .await
            .expect("garbage")
    }

    async fn commit(
        &self,
        who: &Caller,
        ino: FileId,
        chunks: Vec<Uploaded>,
        size: u64,
        truncate: bool,
    ) -> Result<meta::Inode, OpError> {
        let who = who.clone();
        self.write(move |txn| {
            let commit = chunks::Commit {
                ino,
                chunks: &chunks,
                size,
                truncate,
                rekey: &[],
                manifest: None,
            };
            chunks::commit(txn, &who, &commit, now())
        })
        .await
    }
}

/// A file's chunks as `chunks::list` gives them: (index, generation) each.
fn listed_as(chunks: &[(u64, u64)]) -> Vec<(ChunkIndex, Generation)> {
    chunks
        .iter()
        .map(|&(index, generation)| (ChunkIndex(index), Generation(generation)))
        .collect()
}

/// `op` run as `who`.
fn by<T>(
    who: &Caller,
    mut op: impl FnMut(&mut dyn meta::Txn, &Caller) -> Result<T, OpError> + Send + 'static,
) -> impl FnMut(&mut dyn meta::Txn) -> Result<T, OpError> + Send + 'static {
    let who = who.clone();
    move |txn| op(txn, &who)
}

fn upload(index: u64, base: u64, generation: u64, last: bool, bytes: u64) -> Uploaded {
    Uploaded {
        index: ChunkIndex(index),
        base: Generation(base),
        generation: Generation(generation),
        last,
        plaintext_bytes: bytes,
    }
}

async fn tree_operations(store: Arc<dyn MetaStore>) {
    let w = world(store).await;
    let (home, file) = creating_and_looking_up(&w).await;
    names_are_checked(&w, home).await;
    symlinks_and_hard_links(&w, home, file).await;
    listing_in_pages(&w, home).await;
    removing(&w, home).await;
}

/// Alice's home directory and a file in it, with the lookups around them: the directory and
/// the file.
async fn creating_and_looking_up(w: &World) -> (FileId, FileId) {
    let a = &w.alice;
    let home = w.mkdir(a, FileId::ROOT, "alice").await.expect("mkdir");
    assert_eq!(home.kind, Kind::Directory);
    assert!(matches!(
        w.mkdir(a, FileId::ROOT, "alice").await,
        Err(OpError::Exists)
    ));
    let file = w
        .create(a, w.alice_key, home.ino, "notes.txt")
        .await
        .expect("create");
    assert_eq!(
        w.lookup(a, home.ino, "notes.txt")
            .await
            .expect("lookup")
            .ino,
        file.ino
    );
    assert!(matches!(
        w.lookup(a, home.ino, "missing").await,
        Err(OpError::NotFound)
    ));
    assert!(matches!(
        w.lookup(a, file.ino, "x").await,
        Err(OpError::NotDirectory)
    ));
    (home.ino, file.ino)
}

async fn names_are_checked(w: &World, home: FileId) {
    let a = &w.alice;
    for bad in ["", ".", "..", "a/b", "a\0b"] {
        let r = w.mkdir(a, home, bad).await;
        assert!(matches!(r, Err(OpError::Invalid(_))), "{bad:?}: {r:?}");
    }
    assert!(matches!(
        w.mkdir(a, home, &"n".repeat(256)).await,
        Err(OpError::NameTooLong)
    ));
}

async fn symlinks_and_hard_links(w: &World, home: FileId, file: FileId) {
    let a = &w.alice;
    let link = w
        .write(by(a, move |txn, who| {
            let n = NewNode {
                target: b"notes.txt".to_vec(),
                ..node(Kind::Symlink, None)
            };
            tree::create_node(txn, who, home, b"link", &n, now()).map(|(link, _)| link)
        }))
        .await
        .expect("symlink");
    assert_eq!(
        w.read(by(a, move |txn, who| tree::readlink(txn, who, link.ino)))
            .await
            .expect("readlink"),
        b"notes.txt"
    );
    let linked = w
        .write(by(a, move |txn, who| {
            tree::link(txn, who, file, (home, b"hard", None), now())
        }))
        .await
        .expect("link")
        .0;
    assert_eq!(linked.nlink, 2);
    let dir_link = w
        .write(by(a, move |txn, who| {
            tree::link(txn, who, home, (FileId::ROOT, b"dirlink", None), now())
        }))
        .await;
    assert!(matches!(dir_link, Err(OpError::NotSupported(_))));
}

async fn listing_in_pages(w: &World, home: FileId) {
    let a = &w.alice;
    for i in 0..7 {
        w.mkdir(a, home, &format!("d{i}")).await.expect("mkdir");
    }
    let mut seen = Vec::new();
    let mut after = Vec::new();
    loop {
        let cursor = after.clone();
        let (page, more) = w
            .read(by(a, move |txn, who| {
                tree::readdir(txn, who, home, &cursor, 3)
            }))
            .await
            .expect("page");
        assert!(page.len() <= 3);
        after = page.last().map(|(n, _)| n.clone()).unwrap_or_default();
        seen.extend(
            page.into_iter()
                .map(|(n, _)| String::from_utf8(n).expect("utf-8")),
        );
        if !more {
            break;
        }
    }
    assert_eq!(seen, w.names(a, home).await);
    assert_eq!(seen.len(), 10, "{seen:?}");
    assert_eq!(
        w.lookup(a, FileId::ROOT, "alice")
            .await
            .expect("home")
            .nlink,
        2 + 7
    );
}

async fn removing(w: &World, home: FileId) {
    let a = &w.alice;
    assert!(matches!(
        w.write(by(a, |txn, who| tree::rmdir(
            txn,
            who,
            FileId::ROOT,
            b"alice",
            now()
        )))
        .await,
        Err(OpError::NotEmpty)
    ));
    assert!(matches!(
        w.write(by(a, move |txn, who| tree::unlink(
            txn,
            who,
            home,
            b"d0",
            false,
            now()
        )))
        .await,
        Err(OpError::IsDirectory)
    ));
    assert!(matches!(
        w.write(by(a, move |txn, who| tree::rmdir(
            txn,
            who,
            home,
            b"hard",
            now()
        )))
        .await,
        Err(OpError::NotDirectory)
    ));
    w.write(by(a, move |txn, who| {
        tree::unlink(txn, who, home, b"hard", false, now())
    }))
    .await
    .expect("unlink one link");
    assert_eq!(
        w.lookup(a, home, "notes.txt")
            .await
            .expect("still there")
            .nlink,
        1
    );
    w.write(by(a, move |txn, who| {
        tree::rmdir(txn, who, home, b"d0", now())
    }))
    .await
    .expect("rmdir");
    assert_eq!(
        w.lookup(a, FileId::ROOT, "alice")
            .await
            .expect("home")
            .nlink,
        2 + 6
    );
}

async fn renames(store: Arc<dyn MetaStore>) {
    let w = world(store).await;
    let a = &w.alice;
    let home = w.mkdir(a, FileId::ROOT, "home").await.expect("mkdir").ino;
    let sub = w.mkdir(a, home, "sub").await.expect("mkdir").ino;
    let deeper = w.mkdir(a, sub, "deeper").await.expect("mkdir").ino;
    let f1 = w.create(a, w.alice_key, home, "f1").await.expect("f1");
    let f2 = w.create(a, w.alice_key, home, "f2").await.expect("f2");

    // Into its own subtree: refused, nothing changes.
    let r = w
        .rename(a, (home, "sub"), (deeper, "sub"), RenameMode::Replace)
        .await;
    assert!(matches!(r, Err(OpError::Invalid(_))), "{r:?}");
    assert_eq!(w.lookup(a, home, "sub").await.expect("unchanged").ino, sub);
    // No-replace over an existing name.
    assert!(matches!(
        w.rename(a, (home, "f1"), (home, "f2"), RenameMode::NoReplace)
            .await,
        Err(OpError::Exists)
    ));
    // Exchange.
    w.rename(a, (home, "f1"), (home, "f2"), RenameMode::Exchange)
        .await
        .expect("exchange");
    assert_eq!(w.lookup(a, home, "f1").await.expect("f1").ino, f2.ino);
    assert_eq!(w.lookup(a, home, "f2").await.expect("f2").ino, f1.ino);
    // Replace: the replaced file lost its last link and is returned for release.
    let replaced = w
        .rename(a, (home, "f1"), (home, "f2"), RenameMode::Replace)
        .await
        .expect("replace");
    assert_eq!(replaced, Some(f1.ino));
    assert!(matches!(
        w.lookup(a, home, "f1").await,
        Err(OpError::NotFound)
    ));
    w.write(by(a, move |txn, who| {
        tree::release(txn, who, f1.ino, now())
    }))
    .await
    .expect("release");
    assert!(
        w.read(move |txn| Ok(txn.get_inode(f1.ino)?))
            .await
            .expect("read")
            .is_none()
    );
    // Directory over file and file over directory.
    assert!(matches!(
        w.rename(a, (home, "sub"), (home, "f2"), RenameMode::Replace)
            .await,
        Err(OpError::NotDirectory)
    ));
    assert!(matches!(
        w.rename(a, (home, "f2"), (home, "sub"), RenameMode::Replace)
            .await,
        Err(OpError::IsDirectory)
    ));
    renames_across_directories(&w, home, sub).await;
}

/// Moving directory `sub` out of `home`, and over directories.
async fn renames_across_directories(w: &World, home: FileId, sub: FileId) {
    let a = &w.alice;
    // Parents' link counts follow.
    let other = w.mkdir(a, FileId::ROOT, "other").await.expect("mkdir").ino;
    w.rename(a, (home, "sub"), (other, "moved"), RenameMode::Replace)
        .await
        .expect("move dir");
    assert_eq!(
        w.lookup(a, FileId::ROOT, "home").await.expect("home").nlink,
        2
    );
    assert_eq!(
        w.lookup(a, FileId::ROOT, "other")
            .await
            .expect("other")
            .nlink,
        3
    );
    assert_eq!(
        w.read(by(a, move |txn, who| tree::getattr(txn, who, sub)))
            .await
            .expect("sub")
            .parent,
        other
    );
    // Over an empty directory, and not over a full one.
    w.mkdir(a, home, "empty").await.expect("mkdir");
    w.rename(a, (other, "moved"), (home, "empty"), RenameMode::Replace)
        .await
        .expect("over empty dir");
    w.mkdir(a, other, "full").await.expect("mkdir");
    w.mkdir(a, FileId::ROOT, "x").await.expect("mkdir");
    let r = w
        .rename(a, (FileId::ROOT, "x"), (home, "empty"), RenameMode::Replace)
        .await;
    assert!(matches!(r, Err(OpError::NotEmpty)), "{r:?}");
}

async fn chunk_commits(store: Arc<dyn MetaStore>) {
    let w = world(store).await;
    let a = &w.alice;
    let file = w
        .create(a, w.alice_key, FileId::ROOT, "data")
        .await
        .expect("create")
        .ino;
    commits_compare_and_swap(&w, file).await;
    commits_that_grow_rewrite_the_last_chunk(&w, file).await;
    truncating_rewrites_or_drops_chunks(&w, file).await;
    // Unlinking frees every chunk into the garbage list.
    w.commit(a, file, vec![upload(0, 0, 20, true, 1)], 1, false)
        .await
        .expect("commit");
    w.write(by(a, |txn, who| {
        tree::unlink(txn, who, FileId::ROOT, b"data", false, now())
    }))
    .await
    .expect("unlink");
    let garbage = w.garbage().await;
    assert!(
        garbage
            .iter()
            .any(|c| c.ino == file && c.generation == Generation(20))
    );
}

/// A 100-byte file's first chunk, and the commits after it that are refused.
async fn commits_compare_and_swap(w: &World, file: FileId) {
    let a = &w.alice;
    let f = w
        .commit(a, file, vec![upload(0, 0, 10, true, 100)], 100, false)
        .await
        .expect("commit");
    assert_eq!(f.size, 100);
    // Stale base: refused, nothing changes.
    let r = w
        .commit(a, file, vec![upload(0, 0, 11, true, 100)], 100, false)
        .await;
    assert!(
        matches!(
            r,
            Err(OpError::StaleGeneration {
                index: ChunkIndex(0),
                base: Generation(0),
                current: Generation(10)
            })
        ),
        "{r:?}"
    );
    // A generation not newer than its base.
    let r = w
        .commit(a, file, vec![upload(0, 10, 10, true, 100)], 100, false)
        .await;
    assert!(matches!(r, Err(OpError::Invalid(_))), "{r:?}");
    // A chunk whose flags or length disagree with the size.
    let r = w
        .commit(a, file, vec![upload(0, 10, 12, false, 100)], 100, false)
        .await;
    assert!(matches!(r, Err(OpError::BadChunk(_))), "{r:?}");
}

async fn commits_that_grow_rewrite_the_last_chunk(w: &World, file: FileId) {
    let a = &w.alice;
    // Growing into chunk 2 without rewriting chunk 0 (it would stay marked last): refused.
    let r = w
        .commit(
            a,
            file,
            vec![upload(2, 0, 5, true, 10)],
            2 * MIB8 + 10,
            false,
        )
        .await;
    assert!(matches!(r, Err(OpError::Invalid(_))), "{r:?}");
    // With the rewrite, in one commit: fine. Chunk 1 is a hole.
    let f = w
        .commit(
            a,
            file,
            vec![upload(0, 10, 13, false, MIB8), upload(2, 0, 5, true, 10)],
            2 * MIB8 + 10,
            false,
        )
        .await
        .expect("grow");
    assert_eq!(f.size, 2 * MIB8 + 10);
    assert_eq!(
        w.chunks(a, file).await,
        (listed_as(&[(0, 13), (2, 5)]), false)
    );
    let garbage = w.garbage().await;
    assert!(
        garbage
            .iter()
            .any(|c| c.ino == file && c.index == ChunkIndex(0) && c.generation == Generation(10))
    );
}

async fn truncating_rewrites_or_drops_chunks(w: &World, file: FileId) {
    let a = &w.alice;
    // Truncating through setattr may not change a stored chunk's role.
    let r = w.set_size(a, file, MIB8 / 2).await;
    assert!(matches!(r, Err(OpError::Invalid(_))), "{r:?}");
    // Truncating with a commit that rewrites the new last chunk: chunks past it go.
    let f = w
        .commit(
            a,
            file,
            vec![upload(0, 13, 14, true, MIB8 / 2)],
            MIB8 / 2,
            true,
        )
        .await
        .expect("truncate");
    assert_eq!(f.size, MIB8 / 2);
    assert_eq!(w.chunks(a, file).await.0, listed_as(&[(0, 14)]));
    // Truncating to zero through setattr is always fine.
    w.set_size(a, file, 0).await.expect("truncate to 0");
    assert_eq!(
        w.read(by(a, move |txn, who| chunks::current(
            txn,
            who,
            file,
            ChunkIndex(0)
        )))
        .await
        .expect("hole"),
        meta::NO_GENERATION
    );
}

async fn access_control(store: Arc<dyn MetaStore>) {
    let w = world(store).await;
    let (a, b) = (&w.alice, &w.bob);
    let secret = w
        .create(a, w.alice_key, FileId::ROOT, "alice-secret")
        .await
        .expect("create");
    let mine = w
        .create(b, w.bob_key, FileId::ROOT, "bob-file")
        .await
        .expect("create");
    // Each sees only its own at the (shared, sticky) root.
    assert_eq!(w.names(a, FileId::ROOT).await, vec!["alice-secret"]);
    assert_eq!(w.names(b, FileId::ROOT).await, vec!["bob-file"]);
    assert!(matches!(
        w.lookup(b, FileId::ROOT, "alice-secret").await,
        Err(OpError::AccessDenied(_))
    ));
    // Bob cannot remove or rename Alice's entry at the sticky root.
    let r = w
        .write(by(b, |txn, who| {
            tree::unlink(txn, who, FileId::ROOT, b"alice-secret", false, now())
        }))
        .await;
    assert!(matches!(r, Err(OpError::AccessDenied(_))), "{r:?}");
    let r = w
        .rename(
            b,
            (FileId::ROOT, "alice-secret"),
            (FileId::ROOT, "stolen"),
            RenameMode::Replace,
        )
        .await;
    assert!(matches!(r, Err(OpError::AccessDenied(_))), "{r:?}");
    // Nor write her chunks, nor share her file.
    let r = w
        .commit(b, secret.ino, vec![upload(0, 0, 1, true, 1)], 1, false)
        .await;
    assert!(matches!(r, Err(OpError::AccessDenied(_))), "{r:?}");
    sharing_grants_and_revokes_reading(&w, secret.ino, mine.ino).await;
    // The site administrator reads no one's files.
    assert!(matches!(
        w.lookup(&w.admin, FileId::ROOT, "alice-secret").await,
        Err(OpError::AccessDenied(_))
    ));
}

/// Alice shares her file `secret` with Bob, read-only, and takes it back; Bob cannot share
/// his file `mine` with a key to hers.
async fn sharing_grants_and_revokes_reading(w: &World, secret: FileId, mine: FileId) {
    let (a, b) = (&w.alice, &w.bob);
    // Sharing needs a wrapped key addressed to the recipient.
    let entry = meta::AclEntry {
        principal: Principal::User(b.uid),
        read: true,
        write: false,
    };
    let record = w.acl_record(secret, 1, (a.uid, 0), &[entry]);
    let change = |record: &Vec<u8>, key| sharing::AclChange {
        record: record.clone(),
        wrapped_key: wrapped(w.settings.vault, secret, key),
        rekey: Vec::new(),
    };
    refused_shares_change_nothing(w, (secret, mine), entry, &record).await;
    let right = change(&record, w.bob_key);
    w.write(by(a, move |txn, who| {
        sharing::share(txn, who, secret, entry, &right, now())
    }))
    .await
    .expect("share");
    assert_eq!(
        w.lookup(b, FileId::ROOT, "alice-secret")
            .await
            .expect("shared")
            .ino,
        secret
    );
    let keys = w
        .read(by(b, move |txn, who| {
            sharing::my_wrapped_keys(txn, who, secret)
        }))
        .await
        .expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].0, Principal::User(b.uid));
    // Read-only: still no writing.
    let r = w
        .commit(b, secret, vec![upload(0, 0, 1, true, 1)], 1, false)
        .await;
    assert!(matches!(r, Err(OpError::AccessDenied(_))), "{r:?}");
    unsharing_takes_it_back(w, secret).await;
}

/// Shares of `secret` that must change nothing: a key wrapped to the wrong user, no record or
/// a record signed by someone else, and Bob sharing his file `mine` with her key.
async fn refused_shares_change_nothing(
    w: &World,
    (secret, mine): (FileId, FileId),
    entry: meta::AclEntry,
    record: &Vec<u8>,
) {
    let (a, b) = (&w.alice, &w.bob);
    let change = |record: &Vec<u8>, key| sharing::AclChange {
        record: record.clone(),
        wrapped_key: wrapped(w.settings.vault, secret, key),
        rekey: Vec::new(),
    };
    let wrong = change(record, w.alice_key);
    let r = w
        .write(by(a, move |txn, who| {
            sharing::share(txn, who, secret, entry, &wrong, now())
        }))
        .await;
    assert!(matches!(r, Err(OpError::Invalid(_))), "{r:?}");
    // Without the owner's signature over the new ACL, nothing changes either.
    let unsigned = sharing::AclChange {
        record: Vec::new(),
        ..change(record, w.bob_key)
    };
    let forged = sharing::AclChange {
        record: w.acl_record(secret, 1, (a.uid, 1), &[entry]),
        ..change(record, w.bob_key)
    };
    for bad in [unsigned, forged] {
        let r = w
            .write(by(a, move |txn, who| {
                sharing::share(txn, who, secret, entry, &bad, now())
            }))
            .await;
        assert!(
            matches!(r, Err(OpError::Invalid(_)) | Err(OpError::AccessDenied(_))),
            "{r:?}"
        );
    }
    let right = change(record, w.bob_key);
    let r = w
        .write(by(b, move |txn, who| {
            sharing::share(txn, who, mine, entry, &right, now())
        }))
        .await;
    assert!(
        matches!(r, Err(OpError::Invalid(_)) | Err(OpError::AccessDenied(_))),
        "{r:?}"
    );
}

/// Alice revokes Bob's reading of `secret`: gone again, his key removed.
async fn unsharing_takes_it_back(w: &World, secret: FileId) {
    let (a, b) = (&w.alice, &w.bob);
    let bob = Principal::User(b.uid);
    let revoke = sharing::AclChange {
        record: w.acl_record(secret, 2, (a.uid, 0), &[]),
        wrapped_key: Vec::new(),
        rekey: vec![(
            Principal::User(a.uid),
            wrapped(w.settings.vault, secret, w.alice_key),
        )],
    };
    w.write(by(a, move |txn, who| {
        sharing::unshare(txn, who, secret, bob, &revoke, now())
    }))
    .await
    .expect("unshare");
    assert!(matches!(
        w.lookup(b, FileId::ROOT, "alice-secret").await,
        Err(OpError::AccessDenied(_))
    ));
    assert!(
        w.read(by(b, move |txn, who| sharing::my_wrapped_keys(
            txn, who, secret
        )))
        .await
        .is_err()
    );
}

async fn failed_operations_leave_nothing(store: Arc<dyn MetaStore>) {
    let w = world(store).await;
    let a = w.alice.clone();
    // create_file writes the entry and the inode, then finds the owner's key missing: the
    // whole transaction must roll back.
    let half = NewFile {
        parent: FileId::ROOT,
        name: b"half".to_vec(),
        node: node(Kind::Regular, Some(FileId(77))),
        wrapped_keys: Vec::new(),
    };
    let r = w
        .write(move |txn| tree::create_file(txn, &a, &half, true, now()))
        .await;
    assert!(matches!(r, Err(OpError::Invalid(_))), "{r:?}");
    assert!(matches!(
        w.lookup(&w.alice, FileId::ROOT, "half").await,
        Err(OpError::NotFound)
    ));
    assert!(
        w.read(|txn| Ok(txn.get_inode(FileId(77))?))
            .await
            .expect("read")
            .is_none()
    );
    // Client-chosen inode numbers may not collide or take reserved ones.
    let file = w
        .create(&w.alice, w.alice_key, FileId::ROOT, "one")
        .await
        .expect("create");
    let two = NewFile {
        parent: FileId::ROOT,
        name: b"two".to_vec(),
        node: node(Kind::Regular, Some(file.ino)),
        wrapped_keys: vec![(
            Principal::User(w.alice.uid),
            wrapped(w.settings.vault, file.ino, w.alice_key),
        )],
    };
    let a = w.alice.clone();
    let r = w
        .write(move |txn| tree::create_file(txn, &a, &two, true, now()))
        .await;
    assert!(matches!(r, Err(OpError::Invalid(_))), "{r:?}");
}

async fn extended_attributes(store: Arc<dyn MetaStore>) {
    let w = world(store).await;
    let file = w
        .create(&w.alice, w.alice_key, FileId::ROOT, "f")
        .await
        .expect("create")
        .ino;
    let set = |name: &'static [u8], value: &'static [u8], mode| {
        let who = w.alice.clone();
        w.write(move |txn| xattrs::set(txn, &who, file, name, value, mode, now()))
    };
    set(b"user.a", b"1", xattrs::SetMode::Either)
        .await
        .expect("set");
    assert!(matches!(
        set(b"user.a", b"2", xattrs::SetMode::CreateOnly).await,
        Err(OpError::Exists)
    ));
    assert!(matches!(
        set(b"user.b", b"2", xattrs::SetMode::ReplaceOnly).await,
        Err(OpError::NoData)
    ));
    set(b"user.a", b"3", xattrs::SetMode::ReplaceOnly)
        .await
        .expect("replace");
    let who = w.alice.clone();
    assert_eq!(
        w.read(move |txn| xattrs::get(txn, &who, file, b"user.a"))
            .await
            .expect("get"),
        b"3"
    );
    let who = w.alice.clone();
    assert_eq!(
        w.read(move |txn| xattrs::list(txn, &who, file))
            .await
            .expect("list"),
        vec![b"user.a".to_vec()]
    );
    let who = w.alice.clone();
    w.write(move |txn| xattrs::remove(txn, &who, file, b"user.a", now()))
        .await
        .expect("remove");
    let who = w.alice.clone();
    assert!(matches!(
        w.read(move |txn| xattrs::get(txn, &who, file, b"user.a"))
            .await,
        Err(OpError::NoData)
    ));
    let who = w.bob.clone();
    let r = w.read(move |txn| xattrs::list(txn, &who, file)).await;
    assert!(matches!(r, Err(OpError::AccessDenied(_))));
}

async fn users_and_groups(store: Arc<dyn MetaStore>) {
    let w = world(store).await;
    let me = Identity::generate();
    let public = me.public();
    let proof = me.sign(
        proto::domains::REGISTER,
        &proto::register_message(
            &w.settings.vault.0,
            "carol",
            &public.signing,
            &public.wrapping,
        ),
    );
    let register = |name: &'static str, proof: [u8; 64]| {
        let s = w.settings.clone();
        w.write(move |txn| {
            users::register(
                txn,
                &s,
                name,
                &public.signing,
                &public.wrapping,
                &proof,
                now(),
            )
        })
    };
    let uid = register("carol", proof).await.expect("register");
    assert_eq!(
        register("carol", proof).await.expect("again"),
        uid,
        "idempotent"
    );
    assert!(
        matches!(register("dave", proof).await, Err(OpError::Invalid(_))),
        "proof binds the name"
    );
    assert!(matches!(
        register("admin", proof).await,
        Err(OpError::Invalid(_))
    ));
    let pending = w
        .read(by(&w.admin, |txn, who| users::pending(txn, who)))
        .await
        .expect("pending");
    assert_eq!(
        pending.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
        vec!["carol"]
    );
    assert!(matches!(
        w.read(by(&w.alice, |txn, who| users::pending(txn, who)))
            .await,
        Err(OpError::AccessDenied(_))
    ));
    // A forged certificate (signed by someone else) is refused.
    let forged = me.sign(
        proto::domains::USER_CERTIFICATE,
        &proto::certificate_message(
            &w.settings.vault.0,
            uid,
            "carol",
            &public.signing,
            &public.wrapping,
        ),
    );
    let (admin, s) = (w.admin.clone(), w.settings.clone());
    let r = w
        .write(move |txn| users::approve(txn, &admin, &s, "carol", uid, &forged, now()))
        .await;
    assert!(matches!(r, Err(OpError::Invalid(_))), "{r:?}");
    groups_grant_access_to_their_members(&w).await;
}

async fn groups_grant_access_to_their_members(w: &World) {
    let group = w
        .write(by(&w.admin, |txn, who| {
            users::create_group(txn, who, "lab", now())
        }))
        .await
        .expect("group");
    let (alice, bob) = (w.alice.uid, w.bob.uid);
    let lab = (group.gid, "lab");
    let first = w.group_change(
        lab,
        1,
        &[bob],
        &[(0, w.signers[2].public().wrapping), (bob, w.bob_key)],
    );
    // Without the administrator's keys for the group, or with a record of another epoch: no.
    for bad in [
        w.group_change(lab, 1, &[bob], &[(bob, w.bob_key)]),
        w.group_change(
            lab,
            2,
            &[bob],
            &[(0, w.signers[2].public().wrapping), (bob, w.bob_key)],
        ),
    ] {
        let r = w
            .write(by(&w.admin, move |txn, who| {
                users::set_member(txn, who, group.gid, bob, true, &bad, now())
            }))
            .await;
        assert!(matches!(r, Err(OpError::Invalid(_))), "{r:?}");
    }
    w.write(by(&w.admin, move |txn, who| {
        users::set_member(txn, who, group.gid, bob, true, &first, now())
    }))
    .await
    .expect("member");
    let second = w.group_change(lab, 1, &[alice, bob], &[(alice, w.alice_key)]);
    let group = w
        .write(by(&w.admin, move |txn, who| {
            users::set_member(txn, who, group.gid, alice, true, &second, now())
        }))
        .await
        .expect("member");
    assert_eq!(group.members, vec![w.alice.uid, w.bob.uid]);
    let bob = w.bob.uid;
    assert_eq!(
        w.read(move |txn| Ok(txn.groups_of(bob)?))
            .await
            .expect("groups"),
        vec![group.gid]
    );
    a_directory_shared_with_the_group_reaches_its_members(w, group.gid).await;
}

/// Alice shares a directory with group `gid` (read and write): Bob, a member, sees it and
/// makes a directory in it.
async fn a_directory_shared_with_the_group_reaches_its_members(w: &World, gid: u32) {
    let dir = w
        .mkdir(&w.alice, FileId::ROOT, "shared")
        .await
        .expect("mkdir");
    let entry = meta::AclEntry {
        principal: Principal::Group(gid),
        read: true,
        write: true,
    };
    let change = sharing::AclChange {
        record: w.acl_record(dir.ino, 1, (w.alice.uid, 0), &[entry]),
        ..Default::default()
    };
    let alice_in_lab = Caller {
        groups: vec![0, gid],
        ..w.alice.clone()
    };
    w.write(by(&alice_in_lab, move |txn, who| {
        sharing::share(txn, who, dir.ino, entry, &change, now())
    }))
    .await
    .expect("share dir");
    let bob_in_lab = Caller {
        groups: vec![0, gid],
        ..w.bob.clone()
    };
    assert_eq!(
        w.lookup(&bob_in_lab, FileId::ROOT, "shared")
            .await
            .expect("visible")
            .ino,
        dir.ino
    );
    // A new file inherits the directory's ACL; the owner's wrapped key is still required.
    w.mkdir(&bob_in_lab, dir.ino, "bobs")
        .await
        .expect("bob writes into the shared dir");
}

async fn audit_chain(store: Arc<dyn MetaStore>) {
    let w = world(store).await;
    w.mkdir(&w.alice, FileId::ROOT, "a").await.expect("mkdir");
    let verdict = storaged::audit::verify(&*w.store).await.expect("verify");
    let storaged::audit::Verdict::Intact { entries } = verdict else {
        panic!("{verdict:?}")
    };
    assert!(
        entries >= 5,
        "registrations, approvals and the mkdir are audited: {entries}"
    );
}

async fn concurrent_writes_all_land(store: Arc<dyn MetaStore>) {
    let w = Arc::new(world(store).await);
    let mut tasks = Vec::new();
    for i in 0..64 {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            w.mkdir(&w.alice, FileId::ROOT, &format!("d{i}")).await
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("mkdir");
    }
    assert_eq!(w.names(&w.alice, FileId::ROOT).await.len(), 64);
    assert_eq!(
        w.lookup(&w.alice, FileId::ROOT, "d0")
            .await
            .expect("d0")
            .parent,
        FileId::ROOT
    );
    let root = w
        .read(|txn| Ok(txn.get_inode(FileId::ROOT)?))
        .await
        .expect("root")
        .expect("exists");
    assert_eq!(root.nlink, 2 + 64);
}

async fn schema_and_settings_persist(store: Arc<dyn MetaStore>) {
    let w = world(store).await;
    let other_admin = Identity::generate().public();
    let r = meta::write(&*w.store, move |txn| {
        settings::init_or_load(txn, &other_admin, now())
    })
    .await;
    assert!(
        matches!(r, Err(OpError::Invalid(_))),
        "a vault keeps its administrator key"
    );
}

/// Names in byte order, whatever their encoding, and pages that continue after any of them.
async fn listing_pages_in_byte_order(store: Arc<dyn MetaStore>) {
    let w = world(store).await;
    let dir = w
        .mkdir(&w.alice, FileId::ROOT, "names")
        .await
        .expect("mkdir")
        .ino;
    let mut names: Vec<Vec<u8>> = vec![
        b"b".to_vec(),
        b"a".to_vec(),
        b"ab".to_vec(),
        "\u{e9}t\u{e9}".as_bytes().to_vec(),
        vec![0xff],
        vec![b'a', 0x80],
        vec![0xc3],
        b"Z".to_vec(),
    ];
    for name in &names {
        let (who, name) = (w.alice.clone(), name.clone());
        w.write(move |txn| {
            tree::create_node(txn, &who, dir, &name, &node(Kind::Fifo, None), now())
        })
        .await
        .expect("create");
    }
    names.sort();
    let mut seen = Vec::new();
    let mut after = Vec::new();
    for _ in 0..names.len() {
        let (who, cursor) = (w.alice.clone(), after.clone());
        let (page, more) = w
            .read(move |txn| tree::readdir(txn, &who, dir, &cursor, 3))
            .await
            .expect("page");
        after = page.last().map(|(n, _)| n.clone()).unwrap_or_default();
        seen.extend(page.into_iter().map(|(n, _)| n));
        if !more {
            break;
        }
    }
    assert_eq!(seen, names);
    let odd = vec![b'a', 0x80];
    let who = w.alice.clone();
    let found = w
        .read(move |txn| tree::lookup(txn, &who, dir, &odd))
        .await
        .expect("lookup by a name that is not UTF-8");
    assert_eq!(found.kind, Kind::Fifo);
}

fn memory() -> Arc<dyn MetaStore> {
    Arc::new(MemoryStore::new())
}

fn sqlite(dir: &tempfile::TempDir) -> Arc<dyn MetaStore> {
    Arc::new(SqliteStore::open(&dir.path().join("meta.db"), None).expect("open sqlite"))
}

/// The SecantusDB server helper shared with the cross-crate tests.
#[allow(dead_code)]
#[path = "../../tests/src/mongo.rs"]
mod mongo;

/// A store on a database of its own in the server this test binary shares.
async fn mongodb(server: &mongo::MongoServer, test: &str) -> Arc<dyn MetaStore> {
    let url = server.url(&mongo::unique_database(test));
    Arc::new(MongoStore::open(&url).await.expect("open mongodb"))
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod memory_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::memory()).await })*
        }
        mod sqlite_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let dir = tempfile::tempdir().expect("tempdir");
                super::$test(super::sqlite(&dir)).await
            })*
        }
        mod mongodb_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let server = super::mongo::MongoServer::shared();
                super::$test(super::mongodb(&server, stringify!($test)).await).await
            })*
        }
    };
}

conformance!(
    tree_operations,
    renames,
    chunk_commits,
    access_control,
    failed_operations_leave_nothing,
    extended_attributes,
    users_and_groups,
    audit_chain,
    concurrent_writes_all_land,
    schema_and_settings_persist,
    listing_pages_in_byte_order,
    visible_writes_are_read_at_once,
    garbage_keeps_its_time_and_every_record_lists_in_pages,
    a_challenge_is_used_once_until_it_expires,
    a_manifest_is_kept_only_while_it_describes_the_chunk_map,
    sealed_entries_keep_their_seals_and_list_in_byte_order,
);

/// A sealed name like vaultfs makes one (docs/format.md section 5.6): a NUL, then bytes.
fn sealed_name(seed: u8, len: usize) -> Vec<u8> {
    let mut name = vec![0u8];
    name.extend((0..len).map(|i| seed.wrapping_mul(31).wrapping_add(i as u8)));
    name
}

/// The names and seals of `dir`'s entries, listed by alice in pages of 3 (at most `max`
/// pages).
async fn sealed_listing(w: &World, dir: FileId, max: usize) -> Vec<(Vec<u8>, Option<[u8; 16]>)> {
    let mut seen = Vec::new();
    let mut after = Vec::new();
    for _ in 0..max {
        let (who, cursor) = (w.alice.clone(), after.clone());
        let (page, more) = w
            .read(move |txn| tree::readdir_sealed(txn, &who, dir, &cursor, 3))
            .await
            .expect("page");
        after = page.last().map(|(n, _, _)| n.clone()).unwrap_or_default();
        seen.extend(page.into_iter().map(|(n, _, seal)| (n, seal)));
        if !more {
            break;
        }
    }
    seen
}

/// Sealed names (any bytes after a NUL) are stored, looked up and listed in pages in byte
/// order with their entry seals; a rename and a link carry the seals the client made, and a
/// rename sealed for another inode than the entry names is refused, changing nothing.
async fn sealed_entries_keep_their_seals_and_list_in_byte_order(store: Arc<dyn MetaStore>) {
    let w = world(store).await;
    let a = w.alice.clone();
    let dir = w
        .mkdir(&a, FileId::ROOT, "sealed")
        .await
        .expect("mkdir")
        .ino;
    let mut names: Vec<Vec<u8>> = (0..7u8)
        .map(|i| sealed_name(i, 17 + i as usize % 3))
        .collect();
    names.push(vec![
        0, b'/', 0, 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
    ]);
    for (i, name) in names.iter().enumerate() {
        let (who, name) = (a.clone(), name.clone());
        let mut fifo = node(Kind::Fifo, None);
        fifo.entry_seal = Some([i as u8; 16]);
        w.write(move |txn| tree::create_node(txn, &who, dir, &name, &fifo, now()))
            .await
            .expect("create under a sealed name");
    }
    let seen = sealed_listing(&w, dir, names.len()).await;
    let mut expected: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), Some([i as u8; 16])))
        .collect();
    expected.sort();
    assert_eq!(seen, expected);
    let (who, first) = (a.clone(), names[0].clone());
    let (found, seal) = w
        .read(move |txn| tree::lookup_sealed(txn, &who, dir, &first))
        .await
        .expect("lookup by a sealed name");
    assert_eq!((found.kind, seal), (Kind::Fifo, Some([0; 16])));
    // A rename of the first name to a new one, sealed for inode `sealed_for`.
    let rename_sealed_for = |sealed_for: FileId| {
        let (who, first, moved) = (a.clone(), names[0].clone(), sealed_name(99, 20));
        w.write(move |txn| {
            let seals = tree::RenameSeals {
                ino: Some(sealed_for),
                new_entry_seal: Some([9; 16]),
                ..Default::default()
            };
            let rename = Rename {
                parent: dir,
                name: &first,
                new_parent: dir,
                new_name: &moved,
                mode: RenameMode::NoReplace,
                seals,
            };
            tree::rename(txn, &who, &rename, now())
        })
    };
    let wrong = rename_sealed_for(FileId(found.ino.0 + 1)).await;
    assert!(matches!(wrong, Err(OpError::Invalid(_))), "{wrong:?}");
    rename_sealed_for(found.ino)
        .await
        .expect("rename sealed for the inode it names");
    let (who, moved) = (a.clone(), sealed_name(99, 20));
    let (_, seal) = w
        .read(move |txn| tree::lookup_sealed(txn, &who, dir, &moved))
        .await
        .expect("lookup of the renamed entry");
    assert_eq!(seal, Some([9; 16]));
}

/// A login challenge is recorded as used once; a second use finds it, until its record
/// expires and is deleted.
async fn a_challenge_is_used_once_until_it_expires(store: Arc<dyn MetaStore>) {
    let use_challenge = |challenge: [u8; 32], expires: i64| {
        meta::write(&*store, move |txn| -> Result<bool, StoreError> {
            txn.use_challenge(&challenge, expires)
        })
    };
    let t = now();
    assert!(use_challenge([1; 32], t + 1000).await.expect("first use"));
    assert!(!use_challenge([1; 32], t + 1000).await.expect("second use"));
    assert!(use_challenge([2; 32], t + 2000).await.expect("another"));
    let deleted = meta::write(&*store, move |txn| -> Result<u64, StoreError> {
        txn.delete_expired_challenges(t + 1500)
    })
    .await
    .expect("purge");
    assert_eq!(deleted, 1, "only the expired one");
    assert!(
        use_challenge([1; 32], t + 3000)
            .await
            .expect("after it expired")
    );
    assert!(
        !use_challenge([2; 32], t + 3000)
            .await
            .expect("not expired yet")
    );
}

/// A manifest of `ino` (its MAC left zero: the server cannot check it) with `counter`,
/// describing a file of `size` bytes whose chunks are `map`.
fn manifest(w: &World, ino: FileId, counter: u64, size: u64, map: &[(u64, u64)]) -> Vec<u8> {
    let manifest = format::manifest::Manifest {
        counter,
        ..format::manifest::Manifest::describing(w.settings.vault, ino, size, listed_as(map))
    };
    let mut bytes = manifest.encode_body().to_vec();
    bytes.resize(format::manifest::MANIFEST_BYTES, 0);
    bytes
}

/// Commits `chunks` of `ino` at `size` (growing) with `manifest`, as alice.
async fn commit_with(
    w: &World,
    ino: FileId,
    chunks: Vec<Uploaded>,
    size: u64,
    manifest: Option<Vec<u8>>,
) -> Result<meta::Inode, OpError> {
    let vault = w.settings.vault;
    w.write(by(&w.alice, move |txn, who| {
        let bytes = manifest.clone().unwrap_or_default();
        let commit = chunks::Commit {
            ino,
            chunks: &chunks,
            size,
            truncate: false,
            rekey: &[],
            manifest: storaged::ops::manifest::Sent::of(vault, &bytes),
        };
        chunks::commit(txn, who, &commit, now())
    }))
    .await
}

async fn stored_manifest(w: &World, ino: FileId) -> Vec<u8> {
    w.read(move |txn| storaged::ops::manifest::stored(txn, ino))
        .await
        .expect("read")
}

/// The store keeps a file's manifest only while it describes the chunk records and size: one
/// that does not, or is not newer, fails the commit whole; a change without one drops it.
async fn a_manifest_is_kept_only_while_it_describes_the_chunk_map(store: Arc<dyn MetaStore>) {
    let w = world(store).await;
    let ino = w
        .create(&w.alice, w.alice_key, FileId::ROOT, "m")
        .await
        .expect("create")
        .ino;
    let first = manifest(&w, ino, 1, 100, &[(0, 10)]);
    commit_with(
        &w,
        ino,
        vec![upload(0, 0, 10, true, 100)],
        100,
        Some(first.clone()),
    )
    .await
    .expect("a manifest that describes the commit");
    assert_eq!(stored_manifest(&w, ino).await, first);
    for (why, refused) in [
        ("not newer", manifest(&w, ino, 1, 100, &[(0, 11)])),
        ("the old map", manifest(&w, ino, 2, 100, &[(0, 10)])),
        ("another size", manifest(&w, ino, 2, 99, &[(0, 11)])),
    ] {
        let r = commit_with(
            &w,
            ino,
            vec![upload(0, 10, 11, true, 100)],
            100,
            Some(refused),
        )
        .await;
        assert!(matches!(r, Err(OpError::StaleManifest(_))), "{why}: {r:?}");
        assert_eq!(
            w.chunks(&w.alice, ino).await.0,
            listed_as(&[(0, 10)]),
            "{why}"
        );
        assert_eq!(stored_manifest(&w, ino).await, first, "{why}");
    }
    commit_with(&w, ino, vec![upload(0, 10, 12, true, 100)], 100, None)
        .await
        .expect("a commit without a manifest");
    assert_eq!(stored_manifest(&w, ino).await, Vec::<u8>::new());
}

/// Garbage lists with the time it was superseded (kept on a second listing), and every
/// inode, chunk record and garbage entry lists page by page, each once, as `fsck` reads them.
async fn garbage_keeps_its_time_and_every_record_lists_in_pages(store: Arc<dyn MetaStore>) {
    let w = world(store).await;
    let chunk = |ino: u64, index: u64, generation: u64| meta::ChunkRef {
        ino: FileId(ino),
        index: ChunkIndex(index),
        generation: Generation(generation),
    };
    // File IDs on both sides of 2^63, where a signed order and an unsigned one differ.
    let listed: Vec<meta::ChunkRef> = [(5, 0, 1), (5, 1, 2), (u64::MAX - 3, 0, 9), (1 << 63, 2, 4)]
        .into_iter()
        .map(|(i, x, g)| chunk(i, x, g))
        .collect();
    let before_any = now();
    let to_add = listed.clone();
    w.write(move |txn| {
        for c in &to_add {
            txn.add_garbage(*c)?;
            txn.put_chunk(*c)?;
        }
        Ok(())
    })
    .await
    .expect("add");
    let after_all = now();
    let list = |before: i64| {
        w.read(move |txn| {
            Ok(all_pages(
                3,
                |after| txn.list_garbage(before, after, 3),
                |c| *c,
            )?)
        })
    };
    assert!(
        list(before_any).await.expect("list").is_empty(),
        "nothing superseded before"
    );
    let mut all = list(after_all + 1).await.expect("list");
    all.sort();
    let mut expected = listed.clone();
    expected.sort();
    assert_eq!(all, expected);
    // Listed again later: it keeps its first time.
    let again = listed[0];
    w.write(move |txn| Ok(txn.add_garbage(again)?))
        .await
        .expect("again");
    assert_eq!(list(after_all + 1).await.expect("list").len(), 4);
    let (probe, absent) = (listed[2], chunk(5, 0, 2));
    let found = w
        .read(move |txn| Ok((txn.is_garbage(probe)?, txn.is_garbage(absent)?)))
        .await
        .expect("is_garbage");
    assert_eq!(found, (true, false));

    let chunks = w
        .read(|txn| {
            Ok(all_pages(
                2,
                |after| txn.list_all_chunks(after, 2),
                |c| (c.ino, c.index),
            )?)
        })
        .await
        .expect("chunks");
    let mut chunks = chunks;
    chunks.sort();
    assert_eq!(chunks, expected, "every chunk record, once");
    every_inode_lists_once_in_pages(&w).await;
}

/// Every item of a listing in pages of `size`: `next(after)` lists the page past `after`, the
/// `key` of the last item of the one before. Fails on a listing that never ends.
fn all_pages<T, K>(
    size: usize,
    mut next: impl FnMut(Option<K>) -> Result<Vec<T>, StoreError>,
    key: impl Fn(&T) -> K,
) -> Result<Vec<T>, StoreError> {
    let mut found = Vec::new();
    let mut after = None;
    for _ in 0..10_000 {
        let page = next(after.take())?;
        after = page.last().map(&key);
        let done = page.len() < size;
        found.extend(page);
        if done {
            return Ok(found);
        }
    }
    panic!("a listing of more than 10,000 pages");
}

/// Inodes list page by page, each once, root included.
async fn every_inode_lists_once_in_pages(w: &World) {
    for name in ["a", "b", "c"] {
        w.mkdir(&w.alice, FileId::ROOT, name).await.expect("mkdir");
    }
    let inodes = w
        .read(|txn| {
            let inodes = all_pages(2, |after| txn.list_inodes(after, 2), |i| i.ino)?;
            Ok(inodes.into_iter().map(|i| i.ino).collect::<Vec<_>>())
        })
        .await
        .expect("inodes");
    let count = w.read(|txn| Ok(txn.count_inodes()?)).await.expect("count");
    let mut unique = inodes.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((inodes.len() as u64, unique.len()), (count, inodes.len()));
    assert!(inodes.contains(&FileId::ROOT));
}

async fn put_setting(store: &dyn MetaStore, durability: Durability, key: &str, value: &[u8]) {
    let (key, value) = (key.to_string(), value.to_vec());
    meta::write_as(store, durability, move |txn| -> Result<(), StoreError> {
        txn.put_setting(&key, &value)
    })
    .await
    .expect("write a setting");
}

async fn setting(store: &dyn MetaStore, key: &str) -> Option<Vec<u8>> {
    let key = key.to_string();
    meta::read(store, move |txn| -> Result<_, StoreError> {
        txn.get_setting(&key)
    })
    .await
    .expect("read a setting")
}

/// A visible write (close-to-open) is seen by the next read; a sync then returns.
async fn visible_writes_are_read_at_once(store: Arc<dyn MetaStore>) {
    for round in 0..20u8 {
        put_setting(&*store, Durability::Visible, "visible", &[round]).await;
        assert_eq!(setting(&*store, "visible").await, Some(vec![round]));
    }
    store.sync().await.expect("sync");
    put_setting(&*store, Durability::Durable, "visible", b"durable").await;
    assert_eq!(setting(&*store, "visible").await, Some(b"durable".to_vec()));
}

/// An embedded store with a barrier that counts its calls, failing while `fail` is set.
fn sqlite_with_barrier(
    dir: &tempfile::TempDir,
) -> (
    SqliteStore,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (counted, failing) = (calls.clone(), fail.clone());
    let barrier: meta::Barrier = Arc::new(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        if failing.load(Ordering::SeqCst) {
            Err("the chunk disk is gone".into())
        } else {
            Ok(())
        }
    });
    let store = SqliteStore::open(&dir.path().join("meta.db"), Some(barrier)).expect("open");
    (store, calls, fail)
}

/// The ordering that keeps a durable record from naming a chunk file that is not: the
/// chunk files are synced (the barrier) before every durable commit, and visible commits
/// become durable within a second without anyone asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_syncs_chunk_files_before_anything_becomes_durable() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, calls, _) = sqlite_with_barrier(&dir);
    let before = calls.load(Ordering::SeqCst);
    put_setting(&store, Durability::Visible, "a", b"1").await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "a visible write syncs nothing"
    );
    store.sync().await.expect("sync");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before + 1,
        "sync calls the barrier"
    );
    store.sync().await.expect("sync");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before + 1,
        "nothing pending: a sync is free"
    );
    put_setting(&store, Durability::Durable, "a", b"2").await;
    assert_eq!(calls.load(Ordering::SeqCst), before + 2, "durable write");

    put_setting(&store, Durability::Visible, "a", b"3").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while calls.load(Ordering::SeqCst) < before + 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "a visible write was not made durable within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A visible write that finds the writer idle commits on the caller's thread (a hand-off to
/// the writer thread and back cost more than the commit); a durable one goes to the writer
/// thread, which syncs the chunk files first. Both land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_commits_a_visible_write_where_it_is_asked_when_the_writer_is_idle() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, calls, _) = sqlite_with_barrier(&dir);
    let committed_on = |durability, value: &'static [u8]| {
        meta::write_as(&store, durability, move |txn| -> Result<_, StoreError> {
            txn.put_setting("where", value)?;
            Ok(std::thread::current().name().map(String::from))
        })
    };
    let visible = committed_on(Durability::Visible, b"visible")
        .await
        .expect("visible write");
    assert_ne!(visible.as_deref(), Some("sqlite-writer"));
    assert_eq!(setting(&store, "where").await, Some(b"visible".to_vec()));
    let before = calls.load(Ordering::SeqCst);
    let durable = committed_on(Durability::Durable, b"durable")
        .await
        .expect("durable write");
    assert_eq!(durable.as_deref(), Some("sqlite-writer"));
    assert_eq!(calls.load(Ordering::SeqCst), before + 1, "the barrier ran");
    assert_eq!(setting(&store, "where").await, Some(b"durable".to_vec()));
}

/// A barrier that fails fails the durable write, which then leaves nothing; earlier visible
/// writes stay visible, and are made durable once the barrier works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_durable_write_fails_whole_when_chunk_files_cannot_sync() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, calls, fail) = sqlite_with_barrier(&dir);
    put_setting(&store, Durability::Visible, "visible", b"kept").await;
    fail.store(true, Ordering::SeqCst);
    let failed = meta::write_as(
        &store,
        Durability::Durable,
        |txn| -> Result<(), StoreError> { txn.put_setting("durable", b"lost") },
    )
    .await
    .expect_err("the barrier failed");
    assert!(
        failed.to_string().contains("chunk disk is gone"),
        "{failed}"
    );
    assert_eq!(setting(&store, "durable").await, None);
    assert_eq!(setting(&store, "visible").await, Some(b"kept".to_vec()));
    assert!(store.sync().await.is_err(), "sync reports the failure");
    fail.store(false, Ordering::SeqCst);
    let before = calls.load(Ordering::SeqCst);
    store.sync().await.expect("sync once the barrier works");
    assert_eq!(calls.load(Ordering::SeqCst), before + 1);
}

/// The durable commit the writer makes on its own (a second after visible writes) first
/// syncs the chunk files without holding the connection, and visible writes go on meanwhile;
/// under a stream of creates that sync takes 20-70 ms, and every create used to wait for it.
/// The barrier then runs again, with the connection held, before the WAL is synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_visible_writes_go_on_while_chunk_files_sync_ahead() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;
    let dir = tempfile::tempdir().expect("tempdir");
    let calls = Arc::new(AtomicUsize::new(0));
    let armed = Arc::new(AtomicBool::new(false));
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let (entered, entering) = std::sync::mpsc::channel::<()>();
    let (counted, arming, held) = (calls.clone(), armed.clone(), gate.clone());
    let barrier: meta::Barrier = Arc::new(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        if arming.swap(false, Ordering::SeqCst) {
            let _ = entered.send(());
            let (open, opened) = &*held;
            let open = open.lock().expect("gate");
            let _ = opened
                .wait_timeout_while(open, Duration::from_secs(30), |open| !*open)
                .expect("gate");
        }
        Ok(())
    });
    let store = SqliteStore::open(&dir.path().join("meta.db"), Some(barrier)).expect("open");
    put_setting(&store, Durability::Visible, "a", b"1").await;
    armed.store(true, Ordering::SeqCst);
    let before = calls.load(Ordering::SeqCst);
    tokio::task::spawn_blocking(move || entering.recv_timeout(Duration::from_secs(10)))
        .await
        .expect("thread")
        .expect("the writer syncs the chunk files within 10 s of a visible write");
    tokio::time::timeout(
        Duration::from_secs(5),
        put_setting(&store, Durability::Visible, "b", b"2"),
    )
    .await
    .expect("a visible write commits while the chunk files sync ahead");
    assert_eq!(setting(&store, "b").await, Some(b"2".to_vec()));
    assert_eq!(calls.load(Ordering::SeqCst), before + 1);
    *gate.0.lock().expect("gate") = true;
    gate.1.notify_all();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while calls.load(Ordering::SeqCst) < before + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the durable commit did not call the barrier again, with the connection held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A new embedded store (in the returned directory, at the returned path), changed by `sql`
/// and then claiming schema `version`.
fn sqlite_claiming_schema(version: u32, sql: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meta.db");
    drop(SqliteStore::open(&path, None).expect("create"));
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch(sql).expect("the change");
    conn.execute(
        "UPDATE settings SET value = ?1 WHERE key = 'schema_version'",
        [version.to_le_bytes().to_vec()],
    )
    .expect("the version");
    (dir, path)
}

#[test]
fn sqlite_refuses_a_newer_schema() {
    let (_dir, path) = sqlite_claiming_schema(99, "");
    let error = SqliteStore::open(&path, None).expect_err("newer schema");
    assert!(error.to_string().contains("newer"), "{error}");
}

/// A database of schema version 1 is upgraded: garbage listed before gets the upgrade's time,
/// and the signed records' table (version 3), the used challenges' (version 4) and the
/// entries' seals (version 5) are made.
#[test]
fn sqlite_upgrades_garbage_of_schema_version_1() {
    let (_dir, path) = sqlite_claiming_schema(
        1,
        "DROP INDEX garbage_since; ALTER TABLE garbage DROP COLUMN since; DROP TABLE signed;
         DROP TABLE used_challenges; ALTER TABLE entries DROP COLUMN seal;
         INSERT INTO garbage (ino, idx, generation) VALUES (9, 0, 3);",
    );
    drop(SqliteStore::open(&path, None).expect("upgrade"));
    let conn = rusqlite::Connection::open(&path).expect("open");
    let since: i64 = conn
        .query_row("SELECT since FROM garbage WHERE ino = 9", [], |r| r.get(0))
        .expect("since");
    assert!(since > 1_700_000_000_000_000_000, "{since}");
    let signed: i64 = conn
        .query_row("SELECT count(*) FROM signed", [], |r| r.get(0))
        .expect("the signed table");
    assert_eq!(signed, 0);
    let used: i64 = conn
        .query_row("SELECT count(*) FROM used_challenges", [], |r| r.get(0))
        .expect("the used challenges' table");
    assert_eq!(used, 0);
    let sealed: i64 = conn
        .query_row("SELECT count(seal) FROM entries", [], |r| r.get(0))
        .expect("the entries' seal column");
    assert_eq!(sealed, 0);
}

/// The WAL starts small again after each checkpoint. A WAL left at its largest is rewritten
/// in place, and once the page cache has dropped its pages each frame write first reads the
/// disk block it half covers: 8,000 such reads slowed 5,000 creates after `drop_caches` from
/// 900 to 1,040 us a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_cuts_its_wal_back_after_a_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meta.db");
    let wal = dir.path().join("meta.db-wal");
    let store = SqliteStore::open(&path, None).expect("open");
    let value = vec![7u8; 3000];
    // More commits than the writer makes between checkpoints, each writing a new page.
    for i in 0..600 {
        put_setting(&store, Durability::Visible, &format!("grow{i}"), &value).await;
    }
    let grown = std::fs::metadata(&wal).expect("the WAL").len();
    assert!(
        grown > 1 << 20,
        "600 commits left a WAL of only {grown} bytes"
    );
    // A durable commit, after which the writer checkpoints; the next commit restarts the WAL.
    store.sync().await.expect("sync");
    put_setting(&store, Durability::Durable, "after", b"checkpoint").await;
    put_setting(&store, Durability::Visible, "restarted", b"small").await;
    let cut = std::fs::metadata(&wal).expect("the WAL").len();
    assert!(
        cut < 256 << 10,
        "the WAL stayed at {cut} bytes after a checkpoint (it had grown to {grown})"
    );
    assert_eq!(setting(&store, "grow599").await, Some(value));
}
