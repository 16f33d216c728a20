//! Attacks on the vault by whoever can reach storaged without an account, by another local
//! user of a client machine, and by the storage administrator (who holds the database and the
//! chunk files): each test is named after the attack and shows it fails (issue 20, item 6;
//! `docs/format.md` section 8, the threat table).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};
use std::time::Instant;

use client::Connection;
use identity::{Identity, KeyKind};
use mongodb::bson::{Binary, doc, spec::BinarySubtype};
use proto::v1::{
    AnchorAuditRequest, ChallengeRequest, GetAuditHeadRequest, LoginRequest, RegisterRequest,
};
use proto::{ErrorKind, domains};
use storaged::meta::{AuditEntry, FileId};
use tests::daemon::{Backend, Storaged, TestUser};
use tests::mount::{ClientFiles, Mount, sealed_key_dir};

/// The audit chain as stored, in order.
async fn audit_entries(daemon: &Storaged) -> Vec<AuditEntry> {
    let Some(url) = daemon.meta_url() else {
        let db = rusqlite::Connection::open(daemon.data_dir().join("meta.db")).expect("db");
        let mut statement = db
            .prepare("SELECT seq, time, uid, event, ino, detail, prev_hash, hash FROM audit ORDER BY seq")
            .expect("prepare");
        let rows = statement
            .query_map([], |r| {
                Ok(AuditEntry {
                    seq: r.get::<_, i64>(0)? as u64,
                    time: r.get(1)?,
                    uid: r.get(2)?,
                    event: r.get(3)?,
                    ino: FileId(r.get::<_, i64>(4)? as u64),
                    detail: r.get(5)?,
                    prev_hash: r.get::<_, Vec<u8>>(6)?.try_into().expect("32 bytes"),
                    hash: r.get::<_, Vec<u8>>(7)?.try_into().expect("32 bytes"),
                })
            })
            .expect("query");
        return rows.map(|r| r.expect("row")).collect();
    };
    let audit = collection(url, "audit").await;
    let mut cursor = audit
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .expect("find");
    let mut entries = Vec::new();
    while cursor.advance().await.expect("next") {
        let d = cursor.deserialize_current().expect("document");
        let bytes = |field: &str| -> [u8; 32] {
            d.get_binary_generic(field)
                .expect(field)
                .clone()
                .try_into()
                .expect("32 bytes")
        };
        entries.push(AuditEntry {
            seq: d.get_i64("_id").expect("_id") as u64,
            time: d.get_i64("time").expect("time"),
            uid: d.get_i64("uid").expect("uid") as u32,
            event: d.get_str("event").expect("event").into(),
            ino: FileId(d.get_i64("ino").expect("ino") as u64),
            detail: d.get_str("detail").expect("detail").into(),
            prev_hash: bytes("prev_hash"),
            hash: bytes("hash"),
        });
    }
    entries
}

/// Writes back `entry`'s detail and hashes, as an administrator editing the database would.
async fn rewrite_entry(daemon: &Storaged, entry: &AuditEntry) {
    let Some(url) = daemon.meta_url() else {
        let db = rusqlite::Connection::open(daemon.data_dir().join("meta.db")).expect("db");
        db.execute(
            "UPDATE audit SET detail = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
            rusqlite::params![
                entry.detail,
                entry.prev_hash.to_vec(),
                entry.hash.to_vec(),
                entry.seq as i64
            ],
        )
        .expect("update");
        return;
    };
    let binary = |b: &[u8; 32]| Binary {
        subtype: BinarySubtype::Generic,
        bytes: b.to_vec(),
    };
    collection(url, "audit")
        .await
        .update_one(
            doc! { "_id": entry.seq as i64 },
            doc! { "$set": {
                "detail": &entry.detail,
                "prev_hash": binary(&entry.prev_hash),
                "hash": binary(&entry.hash),
            } },
        )
        .await
        .expect("update");
}

