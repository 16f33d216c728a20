//! Every binary answers `--help` with its subcommands, and CLI errors are one line with a
//! non-zero exit.

use std::process::Command;

fn run(binary: &str, args: &[&str]) -> std::process::Output {
    Command::new(tests::binary(binary))
        .args(args)
        .env_remove("VAULT_PASSPHRASE")
        .output()
        .unwrap_or_else(|e| panic!("running {binary}: {e}"))
}

#[test]
fn every_binary_answers_help() {
    for (binary, expected) in [
        ("vaultfs", "key"),
        ("storaged", "serve"),
        ("vault-admin", "approve"),
        ("netctl", "Open vSwitch"),
        ("vmctl", "libvirt"),
    ] {
        let output = run(binary, &["--help"]);
        assert!(output.status.success(), "{binary} --help failed");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            text.contains("Usage:") && text.contains(expected),
            "{binary} --help: {text}"
        );
    }
}

#[test]
fn key_init_then_show_and_no_overwrite() {
    let dir = std::env::temp_dir().join(format!("vault-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = dir.join("user.vkey");
    let pass = dir.join("pass");
    std::fs::write(&pass, "a passphrase\n").expect("write passphrase");
    let key_arg = key.to_str().expect("utf-8 path");
    let pass_arg = pass.to_str().expect("utf-8 path");

    let created = run(
        "vaultfs",
        &[
            "key",
            "init",
            "--key-file",
            key_arg,
            "--passphrase-file",
            pass_arg,
        ],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let fingerprint = String::from_utf8_lossy(&created.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint ").map(str::to_string))
        .expect("init prints the fingerprint");
    let shown = run("vaultfs", &["key", "show", "--key-file", key_arg]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains(&fingerprint));

    let again = run(
        "vaultfs",
        &[
            "key",
            "init",
            "--key-file",
            key_arg,
            "--passphrase-file",
            pass_arg,
        ],
    );
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");

    let missing = run(
        "vaultfs",
        &["key", "show", "--key-file", "/nonexistent/user.vkey"],
    );
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no key file"));
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// `vaultfs key passwd`: the key file opens under the new passphrase only, with the same keys;
/// a wrong current passphrase fails with one line and leaves the file as it was.
#[test]
fn key_passwd_changes_the_passphrase_and_keeps_the_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = |name: &str| dir.path().join(name).display().to_string();
    let (key, old, new) = (path("user.vkey"), path("old"), path("new"));
    std::fs::write(&old, "the old passphrase\n").expect("write passphrase");
    std::fs::write(&new, "the new passphrase\n").expect("write passphrase");
    let init = ["key", "init", "--key-file", &key, "--passphrase-file", &old];
    assert!(run("vaultfs", &init).status.success());
    let before = std::fs::read(&key).expect("key file");
    let passwd = |current: &str| {
        let args = [
            "key",
            "passwd",
            "--key-file",
            &key,
            "--passphrase-file",
            current,
        ];
        run(
            "vaultfs",
            &[&args[..], &["--new-passphrase-file", &new]].concat(),
        )
    };
    let wrong = passwd(&new);
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert_eq!(std::fs::read(&key).expect("key file"), before, "unchanged");

    let changed = passwd(&old);
    let stdout = String::from_utf8_lossy(&changed.stdout);
    assert!(
        changed.status.success(),
        "{}",
        String::from_utf8_lossy(&changed.stderr)
    );
    let shown = run("vaultfs", &["key", "show", "--key-file", &key]);
    let fingerprint = String::from_utf8_lossy(&shown.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint").map(|f| f.trim().to_string()))
        .expect("key show prints the fingerprint");
    assert!(stdout.contains(&fingerprint), "{stdout} vs {fingerprint}");
    let keys = |file: &str| {
        let sealed = identity::KeyFile::parse(&std::fs::read(&key).expect("read")).expect("parse");
        let passphrase = std::fs::read_to_string(file).expect("passphrase");
        sealed
            .open(passphrase.trim_end().as_bytes(), identity::KeyKind::User)
            .map(|identity| identity.public().fingerprint())
    };
    assert!(keys(&old).is_err(), "the old passphrase no longer opens it");
    assert_eq!(
        keys(&new).expect("the new one does").to_string(),
        fingerprint
    );
    assert!(!dir.path().join("user.vkey.new").exists());
}

/// `storaged audit verify` of a data directory that holds no vault (mistyped, or empty) says
/// so in one line and makes nothing there: no meta.db, no directory.
#[test]
fn audit_verify_of_a_directory_without_a_vault_refuses_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-vault");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    for data_dir in [&missing, &empty] {
        let path = data_dir.to_str().expect("utf-8 path");
        let output = run("storaged", &["audit", "verify", "--data-dir", path]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{path}: verified nothing");
        assert!(
            stderr.contains("no metadata database") && stderr.trim().lines().count() == 1,
            "{path}: {stderr}"
        );
    }
    assert!(!missing.exists(), "the mistyped directory was made");
    let left: Vec<_> = std::fs::read_dir(&empty).expect("list").collect();
    assert!(
        left.is_empty(),
        "files made in the empty directory: {left:?}"
    );
}
