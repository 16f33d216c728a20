//! POSIX behaviour through a real mount of a real daemon, one operation at a time, with the
//! error cases a program meets.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use tests::daemon::{Backend, Storaged};
use tests::mount::{ClientFiles, Mount};

fn errno(result: std::io::Result<impl std::fmt::Debug>) -> i32 {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(error) => error
            .raw_os_error()
            .unwrap_or_else(|| panic!("not an OS error: {error}")),
    }
}

fn chunk_files(daemon: &Storaged) -> usize {
    /// Chunk files only: not temporary files, not the root's layout marker.
    fn count(dir: &Path) -> usize {
        fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        count(&e.path())
                    } else {
                        let name = e.file_name().to_string_lossy().into_owned();
                        usize::from(format::layout::parse_chunk_name(&name).is_some())
                    }
                })
                .sum()
        })
    }
    count(&daemon.data_dir().join("chunks"))
}

struct Setup {
    daemon: Storaged,
    alice: Mount,
    _client: ClientFiles,
}

fn setup(backend: &Backend) -> Setup {
    let daemon = Storaged::start_on(backend, &["--gc-seconds", "1", "--gc-grace-seconds", "0"]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let user = runtime.block_on(daemon.user("alice"));
    let client = ClientFiles::for_user(&user);
    let alice = Mount::start(&daemon, &client, &[]);
    Setup {
        daemon,
        alice,
        _client: client,
    }
}

fn files_directories_and_links(backend: Backend) {
    let s = setup(&backend);
    let m = &s.alice;
    errors_a_program_meets(m);
    symlinks_and_hard_links(m);
    renames(m);
}

/// Makes `docs/a.txt` ("alpha"), and meets the errors of each wrong step around it.
fn errors_a_program_meets(m: &Mount) {
    fs::create_dir(m.join("docs")).expect("mkdir");
    fs::write(m.join("docs/a.txt"), b"alpha").expect("write");
    assert_eq!(fs::read(m.join("docs/a.txt")).expect("read"), b"alpha");
    assert_eq!(errno(fs::create_dir(m.join("docs"))), libc::EEXIST);
    assert_eq!(errno(fs::read(m.join("docs/missing"))), libc::ENOENT);
    assert_eq!(errno(fs::remove_dir(m.join("docs"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::read(m.join("docs/a.txt/x"))), libc::ENOTDIR);
    assert_eq!(
        errno(OpenOptions::new().write(true).open(m.join("docs"))),
        libc::EISDIR
    );
    assert_eq!(errno(fs::remove_file(m.join("docs"))), libc::EISDIR);
    assert_eq!(
        errno(fs::write(m.join(&"n".repeat(256)), b"x")),
        libc::ENAMETOOLONG
    );
    // O_EXCL.
    assert_eq!(
        errno(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(m.join("docs/a.txt"))
        ),
        libc::EEXIST
    );
}

/// A symlink `docs/link` to `a.txt`, and a hard link to it that comes and goes.
fn symlinks_and_hard_links(m: &Mount) {
    std::os::unix::fs::symlink("a.txt", m.join("docs/link")).expect("symlink");
    assert_eq!(
        fs::read_link(m.join("docs/link")).expect("readlink"),
        Path::new("a.txt")
    );
    assert_eq!(fs::read(m.join("docs/link")).expect("follow"), b"alpha");
    fs::hard_link(m.join("docs/a.txt"), m.join("hard.txt")).expect("link");
    assert_eq!(fs::metadata(m.join("hard.txt")).expect("stat").nlink(), 2);
    fs::write(m.join("hard.txt"), b"beta").expect("write through the other name");
    assert_eq!(fs::read(m.join("docs/a.txt")).expect("read"), b"beta");
    fs::remove_file(m.join("hard.txt")).expect("unlink one name");
    assert_eq!(fs::metadata(m.join("docs/a.txt")).expect("stat").nlink(), 1);
}

/// Renames: over an existing file, across directories, and RENAME_NOREPLACE.
fn renames(m: &Mount) {
    fs::write(m.join("b.txt"), b"bravo").expect("write");
    fs::rename(m.join("b.txt"), m.join("docs/a.txt")).expect("rename over");
    assert_eq!(fs::read(m.join("docs/a.txt")).expect("read"), b"bravo");
    fs::write(m.join("c.txt"), b"charlie").expect("write");
    let root = File::open(m.path()).expect("open root");
    let noreplace = rustix::fs::renameat_with(
        &root,
        "c.txt",
        &root,
        "docs/a.txt",
        rustix::fs::RenameFlags::NOREPLACE,
    );
    assert_eq!(
        noreplace.expect_err("must not replace").raw_os_error(),
        libc::EEXIST
    );
    rustix::fs::renameat_with(
        &root,
        "c.txt",
        &root,
        "docs/c.txt",
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .expect("noreplace to a free name");
    fs::create_dir(m.join("docs/sub")).expect("mkdir");
    assert_eq!(
        errno(fs::rename(m.join("docs"), m.join("docs/sub/docs"))),
        libc::EINVAL
    );
    fs::rename(m.join("docs/sub"), m.join("sub")).expect("move a directory up");
    let names: Vec<String> = fs::read_dir(m.join("docs"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["a.txt", "c.txt", "link"]);
    fs::remove_dir(m.join("sub")).expect("rmdir");
}

fn attributes_times_and_extended_attributes(backend: Backend) {
    let s = setup(&backend);
    let m = &s.alice;
    let path = m.join("f");
    mode_owner_and_times(&path);
    extended_attributes(&path);

    let stat = rustix::fs::statvfs(m.path()).expect("statfs");
    assert!(
        stat.f_blocks > 0 && stat.f_namemax == 255,
        "blocks {} namemax {}",
        stat.f_blocks,
        stat.f_namemax
    );

    // A FIFO is a node in the vault; its I/O stays in the kernel.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        m.join("pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
    assert!(
        rustix::fs::stat(m.join("pipe")).expect("stat").st_mode & libc::S_IFMT == libc::S_IFIFO
    );
}

/// Writes `path`, then sets its mode, owner and times.
fn mode_owner_and_times(path: &Path) {
    fs::write(path, b"data").expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(fs::metadata(path).expect("stat").mode() & 0o7777, 0o600);
    rustix::fs::chown(
        path,
        Some(rustix::process::Uid::from_raw(1234)),
        Some(rustix::process::Gid::from_raw(4321)),
    )
    .expect("chown as root");
    let meta = fs::metadata(path).expect("stat");
    assert_eq!((meta.uid(), meta.gid()), (1234, 4321));
    let when = when(2_000_000);
    rustix::fs::utimensat(rustix::fs::CWD, path, &when, rustix::fs::AtFlags::empty())
        .expect("utimens");
    let meta = fs::metadata(path).expect("stat");
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (2_000_000, 500));
}

/// The user namespace's extended attributes are kept, and no other's.
fn extended_attributes(path: &Path) {
    rustix::fs::setxattr(path, "user.colour", b"blue", rustix::fs::XattrFlags::CREATE)
        .expect("setxattr");
    let mut value = [0u8; 16];
    let n = rustix::fs::getxattr(path, "user.colour", &mut value).expect("getxattr");
    assert_eq!(&value[..n], b"blue");
    let again = rustix::fs::setxattr(path, "user.colour", b"red", rustix::fs::XattrFlags::CREATE);
    assert_eq!(again.expect_err("exists").raw_os_error(), libc::EEXIST);
    let mut list = [0u8; 64];
    let n = rustix::fs::listxattr(path, &mut list).expect("listxattr");
    assert_eq!(&list[..n], b"user.colour\0");
    rustix::fs::removexattr(path, "user.colour").expect("removexattr");
    assert_eq!(
        rustix::fs::getxattr(path, "user.colour", &mut value)
            .expect_err("gone")
            .raw_os_error(),
        libc::ENODATA
    );
    // Only the user namespace is kept: an ACL or a security label would look enforced and
    // not be; the kernel's and `ls`'s queries for them get "none".
    // (The kernel itself checks an ACL's bytes before it asks the vault to store one.)
    for name in ["security.selinux", "trusted.note"] {
        let refused = rustix::fs::setxattr(path, name, b"x", rustix::fs::XattrFlags::empty());
        assert_eq!(
            refused.expect_err(name).raw_os_error(),
            libc::EOPNOTSUPP,
            "{name}"
        );
    }
    for name in [
        "system.posix_acl_access",
        "security.selinux",
        "trusted.note",
    ] {
        assert_eq!(
            rustix::fs::getxattr(path, name, &mut value)
                .expect_err(name)
                .raw_os_error(),
            libc::ENODATA,
            "{name}"
        );
    }
}

fn sizes_sparse_files_append_truncate_and_sync(backend: Backend) {
    let s = setup(&backend);
    let m = &s.alice;
    let path = m.join("sparse");
    let before = chunk_files(&s.daemon);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .expect("create");
    file.seek(SeekFrom::Start(20 * 1024 * 1024)).expect("seek");
    file.write_all(b"tail").expect("write");
    file.sync_all().expect("fsync");
    file.sync_data().expect("fdatasync");
    assert_eq!(
        fs::metadata(&path).expect("stat").len(),
        20 * 1024 * 1024 + 4
    );
    // Only the chunk that holds data is stored: chunks 0 and 1 are holes.
    assert_eq!(
        chunk_files(&s.daemon) - before,
        1,
        "a never-written chunk is not stored"
    );
    let mut head = vec![1u8; 4096];
    file.seek(SeekFrom::Start(9 * 1024 * 1024)).expect("seek");
    file.read_exact(&mut head).expect("read a hole");
    assert!(head.iter().all(|&b| b == 0), "holes read as zeros");
    drop(file);

    // Truncate down and up: growing reads as zeros.
    fs::write(m.join("t"), vec![7u8; 100_000]).expect("write");
    let file = OpenOptions::new()
        .write(true)
        .open(m.join("t"))
        .expect("open");
    file.set_len(10).expect("truncate down");
    file.set_len(50_000).expect("truncate up");
    drop(file);
    let content = fs::read(m.join("t")).expect("read");
    assert_eq!(content.len(), 50_000);
    assert!(content[..10].iter().all(|&b| b == 7) && content[10..].iter().all(|&b| b == 0));

    // O_TRUNC and O_APPEND.
    fs::write(m.join("log"), b"first\n").expect("write");
    let mut log = OpenOptions::new()
        .append(true)
        .open(m.join("log"))
        .expect("append");
    log.write_all(b"second\n").expect("append");
    drop(log);
    assert_eq!(fs::read(m.join("log")).expect("read"), b"first\nsecond\n");
    let mut truncated = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.join("log"))
        .expect("O_TRUNC");
    truncated.write_all(b"third\n").expect("write");
    drop(truncated);
    assert_eq!(fs::read(m.join("log")).expect("read"), b"third\n");
}

fn an_unlinked_open_file_stays_readable_until_closed(backend: Backend) {
    let s = setup(&backend);
    let m = &s.alice;
    fs::write(m.join("doomed"), b"still here").expect("write");
    let mut open = File::open(m.join("doomed")).expect("open");
    fs::remove_file(m.join("doomed")).expect("unlink");
    assert_eq!(errno(fs::metadata(m.join("doomed"))), libc::ENOENT);
    let mut content = String::new();
    open.read_to_string(&mut content)
        .expect("read after unlink");
    assert_eq!(content, "still here");
    drop(open);
}

fn another_users_files_are_refused(backend: Backend) {
    let s = setup(&backend);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let bob = runtime.block_on(s.daemon.user("bob"));
    let bob_client = ClientFiles::for_user(&bob);
    let bob_mount = Mount::start(&s.daemon, &bob_client, &[]);
    fs::write(s.alice.join("private.txt"), b"alice only").expect("write");
    fs::create_dir(s.alice.join("alice-dir")).expect("mkdir");
    let listed: Vec<_> = fs::read_dir(bob_mount.path()).expect("readdir").collect();
    assert!(
        listed.is_empty(),
        "bob sees none of alice's entries: {listed:?}"
    );
    assert_eq!(errno(fs::read(bob_mount.join("private.txt"))), libc::EACCES);
    assert_eq!(
        errno(fs::read_dir(bob_mount.join("alice-dir"))),
        libc::EACCES
    );
    assert_eq!(
        errno(fs::remove_file(bob_mount.join("private.txt"))),
        libc::EACCES
    );
    assert_eq!(
        fs::read(s.alice.join("private.txt")).expect("alice still reads"),
        b"alice only"
    );
}

fn other_local_users_cannot_use_a_mount(backend: Backend) {
    let s = setup(&backend);
    fs::write(s.alice.join("mine.txt"), b"alice's").expect("write");
    fs::set_permissions(s.alice.join("mine.txt"), fs::Permissions::from_mode(0o644))
        .expect("chmod");
    // The mount carries alice's vault credentials: a local user other than its owner (and
    // root) is refused even where the mode bits would let them in.
    let output = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "cat",
        ])
        .arg(s.alice.join("mine.txt"))
        .output()
        .expect("setpriv (util-linux)");
    assert!(
        !output.status.success(),
        "nobody read through alice's mount"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Permission denied"),
        "{output:?}"
    );
}

/// A listing gives each entry's attributes with it (readdirplus): they are the current ones,
/// an open file's unflushed size included, and a change made while a listing is being read
/// is not undone by the older attributes of its later pages.
fn listings_carry_current_attributes(backend: Backend) {
    let setup = setup(&backend);
    let alice = &setup.alice;
    let dir = alice.join("listed");
    fs::create_dir(&dir).expect("mkdir");
    fs::write(dir.join("a"), b"abc").expect("write");
    fs::create_dir(dir.join("sub")).expect("mkdir");
    std::os::unix::fs::symlink("a", dir.join("link")).expect("symlink");
    let mut open = File::create(dir.join("open")).expect("create");
    open.write_all(b"unflushed").expect("write");
    let mut seen = Vec::new();
    for entry in fs::read_dir(&dir).expect("read_dir") {
        let entry = entry.expect("entry");
        let meta = fs::symlink_metadata(entry.path()).expect("stat");
        let kind = if meta.is_dir() {
            "dir"
        } else if meta.file_type().is_symlink() {
            "symlink"
        } else {
            "file"
        };
        seen.push((
            entry.file_name().into_string().expect("utf-8"),
            kind,
            meta.len(),
        ));
    }
    seen.sort();
    let sub_size = fs::metadata(dir.join("sub")).expect("stat").len();
    assert_eq!(
        seen,
        [
            ("a".to_string(), "file", 3),
            ("link".to_string(), "symlink", 1),
            ("open".to_string(), "file", 9),
            ("sub".to_string(), "dir", sub_size),
        ]
    );
    drop(open);

    // Enough entries for several pages; the last one grows while the listing is read.
    let many = alice.join("many");
    fs::create_dir(&many).expect("mkdir");
    for i in 0..400 {
        fs::write(many.join(format!("f{i:03}")), b"x").expect("write");
    }
    // Small reads of the directory (4 KiB each), so that its entries come in several pages.
    let fd = rustix::fs::open(
        &many,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .expect("open the directory");
    let mut buffer = [std::mem::MaybeUninit::uninit(); 4096];
    let mut pages = rustix::fs::RawDir::new(&fd, &mut buffer);
    pages.next().expect("a first entry").expect("entry");
    fs::write(many.join("f399"), vec![b'y'; 100]).expect("grow the last entry");
    let mut rest = 0;
    while let Some(entry) = pages.next() {
        entry.expect("entry");
        rest += 1;
    }
    assert_eq!(rest, 401, "400 files and \"..\" after \".\"");
    assert_eq!(fs::metadata(many.join("f399")).expect("stat").len(), 100);
}

/// A file opened only for writing bypasses the kernel's page cache; a reader that has the file
/// open (and cached) still sees every write at once.
fn a_reader_sees_what_a_write_only_descriptor_wrote(backend: Backend) {
    use std::os::unix::fs::FileExt;
    let setup = setup(&backend);
    let path = setup.alice.join("shared-page");
    fs::write(&path, vec![b'a'; 8192]).expect("write");
    let reader = File::open(&path).expect("open for reading");
    let mut head = [0u8; 4];
    reader.read_exact_at(&mut head, 4096).expect("read");
    assert_eq!(&head, b"aaaa");
    let writer = OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open for writing");
    writer.write_all_at(b"bbbb", 4096).expect("write");
    reader.read_exact_at(&mut head, 4096).expect("read again");
    assert_eq!(&head, b"bbbb", "the reader's cached page was dropped");
    writer.write_all_at(b"cccc", 4096).expect("write");
    drop(writer);
    reader
        .read_exact_at(&mut head, 4096)
        .expect("read after close");
    assert_eq!(&head, b"cccc");
}

/// A mount made by root reads ahead 1 MiB (the kernel's default for FUSE is 128 KiB), so a
/// sequential reader costs a request per MiB.
fn a_root_mount_reads_ahead_a_whole_request(backend: Backend) {
    let setup = setup(&backend);
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (CI runs as root)"
    );
    let dev = fs::metadata(setup.alice.path()).expect("stat").dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        rustix::fs::major(dev),
        rustix::fs::minor(dev)
    );
    let kib = fs::read_to_string(&path).expect("the mount's readahead");
    assert_eq!(kib.trim(), "1024", "{path}");
}

