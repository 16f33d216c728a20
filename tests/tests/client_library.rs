//! The client's filesystem operations as plain functions, driven without a mount against a
//! real daemon: what the FUSE adapter calls, and the errors it turns into errno; and random
//! I/O through them (write-back, the dirty budget, blocks read again).

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use format::ids::FileId;
use proto::v1::Attr;
use tests::daemon::Storaged;
use vaultfs::config::ClientConfig;
use vaultfs::error::{FsError, errno};
use vaultfs::keys::Keys;
use vaultfs::shared::{Limits, Shared};
use vaultfs::vault::{Changes, Owner, RenameMode, Vault};

const ROOT: FileId = FileId::ROOT;
const CHUNK: u64 = 8 * 1024 * 1024;
/// The user and group the files made here belong to.
const OWNER: Owner = Owner { uid: 0, gid: 0 };

fn vault_of(daemon: &Storaged, runtime: &tokio::runtime::Runtime) -> Vault {
    vault_with(daemon, runtime, Limits::default())
}

fn vault_with(daemon: &Storaged, runtime: &tokio::runtime::Runtime, limits: Limits) -> Vault {
    let user = runtime.block_on(daemon.user("alice"));
    let config = ClientConfig {
        server: Some(format!("unix:{}", daemon.socket().display())),
        name: Some("alice".into()),
        expected_admin: Some(daemon.admin.public().fingerprint()),
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
    let shared = Arc::new(Shared::new(remote, keys, limits, runtime.handle().clone()));
    Vault::new(shared)
}

#[test]
fn file_operations_without_a_mount() {
    let daemon = Storaged::start(&[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let vault = vault_of(&daemon, &runtime);

    let dir = vault.mkdir(ROOT, b"dir", 0o755, OWNER).expect("mkdir");
    let (attr, fh) = vault
        .create(FileId(dir.ino), b"file", 0o644, true, OWNER)
        .expect("create");
    assert_eq!(vault.write(fh, 0, b"hello").expect("write"), 5);
    assert_eq!(
        vault
            .write(fh, 8 * 1024 * 1024 - 2, b"across")
            .expect("write across a boundary"),
        6
    );
    vault.flush(fh).expect("flush");
    vault.release(fh).expect("release");
    assert_eq!(
        vault.getattr(FileId(attr.ino)).expect("getattr").size,
        8 * 1024 * 1024 + 4
    );

    let (fh, _) = vault.open(FileId(attr.ino)).expect("open");
    assert_eq!(vault.read(fh, 0, 5).expect("read"), &b"hello"[..]);
    assert_eq!(
        vault.read(fh, 8 * 1024 * 1024 - 2, 100).expect("read"),
        &b"across"[..]
    );
    assert_eq!(vault.read(fh, 100, 4).expect("a hole"), vec![0; 4]);
    vault.release(fh).expect("release");

    vault
        .setattr(
            FileId(attr.ino),
            &Changes {
                size: Some(3),
                ..Changes::default()
            },
        )
        .expect("truncate");
    let (fh, _) = vault.open(FileId(attr.ino)).expect("open");
    assert_eq!(vault.read(fh, 0, 100).expect("read"), &b"hel"[..]);
    vault.release(fh).expect("release");

    vault
        .rename(
            FileId(dir.ino),
            b"file",
            ROOT,
            b"moved",
            RenameMode::Replace,
        )
        .expect("rename");
    let missing = vault
        .lookup(FileId(dir.ino), b"file")
        .expect_err("moved away");
    assert_eq!(errno(&missing), libc::ENOENT);
    assert_eq!(
        errno(&vault.rmdir(ROOT, b"moved").expect_err("not a directory")),
        libc::ENOTDIR
    );
    assert_eq!(
        errno(&vault.mkdir(ROOT, b"dir", 0o755, OWNER).expect_err("exists")),
        libc::EEXIST
    );
    vault.unlink(ROOT, b"moved").expect("unlink");
    vault.rmdir(ROOT, b"dir").expect("rmdir");
    let (_, dirty, open) = vault.usage();
    assert_eq!((dirty, open), (0, 0), "nothing left dirty or open");
}

/// The kernel sends a close's release asynchronously, so an open of the same file can arrive
/// while that release is still flushing. The open must end up registered as open: unlinking
/// the file afterwards keeps it readable through that handle.
#[test]
fn an_open_racing_a_release_keeps_the_file_open() {
    let daemon = Storaged::start(&[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let vault = vault_of(&daemon, &runtime);
    for round in 0..8u8 {
        let name = format!("raced-{round}");
        let (attr, old) = vault
            .create(ROOT, name.as_bytes(), 0o644, true, OWNER)
            .expect("create");
        // Dirty data makes the release flush two chunks, which takes a while; the open
        // comes in meanwhile.
        let content = vec![round; 9 << 20];
        vault.write(old, 0, &content).expect("write");
        let fresh = std::thread::scope(|scope| {
            let releasing = scope.spawn(|| vault.release(old));
            std::thread::sleep(Duration::from_millis(5));
            let opened = vault.open(FileId(attr.ino)).expect("open").0;
            releasing.join().expect("release thread").expect("release");
            opened
        });
        assert_eq!(vault.usage().2, 1, "round {round}: the new handle is open");
        vault.unlink(ROOT, name.as_bytes()).expect("unlink");
        assert_eq!(
            vault.read(fresh, 0, 1 << 20).expect("read after unlink"),
            content[..1 << 20],
            "round {round}"
        );
        vault.release(fresh).expect("release");
        assert_eq!(vault.usage().2, 0, "round {round}: nothing left open");
    }
}

/// A file created without O_EXCL exists only in this client until its first flush, which
/// creates it on the server together with its first chunk (one commit). Until then this client
/// answers for it; anything that needs it on the server creates it first.
#[test]
fn a_new_file_reaches_the_server_at_its_first_flush() {
    let daemon = Storaged::start(&[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let vault = vault_of(&daemon, &runtime);
    let on_server = |name: &'static [u8]| {
        runtime.block_on(vault.shared().remote.call("lookup", |mut api| async move {
            api.lookup(proto::v1::LookupRequest {
                parent: ROOT.0,
                name: name.to_vec(),
            })
            .await
        }))
    };
    the_first_flush_creates_it(&vault, &on_server);
    a_listing_or_an_empty_close_creates_it(&vault, &on_server);
    an_unlink_creates_it_first(&vault, &on_server);
    a_name_taken_meanwhile_fails_the_flush(&vault, &on_server);
    let (_, dirty, open) = vault.usage();
    assert_eq!((dirty, open), (0, 0), "nothing left dirty or open");
}

/// A name in the root directory as the server has it, asked directly (not through the vault).
type OnServer<'a> = &'a dyn Fn(&'static [u8]) -> Result<Attr, FsError>;

/// Until its first flush, a new file is only in this client, which answers for it.
fn the_first_flush_creates_it(vault: &Vault, on_server: OnServer) {
    let (attr, fh) = vault
        .create(ROOT, b"late", 0o640, false, OWNER)
        .expect("create");
    assert_eq!(
        errno(&on_server(b"late").expect_err("not on the server yet")),
        libc::ENOENT
    );
    assert_eq!(vault.lookup(ROOT, b"late").expect("lookup").ino, attr.ino);
    assert_eq!(
        vault.getattr(FileId(attr.ino)).expect("getattr").perm,
        0o640
    );
    assert!(
        vault
            .listxattr(FileId(attr.ino))
            .expect("listxattr")
            .is_empty()
    );
    vault.write(fh, 0, b"hello").expect("write");
    assert_eq!(vault.getattr(FileId(attr.ino)).expect("getattr").size, 5);
    vault.flush(fh).expect("flush creates it with its chunk");
    let created = on_server(b"late").expect("on the server now");
    assert_eq!(
        (created.ino, created.size, created.perm),
        (attr.ino, 5, 0o640)
    );
    vault.release(fh).expect("release");
    let (fh, _) = vault.open(FileId(attr.ino)).expect("open");
    assert_eq!(vault.read(fh, 0, 100).expect("read"), &b"hello"[..]);
    vault.release(fh).expect("release");
}

/// Listing the directory creates what is pending in it first; so does an empty close.
fn a_listing_or_an_empty_close_creates_it(vault: &Vault, on_server: OnServer) {
    let (listed, fh) = vault
        .create(ROOT, b"listed", 0o644, false, OWNER)
        .expect("create");
    let dh = vault.opendir(ROOT).expect("opendir");
    let names: Vec<Vec<u8>> = vault
        .listing(dh)
        .expect("listing")
        .0
        .iter()
        .map(|(name, _)| name.clone())
        .collect();
    vault.releasedir(dh);
    assert!(names.contains(&b"listed".to_vec()), "{names:?}");
    assert_eq!(on_server(b"listed").expect("listed").ino, listed.ino);
    vault.release(fh).expect("release");
    let (empty, fh) = vault
        .create(ROOT, b"empty", 0o644, false, OWNER)
        .expect("create");
    vault
        .release(fh)
        .expect("an empty file is created at its close");
    assert_eq!(on_server(b"empty").expect("empty").ino, empty.ino);
}

/// Unlinking an open new file creates it first, so the open handle keeps it.
fn an_unlink_creates_it_first(vault: &Vault, on_server: OnServer) {
    let (_, fh) = vault
        .create(ROOT, b"gone", 0o644, false, OWNER)
        .expect("create");
    vault.write(fh, 0, b"still here").expect("write");
    vault.unlink(ROOT, b"gone").expect("unlink");
    assert_eq!(vault.read(fh, 0, 100).expect("read"), &b"still here"[..]);
    vault.release(fh).expect("release");
    assert_eq!(errno(&on_server(b"gone").expect_err("gone")), libc::ENOENT);
}

/// Another client took the name meanwhile: the flush fails with EEXIST, leaves the other file
/// alone and nothing half-created.
fn a_name_taken_meanwhile_fails_the_flush(vault: &Vault, on_server: OnServer) {
    let (_, fh) = vault
        .create(ROOT, b"taken", 0o644, false, OWNER)
        .expect("create");
    vault.write(fh, 0, b"mine").expect("write");
    let (theirs, other) = vault
        .create(ROOT, b"taken", 0o644, true, OWNER)
        .expect("another creates the name on the server");
    vault.write(other, 0, b"theirs").expect("write");
    vault.release(other).expect("release");
    assert_eq!(
        errno(&vault.flush(fh).expect_err("the name is taken")),
        libc::EEXIST
    );
    vault.release(fh).expect("release after a failed creation");
    let taken = on_server(b"taken").expect("theirs");
    assert_eq!((taken.ino, taken.size), (theirs.ino, 6));
}

// Random I/O: what a write of a few bytes into a committed chunk sends (nothing until the
// chunk is sealed once), a random writer held to its dirty budget, and random reads of a file
// larger than the cache served from blocks kept of chunks opened before, which still refuse
// a chunk file changed under them. Counts are of calls the daemon answered, never of time.

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
    let vault = vault_of(&daemon, &runtime);
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
    let gets = server_calls(&metrics, "get_chunk");
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
        server_calls(&metrics, "get_chunk"),
        gets,
        "the new generation's plaintext stayed in the cache"
    );
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
    let files = daemon.chunk_files(ino);
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
