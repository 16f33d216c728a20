//! Sharing between two users through their own mounts of one real daemon, with the real
//! `vaultfs share`/`unshare`/`acl` and `vault-admin group` commands: read-only and read-write
//! shares, a directory shared recursively, a group, a member removed, revocation. After each
//! revocation the revoked user's old keys open no chunk file written after it (the test opens
//! the chunk files in the data dir itself). Bad requests fail with one line and change
//! nothing. Each test runs once per metadata backend.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crypto::{ChunkContext, FileKeys, GroupKeys};
use format::acl::Principal;
use format::ids::{ChunkIndex, FileId, Generation, VaultId};
use identity::{KdfParams, KeyFile, KeyKind, PublicIdentity};
use mongodb::bson::{Document, doc};
use proto::v1::{GetAclRequest, GetGroupKeyRequest, GetWrappedKeysRequest};
use tests::daemon::{Backend, Storaged, TestUser};
use tests::mount::{ClientFiles, Mount, bounded};

const EACCES: i32 = libc::EACCES;
const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// Two users, each with a mount of their own, on one daemon. The mounts are dropped first.
struct Lab {
    alice_mount: Mount,
    bob_mount: Mount,
    alice_files: ClientFiles,
    bob_files: ClientFiles,
    alice: TestUser,
    bob: TestUser,
    vault: VaultId,
    admin_dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    daemon: Storaged,
}