/// A write by a user without CAP_FSETID drops the set-user-ID bit (and set-group-ID with group
/// execution), as on a local filesystem; root's writes keep them.
fn writes_without_fsetid_drop_set_id_bits(backend: Backend) {
    let setup = setup(&backend);
    let path = setup.alice.join("tool");
    fs::write(&path, b"#!/bin/sh\n").expect("write");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o6755)).expect("chmod");
    let mode = |path: &Path| fs::metadata(path).expect("stat").permissions().mode() & 0o7777;
    OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open")
        .write_all(b"# root\n")
        .expect("append as root");
    assert_eq!(mode(&path), 0o6755, "root (CAP_FSETID) keeps them");
    // The same append by a process without CAP_FSETID (setpriv is in util-linux).
    let status = std::process::Command::new("setpriv")
        .args([
            "--bounding-set=-fsetid",
            "--",
            "sh",
            "-c",
            "printf '# user\\n' >> \"$0\"",
        ])
        .arg(&path)
        .status()
        .expect("running setpriv (util-linux)");
    assert!(status.success(), "{status}");
    assert_eq!(mode(&path), 0o0755);
    assert_eq!(
        fs::read(&path).expect("read"),
        b"#!/bin/sh\n# root\n# user\n"
    );
}

/// `tar`'s steps for one file, in one process that starts no other: create it exclusively,
/// write it, set its times, owner and mode, print its inode number, and close it once its
/// standard input closes.
const LIKE_TAR: &str = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
os.write(fd, b"tar's file")
os.utime(fd, ns=(1_000_000 * 10**9, 2_000_000 * 10**9 + 500))
os.fchown(fd, 1234, 4321)
os.fchmod(fd, 0o640)
print(os.fstat(fd).st_ino, flush=True)
sys.stdin.read()
os.close(fd)
"#;

