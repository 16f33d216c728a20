//! Two mounts of one vault (two client processes): close-to-open consistency, concurrent
//! writers to one file never leave a chunk that fails to open, and concurrent renames end with
//! each file under exactly one name. Once through one daemon per backend, and once through two
//! storaged instances sharing one MongoDB database and one chunk root (scaled out).

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use tests::daemon::{Backend, Storaged, server_calls};
use tests::mount::{ClientFiles, Mount, bounded, until};

const CHUNK: usize = 8 * 1024 * 1024;

/// Two mounts of one user's view, through one daemon or through two instances of the vault.
struct Pair {
    first: Mount,
    second: Mount,
    _client: ClientFiles,
    daemons: Vec<Storaged>,
}

fn pair(backend: &Backend, instances: usize) -> Pair {
    pair_with(backend, instances, &[], &[])
}

/// A pair whose (first) daemon runs with `args` and whose mounts run with `mount_args`.
fn pair_with(backend: &Backend, instances: usize, args: &[&str], mount_args: &[&str]) -> Pair {
    let daemon = Storaged::start_on(backend, args);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let user = runtime.block_on(daemon.user("alice"));
    let client = ClientFiles::for_user(&user);
    let mut daemons = vec![daemon];
    if instances == 2 {
        let other = daemons[0].another_instance(&[]);
        daemons.push(other);
    }
    let first = Mount::start(&daemons[0], &client, mount_args);
    let second = Mount::start(daemons.last().expect("a daemon"), &client, mount_args);
    Pair {
        first,
        second,
        _client: client,
        daemons,
    }
}

/// Mount options that make what a mount knows outlast any stall of a slow machine, so that
/// counting the lookups that reach the server depends on no timing.
const A_LONG_WINDOW: &[&str] = &["--coherence-seconds", "3600"];
/// The same, and every create answered by the server (under a lease the proofs of what a
/// mount knows come when the uploader sends its batch, however long that takes).
const A_LONG_WINDOW_NO_LEASES: &[&str] = &["--coherence-seconds", "3600", "--no-leases"];

fn what_one_mount_closes_the_other_reads_after_open(backend: Backend) {
    close_to_open(pair(&backend, 1));
}

fn concurrent_writers_to_one_file_both_land_and_every_chunk_opens(backend: Backend) {
    concurrent_writers(pair(&backend, 1));
}

fn concurrent_renames_move_each_file_exactly_once(backend: Backend) {
    concurrent_renames(pair(&backend, 1));
}

/// Lookups the daemon answered so far, from its metrics endpoint.
fn server_lookups(metrics: &str) -> u64 {
    server_calls(metrics, "lookup", "")
}

/// Resumes a stopped process when dropped (a failing test must not leave a mount frozen).
struct Stopped(u32);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        signal(pid, rustix::process::Signal::STOP);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, rustix::process::Signal::CONT);
    }
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
    rustix::process::kill_process(pid, signal).expect("signal a mount");
}

