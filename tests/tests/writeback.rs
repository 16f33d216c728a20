//! Random I/O through the client library against a real daemon: what a write of a few bytes
//! into a committed chunk sends (nothing until the chunk is sealed once), a random writer
//! held to its dirty budget by sending its least recently written chunks, and random reads
//! of a file larger than the cache served from blocks kept of chunks opened before, which
//! still refuse a chunk file changed under them. Counts are of calls the daemon answered,
//! never of time.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use format::ids::FileId;
use tests::daemon::Storaged;
use vaultfs::config::ClientConfig;
use vaultfs::error::errno;
use vaultfs::keys::Keys;
use vaultfs::shared::{Limits, Shared};
use vaultfs::vault::{Owner, Vault};

const CHUNK: u64 = 8 * 1024 * 1024;
const OWNER: Owner = Owner { uid: 0, gid: 0 };

fn vault_with(daemon: &Storaged, runtime: &tokio::runtime::Runtime, limits: Limits) -> Vault {
    let user = runtime.block_on(daemon.user("alice"));
    let config = ClientConfig {
        server: Some(format!("unix:{}", daemon.socket().display())),
        name: Some("alice".into()),
        ..ClientConfig::default()
    };
    let (remote, vault_id, pinned) = runtime
        .block_on(vaultfs::mount::connect(
            &config,
            user.identity.clone(),
            Duration::from_secs(5),
        ))
        .expect("connect");
    let keys = Keys::new(
        remote.clone(),
        vault_id,
        pinned.admin().expect("pinned admin key"),
        user.uid,
    );
    let shared = Shared::new(remote, keys, limits, runtime.handle().clone());
    Vault::new(Arc::new(shared))
}

/// A daemon that reports its calls on a metrics port.
fn daemon_with_metrics() -> (Storaged, String) {
    let metrics = format!("127.0.0.1:{}", tests::daemon::free_port());
    let daemon = Storaged::start(&["--metrics-addr", &metrics]);
    (daemon, metrics)
}

/// Calls of `op` the daemon answered so far.
fn server_calls(metrics: &str, op: &str) -> u64 {
    tests::daemon::server_calls(metrics, op, "")
}

/// Bytes that differ at every offset and with every seed.
fn pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i).wrapping_mul(2_654_435_761) >> 7) as u8 ^ seed as u8)
        .collect()
}

/// Creates `name` in the root holding `pattern(1, ..)` for `size` bytes, closed.
fn file_of(vault: &Vault, name: &[u8], size: u64) -> FileId {
    let (attr, fh) = vault
        .create(FileId::ROOT, name, 0o644, true, OWNER)
        .expect("create");
    let step = 1 << 20;
    for offset in (0..size).step_by(step) {
        let len = step.min((size - offset) as usize);
        vault
            .write(fh, offset, &pattern(1, offset, len))
            .expect("write");
    }
    vault.flush(fh).expect("flush");
    vault.release(fh).expect("release");
    FileId(attr.ino)
}

#[test]
fn small_writes_into_a_committed_chunk_send_it_once_at_the_close() {
    let (daemon, metrics) = daemon_with_metrics();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let vault = vault_with(&daemon, &runtime, Limits::default());
    let ino = file_of(&vault, b"twelve", 12 << 20);

    // What `dd bs=1 count=7 conv=notrunc` does: seven one-byte writes into chunk 0.
    let (fh, _) = vault.open(ino).expect("open");
    let puts = server_calls(&metrics, "put_chunk");
    for (i, byte) in b"CHANGED".iter().enumerate() {
        vault.write(fh, i as u64, &[*byte]).expect("write one byte");
    }
    assert_eq!(
        server_calls(&metrics, "put_chunk"),
        puts,
        "nothing is sent while the writer stays in the chunk"
    );
    let mut expected = b"CHANGED".to_vec();
    expected.extend(pattern(1, 7, 2));
    assert_eq!(vault.read(fh, 0, 9).expect("read"), expected);
    vault.flush(fh).expect("close");
    vault.release(fh).expect("release");
    assert_eq!(
        server_calls(&metrics, "put_chunk"),
        puts + 1,
        "one new generation of chunk 0, sent at the close"
    );
    let (fh, _) = vault.open(ino).expect("open again");
    let mut expected = pattern(1, 0, 16);
    expected[..7].copy_from_slice(b"CHANGED");
    assert_eq!(vault.read(fh, 0, 16).expect("read back"), expected);
    assert_eq!(
        vault.read(fh, CHUNK + 5, 4).expect("the other chunk"),
        pattern(1, CHUNK + 5, 4)
    );
    vault.release(fh).expect("release");
}

