//! Integration (root): a VM mounts the vault inside its guest. vmctl's two-host lab, storaged
//! as the VM network's service on h2 (TLS, pinned certificate), the vault guest on h1 (one TCG
//! boot), a host mount of the same vault over storaged's socket. See vault_site/mod.rs.

mod support;
mod vault_site;

use std::net::Ipv4Addr;
use std::process::Output;
use std::time::Duration;

use identity::{Handoff, KeyKind};
use support::lab::{eventually, ping};
use support::{file_contains, files_under, guest_shell, key_args, owner_key, stdout};
use tests::mount::{Mount, bounded};
use vault_site::{VaultSite, reaches_storaged};

const FROM_GUEST: &str = "written in the guest, over TLS";
const FROM_HOST: &str = "written on the host, through storaged's socket";
/// A chunk and a bit: the guest's file crosses a chunk boundary.
const TWO_CHUNKS_BYTES: usize = (8 << 20) + (64 << 10);

#[test]
fn a_vm_mounts_the_vault_over_tls_and_shares_files_with_a_host_mount() {
    let vault = VaultSite::new("vv");
    let created = vault.create_vm("g1");
    assert!(created.contains("created g1 on h1"), "{created}");
    a_start_without_the_users_key_starts_nothing(&vault);
    // b1: the same image, settings and key on the same host, in project beta. It boots
    // alongside g1 and must fail to reach storaged from inside.
    let created = vault.create_vm_in("b1", "beta");
    assert!(created.contains("created b1 on h1"), "{created}");
    let stranger = Running::spawn(vault.site.command(&refs(&start_args(&vault, "b1"))));

    let started = stdout(&vault.site.cli(&refs(&start_args(&vault, "g1"))));
    assert!(started.contains("started g1 on h1 in"), "{started}");
    assert!(started.contains("vault mounted"), "{started}");
    let guest = vault.site.vmctl.network().port("g1").expect("port").ip;
    eventually("g1 answers its project", || ping(&vault.friend, guest));

    files_go_both_ways(&vault, guest);
    the_key_is_in_no_file_and_no_command_line(&vault);
    only_its_project_reaches_storaged(&vault);
    a_guest_of_another_project_cannot_reach_storaged(&vault, stranger);
    let status = stdout(&vault.site.cli(&["status", "g1"]));
    assert!(
        status.contains("alice at https://10.10.0.2:7000"),
        "{status}"
    );
    assert!(status.contains("; mounted at the start"), "{status}");
    moved_to_h2_it_mounts_again(&vault, guest);
    stdout(&vault.site.cli(&["destroy", "g1"]));
    stdout(&vault.site.cli(&["destroy", "b1"]));
}