async fn collection(url: &str, name: &str) -> mongodb::Collection<mongodb::bson::Document> {
    let client = mongodb::Client::with_uri_str(url).await.expect("client");
    client
        .default_database()
        .expect("the URL names the database")
        .collection(name)
}

fn kind<T>(result: Result<T, impl Into<client::ClientError>>) -> ErrorKind {
    match result {
        Ok(_) => panic!("the call was expected to fail"),
        Err(error) => error.into().kind(),
    }
}

/// Runs `storaged audit verify` on the daemon's (stopped) store: exit code and output.
fn audit_verify(daemon: &Storaged, admin_fingerprint: &str) -> (i32, String) {
    let output = Command::new(tests::binary("storaged"))
        .args(["audit", "verify", "--data-dir"])
        .arg(daemon.data_dir())
        .args(daemon.meta_args())
        .args(["--admin-fingerprint", admin_fingerprint])
        .output()
        .expect("storaged audit verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

/// Failed logins cost the daemon a bounded number of audit entries however many there are,
/// each failure written once (not twice, and not in a commit of its own).
async fn a_flood_of_failed_logins_writes_a_bounded_audit(backend: Backend) {
    let mut daemon = Storaged::start_on(&backend, &[]);
    let alice = daemon.user("alice").await;
    let mallory = Identity::generate();
    let started = Instant::now();
    const WRONG_KEY: usize = 40;
    const NO_SUCH_USER: usize = 600;
    let connection = Connection::new(&daemon.target()).expect("connection");
    for _ in 0..WRONG_KEY {
        assert!(connection.login(&alice.name, &mallory).await.is_err());
    }
    for i in 0..NO_SUCH_USER {
        assert!(
            connection
                .login(&format!("nobody{i}"), &mallory)
                .await
                .is_err()
        );
    }
    // A minute's window allows 3 entries per name and 256 names, plus one count of the rest.
    let windows = started.elapsed().as_secs() as usize / 60 + 2;
    daemon.stop(); // Writes out what the audit queue holds.
    let failed: Vec<AuditEntry> = audit_entries(&daemon)
        .await
        .into_iter()
        .filter(|e| e.event == "login-failed")
        .collect();
    let of_alice = failed
        .iter()
        .filter(|e| e.detail.starts_with("alice:"))
        .count();
    assert!(
        (1..=3 * windows).contains(&of_alice),
        "{of_alice} entries for alice's {WRONG_KEY} failures"
    );
    assert!(
        failed.len() <= 260 * windows,
        "{} entries for {} failures",
        failed.len(),
        WRONG_KEY + NO_SUCH_USER
    );
}

/// A name far longer than any user's is refused before the daemon does any work for it.
async fn a_login_with_a_huge_name_is_refused_at_once(backend: Backend) {
    let daemon = Storaged::start_on(&backend, &[]);
    let api = Connection::new(&daemon.target()).expect("connection").api();
    let name = "x".repeat(4096);
    let refused = api.clone().challenge(ChallengeRequest { name }).await;
    assert_eq!(kind(refused), ErrorKind::Invalid);
}

/// Registering needs no account: the registrations waiting for approval are bounded.
async fn unauthenticated_registrations_are_bounded(backend: Backend) {
    let daemon = Storaged::start_on(&backend, &[]);
    let connection = Connection::new(&daemon.target()).expect("connection");
    let vault = connection.hello().await.expect("hello").vault_id;
    let identity = Identity::generate();
    let public = identity.public();
    let register = |i: usize| {
        let name = format!("flood{i}");
        let proof = identity.sign(
            domains::REGISTER,
            &proto::register_message(&vault, &name, &public.signing, &public.wrapping),
        );
        RegisterRequest {
            name,
            signing_key: public.signing.to_vec(),
            wrapping_key: public.wrapping.to_vec(),
            proof: proof.to_vec(),
        }
    };
    let limit = storaged::ops::users::PENDING_MAX;
    for i in 0..limit {
        connection
            .api()
            .register(register(i))
            .await
            .unwrap_or_else(|e| panic!("registration {i}: {e}"));
    }
    let refused = connection.api().register(register(limit)).await;
    assert_eq!(kind(refused), ErrorKind::TooLarge);
}

/// Whoever holds the database rewrites the audit chain whole, every hash recomputed: the
/// chain checks out by itself, but not against the administrator's signed anchor.
async fn a_rewritten_audit_chain_is_caught_by_the_anchor(backend: Backend) {
    let mut daemon = Storaged::start_on(&backend, &[]);
    daemon.user("alice").await;
    let admin = daemon.admin_connection().await;
    let vault = admin.hello().await.expect("hello").vault_id;
    let head = admin
        .api()
        .get_audit_head(GetAuditHeadRequest {})
        .await
        .expect("head")
        .into_inner();
    assert!(head.seq > 1, "registering and approving alice is audited");
    let message = proto::audit_anchor_message(&vault, head.seq, &head.hash);
    let signature = daemon.admin.sign(domains::AUDIT_ANCHOR, &message);
    let anchor = |signature: Vec<u8>| AnchorAuditRequest {
        seq: head.seq,
        hash: head.hash.clone(),
        signature,
    };
    let forged = Identity::generate().sign(domains::AUDIT_ANCHOR, &message);
    let refused = admin.api().anchor_audit(anchor(forged.to_vec())).await;
    assert_eq!(
        kind(refused),
        ErrorKind::Invalid,
        "only the admin's signature"
    );
    admin
        .api()
        .anchor_audit(anchor(signature.to_vec()))
        .await
        .expect("anchor");
    daemon.stop();
    let fingerprint = daemon.admin.public().fingerprint().to_string();
    let (code, text) = audit_verify(&daemon, &fingerprint);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("head: entry {}", head.seq + 1)) && text.contains("anchor: entry"),
        "{text}"
    );

    // Rewrite the second entry and every hash after it: a consistent chain.
    let mut entries = audit_entries(&daemon).await;
    entries[1]
        .detail
        .push_str(", or so the administrator says now");
    for i in 1..entries.len() {
        entries[i].prev_hash = entries[i - 1].hash;
        entries[i].hash = entries[i].compute_hash();
        rewrite_entry(&daemon, &entries[i]).await;
    }
    let (code, text) = audit_verify(&daemon, &fingerprint);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("audit log intact") && text.contains("anchor BROKEN"),
        "{text}"
    );
    // Nor does an administrator key other than the expected one vouch for the anchor.
    let other = Identity::generate().public().fingerprint().to_string();
    let (code, text) = audit_verify(&daemon, &other);
    assert_eq!(code, 2, "{text}");
}