fn lab(backend: &Backend) -> Lab {
    let daemon = Storaged::start_on(backend, &[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let alice = runtime.block_on(daemon.user("alice"));
    let bob = runtime.block_on(daemon.user("bob"));
    let vault = runtime.block_on(tests::vault::vault_id(&alice));
    let (alice_files, bob_files) = (ClientFiles::for_user(&alice), ClientFiles::for_user(&bob));
    let alice_mount = Mount::start(&daemon, &alice_files, &[]);
    let bob_mount = Mount::start(&daemon, &bob_files, &[]);
    let admin_dir = tempfile::tempdir().expect("admin dir");
    let sealed = KeyFile::seal(
        &daemon.admin,
        KeyKind::SiteAdmin,
        b"admin passphrase",
        KdfParams::MINIMUM,
    )
    .expect("seal the admin key");
    fs::write(admin_dir.path().join("admin.vkey"), sealed.as_bytes()).expect("admin key");
    fs::write(admin_dir.path().join("passphrase"), "admin passphrase\n").expect("passphrase");
    Lab {
        alice_mount,
        bob_mount,
        alice_files,
        bob_files,
        alice,
        bob,
        vault,
        admin_dir,
        runtime,
        daemon,
    }
}

/// Runs a program with a bound on its time.
fn run(mut command: Command) -> Output {
    let shown = format!("{command:?}");
    bounded(COMMAND_LIMIT, &shown, move || {
        command.output().expect("runs")
    })
}

/// What a command printed, after checking it succeeded.
fn succeeded(output: Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The one line a failed command printed.
fn failed(output: Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    assert!(!output.status.success(), "succeeded: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    stderr
}

impl Lab {
    /// `vaultfs ARGS` as `who` (alice or bob), with their key, daemon and config.
    fn vaultfs(&self, who: &ClientFiles, args: &[&str]) -> Output {
        let mut command = Command::new(tests::binary("vaultfs"));
        command.args(args).args(who.args(&self.daemon));
        run(command)
    }

    /// `vault-admin group ARGS` with the site administrator's key.
    fn group(&self, args: &[&str]) {
        let dir = self.admin_dir.path();
        let mut command = Command::new(tests::binary("vault-admin"));
        command.arg("group").args(args).args([
            "--admin-key".into(),
            dir.join("admin.vkey").display().to_string(),
            "--passphrase-file".into(),
            dir.join("passphrase").display().to_string(),
            "--server".into(),
            format!("unix:{}", self.daemon.socket().display()),
        ]);
        succeeded(run(command));
    }

    fn signers(&self) -> HashMap<u32, PublicIdentity> {
        HashMap::from([
            (self.alice.uid, self.alice.identity.public()),
            (self.bob.uid, self.bob.identity.public()),
        ])
    }

    /// The keys of `ino` as `user` holds them now, each wrap checked against its wrapper.
    fn keys_of(&self, user: &TestUser, ino: u64) -> FileKeys {
        self.runtime.block_on(file_keys(self, user, ino))
    }

    /// The key pairs of group `gid` as `user` holds them now.
    fn group_keys_of(&self, user: &TestUser, gid: u32) -> GroupKeys {
        self.runtime.block_on(group_keys(self, user, gid))
    }
}

async fn group_keys(lab: &Lab, user: &TestUser, gid: u32) -> GroupKeys {
    let request = GetGroupKeyRequest { gid };
    let reply = user.connection.api().get_group_key(request).await;
    let blob = reply.expect("the group's keys").into_inner().blob;
    let admin = lab.daemon.admin.public();
    GroupKeys::unwrap(&blob, &user.identity, lab.vault, gid, &admin).expect("group keys")
}

/// The wrapped keys of `ino` that `user` may fetch (theirs and their groups').
async fn wrapped_keys(user: &TestUser, ino: u64) -> Vec<proto::v1::WrappedKey> {
    let request = GetWrappedKeysRequest { ino };
    let reply = user.connection.api().get_wrapped_keys(request).await;
    reply.expect("wrapped keys").into_inner().keys
}

async fn file_keys(lab: &Lab, user: &TestUser, ino: u64) -> FileKeys {
    let wrapped = wrapped_keys(user, ino).await;
    let chosen = wrapped
        .first()
        .expect("a key wrapped to this user or a group");
    let header = crypto::signed_wrap_header(&chosen.blob).expect("a signed wrap");
    let signer = lab.signers()[&header.wrapper];
    match header.recipient {
        Principal::User(_) => {
            FileKeys::unwrap(&chosen.blob, &user.identity, lab.vault, ino, &signer).expect("opens")
        }
        Principal::Group(gid) => {
            let group = group_keys(lab, user, gid).await;
            let pair = group
                .with_wrapping_key(&header.recipient_key)
                .expect("the group key pair it is wrapped to");
            FileKeys::unwrap(&chosen.blob, pair, lab.vault, ino, &signer).expect("opens")
        }
    }
}

fn ino_of(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).expect("stat").ino()
}

/// Writes `text` over a file and makes it durable (fsync), so that it is on the server.
fn write_synced(path: &Path, text: &str) {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} for writing: {e}", path.display()));
    file.write_all(text.as_bytes()).expect("write");
    file.sync_all().expect("fsync");
}

fn read_errno(path: &Path) -> Option<i32> {
    fs::read(path).err().and_then(|e| e.raw_os_error())
}

fn write_errno(path: &Path) -> Option<i32> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .err()
        .and_then(|e| e.raw_os_error())
}

/// Waits (bounded) until reading `path` fails with `errno`: the server forgets a removed
/// member's groups within its caller cache's lifetime.
fn wait_for_read_errno(path: &Path, errno: i32) {
    for _ in 0..300 {
        if read_errno(path) == Some(errno) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("reading {} never failed with errno {errno}", path.display());
}

/// Waits (bounded) until `path` reads, and returns what it holds: the server learns of a
/// new member's groups within its caller cache's lifetime.
fn wait_for_read(path: &Path) -> String {
    for _ in 0..300 {
        if let Ok(text) = fs::read_to_string(path) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{} never became readable", path.display());
}

/// The chunk files of file `ino` in the data dir: (index, generation).
fn chunk_files(daemon: &Storaged, ino: u64) -> BTreeSet<(u64, u64)> {
    let root = daemon.data_dir().join("chunks");
    let dir = format::layout::chunk_dir(&root, FileId(ino));
    let Ok(listing) = fs::read_dir(&dir) else {
        return BTreeSet::new();
    };
    listing
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (file, index, generation) = format::layout::parse_chunk_name(&name)?;
            (file == FileId(ino)).then_some((index, generation))
        })
        .collect()
}

/// Chunk file (`index`, `generation`) of `ino` in the data dir: its path, its bytes, and where
/// it belongs (one-chunk files: the last chunk).
fn sealed_chunk(
    lab: &Lab,
    ino: u64,
    (index, generation): (u64, u64),
) -> (PathBuf, Vec<u8>, ChunkContext) {
    let root = lab.daemon.data_dir().join("chunks");
    let path = format::layout::chunk_path(&root, FileId(ino), index, generation);
    let sealed = fs::read(&path).expect("chunk file");
    let context = ChunkContext {
        vault: lab.vault,
        file: FileId(ino),
        index: ChunkIndex(index),
        generation: Generation(generation),
        last: true,
    };
    (path, sealed, context)
}

/// The revoked user's `old` keys open none of the chunk files of `ino` written since
/// `before`, while the owner's `current` keys open every one of them (one-chunk files).
fn old_keys_open_no_new_chunk(
    lab: &Lab,
    ino: u64,
    before: &BTreeSet<(u64, u64)>,
    old: &FileKeys,
    current: &FileKeys,
) {
    let written: Vec<(u64, u64)> = chunk_files(&lab.daemon, ino)
        .difference(before)
        .copied()
        .collect();
    assert!(!written.is_empty(), "no chunk of {ino} was written since");
    for (index, generation) in written {
        let (path, sealed, context) = sealed_chunk(lab, ino, (index, generation));
        assert!(
            crypto::open(current.for_sealed(&sealed), &context, &sealed).is_ok(),
            "the owner's current key opens {}",
            path.display()
        );
        assert!(
            crypto::open(old.for_sealed(&sealed), &context, &sealed).is_err(),
            "the revoked user's old key opens {}",
            path.display()
        );
    }
}

fn a_file_shared_read_only_reads_but_refuses_writes_until_unshared(backend: Backend) {
    let lab = lab(&backend);
    let (mine, theirs) = (lab.alice_mount.join("report"), lab.bob_mount.join("report"));
    write_synced(&mine, "first words");
    assert_eq!(read_errno(&theirs), Some(EACCES), "not shared yet");
    let path = mine.display().to_string();
    let said = succeeded(lab.vaultfs(&lab.alice_files, &["share", &path, "--with", "bob"]));
    assert!(said.contains("bob may now read"), "{said}");
    assert_eq!(
        fs::read_to_string(&theirs).expect("bob reads"),
        "first words"
    );
    assert_eq!(write_errno(&theirs), Some(EACCES), "read-only");

    let ino = ino_of(&mine);
    let old = lab.keys_of(&lab.bob, ino);
    let before = chunk_files(&lab.daemon, ino);
    succeeded(lab.vaultfs(&lab.alice_files, &["unshare", &path, "--from", "bob"]));
    assert_eq!(read_errno(&theirs), Some(EACCES), "unshared");
    write_synced(&mine, "second words, after bob");
    assert_eq!(
        fs::read_to_string(&mine).expect("alice reads"),
        "second words, after bob"
    );
    old_keys_open_no_new_chunk(&lab, ino, &before, &old, &lab.keys_of(&lab.alice, ino));
}

fn a_file_shared_for_writing_takes_the_other_users_writes(backend: Backend) {
    let lab = lab(&backend);
    let (mine, theirs) = (lab.alice_mount.join("notes"), lab.bob_mount.join("notes"));
    write_synced(&mine, "alice's notes");
    let path = mine.display().to_string();
    succeeded(lab.vaultfs(
        &lab.alice_files,
        &["share", &path, "--with", "bob", "--write"],
    ));
    write_synced(&theirs, "bob's notes");
    assert_eq!(
        fs::read_to_string(&mine).expect("alice reads"),
        "bob's notes"
    );
    let acl = succeeded(lab.vaultfs(&lab.bob_files, &["acl", &theirs.display().to_string()]));
    let bob_line = acl
        .lines()
        .find(|l| l.trim_start().starts_with("bob"))
        .unwrap_or_else(|| panic!("no line for bob: {acl}"));
    let fingerprint = lab.bob.identity.public().fingerprint().to_string();
    assert!(
        bob_line.contains("read, write") && bob_line.contains(&fingerprint),
        "{acl}"
    );
    assert!(acl.contains("owner"), "{acl}");

    let ino = ino_of(&mine);
    let old = lab.keys_of(&lab.bob, ino);
    let before = chunk_files(&lab.daemon, ino);
    succeeded(lab.vaultfs(&lab.alice_files, &["unshare", &path, "--from", "bob"]));
    assert_eq!(write_errno(&theirs), Some(EACCES), "unshared");
    write_synced(&mine, "alice again");
    old_keys_open_no_new_chunk(&lab, ino, &before, &old, &lab.keys_of(&lab.alice, ino));
}

fn a_directory_shared_recursively_reaches_every_file_and_new_ones(backend: Backend) {
    let lab = lab(&backend);
    fs::create_dir_all(lab.alice_mount.join("project/sub")).expect("mkdir");
    write_synced(&lab.alice_mount.join("project/a"), "file a");
    write_synced(&lab.alice_mount.join("project/sub/b"), "file b");
    let project = lab.alice_mount.join("project").display().to_string();
    let said = succeeded(lab.vaultfs(
        &lab.alice_files,
        &["share", "-r", &project, "--with", "bob"],
    ));
    assert!(said.contains("(4 entries)"), "{said}");
    let theirs = |name: &str| lab.bob_mount.join(&format!("project/{name}"));
    assert_eq!(
        fs::read_to_string(theirs("a")).expect("bob reads a"),
        "file a"
    );
    assert_eq!(
        fs::read_to_string(theirs("sub/b")).expect("bob reads b"),
        "file b"
    );
    // A file made in the shared directory after sharing reaches bob too.
    write_synced(&lab.alice_mount.join("project/sub/c"), "file c");
    assert_eq!(
        fs::read_to_string(theirs("sub/c")).expect("bob reads c"),
        "file c"
    );

    let ino = ino_of(&lab.alice_mount.join("project/sub/c"));
    let old = lab.keys_of(&lab.bob, ino);
    let before = chunk_files(&lab.daemon, ino);
    succeeded(lab.vaultfs(
        &lab.alice_files,
        &["unshare", "-r", &project, "--from", "bob"],
    ));
    assert_eq!(read_errno(&theirs("a")), Some(EACCES), "unshared");
    write_synced(&lab.alice_mount.join("project/sub/c"), "file c, after bob");
    old_keys_open_no_new_chunk(&lab, ino, &before, &old, &lab.keys_of(&lab.alice, ino));
}

fn a_group_share_reaches_members_and_a_removed_member_gets_no_new_key(backend: Backend) {
    let lab = lab(&backend);
    lab.group(&["create", "lab"]);
    lab.group(&["add", "lab", "alice"]);
    lab.group(&["add", "lab", "bob"]);
    let (mine, theirs) = (lab.alice_mount.join("data"), lab.bob_mount.join("data"));
    write_synced(&mine, "the lab's data");
    let path = mine.display().to_string();
    succeeded(lab.vaultfs(&lab.alice_files, &["share", &path, "--with", "@lab"]));
    assert_eq!(wait_for_read(&theirs), "the lab's data");

    let ino = ino_of(&mine);
    let old = lab.keys_of(&lab.bob, ino);
    let gid = lab.runtime.block_on(group_of(&lab.alice, ino));
    let old_group = lab.group_keys_of(&lab.bob, gid);
    let before = chunk_files(&lab.daemon, ino);
    lab.group(&["remove", "lab", "bob"]);
    wait_for_read_errno(&theirs, EACCES);
    write_synced(&mine, "the lab's data, without bob");
    assert_eq!(
        fs::read_to_string(&mine).expect("alice reads"),
        "the lab's data, without bob"
    );
    let current = lab.keys_of(&lab.alice, ino);
    old_keys_open_no_new_chunk(&lab, ino, &before, &old, &current);
    // The file's new key is wrapped to the group's new key pair, which bob never had.
    let recipient = lab.runtime.block_on(group_wrap_recipient(&lab.alice, ino));
    assert!(old_group.with_wrapping_key(&recipient).is_none());
}

/// Until a chunk is rewritten, a revoked reader's old key still opens it (what they could
/// read before); `vaultfs rekey` re-seals every chunk under one new key, which theirs do not
/// open, and the file reads the same.
fn rekey_reseals_what_a_revoked_reader_could_still_open(backend: Backend) {
    let lab = lab(&backend);
    let mine = lab.alice_mount.join("kept");
    write_synced(&mine, "written before the revocation");
    let path = mine.display().to_string();
    succeeded(lab.vaultfs(&lab.alice_files, &["share", &path, "--with", "bob"]));
    let ino = ino_of(&mine);
    let old = lab.keys_of(&lab.bob, ino);
    succeeded(lab.vaultfs(&lab.alice_files, &["unshare", &path, "--from", "bob"]));
    let before = chunk_files(&lab.daemon, ino);
    let last = *before.last().expect("a chunk file");
    let (_, sealed, context) = sealed_chunk(&lab, ino, last);
    assert!(crypto::open(old.for_sealed(&sealed), &context, &sealed).is_ok());

    let said = succeeded(lab.vaultfs(&lab.alice_files, &["rekey", &path]));
    assert!(said.contains("re-sealed 1 files (1 chunks)"), "{said}");
    let current = lab.keys_of(&lab.alice, ino);
    assert_eq!(current.count(), 1, "the older keys are dropped");
    old_keys_open_no_new_chunk(&lab, ino, &before, &old, &current);
    assert_eq!(
        fs::read_to_string(&mine).expect("alice reads"),
        "written before the revocation"
    );
}

/// The group a file is shared with (by its ACL).
async fn group_of(user: &TestUser, ino: u64) -> u32 {
    let acl = user
        .connection
        .api()
        .get_acl(GetAclRequest { ino })
        .await
        .expect("acl")
        .into_inner();
    acl.entries
        .iter()
        .find_map(|e| match e.principal.and_then(|p| p.kind) {
            Some(proto::v1::principal::Kind::Group(gid)) if gid != 0 => Some(gid),
            _ => None,
        })
        .expect("shared with a group")
}

/// The X25519 key the file's group wrap is addressed to.
async fn group_wrap_recipient(user: &TestUser, ino: u64) -> [u8; 32] {
    let wrapped = wrapped_keys(user, ino).await;
    wrapped
        .iter()
        .map(|k| crypto::signed_wrap_header(&k.blob).expect("signed"))
        .find(|h| matches!(h.recipient, Principal::Group(_)))
        .expect("a wrap to the group")
        .recipient_key
}

/// What the server holds about who may read `ino`: its ACL reply and its wrapped keys.
fn sharing_state(lab: &Lab, ino: u64) -> String {
    lab.runtime.block_on(async {
        let api = lab.alice.connection.api();
        let acl = api.clone().get_acl(GetAclRequest { ino }).await;
        let keys = api
            .clone()
            .get_wrapped_keys(GetWrappedKeysRequest { ino })
            .await;
        format!(
            "{:?} {:?}",
            acl.expect("acl").into_inner(),
            keys.expect("keys").into_inner()
        )
    })
}

fn bad_sharing_requests_fail_with_one_line_and_change_nothing(backend: Backend) {
    let lab = lab(&backend);
    lab.group(&["create", "others"]);
    lab.group(&["add", "others", "bob"]);
    let mine = lab.alice_mount.join("mine");
    write_synced(&mine, "alice's alone");
    let ino = ino_of(&mine);
    let state = sharing_state(&lab, ino);
    let path = mine.display().to_string();
    let outside = tempfile::NamedTempFile::new().expect("a file outside the vault");
    let outside = outside.path().display().to_string();
    for (args, expected) in [
        (["share", &path, "--with", "nobody"], "no user named nobody"),
        (["share", &path, "--with", "alice"], "yourself"),
        (
            ["share", &outside, "--with", "bob"],
            "not inside a mounted vault",
        ),
        (["share", &path, "--with", "@others"], "not in group others"),
        (
            ["unshare", &path, "--from", "bob"],
            "is not shared with bob",
        ),
    ] {
        let said = failed(lab.vaultfs(&lab.alice_files, &args));
        assert!(said.contains(expected), "{args:?}: {said}");
    }
    assert_eq!(
        sharing_state(&lab, ino),
        state,
        "a refused request changed nothing"
    );
    assert_eq!(read_errno(&lab.bob_mount.join("mine")), Some(EACCES));
    assert_eq!(
        fs::read_to_string(&mine).expect("alice reads"),
        "alice's alone"
    );
}

tests::on_every_backend!(sync:
    a_file_shared_read_only_reads_but_refuses_writes_until_unshared,
    a_file_shared_for_writing_takes_the_other_users_writes,
    a_directory_shared_recursively_reaches_every_file_and_new_ones,
    a_group_share_reaches_members_and_a_removed_member_gets_no_new_key,
    bad_sharing_requests_fail_with_one_line_and_change_nothing,
    rekey_reseals_what_a_revoked_reader_could_still_open,
    a_wrapped_key_replaced_by_the_administrator_is_refused,
    a_reader_added_to_an_acl_by_the_administrator_gets_no_key,
);

/// The storage administrator's hands on the metadata store, behind storaged's back: rows
/// of the embedded store (rusqlite) or documents of MongoDB (the mongodb crate).
struct Database<'a>(&'a Storaged);

