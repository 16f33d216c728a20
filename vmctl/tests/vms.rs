//! Integration (root): real libvirtd per host (in netctl's lab of OVS hosts), the tiny TCG
//! guest, real encrypted drives. Three boots in all: a start, a restart on the same host and a
//! move.

mod support;

use std::net::Ipv4Addr;

use support::lab::{eventually, ping};
use support::{Site, file_contains, files_under, guest_shell, peer, stdout};

const PATTERN: &str = "VAULT-PLAINTEXT-PATTERN-7f3a9c";

fn key_args(site: &Site) -> Vec<String> {
    support::key_args(&site.key)
}

/// Finds the guest's disk whose serial number is `drive` (the guest names disks in the order
/// they appear, whatever libvirt's target says), waiting up to 30 s; sets `$dev`, or prints
/// what the guest's kernel said when there is none.
fn find_disk(drive: &str) -> String {
    format!(
        "dev=; i=0; while [ -z \"$dev\" ] && [ $i -lt 900 ]; do \
           for d in /sys/block/vd*; do \
             [ -e \"$d\" ] || continue; \
             [ \"$(cat \"$d/serial\" 2>/dev/null)\" = {drive} ] && dev=/dev/${{d##*/}}; \
           done; [ -z \"$dev\" ] && sleep 0.1; i=$((i+1)); \
         done; echo dev=$dev; [ -n \"$dev\" ] || dmesg | tail -n 20;"
    )
}

/// What the guest sees of drive `data`, after writing `PATTERN` over its first 64 KiB when
/// `write` is set: its device and the first bytes read back from the disk (caches dropped).
fn guest_drive(ns: &str, address: Ipv4Addr, write: bool) -> String {
    let writing = if write {
        format!(
            "i=0; while [ $i -lt 2048 ]; do echo {PATTERN}; i=$((i+1)); done > /tmp/pattern; \
             dd if=/tmp/pattern of=$dev bs=4096 count=16 conv=fsync 2>/dev/null; sync;"
        )
    } else {
        String::new()
    };
    let script = format!(
        "{} [ -b \"$dev\" ] || exit; {writing} echo 3 > /proc/sys/vm/drop_caches; \
         echo read=$(dd if=$dev bs=64 count=1 2>/dev/null | head -n 1)",
        find_disk("data")
    );
    guest_shell(ns, address, &script)
}

/// The first test's VM `a1` on h1 with drive `data`, and a VM of its project on h2 that
/// reaches it (`friend`, a namespace).
struct Booted {
    address: Ipv4Addr,
    friend: String,
    key: Vec<String>,
}

#[test]
fn a_vm_boots_answers_keeps_its_drive_encrypted_and_moves_across_hosts() {
    let mut site = Site::new("v", 2, 4096);
    let booted = create_and_boot(&mut site);
    restart_on_the_same_host(&site, &booted);
    attach_live(&site, &booted);
    move_to_h2(&site, &booted);
    detach_stop_destroy(&site, &booted);
}

/// Creates drive `data` and VM `a1` on h1 and boots it: it answers ping and a shell from
/// another VM of its project on the other host, and nothing from another project.
fn create_and_boot(site: &mut Site) -> Booted {
    let owner_file = site.key.key_file.display().to_string();
    let drive = [
        "drive",
        "create",
        "data",
        "--size",
        "1",
        "--owner",
        &owner_file,
    ];
    stdout(&site.cli(&drive));
    let created = stdout(&site.cli(&[
        "create",
        "a1",
        "--image",
        "tiny",
        "--cpus",
        "1",
        "--memory",
        "256",
        "--project",
        "alpha",
        "--host",
        "h1",
    ]));
    assert!(created.contains("created a1 on h1"), "{created}");
    let address = site.vmctl.network().port("a1").expect("port").ip;
    let (friend, _) = peer(site, "friend", "h2", "alpha");
    let (stranger, _) = peer(site, "stranger", "h2", "beta");

    let started = stdout(&site.cli(&["start", "a1"]));
    assert!(started.contains("started a1 on h1 in"), "{started}");
    eventually("a1 answers ping from its project", || {
        ping(&friend, address)
    });
    let hello = guest_shell(&friend, address, "echo hello from $(hostname)");
    assert!(hello.contains("hello from a1"), "{hello}");
    assert!(
        !ping(&stranger, address),
        "another project must not reach a1"
    );
    Booted {
        address,
        friend,
        key: key_args(site),
    }
}

