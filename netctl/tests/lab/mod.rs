//! A lab of OVS "hosts" as network namespaces, for netctl's integration tests.
//!
//! Each host namespace runs its own `ovsdb-server` and `ovs-vswitchd` (userspace datapath)
//! with a private run directory, and holds `br-phy` with its underlay port and address. An
//! underlay namespace bridges the hosts (and an outside client). VMs are namespaces joined to
//! their host by a veth pair whose host end has the interface name netctl gives the port.
//! Everything the lab makes is removed when it is dropped, also when a test fails: processes
//! it started (killed by PID), namespaces (with their veths and bridges) and the temporary
//! directory.
#![allow(dead_code)] // Each test crate uses a part of the helpers.

mod toml;
mod traffic;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use toml::*;
#[allow(unused_imports)] // Tests that use no traffic helpers (input.rs).
pub use traffic::*;

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
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
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next());
    assert_eq!(
        uid,
        Some("0"),
        "netctl integration tests must run as root (namespaces, OVS)"
    );
    let programs = "ip ovsdb-tool ovsdb-server ovs-vswitchd ovs-vsctl ovs-ofctl ovs-appctl \
                    ethtool ping socat ss timeout sysctl";
    for program in programs.split_whitespace() {
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

/// Runs a command line (words split at whitespace) that must succeed; returns its stdout.
pub fn cmd(line: &str) -> String {
    let output = run(&line.split_whitespace().collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "`{line}` failed: {stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a command line (words split at whitespace); returns whether it succeeded.
pub fn try_cmd(line: &str) -> bool {
    run(&line.split_whitespace().collect::<Vec<_>>())
        .status
        .success()
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

/// Checks that an operation failed before changing anything because `host` could not be
/// read, with `detail` in the message.
pub fn assert_unreachable(error: netctl::Error, host: &str, detail: &str) {
    let message = error.to_string();
    assert!(matches!(error, netctl::Error::Unreachable(_)), "{message}");
    let host = format!("host `{host}`");
    for expected in [host.as_str(), detail, "nothing was changed"] {
        assert!(
            message.contains(expected),
            "`{expected}` missing in: {message}"
        );
    }
}

impl Lab {
    /// A lab of `host_count` hosts named h1, h2, ...; `tag` makes namespace names unique.
    pub fn new(tag: &str, host_count: usize) -> Lab {
        require_prerequisites();
        let serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut lab = Lab {
            prefix: format!("nc{tag}{}", std::process::id() % 100_000),
            dir: tempfile::Builder::new()
                .prefix("netctl-lab-")
                .tempdir()
                .expect("temp dir"),
            hosts: Vec::new(),
            namespaces: Vec::new(),
            children: Vec::new(),
            _serial: serial,
        };
        let underlay = lab.add_namespace("u");
        cmd(&format!("ip -n {underlay} link add br0 type bridge"));
        cmd(&format!("ip -n {underlay} link set br0 up"));
        for i in 1..=host_count {
            lab.add_host(i);
        }
        lab
    }

    fn add_namespace(&mut self, suffix: &str) -> String {
        let name = format!("{}-{suffix}", self.prefix);
        let _ = try_cmd(&format!("ip netns del {name}"));
        cmd(&format!("ip netns add {name}"));
        self.namespaces.push(name.clone());
        cmd(&format!("ip -n {name} link set lo up"));
        name
    }

    /// Joins a namespace to the underlay bridge through a veth whose end there is `ifname`.
    fn join_underlay(&self, ns: &str, ifname: &str, link: &str) {
        let underlay = format!("{}-u", self.prefix);
        cmd(&format!(
            "ip -n {underlay} link add {link} mtu 1600 type veth peer name {ifname} netns {ns}"
        ));
        cmd(&format!("ip -n {underlay} link set {link} master br0 up"));
        cmd(&format!("ip -n {ns} link set {ifname} mtu 1600 up"));
    }

    fn add_host(&mut self, i: usize) {
        let name = format!("h{i}");
        let ns = self.add_namespace(&name);
        let run_dir = self.dir.path().join(&name);
        std::fs::create_dir_all(&run_dir).expect("host run dir");
        self.join_underlay(&ns, "phy0", &format!("u{i}"));
        // The kernel must leave the underlay port to OVS: no ARP or IPv6 of its own there.
        cmd(&format!("ip -n {ns} link set phy0 arp off"));
        cmd(&format!(
            "ip netns exec {ns} sysctl -qw net.ipv6.conf.phy0.disable_ipv6=1"
        ));
        cmd(&format!(
            "ovsdb-tool create {}/conf.db {SCHEMA}",
            run_dir.display()
        ));
        self.hosts.push(LabHost {
            name,
            ns,
            ip: Ipv4Addr::new(192, 168, 50, i as u8),
            run_dir,
            ovsdb: None,
            vswitchd: None,
        });
        let index = self.hosts.len() - 1;
        self.start_ovsdb(index);
        self.vsctl(index, "--no-wait init");
        self.start_vswitchd(index);
        // br-phy gets its own MAC, so the kernel does not take the host's traffic on phy0.
        self.vsctl(
            index,
            &format!(
                "add-br br-phy -- set Bridge br-phy datapath_type=netdev \
                 other_config:hwaddr=02:aa:00:00:00:{i:02x} -- add-port br-phy phy0 \
                 -- set Interface br-phy mtu_request=1600"
            ),
        );
        self.configure_underlay_address(index);
    }

    /// Puts the host's address on br-phy and tells OVS's router about the underlay.
    fn configure_underlay_address(&self, index: usize) {
        let LabHost {
            ns, ip, run_dir, ..
        } = &self.hosts[index];
        wait_until("br-phy device", Duration::from_secs(10), || {
            try_cmd(&format!("ip -n {ns} link show br-phy"))
        });
        cmd(&format!("ip -n {ns} addr replace {ip}/24 dev br-phy"));
        cmd(&format!("ip -n {ns} link set br-phy up"));
        let ctl = run_dir.join("ovs-vswitchd.ctl");
        cmd(&format!(
            "ovs-appctl -t {} ovs/route/add 192.168.50.0/24 br-phy",
            ctl.display()
        ));
    }

    /// Starts an OVS daemon of a host in its namespace, with the host's run directory.
    fn spawn_daemon(&self, index: usize, program: &str, args: &[String]) -> Child {
        let LabHost { ns, run_dir, .. } = &self.hosts[index];
        let path = which(program).unwrap_or_else(|| panic!("no {program}"));
        Command::new(which("ip").expect("ip"))
            .args(["netns", "exec", ns])
            .arg(path)
            .args(args)
            .env("OVS_RUNDIR", run_dir)
            .env("OVS_LOGDIR", run_dir)
            .env("OVS_DBDIR", run_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"))
    }

    fn start_ovsdb(&mut self, index: usize) {
        let dir = self.hosts[index].run_dir.display().to_string();
        let args = format!(
            "{dir}/conf.db --remote=punix:{dir}/db.sock --unixctl={dir}/ovsdb-server.ctl \
             --log-file={dir}/ovsdb-server.log"
        );
        let args: Vec<String> = args.split_whitespace().map(str::to_string).collect();
        self.hosts[index].ovsdb = Some(self.spawn_daemon(index, "ovsdb-server", &args));
        let socket = self.hosts[index].run_dir.join("db.sock");
        wait_until("ovsdb-server socket", Duration::from_secs(10), || {
            socket.exists()
        });
    }

    pub fn start_vswitchd(&mut self, index: usize) {
        let dir = self.hosts[index].run_dir.display().to_string();
        let args = format!(
            "unix:{dir}/db.sock --unixctl={dir}/ovs-vswitchd.ctl --log-file={dir}/ovs-vswitchd.log"
        );
        let args: Vec<String> = args.split_whitespace().map(str::to_string).collect();
        self.hosts[index].vswitchd = Some(self.spawn_daemon(index, "ovs-vswitchd", &args));
        wait_until(
            "ovs-vswitchd control socket",
            Duration::from_secs(10),
            || try_cmd(&format!("ovs-appctl -t {dir}/ovs-vswitchd.ctl version")),
        );
    }

    /// Kills a host's ovs-vswitchd (the database stays up; its sockets stay, refusing).
    pub fn stop_vswitchd(&mut self, index: usize) {
        if let Some(mut child) = self.hosts[index].vswitchd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts a host's ovs-vswitchd and restores its underlay address.
    pub fn restart_vswitchd(&mut self, index: usize) {
        self.start_vswitchd(index);
        self.configure_underlay_address(index);
    }

    pub fn db(&self, index: usize) -> String {
        format!("unix:{}/db.sock", self.hosts[index].run_dir.display())
    }

    /// Runs `ovs-vsctl` against a host's database (words split at whitespace).
    pub fn vsctl(&self, index: usize, line: &str) -> String {
        cmd(&format!(
            "ovs-vsctl --db={} --timeout=20 {line}",
            self.db(index)
        ))
    }

    /// The flows of a bridge on a host, as `ovs-ofctl dump-flows` prints them.
    pub fn flows(&self, index: usize, bridge: &str) -> String {
        let dir = self.hosts[index].run_dir.display();
        cmd(&format!(
            "ovs-ofctl -O OpenFlow13 --no-stats dump-flows unix:{dir}/{bridge}.mgmt"
        ))
    }

    /// The database's change counter of a host: it moves whenever anything is written.
    pub fn next_cfg(&self, index: usize) -> String {
        self.vsctl(index, "get Open_vSwitch . next_cfg")
            .trim()
            .to_string()
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
        let hosts = self.hosts.iter_mut();
        let daemons = hosts
            .flat_map(|h| [h.vswitchd.take(), h.ovsdb.take()])
            .flatten();
        for mut child in self.children.drain(..).chain(daemons.collect::<Vec<_>>()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = try_cmd(&format!("ip netns del {ns}"));
        }
    }
}
