//! A private libvirtd per lab host: started in the host's network namespace (so the VMs' taps
//! appear where that host's OVS runs) and in a private mount namespace whose /run/libvirt,
//! /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt and /etc/libvirt are directories of
//! the test, with /run/openvswitch bound to the host's OVS run directory. Dropping it destroys
//! its VMs, undefines its secrets and kills the daemon and any QEMU left, by PID.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::lab::which;

/// The qemu.conf of test hosts: QEMU as root without a security driver (no systemd, no
/// AppArmor here), its output to files (no virtlogd needed).
const QEMU_CONF: &str = "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\n\
                         security_driver = \"none\"\nstdio_handler = \"file\"\n";

const BOUND: [(&str, &str); 5] = [
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("etc", "/etc/libvirt"),
];

#[derive(Debug)]
pub struct Libvirtd {
    pub dir: PathBuf,
    pub uri: String,
    child: Option<Child>,
}

impl Libvirtd {
    /// Starts libvirtd for a host whose network namespace is `ns` and OVS run dir `ovs_dir`.
    pub fn start(ns: &str, dir: &Path, ovs_dir: &Path) -> Libvirtd {
        for (sub, _) in BOUND {
            fs::create_dir_all(dir.join(sub)).expect("libvirt dir");
        }
        fs::create_dir_all(dir.join("log/qemu")).expect("qemu log dir");
        fs::write(dir.join("etc/qemu.conf"), QEMU_CONF).expect("qemu.conf");
        fs::write(dir.join("etc/libvirtd.conf"), "").expect("libvirtd.conf");
        let mut script = String::from("set -e\nmount --make-rprivate /\n");
        for (sub, target) in BOUND {
            script.push_str(&format!(
                "mkdir -p {target}\nmount --bind {} {target}\n",
                dir.join(sub).display()
            ));
        }
        script.push_str(&format!(
            "mkdir -p /run/openvswitch\nmount --bind {} /run/openvswitch\nexec {} --pid-file {}\n",
            ovs_dir.display(),
            which("libvirtd").expect("libvirtd").display(),
            dir.join("libvirtd.pid").display()
        ));
        let log = fs::File::create(dir.join("libvirtd.log")).expect("libvirtd log");
        // `ip netns exec`, `unshare` and the script's `exec` each replace the process, so the
        // child's PID is libvirtd's.
        let child = Command::new(which("ip").expect("ip"))
            .args(["netns", "exec", ns])
            .arg(which("unshare").expect("unshare"))
            .args(["--mount", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start libvirtd");
        let socket = dir.join("run/libvirt-sock");
        let daemon = Libvirtd {
            uri: format!("qemu:///system?socket={}", socket.display()),
            dir: dir.to_path_buf(),
            child: Some(child),
        };
        let up = || socket.exists() && virt::connect::Connect::open(Some(&daemon.uri)).is_ok();
        if !(0..200).any(|_| up() || sleep_false(Duration::from_millis(100))) {
            let log = fs::read_to_string(dir.join("libvirtd.log")).unwrap_or_default();
            panic!("libvirtd did not come up within 20 s; its log:\n{log}");
        }
        daemon
    }

    /// Every regular file under this daemon's directories (to look for leaked keys).
    pub fn files(&self) -> Vec<PathBuf> {
        super::files_under(&self.dir)
    }

    fn clean_up(&mut self) {
        virt::error::clear_error_callback();
        if let Ok(connection) = virt::connect::Connect::open(Some(&self.uri)) {
            for domain in connection.list_all_domains(0).unwrap_or_default() {
                let _ = domain.destroy();
                let _ = domain.undefine();
            }
            for secret in connection.list_all_secrets(0).unwrap_or_default() {
                let _ = secret.undefine();
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A QEMU that outlived its domain's destroy: its PID file names it.
        for pid_file in super::files_under(&self.dir.join("run/qemu")) {
            if pid_file.extension().is_some_and(|e| e == "pid") {
                let pid = fs::read_to_string(&pid_file).unwrap_or_default();
                let alive = |pid: &i32| Path::new(&format!("/proc/{pid}")).exists();
                if let Some(pid) = pid.trim().parse::<i32>().ok().filter(alive) {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
            }
        }
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        self.clean_up();
    }
}

/// Sleeps, then says "not yet" (for bounded polling loops).
fn sleep_false(duration: Duration) -> bool {
    std::thread::sleep(duration);
    false
}
