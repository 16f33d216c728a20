//! The client's filesystem operations as plain functions, driven without a mount against a
//! real daemon: what the FUSE adapter calls, and the errors it turns into errno.

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
/// The user and group the files made here belong to.
const OWNER: Owner = Owner { uid: 0, gid: 0 };

fn vault_of(daemon: &Storaged, runtime: &tokio::runtime::Runtime) -> Vault {
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
    let shared = Arc::new(Shared::new(
        remote,
        keys,
        Limits::default(),
        runtime.handle().clone(),
    ));
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