/// New files closed under a directory lease (the embedded store grants them): the closes
/// return before storaged has the files, and yet the other mount reads every one at its next
/// open and lists them all, because storaged recalls the lease first. A holder that stops
/// answering delays the other mount by the recall wait at most, and what it closed arrives
/// once it runs again. Over MongoDB (several instances may share it) no lease is granted and
/// every close waits for the server.
fn files_closed_under_a_lease_show_at_the_other_mounts_next_open(backend: Backend) {
    const FILES: usize = 300;
    let embedded = matches!(backend, Backend::Sqlite);
    let metrics = format!("127.0.0.1:{}", tests::daemon::free_port());
    let pair = pair_with(&backend, 1, &["--metrics-addr", &metrics], &[]);
    let Pair { first, second, .. } = &pair;
    let content = |i: usize| format!("file {i} ").repeat(i % 500 + 1).into_bytes();

    fs::create_dir(first.join("leased")).expect("mkdir");
    for i in 0..FILES {
        fs::write(first.join(&format!("leased/f{i}")), content(i)).expect("create");
    }
    let granted = server_calls(&metrics, "lease", "ok");
    assert_eq!(granted > 0, embedded, "{granted} lease calls");
    for i in (0..FILES).rev() {
        let read = fs::read(second.join(&format!("leased/f{i}")))
            .unwrap_or_else(|e| panic!("f{i} on the other mount: {e}"));
        assert!(read == content(i), "f{i} differs on the other mount");
    }
    assert_eq!(
        fs::read_dir(second.join("leased")).expect("list").count(),
        FILES
    );
    let recalls = server_calls(&metrics, "recall", "");
    assert_eq!(recalls > 0, embedded, "{recalls} recalls");
    // `vaultfs status` shows, beside cache use, the files not sent yet and the leases held.
    let status = std::process::Command::new(tests::binary("vaultfs"))
        .arg("status")
        .output()
        .expect("vaultfs status");
    let listed = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{listed}");
    assert!(
        listed.contains("unsent")
            && listed.contains("leases")
            && listed.contains(&first.path().display().to_string()),
        "{listed}"
    );
    if !embedded {
        return;
    }

    // The holder stops answering with files closed under its lease: the other mount waits
    // for the recall at most its bound (5 s), then goes on without them.
    fs::create_dir(first.join("frozen")).expect("mkdir");
    let asked = server_calls(&metrics, "lease", "ok");
    let mut written = 0;
    while server_calls(&metrics, "lease", "ok") == asked || written < 20 {
        assert!(written < 2000, "no lease on the second directory");
        fs::write(first.join(&format!("frozen/f{written}")), content(written)).expect("create");
        written += 1;
    }
    // Closed under the lease now (the lease was granted after the first few).
    for i in written..written + 20 {
        fs::write(first.join(&format!("frozen/f{i}")), content(i)).expect("create");
    }
    written += 20;
    let frozen = Stopped::stop(first.pid());
    // The listing ends (after the recall wait) though the holder never answers.
    let frozen_dir = second.join("frozen");
    let listed = bounded(
        Duration::from_secs(300),
        "a listing beside a frozen holder",
        move || fs::read_dir(frozen_dir).expect("list").count(),
    );
    assert!(listed <= written);
    drop(frozen);
    until("what the frozen holder closed", || {
        (0..written).all(|i| {
            fs::read(second.join(&format!("frozen/f{i}"))).is_ok_and(|read| read == content(i))
        })
    });
}

/// A directory this mount made answers lookups of names it lacks without asking the server,
/// while this mount's own changes are the only ones there; its next change there whose reply
/// shows that someone else changed the directory too makes it ask again at once.
fn lookups_in_a_directory_made_here_skip_the_server(backend: Backend) {
    let metrics = format!("127.0.0.1:{}", tests::daemon::free_port());
    let pair = pair_with(
        &backend,
        1,
        &["--metrics-addr", &metrics],
        A_LONG_WINDOW_NO_LEASES,
    );
    let Pair { first, second, .. } = &pair;

    fs::create_dir(first.join("made")).expect("mkdir");
    let before = server_lookups(&metrics);
    for i in 0..50 {
        fs::write(first.join(&format!("made/f{i}")), b"new").expect("create");
    }
    fs::create_dir(first.join("made/sub")).expect("mkdir in it");
    fs::write(first.join("made/sub/g"), b"deeper").expect("create in the new one");
    fs::remove_file(first.join("made/f0")).expect("unlink");
    assert!(!first.join("made/f0").exists(), "the unlinked name is gone");
    assert!(!first.join("made/nothing").exists());
    let asked = server_lookups(&metrics) - before;
    assert!(
        asked < 10,
        "{asked} lookups of 54 new names went to the server"
    );
    let names = fs::read_dir(second.join("made")).expect("list").count();
    assert_eq!(
        names, 50,
        "49 files and a directory, as the other mount lists them"
    );

    // The other mount's new name shows at once when this mount's own next change there shows
    // the directory moved on by two.
    fs::create_dir(first.join("made2")).expect("mkdir");
    fs::write(first.join("made2/a"), b"a").expect("create");
    assert!(!first.join("made2/theirs").exists());
    fs::write(second.join("made2/theirs"), b"theirs").expect("create on the other mount");
    fs::write(first.join("made2/b"), b"b").expect("create after theirs");
    assert_eq!(
        fs::read(first.join("made2/theirs")).expect("the other mount's file, at once"),
        b"theirs"
    );
}