impl Database<'_> {
    fn sqlite(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(self.0.data_dir().join("meta.db")).expect("db");
        conn.busy_timeout(Duration::from_secs(10))
            .expect("busy timeout");
        conn
    }

    async fn collection(&self, name: &str) -> Option<mongodb::Collection<Document>> {
        let url = self.0.meta_url()?;
        let client = mongodb::Client::with_uri_str(url).await.expect("client");
        Some(
            client
                .default_database()
                .expect("a database")
                .collection(name),
        )
    }

    /// The wrapped key of file `ino` filed under user `uid`.
    async fn wrapped_key(&self, ino: u64, uid: u32) -> Vec<u8> {
        let principal = format!("u:{uid}");
        let Some(keys) = self.collection("wrapped_keys").await else {
            let sql = "SELECT blob FROM wrapped_keys WHERE ino = ?1 AND principal = ?2";
            let params = rusqlite::params![ino as i64, principal];
            return self
                .sqlite()
                .query_row(sql, params, |r| r.get(0))
                .expect("row");
        };
        let filter = doc! { "ino": ino as i64, "principal": principal };
        let found = keys
            .find_one(filter)
            .await
            .expect("find")
            .expect("a document");
        found.get_binary_generic("blob").expect("blob").clone()
    }

    /// Replaces the wrapped key of file `ino` filed under user `uid`.
    async fn set_wrapped_key(&self, ino: u64, uid: u32, blob: &[u8]) {
        let principal = format!("u:{uid}");
        let Some(keys) = self.collection("wrapped_keys").await else {
            let sql = "UPDATE wrapped_keys SET blob = ?1 WHERE ino = ?2 AND principal = ?3";
            let params = rusqlite::params![blob, ino as i64, principal];
            assert_eq!(self.sqlite().execute(sql, params).expect("edit"), 1);
            return;
        };
        let filter = doc! { "ino": ino as i64, "principal": principal };
        let update = doc! { "$set": { "blob": binary(blob) } };
        let result = keys.update_one(filter, update).await.expect("edit");
        assert_eq!(result.matched_count, 1);
    }

    /// Every principal any file's key is wrapped to, as `u:UID` or `g:GID`.
    async fn wrapped_principals(&self) -> Vec<String> {
        let Some(keys) = self.collection("wrapped_keys").await else {
            let conn = self.sqlite();
            let mut statement = conn
                .prepare("SELECT principal FROM wrapped_keys")
                .expect("prepare");
            let rows = statement.query_map([], |r| r.get(0)).expect("query");
            return rows.map(|r| r.expect("row")).collect();
        };
        let mut cursor = keys.find(doc! {}).await.expect("find");
        let mut found = Vec::new();
        while cursor.advance().await.expect("next") {
            let document = cursor.deserialize_current().expect("document");
            found.push(
                document
                    .get_str("principal")
                    .expect("principal")
                    .to_string(),
            );
        }
        found
    }

    /// Adds (`Some`) or removes (`None`) user `uid`'s read entry in inode `ino`'s ACL.
    async fn set_reader(&self, ino: u64, uid: u32, read: Option<()>) {
        let Some(inodes) = self.collection("inodes").await else {
            let conn = self.sqlite();
            let sql = "SELECT acl FROM inodes WHERE ino = ?1";
            let acl: Vec<u8> = conn
                .query_row(sql, [ino as i64], |r| r.get(0))
                .expect("acl");
            let mut entry = vec![b'u'];
            entry.extend_from_slice(&uid.to_le_bytes());
            entry.extend_from_slice(&[1, 0, 0, 0]);
            let mut edited: Vec<u8> = acl
                .chunks(9)
                .filter(|e| e[..5] != entry[..5])
                .flatten()
                .copied()
                .collect();
            if read.is_some() {
                edited.extend_from_slice(&entry);
            }
            let sql = "UPDATE inodes SET acl = ?1 WHERE ino = ?2";
            conn.execute(sql, rusqlite::params![edited, ino as i64])
                .expect("edit");
            return;
        };
        let principal = format!("u:{uid}");
        let filter = doc! { "_id": ino as i64 };
        let pull = doc! { "$pull": { "acl": { "principal": &principal } } };
        inodes.update_one(filter.clone(), pull).await.expect("edit");
        if read.is_some() {
            let entry = doc! { "principal": principal, "read": true, "write": false };
            let push = doc! { "$push": { "acl": entry } };
            inodes.update_one(filter, push).await.expect("edit");
        }
    }

    /// Stores (`Some`) or deletes (`None`) inode `ino`'s signed ACL record.
    async fn set_acl_record(&self, ino: u64, record: Option<&[u8]>) {
        let Some(signed) = self.collection("signed").await else {
            let conn = self.sqlite();
            conn.execute(
                "DELETE FROM signed WHERE kind = 1 AND id = ?1",
                [ino as i64],
            )
            .expect("delete");
            if let Some(record) = record {
                let sql = "INSERT INTO signed (kind, id, sub, blob) VALUES (1, ?1, 0, ?2)";
                conn.execute(sql, rusqlite::params![ino as i64, record])
                    .expect("insert");
            }
            return;
        };
        let key = doc! { "kind": 1i32, "id": ino as i64, "sub": 0i64 };
        signed.delete_many(key.clone()).await.expect("delete");
        if let Some(record) = record {
            let mut document = key;
            document.insert("blob", binary(record));
            signed.insert_one(document).await.expect("insert");
        }
    }
}

