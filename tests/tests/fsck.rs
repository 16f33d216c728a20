//! `storaged fsck` and `vaultfs fsck` against a real vault: a clean one reports nothing and
//! exits 0; deleted, truncated, flipped and swapped chunk files, a chunk file no record
//! names, chunk records of no inode and a changed audit entry are each reported, by the tool
//! that can see them.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

use storaged::meta::{self, FileId, MetaStore, StoreError};
use tests::daemon::{Backend, Storaged};
use tests::mount::{ClientFiles, Mount};
use tests::tools::{self, chunk_files, chunk_id, subjects, write_synced};

const CHUNK: usize = 8 * 1024 * 1024;

/// The files written, each damaged its own way but `clean`.
const FILES: [(&str, usize); 8] = [
    ("clean", CHUNK + 1),
    ("deleted", CHUNK + 1),
    ("truncated", 1000),
    ("header", 1000),
    ("body", 1000),
    ("swap-a", 1000),
    ("swap-b", 1000),
    ("orphaned", 1000),
];

fn strings<const N: usize>(items: [&str; N]) -> BTreeSet<String> {
    items.map(String::from).into()
}

/// Removes `name` and its inode from the vault's root in the metadata, leaving its chunk
/// records: what only a broken store or a hand edit does. The daemon is stopped.
fn drop_inode_keeping_chunks(daemon: &Storaged, ino: u64, name: &'static str) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store: Arc<dyn MetaStore> = match daemon.meta_url() {
            None => Arc::new(
                meta::sqlite::SqliteStore::open(&daemon.data_dir().join("meta.db"), None)
                    .expect("the embedded store"),
            ),
            Some(url) => Arc::new(meta::mongo::MongoStore::open(url).await.expect("MongoDB")),
        };
        meta::write(&*store, move |txn| {
            txn.delete_entry(FileId::ROOT, name.as_bytes())?;
            txn.delete_inode(FileId(ino))?;
            Ok::<_, StoreError>(())
        })
        .await
        .expect("the hand edit");
    });
}

/// Moves the time of audit entry 2 by a nanosecond, so that its hash no longer matches: a
/// hand edit of the audit log. The daemon is stopped.
fn break_audit_chain(daemon: &Storaged) {
    let Some(url) = daemon.meta_url() else {
        let db = rusqlite::Connection::open(daemon.data_dir().join("meta.db")).expect("meta.db");
        let sql = "UPDATE audit SET time = time + 1 WHERE seq = 2";
        assert_eq!(db.execute(sql, []).expect("the hand edit"), 1);
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        use mongodb::bson::{Document, doc};
        let client = mongodb::Client::with_uri_str(url).await.expect("MongoDB");
        let db = client.default_database().expect("a database in the URL");
        let audit = db.collection::<Document>("audit");
        let edit = audit.update_one(doc! { "_id": 2i64 }, doc! { "$inc": { "time": 1i64 } });
        assert_eq!(edit.await.expect("the hand edit").modified_count, 1);
    });
}

/// Damages the chunk files (and records) of every file but `clean`, each its own way;
/// returns the ID of the chunk file no record names.
fn damage(daemon: &Storaged, chunks: &Written) -> String {
    let of = |name: &str| -> &[PathBuf] {
        &chunks.iter().find(|(n, _, _)| n == name).expect("a file").2
    };
    fs::remove_file(&of("deleted")[1]).expect("delete a chunk file");
    let truncated = fs::OpenOptions::new().write(true).open(&of("truncated")[0]);
    truncated
        .and_then(|f| f.set_len(1000 + 64 - 10))
        .expect("truncate");
    for (name, offset) in [("header", 8), ("body", 64 + 100)] {
        let mut bytes = fs::read(&of(name)[0]).expect("read");
        bytes[offset] ^= 0x01;
        fs::write(&of(name)[0], &bytes).expect("flip a bit");
    }
    let (a, b) = (&of("swap-a")[0], &of("swap-b")[0]);
    let (bytes_a, bytes_b) = (fs::read(a).expect("read"), fs::read(b).expect("read"));
    fs::write(a, bytes_b).expect("swap");
    fs::write(b, bytes_a).expect("swap");
    let clean = &chunks[0];
    let orphan = of("clean")[0].with_file_name(format::layout::chunk_name(FileId(clean.1), 0, 99));
    fs::copy(&of("clean")[0], &orphan).expect("an orphan chunk file");
    let orphaned = chunks
        .iter()
        .find(|(n, _, _)| n == "orphaned")
        .expect("a file");
    drop_inode_keeping_chunks(daemon, orphaned.1, "orphaned");
    break_audit_chain(daemon);
    chunk_id(&orphan)
}

