//! A storage administrator tampers with chunk files on disk; readers through a mount get EIO
//! (and the client logs the file and chunk), never wrong bytes, and intact files still read.

use std::fs;
use std::io::Read;
use std::path::PathBuf;

use tests::daemon::{Backend, Storaged};
use tests::mount::{ClientFiles, Mount};

const CHUNK: usize = 8 * 1024 * 1024;

/// The chunk files of the file at `path` (through the mount), in index order.
fn chunk_files(daemon: &Storaged, mount: &Mount, name: &str) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let ino = fs::metadata(mount.join(name)).expect("stat").ino();
    daemon.chunk_files(format::ids::FileId(ino))
}

fn read_errno(path: PathBuf) -> Option<i32> {
    let mut buffer = Vec::new();
    match fs::File::open(path).and_then(|mut f| f.read_to_end(&mut buffer)) {
        Ok(_) => None,
        Err(error) => error.raw_os_error(),
    }
}

fn every_tamper_gives_eio_and_intact_files_still_read(backend: Backend) {
    let daemon = Storaged::start_on(&backend, &["--gc-seconds", "1"]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let user = runtime.block_on(daemon.user("alice"));
    let client = ClientFiles::for_user(&user);
    let mut mount = Mount::start(&daemon, &client, &[]);

    let pattern = |seed: u8, len: usize| -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect()
    };
    for (name, seed, len) in [
        ("swap-a", 3, 2 * CHUNK),
        ("swap-b", 5, 2 * CHUNK),
        ("rollback", 7, 1000),
        ("cut", 11, CHUNK + 500),
        ("flip", 13, 4096),
        ("intact", 17, CHUNK + 1),
    ] {
        fs::write(mount.join(name), pattern(seed, len)).expect("write");
    }
    // An old copy of "rollback", then a rewrite (the old chunk file is collected).
    let old = fs::read(&chunk_files(&daemon, &mount, "rollback")[0]).expect("old chunk");
    fs::write(mount.join("rollback"), pattern(19, 1000)).expect("rewrite");
    std::thread::sleep(std::time::Duration::from_millis(2500));

    let swap_a = chunk_files(&daemon, &mount, "swap-a");
    let swap_b = chunk_files(&daemon, &mount, "swap-b");
    let rollback = chunk_files(&daemon, &mount, "rollback");
    let cut = chunk_files(&daemon, &mount, "cut");
    let flip = chunk_files(&daemon, &mount, "flip");
    assert_eq!((swap_a.len(), rollback.len(), cut.len()), (2, 1, 2));
    mount.stop(); // No cached plaintext survives: what follows reads what is on disk.

    // Swap two chunk files between files.
    let (a0, b0) = (
        fs::read(&swap_a[0]).expect("read"),
        fs::read(&swap_b[0]).expect("read"),
    );
    fs::write(&swap_a[0], &b0).expect("swap");
    fs::write(&swap_b[0], &a0).expect("swap");
    // Put the old chunk back under the current name.
    fs::write(&rollback[0], &old).expect("restore old");
    // Delete the last chunk.
    fs::remove_file(&cut[1]).expect("delete last chunk");
    // Flip one byte of a body.
    let mut bytes = fs::read(&flip[0]).expect("read");
    bytes[64 + 100] ^= 0x01;
    fs::write(&flip[0], &bytes).expect("flip");
    mount.spawn();
    for name in ["swap-a", "swap-b", "rollback", "cut", "flip"] {
        assert_eq!(
            read_errno(mount.join(name)),
            Some(libc::EIO),
            "{name} must fail with EIO"
        );
    }
    assert_eq!(
        fs::read(mount.join("intact")).expect("intact files still read"),
        pattern(17, CHUNK + 1)
    );
    // The part of "cut" before the deleted chunk still reads.
    let mut head = vec![0u8; 4096];
    fs::File::open(mount.join("cut"))
        .and_then(|mut f| f.read_exact(&mut head))
        .expect("the intact chunk of cut");
    assert_eq!(head, pattern(11, 4096));
    let log = mount.log_text();
    assert!(
        log.contains("integrity check") && log.contains("flip"),
        "the client logs the file and chunk:\n{log}"
    );
}

tests::on_every_backend!(
    sync: every_tamper_gives_eio_and_intact_files_still_read,
);
