//! The storage administrator edits a file's chunk map behind storaged's back (issue 20, item
//! 5): it points a chunk's record at an older generation whose file the grace period kept,
//! drops chunk records to make holes, cuts the size, and deletes the file's manifest. Readers
//! through a real mount get EIO and a log line naming the manifest check, never the old bytes
//! (`docs/format.md` sections 5.5 and 8).

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;

use tests::daemon::{Backend, Storaged};
use tests::mount::{ClientFiles, Mount};

#[allow(dead_code)]
#[path = "common/storage_admin.rs"]
mod storage_admin;
use storage_admin::Database;

const CHUNK: usize = 8 * 1024 * 1024;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect()
}

/// The errno of reading the whole file at `path` (none when it reads), and what it read.
fn read(path: std::path::PathBuf) -> Result<Vec<u8>, i32> {
    let mut buffer = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buffer))
        .map(|_| buffer)
        .map_err(|e| e.raw_os_error().unwrap_or(0))
}

/// Generations of chunk `index` of `ino` on disk, oldest first.
fn generations_on_disk(daemon: &Storaged, ino: u64, index: u64) -> Vec<u64> {
    let root = daemon.data_dir().join("chunks");
    tests::tools::chunk_files_all(&root, ino)
        .iter()
        .filter_map(|p| format::layout::parse_chunk_name(p.file_name()?.to_str()?))
        .filter(|&(_, i, _)| i == index)
        .map(|(_, _, generation)| generation)
        .collect()
}

/// A daemon that keeps superseded chunk files (as any does for its grace period), alice's
/// mount, and the runtime the database edits run on.
fn lab(backend: &Backend) -> (Storaged, ClientFiles, tokio::runtime::Runtime) {
    let daemon = Storaged::start_on(backend, &["--gc-grace-seconds", "3600"]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let user = runtime.block_on(daemon.user("alice"));
    (daemon, ClientFiles::for_user(&user), runtime)
}

fn assert_refused(mount: &Mount, name: &str, what: &str) {
    assert_eq!(read(mount.join(name)), Err(libc::EIO), "{what}");
    let log = mount.log_text();
    assert!(
        log.contains("failed its manifest check") && log.contains(name),
        "the client logs the file and the manifest check ({what}):\n{log}"
    );
}

fn a_chunk_rolled_back_to_an_older_generation_gives_eio(backend: Backend) {
    let (daemon, client, runtime) = lab(&backend);
    let db = runtime.block_on(Database::of(&daemon));
    let mut mount = Mount::start(&daemon, &client, &[]);
    let (old, intact) = (pattern(3, CHUNK + 1000), pattern(5, 2 * CHUNK));
    fs::write(mount.join("doc"), &old).expect("write");
    fs::write(mount.join("intact"), &intact).expect("write");
    // Rewrite a few bytes of chunk 0: a new generation; the old one stays on disk.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(mount.join("doc"))
        .expect("open");
    file.seek(SeekFrom::Start(100)).expect("seek");
    file.write_all(b"the newer state").expect("write");
    drop(file);
    let ino = fs::metadata(mount.join("doc")).expect("stat").ino();
    mount.stop();
    let generations = generations_on_disk(&daemon, ino, 0);
    // Two or more: a busy machine's writer may have sent chunk 0 twice before its commit.
    assert!(generations.len() >= 2, "the superseded chunk file is kept");

    runtime.block_on(db.set_chunk(ino, 0, Some(generations[0])));
    mount.spawn();
    assert_refused(&mount, "doc", "chunk 0 pointed at its older generation");
    assert_eq!(
        read(mount.join("intact")),
        Ok(intact),
        "other files still read"
    );

    // Without the manifest the file's keys still say it must have one.
    mount.stop();
    runtime.block_on(db.delete_manifest(ino));
    mount.spawn();
    assert_refused(&mount, "doc", "the rollback with the manifest deleted");
}

fn a_file_cut_or_holed_by_the_administrator_gives_eio(backend: Backend) {
    let (daemon, client, runtime) = lab(&backend);
    let db = runtime.block_on(Database::of(&daemon));
    let mut mount = Mount::start(&daemon, &client, &[]);
    let content = pattern(7, 2 * CHUNK + 500);
    for name in ["holed", "cut", "emptied"] {
        fs::write(mount.join(name), &content).expect("write");
    }
    let ino = |name: &str| fs::metadata(mount.join(name)).expect("stat").ino();
    let (holed, cut, emptied) = (ino("holed"), ino("cut"), ino("emptied"));
    // This mount reads "emptied" whole, so it remembers its manifest.
    assert_eq!(read(mount.join("emptied")), Ok(content.clone()));

    runtime.block_on(async {
        // A hole where chunk 1 was: it would read as zeros.
        db.set_chunk(holed, 1, None).await;
        // The file cut to nothing, every chunk record dropped.
        db.set_size(cut, 0).await;
        for index in 0..3 {
            db.set_chunk(cut, index, None).await;
        }
        // The same, with its manifest deleted too: only a client that saw it can tell.
        db.set_size(emptied, 0).await;
        for index in 0..3 {
            db.set_chunk(emptied, index, None).await;
        }
        db.delete_manifest(emptied).await;
    });
    // Opened again on this mount, once the kernel's cached attributes (one coherence window)
    // let the open reach the client.
    let refused = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        read(mount.join("emptied")) == Err(libc::EIO)
    });
    assert!(
        refused,
        "a client that saw the manifest refuses the file without it"
    );
    mount.remount();
    assert_refused(&mount, "holed", "a hole made by dropping a chunk record");
    assert_refused(&mount, "cut", "the size cut and the chunk records dropped");
    assert_refused(
        &mount,
        "emptied",
        "the next mount remembers the manifest it saw",
    );
    // A client that never saw it cannot tell the emptied file from its state at creation
    // (section 8).
    let other = Mount::start(&daemon, &fresh_client(&client), &[]);
    assert_eq!(read(other.join("emptied")), Ok(Vec::new()));
}

