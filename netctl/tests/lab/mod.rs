//! A lab of OVS "hosts" as network namespaces, for netctl's integration tests.
//!
//! Each host namespace runs its own `ovsdb-server` and `ovs-vswitchd` (userspace datapath)
//! with a private run directory, and holds `br-phy` with its underlay port and address. An
//! underlay namespace bridges the hosts (and an outside client). VMs are namespaces joined to
//! their host by a veth pair whose host end has the interface name netctl gives the port.
//! Everything the lab makes is removed when it is dropped, also when a test fails: processes
//! it started (killed by PID), namespaces (with their veths and bridges) and the temporary
//! directory.
#![allow(dead_code)]

mod traffic;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use traffic::*;

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
const UNDERLAY_PREFIX_LEN: u8 = 24;
/// Labs run one at a time: three vswitchd per lab are plenty for a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

pub struct Lab {
    pub prefix: String,
    pub dir: tempfile::TempDir,
    pub hosts: Vec<LabHost>,
    namespaces: Vec<String>,
    children: Vec<Child>,
    _serial: MutexGuard<'static, ()>,
}

pub struct LabHost {
    pub name: String,
    pub ns: String,
    pub run_dir: PathBuf,
    pub ip: Ipv4Addr,
    ovsdb: Option<Child>,
    vswitchd: Option<Child>,
}

/// Fails (never skips) when the machine lacks what the tests need.
pub fn require_prerequisites() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_string))
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "netctl integration tests must run as root (namespaces, OVS)"
    );
    for program in [
        "ip",
        "ovsdb-tool",
        "ovsdb-server",
        "ovs-vswitchd",
        "ovs-vsctl",
        "ovs-ofctl",
        "ovs-appctl",
        "ethtool",
        "ping",
        "socat",
        "ss",
        "timeout",
    ] {
        assert!(
            which(program).is_some(),
            "netctl integration tests need `{program}`, which is not installed \
             (run scripts/setup.sh as root)"
        );
    }
    assert!(
        Path::new(SCHEMA).exists(),
        "netctl integration tests need {SCHEMA} (package openvswitch-switch; run scripts/setup.sh)"
    );
}

pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| candidate.is_file())
}