/// Stopped and started again on the same host (libvirt deletes the tap at the stop and makes
/// a new one of the same name at the start): it answers again, on the same port.
fn restart_on_the_same_host(site: &Site, booted: &Booted) {
    let ofport = site.vmctl.network().port("a1").expect("port").ofport;
    let stopped = stdout(&site.cli(&["stop", "a1", "--timeout", "2"]));
    assert!(stopped.contains("a1: forced off"), "{stopped}");
    let restarted = stdout(&site.cli(&["start", "a1"]));
    assert!(restarted.contains("started a1 on h1 in"), "{restarted}");
    eventually("a1 answers ping after a restart on the same host", || {
        ping(&booted.friend, booted.address)
    });
    let again = guest_shell(&booted.friend, booted.address, "echo hello again");
    assert!(again.contains("hello again"), "{again}");
    let port = site.vmctl.network().port("a1").expect("port");
    assert_eq!(port.ofport, ofport);
}

/// A live attach: the guest sees the disk, and what it writes is ciphertext on the host;
/// status, list and the console show the VM as it is.
fn attach_live(site: &Site, booted: &Booted) {
    let key: Vec<&str> = booted.key.iter().map(String::as_str).collect();
    let attach = [&["drive", "attach", "data", "--to", "a1"], &key[..]].concat();
    let attached = stdout(&site.cli(&attach));
    assert!(attached.contains("as vdb"), "{attached}");
    let seen = guest_drive(&booted.friend, booted.address, true);
    assert!(
        seen.contains("dev=/dev/vd"),
        "the guest sees the drive: {seen}"
    );
    let read_back = seen.contains(&format!("read={PATTERN}"));
    assert!(read_back, "the guest reads back: {seen}");
    let qcow2 = site.store.join("drives/data.qcow2");
    let leaked = file_contains(&qcow2, PATTERN.as_bytes());
    assert!(!leaked, "plaintext in the qcow2 file");
    assert_key_never_on_disk(site);

    let status = stdout(&site.cli(&["status", "a1"]));
    let address = format!("{}/24", booted.address);
    for expected in ["running", &address, "data (vdb)", "h1 (tcg)"] {
        let shown = status.contains(expected);
        assert!(shown, "`{expected}` missing in:\n{status}");
    }
    let list = stdout(&site.cli(&["list"]));
    let listed = list
        .lines()
        .any(|l| l.starts_with("a1") && l.contains("running"));
    assert!(listed, "{list}");
    assert!(stdout(&site.cli(&["console", "a1"])).contains("vault-guest: ready"));
}

/// Move: same name, address and drive, on the other host.
fn move_to_h2(site: &Site, booted: &Booted) {
    let key: Vec<&str> = booted.key.iter().map(String::as_str).collect();
    let args = [
        &["move", "a1", "--to", "h2", "--stop-timeout", "3"],
        &key[..],
    ]
    .concat();
    let moved = stdout(&site.cli(&args));
    assert!(moved.contains("started a1 on h2"), "{moved}");
    let port = site.vmctl.network().port("a1").expect("port");
    assert_eq!(port.ip, booted.address);
    let h1 = site.vmctl.connect("h1").expect("h1");
    assert!(h1.lookup("a1").expect("lookup").is_none(), "a1 left h1");
    eventually("a1 answers on h2", || ping(&booted.friend, booted.address));
    let seen = guest_drive(&booted.friend, booted.address, false);
    let read_back = seen.contains(&format!("read={PATTERN}"));
    assert!(read_back, "the drive moved along: {seen}");
}

