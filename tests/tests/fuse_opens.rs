//! Opens of small files answered ahead under a directory lease (`OpenMany`), and
//! close-to-open consistency all the same. Leases exist only on the embedded store (one
//! instance): over MongoDB every open is one `Open` call, which the tests check too.

use std::fs;

use tests::daemon::{Backend, Storaged, server_calls};
use tests::mount::{ClientFiles, Mount, metered, until};

/// A mount's knowledge outlasts any stall of a slow machine: no time window decides what is
/// counted.
const A_LONG_WINDOW: &[&str] = &["--coherence-seconds", "3600"];

/// Small files in the test directory.
const FILES: usize = 200;

struct Setup {
    /// The files' numbers in the order the directory lists them: the order of their names as
    /// stored (sealed names: not the order of the plain ones), which `OpenMany` follows.
    order: Vec<usize>,
    first: Mount,
    metrics: String,
    client: ClientFiles,
    daemon: Storaged,
}

impl Setup {
    /// `open` and `open_many` calls so far.
    fn opens(&self) -> u64 {
        server_calls(&self.metrics, "open", "") + server_calls(&self.metrics, "open_many", "")
    }

    /// The number of the `k`th file listed.
    fn nth(&self, k: usize) -> usize {
        self.order[k]
    }
}

fn name(i: usize) -> String {
    format!("d/f{i:03}")
}

fn content(i: usize, round: u8) -> Vec<u8> {
    vec![i as u8 ^ round; 100 + i * 7]
}

/// A daemon, a user's mount of it, and `d` with [`FILES`] small files made there and synced.
fn setup(backend: &Backend) -> Setup {
    let (daemon, metrics, client, first) = metered(backend, A_LONG_WINDOW);
    fs::create_dir(first.join("d")).expect("mkdir");
    for i in 0..FILES {
        fs::write(first.join(&name(i)), content(i, 0)).expect("create");
    }
    fs::File::open(first.join("d"))
        .and_then(|d| d.sync_all())
        .expect("fsync of the directory");
    let mut order = Vec::new();
    for entry in fs::read_dir(first.join("d")).expect("list") {
        let listed = entry.expect("entry").file_name();
        let listed = listed.to_str().and_then(|n| n.strip_prefix('f'));
        order.push(
            listed
                .and_then(|n| n.parse().ok())
                .expect("a file of the test"),
        );
    }
    assert_eq!(order.len(), FILES, "every file listed");
    Setup {
        order,
        first,
        metrics,
        client,
        daemon,
    }
}

/// Reads the first two files listed of `mount` until the second came without a call: the
/// mount holds the directory's lease and holds replies for the files listed after the first
/// (embedded store only).
fn until_answered_ahead(setup: &Setup, mount: &Mount) {
    until("an open answered ahead", || {
        for k in [0, 1] {
            let (i, before) = (setup.nth(k), setup.opens());
            assert_eq!(fs::read(mount.join(&name(i))).expect("read"), content(i, 0));
            if k == 1 && setup.opens() == before {
                return true;
            }
        }
        false
    });
}

/// After a remount, reading a directory's small files costs one call per 64 or so under the
/// directory's lease (none of them changed meanwhile), and each reads back what was written.
fn small_files_open_in_batches_under_a_lease(backend: Backend) {
    let embedded = matches!(backend, Backend::Sqlite);
    let mut setup = setup(&backend);
    setup.first.stop();
    let mount = Mount::start(&setup.daemon, &setup.client, A_LONG_WINDOW);
    let mut first = 0;
    if embedded {
        until_answered_ahead(&setup, &mount);
        first = 2;
    }
    let before = setup.opens();
    for &i in &setup.order[first..] {
        assert_eq!(fs::read(mount.join(&name(i))).expect("read"), content(i, 0));
    }
    let opens = setup.opens() - before;
    let read = (FILES - first) as u64;
    if embedded {
        // In listing order, one call per 64 files read.
        assert!(opens <= read / 32, "{opens} open calls for {read} files");
    } else {
        assert_eq!(opens, read, "no lease: one open each");
    }
}

/// A mount holding replies ahead for a directory reads what another mount wrote there and
/// closed: the other's change recalls the lease first.
fn a_file_closed_elsewhere_is_read_whole_after_opens_ahead(backend: Backend) {
    let embedded = matches!(backend, Backend::Sqlite);
    let setup = setup(&backend);
    let second = Mount::start(&setup.daemon, &setup.client, A_LONG_WINDOW);
    if embedded {
        until_answered_ahead(&setup, &second);
        let before = setup.opens();
        assert_eq!(
            fs::read(second.join(&name(setup.nth(3)))).expect("read"),
            content(setup.nth(3), 0)
        );
        assert_eq!(
            setup.opens(),
            before,
            "the fourth file listed was not answered ahead"
        );
    }
    let recalls = server_calls(&setup.metrics, "recall", "");
    fs::write(
        setup.first.join(&name(setup.nth(5))),
        content(setup.nth(5), 1),
    )
    .expect("rewrite");
    assert_eq!(
        fs::read(second.join(&name(setup.nth(5)))).expect("read"),
        content(setup.nth(5), 1)
    );
    if embedded {
        assert!(
            server_calls(&setup.metrics, "recall", "") > recalls,
            "the rewrite did not recall the lease"
        );
        until_answered_ahead(&setup, &second);
    }
    fs::OpenOptions::new()
        .write(true)
        .open(setup.first.join(&name(setup.nth(6))))
        .and_then(|f| f.set_len(10))
        .expect("truncate");
    assert_eq!(
        fs::read(second.join(&name(setup.nth(6)))).expect("read"),
        content(setup.nth(6), 0)[..10]
    );
}

/// A file is never answered from a reply held ahead after a link: another mount's link
/// recalls the lease of the directory it was in, this mount's own drops the reply.
fn a_linked_file_is_not_answered_ahead(backend: Backend) {
    let embedded = matches!(backend, Backend::Sqlite);
    let setup = setup(&backend);
    let second = Mount::start(&setup.daemon, &setup.client, A_LONG_WINDOW);
    fs::create_dir(setup.first.join("e")).expect("mkdir");
    if embedded {
        until_answered_ahead(&setup, &second);
    }
    fs::hard_link(
        setup.first.join(&name(setup.nth(6))),
        setup.first.join("e/six"),
    )
    .expect("link");
    let before = setup.opens();
    assert_eq!(
        fs::read(second.join(&name(setup.nth(6)))).expect("read"),
        content(setup.nth(6), 0)
    );
    assert!(
        setup.opens() > before,
        "a file linked elsewhere was answered ahead"
    );
    if embedded {
        until_answered_ahead(&setup, &second);
    }
    fs::hard_link(second.join(&name(setup.nth(7))), second.join("e/seven")).expect("link");
    let before = setup.opens();
    let file = fs::File::open(second.join(&name(setup.nth(7)))).expect("open");
    assert!(
        setup.opens() > before,
        "a file linked here was answered ahead"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(file.metadata().expect("stat").nlink(), 2);
}

tests::on_every_backend!(
    sync: small_files_open_in_batches_under_a_lease,
    a_file_closed_elsewhere_is_read_whole_after_opens_ahead,
    a_linked_file_is_not_answered_ahead,
);
