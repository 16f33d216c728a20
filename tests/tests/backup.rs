//! Backups with ordinary tools: `storaged backup` while a mount writes, `tar` of the chunk
//! root after it, the data dir destroyed, `storaged restore` on another one, and what was
//! fsync'd before the snapshot reads back bit for bit through a real mount. And an older
//! snapshot beside a newer chunk copy: fsck names exactly the chunks that are missing.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use identity::Identity;
use tests::daemon::{Backend, Storaged, free_port, server_calls};
use tests::mongo::unique_database;
use tests::mount::{ClientFiles, Mount};
use tests::tools::{self, chunk_files, chunk_files_all, chunk_id, subjects, write_synced};

const CHUNK: usize = 8 * 1024 * 1024;
/// How long a test waits for a condition before it fails.
const WAIT: Duration = Duration::from_secs(120);

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i * 31 + seed * 7) % 251) as u8)
        .collect()
}

/// Waits (bounded) for `condition`, failing with `what`.
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A thread writing new files `w-N` (pattern N) into a directory of a mount, each fsync'd,
/// until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    synced: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// At most this many files: every loop is bounded.
const WRITES_MAX: u64 = 20_000;

fn busy_size(n: u64) -> usize {
    16 * 1024 + n as usize
}

impl Writer {
    fn start(dir: PathBuf) -> Writer {
        fs::create_dir(&dir).expect("the writer's directory");
        let stop = Arc::new(AtomicBool::new(false));
        let synced = Arc::new(AtomicU64::new(0));
        let (stopping, count) = (stop.clone(), synced.clone());
        let thread = std::thread::spawn(move || {
            for n in 0..WRITES_MAX {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                write_synced(&dir.join(format!("w-{n}")), &pattern(n, busy_size(n)));
                count.store(n + 1, Ordering::SeqCst);
            }
        });
        Writer {
            stop,
            synced,
            thread: Some(thread),
        }
    }

    /// How many files are written and fsync'd: `w-0` up to this, excluded.
    fn synced(&self) -> u64 {
        self.synced.load(Ordering::SeqCst)
    }

