//! The real storaged binary on a temp dir, driven over the wire: operations, isolation
//! between users, compare-and-swap on chunks, crash safety, the audit chain, bad input. Each
//! test runs once per metadata backend (the embedded store and MongoDB).

use std::time::Duration;

use client::{ClientError, Connection, Target};
use identity::CertificateFingerprint;
use mongodb::bson::{Document, doc};
use proto::ErrorKind;
use proto::v1::*;
use tests::daemon::{Backend, Storaged, TestUser, free_port};
use tests::vault::{TestFile, create_file, open_file, principal_user, signed_acl};

const ROOT: u64 = 1;

fn kind<T: std::fmt::Debug>(result: Result<T, impl Into<ClientError>>) -> ErrorKind {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(error) => error.into().kind(),
    }
}

fn name(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

async fn operations_over_the_wire(backend: Backend) {
    let daemon = Storaged::start_on(&backend, &[]);
    let alice = daemon.user("alice").await;
    let (home, file) = a_home_and_a_file_in_it(&alice).await;
    attributes_change(&alice, &file).await;
    links_and_special_files(&alice, home.ino, &file).await;
    extended_attributes(&alice, &file).await;
    listing_in_pages(&alice, home.ino).await;
    renaming_and_removing(&alice, home.ino, &file).await;
    the_chunk_file_is_sealed(&daemon, &file);
}

/// Alice's home directory, and a file in it with one chunk written (generation 5).
async fn a_home_and_a_file_in_it(alice: &TestUser) -> (Attr, TestFile) {
    let api = alice.connection.api();

    let home = api
        .clone()
        .mkdir(MkdirRequest {
            lazy: false,
            parent: ROOT,
            name: name("home"),
            perm: 0o750,
            uid: 1000,
            gid: 1000,
            ..Default::default()
        })
        .await
        .expect("mkdir")
        .into_inner();
    assert_eq!(home.kind, FileKind::Directory as i32);
    assert_eq!(home.perm, 0o750);

    let (file, attr) = create_file(alice, home.ino, "report.txt")
        .await
        .expect("create");
    assert_eq!(attr.size, 0);
    let written = file
        .write_single(alice, 0, 5, b"hello, vault")
        .await
        .expect("write");
    assert_eq!(written.size, 12);
    assert_eq!(
        file.read_chunk(alice, 0, true).await.expect("read"),
        (5, b"hello, vault".to_vec())
    );
    let looked = api
        .clone()
        .lookup(LookupRequest {
            parent: home.ino,
            name: name("report.txt"),
        })
        .await
        .expect("lookup");
    assert_eq!(looked.into_inner().ino, file.ino);
    (home, file)
}

async fn attributes_change(alice: &TestUser, file: &TestFile) {
    let api = alice.connection.api();
    // Mode and times.
    let changed = api
        .clone()
        .set_attr(SetAttrRequest {
            ino: file.ino,
            perm: Some(0o600),
            mtime: Some(Timestamp {
                seconds: 1_000_000,
                nanos: 5,
            }),
            ..Default::default()
        })
        .await
        .expect("setattr")
        .into_inner();
    assert_eq!(changed.perm, 0o600);
    assert_eq!(
        changed.mtime,
        Some(Timestamp {
            seconds: 1_000_000,
            nanos: 5
        })
    );
}

async fn links_and_special_files(alice: &TestUser, home: u64, file: &TestFile) {
    let api = alice.connection.api();
    // Symlink, readlink, hard link, mknod.
    let link = api
        .clone()
        .symlink(SymlinkRequest {
            lazy: false,
            parent: home,
            name: name("latest"),
            target: name("report.txt"),
            uid: 1,
            gid: 1,
            ..Default::default()
        })
        .await
        .expect("symlink")
        .into_inner();
    let target = api
        .clone()
        .read_link(ReadLinkRequest { ino: link.ino })
        .await
        .expect("readlink")
        .into_inner();
    assert_eq!(target.target, b"report.txt");
    let hard = api
        .clone()
        .link(LinkRequest {
            lazy: false,
            ino: file.ino,
            new_parent: ROOT,
            new_name: name("report-link"),
            ..Default::default()
        })
        .await
        .expect("link")
        .into_inner();
    assert_eq!(hard.nlink, 2);
    let fifo = api
        .clone()
        .mknod(MknodRequest {
            lazy: false,
            parent: home,
            name: name("pipe"),
            kind: FileKind::Fifo as i32,
            perm: 0o644,
            uid: 1,
            gid: 1,
            rdev: 0,
            ..Default::default()
        })
        .await
        .expect("mknod")
        .into_inner();
    assert_eq!(fifo.kind, FileKind::Fifo as i32);
}

async fn extended_attributes(alice: &TestUser, file: &TestFile) {
    let api = alice.connection.api();
    api.clone()
        .set_xattr(SetXattrRequest {
            ino: file.ino,
            name: name("user.tag"),
            value: name("blue"),
            ..Default::default()
        })
        .await
        .expect("setxattr");
    let value = api
        .clone()
        .get_xattr(GetXattrRequest {
            ino: file.ino,
            name: name("user.tag"),
        })
        .await
        .expect("get");
    assert_eq!(value.into_inner().value, b"blue");
    let names = api
        .clone()
        .list_xattr(ListXattrRequest { ino: file.ino })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(names.names, vec![name("user.tag")]);
    api.clone()
        .remove_xattr(RemoveXattrRequest {
            lazy: false,
            ino: file.ino,
            name: name("user.tag"),
        })
        .await
        .expect("remove");
    assert_eq!(
        kind(
            api.clone()
                .get_xattr(GetXattrRequest {
                    ino: file.ino,
                    name: name("user.tag")
                })
                .await
        ),
        ErrorKind::NoData
    );
}

/// The listing of `home` with attributes, in pages of three.
async fn listing_in_pages(alice: &TestUser, home: u64) {
    let api = alice.connection.api();
    for i in 0..5 {
        api.clone()
            .mkdir(MkdirRequest {
                lazy: false,
                parent: home,
                name: name(&format!("d{i}")),
                perm: 0o755,
                uid: 1,
                gid: 1,
                ..Default::default()
            })
            .await
            .expect("mkdir");
    }
    let mut seen = Vec::new();
    let mut after = Vec::new();
    for _ in 0..10 {
        let page = api
            .clone()
            .read_dir(ReadDirRequest {
                ino: home,
                after: after.clone(),
                limit: 3,
            })
            .await
            .expect("readdir")
            .into_inner();
        for entry in &page.entries {
            assert!(entry.attr.is_some());
            seen.push(String::from_utf8(entry.name.clone()).expect("utf-8"));
        }
        after = page
            .entries
            .last()
            .map(|e| e.name.clone())
            .unwrap_or_default();
        if !page.more {
            break;
        }
    }
    assert_eq!(
        seen,
        ["d0", "d1", "d2", "d3", "d4", "latest", "pipe", "report.txt"]
    );
}

async fn renaming_and_removing(alice: &TestUser, home: u64, file: &TestFile) {
    let api = alice.connection.api();
    // Rename across directories, then unlink and rmdir.
    api.clone()
        .rename(RenameRequest {
            parent: home,
            name: name("report.txt"),
            new_parent: ROOT,
            new_name: name("moved.txt"),
            ..Default::default()
        })
        .await
        .expect("rename");
    assert_eq!(
        kind(
            api.clone()
                .lookup(LookupRequest {
                    parent: home,
                    name: name("report.txt")
                })
                .await
        ),
        ErrorKind::NotFound
    );
    api.clone()
        .unlink(UnlinkRequest {
            lazy: false,
            parent: ROOT,
            name: name("report-link"),
            keep_open: false,
        })
        .await
        .expect("unlink");
    api.clone()
        .rmdir(RmdirRequest {
            lazy: false,
            parent: home,
            name: name("d0"),
        })
        .await
        .expect("rmdir");
    let stat = api
        .clone()
        .stat_fs(StatFsRequest {})
        .await
        .expect("statfs")
        .into_inner();
    assert!(stat.total_bytes > 0 && stat.files >= 8, "{stat:?}");
    let chunks = api
        .clone()
        .list_chunks(ListChunksRequest {
            ino: file.ino,
            from_index: 0,
            limit: 0,
        })
        .await
        .expect("list");
    assert_eq!(
        chunks.into_inner().chunks,
        vec![ChunkInfo {
            index: 0,
            generation: 5
        }]
    );
}

/// The chunk file on disk is the sealed chunk: plaintext + 64 bytes, no plaintext in it.
fn the_chunk_file_is_sealed(daemon: &Storaged, file: &TestFile) {
    let chunk_path = format::layout::chunk_path(
        &daemon.data_dir().join("chunks"),
        format::ids::FileId(file.ino),
        0,
        5,
    );
    let on_disk = std::fs::read(&chunk_path).expect("chunk file");
    assert_eq!(on_disk.len(), 12 + 64);
    assert!(!on_disk.windows(5).any(|w| w == b"hello"));
}

async fn users_cannot_see_each_others_files_until_shared(backend: Backend) {
    let daemon = Storaged::start_on(&backend, &[]);
    let alice = daemon.user("alice").await;
    let bob = daemon.user("bob").await;
    let (file, _) = create_file(&alice, ROOT, "alice.txt")
        .await
        .expect("create");
    file.write_single(&alice, 0, 1, b"for alice only")
        .await
        .expect("write");
    bob_is_refused_everything_of(&bob, &file).await;
    // Alice shares: she wraps the file key to bob's public key (after checking his certificate).
    let for_bob = key_wrapped_for_bob(&alice, &file).await;
    alice
        .connection
        .api()
        .share(ShareRequest {
            ino: file.ino,
            entry: Some(AclEntry {
                principal: Some(principal_user(bob.uid)),
                read: true,
                write: false,
            }),
            wrapped_key: for_bob,
            acl_record: signed_acl(
                &alice,
                (file.vault, file.ino, 1),
                &[(format::acl::Principal::User(bob.uid), true, false)],
            ),
        })
        .await
        .expect("share");
    let shared = open_file(&bob, file.ino)
        .await
        .expect("bob opens the shared file");
    assert_eq!(
        shared.read_chunk(&bob, 0, true).await.expect("read").1,
        b"for alice only"
    );
    // Read-only: bob cannot write.
    assert_eq!(
        kind(shared.write_single(&bob, 1, 2, b"bob was here").await),
        ErrorKind::AccessDenied
    );

    alice_unshares_bob(&alice, &bob, &file).await;
    assert_eq!(chunk_for(&bob, &file).await, ErrorKind::AccessDenied);

    // Every refusal was audited.
    let mut daemon = daemon;
    daemon.stop();
    let entries = audit_events(&daemon).await;
    assert!(
        entries
            .iter()
            .filter(|e| e.as_str() == "access-denied")
            .count()
            >= 4,
        "{entries:?}"
    );
    assert!(entries.iter().any(|e| e == "share") && entries.iter().any(|e| e == "unshare"));
}

/// Alice revokes bob's reading of `file`: the file gets a new key that only alice holds.
async fn alice_unshares_bob(alice: &TestUser, bob: &TestUser, file: &TestFile) {
    let new_key = crypto::wrap(
        &crypto::DataKey::generate(),
        &alice.identity.public(),
        &crypto::WrapContext {
            vault: file.vault,
            kind: crypto::WrapKind::FileKey,
            object: file.ino,
        },
    )
    .expect("wrap");
    alice
        .connection
        .api()
        .unshare(UnshareRequest {
            ino: file.ino,
            principal: Some(principal_user(bob.uid)),
            acl_record: signed_acl(alice, (file.vault, file.ino, 2), &[]),
            rekey: vec![WrappedKey {
                principal: Some(principal_user(alice.uid)),
                blob: new_key,
            }],
        })
        .await
        .expect("unshare");
}

/// What Bob is refused of Alice's `file` before she shares it: its name, its chunk, its keys,
/// and removing it.
async fn bob_is_refused_everything_of(bob: &TestUser, file: &TestFile) {
    let bob_api = bob.connection.api();
    let listing = bob_api
        .clone()
        .read_dir(ReadDirRequest {
            ino: ROOT,
            after: vec![],
            limit: 100,
        })
        .await
        .expect("readdir");
    assert!(
        listing.into_inner().entries.is_empty(),
        "bob sees nothing of alice's"
    );
    assert_eq!(
        kind(
            bob_api
                .clone()
                .lookup(LookupRequest {
                    parent: ROOT,
                    name: name("alice.txt")
                })
                .await
        ),
        ErrorKind::AccessDenied
    );
    assert_eq!(chunk_for(bob, file).await, ErrorKind::AccessDenied);
    assert_eq!(
        kind(
            bob_api
                .clone()
                .get_wrapped_keys(GetWrappedKeysRequest { ino: file.ino })
                .await
        ),
        ErrorKind::AccessDenied
    );
    assert_eq!(
        kind(
            bob_api
                .clone()
                .unlink(UnlinkRequest {
                    lazy: false,
                    parent: ROOT,
                    name: name("alice.txt"),
                    keep_open: false
                })
                .await
        ),
        ErrorKind::AccessDenied
    );
}

/// Bob asking for a chunk of `file` as a descriptor (which changes nothing): how it is refused.
async fn chunk_for(bob: &TestUser, file: &TestFile) -> ErrorKind {
    let request = GetChunkRequest {
        ino: file.ino,
        index: 0,
        descriptor: true,
    };
    kind(bob.connection.api().get_chunk(request).await)
}

/// The key of Alice's `file` wrapped to Bob, once his certificate checks out against the
/// administrator's key.
async fn key_wrapped_for_bob(alice: &TestUser, file: &TestFile) -> Vec<u8> {
    let bob_user = alice
        .connection
        .api()
        .get_user(GetUserRequest {
            by: Some(get_user_request::By::Name("bob".into())),
        })
        .await
        .expect("get bob")
        .into_inner();
    let admin = identity::PublicIdentity::from_slices(
        &alice
            .connection
            .hello()
            .await
            .expect("hello")
            .admin_signing_key,
        &[0; 32],
    )
    .expect("keys");
    let bob_public =
        identity::PublicIdentity::from_slices(&bob_user.signing_key, &bob_user.wrapping_key)
            .expect("keys");
    let certificate: [u8; 64] = bob_user
        .certificate
        .as_slice()
        .try_into()
        .expect("certificate");
    let message = proto::certificate_message(
        &file.vault.0,
        bob_user.uid,
        "bob",
        &bob_public.signing,
        &bob_public.wrapping,
    );
    admin
        .verify(proto::domains::USER_CERTIFICATE, &message, &certificate)
        .expect("bob's certificate is the admin's");
    let key = {
        let keys = alice
            .connection
            .api()
            .get_wrapped_keys(GetWrappedKeysRequest { ino: file.ino })
            .await
            .expect("keys")
            .into_inner()
            .keys;
        crypto::unwrap(
            &keys[0].blob,
            &alice.identity,
            &crypto::WrapContext {
                vault: file.vault,
                kind: crypto::WrapKind::FileKey,
                object: file.ino,
            },
        )
        .expect("alice unwraps")
    };
    crypto::wrap(
        &key,
        &bob_public,
        &crypto::WrapContext {
            vault: file.vault,
            kind: crypto::WrapKind::FileKey,
            object: file.ino,
        },
    )
    .expect("wrap")
}

/// The audit log's events in order, read from the store behind storaged's back.
async fn audit_events(daemon: &Storaged) -> Vec<String> {
    let Some(url) = daemon.meta_url() else {
        let conn = rusqlite::Connection::open(daemon.data_dir().join("meta.db")).expect("db");
        let mut statement = conn
            .prepare("SELECT event FROM audit ORDER BY seq")
            .expect("prepare");
        return statement
            .query_map([], |r| r.get(0))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect();
    };
    let audit = mongo_collection(url, "audit").await;
    let mut cursor = audit
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .expect("find");
    let mut events = Vec::new();
    while cursor.advance().await.expect("next") {
        let entry = cursor.deserialize_current().expect("document");
        events.push(entry.get_str("event").expect("event").to_string());
    }
    events
}

/// Rewrites the detail of audit entry `seq` behind storaged's back; how many entries changed.
async fn tamper_with_audit(daemon: &Storaged, seq: u64, detail: &str) -> u64 {
    let Some(url) = daemon.meta_url() else {
        let conn = rusqlite::Connection::open(daemon.data_dir().join("meta.db")).expect("db");
        let sql = "UPDATE audit SET detail = ?1 WHERE seq = ?2";
        return conn
            .execute(sql, rusqlite::params![detail, seq as i64])
            .expect("edit") as u64;
    };
    let audit = mongo_collection(url, "audit").await;
    let filter = doc! { "_id": seq as i64 };
    let update = doc! { "$set": { "detail": detail } };
    audit
        .update_one(filter, update)
        .await
        .expect("edit")
        .modified_count
}

async fn mongo_collection(url: &str, name: &str) -> mongodb::Collection<Document> {
    let client = mongodb::Client::with_uri_str(url).await.expect("client");
    let db = client
        .default_database()
        .expect("the URL names the database");
    db.collection(name)
}

async fn concurrent_chunk_puts_exactly_one_wins(backend: Backend) {
    let daemon = Storaged::start_on(&backend, &[]);
    let alice = daemon.user("alice").await;
    let (file, _) = create_file(&alice, ROOT, "contended")
        .await
        .expect("create");
    let file = std::sync::Arc::new(file);
    let mut writers = Vec::new();
    for writer in 0..8u64 {
        let (file, alice) = (file.clone(), alice.clone());
        writers.push(tokio::spawn(async move {
            let text = format!("writer {writer}");
            let outcome = file
                .write_single(&alice, 0, 100 + writer, text.as_bytes())
                .await;
            (text, outcome.map(|_| ()).map_err(|e| e.kind()))
        }));
    }
    let mut winners = Vec::new();
    for writer in writers {
        let (text, outcome) = writer.await.expect("task");
        match outcome {
            Ok(()) => winners.push(text),
            Err(ErrorKind::StaleGeneration) | Err(ErrorKind::Conflict) => {}
            Err(other) => panic!("a losing writer must see a stale generation, not {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one writer wins: {winners:?}");
    let (_, stored) = file.read_chunk(&alice, 0, true).await.expect("read");
    assert_eq!(stored, winners[0].as_bytes());
}

/// `PutChunks` does each put as its own `PutChunk`, in order: one refused refuses only itself,
/// and a later put builds on an earlier one of the same call.
async fn a_call_of_several_puts_refuses_only_the_bad_ones(backend: Backend) {
    let daemon = Storaged::start_on(&backend, &[]);
    let alice = daemon.user("alice").await;
    let (a, _) = create_file(&alice, ROOT, "a").await.expect("create a");
    let (b, _) = create_file(&alice, ROOT, "b").await.expect("create b");
    let put =
        |file: &tests::vault::TestFile, base: u64, generation: u64, text: &str| PutChunkRequest {
            ino: file.ino,
            index: 0,
            data: file.seal(0, generation, true, text.as_bytes()).into(),
            commit: true,
            base_generation: base,
            size: text.len() as u64,
            truncate: true,
            lazy: true,
            create: None,
            set_attr: None,
            manifest: Default::default(),
        };
    let puts = vec![
        put(&a, 0, 10, "first"),
        put(&b, 99, 10, "on a generation b never had"),
        put(&a, 10, 11, "second, over the first"),
    ];
    let outcomes = alice
        .connection
        .api()
        .put_chunks(PutChunksRequest { puts })
        .await
        .expect("put_chunks")
        .into_inner()
        .outcomes;
    assert_eq!(outcomes.len(), 3);
    let sizes: Vec<Option<u64>> = outcomes
        .iter()
        .map(|o| o.reply.as_ref().and_then(|r| r.attr).map(|attr| attr.size))
        .collect();
    assert_eq!(sizes, vec![Some(5), None, Some(22)]);
    assert_eq!(outcomes[1].error_kind, ErrorKind::StaleGeneration as i32);
    assert!(!outcomes[1].error.is_empty());
    let (generation, stored) = a.read_chunk(&alice, 0, true).await.expect("read a");
    assert_eq!(
        (generation, stored.as_slice()),
        (11, &b"second, over the first"[..])
    );
    let (generation, _) = b.read_chunk(&alice, 0, true).await.expect("read b");
    assert_eq!(generation, 0, "b has no chunk");

    let too_many = vec![put(&a, 11, 12, "x"); proto::limits::PUTS_PER_CALL_MAX + 1];
    let refused = alice
        .connection
        .api()
        .put_chunks(PutChunksRequest { puts: too_many })
        .await;
    assert_eq!(kind(refused), ErrorKind::Invalid);
}

/// `Unlinks` does each unlink as its own `Unlink`, in order: a missing name refuses only
/// itself, the directory's version goes up by one with each done, and a call of more than 64
/// is refused whole.
async fn a_call_of_several_unlinks_refuses_only_the_bad_ones(backend: Backend) {
    let daemon = Storaged::start_on(&backend, &[]);
    let alice = daemon.user("alice").await;
    for name in ["a", "b"] {
        create_file(&alice, ROOT, name).await.expect("create");
    }
    let unlink = |name: &str| UnlinkRequest {
        lazy: true,
        parent: ROOT,
        name: name.into(),
        keep_open: false,
    };
    let unlinks = vec![unlink("a"), unlink("missing"), unlink("b")];
    let mut api = alice.connection.api();
    let reply = api.unlinks(UnlinksRequest { unlinks }).await;
    let outcomes = reply.expect("unlinks").into_inner().outcomes;
    let versions: Vec<Option<u64>> = outcomes
        .iter()
        .map(|o| match &o.outcome {
            Some(unlink_outcome::Outcome::Done(done)) => done.parent.map(|p| p.version),
            _ => None,
        })
        .collect();
    assert!(
        matches!(versions[..], [Some(first), None, Some(last)] if last == first + 1),
        "{versions:?}"
    );
    let Some(unlink_outcome::Outcome::Refused(refusal)) = &outcomes[1].outcome else {
        panic!("the missing name was not refused: {:?}", outcomes[1]);
    };
    assert_eq!(refusal.kind, ErrorKind::NotFound as i32);
    for name in ["a", "b"] {
        let lookup = api
            .lookup(LookupRequest {
                parent: ROOT,
                name: name.into(),
            })
            .await;
        assert_eq!(kind(lookup), ErrorKind::NotFound, "{name} is still there");
    }
    let too_many = vec![unlink("a"); proto::limits::UNLINKS_PER_CALL_MAX + 1];
    let refused = api.unlinks(UnlinksRequest { unlinks: too_many }).await;
    assert_eq!(kind(refused), ErrorKind::Invalid);
}

async fn sigkill_in_a_stream_of_chunk_puts_loses_nothing_acknowledged(backend: Backend) {
    let mut daemon = Storaged::start_on(&backend, &[]);
    let alice = daemon.user("alice").await;
    let mut files = Vec::new();
    for i in 0..4 {
        files.push(std::sync::Arc::new(
            create_file(&alice, ROOT, &format!("f{i}"))
                .await
                .expect("create")
                .0,
        ));
    }
    // Writers rewrite their file's chunk again and again; each acknowledged write is recorded.
    let acknowledged: Acknowledged =
        std::sync::Arc::new(std::sync::Mutex::new(vec![
            (0u64, Vec::<u8>::new());
            files.len()
        ]));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers(&alice, &files, &acknowledged, &stop);
    // Kill it mid-stream: once every writer has had a few writes acknowledged.
    for _ in 0..6000 {
        if acknowledged
            .lock()
            .expect("lock")
            .iter()
            .all(|(n, _)| *n >= 3)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.kill();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    daemon.spawn();
    let alice_again = tests::daemon::TestUser {
        connection: {
            let c = Connection::new(&daemon.target()).expect("connection");
            c.login("alice", &alice.identity)
                .await
                .expect("login after restart");
            c
        },
        ..alice.clone()
    };
    let acknowledged = acknowledged.lock().expect("lock").clone();
    nothing_acknowledged_is_lost(&alice_again, &files, &acknowledged).await;
}

/// What each writer had acknowledged last: its generation and its bytes.
type Acknowledged = std::sync::Arc<std::sync::Mutex<Vec<(u64, Vec<u8>)>>>;

/// One writer a file, each rewriting its file's chunk until `stop` or a failed write, and
/// recording each write acknowledged.
fn start_writers(
    alice: &TestUser,
    files: &[std::sync::Arc<TestFile>],
    acknowledged: &Acknowledged,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut writers = Vec::new();
    for (slot, file) in files.iter().enumerate() {
        let (file, alice, acknowledged, stop) = (
            file.clone(),
            alice.clone(),
            acknowledged.clone(),
            stop.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut base = 0;
            for round in 1..=10_000u64 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let text = format!("file {slot} round {round} ").repeat(2000);
                match file
                    .write_single(&alice, base, round, text.as_bytes())
                    .await
                {
                    Ok(_) => {
                        base = round;
                        acknowledged.lock().expect("lock")[slot] = (round, text.into_bytes());
                    }
                    Err(_) => break, // The daemon died: this write was not acknowledged.
                }
            }
        }));
    }
    writers
}

/// After the crash: every file holds its last acknowledged write (or a later one), and every
/// current chunk opens.
async fn nothing_acknowledged_is_lost(
    alice: &TestUser,
    files: &[std::sync::Arc<TestFile>],
    acknowledged: &[(u64, Vec<u8>)],
) {
    let mut total = 0;
    for (file, (generation, text)) in files.iter().zip(acknowledged) {
        let (stored_generation, stored) = file
            .read_chunk(alice, 0, true)
            .await
            .expect("read after crash");
        assert!(*generation > 0, "every writer got some writes acknowledged");
        // The last acknowledged write is current; a later, unacknowledged one may also have
        // landed (the crash hit between its commit and its reply).
        assert!(
            stored_generation >= *generation,
            "acknowledged generation {generation} lost"
        );
        if stored_generation == *generation {
            assert_eq!(&stored, text);
        }
        total += generation;
    }
    assert!(total > 4, "the stream made progress before the kill");
    // No half-written file is current, and no temporary file is left where it matters.
    for file in files {
        file.read_chunk(alice, 0, true)
            .await
            .expect("every current chunk opens");
    }
}

async fn audit_chain_breaks_detectably_when_edited_on_disk(backend: Backend) {
    let mut daemon = Storaged::start_on(&backend, &[]);
    let alice = daemon.user("alice").await;
    create_file(&alice, ROOT, "a").await.expect("create");
    daemon.stop();
    let verify = |daemon: &Storaged| {
        std::process::Command::new(tests::binary("storaged"))
            .args(["audit", "verify", "--data-dir"])
            .arg(daemon.data_dir())
            .args(daemon.meta_args())
            .env("RUST_LOG", "error")
            .output()
            .expect("run audit verify")
    };
    let intact = verify(&daemon);
    assert!(
        intact.status.success(),
        "{}",
        String::from_utf8_lossy(&intact.stderr)
    );
    assert!(String::from_utf8_lossy(&intact.stdout).contains("intact"));

    assert_eq!(tamper_with_audit(&daemon, 3, "mallory").await, 1);
    let broken = verify(&daemon);
    assert_eq!(broken.status.code(), Some(2));
    let report = String::from_utf8_lossy(&broken.stdout);
    assert!(report.contains("BROKEN at entry 3"), "{report}");
}

async fn bad_input_gets_a_clear_status_and_changes_nothing(backend: Backend) {
    let daemon = Storaged::start_on(&backend, &["--session-seconds", "2"]);
    let alice = daemon.user("alice").await;
    let api = alice.connection.api();
    let dir = api
        .clone()
        .mkdir(mkdir_in(ROOT, name("d")))
        .await
        .expect("mkdir")
        .into_inner();
    let sub = api
        .clone()
        .mkdir(mkdir_in(dir.ino, name("sub")))
        .await
        .expect("mkdir")
        .into_inner();
    bad_names_and_moves_are_refused(&alice, sub.ino).await;

    // Chunks: truncated, wrong header, wrong index, another file's, stale generation, too large.
    let (file, _) = create_file(&alice, ROOT, "f").await.expect("create");
    file.write_single(&alice, 0, 10, b"good data")
        .await
        .expect("write");
    bad_chunks_are_refused(&alice, &file).await;
    bad_creating_puts_are_refused(&alice, &file).await;
    bad_attribute_changes_and_sizes_are_refused(&alice, &file).await;
    bad_sessions_are_refused(&daemon, &alice).await;
}

/// A `Mkdir` of `name` in `parent`.
fn mkdir_in(parent: u64, name: Vec<u8>) -> MkdirRequest {
    MkdirRequest {
        lazy: false,
        parent,
        name,
        perm: 0o755,
        uid: 1,
        gid: 1,
        ..Default::default()
    }
}

/// A put of `data` as chunk `index` of `ino` that commits it over generation 10, a file of
/// 9 bytes.
fn put(data: Vec<u8>, index: u64, ino: u64) -> PutChunkRequest {
    PutChunkRequest {
        lazy: false,
        ino,
        index,
        data: data.into(),
        commit: true,
        base_generation: 10,
        size: 9,
        truncate: true,
        create: None,
        set_attr: None,
        manifest: Default::default(),
    }
}

/// Bad names, an unknown inode, a directory moved below itself (`sub` is below `/d`), and
/// the removal of a directory that is not empty.
async fn bad_names_and_moves_are_refused(alice: &TestUser, sub: u64) {
    let api = alice.connection.api();
    // Names.
    for bad in [
        name(""),
        name("."),
        name(".."),
        name("a/b"),
        b"a\0b".to_vec(),
    ] {
        let r = api.clone().mkdir(mkdir_in(ROOT, bad.clone())).await;
        assert_eq!(kind(r), ErrorKind::Invalid, "{bad:?}");
    }
    let long = mkdir_in(ROOT, vec![b'x'; 256]);
    assert_eq!(kind(api.clone().mkdir(long).await), ErrorKind::NameTooLong);
    // Unknown and stale IDs.
    assert_eq!(
        kind(
            api.clone()
                .get_attr(GetAttrRequest { ino: 0xdead_beef })
                .await
        ),
        ErrorKind::NotFound
    );
    // A directory into its own subtree; rmdir of a non-empty directory.
    let into_itself = RenameRequest {
        parent: ROOT,
        name: name("d"),
        new_parent: sub,
        new_name: name("d"),
        ..Default::default()
    };
    assert_eq!(
        kind(api.clone().rename(into_itself).await),
        ErrorKind::Invalid
    );
    assert_eq!(
        kind(
            api.clone()
                .rmdir(RmdirRequest {
                    lazy: false,
                    parent: ROOT,
                    name: name("d")
                })
                .await
        ),
        ErrorKind::NotEmpty
    );
}

/// Puts of a truncated chunk, a bad header, the wrong index, another file's chunk and a
/// stale generation.
async fn bad_chunks_are_refused(alice: &TestUser, file: &TestFile) {
    let api = alice.connection.api();
    let sealed = file.seal(0, 11, true, b"new data!");
    assert_eq!(
        kind(
            api.clone()
                .put_chunk(put(sealed[..40].to_vec(), 0, file.ino))
                .await
        ),
        ErrorKind::BadChunk
    );
    let mut bad_magic = sealed.clone();
    bad_magic[0] = b'X';
    assert_eq!(
        kind(api.clone().put_chunk(put(bad_magic, 0, file.ino)).await),
        ErrorKind::BadChunk
    );
    assert_eq!(
        kind(
            api.clone()
                .put_chunk(put(sealed.clone(), 1, file.ino))
                .await
        ),
        ErrorKind::BadChunk
    );
    let (other, _) = create_file(alice, ROOT, "g").await.expect("create");
    assert_eq!(
        kind(
            api.clone()
                .put_chunk(put(sealed.clone(), 0, other.ino))
                .await
        ),
        ErrorKind::BadChunk
    );
    let stale = file.seal(0, 9, true, b"old data!");
    assert_eq!(
        kind(api.clone().put_chunk(put(stale, 0, file.ino)).await),
        ErrorKind::StaleGeneration
    );
}

/// A put that creates its file: it must commit and name the same inode, and it never
/// replaces an existing name.
async fn bad_creating_puts_are_refused(alice: &TestUser, file: &TestFile) {
    let api = alice.connection.api();
    let creating = |name: &str, ino: u64| proto::v1::CreateRequest {
        parent: ROOT,
        name: name.as_bytes().to_vec(),
        perm: 0o644,
        ino,
        ..Default::default()
    };
    let fresh = file.seal(0, 12, true, b"new data!");
    let mut uncommitted = put(fresh.clone(), 0, file.ino);
    uncommitted.commit = false;
    uncommitted.create = Some(creating("new", file.ino));
    assert_eq!(
        kind(api.clone().put_chunk(uncommitted).await),
        ErrorKind::Invalid
    );
    let mut elsewhere = put(fresh.clone(), 0, file.ino);
    elsewhere.create = Some(creating("new", file.ino ^ 4));
    assert_eq!(
        kind(api.clone().put_chunk(elsewhere).await),
        ErrorKind::Invalid
    );
    let mut taken = put(fresh, 0, file.ino);
    taken.create = Some(creating("f", file.ino));
    assert_eq!(kind(api.clone().put_chunk(taken).await), ErrorKind::Exists);
    assert_eq!(
        file.read_chunk(alice, 0, true).await.expect("read"),
        (10, b"good data".to_vec()),
        "a refused creation changes nothing"
    );
}

/// Attribute changes ride on a commit only, and never set a size; a put must name the
/// current generation as its base, and fit in a message.
async fn bad_attribute_changes_and_sizes_are_refused(alice: &TestUser, file: &TestFile) {
    let api = alice.connection.api();
    let mut changes_alone = put(file.seal(0, 12, true, b"new data!"), 0, file.ino);
    changes_alone.commit = false;
    changes_alone.set_attr = Some(proto::v1::SetAttrRequest {
        perm: Some(0o600),
        ..Default::default()
    });
    assert_eq!(
        kind(api.clone().put_chunk(changes_alone).await),
        ErrorKind::Invalid
    );
    let mut resizing = put(file.seal(0, 12, true, b"new data!"), 0, file.ino);
    resizing.set_attr = Some(proto::v1::SetAttrRequest {
        size: Some(1),
        ..Default::default()
    });
    assert_eq!(
        kind(api.clone().put_chunk(resizing).await),
        ErrorKind::Invalid
    );
    let mut wrong_base = put(file.seal(0, 12, true, b"new data!"), 0, file.ino);
    wrong_base.base_generation = 3;
    assert_eq!(
        kind(api.clone().put_chunk(wrong_base).await),
        ErrorKind::StaleGeneration
    );
    let huge = vec![0u8; proto::limits::MESSAGE_BYTES_MAX + 1024];
    let unlimited = api.clone().max_encoding_message_size(usize::MAX);
    assert_eq!(
        kind(unlimited.clone().put_chunk(put(huge, 0, file.ino)).await),
        ErrorKind::TooLarge
    );
    // Nothing changed: the good data is still current.
    assert_eq!(
        file.read_chunk(alice, 0, true).await.expect("read"),
        (10, b"good data".to_vec())
    );
}

/// Sessions: a missing token, a forged one, an expired one (the daemon's sessions last 2 s),
/// and a login with someone else's signature.
async fn bad_sessions_are_refused(daemon: &Storaged, alice: &TestUser) {
    let api = alice.connection.api();
    let anonymous = Connection::new(&daemon.target()).expect("connection");
    assert_eq!(
        kind(anonymous.api().get_attr(GetAttrRequest { ino: ROOT }).await),
        ErrorKind::Unauthenticated
    );
    anonymous.set_token(Some("f".repeat(64)));
    assert_eq!(
        kind(anonymous.api().get_attr(GetAttrRequest { ino: ROOT }).await),
        ErrorKind::Unauthenticated
    );
    tokio::time::sleep(Duration::from_millis(12_500)).await; // session 2 s + caller cache 10 s
    assert_eq!(
        kind(api.clone().get_attr(GetAttrRequest { ino: ROOT }).await),
        ErrorKind::Unauthenticated
    );
    // A login with someone else's signature fails.
    let mallory = identity::Identity::generate();
    assert_eq!(
        kind(
            Connection::new(&daemon.target())
                .expect("c")
                .login("alice", &mallory)
                .await
        ),
        ErrorKind::Unauthenticated
    );
}

#[test]
fn config_file_with_an_unknown_key_or_bad_value_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (text, expect) in [
        ("gc_secnds = 3\n", "unknown field"),
        ("gc_seconds = \"soon\"\n", "invalid type"),
    ] {
        std::fs::write(dir.path().join("storaged.toml"), text).expect("write");
        let output = std::process::Command::new(tests::binary("storaged"))
            .args(["serve", "--data-dir"])
            .arg(dir.path())
            .output()
            .expect("run storaged");
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(expect) && stderr.contains("storaged.toml"),
            "{stderr}"
        );
    }
}