/// Lookups that keep going to the server for one directory make the mount list it, and the
/// listing answers the next lookups there (names present, with their attributes, and names
/// absent). The mount's own changes show at once, and the listing survives its removals.
fn lookups_after_a_listing_skip_the_server(backend: Backend) {
    let metrics = format!("127.0.0.1:{}", tests::daemon::free_port());
    let pair = pair_with(&backend, 1, &["--metrics-addr", &metrics], A_LONG_WINDOW);
    let Pair { first, second, .. } = &pair;
    const FILES: usize = 60;
    fs::create_dir(first.join("many")).expect("mkdir");
    for i in 0..FILES {
        fs::write(first.join(&format!("many/f{i}")), vec![b'x'; i]).expect("create");
    }
    let name = |i: usize| second.join(&format!("many/f{i}"));

    let before = server_lookups(&metrics);
    for i in 0..40 {
        assert_eq!(fs::metadata(name(i)).expect("stat").len(), i as u64);
    }
    assert!(!second.join("many/nothing").exists());
    let asked = server_lookups(&metrics) - before;
    // 16 lookups list it.
    assert!(asked < 20, "{asked} lookups of 41 names went to the server");

    // Unlinking names the kernel never looked up: the listing answers the lookups, and
    // survives this mount's own removals.
    let before = server_lookups(&metrics);
    for i in 40..FILES {
        fs::remove_file(name(i)).expect("unlink");
    }
    let asked = server_lookups(&metrics) - before;
    assert!(asked < 5, "{asked} lookups of 20 names went to the server");
    assert!((40..FILES).all(|i| !name(i).exists()));

    // This mount's own changes show at once.
    fs::write(name(1), b"longer now").expect("rewrite");
    assert_eq!(fs::metadata(name(1)).expect("stat").len(), 10);
    fs::remove_file(name(2)).expect("unlink");
    assert!(!name(2).exists());
    assert_eq!(fs::metadata(name(3)).expect("stat").len(), 3);

    // What the other mount closed, this one reads whole at its next open, though the kernel
    // keeps the size it was told a while ago.
    for i in [6, 20] {
        let longer = format!("file {i}, longer now than it was before");
        fs::write(first.join(&format!("many/f{i}")), &longer).expect("rewrite there");
        assert_eq!(fs::read(name(i)).expect("read"), longer.as_bytes());
    }
}

/// Another mount's changes show within the coherence window: a new name in a directory this
/// mount made (and so knows), a new name and a new size in one it listed.
fn another_mounts_changes_show_within_the_window(backend: Backend) {
    let pair = pair(&backend, 1);
    let Pair { first, second, .. } = &pair;
    fs::create_dir(first.join("made")).expect("mkdir");
    fs::write(first.join("made/a"), b"a").expect("create");
    assert!(!first.join("made/theirs").exists());
    fs::write(second.join("made/theirs"), b"theirs").expect("create on the other mount");
    until("the other mount's new name", || {
        first.join("made/theirs").exists()
    });

    fs::create_dir(first.join("many")).expect("mkdir");
    for i in 0..40 {
        fs::write(first.join(&format!("many/f{i}")), b"x").expect("create");
    }
    for i in 0..40 {
        fs::metadata(second.join(&format!("many/f{i}"))).expect("stat");
    }
    fs::write(first.join("many/theirs"), b"theirs").expect("create on the other mount");
    fs::write(first.join("many/f4"), b"four more").expect("rewrite on the other mount");
    until("the other mount's new name and size", || {
        second.join("many/theirs").exists()
            && fs::metadata(second.join("many/f4")).is_ok_and(|m| m.len() == 9)
    });
    assert_eq!(
        fs::read(second.join("many/f4")).expect("read"),
        b"four more"
    );
}