/// Other local users of the storage host read neither the metadata nor the chunk files, even
/// where an older daemon or a careless restore left them readable.
async fn the_storage_host_keeps_its_files_private_from_local_users(backend: Backend) {
    let embedded = matches!(backend, Backend::Sqlite);
    let mut daemon = Storaged::start_on(&backend, &[]);
    daemon.stop();
    let mode = |path: std::path::PathBuf| {
        std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .mode()
            & 0o777
    };
    let chunks = daemon.data_dir().join("chunks");
    std::fs::set_permissions(&chunks, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    if embedded {
        let db = daemon.data_dir().join("meta.db");
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    daemon.spawn();
    assert_eq!(mode(daemon.data_dir().to_path_buf()), 0o711);
    assert_eq!(mode(chunks), 0o700);
    if embedded {
        assert_eq!(mode(daemon.data_dir().join("meta.db")), 0o600);
    }
}

/// Another local user made the client's runtime directory first (in `/tmp`, to read the
/// mount's log or plant links in it): the client refuses it rather than write there.
async fn a_runtime_dir_planted_by_another_user_is_refused(backend: Backend) {
    let daemon = Storaged::start_on(&backend, &[]);
    let user = daemon.user("alice").await;
    let client = ClientFiles::for_user(&user);
    let base = tempfile::tempdir().expect("runtime base");
    let planted = base.path().join("vault");
    std::fs::create_dir(&planted).expect("plant");
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    rustix::fs::chown(
        &planted,
        Some(rustix::fs::Uid::from_raw(65534)),
        Some(rustix::fs::Gid::from_raw(65534)),
    )
    .expect("chown to nobody");
    let mountpoint = tempfile::tempdir().expect("mount point");
    let output = Command::new(tests::binary("vaultfs"))
        .arg("mount")
        .args(client.args(&daemon))
        .arg(mountpoint.path())
        .env("XDG_RUNTIME_DIR", base.path())
        .output()
        .expect("vaultfs mount");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "mounted over a planted runtime dir"
    );
    assert!(
        stderr.contains("refusing the runtime directory") && stderr.contains("65534"),
        "{stderr}"
    );
    assert!(
        std::fs::read_dir(&planted).expect("list").next().is_none(),
        "nothing written into the planted directory"
    );
}

/// A server (or someone in the middle) presents an administrator key other than the one the
/// user was told: the first login refuses it and pins nothing.
async fn a_first_login_refuses_an_administrator_key_other_than_the_expected(backend: Backend) {
    let daemon = Storaged::start_on(&backend, &[]);
    let user = daemon.user("alice").await;
    let client = ClientFiles::for_user(&user);
    let wrong = Identity::generate().public().fingerprint().to_string();
    let mut args = client.args(&daemon);
    let at = args
        .iter()
        .position(|a| a == "--admin-fingerprint")
        .expect("the test mounts pass the expected fingerprint");
    args[at + 1] = wrong;
    let output = Command::new(tests::binary("vaultfs"))
        .arg("login")
        .args(&args)
        .output()
        .expect("vaultfs login");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "logged in to the wrong admin key");
    assert!(stderr.contains("refusing"), "{stderr}");
    let config = std::fs::read_to_string(client.dir.path().join("client.toml")).unwrap_or_default();
    assert!(!config.contains("admin"), "nothing pinned: {config}");
}