fn binary(bytes: &[u8]) -> mongodb::bson::Bson {
    mongodb::bson::Bson::Binary(mongodb::bson::Binary {
        subtype: mongodb::bson::spec::BinarySubtype::Generic,
        bytes: bytes.to_vec(),
    })
}

/// Tries to write `text` over `path` and make it durable.
fn try_write(path: &Path, text: &str) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// The wraps the storage administrator makes of a key of its own (`planted`) for alice's
/// file `ino`: unsigned (version 1), signed as alice by a key it made, and signed by bob, a
/// certified reader who may not write (colluding with it). Each with the reason alice's
/// client gives when it refuses it.
fn forged_wraps(lab: &Lab, ino: u64, planted: &crypto::DataKey) -> Vec<(Vec<u8>, &'static str)> {
    let alice = lab.alice.identity.public();
    let unsigned = crypto::wrap(
        planted,
        &alice,
        &crypto::WrapContext {
            vault: lab.vault,
            kind: crypto::WrapKind::FileKey,
            object: ino,
        },
    )
    .expect("wrap");
    let keys = FileKeys::single(planted.clone());
    let to_alice = crypto::Recipient {
        principal: Principal::User(lab.alice.uid),
        wrapping_key: alice.wrapping,
    };
    let forger = identity::Identity::generate();
    let as_alice = crypto::Wrapper {
        uid: lab.alice.uid,
        identity: &forger,
    };
    let as_bob = crypto::Wrapper {
        uid: lab.bob.uid,
        identity: &lab.bob.identity,
    };
    vec![
        (unsigned, "unsigned version 1"),
        (
            keys.wrap(lab.vault, ino, to_alice, as_alice).expect("wrap"),
            "not signed by the user it names",
        ),
        (
            keys.wrap(lab.vault, ino, to_alice, as_bob).expect("wrap"),
            "who may not write it",
        ),
    ]
}