#[test]
fn through_two_instances_what_one_mount_closes_the_other_reads_after_open() {
    close_to_open(pair(&Backend::mongo(), 2));
}

#[test]
fn through_two_instances_concurrent_writers_both_land_and_every_chunk_opens() {
    concurrent_writers(pair(&Backend::mongo(), 2));
}

#[test]
fn through_two_instances_concurrent_renames_move_each_file_exactly_once() {
    concurrent_renames(pair(&Backend::mongo(), 2));
}

fn close_to_open(pair: Pair) {
    let Pair { first, second, .. } = &pair;

    fs::write(first.join("shared.txt"), b"version one").expect("write on the first");
    assert_eq!(
        fs::read(second.join("shared.txt")).expect("read on the second"),
        b"version one"
    );
    // Overwrite on the second mount; the first sees it at its next open, even though it
    // read (and cached) the old content.
    fs::write(second.join("shared.txt"), b"version two, longer").expect("overwrite");
    assert_eq!(
        fs::read(first.join("shared.txt")).expect("reopen on the first"),
        b"version two, longer"
    );
    // The kernel keeps a file's size for a second after a stat; an open after the other
    // mount's close must still read it whole.
    fs::write(first.join("grows.txt"), b"short").expect("write");
    assert_eq!(
        fs::metadata(second.join("grows.txt")).expect("stat").len(),
        5
    );
    fs::write(first.join("grows.txt"), b"short no more").expect("rewrite");
    assert_eq!(
        fs::read(second.join("grows.txt")).expect("read after the stat"),
        b"short no more"
    );
    // A multi-chunk file, then a change in its middle.
    let big: Vec<u8> = (0..2 * CHUNK + 123).map(|i| (i % 241) as u8).collect();
    fs::write(first.join("big"), &big).expect("write big");
    assert_eq!(fs::read(second.join("big")).expect("read big"), big);
    let file = OpenOptions::new()
        .write(true)
        .open(second.join("big"))
        .expect("open");
    file.write_all_at(b"CHANGED", CHUNK as u64 - 3)
        .expect("write across a boundary");
    drop(file);
    let mut expected = big.clone();
    expected[CHUNK - 3..CHUNK + 4].copy_from_slice(b"CHANGED");
    assert_eq!(
        fs::read(first.join("big")).expect("read the change"),
        expected
    );
    // Renames reach the other mount once its kernel's one-second entry cache expires.
    fs::rename(first.join("shared.txt"), first.join("renamed.txt")).expect("rename");
    let seen = (0..40).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        second.join("renamed.txt").exists() && !second.join("shared.txt").exists()
    });
    assert!(seen, "the rename never showed on the other mount");
}

fn concurrent_writers(pair: Pair) {
    let Pair { first, second, .. } = &pair;
    fs::write(first.join("contended"), vec![0u8; CHUNK + CHUNK / 2]).expect("create");

    // Each writer owns every other 64 KiB stripe, across both chunks, and syncs after each
    // write, so that their commits interleave and lose compare-and-swaps to each other.
    const STRIPE: usize = 64 * 1024;
    let stripes = (CHUNK + CHUNK / 2) / STRIPE;
    let writers: Vec<_> = [
        (first.join("contended"), 0usize, b'A'),
        (second.join("contended"), 1, b'B'),
    ]
    .into_iter()
    .map(|(path, parity, byte)| {
        let path = Arc::new(path);
        std::thread::spawn(move || {
            let file = OpenOptions::new().write(true).open(&*path).expect("open");
            for stripe in (parity..stripes).step_by(2).take(24) {
                file.write_all_at(&vec![byte; STRIPE], (stripe * STRIPE) as u64)
                    .expect("write");
                file.sync_all().expect("fsync");
            }
        })
    })
    .collect();
    for writer in writers {
        writer.join().expect("a writer failed");
    }
    for mount in [first, second] {
        let path = mount.join("contended");
        let content = bounded(std::time::Duration::from_secs(60), "read back", move || {
            fs::read(path)
        })
        .expect("every chunk opens");
        for stripe in 0..stripes {
            let expected = match stripe {
                s if s % 2 == 0 && s / 2 < 24 => b'A',
                s if s % 2 == 1 && s / 2 < 24 => b'B',
                _ => 0,
            };
            let got = &content[stripe * STRIPE..(stripe + 1) * STRIPE];
            assert!(
                got.iter().all(|&b| b == expected),
                "stripe {stripe} should be {:?}",
                expected as char
            );
        }
    }
}

