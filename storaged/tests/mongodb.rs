//! What only the MongoDB store has: its schema version and documents, several stores (as
//! several storaged instances) writing one database at once, and a server that goes away.
//! The shared semantics are in `conformance.rs`.

use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{Bson, Document, doc};
use storaged::meta::{
    self, ChunkIndex, FileId, Generation, Kind, MetaStore, StoreError, mongo::MongoStore, now,
};
use storaged::ops::chunks::{self, Uploaded};
use storaged::ops::tree::{self, NewNode, Rename, RenameMode};
use storaged::ops::{Caller, OpError, access};

#[allow(dead_code)]
#[path = "../../tests/src/mongo.rs"]
mod mongo;

fn caller() -> Caller {
    Caller {
        uid: 1000,
        groups: vec![access::EVERYONE],
        admin: false,
    }
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

async fn open(url: &str) -> Arc<dyn MetaStore> {
    let store: Arc<dyn MetaStore> = Arc::new(MongoStore::open(url).await.expect("open"));
    let admin = identity::Identity::generate().public();
    let vault = meta::write(&*store, move |txn| {
        storaged::settings::init_or_load(txn, &admin, now())
    })
    .await;
    // A second instance finds the vault the first made, with another administrator key.
    assert!(
        matches!(vault, Ok(_) | Err(OpError::Invalid(_))),
        "{vault:?}"
    );
    store
}

async fn mkdir(store: &dyn MetaStore, parent: FileId, name: &str) -> Result<meta::Inode, OpError> {
    let name = name.to_string();
    meta::write(store, move |txn| {
        let node = node(Kind::Directory, None);
        tree::create_node(txn, &caller(), parent, name.as_bytes(), &node, now()).map(|(dir, _)| dir)
    })
    .await
}

async fn raw(url: &str) -> mongodb::Database {
    let client = mongodb::Client::with_uri_str(url).await.expect("client");
    client.default_database().expect("the URL names a database")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_readable_and_the_schema_version_guards_upgrades() {
    let server = mongo::MongoServer::shared();
    let url = server.url(&mongo::unique_database("schema"));
    let store = open(&url).await;
    let dir = mkdir(&*store, FileId::ROOT, "readable")
        .await
        .expect("mkdir");
    drop(store);

    let db = raw(&url).await;
    let schema = db.collection::<Document>("schema");
    let version = schema.find_one(doc! {}).await.expect("find").expect("doc");
    let current = i64::from(storaged::meta::mongo::SCHEMA_VERSION);
    assert_eq!(version.get_i64("version"), Ok(current), "{version}");
    let entries = db.collection::<Document>("entries");
    let entry = entries
        .find_one(doc! { "parent": 1i64, "name": "readable" })
        .await
        .expect("find")
        .expect("the entry, found by its name as text");
    assert_eq!(entry.get_i64("ino"), Ok(dir.ino.0 as i64));
    let inode = db
        .collection::<Document>("inodes")
        .find_one(doc! { "_id": dir.ino.0 as i64 })
        .await
        .expect("find")
        .expect("inode");
    assert_eq!(inode.get_i64("perm"), Ok(0o755), "{inode}");
    let indexes = entries.list_index_names().await.expect("indexes");
    assert!(
        indexes.iter().any(|i| i == "parent_1_name_1"),
        "{indexes:?}"
    );

    // An older schema (here: none recorded) is upgraded in place, keeping the data; garbage
    // listed before version 2 gets its time.
    schema.delete_many(doc! {}).await.expect("forget version");
    let garbage = db.collection::<Document>("garbage");
    garbage
        .insert_one(doc! { "ino": 9i64, "index": 0i64, "generation": 3i64 })
        .await
        .expect("garbage of version 1");
    let store = open(&url).await;
    let who = caller();
    let found = meta::read(&*store, move |txn| {
        tree::lookup(txn, &who, FileId::ROOT, b"readable")
    })
    .await
    .expect("data kept across the upgrade");
    assert_eq!(found.ino, dir.ino);
    drop(store);
    let version = schema.find_one(doc! {}).await.expect("find").expect("doc");
    assert_eq!(version.get_i64("version"), Ok(current));
    let old = garbage
        .find_one(doc! { "ino": 9i64 })
        .await
        .expect("find")
        .expect("doc");
    assert!(old.get_i64("since").is_ok_and(|t| t > 0), "{old}");
    let collections = db.list_collection_names().await.expect("collections");
    assert!(collections.iter().any(|c| c == "signed"), "{collections:?}");
    let used = db.collection::<Document>("used_challenges");
    let indexes = used.list_index_names().await.expect("indexes");
    assert!(indexes.iter().any(|i| i == "expires_1"), "{indexes:?}");

    // A newer schema is refused, untouched.
    schema
        .update_one(doc! {}, doc! { "$set": { "version": 99i64 } })
        .await
        .expect("bump");
    let error = MongoStore::open(&url).await.expect_err("a newer schema");
    assert!(
        matches!(error, StoreError::SchemaTooNew { found: 99, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("upgrade storaged"), "{error}");
    let version = schema.find_one(doc! {}).await.expect("find").expect("doc");
    assert_eq!(version.get("version"), Some(&Bson::Int64(99)));
}

/// Runs `count` copies of `op`, alternating between the two stores, all at once.
async fn race<T, F>(
    stores: &[Arc<dyn MetaStore>; 2],
    count: usize,
    op: F,
) -> Vec<Result<T, OpError>>
where
    T: Send + 'static,
    F: Fn(usize) -> Box<dyn FnMut(&mut dyn meta::Txn) -> Result<T, OpError> + Send>,
{
    let mut tasks = Vec::new();
    for i in 0..count {
        let store = stores[i % 2].clone();
        let op = op(i);
        tasks.push(tokio::spawn(async move { meta::write(&*store, op).await }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task"));
    }
    outcomes
}

fn one_winner<T: std::fmt::Debug>(outcomes: &[Result<T, OpError>], loser: fn(&OpError) -> bool) {
    let winners = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(winners, 1, "exactly one winner: {outcomes:?}");
    for outcome in outcomes {
        if let Err(error) = outcome {
            let clean = loser(error) || matches!(error, OpError::Store(StoreError::Conflict(_)));
            assert!(clean, "a loser sees a clean error, not {error:?}");
        }
    }
}

/// The same name created, one chunk committed, and one entry renamed, through both stores at
/// once: each has exactly one winner.
async fn one_name_one_chunk_and_one_rename_have_one_winner(stores: &[Arc<dyn MetaStore>; 2]) {
    // The same name, created through both at once.
    let created = race(stores, 12, |_| {
        Box::new(|txn| {
            let node = node(Kind::Directory, None);
            tree::create_node(txn, &caller(), FileId::ROOT, b"contested", &node, now())
        })
    })
    .await;
    one_winner(&created, |e| matches!(e, OpError::Exists));

    // A compare-and-swap on one chunk: every writer based on generation 0.
    let file = meta::write(&*stores[0], |txn| {
        let node = node(Kind::Regular, Some(FileId(0x5eed)));
        tree::create_node(txn, &caller(), FileId::ROOT, b"file", &node, now())
    })
    .await
    .expect("create")
    .0
    .ino;
    let committed = race(stores, 12, move |i| {
        let upload = Uploaded {
            index: ChunkIndex(0),
            base: Generation(0),
            generation: Generation(1 + i as u64),
            last: true,
            plaintext_bytes: 10,
        };
        Box::new(move |txn| {
            let commit = chunks::Commit {
                ino: file,
                chunks: &[upload],
                size: 10,
                truncate: false,
                rekey: &[],
                manifest: None,
            };
            chunks::commit(txn, &caller(), &commit, now())
        })
    })
    .await;
    one_winner(&committed, |e| matches!(e, OpError::StaleGeneration { .. }));

    // One entry renamed through both to different names: it ends under exactly one.
    let renamed = race(stores, 8, |i| {
        let target = format!("moved-{i}");
        Box::new(move |txn| {
            let rename = Rename {
                parent: FileId::ROOT,
                name: b"contested",
                new_parent: FileId::ROOT,
                new_name: target.as_bytes(),
                mode: RenameMode::NoReplace,
                seals: Default::default(),
            };
            tree::rename(txn, &caller(), &rename, now())
        })
    })
    .await;
    one_winner(&renamed, |e| matches!(e, OpError::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_database_end_with_one_winner_and_nothing_half_done() {
    let server = mongo::MongoServer::shared();
    let url = server.url(&mongo::unique_database("two"));
    let stores = [open(&url).await, open(&url).await];
    one_name_one_chunk_and_one_rename_have_one_winner(&stores).await;

    // Different names through both at once: every one lands, and the parent counts them.
    let made = race(&stores, 24, |i| {
        let name = format!("d{i}");
        Box::new(move |txn| {
            let node = node(Kind::Directory, None);
            tree::create_node(txn, &caller(), FileId::ROOT, name.as_bytes(), &node, now())
        })
    })
    .await;
    assert!(made.iter().all(Result::is_ok), "{made:?}");
    let who = caller();
    let (listing, _) = meta::read(&*stores[1], move |txn| {
        tree::readdir(txn, &who, FileId::ROOT, b"", 1000)
    })
    .await
    .expect("readdir");
    let names: Vec<String> = listing
        .iter()
        .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
        .collect();
    assert_eq!(names.len(), 24 + 2, "{names:?}");
    assert_eq!(names.iter().filter(|n| n.starts_with("moved-")).count(), 1);
    let root = meta::read(&*stores[0], |txn| -> Result<_, OpError> {
        Ok(txn.get_inode(FileId::ROOT)?)
    })
    .await
    .expect("root")
    .expect("exists");
    assert_eq!(root.nlink, 2 + 25, "24 new directories and the renamed one");

    // The audit chain never forked: every change appended exactly once, in order.
    let verdict = storaged::audit::verify(&*stores[1]).await.expect("verify");
    assert!(
        matches!(verdict, storaged::audit::Verdict::Intact { .. }),
        "{verdict:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_server_is_reported_unavailable_and_work_resumes_when_it_returns() {
    let server = mongo::MongoServer::start(true);
    let url = server.url("outage");
    let store = open(&url).await;
    mkdir(&*store, FileId::ROOT, "before").await.expect("mkdir");

    server.kill();
    // The failure comes after the server wait, not never (bounded however slow the machine).
    let failed = tokio::time::timeout(
        Duration::from_secs(300),
        mkdir(&*store, FileId::ROOT, "during"),
    )
    .await
    .expect("a write while MongoDB is gone fails rather than hangs");
    assert!(
        matches!(failed, Err(OpError::Store(StoreError::Unavailable(_)))),
        "{failed:?}"
    );
    let who = caller();
    let read = meta::read(&*store, move |txn| {
        tree::lookup(txn, &who, FileId::ROOT, b"before")
    })
    .await;
    assert!(
        matches!(read, Err(OpError::Store(StoreError::Unavailable(_)))),
        "{read:?}"
    );

    server.spawn();
    let mut resumed = mkdir(&*store, FileId::ROOT, "after").await;
    for _ in 0..20 {
        if resumed.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        resumed = mkdir(&*store, FileId::ROOT, "after").await;
    }
    resumed.expect("works again without reopening the store");
    let who = caller();
    meta::read(&*store, move |txn| {
        tree::lookup(txn, &who, FileId::ROOT, b"before")
    })
    .await
    .expect("what was acknowledged before the outage is still there");
}