/// No chunk file of `ino` opens under `key`.
fn no_chunk_opens_under(lab: &Lab, ino: u64, key: &crypto::DataKey) {
    let cipher = key.chunk_cipher();
    for (index, generation) in chunk_files(&lab.daemon, ino) {
        let (path, sealed, context) = sealed_chunk(lab, ino, (index, generation));
        assert!(
            crypto::open(&cipher, &context, &sealed).is_err(),
            "{} is sealed under the administrator's key",
            path.display()
        );
    }
}

fn a_wrapped_key_replaced_by_the_administrator_is_refused(backend: Backend) {
    let mut lab = lab(&backend);
    let mine = lab.alice_mount.join("secret");
    write_synced(&mine, "alice's secret");
    let path = mine.display().to_string();
    succeeded(lab.vaultfs(&lab.alice_files, &["share", &path, "--with", "bob"]));
    let ino = ino_of(&mine);
    let database = Database(&lab.daemon);
    let original = lab
        .runtime
        .block_on(database.wrapped_key(ino, lab.alice.uid));
    let planted = crypto::DataKey::generate();
    for (forged, reason) in forged_wraps(&lab, ino, &planted) {
        lab.runtime
            .block_on(Database(&lab.daemon).set_wrapped_key(ino, lab.alice.uid, &forged));
        lab.alice_mount.remount();
        assert_eq!(read_errno(&mine), Some(EACCES), "{reason}");
        assert!(
            try_write(&mine, "written under the planted key").is_err(),
            "{reason}"
        );
        assert!(lab.alice_mount.log_text().contains(reason), "{reason}");
        no_chunk_opens_under(&lab, ino, &planted);
    }
    // Alice's own wrap back: the file reads as she wrote it.
    lab.runtime
        .block_on(Database(&lab.daemon).set_wrapped_key(ino, lab.alice.uid, &original));
    lab.alice_mount.remount();
    assert_eq!(
        fs::read_to_string(&mine).expect("alice reads"),
        "alice's secret"
    );
}

