//! VM and client namespaces, and bounded traffic checks between them.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use netctl::VmPort;

use super::{Lab, cmd, try_cmd, wait_until, which};

/// The address of the outside client on the underlay.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 100);

impl Lab {
    /// Plugs a VM namespace (created on first use) into its port's host, the way a VM's tap
    /// would appear: a veth whose host end has the port's interface name, with the port's MAC
    /// and address inside.
    pub fn attach(&mut self, port: &VmPort) -> String {
        let ns = format!("{}-{}", self.prefix, port.vm);
        if !std::path::Path::new("/run/netns").join(&ns).exists() {
            self.add_namespace(&port.vm);
        }
        let host = &self.hosts[self.host_index(&port.host)].ns;
        let VmPort {
            interface,
            mac,
            ip,
            prefix_len,
            gateway,
            ..
        } = port;
        cmd(&format!(
            "ip -n {host} link add {interface} type veth peer name eth0 netns {ns}"
        ));
        cmd(&format!("ip -n {host} link set {interface} up"));
        cmd(&format!("ip -n {ns} link set eth0 address {mac}"));
        cmd(&format!("ip -n {ns} addr add {ip}/{prefix_len} dev eth0"));
        cmd(&format!("ip -n {ns} link set eth0 up"));
        cmd(&format!("ip -n {ns} route add default via {gateway}"));
        cmd(&format!("ip netns exec {ns} ethtool -K eth0 tx off"));
        ns
    }

    /// Unplugs a VM from its host (as when the VM stops there).
    pub fn detach(&self, port: &VmPort) {
        let host = &self.hosts[self.host_index(&port.host)].ns;
        cmd(&format!("ip -n {host} link del {}", port.interface));
    }

    /// A client outside the VM network, on the underlay.
    pub fn client(&mut self) -> String {
        let ns = self.add_namespace("c");
        self.join_underlay(&ns, "eth0", "uc");
        cmd(&format!("ip -n {ns} addr add {CLIENT_IP}/24 dev eth0"));
        cmd(&format!("ip netns exec {ns} ethtool -K eth0 tx off"));
        ns
    }

    /// Starts a TCP echo server on `port` in a namespace; with `banner` it sends that word
    /// instead of echoing.
    pub fn serve(&mut self, ns: &str, port: u16, banner: Option<&str>) {
        let listen = format!("TCP-LISTEN:{port},fork,reuseaddr");
        let reply = banner.map_or("PIPE".to_string(), |word| format!("SYSTEM:echo {word}"));
        let child = Command::new(which("ip").expect("ip"))
            .args(["netns", "exec", ns, "socat", "-T", "5", &listen, &reply])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start socat");
        self.keep(child);
        wait_until("echo server listening", Duration::from_secs(10), || {
            cmd(&format!("ip netns exec {ns} ss -ltnH")).contains(&format!(":{port} "))
        });
    }
}

/// A permanent neighbour entry for `peer`, so that `ns` sends to it without asking ARP.
pub fn static_neighbour(ns: &str, peer: &VmPort) {
    let VmPort { ip, mac, .. } = peer;
    cmd(&format!(
        "ip -n {ns} neigh replace {ip} lladdr {mac} dev eth0 nud permanent"
    ));
}

/// One ping, one second at most.
pub fn ping(ns: &str, to: Ipv4Addr) -> bool {
    try_cmd(&format!("ip netns exec {ns} ping -c 1 -W 1 {to}"))
}

/// Pings from a given source address (which the namespace must hold); the result is not
/// checked, the receiver's counters are.
pub fn ping_from(ns: &str, from: Ipv4Addr, to: Ipv4Addr, count: u32) {
    let _ = try_cmd(&format!(
        "ip netns exec {ns} ping -c {count} -i 0.2 -W 1 -I {from} {to}"
    ));
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
    let snmp = cmd(&format!("ip netns exec {ns} cat /proc/net/snmp"));
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (
        icmp.next().expect("Icmp names"),
        icmp.next().expect("Icmp values"),
    );
    let position = names.split_whitespace().position(|n| n == "InEchos");
    let value = position.and_then(|p| values.split_whitespace().nth(p));
    value.and_then(|v| v.parse().ok()).expect("InEchos value")
}

/// Waits until `check` holds (bounded), for traffic that needs a moment after an apply
/// (tunnel neighbours are resolved on first use).
pub fn eventually(what: &str, check: impl FnMut() -> bool) {
    wait_until(what, Duration::from_secs(15), check);
}