/// A live detach, a stop (the tiny guest ignores ACPI: forced), a destroy.
fn detach_stop_destroy(site: &Site, booted: &Booted) {
    stdout(&site.cli(&["drive", "detach", "data"]));
    let serials = "cat /sys/block/*/serial; echo end";
    let gone = guest_shell(&booted.friend, booted.address, serials);
    assert!(gone.contains("end") && !gone.contains("data"), "{gone}");
    let stopped = stdout(&site.cli(&["stop", "a1", "--timeout", "2"]));
    assert!(stopped.contains("forced off"), "{stopped}");
    stdout(&site.cli(&["destroy", "a1"]));
    assert!(site.vmctl.network().port("a1").is_err(), "port released");
    let h2 = site.vmctl.connect("h2").expect("h2");
    assert!(h2.lookup("a1").expect("lookup").is_none(), "a1 undefined");
}

/// The drive's key (and its LUKS passphrase form) is in no file of any libvirtd or the store,
/// and no secret outlives the start or attach that needed it.
fn assert_key_never_on_disk(site: &Site) {
    let state = site.vmctl.store().read().expect("state");
    let record = state.drive("data").expect("drive");
    let key = vmctl::drive::unwrap_key("data", record, &state.site, &site.owner).expect("key");
    let passphrase = vmctl::drive::passphrase(&key);
    let mut files = files_under(&site.store);
    for daemon in &site.daemons {
        files.extend(daemon.files());
    }
    for file in files {
        for needle in [&key.as_bytes()[..], &passphrase[..]] {
            assert!(
                !file_contains(&file, needle),
                "the drive key is in {}",
                file.display()
            );
        }
    }
    for host in ["h1", "h2"] {
        let host = site.vmctl.connect(host).expect("host");
        assert!(
            !host.has_secret(&record.secret_uuid),
            "a secret outlived its use"
        );
    }
}