    /// Waits until more than `n` files are fsync'd.
    fn wait_beyond(&self, n: u64) {
        wait_for("the writer going on", || {
            let running = self.thread.as_ref().is_some_and(|t| !t.is_finished());
            assert!(running || self.synced() > n, "the writer stopped");
            self.synced() > n
        });
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the writer thread");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Restores `backup` and the chunk `archive` on a new data dir (and a new MongoDB database)
/// and starts a daemon on them.
fn restore(backend: &Backend, admin: Arc<Identity>, backup: &Path, archive: &Path) -> Storaged {
    let dir = tempfile::tempdir().expect("the new data dir");
    let (url, server) = match backend {
        Backend::Sqlite => (None, None),
        Backend::Mongo(server) => (
            Some(server.url(&unique_database("restored"))),
            Some(server.clone()),
        ),
    };
    tools::storaged("restore", dir.path(), url.as_deref(), &[backup])
        .expect_code(&[0], "storaged restore");
    assert_eq!(
        fs::read_to_string(dir.path().join("admin.pub")).expect("restore puts admin.pub back"),
        admin.public().to_admin_key_text()
    );
    tools::tar_extract(archive, &dir.path().join("chunks"));
    Storaged::start_in(dir, admin, url, server, &[])
}

/// Files fsync'd before the snapshot; the last two are rewritten and removed after it.
const SYNCED: [(&str, u64, usize); 4] = [
    ("kept", 3, 2 * CHUNK + 5),
    ("dir/nested", 11, 4096),
    ("rewritten", 5, CHUNK + 7),
    ("removed", 7, 1000),
];

fn a_backup_taken_during_writes_restores_what_was_synced(backend: Backend) {
    let metrics = format!("127.0.0.1:{}", free_port());
    // Superseded chunk files are collected every second, after the default grace period.
    let mut daemon =
        Storaged::start_on(&backend, &["--gc-seconds", "1", "--metrics-addr", &metrics]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let user = runtime.block_on(daemon.user("alice"));
    let client = ClientFiles::for_user(&user);
    let mut mount = Mount::start(&daemon, &client, &[]);
    fs::create_dir(mount.join("dir")).expect("mkdir");
    for (name, seed, len) in SYNCED {
        write_synced(&mount.join(name), &pattern(seed, len));
    }
    let mut writer = Writer::start(mount.join("busy"));
    writer.wait_beyond(0);
    let synced_before = writer.synced();
    let work = tempfile::tempdir().expect("backup dir");
    let (backup, archive) = (work.path().join("backup"), work.path().join("chunks.tar"));
    let run = tools::storaged("backup", daemon.data_dir(), daemon.meta_url(), &[&backup]);
    run.expect_code(&[0], "storaged backup");
    writer.wait_beyond(writer.synced());
    // Superseded after the snapshot, then a whole GC pass before the copy: grace keeps them.
    write_synced(&mount.join("rewritten"), &pattern(13, CHUNK + 7));
    fs::remove_file(mount.join("removed")).expect("remove");
    let passes = server_calls(&metrics, "gc", "");
    wait_for("two GC passes", || {
        server_calls(&metrics, "gc", "") >= passes + 2
    });
    tools::tar_create(&daemon.data_dir().join("chunks"), &archive);
    writer.wait_beyond(writer.synced());
    writer.stop();
    mount.stop();
    // A clean stop: a killed daemon may leave a MongoDB transaction open a minute.
    daemon.stop();
    let admin = daemon.admin.clone();
    let old_dir = daemon.data_dir().to_path_buf();
    drop(daemon);
    assert!(!old_dir.exists(), "the old data dir is destroyed");

    let restored = restore(&backend, admin, &backup, &archive);
    let fsck = tools::storaged_fsck(&restored, false);
    fsck.expect_code(
        &[0, 3],
        "fsck of the restored vault (chunk files newer than the snapshot are leftovers)",
    );
    // This client saw newer states than the backup's: it accepts the restored ones only when
    // told to forget them.
    let mut mount = Mount::start(&restored, &client, &["--forget-seen"]);
    for (name, seed, len) in SYNCED {
        let bytes = fs::read(mount.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(bytes == pattern(seed, len), "{name} reads back as synced");
    }
    for n in 0..synced_before {
        let name = format!("busy/w-{n}");
        let bytes = fs::read(mount.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(bytes == pattern(n, busy_size(n)), "{name} reads back");
    }
    // Files written during the backup may be there or not; those there read.
    for entry in fs::read_dir(mount.join("busy")).expect("busy") {
        let path = entry.expect("an entry").path();
        fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let vaultfs = tools::vaultfs_fsck(&restored, &client, "/");
    vaultfs.expect_code(&[0], "vaultfs fsck of the restored vault");
    mount.stop();
}

/// The inode number of `name` in a mount.
fn ino(mount: &Mount, name: &str) -> u64 {
    fs::metadata(mount.join(name)).expect("stat").ino()
}

fn an_older_snapshot_beside_newer_chunks_has_exactly_its_missing_chunks_reported(backend: Backend) {
    // No grace: superseded chunk files go at the next pass, so the older snapshot misses them.
    let mut daemon =
        Storaged::start_on(&backend, &["--gc-seconds", "1", "--gc-grace-seconds", "0"]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let user = runtime.block_on(daemon.user("alice"));
    let client = ClientFiles::for_user(&user);
    let mut mount = Mount::start(&daemon, &client, &[]);
    let root = daemon.data_dir().join("chunks");
    for (name, seed, len) in [
        ("same", 3, CHUNK + 1),
        ("rewritten", 5, 2 * CHUNK),
        ("removed", 7, 1000),
    ] {
        write_synced(&mount.join(name), &pattern(seed, len));
    }
    let settled = |inos: &[u64]| {
        inos.iter()
            .all(|&i| chunk_files_all(&root, i).len() == chunk_files(&root, i).len())
    };
    let written = ["same", "rewritten", "removed"].map(|name| ino(&mount, name));
    // Only current chunk files, or the backup would list superseded ones the copy lacks.
    wait_for("superseded chunk files collected", || settled(&written));
    let gone: Vec<PathBuf> = [ino(&mount, "rewritten"), ino(&mount, "removed")]
        .into_iter()
        .flat_map(|i| chunk_files(&root, i))
        .collect();
    assert_eq!(gone.len(), 3);
    let work = tempfile::tempdir().expect("backup dir");
    let (backup, archive) = (work.path().join("older"), work.path().join("chunks.tar"));
    tools::storaged("backup", daemon.data_dir(), daemon.meta_url(), &[&backup])
        .expect_code(&[0], "storaged backup");
    write_synced(&mount.join("rewritten"), &pattern(13, 2 * CHUNK));
    fs::remove_file(mount.join("removed")).expect("remove");
    write_synced(&mount.join("new"), &pattern(17, 5000));
    let rewritten = [ino(&mount, "rewritten"), ino(&mount, "new")];
    wait_for("the superseded chunk files collected", || {
        gone.iter().all(|p| !p.exists()) && settled(&rewritten)
    });
    let newer: BTreeSet<String> = rewritten
        .into_iter()
        .flat_map(|i| chunk_files(&root, i))
        .map(|p| chunk_id(&p))
        .collect();
    tools::tar_create(&root, &archive);
    mount.stop();
    // A clean stop: a killed daemon may leave a MongoDB transaction open a minute.
    daemon.stop();
    let admin = daemon.admin.clone();
    drop(daemon);

    let restored = restore(&backend, admin, &backup, &archive);
    let missing: BTreeSet<String> = gone.iter().map(|p| chunk_id(p)).collect();
    assert_reports_exactly(&restored, &client, &missing, &newer);
}

/// Both fscks of the restored vault report exactly the `missing` chunk files (in
/// "/removed" and "/rewritten") and the `newer` ones the snapshot does not name.
fn assert_reports_exactly(
    restored: &Storaged,
    client: &ClientFiles,
    missing: &BTreeSet<String>,
    newer: &BTreeSet<String>,
) {
    let fsck = tools::storaged_fsck(restored, false);
    fsck.expect_code(&[4], "fsck of an older snapshot beside newer chunks");
    let found = subjects(&fsck.findings("missing-chunk"));
    assert_eq!(&found, missing, "{}", fsck.stdout);
    let found = subjects(&fsck.findings("orphan-chunk-file"));
    assert_eq!(&found, newer, "{}", fsck.stdout);
    let labels: BTreeSet<String> = ["missing-chunk", "orphan-chunk-file"]
        .map(String::from)
        .into();
    assert_eq!(
        fsck.labels(),
        labels,
        "nothing else is reported:\n{}",
        fsck.stdout
    );
    let vaultfs = tools::vaultfs_fsck(restored, client, "/");
    vaultfs.expect_code(
        &[4],
        "vaultfs fsck of an older snapshot beside newer chunks",
    );
    let damaged: BTreeSet<String> = ["/removed", "/rewritten"].map(String::from).into();
    let found = subjects(&vaultfs.findings("damaged"));
    assert_eq!(found, damaged, "{}", vaultfs.stdout);
}

/// A copy of the backup in `from` as `to`, `damage` done to it.
fn damaged_copy(from: &Path, to: &Path, damage: impl FnOnce(&Path)) -> PathBuf {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success(), "cp -a the backup");
    damage(to);
    to.to_path_buf()
}

/// Cuts the last `bytes` off `path`.
fn cut(path: &Path, bytes: u64) {
    let len = fs::metadata(path).expect("stat").len();
    let file = fs::OpenOptions::new().write(true).open(path);
    file.and_then(|f| f.set_len(len - bytes)).expect("truncate");
}

fn a_damaged_backup_is_refused_and_nothing_is_put_in_place(backend: Backend) {
    let daemon = Storaged::start_on(&backend, &[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(daemon.user("alice"));
    let work = tempfile::tempdir().expect("backup dir");
    let backup = work.path().join("backup");
    tools::storaged("backup", daemon.data_dir(), daemon.meta_url(), &[&backup])
        .expect_code(&[0], "storaged backup");
    let metadata = match backend {
        Backend::Sqlite => "meta.db",
        Backend::Mongo(_) => "mongodb/inodes.bson",
    };
    let manifest = fs::read_to_string(backup.join("BACKUP")).expect("the manifest");
    let vault = manifest
        .lines()
        .find(|l| l.starts_with("vault = "))
        .expect("vault");
    let damaged = [
        damaged_copy(&backup, &work.path().join("no-manifest"), |b| {
            fs::remove_file(b.join("BACKUP")).expect("rm")
        }),
        damaged_copy(&backup, &work.path().join("cut"), |b| {
            cut(&b.join(metadata), 3)
        }),
        damaged_copy(&backup, &work.path().join("other-vault"), |b| {
            let other = format!("vault = \"{}\"", "ab".repeat(16));
            fs::write(b.join("BACKUP"), manifest.replace(vault, &other)).expect("edit")
        }),
    ];
    let target = tempfile::tempdir().expect("the new data dir");
    let url = match &backend {
        Backend::Sqlite => None,
        Backend::Mongo(server) => Some(server.url(&unique_database("restored"))),
    };
    for copy in &damaged {
        let run = tools::storaged("restore", target.path(), url.as_deref(), &[copy]);
        run.expect_code(&[1], &format!("restore of {}", copy.display()));
        assert_eq!(
            run.stderr.trim().lines().count(),
            1,
            "one line: {}",
            run.stderr
        );
        assert!(
            !target.path().join("meta.db").exists(),
            "{}",
            copy.display()
        );
    }
    // fsck before the restore finds no vault there, and makes none.
    fs::create_dir(target.path().join("chunks")).expect("a chunk root");
    tools::storaged("fsck", target.path(), url.as_deref(), &[])
        .expect_code(&[1], "fsck of a data dir without metadata");
    // Nothing was put in place: the intact backup restores onto the same target.
    tools::storaged("restore", target.path(), url.as_deref(), &[&backup])
        .expect_code(&[0], "restore of the intact backup");
}

tests::on_every_backend!(
    sync: a_backup_taken_during_writes_restores_what_was_synced,
    an_older_snapshot_beside_newer_chunks_has_exactly_its_missing_chunks_reported,
    a_damaged_backup_is_refused_and_nothing_is_put_in_place,
);