/// What `tar` and `cp -p` do to each file before closing it: set its times, owner and mode
/// while its data is not flushed yet. The mount shows each change at once; the changes reach
/// the server with the data at the close (one commit), in the order they were made.
fn attributes_set_before_close_land_with_the_data(backend: Backend) {
    let daemon = Storaged::start_on(&backend, &[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let user = runtime.block_on(daemon.user("alice"));
    let client = ClientFiles::for_user(&user);
    let mut alice = Mount::start(&daemon, &client, &[]);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    // The file as the server has it, asked directly.
    let on_server = |ino: u64| {
        runtime
            .block_on(
                user.connection
                    .api()
                    .get_attr(proto::v1::GetAttrRequest { ino }),
            )
            .expect("get_attr")
            .into_inner()
    };
    changes_of_an_exclusive_create_wait_for_the_close(&alice, on_server);
    let big = change_files_before_closing_them(&alice);
    alice.remount();
    the_changes_landed_with_the_data(&alice, &big, started);
}

/// Access time 1,000,000 s after the epoch, modification time `mtime` s and 500 ns: the times
/// `like_tar` and `LIKE_TAR` set, with `mtime` 2,000,000.
fn when(mtime: i64) -> rustix::fs::Timestamps {
    rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 1_000_000,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: mtime,
            tv_nsec: 500,
        },
    }
}