/// Each file's name, inode number and chunk files.
type Written = Vec<(String, u64, Vec<PathBuf>)>;

/// Writes [`FILES`] through the mount.
fn write_files(daemon: &Storaged, mount: &Mount) -> Written {
    let root = daemon.data_dir().join("chunks");
    let mut written = Vec::new();
    for (seed, (name, len)) in FILES.into_iter().enumerate() {
        let bytes: Vec<u8> = (0..len).map(|i| (i * (seed + 3)) as u8).collect();
        write_synced(&mount.join(name), &bytes);
        let ino = fs::metadata(mount.join(name)).expect("stat").ino();
        written.push((name.to_string(), ino, chunk_files(&root, ino)));
    }
    written
}

/// Both fscks find nothing in a clean vault, checked while the daemon runs.
fn assert_clean(daemon: &Storaged, client: &ClientFiles, mount: &Mount) {
    let server = tools::storaged_fsck(daemon, false);
    server.expect_code(&[0], "storaged fsck of a clean vault");
    assert_eq!(server.labels(), BTreeSet::new(), "{}", server.stdout);
    let path = mount.path().display().to_string();
    let client_side = tools::vaultfs_fsck(daemon, client, &path);
    client_side.expect_code(&[0], "vaultfs fsck of a clean vault");
    assert_eq!(
        client_side.labels(),
        BTreeSet::new(),
        "{}",
        client_side.stdout
    );
}

/// `storaged fsck` reports exactly the damage [`damage`] did that needs no key to see.
fn assert_server_findings(daemon: &Storaged, written: &Written, orphan_file: String) {
    let first = |name: &str| {
        let file = written.iter().find(|c| c.0 == name).expect("a file");
        chunk_id(&file.2[0])
    };
    let server = tools::storaged_fsck(daemon, false);
    server.expect_code(&[4], "storaged fsck of a damaged vault");
    let expected = [
        (
            "missing-chunk",
            BTreeSet::from([chunk_id(&written[1].2[1])]),
        ),
        (
            "damaged-chunk",
            ["truncated", "header", "swap-a", "swap-b"]
                .map(first)
                .into(),
        ),
        ("orphan-chunk-record", [first("orphaned")].into()),
        ("orphan-chunk-file", [orphan_file].into()),
        ("audit-chain", ["entry 2".to_string()].into()),
    ];
    for (label, chunks) in &expected {
        let found = subjects(&server.findings(label));
        assert_eq!(&found, chunks, "{label}:\n{}", server.stdout);
    }
    let labels = expected.map(|(label, _)| label.to_string()).into();
    assert_eq!(server.labels(), labels, "nothing else:\n{}", server.stdout);
}

/// Only `storaged fsck` sees the chunk file no record names and the records of no inode;
/// only `vaultfs fsck` the flipped body.
fn each_damage_is_reported_and_a_clean_vault_reports_nothing(backend: Backend) {
    let mut daemon = Storaged::start_on(&backend, &[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let user = runtime.block_on(daemon.user("alice"));
    let client = ClientFiles::for_user(&user);
    let mut mount = Mount::start(&daemon, &client, &[]);
    let written = write_files(&daemon, &mount);
    assert_clean(&daemon, &client, &mount);
    mount.stop();
    daemon.stop();
    let orphan_file = damage(&daemon, &written);
    daemon.spawn();
    assert_server_findings(&daemon, &written, orphan_file);

    let client_side = tools::vaultfs_fsck(&daemon, &client, "/");
    client_side.expect_code(&[4], "vaultfs fsck of a damaged vault");
    let files = strings([
        "/deleted",
        "/truncated",
        "/header",
        "/body",
        "/swap-a",
        "/swap-b",
    ]);
    let found = subjects(&client_side.findings("damaged"));
    assert_eq!(found, files, "{}", client_side.stdout);

    // --repair moves the records of no inode to the garbage list, and leaves the damage.
    let repair = tools::storaged_fsck(&daemon, true);
    repair.expect_code(&[4], "storaged fsck --repair");
    let repaired = repair.findings("orphan-chunk-record");
    let all_repaired = repaired.iter().all(|l| l.ends_with("[repaired]"));
    assert!(!repaired.is_empty() && all_repaired, "{}", repair.stdout);
    let again = tools::storaged_fsck(&daemon, false);
    again.expect_code(&[4], "storaged fsck after --repair");
    assert!(
        again.findings("orphan-chunk-record").is_empty(),
        "{}",
        again.stdout
    );
    assert_eq!(again.findings("missing-chunk").len(), 1, "{}", again.stdout);
}

tests::on_every_backend!(
    sync: each_damage_is_reported_and_a_clean_vault_reports_nothing,
);
