//! `vaultfs` as a mount helper, for real: `mount -t fuse.vaultfs SOURCE DIR -o OPTIONS` and
//! an fstab line (`mount --fstab FILE DIR`, so the machine's /etc/fstab stays untouched) go
//! through util-linux's mount and fuse3's mount.fuse3 to a background `vaultfs mount`.
//!
//! mount(8) clears PATH, so mount.fuse3's shell finds `vaultfs` only in the standard
//! directories: the mounts run in a private mount namespace (`unshare --mount`) where the
//! built binary is bind-mounted into /usr/local/sbin, which nothing outside it sees.

use std::process::Command;

use tests::daemon::{Backend, Storaged};
use tests::mount::{ClientFiles, Mount, require_fuse};

/// Run by bash in the namespace: `DIR BIN SOURCE OPTIONS FSTAB PLAIN`. Mounts with
/// `mount -t`, copies PLAIN in and fsyncs it, unmounts, mounts from the fstab, compares,
/// unmounts; after each umount the vaultfs that served the mount must exit (bounded); any
/// mount left is unmounted on the way out, which ends its vaultfs.
const SCRIPT: &str = r#"
set -euo pipefail
dir=$1 bin=$2 source=$3 options=$4 fstab=$5 plain=$6
trap 'umount -l "$dir" 2>/dev/null || true' EXIT
trap 'exit 143' TERM
mount --bind "$bin" /usr/local/sbin
mounted() { grep -q " $dir fuse.vaultfs " /proc/self/mounts; }
# The vaultfs serving $dir: its command line names it.
server_of() {
    local p
    for p in /proc/[0-9]*; do
        [ "$(cat "$p/comm" 2>/dev/null)" = vaultfs ] || continue
        grep -qzx -- "$dir" "$p/cmdline" 2>/dev/null && { echo "${p#/proc/}"; return; }
    done
}
# umount, then wait (bounded) for the vaultfs that served it to exit.
unmount() {
    local pid; pid=$(server_of)
    [ -n "$pid" ] || { echo "no vaultfs serves $dir"; exit 1; }
    umount "$dir"
    ! mounted || { echo "still mounted after umount"; exit 1; }
    for _ in $(seq 600); do [ -d "/proc/$pid" ] || return 0; sleep 0.1; done
    echo "vaultfs $pid still running 60 s after umount"; exit 1
}
mount -t fuse.vaultfs "$source" "$dir" -o "$options"
mounted || { echo "mount -t fuse.vaultfs: not mounted"; exit 1; }
cp "$plain" "$dir/through-mount-t"
sync "$dir/through-mount-t"
unmount
mount --fstab "$fstab" "$dir"
mounted || { echo "mount --fstab: not mounted"; exit 1; }
cmp "$plain" "$dir/through-mount-t"
unmount
echo "helper mounts ok"
"#;

/// The `-o` options naming the user's files, and the administrator key's fingerprint the
/// first contact checks.
fn options(client: &ClientFiles, daemon: &Storaged) -> String {
    let file = |name: &str| client.dir.path().join(name).display().to_string();
    format!(
        "rw,nosuid,nodev,name={},key_file={},passphrase_file={},config={},admin_fingerprint={}",
        client.name,
        file("user.vkey"),
        file("passphrase"),
        file("client.toml"),
        daemon.admin.public().fingerprint().to_hex(),
    )
}

fn mount_t_fuse_vaultfs_and_an_fstab_line_mount_the_vault(backend: Backend) {
    require_fuse();
    let daemon = Storaged::start_on(&backend, &[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let user = runtime.block_on(daemon.user("alice"));
    let client = ClientFiles::for_user(&user);
    let work = tempfile::tempdir().expect("a work dir");
    let (dir, bin) = (work.path().join("vault"), work.path().join("bin"));
    std::fs::create_dir(&dir).expect("the mount point");
    std::fs::create_dir(&bin).expect("a bin dir");
    std::os::unix::fs::symlink(tests::binary("vaultfs"), bin.join("vaultfs")).expect("link");
    let plain = work.path().join("plain");
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&plain, &bytes).expect("the plaintext");
    let socket = format!("unix:{}", daemon.socket().display());
    let options = options(&client, &daemon);
    // A label for a source, the server in the options.
    let fstab = work.path().join("fstab");
    let line = format!(
        "vault {} fuse.vaultfs {options},server={socket},noauto 0 0\n",
        dir.display()
    );
    std::fs::write(&fstab, line).expect("an fstab");
    let output = Command::new("timeout")
        .args(["120", "unshare", "--mount", "--propagation", "private"])
        .args(["bash", "-c", SCRIPT, "helper-test"])
        .args([&dir, &bin])
        .arg(&socket)
        .arg(&options)
        .args([&fstab, &plain])
        .output()
        .expect("unshare(1)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("helper mounts ok"),
        "the mounts through mount(8): {}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // Outside the namespace, an ordinary mount reads what the helper's mount wrote.
    let mut mount = Mount::start(&daemon, &client, &[]);
    let read = std::fs::read(mount.join("through-mount-t")).expect("read back");
    assert!(read == bytes, "what mount -t fuse.vaultfs wrote reads back");
    mount.stop();
}

tests::on_every_backend!(
    sync: mount_t_fuse_vaultfs_and_an_fstab_line_mount_the_vault,
);

/// The units in contrib/systemd pass `systemd-analyze verify` (with the built binaries in
/// place of the installed ones it names).
#[test]
fn shipped_systemd_units_verify() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        analyze.is_ok_and(|o| o.status.success()),
        "this test needs systemd-analyze: install systemd (scripts/setup.sh does)"
    );
    let units = tests::workspace_root().join("contrib/systemd");
    let work = tempfile::tempdir().expect("a work dir");
    let mut checked = Vec::new();
    for (unit, instance, binary) in [
        ("storaged.service", "storaged.service", "storaged"),
        ("vaultfs@.service", "vaultfs@vault.service", "vaultfs"),
    ] {
        let text = std::fs::read_to_string(units.join(unit)).expect("a shipped unit");
        let installed = format!("/usr/local/bin/{binary}");
        assert!(text.contains(&installed), "{unit} runs {installed}");
        let built = tests::binary(binary).display().to_string();
        std::fs::write(work.path().join(instance), text.replace(&installed, &built))
            .expect("a unit copy");
        checked.push(work.path().join(instance));
    }
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .args(&checked)
        .output()
        .expect("systemd-analyze");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        output.status
    );
}