/// Deterministic "random" offsets: each far from the last.
fn scattered(count: usize, size: u64, seed: u64) -> impl Iterator<Item = u64> {
    let blocks = size / 4096;
    (0..count as u64).map(move |i| ((i * 7919 + seed) * 104_729 % blocks) * 4096)
}

#[test]
fn a_random_writer_keeps_to_its_dirty_budget_and_reads_its_own_writes() {
    let daemon = Storaged::start(&[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let limits = Limits {
        dirty_bytes_max: 16 << 20,
        cache_bytes_max: 16 << 20,
        ..Limits::default()
    };
    let vault = vault_with(&daemon, &runtime, limits);
    let size = 8 * CHUNK;
    let ino = file_of(&vault, b"drive", size);
    let mut model = pattern(1, 0, size as usize);

    let (fh, _) = vault.open(ino).expect("open");
    let mut most = 0;
    for (i, offset) in scattered(6000, size, 3).enumerate() {
        let data = pattern(i as u64 + 2, offset, 4096);
        vault.write(fh, offset, &data).expect("write");
        model[offset as usize..offset as usize + 4096].copy_from_slice(&data);
        most = most.max(vault.usage().1);
        if i % 500 == 0 {
            let at = offset.saturating_sub(100);
            let got = vault.read(fh, at, 8192).expect("read");
            assert_eq!(got, &model[at as usize..at as usize + 8192], "at {at}");
        }
    }
    assert!(
        most <= (16 << 20) + 8192,
        "{most} dirty bytes held, over the budget"
    );
    for offset in scattered(300, size, 11) {
        let got = vault.read(fh, offset, 4096).expect("read");
        assert_eq!(got, &model[offset as usize..offset as usize + 4096]);
    }
    vault.flush(fh).expect("close");
    vault.release(fh).expect("release");
    assert_eq!(vault.usage().1, 0, "nothing left dirty");
    let (fh, _) = vault.open(ino).expect("open again");
    for at in (0..size).step_by(1 << 20) {
        let got = vault.read(fh, at, 1 << 20).expect("read back");
        assert!(
            got == model[at as usize..(at + (1 << 20)) as usize],
            "at {at}"
        );
    }
    vault.release(fh).expect("release");
}

/// The chunk files of file `ino` on the daemon's disk, in index order.
fn chunk_files(daemon: &Storaged, ino: FileId) -> Vec<PathBuf> {
    let dir = format::layout::chunk_dir(&daemon.data_dir().join("chunks"), ino);
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .expect("the chunk directory")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (owner, index, _) = format::layout::parse_chunk_name(&name)?;
            (owner == ino).then(|| (index, e.path()))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

#[test]
fn random_reads_past_the_cache_read_kept_blocks_and_refuse_a_changed_chunk_file() {
    let (daemon, metrics) = daemon_with_metrics();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let limits = Limits {
        cache_bytes_max: 16 << 20,
        ..Limits::default()
    };
    let vault = vault_with(&daemon, &runtime, limits);
    let size = 6 * CHUNK;
    let ino = file_of(&vault, b"big", size);
    let model = pattern(1, 0, size as usize);

    let (fh, _) = vault.open(ino).expect("open");
    let check = |offset: u64| {
        let got = vault.read(fh, offset, 4096).expect("read");
        assert_eq!(
            got,
            &model[offset as usize..offset as usize + 4096],
            "at {offset}"
        );
    };
    // Every chunk read once, out of order: each is fetched and opened whole once.
    for index in [3, 0, 5, 1, 4, 2] {
        check(index * CHUNK + 4 * 4096 * (index + 1));
    }
    let fetched = server_calls(&metrics, "get_chunk");
    for offset in scattered(400, size, 5) {
        check(offset);
    }
    assert_eq!(
        server_calls(&metrics, "get_chunk"),
        fetched,
        "random reads past the cache read kept blocks, not whole chunks"
    );

    // The storage administrator changes a chunk file in place (chunk 1: the cache holds the
    // last two opened whole, 4 and 2): the kept blocks no longer match, the chunk is fetched
    // whole again, and its tag fails.
    let files = chunk_files(&daemon, ino);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&files[1])
        .expect("open the chunk file");
    file.write_all_at(&[0x55; 16], 64 + 4096 * 10)
        .expect("change the chunk file");
    drop(file);
    let error = vault
        .read(fh, CHUNK + 4096 * 10, 4096)
        .expect_err("a changed chunk file");
    assert_eq!(errno(&error), libc::EIO);
    check(2 * CHUNK + 4096 * 10);
    vault.release(fh).expect("release");
}
