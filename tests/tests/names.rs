//! The storage administrator against names (issue 20, item 4): it reads the whole data dir
//! and database looking for names and symlink targets, turns a file into a symlink, changes a
//! symlink's target, swaps entries, points one at another inode and moves one to another
//! directory. Through a real mount on a real daemon, names are not there to read and every
//! edit gives EIO and a log line, never the wrong file (`docs/format.md` sections 5.6 and 8).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tests::daemon::{Backend, Storaged};
use tests::mount::{ClientFiles, Mount};

#[allow(dead_code)]
#[path = "common/storage_admin.rs"]
mod storage_admin;
use storage_admin::Database;

/// A daemon, alice's mount (and her files) with a directory `work` in the vault's root, and
/// the runtime the database edits run on.
struct Lab {
    daemon: Storaged,
    mount: Mount,
    runtime: tokio::runtime::Runtime,
    db: Database,
    _alice: ClientFiles,
}

fn lab(backend: &Backend) -> Lab {
    let daemon = Storaged::start_on(backend, &[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let user = runtime.block_on(daemon.user("alice"));
    let alice = ClientFiles::for_user(&user);
    let mount = Mount::start(&daemon, &alice, &[]);
    fs::create_dir(mount.join("work")).expect("mkdir work");
    let db = runtime.block_on(Database::of(&daemon));
    Lab {
        daemon,
        mount,
        runtime,
        db,
        _alice: alice,
    }
}

/// Every byte under `dir`, file after file.
fn bytes_under(dir: &Path, all: &mut Vec<u8>) {
    for entry in fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry"))
    {
        let kind = entry.file_type().expect("type");
        if kind.is_dir() {
            bytes_under(&entry.path(), all);
        } else if kind.is_file() {
            all.extend(fs::read(entry.path()).unwrap_or_default());
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// The errno of `what`'s failure (none when it worked).
fn errno<T>(what: std::io::Result<T>) -> Option<i32> {
    what.err().map(|e| e.raw_os_error().unwrap_or(0))
}

/// Sets extended attribute `name` of `path` to `value`.
fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::setxattr(path, name, value, rustix::fs::XattrFlags::empty()).expect("setxattr");
}

/// Extended attribute `name` of `path`, or the errno of reading it.
fn get_xattr(path: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let mut value = vec![0u8; 4096];
    let read = rustix::fs::getxattr(path, name, &mut value).map_err(|e| e.raw_os_error())?;
    value.truncate(read);
    Ok(value)
}

fn ino(path: &Path) -> u64 {
    fs::symlink_metadata(path).expect("stat").ino()
}

fn assert_logged(mount: &Mount, what: &str) {
    let log = mount.log_text();
    assert!(
        log.contains("refused what the server said of a directory"),
        "the client logs the refusal ({what}):\n{log}"
    );
}

fn the_administrator_cannot_read_names(backend: Backend) {
    let mut lab = lab(&backend);
    let secrets = [
        "zanzibar-quarterly-report.txt",
        "quixotic-merger-plans",
        "labyrinthine-patient-list.csv",
        "xylophone-shortcut",
        "mellifluous-target-directory",
    ];
    let work = lab.mount.join("work");
    fs::write(work.join(secrets[0]), b"content").expect("write");
    fs::create_dir(work.join(secrets[1])).expect("mkdir");
    fs::write(work.join(secrets[1]).join(secrets[2]), b"rows").expect("write");
    set_xattr(
        &work.join(secrets[0]),
        "user.note",
        b"vermilion-xattr-value",
    );
    set_xattr(&work.join(secrets[1]), "user.note", b"cerulean-xattr-value");
    let target = format!("../{}/elsewhere", secrets[4]);
    std::os::unix::fs::symlink(&target, work.join(secrets[3])).expect("symlink");
    fs::create_dir(lab.mount.join("plaintext-root-marker")).expect("mkdir in the root");
    // Renamed and hard-linked names are sealed too.
    fs::rename(work.join(secrets[0]), work.join("renamed-obsidian-memo")).expect("rename");
    fs::hard_link(
        work.join("renamed-obsidian-memo"),
        work.join("linked-peregrine-memo"),
    )
    .expect("link");
    let mut listed: Vec<String> = fs::read_dir(&work)
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "linked-peregrine-memo",
            secrets[1],
            "renamed-obsidian-memo",
            secrets[3]
        ]
    );
    assert_eq!(
        fs::read_link(work.join(secrets[3])).expect("readlink"),
        Path::new(&target)
    );
    lab.mount.stop();

    let mut held = lab.runtime.block_on(lab.db.documents());
    bytes_under(lab.daemon.data_dir(), &mut held);
    assert!(
        contains(&held, "plaintext-root-marker"),
        "the search finds names in the root, which has no key"
    );
    let others = [
        "renamed-obsidian-memo",
        "linked-peregrine-memo",
        "vermilion-xattr-value",
        "cerulean-xattr-value",
    ];
    for secret in secrets.iter().chain(&others) {
        assert!(
            !contains(&held, secret),
            "{secret} is readable on the server"
        );
    }
    lab.mount.spawn();
    assert_eq!(
        fs::read(lab.mount.join("work/renamed-obsidian-memo")).expect("read"),
        b"content"
    );
    let dir = lab.mount.join("work").join(secrets[1]);
    assert_eq!(
        get_xattr(&dir, "user.note"),
        Ok(b"cerulean-xattr-value".to_vec())
    );
}

fn a_changed_xattr_value_is_refused(backend: Backend) {
    let mut lab = lab(&backend);
    let work = lab.mount.join("work");
    for name in ["forged", "copied", "intact"] {
        fs::write(work.join(name), name).expect("write");
        set_xattr(&work.join(name), "user.note", name.as_bytes());
    }
    set_xattr(&work, "user.note", b"of the directory");
    let [dir, forged, copied, intact] =
        ["", "forged", "copied", "intact"].map(|n| ino(&work.join(n)));
    lab.mount.stop();

    lab.runtime.block_on(async {
        lab.db
            .set_xattr(
                forged,
                "user.note",
                b"plaintext put in by the administrator",
            )
            .await;
        lab.db.set_xattr(dir, "user.note", b"plaintext too").await;
        // A value that authenticates, but sealed for another file.
        let stolen = lab.db.xattr(intact, "user.note").await;
        lab.db.set_xattr(copied, "user.note", &stolen).await;
    });
    lab.mount.spawn();
    let work = lab.mount.join("work");
    for name in ["forged", "copied", ""] {
        assert_eq!(
            get_xattr(&work.join(name), "user.note"),
            Err(libc::EIO),
            "{name:?}: a value the administrator changed"
        );
    }
    assert_eq!(
        get_xattr(&work.join("intact"), "user.note"),
        Ok(b"intact".to_vec())
    );
    assert_logged(&lab.mount, "changed extended attribute values");
}

fn a_file_turned_into_a_symlink_is_refused(backend: Backend) {
    let mut lab = lab(&backend);
    let work = lab.mount.join("work");
    fs::write(work.join("victim"), b"my data").expect("write");
    fs::write(work.join("intact"), b"still here").expect("write");
    for link in ["link", "copied", "source"] {
        std::os::unix::fs::symlink("intact", work.join(link)).expect("symlink");
    }
    let [victim, link, copied, source] =
        ["victim", "link", "copied", "source"].map(|n| ino(&work.join(n)));
    lab.mount.stop();

    lab.runtime.block_on(async {
        lab.db.make_symlink(victim, b"/etc/passwd").await;
        lab.db.set_target(link, b"/etc/passwd").await;
        // A target that authenticates, but sealed for another link.
        let stolen = lab.db.target(source).await;
        lab.db.set_target(copied, &stolen).await;
    });
    lab.mount.spawn();
    let work = lab.mount.join("work");
    assert_eq!(
        errno(fs::symlink_metadata(work.join("victim"))),
        Some(libc::EIO),
        "the file turned into a symlink"
    );
    assert_eq!(errno(fs::read(work.join("victim"))), Some(libc::EIO));
    for link in ["link", "copied"] {
        assert_eq!(
            errno(fs::read_link(work.join(link))),
            Some(libc::EIO),
            "{link}: a symlink given another target"
        );
    }
    assert_eq!(
        fs::read_link(work.join("source")).expect("readlink"),
        Path::new("intact")
    );
    assert_eq!(fs::read(work.join("intact")).expect("read"), b"still here");
    assert_logged(&lab.mount, "a file turned into a symlink");
}

fn a_renamed_or_swapped_entry_is_refused(backend: Backend) {
    let mut lab = lab(&backend);
    let work = lab.mount.join("work");
    fs::create_dir(work.join("elsewhere")).expect("mkdir");
    for (name, content) in [
        ("first", "1"),
        ("second", "2"),
        ("pointed", "3"),
        ("moved", "4"),
    ] {
        fs::write(work.join(name), content).expect("write");
    }
    let [dir, elsewhere, first, second, pointed, moved] =
        ["", "elsewhere", "first", "second", "pointed", "moved"].map(|n| ino(&work.join(n)));
    lab.mount.stop();

    lab.runtime.block_on(async {
        lab.db.swap_entries(dir, first, second).await;
        lab.db.move_entry(dir, moved, elsewhere).await;
        lab.db.point_entry(dir, pointed, moved).await;
    });
    lab.mount.spawn();
    let work = lab.mount.join("work");
    for name in ["first", "second", "pointed"] {
        assert_eq!(
            errno(fs::read(work.join(name))),
            Some(libc::EIO),
            "{name}: swapped or pointed at another inode"
        );
    }
    assert_eq!(
        errno(fs::metadata(work.join("moved"))),
        Some(libc::ENOENT),
        "the moved entry is gone from its directory"
    );
    let listed: Vec<_> = fs::read_dir(work.join("elsewhere"))
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        listed.is_empty(),
        "an entry moved in from another directory is not listed: {listed:?}"
    );
    assert_logged(&lab.mount, "swapped and moved entries");
}

tests::on_every_backend!(sync:
    the_administrator_cannot_read_names,
    a_file_turned_into_a_symlink_is_refused,
    a_renamed_or_swapped_entry_is_refused,
    a_changed_xattr_value_is_refused,
);
