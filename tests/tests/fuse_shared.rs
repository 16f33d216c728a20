//! Two mounts of one vault (two client processes): close-to-open consistency, and concurrent
//! writers to one file never leave a chunk that fails to open.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use tests::daemon::Storaged;
use tests::mount::{ClientFiles, Mount, bounded};

const CHUNK: usize = 8 * 1024 * 1024;

#[test]
fn what_one_mount_closes_the_other_reads_after_open() {
    let daemon = Storaged::start(&[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let user = runtime.block_on(daemon.user("alice"));
    let client = ClientFiles::for_user(&user);
    let first = Mount::start(&daemon, &client, &[]);
    let second = Mount::start(&daemon, &client, &[]);

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

#[test]
fn concurrent_writers_to_one_file_both_land_and_every_chunk_opens() {
    let daemon = Storaged::start(&[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let user = runtime.block_on(daemon.user("alice"));
    let client = ClientFiles::for_user(&user);
    let first = Mount::start(&daemon, &client, &[]);
    let second = Mount::start(&daemon, &client, &[]);
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
    for mount in [&first, &second] {
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