/// The administrator points the chunk of a file a client holds open at a generation that no
/// manifest names: a writer's upload that never became current (the writer was killed before
/// its commit). The open file re-reads its manifest before it takes a newer generation, and
/// refuses the file; before, it served the bytes its writer never committed.
fn an_open_file_refuses_a_chunk_generation_no_manifest_names(backend: Backend) {
    let (daemon, client, runtime) = lab(&backend);
    let db = runtime.block_on(Database::of(&daemon));
    let mut mount = Mount::start(&daemon, &client, &[]);
    fs::write(mount.join("doc"), pattern(3, 2 * CHUNK + 100)).expect("write");
    let ino = fs::metadata(mount.join("doc")).expect("stat").ino();
    let before = generations_on_disk(&daemon, ino, 0);
    // A writer rewrites chunk 0 and moves past it (so it is sealed and sent behind it), and
    // dies before the close that would commit it.
    let mut writer = fs::OpenOptions::new()
        .write(true)
        .open(mount.join("doc"))
        .expect("open");
    writer.write_all(&pattern(9, CHUNK + 1)).expect("write");
    let new = || -> Vec<u64> {
        let now = generations_on_disk(&daemon, ino, 0);
        now.into_iter().filter(|g| !before.contains(g)).collect()
    };
    tests::mount::until("the upload of chunk 0", || !new().is_empty());
    mount.kill();
    tests::mount::until("the killed mount gone", || !mount.is_mounted());
    drop(writer);
    let uncommitted = new()[0];

    mount.spawn();
    let mut reader = fs::File::open(mount.join("doc")).expect("open");
    runtime.block_on(db.set_chunk(ino, 0, Some(uncommitted)));
    let mut buffer = vec![0u8; 4096];
    let read = reader.read(&mut buffer).map_err(|e| e.raw_os_error());
    assert_eq!(
        read,
        Err(Some(libc::EIO)),
        "the uncommitted chunk is served"
    );
    let log = mount.log_text();
    assert!(
        log.contains("failed its manifest check") && log.contains("doc"),
        "the client logs the file and the manifest check:\n{log}"
    );
}

/// The same user's key and passphrase in a new directory: a client that saw nothing yet.
fn fresh_client(client: &ClientFiles) -> ClientFiles {
    let dir = tempfile::tempdir().expect("dir");
    for name in ["user.vkey", "passphrase"] {
        fs::copy(client.dir.path().join(name), dir.path().join(name)).expect("copy");
    }
    ClientFiles {
        dir,
        name: client.name.clone(),
    }
}

/// The administrator puts a whole earlier state of a file back between two mounts of the same
/// user (its manifest, chunk record and size together, as a backup holds them). The second
/// mount refuses it: the first saved, at unmount, which manifest it saw. A client of the same
/// user that never saw the newer state cannot tell (docs/format.md section 8).
fn an_earlier_state_put_back_between_two_mounts_is_refused(backend: Backend) {
    let (daemon, client, runtime) = lab(&backend);
    let db = runtime.block_on(Database::of(&daemon));
    let mut mount = Mount::start(&daemon, &client, &[]);
    let earlier = pattern(3, 1000);
    fs::write(mount.join("doc"), &earlier).expect("write");
    let ino = fs::metadata(mount.join("doc")).expect("stat").ino();
    let earlier_manifest = runtime.block_on(db.manifest(ino));
    fs::write(mount.join("doc"), pattern(5, 3000)).expect("rewrite");
    mount.stop();
    let generations = generations_on_disk(&daemon, ino, 0);
    let earlier_generation = *generations.iter().min().expect("chunk files");
    assert!(generations.len() >= 2, "the earlier chunk file is kept");
    assert!(
        client.dir.path().join("client.seen").exists(),
        "saved at unmount"
    );

    runtime.block_on(async {
        db.set_manifest(ino, &earlier_manifest).await;
        db.set_chunk(ino, 0, Some(earlier_generation)).await;
        db.set_size(ino, earlier.len() as u64).await;
    });
    let other = Mount::start(&daemon, &fresh_client(&client), &[]);
    assert_eq!(
        read(other.join("doc")),
        Ok(earlier),
        "a client that never saw the newer state reads the earlier one"
    );
    drop(other);
    mount.spawn();
    assert_refused(&mount, "doc", "the earlier state put back");
    assert!(mount.log_text().contains("older than manifest"));
}

tests::on_every_backend!(sync:
    a_chunk_rolled_back_to_an_older_generation_gives_eio,
    a_file_cut_or_holed_by_the_administrator_gives_eio,
    an_open_file_refuses_a_chunk_generation_no_manifest_names,
    an_earlier_state_put_back_between_two_mounts_is_refused,
);