/// A login as an eavesdropper captures it: a challenge for `user` and its signature.
async fn captured_login(daemon: &Storaged, user: &TestUser) -> LoginRequest {
    let connection = Connection::new(&daemon.target()).expect("connection");
    let vault = connection.hello().await.expect("hello").vault_id;
    let name = user.name.clone();
    let challenge = connection
        .api()
        .challenge(ChallengeRequest { name: name.clone() })
        .await
        .expect("challenge")
        .into_inner()
        .challenge;
    let message = proto::login_message(&vault, &challenge);
    let signature = user.identity.sign(domains::LOGIN, &message).to_vec();
    LoginRequest {
        name,
        challenge,
        signature,
    }
}

/// Sends `login` to `daemon`: whether it opened a session, or the server's refusal.
async fn send_login(daemon: &Storaged, login: &LoginRequest) -> Result<(), client::ClientError> {
    let api = Connection::new(&daemon.target()).expect("connection").api();
    api.clone().login(login.clone()).await.map(drop)?;
    Ok(())
}

fn assert_replay_refused(outcome: Result<(), client::ClientError>) {
    let error = outcome.expect_err("a replayed login opened a session");
    assert_eq!(error.kind(), ErrorKind::Unauthenticated, "{error}");
    assert!(error.to_string().contains("already used"), "{error}");
}

/// Someone who captured a login (challenge and signature) sends it again after storaged
/// restarted on the same store, within the challenge's lifetime: refused, since the store,
/// not the instance's memory, remembers the challenges answered.
async fn a_login_replayed_after_a_restart_is_refused(backend: Backend) {
    let mut daemon = Storaged::start_on(&backend, &[]);
    let alice = daemon.user("alice").await;
    let captured = captured_login(&daemon, &alice).await;
    send_login(&daemon, &captured)
        .await
        .expect("the first login");
    daemon.stop();
    daemon.spawn();
    assert_replay_refused(send_login(&daemon, &captured).await);
    // A fresh login still works: the refusal is the replay's alone.
    let fresh = captured_login(&daemon, &alice).await;
    send_login(&daemon, &fresh).await.expect("a fresh login");
}