/// Sets a file's times, owner and mode as `tar` does, and checks that the mount shows them.
fn like_tar(file: &File, mode: u32) {
    rustix::fs::futimens(file, &when(2_000_000)).expect("futimens");
    rustix::fs::fchown(
        file,
        Some(rustix::process::Uid::from_raw(1234)),
        Some(rustix::process::Gid::from_raw(4321)),
    )
    .expect("fchown as root");
    rustix::fs::fchmod(file, rustix::fs::Mode::from_raw_mode(mode)).expect("fchmod");
    let meta = file.metadata().expect("fstat");
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (mode, 1234, 4321)
    );
    assert_eq!(
        (meta.mtime(), meta.mtime_nsec(), meta.atime()),
        (2_000_000, 500, 1_000_000)
    );
}

/// A file created exclusively (on the server at once), as tar does: its changes reach the
/// server only at the close.
///
/// Whether they wait for the close is asked of a child process: this test process runs other
/// tests, whose children inherit its open descriptors until they exec, and each close of a
/// FUSE file's descriptor flushes it.
fn changes_of_an_exclusive_create_wait_for_the_close(
    alice: &Mount,
    on_server: impl Fn(u64) -> proto::v1::Attr,
) {
    let mut tar = std::process::Command::new("python3")
        .args(["-c", LIKE_TAR, &alice.join("exclusive").to_string_lossy()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (our machines have it; MongoDB's stand-in runs on it)");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(tar.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("the child's inode number");
    let ino: u64 = line.trim().parse().expect("an inode number");
    let before = on_server(ino);
    assert_ne!(
        (before.perm, before.uid),
        (0o640, 1234),
        "the changes went to the server before the close"
    );
    drop(tar.stdin.take());
    assert!(tar.wait().expect("wait").success(), "the child failed");
    let after = on_server(ino);
    assert_eq!((after.perm, after.uid, after.gid), (0o640, 1234, 4321));
}

/// Files created without O_EXCL (on the server with their first chunk), changed before their
/// close in every way that matters; returns the contents of the one of two chunks.
fn change_files_before_closing_them(alice: &Mount) -> Vec<u8> {
    let mut plain = File::create(alice.join("plain")).expect("create");
    plain.write_all(b"cp's file").expect("write");
    like_tar(&plain, 0o604);
    drop(plain);
    // A change with nothing written: the file is created, then changed.
    let empty = File::create(alice.join("empty")).expect("create");
    rustix::fs::fchmod(&empty, rustix::fs::Mode::from_raw_mode(0o600)).expect("fchmod");
    drop(empty);
    // A write after the times were set moves the modification time to its own.
    let mut touched = File::create(alice.join("touched")).expect("create");
    touched.write_all(b"before").expect("write");
    rustix::fs::futimens(&touched, &when(2_000_000)).expect("futimens");
    touched.write_all(b" and after").expect("write");
    drop(touched);
    // More than one chunk (a separate commit of uploaded chunks), and a truncation after the
    // changes (which goes to the server at once, with the changes kept before it).
    let big: Vec<u8> = (0..format::limits::CHUNK_BYTES + 100)
        .map(|i| (i % 251) as u8)
        .collect();
    let mut two_chunks = File::create(alice.join("two-chunks")).expect("create");
    two_chunks.write_all(&big).expect("write");
    like_tar(&two_chunks, 0o660);
    drop(two_chunks);
    let mut cut = File::create(alice.join("cut")).expect("create");
    cut.write_all(b"longer than kept").expect("write");
    rustix::fs::fchmod(&cut, rustix::fs::Mode::from_raw_mode(0o611)).expect("fchmod");
    cut.set_len(6).expect("ftruncate");
    assert_eq!(cut.metadata().expect("fstat").mode() & 0o7777, 0o611);
    drop(cut);
    big
}

/// After a remount, every file shows what was set before its close, with its data.
fn the_changes_landed_with_the_data(m: &Mount, big: &[u8], started: i64) {
    for (name, mode, contents) in [
        ("exclusive", 0o640, &b"tar's file"[..]),
        ("plain", 0o604, &b"cp's file"[..]),
        ("two-chunks", 0o660, big),
    ] {
        let meta = fs::metadata(m.join(name)).expect("stat");
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid(), meta.gid()),
            (mode, 1234, 4321),
            "{name}"
        );
        assert_eq!(
            (meta.mtime(), meta.mtime_nsec(), meta.atime()),
            (2_000_000, 500, 1_000_000),
            "{name}"
        );
        assert_eq!(fs::read(m.join(name)).expect("read"), contents, "{name}");
    }
    let empty = fs::metadata(m.join("empty")).expect("stat");
    assert_eq!((empty.mode() & 0o7777, empty.len()), (0o600, 0));
    let touched = fs::metadata(m.join("touched")).expect("stat");
    assert!(
        touched.mtime() >= started - 60,
        "a write after futimens left mtime at {}",
        touched.mtime()
    );
    assert_eq!(
        fs::read(m.join("touched")).expect("read"),
        b"before and after"
    );
    let cut = fs::metadata(m.join("cut")).expect("stat");
    assert_eq!((cut.mode() & 0o7777, cut.len()), (0o611, 6));
    assert_eq!(fs::read(m.join("cut")).expect("read"), b"longer");
}

tests::on_every_backend!(
    sync: files_directories_and_links,
    attributes_times_and_extended_attributes,
    attributes_set_before_close_land_with_the_data,
    sizes_sparse_files_append_truncate_and_sync,
    an_unlinked_open_file_stays_readable_until_closed,
    another_users_files_are_refused,
    other_local_users_cannot_use_a_mount,
    listings_carry_current_attributes,
    a_reader_sees_what_a_write_only_descriptor_wrote,
    a_root_mount_reads_ahead_a_whole_request,
    writes_without_fsetid_drop_set_id_bits,
);