/// `vmctl start NAME` with alice's key, waiting generously: a TCG boot on a loaded 2-core
/// machine took up to a minute.
fn start_args(vault: &VaultSite, name: &str) -> Vec<String> {
    let start = ["start", name, "--timeout", "300"].map(String::from);
    [start.to_vec(), key_args(&vault.owner_key())].concat()
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A `vmctl` command running alongside the test; killed (by its PID) if the test ends first.
struct Running(Option<std::process::Child>);

impl Running {
    fn spawn(mut command: std::process::Command) -> Running {
        Running(Some(command.spawn().expect("run vmctl")))
    }

    fn finish(mut self) -> std::process::Output {
        let child = self.0.take().expect("running");
        child.wait_with_output().expect("vmctl's output")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// b1, of project beta, booted beside g1 with the same settings and key: its own vaultfs
/// cannot reach storaged (the line it printed on its console, which `vmctl start` reports),
/// so the start fails in bounded time, forces it off, and `status` says why.
fn a_guest_of_another_project_cannot_reach_storaged(vault: &VaultSite, stranger: Running) {
    let unreachable = "vault failed: reaching storaged at https://10.10.0.2:7000";
    let output = stranger.finish();
    failed_leaving_it_off(
        vault,
        &output,
        &[unreachable, "so it was forced off again"],
        "b1",
    );
    // What the guest's own connection got: the network refused it (netctl's flows), nothing
    // else (a certificate or a login) was in the way.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let refusals = [
        "No route to host",
        "timed out",
        "deadline has elapsed",
        "refused",
    ];
    assert!(refusals.iter().any(|r| stderr.contains(r)), "{stderr}");
    let status = stdout(&vault.site.cli(&["status", "b1"]));
    let reported = format!("not mounted: the guest reported `vault-guest: {unreachable}");
    assert!(status.contains(&reported), "{status}");
}

/// `output` is of a command that failed with one line holding each of `expected`, and VM
/// `vm` on h1 is off.
fn failed_leaving_it_off(vault: &VaultSite, output: &Output, expected: &[&str], vm: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it succeeded: {stderr}");
    for text in expected {
        assert!(stderr.contains(text), "no `{text}` in: {stderr}");
    }
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let host = vault.site.vmctl.connect("h1").expect("h1");
    let domain = host.domain(vm).expect("domain");
    let off = !host.state(&domain).expect("state").is_active();
    assert!(off, "{vm} is not off");
}

/// Moved to h2, g1 shuts down on h1 (the power button unmounts its vault) and gets its key
/// again on h2, where it mounts again and reads what it and the host wrote.
fn moved_to_h2_it_mounts_again(vault: &VaultSite, guest: Ipv4Addr) {
    let args = [
        [
            "move",
            "g1",
            "--to",
            "h2",
            "--stop-timeout",
            "120",
            "--timeout",
            "300",
        ]
        .map(String::from)
        .to_vec(),
        key_args(&vault.owner_key()),
    ]
    .concat();
    let moved = stdout(&vault.site.cli(&refs(&args)));
    assert!(moved.contains("g1 on h1: shut down"), "{moved}");
    assert!(moved.contains("started g1 on h2 in"), "{moved}");
    assert!(moved.contains("vault mounted"), "{moved}");
    assert_eq!(
        vault.site.vmctl.network().port("g1").expect("port").ip,
        guest
    );
    let read = guest_shell(
        &vault.friend,
        guest,
        "echo guest=$(cat /vault/from-guest.txt) host=$(cat /vault/from-host.txt)",
    );
    let expected = format!("guest={FROM_GUEST} host={FROM_HOST}");
    assert!(read.contains(&expected), "{read}");
    the_key_is_in_no_file_and_no_command_line(vault);
}

/// Without a key, or with another user's, `start` refuses before the VM runs.
fn a_start_without_the_users_key_starts_nothing(vault: &VaultSite) {
    let output = vault.site.cli(&["start", "g1"]);
    let expected = ["the vault mounted as `alice`", "pass its owner's key file"];
    failed_leaving_it_off(vault, &output, &expected, "g1");
    let stranger_dir = tempfile::tempdir().expect("dir");
    let (_, stranger) = owner_key(stranger_dir.path());
    let args = [vec!["start".to_string(), "g1".into()], key_args(&stranger)].concat();
    let output = vault.site.cli(&refs(&args));
    failed_leaving_it_off(vault, &output, &["whose key file this is not"], "g1");
}

/// A small file and one of two chunks (8 MiB and 64 KiB) written in the guest read back on the
/// host mount, and a file written there reads in the guest.
fn files_go_both_ways(vault: &VaultSite, guest: Ipv4Addr) {
    let written = guest_shell(
        &vault.friend,
        guest,
        &format!(
            "echo '{FROM_GUEST}' > /vault/from-guest.txt && \
             head -c {TWO_CHUNKS_BYTES} /dev/urandom > /vault/two-chunks && \
             echo sum=$(md5sum < /vault/two-chunks) && echo written"
        ),
    );
    assert!(written.contains("written"), "the guest wrote: {written}");
    let guest_sum = written
        .lines()
        .find_map(|l| l.strip_prefix("sum="))
        .map(|s| s.split_whitespace().next().unwrap_or_default().to_string())
        .expect("the guest's checksum");
    let mount = Mount::start(&vault.storaged, &vault.client, &[]);
    let (small, big) = (mount.join("from-guest.txt"), mount.join("two-chunks"));
    let read = bounded(Duration::from_secs(60), "reading on the host", move || {
        (std::fs::read_to_string(small), std::fs::read(big))
    });
    assert_eq!(read.0.expect("from-guest.txt"), format!("{FROM_GUEST}\n"));
    let big = read.1.expect("two-chunks");
    assert_eq!(big.len(), TWO_CHUNKS_BYTES);
    let host_sum = md5sum(&big);
    assert_eq!(host_sum, guest_sum, "the two-chunk file differs");

    std::fs::write(mount.join("from-host.txt"), FROM_HOST).expect("write on the host");
    // Names another client made show in the guest within a second (README): wait for it.
    let seen = guest_shell(
        &vault.friend,
        guest,
        "i=0; while [ ! -e /vault/from-host.txt ] && [ $i -lt 100 ]; do sleep 0.1; \
         i=$((i+1)); done; echo read=$(cat /vault/from-host.txt)",
    );
    assert!(seen.contains(&format!("read={FROM_HOST}")), "{seen}");
}

/// The MD5 of `bytes` as busybox prints it, computed by the host's md5sum.
fn md5sum(bytes: &[u8]) -> String {
    let mut child = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("md5sum");
    let mut stdin = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut stdin, bytes).expect("md5sum input");
    drop(stdin);
    let output = child.wait_with_output().expect("md5sum");
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// alice's private keys (raw and as hex) are in no file of the store, the lab or any libvirtd,
/// and in no QEMU command line.
fn the_key_is_in_no_file_and_no_command_line(vault: &VaultSite) {
    let message = Handoff::encode(&vault.user.identity, KeyKind::User, "").expect("encode");
    let (seed, secret) = (&message[76..108], &message[108..140]);
    let needles = [
        seed.to_vec(),
        secret.to_vec(),
        hex::encode(seed).into_bytes(),
        hex::encode(secret).into_bytes(),
    ];
    // The lab's directory holds the store (consoles, images) and every libvirtd's directories.
    let mut files = files_under(vault.site.lab.dir.path());
    files.extend(files_under(vault.storaged.data_dir()));
    let mut command_lines = Vec::new();
    for daemon in &vault.site.daemons {
        for pid_file in daemon.files().iter().filter(|f| f.ends_with("g1.pid")) {
            let pid = std::fs::read_to_string(pid_file).expect("QEMU's pid");
            command_lines.push(format!("/proc/{}/cmdline", pid.trim()).into());
        }
    }
    assert_eq!(command_lines.len(), 1, "one QEMU for g1");
    for file in files.iter().chain(&command_lines) {
        for needle in &needles {
            let found = file_contains(file, needle);
            assert!(!found, "alice's private key is in {}", file.display());
        }
    }
}

/// A VM of project alpha reaches storaged; one of project beta does not.
fn only_its_project_reaches_storaged(vault: &VaultSite) {
    assert!(reaches_storaged(&vault.friend), "alpha reaches storaged");
    assert!(
        !reaches_storaged(&vault.stranger),
        "a VM of another project reached storaged"
    );
}