/// Two storaged instances serve one vault (one MongoDB database): a login answered at one is
/// refused at the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_replayed_at_another_instance_is_refused() {
    let daemon = Storaged::start_on(&Backend::mongo(), &[]);
    let alice = daemon.user("alice").await;
    let other = daemon.another_instance(&[]);
    let captured = captured_login(&daemon, &alice).await;
    send_login(&daemon, &captured)
        .await
        .expect("the first login");
    assert_replay_refused(send_login(&other, &captured).await);
    let at_other = captured_login(&other, &alice).await;
    send_login(&other, &at_other)
        .await
        .expect("a fresh login at the other instance");
    assert_replay_refused(send_login(&daemon, &at_other).await);
}

/// Points of order 4 and 8 on Curve25519, as X25519 public keys: every Diffie-Hellman with
/// them gives all zeros (crypto's tests go through every small-order point).
const LOW_ORDER_KEYS: [&str; 2] = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
];

/// A registration of `name` with `identity`'s signing key, `wrapping` as its wrapping key and
/// a valid proof.
fn registration(
    vault: &[u8],
    name: &str,
    identity: &Identity,
    wrapping: [u8; 32],
) -> RegisterRequest {
    let signing = identity.public().signing;
    let message = proto::register_message(vault, name, &signing, &wrapping);
    RegisterRequest {
        name: name.into(),
        signing_key: signing.to_vec(),
        wrapping_key: wrapping.to_vec(),
        proof: identity.sign(domains::REGISTER, &message).to_vec(),
    }
}

/// Replaces the wrapping key of user `name` in the store, as the storage administrator would.
async fn set_wrapping_key(daemon: &Storaged, name: &str, key: [u8; 32]) {
    set_user_bytes(daemon, name, "wrapping_key", &key).await;
}

/// Replaces a byte field (`wrapping_key`, `certificate`) of user `name` in the store.
async fn set_user_bytes(daemon: &Storaged, name: &str, field: &str, bytes: &[u8]) {
    let Some(url) = daemon.meta_url() else {
        let db = rusqlite::Connection::open(daemon.data_dir().join("meta.db")).expect("db");
        let sql = format!("UPDATE users SET {field} = ?1 WHERE name = ?2");
        let changed = db
            .execute(&sql, rusqlite::params![bytes, name])
            .expect("update");
        assert_eq!(changed, 1, "user {name} is in the store");
        return;
    };
    let bytes = Binary {
        subtype: BinarySubtype::Generic,
        bytes: bytes.to_vec(),
    };
    let changed = collection(url, "users")
        .await
        .update_one(doc! { "name": name }, doc! { "$set": { field: bytes } })
        .await
        .expect("update");
    assert_eq!(changed.matched_count, 1, "user {name} is in the store");
}