/// Both mounts rename the same files to names of their own at once: each rename either
/// moves the file or finds it gone, every file ends under exactly one name with its content,
/// and both mounts and the audit chain agree.
fn concurrent_renames(pair: Pair) {
    const FILES: usize = 12;
    let Pair { first, second, .. } = &pair;
    fs::create_dir(first.join("race")).expect("mkdir");
    for i in 0..FILES {
        fs::write(first.join(&format!("race/f{i}")), format!("file {i}")).expect("write");
    }
    let renamers: Vec<_> = [(first.path(), "a"), (second.path(), "b")]
        .into_iter()
        .map(|(root, tag)| {
            std::thread::spawn(move || {
                let mut moved = Vec::new();
                for i in 0..FILES {
                    let from = root.join(format!("race/f{i}"));
                    match fs::rename(&from, root.join(format!("race/{tag}{i}"))) {
                        Ok(()) => moved.push(i),
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(e) => panic!("rename {}: {e}", from.display()),
                    }
                }
                moved
            })
        })
        .collect();
    let moved: Vec<Vec<usize>> = renamers
        .into_iter()
        .map(|r| r.join().expect("a renamer failed"))
        .collect();
    let mut all: Vec<usize> = moved.concat();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..FILES).collect::<Vec<_>>(),
        "each file moved once: {moved:?}"
    );

    let name_of = |i: usize| match moved[0].contains(&i) {
        true => format!("a{i}"),
        false => format!("b{i}"),
    };
    let mut expected: Vec<String> = (0..FILES).map(name_of).collect();
    expected.sort();
    for mount in [first, second] {
        // The other mount's kernel caches entries for a second.
        let listing = || {
            let mut names: Vec<String> = fs::read_dir(mount.join("race"))
                .expect("readdir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let agreed = (0..40).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            listing() == expected
        });
        assert!(agreed, "{:?} != {expected:?}", listing());
        for i in 0..FILES {
            let content = fs::read(mount.join(&format!("race/{}", name_of(i)))).expect("read");
            assert_eq!(content, format!("file {i}").as_bytes());
        }
    }
    let verify = std::process::Command::new(tests::binary("storaged"))
        .args(["audit", "verify", "--data-dir"])
        .arg(pair.daemons[0].data_dir())
        .args(pair.daemons[0].meta_args())
        .env("RUST_LOG", "error")
        .output()
        .expect("run audit verify");
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && report.contains("intact"),
        "{report}"
    );
}

