//! VM and client namespaces, and bounded traffic checks between them.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use netctl::VmPort;

use super::{Lab, run, sh, wait_until, which};

/// The address of the outside client on the underlay.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 100);

impl Lab {
    /// The namespace of a VM (created on first use).
    pub fn vm_ns(&self, vm: &str) -> String {
        format!("{}-{vm}", self.prefix)
    }

    /// Plugs a VM namespace into its port's host, the way a VM's tap would appear: a veth
    /// whose host end has the port's interface name, with the port's MAC and address inside.
    pub fn attach(&mut self, port: &VmPort) -> String {
        let ns = self.vm_ns(&port.vm);
        if !std::path::Path::new("/run/netns").join(&ns).exists() {
            let suffix = port.vm.clone();
            self.add_namespace(&suffix);
        }
        let host_ns = self.hosts[self.host_index(&port.host)].ns.clone();
        sh(&[
            "ip",
            "-n",
            &host_ns,
            "link",
            "add",
            &port.interface,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ]);
        sh(&["ip", "-n", &host_ns, "link", "set", &port.interface, "up"]);
        let mac = port.mac.to_string();
        let address = format!("{}/{}", port.ip, port.prefix_len);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "address", &mac]);
        sh(&["ip", "-n", &ns, "addr", "add", &address, "dev", "eth0"]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &port.gateway.to_string(),
        ]);
        sh(&[
            "ip", "netns", "exec", &ns, "ethtool", "-K", "eth0", "tx", "off",
        ]);
        ns
    }

    /// Unplugs a VM from its host (as when the VM stops there).
    pub fn detach(&self, port: &VmPort) {
        let host_ns = &self.hosts[self.host_index(&port.host)].ns;
        sh(&["ip", "-n", host_ns, "link", "del", &port.interface]);
    }

    /// A client outside the VM network, on the underlay.
    pub fn client(&mut self) -> String {
        let ns = self.add_namespace("c");
        self.join_underlay(&ns, "eth0", "uc");
        let address = format!("{CLIENT_IP}/24");
        sh(&["ip", "-n", &ns, "addr", "add", &address, "dev", "eth0"]);
        sh(&[
            "ip", "netns", "exec", &ns, "ethtool", "-K", "eth0", "tx", "off",
        ]);
        ns
    }

    /// Starts a TCP echo server on `port` in a namespace; with `banner` it sends that line
    /// instead of echoing.
    pub fn serve(&mut self, ns: &str, port: u16, banner: Option<&str>) {
        let listen = format!("TCP-LISTEN:{port},fork,reuseaddr");
        let reply = match banner {
            Some(text) => format!("SYSTEM:echo {text}"),
            None => "PIPE".to_string(),
        };
        let child = Command::new(which("ip").expect("ip"))
            .args(["netns", "exec", ns, "socat", "-T", "5", &listen, &reply])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start socat");
        self.keep(child);
        let needle = format!(":{port} ");
        wait_until("echo server listening", Duration::from_secs(10), || {
            sh(&["ip", "netns", "exec", ns, "ss", "-ltnH"]).contains(&needle)
        });
    }
}

/// One ping, one second at most.
pub fn ping(ns: &str, to: Ipv4Addr) -> bool {
    run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "ping",
        "-c",
        "1",
        "-W",
        "1",
        &to.to_string(),
    ])
    .status
    .success()
}

/// Pings from a given source address (which the namespace must hold).
pub fn ping_from(ns: &str, from: Ipv4Addr, to: Ipv4Addr, count: u32) {
    let _ = run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "ping",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "1",
        "-I",
        &from.to_string(),
        &to.to_string(),
    ]);
}

/// Sends a line over TCP and returns what came back (empty if the connection failed), at
/// most a few seconds.
pub fn tcp_exchange(ns: &str, to: Ipv4Addr, port: u16, line: &str) -> String {
    let target = format!("TCP:{to}:{port},connect-timeout=2");
    let mut child = Command::new(which("ip").expect("ip"))
        .args([
            "netns", "exec", ns, "timeout", "5", "socat", "-T", "3", "-", &target,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start socat client");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = writeln!(stdin, "{line}");
    }
    let output = child.wait_with_output().expect("socat client");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Whether a TCP echo through `to:port` answers with what was sent.
pub fn tcp_echo(ns: &str, to: Ipv4Addr, port: u16) -> bool {
    let token = format!("netctl-echo-{}-{port}", std::process::id());
    tcp_exchange(ns, to, port, &token) == token
}

/// The ICMP echo requests a namespace's kernel has received.
pub fn icmp_echoes_received(ns: &str) -> u64 {
    let snmp = sh(&["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"]);
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (
        icmp.next().expect("Icmp header"),
        icmp.next().expect("Icmp values"),
    );
    let position = names
        .split_whitespace()
        .position(|n| n == "InEchos")
        .expect("InEchos column");
    values
        .split_whitespace()
        .nth(position)
        .and_then(|v| v.parse().ok())
        .expect("InEchos value")
}

/// Waits until `check` holds (bounded), for traffic that needs a moment after an apply
/// (tunnel neighbours are resolved on first use).
pub fn eventually(what: &str, check: impl FnMut() -> bool) {
    wait_until(what, Duration::from_secs(15), check);
}