/// The storage administrator serves a user whose wrapping key is a low-order point under a
/// valid certificate of the site administrator's key (one an older `vault-admin` made, kept
/// among the records): every key wrapped to it would be readable by anyone. The client
/// refuses the certificate when it verifies it, before it would wrap anything to it.
async fn a_certificate_of_a_low_order_key_is_refused_by_the_client(backend: Backend) {
    let daemon = Storaged::start_on(&backend, &[]);
    let alice = daemon.user("alice").await;
    let bob = daemon.user("bob").await;
    let vault = alice.connection.hello().await.expect("hello").vault_id;
    let weak: [u8; 32] = hex::decode(LOW_ORDER_KEYS[1])
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let signing = bob.identity.public().signing;
    let message = proto::certificate_message(&vault, bob.uid, "bob", &signing, &weak);
    let certificate = daemon.admin.sign(domains::USER_CERTIFICATE, &message);
    set_wrapping_key(&daemon, "bob", weak).await;
    set_user_bytes(&daemon, "bob", "certificate", &certificate).await;

    let connection = Connection::new(&daemon.target()).expect("connection");
    let wait = std::time::Duration::from_secs(5);
    let remote = vaultfs::remote::Remote::new(connection, "alice", alice.identity.clone(), wait);
    remote.login().await.expect("login");
    let vault = format::ids::VaultId(vault.as_slice().try_into().expect("16 bytes"));
    let trust = vaultfs::trust::Trust::new(remote, vault, daemon.admin.public());
    let error = trust
        .user(bob.uid)
        .await
        .expect_err("a low-order key trusted");
    assert_eq!(error.kind(), ErrorKind::AccessDenied, "{error}");
    assert!(error.to_string().contains("low-order"), "{error}");
    trust
        .user(alice.uid)
        .await
        .expect("an ordinary certificate still verifies");
}

/// `vault-admin approve NAME --yes` with the site administrator's key: its output.
fn vault_admin_approve(daemon: &Storaged, name: &str) -> std::process::Output {
    let dir = sealed_key_dir(&daemon.admin, KeyKind::SiteAdmin, "admin.vkey");
    Command::new(tests::binary("vault-admin"))
        .args(["approve", name, "--yes", "--admin-key"])
        .arg(dir.path().join("admin.vkey"))
        .arg("--passphrase-file")
        .arg(dir.path().join("passphrase"))
        .arg("--server")
        .arg(format!("unix:{}", daemon.socket().display()))
        .output()
        .expect("vault-admin approve")
}

/// A wrapping key of small order makes every key wrapped to its user readable by anyone:
/// storaged refuses such a registration, and the site administrator's `vault-admin approve`
/// refuses one the storage administrator slipped into a waiting registration.
async fn a_registration_with_a_low_order_key_is_refused(backend: Backend) {
    let daemon = Storaged::start_on(&backend, &[]);
    let connection = Connection::new(&daemon.target()).expect("connection");
    let vault = connection.hello().await.expect("hello").vault_id;
    let mallory = Identity::generate();
    let low_order: Vec<[u8; 32]> = LOW_ORDER_KEYS
        .iter()
        .map(|h| hex::decode(h).expect("hex").try_into().expect("32 bytes"))
        .collect();
    for (i, &key) in low_order.iter().enumerate() {
        let request = registration(&vault, &format!("weak{i}"), &mallory, key);
        let error = client::ClientError::from(
            connection
                .api()
                .register(request)
                .await
                .expect_err("a low-order key registered"),
        );
        assert_eq!(error.kind(), ErrorKind::Invalid, "{error}");
        assert!(error.to_string().contains("low-order"), "{error}");
    }
    let request = registration(&vault, "mallory", &mallory, mallory.public().wrapping);
    connection.api().register(request).await.expect("register");
    set_wrapping_key(&daemon, "mallory", low_order[1]).await;
    let output = vault_admin_approve(&daemon, "mallory");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "approved a low-order key");
    assert!(
        stderr.contains("low-order") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );
}

/// The mappings of process `pid` (`/proc/PID/smaps`): each one's size in KiB and flags.
fn mappings(pid: u32) -> Vec<(u64, Vec<String>)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .expect("/proc/PID/smaps of a non-dumpable process (needs CAP_SYS_PTRACE)");
    let mut found: Vec<(u64, Vec<String>)> = Vec::new();
    for line in smaps.lines() {
        if let Some(size) = line.strip_prefix("Size:") {
            let kib = size
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .expect("size");
            found.push((kib, Vec::new()));
        } else if let Some(flags) = line.strip_prefix("VmFlags:")
            && let Some(last) = found.last_mut()
        {
            last.1 = flags.split_whitespace().map(String::from).collect();
        }
    }
    found
}

