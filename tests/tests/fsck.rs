//! `storaged fsck` and `vaultfs fsck` against a real vault: a clean one reports nothing and
//! exits 0; deleted, truncated, flipped and swapped chunk files, a chunk file no record
//! names and chunk records of no inode are each reported, by the tool that can see them.

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

/// Damages the chunk files (and records) of every file but `clean`, each its own way;
/// returns the ID of the chunk file no record names.
fn damage(daemon: &Storaged, chunks: &[(String, u64, Vec<PathBuf>)]) -> String {
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
    chunk_id(&orphan)
}

/// Only `storaged fsck` sees the chunk file no record names and the records of no inode;
/// only `vaultfs fsck` the flipped body.
fn each_damage_is_reported_and_a_clean_vault_reports_nothing(backend: Backend) {
    let mut daemon = Storaged::start_on(&backend, &[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let user = runtime.block_on(daemon.user("alice"));
    let client = ClientFiles::for_user(&user);
    let mut mount = Mount::start(&daemon, &client, &[]);
    let root = daemon.data_dir().join("chunks");
    let mut chunks = Vec::new();
    for (seed, (name, len)) in FILES.into_iter().enumerate() {
        let bytes: Vec<u8> = (0..len).map(|i| (i * (seed + 3)) as u8).collect();
        write_synced(&mount.join(name), &bytes);
        let ino = fs::metadata(mount.join(name)).expect("stat").ino();
        chunks.push((name.to_string(), ino, chunk_files(&root, ino)));
    }
    // Clean, checked while the daemon runs.
    let clean = tools::storaged_fsck(&daemon, false);
    clean.expect_code(&[0], "storaged fsck of a clean vault");
    assert_eq!(
        clean.labels(),
        BTreeSet::new(),
        "nothing reported:\n{}",
        clean.stdout
    );
    let clean = tools::vaultfs_fsck(&daemon, &client, &mount.path().display().to_string());
    clean.expect_code(&[0], "vaultfs fsck of a clean vault");
    assert_eq!(
        clean.labels(),
        BTreeSet::new(),
        "nothing reported:\n{}",
        clean.stdout
    );
    mount.stop();
    daemon.stop();
    let orphan_file = damage(&daemon, &chunks);
    daemon.spawn();

    let first = |name: &str| chunk_id(&chunks.iter().find(|c| c.0 == name).expect("a file").2[0]);
    let server = tools::storaged_fsck(&daemon, false);
    server.expect_code(&[4], "storaged fsck of a damaged vault");
    let missing = chunk_id(&chunks[1].2[1]);
    assert_eq!(
        subjects(&server.findings("missing-chunk")),
        [missing].into()
    );
    let damaged: BTreeSet<String> = ["truncated", "header", "swap-a", "swap-b"]
        .map(first)
        .into();
    assert_eq!(
        subjects(&server.findings("damaged-chunk")),
        damaged,
        "{}",
        server.stdout
    );
    let orphan_records = subjects(&server.findings("orphan-chunk-record"));
    assert_eq!(
        orphan_records,
        [first("orphaned")].into(),
        "{}",
        server.stdout
    );
    let orphan_files = subjects(&server.findings("orphan-chunk-file"));
    assert_eq!(orphan_files, [orphan_file].into(), "{}", server.stdout);
    let labels = strings([
        "missing-chunk",
        "damaged-chunk",
        "orphan-chunk-record",
        "orphan-chunk-file",
    ]);
    assert_eq!(server.labels(), labels, "nothing else:\n{}", server.stdout);

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
    assert_eq!(
        subjects(&client_side.findings("damaged")),
        files,
        "{}",
        client_side.stdout
    );

    // --repair moves the records of no inode to the garbage list, and leaves the damage.
    let repair = tools::storaged_fsck(&daemon, true);
    repair.expect_code(&[4], "storaged fsck --repair");
    let repaired = repair.findings("orphan-chunk-record");
    assert!(
        !repaired.is_empty() && repaired.iter().all(|l| l.ends_with("[repaired]")),
        "{}",
        repair.stdout
    );
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
