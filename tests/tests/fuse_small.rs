//! Many small files: unlinks answered by the mount under a directory lease and sent in
//! batches (`Unlinks`), and what must hold all the same. Leases exist only on the embedded
//! store (one instance), so the tests that count calls under a lease run there alone; the
//! rest run on both backends (over MongoDB every unlink waits for the server).

use std::fs;

use tests::daemon::{Backend, Storaged, server_calls};
use tests::mount::{ClientFiles, Mount, metered, until};

/// A mount's knowledge outlasts any stall of a slow machine: no time window decides what is
/// counted.
const A_LONG_WINDOW: &[&str] = &["--coherence-seconds", "3600"];

/// One daemon (with a metrics endpoint) and two mounts of one user's view.
struct Setup {
    first: Mount,
    second: Mount,
    metrics: String,
    _client: ClientFiles,
    _daemon: Storaged,
}

fn setup(backend: &Backend) -> Setup {
    let (daemon, metrics, client, first) = metered(backend, A_LONG_WINDOW);
    let second = Mount::start(&daemon, &client, A_LONG_WINDOW);
    Setup {
        first,
        second,
        metrics,
        _client: client,
        _daemon: daemon,
    }
}

/// fsync(2) of a directory: everything this mount did there reaches the server.
fn sync_dir(dir: &std::path::Path) {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("fsync of the directory");
}

/// Makes `dir` with `count` small files, and on the embedded store waits until the mount
/// holds the directory's lease (asked for after the first creates).
fn small_files(setup: &Setup, dir: &str, count: usize, embedded: bool) {
    let granted = server_calls(&setup.metrics, "lease", "ok");
    fs::create_dir(setup.first.join(dir)).expect("mkdir");
    let mut made = 0;
    let mut more = |n: usize| {
        for _ in 0..n {
            fs::write(
                setup.first.join(&format!("{dir}/f{made}")),
                [made as u8; 100],
            )
            .expect("create");
            made += 1;
        }
    };
    more(count / 2);
    if embedded {
        until("the directory's lease", || {
            server_calls(&setup.metrics, "lease", "ok") > granted
        });
    }
    more(count - count / 2);
    sync_dir(&setup.first.join(dir));
}

/// Under a lease every unlink of a directory is answered by the mount and the names go to
/// the server in `Unlinks` batches: no `Unlink` call at all; the other mount's next listing
/// (which recalls the lease) sees none of the names, and an rmdir right after the unlinks
/// works (the queued ones go first).
fn unlinks_under_a_lease_go_in_batches(backend: Backend) {
    const FILES: usize = 300;
    let embedded = matches!(backend, Backend::Sqlite);
    let setup = setup(&backend);
    small_files(&setup, "d", FILES, embedded);
    let (single, batched) = (
        server_calls(&setup.metrics, "unlink", ""),
        server_calls(&setup.metrics, "unlinks", ""),
    );
    for i in 0..FILES {
        fs::remove_file(setup.first.join(&format!("d/f{i}"))).expect("unlink");
        assert!(
            !setup.first.join(&format!("d/f{i}")).exists(),
            "f{i} still here"
        );
    }
    let other = fs::read_dir(setup.second.join("d")).expect("list").count();
    assert_eq!(other, 0, "names the other mount still lists");
    let single = server_calls(&setup.metrics, "unlink", "") - single;
    let batched = server_calls(&setup.metrics, "unlinks", "") - batched;
    if embedded {
        assert_eq!(
            single, 0,
            "unlinks that waited for the server under the lease"
        );
        // At least one call per 64; more when the uploader sent a partial batch.
        assert!(batched >= (FILES / 64) as u64, "{batched} Unlinks calls");
    } else {
        assert_eq!(
            (single, batched),
            (FILES as u64, 0),
            "no lease: one call each"
        );
    }

    // rmdir right after unlinks answered here: they are sent first.
    fs::create_dir(setup.first.join("e")).expect("mkdir");
    small_files(&setup, "e/g", 100, embedded);
    for i in 0..100 {
        fs::remove_file(setup.first.join(&format!("e/g/f{i}"))).expect("unlink");
    }
    fs::remove_dir(setup.first.join("e/g")).expect("rmdir after the unlinks");
    assert!(
        !setup.second.join("e/g").exists(),
        "the other mount still has e/g"
    );
}

/// A name unlinked under a lease and made again at once is the new file everywhere (the
/// unlink goes before the create); unlinks still queued at unmount reach the server.
fn a_name_unlinked_here_can_be_made_again(backend: Backend) {
    let embedded = matches!(backend, Backend::Sqlite);
    let mut setup = setup(&backend);
    small_files(&setup, "d", 80, embedded);
    for i in 0..80 {
        let path = setup.first.join(&format!("d/f{i}"));
        fs::remove_file(&path).expect("unlink");
        if i % 2 == 0 {
            fs::write(&path, format!("new {i}")).expect("create again");
        }
    }
    setup.first.stop();
    for i in 0..80 {
        let read = fs::read(setup.second.join(&format!("d/f{i}")));
        match i % 2 {
            0 => assert_eq!(read.expect("made again"), format!("new {i}").into_bytes()),
            _ => assert!(read.is_err(), "f{i} survived its unlink and the unmount"),
        }
    }
}

tests::on_every_backend!(
    sync: unlinks_under_a_lease_go_in_batches,
    a_name_unlinked_here_can_be_made_again,
);