async fn tls_clients_pin_the_certificate_and_metrics_count_requests(backend: Backend) {
    let port = free_port();
    let metrics_port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let metrics = format!("127.0.0.1:{metrics_port}");
    let daemon = Storaged::start_on(&backend, &["--listen", &listen, "--metrics-addr", &metrics]);
    let pin = daemon
        .ready_line
        .split("certificate ")
        .nth(1)
        .and_then(|rest| CertificateFingerprint::from_hex(rest.trim_end_matches(')')))
        .expect("the ready line names the certificate fingerprint");
    let alice = daemon.user("alice").await;
    let over_tls =
        Connection::new(&Target::parse(&format!("https://{listen}"), Some(pin)).expect("target"))
            .expect("c");
    over_tls
        .login("alice", &alice.identity)
        .await
        .expect("login over TLS");
    over_tls
        .api()
        .get_attr(GetAttrRequest { ino: ROOT })
        .await
        .expect("getattr over TLS");
    let (file, _) = create_file(&alice, ROOT, "remote").await.expect("create");
    file.write_single(&alice, 0, 3, b"sent as bytes")
        .await
        .expect("write");
    let reply = first_chunk_asking_for_a_descriptor(&over_tls, file.ino).await;
    assert!(
        reply.descriptor_ticket.is_empty() && !reply.data.is_empty(),
        "a remote client gets the bytes, even when it asks for the file"
    );
    let wrong = Connection::new(
        &Target::parse(
            &format!("https://{listen}"),
            Some(identity::Fingerprint([7; 32])),
        )
        .expect("t"),
    )
    .expect("c");
    assert_eq!(
        kind(wrong.hello().await),
        ErrorKind::Unavailable,
        "a wrong pin never talks to the server"
    );

    let body = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&metrics).expect("metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .expect("request");
        let mut body = String::new();
        stream.read_to_string(&mut body).expect("response");
        body
    })
    .await
    .expect("task");
    assert!(
        body.contains("vault_requests_total{op=\"get_attr\",outcome=\"ok\"} 1"),
        "{body}"
    );
    assert!(body.contains("vault_request_seconds_bucket"), "{body}");
}

