//! Write-back under a real mount, on every metadata backend: small writes into a committed
//! chunk stay in memory until the close sends the chunk once, what an fsync covered survives
//! a killed client, and a chunk left alone reaches the server without a close. Counts are of
//! calls the daemon answered; waits are for the condition itself, bounded.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use tests::daemon::{Backend, server_calls};
use tests::mount::{Mount, metered as setup};

const CHUNK: usize = 8 << 20;

/// Chunks the daemon accepted so far, alone or many in one call.
fn chunk_puts(metrics: &str) -> u64 {
    server_calls(metrics, "put_chunk", "ok") + server_calls(metrics, "put_chunks", "ok")
}

/// Bytes that differ at every offset and with every seed.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) >> 7) as u8 ^ seed)
        .collect()
}

/// Writes `content` to a new file and makes it durable before the close.
fn durable_file(path: &std::path::Path, content: &[u8]) {
    let file = File::create(path).expect("create");
    file.write_all_at(content, 0).expect("write");
    file.sync_all().expect("fsync");
}

/// Waits, a bounded time, for the mount of a killed client to go away.
fn wait_unmounted(mount: &Mount) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while mount.is_mounted() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!mount.is_mounted(), "the killed client's mount is gone");
}

/// `dd bs=1 conv=notrunc` of seven bytes into a 12 MiB file: one new generation of chunk 0,
/// sent at the close (the idle flush is set far out so that only the writes count).
fn one_byte_writes_into_a_chunk_send_it_once_at_the_close(backend: Backend) {
    let (_daemon, metrics, _client, mount) = setup(&backend, &["--dirty-idle-seconds", "3600"]);
    let path = mount.join("twelve");
    let mut model = pattern(1, 12 << 20);
    durable_file(&path, &model);
    let before = chunk_puts(&metrics);

    let file = OpenOptions::new().write(true).open(&path).expect("open");
    for (i, byte) in b"CHANGED".iter().enumerate() {
        assert_eq!(file.write_at(&[*byte], i as u64).expect("write"), 1);
    }
    assert_eq!(
        chunk_puts(&metrics),
        before,
        "nothing is sent while the writer stays in the chunk"
    );
    drop(file);
    assert_eq!(
        chunk_puts(&metrics),
        before + 1,
        "one new generation of chunk 0, sent at the close"
    );
    model[..7].copy_from_slice(b"CHANGED");
    assert!(
        fs::read(&path).expect("read back") == model,
        "the file reads back"
    );
}

/// Scattered writes into chunks 0 and 2 are fsync'd, then chunk 1 is written and the client
/// killed: the fsync'd writes are there after a remount, chunk 1 is old or new, whole.
fn fsynced_writes_survive_a_killed_client(backend: Backend) {
    let (_daemon, _metrics, _client, mut mount) = setup(&backend, &[]);
    let path = mount.join("drive");
    let old = pattern(1, 20 << 20);
    durable_file(&path, &old);
    let mut synced = old.clone();
    let file = OpenOptions::new().write(true).open(&path).expect("open");
    for (i, at) in [5 * 4096, 2 * CHUNK + 77, 100 * 4096, 2 * CHUNK + 9000]
        .into_iter()
        .enumerate()
    {
        let data = pattern(i as u8 + 2, 4096);
        file.write_at(&data, at as u64).expect("write");
        synced[at..at + 4096].copy_from_slice(&data);
    }
    file.sync_all().expect("fsync");
    let mut unsynced = synced.clone();
    let data = pattern(9, 4096);
    file.write_at(&data, (CHUNK + 300) as u64).expect("write");
    unsynced[CHUNK + 300..CHUNK + 300 + 4096].copy_from_slice(&data);

    mount.kill();
    wait_unmounted(&mount);
    drop(file);
    mount.spawn();
    let got = fs::read(&path).expect("read after the crash");
    assert_eq!(got.len(), old.len());
    assert!(got[..CHUNK] == synced[..CHUNK], "fsync'd chunk 0 survives");
    assert!(
        got[2 * CHUNK..] == synced[2 * CHUNK..],
        "fsync'd chunk 2 survives"
    );
    let chunk1 = &got[CHUNK..2 * CHUNK];
    assert!(
        chunk1 == &synced[CHUNK..2 * CHUNK] || chunk1 == &unsynced[CHUNK..2 * CHUNK],
        "the unsynced chunk is old or new, whole"
    );
}

/// A write into a file kept open reaches the server once no one wrote for the idle time: the
/// next open on another mount sees it while the writer still holds the file open.
fn written_data_left_alone_reaches_the_server_without_a_close(backend: Backend) {
    let (daemon, _metrics, client, first) = setup(&backend, &["--dirty-idle-seconds", "1"]);
    let second = Mount::start(&daemon, &client, &[]);
    let mut model = pattern(1, 12 << 20);
    durable_file(&first.join("idle"), &model);

    let file = OpenOptions::new()
        .write(true)
        .open(first.join("idle"))
        .expect("open");
    file.write_at(b"idle", CHUNK as u64 + 10).expect("write");
    model[CHUNK + 10..CHUNK + 14].copy_from_slice(b"idle");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        seen = fs::read(second.join("idle")).is_ok_and(|read| read == model);
    }
    assert!(
        seen,
        "the other mount never saw the write of a file still open"
    );
    drop(file);
}

tests::on_every_backend!(sync:
    one_byte_writes_into_a_chunk_send_it_once_at_the_close,
    fsynced_writes_survive_a_killed_client,
    written_data_left_alone_reaches_the_server_without_a_close,
);