/// Runs a command and returns its output; panics if it cannot start.
pub fn run(args: &[&str]) -> Output {
    let program = which(args[0]).unwrap_or_else(|| PathBuf::from(args[0]));
    Command::new(program)
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

/// Runs a command that must succeed and returns its stdout.
pub fn sh(args: &[&str]) -> String {
    let output = run(args);
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Waits (bounded in time and tries) until `check` holds.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    for _ in 0..1000 {
        if check() {
            return;
        }
        if started.elapsed() > timeout {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

impl Lab {
    /// A lab of `host_count` hosts named h1, h2, ...; `tag` makes namespace names unique.
    pub fn new(tag: &str, host_count: usize) -> Lab {
        require_prerequisites();
        let serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let prefix = format!("nc{tag}{}", std::process::id() % 100_000);
        let mut lab = Lab {
            dir: tempfile::Builder::new()
                .prefix("netctl-lab-")
                .tempdir()
                .expect("temp dir"),
            prefix,
            hosts: Vec::new(),
            namespaces: Vec::new(),
            children: Vec::new(),
            _serial: serial,
        };
        let underlay = lab.add_namespace("u");
        sh(&[
            "ip", "-n", &underlay, "link", "add", "br0", "type", "bridge",
        ]);
        sh(&["ip", "-n", &underlay, "link", "set", "br0", "up"]);
        for i in 1..=host_count {
            lab.add_host(i);
        }
        lab
    }

    fn add_namespace(&mut self, suffix: &str) -> String {
        let name = format!("{}-{suffix}", self.prefix);
        let _ = run(&["ip", "netns", "del", &name]);
        sh(&["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// Joins a namespace to the underlay bridge through a veth whose end there is `ifname`.
    fn join_underlay(&self, ns: &str, ifname: &str, link: &str) {
        let underlay = format!("{}-u", self.prefix);
        sh(&[
            "ip", "-n", &underlay, "link", "add", link, "mtu", "1600", "type", "veth", "peer",
            "name", ifname, "netns", ns,
        ]);
        sh(&[
            "ip", "-n", &underlay, "link", "set", link, "master", "br0", "up",
        ]);
        sh(&["ip", "-n", ns, "link", "set", ifname, "mtu", "1600", "up"]);
    }

    fn add_host(&mut self, i: usize) {
        let name = format!("h{i}");
        let ns = self.add_namespace(&name);
        let run_dir = self.dir.path().join(&name);
        std::fs::create_dir_all(&run_dir).expect("host run dir");
        let host = LabHost {
            name,
            ns: ns.clone(),
            ip: Ipv4Addr::new(192, 168, 50, i as u8),
            run_dir,
            ovsdb: None,
            vswitchd: None,
        };
        self.join_underlay(&ns, "phy0", &format!("u{i}"));
        // The kernel must leave the underlay port to OVS: no ARP or IPv6 of its own there.
        sh(&["ip", "-n", &ns, "link", "set", "phy0", "arp", "off"]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.phy0.disable_ipv6=1",
        ]);
        let db = host.run_dir.join("conf.db");
        sh(&["ovsdb-tool", "create", &db.to_string_lossy(), SCHEMA]);
        self.hosts.push(host);
        let index = self.hosts.len() - 1;
        self.start_ovsdb(index);
        self.vsctl(index, &["--no-wait", "init"]);
        self.start_vswitchd(index);
        let hwaddr = format!("other_config:hwaddr=02:aa:00:00:00:{i:02x}");
        self.vsctl(
            index,
            &[
                "add-br",
                "br-phy",
                "--",
                "set",
                "Bridge",
                "br-phy",
                "datapath_type=netdev",
                &hwaddr,
                "--",
                "add-port",
                "br-phy",
                "phy0",
                "--",
                "set",
                "Interface",
                "br-phy",
                "mtu_request=1600",
            ],
        );
        self.configure_underlay_address(index);
    }

    /// Puts the host's address on br-phy and tells OVS's router about the underlay.
    fn configure_underlay_address(&self, index: usize) {
        let host = &self.hosts[index];
        let address = format!("{}/{UNDERLAY_PREFIX_LEN}", host.ip);
        wait_until("br-phy device", Duration::from_secs(10), || {
            run(&["ip", "-n", &host.ns, "link", "show", "br-phy"])
                .status
                .success()
        });
        sh(&[
            "ip", "-n", &host.ns, "addr", "replace", &address, "dev", "br-phy",
        ]);
        sh(&["ip", "-n", &host.ns, "link", "set", "br-phy", "up"]);
        let ctl = host.run_dir.join("ovs-vswitchd.ctl");
        sh(&[
            "ovs-appctl",
            "-t",
            &ctl.to_string_lossy(),
            "ovs/route/add",
            "192.168.50.0/24",
            "br-phy",
        ]);
    }

    fn spawn_in(&self, ns: &str, run_dir: &Path, args: &[&str]) -> Child {
        let program = which(args[0]).unwrap_or_else(|| panic!("no {}", args[0]));
        let program = program.to_string_lossy().into_owned();
        let mut all = vec!["netns", "exec", ns, program.as_str()];
        all.extend(&args[1..]);
        Command::new(which("ip").expect("ip"))
            .args(&all)
            .env("OVS_RUNDIR", run_dir)
            .env("OVS_LOGDIR", run_dir)
            .env("OVS_DBDIR", run_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?}: {e}"))
    }

    fn start_ovsdb(&mut self, index: usize) {
        let host = &self.hosts[index];
        let dir = host.run_dir.to_string_lossy().into_owned();
        let child = self.spawn_in(
            &host.ns,
            &host.run_dir,
            &[
                "ovsdb-server",
                &format!("{dir}/conf.db"),
                &format!("--remote=punix:{dir}/db.sock"),
                &format!("--unixctl={dir}/ovsdb-server.ctl"),
                &format!("--log-file={dir}/ovsdb-server.log"),
            ],
        );
        self.hosts[index].ovsdb = Some(child);
        let socket = self.hosts[index].run_dir.join("db.sock");
        wait_until("ovsdb-server socket", Duration::from_secs(10), || {
            socket.exists()
        });
    }

    pub fn start_vswitchd(&mut self, index: usize) {
        let host = &self.hosts[index];
        let dir = host.run_dir.to_string_lossy().into_owned();
        let child = self.spawn_in(
            &host.ns,
            &host.run_dir,
            &[
                "ovs-vswitchd",
                &format!("unix:{dir}/db.sock"),
                &format!("--unixctl={dir}/ovs-vswitchd.ctl"),
                &format!("--log-file={dir}/ovs-vswitchd.log"),
            ],
        );
        self.hosts[index].vswitchd = Some(child);
        let ctl = format!("{dir}/ovs-vswitchd.ctl");
        wait_until(
            "ovs-vswitchd control socket",
            Duration::from_secs(10),
            || run(&["ovs-appctl", "-t", &ctl, "version"]).status.success(),
        );
    }

    /// Stops a host's ovs-vswitchd (the database stays up).
    pub fn stop_vswitchd(&mut self, index: usize) {
        if let Some(mut child) = self.hosts[index].vswitchd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let dir = &self.hosts[index].run_dir;
        // A killed vswitchd leaves its sockets behind; they no longer answer.
        for entry in std::fs::read_dir(dir).expect("run dir").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".mgmt") || name.ends_with(".snoop") || name == "ovs-vswitchd.ctl" {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Restarts a host's ovs-vswitchd and restores its underlay address.
    pub fn restart_vswitchd(&mut self, index: usize) {
        self.start_vswitchd(index);
        self.configure_underlay_address(index);
    }

    pub fn db(&self, index: usize) -> String {
        format!(
            "unix:{}",
            self.hosts[index].run_dir.join("db.sock").display()
        )
    }

    pub fn vsctl(&self, index: usize, args: &[&str]) -> String {
        let db = format!("--db={}", self.db(index));
        let mut all = vec!["ovs-vsctl", db.as_str(), "--timeout=20"];
        all.extend(args);
        sh(&all)
    }

    /// The flows of a bridge on a host, as `ovs-ofctl dump-flows` prints them.
    pub fn flows(&self, index: usize, bridge: &str) -> String {
        let target = format!(
            "unix:{}",
            self.hosts[index]
                .run_dir
                .join(format!("{bridge}.mgmt"))
                .display()
        );
        sh(&[
            "ovs-ofctl",
            "-O",
            "OpenFlow13",
            "--no-stats",
            "dump-flows",
            &target,
        ])
    }

    /// The database's change counter of a host: it moves whenever anything is written.
    pub fn next_cfg(&self, index: usize) -> String {
        self.vsctl(index, &["get", "Open_vSwitch", ".", "next_cfg"])
            .trim()
            .to_string()
    }

    /// The `[[host]]` entries of a cluster file for this lab.
    pub fn hosts_toml(&self) -> String {
        let mut text = String::new();
        for (i, host) in self.hosts.iter().enumerate() {
            text.push_str(&format!(
                "[[host]]\nname = \"{}\"\novsdb = \"{}\"\nunderlay_ip = \"{}\"\n\
                 external_bridge = \"br-phy\"\nlibvirt_uri = \"qemu:///system\"\ncpus = 2\nmemory_mib = 4096\n\n",
                host.name,
                self.db(i),
                host.ip
            ));
        }
        text
    }

    /// Writes a cluster file into the lab's directory (state beside it) and returns its path.
    pub fn write_cluster(&self, body: &str) -> PathBuf {
        let path = self.dir.path().join("cluster.toml");
        let text = format!(
            "state = \"state.json\"\nexpose_ports = \"20000-20009\"\n\n{}{body}",
            self.hosts_toml()
        );
        std::fs::write(&path, text).expect("write cluster file");
        path
    }

    pub fn host_index(&self, name: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h.name == name)
            .unwrap_or_else(|| panic!("no lab host {name}"))
    }

    /// Keeps a process the test started, to kill it by PID on drop.
    pub fn keep(&mut self, child: Child) {
        self.children.push(child);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for host in &mut self.hosts {
            for child in [host.vswitchd.take(), host.ovsdb.take()]
                .into_iter()
                .flatten()
            {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for ns in self.namespaces.iter().rev() {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}