/// `O_EXCL` creates of the same names from two mounts, one of which holds the directory's
/// lease and so decides its own creates there without asking the server: each name has
/// exactly one winner, whose content it holds on both mounts.
fn exclusive_creates_from_two_mounts_have_one_winner_per_name(backend: Backend) {
    let embedded = matches!(backend, Backend::Sqlite);
    // (Over MongoDB every create asks the server, and a debug build's calls there are slow.)
    let names: usize = if embedded { 400 } else { 100 };
    let metrics = format!("127.0.0.1:{}", tests::daemon::free_port());
    let pair = pair_with(&backend, 1, &["--metrics-addr", &metrics], &[]);
    let Pair { first, second, .. } = &pair;
    fs::create_dir(first.join("locks")).expect("mkdir");
    take_the_lease(first, &metrics, embedded);
    names_held_open_are_not_taken_twice(first, second);
    let won = race_for_names(first, second, names);
    let mut all = won.concat();
    all.sort_unstable();
    assert_eq!(all, (0..names).collect::<Vec<_>>(), "one winner per name");
    assert!(!won[0].is_empty() && !won[1].is_empty(), "both won some");
    for (winner, tag) in [(&won[0], "first"), (&won[1], "second")] {
        for i in winner {
            for mount in [first, second] {
                let content = fs::read(mount.join(&format!("locks/l{i}"))).expect("read");
                assert_eq!(content, tag.as_bytes(), "l{i}");
            }
        }
    }
    let recalls = server_calls(&metrics, "recall", "");
    assert_eq!(recalls > 0, embedded, "{recalls} recalls");
}

/// Creates `path` with `O_EXCL` and writes `tag` into it; false if the name was taken.
fn create_exclusive(path: std::path::PathBuf, tag: &str) -> bool {
    match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(mut file) => {
            std::io::Write::write_all(&mut file, tag.as_bytes()).expect("write");
            true
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(error) => panic!("{}: {error}", path.display()),
    }
}

/// The first mount takes the lease on `locks` (where the server grants leases): its `O_EXCL`
/// creates there soon skip the server.
fn take_the_lease(first: &Mount, metrics: &str, embedded: bool) {
    let mut warm = 0;
    while embedded && server_calls(metrics, "lease", "ok") == 0 {
        assert!(warm < 200, "no lease on the directory");
        assert!(create_exclusive(
            first.join(&format!("locks/warm{warm}")),
            "warm"
        ));
        warm += 1;
    }
    for i in warm..warm + 20 {
        assert!(create_exclusive(
            first.join(&format!("locks/warm{i}")),
            "warm"
        ));
    }
}

/// Names the first mount holds open, created under its lease: the second cannot take them.
fn names_held_open_are_not_taken_twice(first: &Mount, second: &Mount) {
    let held: Vec<fs::File> = (0..50)
        .map(|i| {
            let path = first.join(&format!("locks/held{i}"));
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .expect("create on the first mount");
            std::io::Write::write_all(&mut file, b"first").expect("write");
            file
        })
        .collect();
    for i in 0..50 {
        assert!(
            !create_exclusive(second.join(&format!("locks/held{i}")), "second"),
            "held{i} was taken twice"
        );
    }
    drop(held);
    for i in 0..50 {
        let content = fs::read(second.join(&format!("locks/held{i}"))).expect("read");
        assert_eq!(content, b"first", "held{i}");
    }
}

/// Both mounts create the same `names` names at once, from opposite ends: the indexes each
/// one won, the first mount's first.
fn race_for_names(first: &Mount, second: &Mount, names: usize) -> Vec<Vec<usize>> {
    let racers: Vec<_> = [(first.path(), "first"), (second.path(), "second")]
        .into_iter()
        .map(|(root, tag)| {
            std::thread::spawn(move || {
                let order: Vec<usize> = match tag {
                    "first" => (0..names).collect(),
                    _ => (0..names).rev().collect(),
                };
                order
                    .into_iter()
                    .filter(|i| create_exclusive(root.join(format!("locks/l{i}")), tag))
                    .collect::<Vec<usize>>()
            })
        })
        .collect();
    racers
        .into_iter()
        .map(|r| r.join().expect("a racer failed"))
        .collect()
}

tests::on_every_backend!(
    sync: what_one_mount_closes_the_other_reads_after_open,
    concurrent_writers_to_one_file_both_land_and_every_chunk_opens,
    concurrent_renames_move_each_file_exactly_once,
    lookups_in_a_directory_made_here_skip_the_server,
    lookups_after_a_listing_skip_the_server,
    another_mounts_changes_show_within_the_window,
    files_closed_under_a_lease_show_at_the_other_mounts_next_open,
    exclusive_creates_from_two_mounts_have_one_winner_per_name,
);