/// Raises the core size limit of process `pid` (`prlimit`, util-linux), sends it SIGABRT and
/// waits for it: whether the kernel wrote a core dump (the wait status says).
fn abort_for_a_core_dump(pid: u32, end: impl FnOnce() -> Option<ExitStatus>) -> bool {
    let raised = Command::new("prlimit")
        .args(["--core=unlimited", "--pid"])
        .arg(pid.to_string())
        .output()
        .expect("prlimit (util-linux)");
    assert!(raised.status.success(), "prlimit: {raised:?}");
    let status = end().expect("the process ended on SIGABRT within 30 s");
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    status.core_dumped()
}

/// Someone makes vaultfs dump core (to read the keys and plaintext in the dump): the kernel
/// refuses, since vaultfs is non-dumpable; a dump let through anyway would hold none of its
/// memory (`coredump_filter` 0), and its plaintext cache and private key's pages are marked to
/// stay out of one (the key's pages locked in RAM too). A real mount, a real SIGABRT.
#[test]
fn a_core_dump_of_vaultfs_is_refused() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let daemon = Storaged::start(&[]);
    let user = runtime.block_on(daemon.user("alice"));
    let client = ClientFiles::for_user(&user);
    let mut mount = Mount::start(&daemon, &client, &[]);
    let data: Vec<u8> = (0..9usize << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(mount.join("big"), &data).expect("write");
    mount.remount();
    assert!(
        std::fs::read(mount.join("big")).expect("read") == data,
        "read back"
    );
    let pid = mount.pid();

    let filter =
        std::fs::read_to_string(format!("/proc/{pid}/coredump_filter")).expect("coredump_filter");
    assert_eq!(
        u32::from_str_radix(filter.trim(), 16),
        Ok(0),
        "a dump let through would hold memory: coredump_filter {filter}"
    );
    let mappings = mappings(pid);
    let flagged = |kib: u64, flags: &[&str]| {
        mappings.iter().any(|(size, has)| {
            *size >= kib && flags.iter().all(|f| has.iter().any(|h| h.as_str() == *f))
        })
    };
    assert!(
        flagged(8 << 10, &["dd"]),
        "no mapping of a cached 8 MiB chunk is marked dontdump: {mappings:?}"
    );
    assert!(
        flagged(4, &["dd", "lo"]),
        "the private key's pages are not locked and marked dontdump: {mappings:?}"
    );

    // The control: a dumpable process, ended the same way, dumps core (into a directory of
    // its own), so that the refusal below is vaultfs's.
    let cwd = tempfile::tempdir().expect("control dir");
    let mut control = Command::new("sleep")
        .arg("60")
        .current_dir(cwd.path())
        .spawn()
        .expect("sleep");
    let dumped = abort_for_a_core_dump(control.id(), || {
        tests::mount::signal(&control, rustix::process::Signal::ABORT);
        control.wait().ok()
    });
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    assert!(
        dumped,
        "this machine writes no core dumps (kernel.core_pattern {pattern:?}), so the check \
         cannot run: set it to write them (e.g. `core`)"
    );
    let dumped = abort_for_a_core_dump(pid, || mount.end_with(rustix::process::Signal::ABORT));
    assert!(!dumped, "vaultfs dumped core");
}

tests::on_every_backend!(
    async: a_flood_of_failed_logins_writes_a_bounded_audit,
    a_login_with_a_huge_name_is_refused_at_once,
    unauthenticated_registrations_are_bounded,
    a_rewritten_audit_chain_is_caught_by_the_anchor,
    the_storage_host_keeps_its_files_private_from_local_users,
    a_runtime_dir_planted_by_another_user_is_refused,
    a_first_login_refuses_an_administrator_key_other_than_the_expected,
    a_login_replayed_after_a_restart_is_refused,
    a_registration_with_a_low_order_key_is_refused,
    a_certificate_of_a_low_order_key_is_refused_by_the_client,
);