#[test]
fn bad_input_is_refused_and_leaves_nothing_behind() {
    let mut site = Site::new("b", 1, 1024);
    let owner_file = site.key.key_file.display().to_string();
    stdout(&site.cli(&["create", "a1", "--image", "tiny", "--project", "alpha"]));
    stdout(&site.cli(&["create", "a2", "--image", "tiny", "--project", "alpha"]));
    stdout(&site.cli(&[
        "drive",
        "create",
        "d1",
        "--size",
        "1",
        "--owner",
        &owner_file,
    ]));
    let attached = stdout(&site.cli(&["drive", "attach", "d1", "--to", "a1"]));
    assert!(
        attached.contains("as vdb"),
        "offline attach needs no key: {attached}"
    );

    for (args, expected) in &refused_cases(&owner_file) {
        let output = site.cli(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        let one_line = stderr.starts_with("vmctl: ") && stderr.lines().count() == 1;
        assert!(one_line, "{stderr}");
        assert!(
            stderr.contains(expected),
            "`{expected}` missing in: {stderr}"
        );
    }
    a_wrong_passphrase_starts_nothing(&site);
    a_start_without_ovs_is_undone(&mut site);
    only_the_accepted_vms_and_drives_exist(&site);

    // A drive in use is not deleted; after destroy it is free again.
    let host = site.vmctl.connect("h1").expect("h1");
    assert!(site.cli(&["drive", "delete", "d1"]).status.code() != Some(0));
    stdout(&site.cli(&["destroy", "a1"]));
    stdout(&site.cli(&["drive", "delete", "d1"]));
    stdout(&site.cli(&["destroy", "a2"]));
    assert!(host.domain_names().expect("domains").is_empty());
    let ports = site.vmctl.network().ports().expect("ports");
    assert!(ports.is_empty(), "ports left: {ports:?}");
}

/// Commands that must fail with one line naming what is wrong, and change nothing.
fn refused_cases(owner_file: &str) -> Vec<(Vec<&str>, &'static str)> {
    let create = |extra: &[&'static str]| {
        [
            &["create", "a3", "--image", "tiny", "--project", "alpha"],
            extra,
        ]
        .concat()
    };
    let drive = |name, owner| vec!["drive", "create", name, "--size", "1", "--owner", owner];
    vec![
        (
            vec!["create", "a1", "--image", "tiny", "--project", "alpha"],
            "a VM named `a1` already exists",
        ),
        (
            vec!["create", "a3", "--image", "nope", "--project", "alpha"],
            "unknown image `nope`",
        ),
        (create(&["--host", "h7"]), "unknown host `h7`"),
        (create(&["--memory", "600"]), "no host has room"),
        (
            vec!["drive", "attach", "d1", "--to", "a2"],
            "attached to VM `a1`: a drive has one writer",
        ),
        (drive("d1", owner_file), "a drive named `d1` already exists"),
        (drive("d2", "/nonexistent.vkey"), "no key file"),
        (vec!["start", "a1"], "pass its owner's key file"),
        (vec!["start", "ghost"], "no VM named `ghost`"),
    ]
}

/// A wrong passphrase: the VM stays off and no secret is left.
fn a_wrong_passphrase_starts_nothing(site: &Site) {
    let wrong = site.lab.dir.path().join("wrong.pass");
    std::fs::write(&wrong, "not the passphrase").expect("write");
    let key = site.key.key_file.display().to_string();
    let args = [
        "start",
        "a1",
        "--key",
        &key,
        "--passphrase-file",
        wrong.to_str().expect("utf-8"),
    ];
    let output = site.cli(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("wrong passphrase"),
        "{stderr}"
    );
    let host = site.vmctl.connect("h1").expect("h1");
    let domain = host.domain("a1").expect("a1");
    assert!(
        !host.state(&domain).expect("state").is_active(),
        "a1 stays off"
    );
    let state = site.vmctl.store().read().expect("state");
    assert!(!host.has_secret(&state.drive("d1").expect("d1").secret_uuid));
}

/// The VM's port cannot follow its new tap (h1's ovs-vswitchd is down): the start fails and
/// the VM is off again.
fn a_start_without_ovs_is_undone(site: &mut Site) {
    site.lab.stop_vswitchd(0);
    let output = site.cli(&["start", "a2"]);
    site.lab.restart_vswitchd(0);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "start without OVS succeeded");
    assert!(
        stderr.lines().count() == 1
            && stderr.contains("forced off again")
            && stderr.contains("host `h1`"),
        "{stderr}"
    );
    let host = site.vmctl.connect("h1").expect("h1");
    let a2 = host.domain("a2").expect("a2");
    assert!(!host.state(&a2).expect("state").is_active(), "a2 is off");
}

/// Nothing of the refused VMs and drives exists; the accepted ones are intact.
fn only_the_accepted_vms_and_drives_exist(site: &Site) {
    let (vmctl, host) = (&site.vmctl, site.vmctl.connect("h1").expect("h1"));
    let state = vmctl.store().read().expect("state");
    let mut names = host.domain_names().expect("domains");
    names.sort();
    assert_eq!(names, ["a1", "a2"]);
    let vms: Vec<String> = vmctl
        .list()
        .expect("list")
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(vms, ["a1", "a2"]);
    let ports: Vec<String> = vmctl
        .network()
        .ports()
        .expect("ports")
        .into_iter()
        .map(|p| p.vm)
        .collect();
    assert_eq!(ports, ["a1", "a2"]);
    assert_eq!(state.vm("a1").expect("a1").drives, ["d1"]);
    assert!(state.vm("a2").expect("a2").drives.is_empty());
    let drives: Vec<_> = files_under(&site.store.join("drives"));
    assert_eq!(drives, [site.store.join("drives/d1.qcow2")]);
}