async fn everything_survives_a_restart(backend: Backend) {
    let mut daemon = Storaged::start_on(&backend, &[]);
    let alice = daemon.user("alice").await;
    let (file, _) = create_file(&alice, ROOT, "kept").await.expect("create");
    file.write_single(&alice, 0, 3, b"still here")
        .await
        .expect("write");
    daemon.stop();
    daemon.spawn();
    let again = Connection::new(&daemon.target()).expect("c");
    again.login("alice", &alice.identity).await.expect("login");
    let user = tests::daemon::TestUser {
        connection: again,
        ..alice
    };
    assert_eq!(
        file.read_chunk(&user, 0, true).await.expect("read"),
        (3, b"still here".to_vec())
    );
}

/// Chunk 0 of `ino`, asking for it as a descriptor.
/// Every reply to a change that added a name carries its directory's version right after it:
/// one past the version before, when nothing else changed the directory in between (vaultfs
/// relies on it to answer lookups itself: docs/format.md section 6). Other replies carry 0.
async fn replies_that_add_a_name_carry_the_directory_version(backend: Backend) {
    let daemon = Storaged::start_on(&backend, &[]);
    let alice = daemon.user("alice").await;
    let api = alice.connection.api();
    let mkdir = |parent: u64, text: &str| {
        let (mut api, name) = (api.clone(), name(text));
        async move {
            let request = MkdirRequest {
                lazy: true,
                parent,
                name,
                perm: 0o755,
                uid: 1,
                gid: 1,
                ..Default::default()
            };
            api.mkdir(request).await.expect("mkdir").into_inner()
        }
    };
    let dir = mkdir(ROOT, "d").await;
    assert_ne!(dir.parent_version, 0, "the root's version after the mkdir");
    let mut version = dir.version;
    let mut next = |added: u64, what: &str| {
        assert_eq!(added, version + 1, "{what}");
        version += 1;
    };
    next(mkdir(dir.ino, "sub").await.parent_version, "mkdir");
    let (_, file) = create_file(&alice, dir.ino, "f").await.expect("create");
    next(file.parent_version, "create");
    let symlink = SymlinkRequest {
        lazy: true,
        parent: dir.ino,
        name: name("s"),
        target: name("f"),
        uid: 1,
        gid: 1,
        ..Default::default()
    };
    let made = api.clone().symlink(symlink).await.expect("symlink");
    next(made.into_inner().parent_version, "symlink");
    let link = LinkRequest {
        lazy: true,
        ino: file.ino,
        new_parent: dir.ino,
        new_name: name("hard"),
        ..Default::default()
    };
    let linked = api.clone().link(link).await.expect("link");
    next(linked.into_inner().parent_version, "link");
    let unlink = UnlinkRequest {
        lazy: true,
        parent: dir.ino,
        name: name("hard"),
        keep_open: false,
    };
    let unlinked = api.clone().unlink(unlink).await.expect("unlink");
    let parent = unlinked.into_inner().parent.expect("the directory");
    next(parent.version, "unlink");
    assert_eq!(parent.parent_version, 0);
    let lookup = LookupRequest {
        parent: dir.ino,
        name: name("f"),
    };
    let found = api.clone().lookup(lookup).await.expect("lookup");
    assert_eq!(
        found.into_inner().parent_version,
        0,
        "a lookup adds no name"
    );
}