fn a_reader_added_to_an_acl_by_the_administrator_gets_no_key(backend: Backend) {
    let mut lab = lab(&backend);
    let dir = lab.alice_mount.join("private");
    fs::create_dir(&dir).expect("mkdir");
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .expect("fsync");
    let dir_ino = ino_of(&dir);
    let (database, bob) = (Database(&lab.daemon), lab.bob.uid);
    let bobs = format!("u:{bob}");
    // An entry for bob, unsigned; then with a record signed as alice by a key it made.
    let forger = TestUser {
        identity: std::sync::Arc::new(identity::Identity::generate()),
        ..lab.alice.clone()
    };
    let forged = tests::vault::signed_acl(
        &forger,
        (lab.vault, dir_ino, 1),
        &[(Principal::User(bob), true, false)],
    );
    let steps = [
        ("unsigned", None, "did not sign"),
        ("forged", Some(&forged[..]), "has a bad signature"),
    ];
    for (step, record, reason) in steps {
        lab.runtime.block_on(async {
            database.set_reader(dir_ino, bob, Some(())).await;
            database.set_acl_record(dir_ino, record).await;
        });
        lab.alice_mount.remount();
        let refused = try_write(&dir.join(step), "for alice only");
        assert_eq!(refused.err().and_then(|e| e.raw_os_error()), Some(EACCES));
        let principals = lab.runtime.block_on(database.wrapped_principals());
        assert!(!principals.contains(&bobs), "{step}: {principals:?}");
        assert!(lab.alice_mount.log_text().contains(reason), "{step}");
    }
    // Undone, and shared by alice herself: her next file there is bob's to read.
    lab.runtime.block_on(async {
        database.set_reader(dir_ino, bob, None).await;
        database.set_acl_record(dir_ino, None).await;
    });
    lab.alice_mount.remount();
    let path = dir.display().to_string();
    succeeded(lab.vaultfs(&lab.alice_files, &["share", &path, "--with", "bob"]));
    write_synced(&dir.join("shared"), "for bob too");
    let principals = lab.runtime.block_on(database.wrapped_principals());
    assert!(principals.contains(&bobs), "{principals:?}");
    let theirs = lab.bob_mount.join("private/shared");
    assert_eq!(
        fs::read_to_string(theirs).expect("bob reads"),
        "for bob too"
    );
}