/// A superseded chunk file's inode is kept, emptied, for the next new chunk file, by the
/// embedded store's storaged (the root's one user); storaged instances over MongoDB, which
/// may share a root, remove it.
async fn superseded_chunk_files_become_spares_only_with_the_embedded_store(backend: Backend) {
    let daemon = Storaged::start_on(&backend, &["--gc-seconds", "1", "--gc-grace-seconds", "0"]);
    let alice = daemon.user("alice").await;
    let (file, _) = create_file(&alice, ROOT, "rewritten")
        .await
        .expect("create");
    file.write_single(&alice, 0, 5, b"first")
        .await
        .expect("write");
    file.write_single(&alice, 5, 6, b"second")
        .await
        .expect("rewrite");
    let spares = daemon.data_dir().join("chunks").join("spare");
    let count = || std::fs::read_dir(&spares).map_or(0, |entries| entries.count());
    let old = format::layout::chunk_path(
        &daemon.data_dir().join("chunks"),
        format::ids::FileId(file.ino),
        0,
        5,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while old.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the superseded chunk stayed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match backend {
        Backend::Sqlite => assert_eq!(count(), 1, "kept as a spare"),
        _ => assert_eq!(count(), 0, "removed"),
    }
    assert_eq!(
        file.read_chunk(&alice, 0, true).await.expect("read"),
        (6, b"second".to_vec())
    );
}

async fn first_chunk_asking_for_a_descriptor(connection: &Connection, ino: u64) -> GetChunkReply {
    let request = GetChunkRequest {
        ino,
        index: 0,
        descriptor: true,
    };
    let reply = connection.api().get_chunk(request).await;
    reply.expect("get_chunk").into_inner()
}

/// A client on the Unix socket may take a chunk file as a descriptor rather than its bytes
/// (docs/format.md section 6): the same bytes, a ticket good once, refusals that leave the
/// descriptor socket usable, and a connection kept from before a restart replaced.
async fn local_clients_take_chunk_files_as_descriptors(backend: Backend) {
    let mut daemon = Storaged::start_on(&backend, &[]);
    let alice = daemon.user("alice").await;
    let (file, _) = create_file(&alice, ROOT, "f").await.expect("create");
    file.write_single(&alice, 0, 3, b"by descriptor")
        .await
        .expect("write");
    let ask = |descriptor| {
        let request = GetChunkRequest {
            ino: file.ino,
            index: 0,
            descriptor,
        };
        let mut api = alice.connection.api();
        async move {
            api.get_chunk(request)
                .await
                .expect("get_chunk")
                .into_inner()
        }
    };
    let bytes = ask(false).await;
    assert!(bytes.descriptor_ticket.is_empty() && !bytes.data.is_empty());
    let ticketed = ask(true).await;
    assert_eq!(ticketed.generation, bytes.generation);
    assert!(ticketed.data.is_empty());
    assert_eq!(ticketed.descriptor_ticket.len(), 16);
    let claims = vaultfs::claims::Claims::new(&daemon.socket());
    let ticket = ticketed.descriptor_ticket;
    assert_eq!(claims.read(&ticket, false).expect("claim").1, bytes.data);
    assert!(
        claims.read(&ticket, false).is_err(),
        "a ticket is good once"
    );
    assert!(claims.read(&[7; 16], false).is_err(), "an unknown ticket");
    let again = ask(true).await.descriptor_ticket;
    assert_eq!(
        claims.read(&again, true).expect("claim again").1,
        bytes.data
    );

    daemon.stop();
    daemon.spawn();
    let connection = Connection::new(&daemon.target()).expect("c");
    connection
        .login("alice", &alice.identity)
        .await
        .expect("login");
    let ticket = first_chunk_asking_for_a_descriptor(&connection, file.ino)
        .await
        .descriptor_ticket;
    assert_eq!(
        claims
            .read(&ticket, false)
            .expect("claim over a new connection")
            .1,
        bytes.data
    );
}

tests::on_every_backend!(
    async: operations_over_the_wire,
    local_clients_take_chunk_files_as_descriptors,
    users_cannot_see_each_others_files_until_shared,
    concurrent_chunk_puts_exactly_one_wins,
    a_call_of_several_puts_refuses_only_the_bad_ones,
    a_call_of_several_unlinks_refuses_only_the_bad_ones,
    sigkill_in_a_stream_of_chunk_puts_loses_nothing_acknowledged,
    audit_chain_breaks_detectably_when_edited_on_disk,
    bad_input_gets_a_clear_status_and_changes_nothing,
    tls_clients_pin_the_certificate_and_metrics_count_requests,
    everything_survives_a_restart,
    replies_that_add_a_name_carry_the_directory_version,
    superseded_chunk_files_become_spares_only_with_the_embedded_store,
);
