//! Three hosts, two projects and a service: who reaches whom, anti-spoofing, idempotent
//! apply, and removal of what leaves the file. Root and real OVS; see lab/mod.rs.

mod lab;

use lab::{Lab, cmd, eventually, icmp_echoes_received, ping, ping_from, tcp_echo};
use netctl::{Netctl, VmPort};

const VMS: [(&str, &str, &str); 5] = [
    ("a1", "h1", "alpha"),
    ("a3", "h3", "alpha"),
    ("a4", "h3", "alpha"),
    ("b2", "h2", "beta"),
    ("b3", "h3", "beta"),
];

/// Two projects, alpha allowed to use storaged on h2, and the VMs.
fn cluster_body(vms: &[(&str, &str, &str)]) -> String {
    let mut body = lab::project("alpha", &["storaged"]) + &lab::project("beta", &[]);
    body += &lab::service("storaged", "h2", "10.10.0.2", 7000);
    for (name, host, project) in vms {
        body += &lab::vm(name, host, project, None);
    }
    body
}

#[test]
fn projects_are_isolated_spoofing_is_dropped_and_apply_converges() {
    let mut lab = Lab::new("iso", 3);
    let cluster = lab.write_cluster(&cluster_body(&VMS));
    let netctl = Netctl::open(&cluster).expect("cluster file");

    let first = netctl.apply().expect("first apply");
    assert!(first.change_count() > 0);
    assert!(
        first.hosts.iter().any(|h| !h.waiting.is_empty()),
        "VM ports wait for their devices before the VMs exist: {first}"
    );
    let port = |name: &str| netctl.port(name).expect("port");
    let ports: Vec<VmPort> = ["a1", "a3", "a4", "b2", "b3", "storaged"]
        .map(port)
        .to_vec();
    let [a1, a3, a4, b2, b3, storaged] = ports.clone().try_into().expect("six ports");
    let ns: Vec<String> = ports.iter().map(|p| lab.attach(p)).collect();
    let [ns_a1, ns_a3, ns_a4, ns_b2, ns_b3, ns_storaged] = ns.try_into().expect("six namespaces");
    lab.serve(&ns_a3, 5000, None);
    lab.serve(&ns_storaged, 7000, None);
    lab.serve(&ns_storaged, 7001, None);

    // One project across hosts: ping and TCP.
    eventually("a1 pings a3 across hosts", || ping(&ns_a1, a3.ip));
    assert!(tcp_echo(&ns_a1, a3.ip, 5000), "a1 -> a3 TCP echo");
    eventually("b2 pings b3 across hosts", || ping(&ns_b2, b3.ip));

    // Other projects: not across hosts, not on the same host, not even with a static
    // neighbour entry (so it is the flows that stop it, not ARP).
    assert!(!ping(&ns_b2, a1.ip), "beta reached alpha across hosts");
    assert!(!ping(&ns_b3, a3.ip), "beta reached alpha on the same host");
    lab::static_neighbour(&ns_b3, &a3);
    let before = icmp_echoes_received(&ns_a3);
    ping_from(&ns_b3, b3.ip, a3.ip, 3);
    assert_eq!(
        icmp_echoes_received(&ns_a3),
        before,
        "beta's packets reached alpha"
    );
    assert!(
        !tcp_echo(&ns_b3, a3.ip, 5000),
        "beta reached alpha over TCP"
    );

    // The service: its port, from the projects that list it, only.
    assert!(
        tcp_echo(&ns_a1, storaged.ip, 7000),
        "alpha reaches storaged:7000"
    );
    assert!(
        !tcp_echo(&ns_a1, storaged.ip, 7001),
        "alpha reached storaged on another port"
    );
    assert!(
        !tcp_echo(&ns_b2, storaged.ip, 7000),
        "beta reached storaged"
    );

    // Anti-spoofing on the sender's host (a4 and a3 share h3, so nothing else stands in the
    // way), and across hosts.
    eventually("a4 pings a3 on the same host", || ping(&ns_a4, a3.ip));
    check_anti_spoofing(&ns_a4, &a4, &ns_a3, &a3);
    check_anti_spoofing(&ns_a1, &a1, &ns_a3, &a3);

    // No rules about beta's VMs on h1, which holds no VM they may talk to.
    let h1_flows = lab.flows(lab.host_index("h1"), "br-int");
    for vm in [&b2, &b3] {
        assert!(
            !h1_flows.contains(&format!("={},", vm.ip)),
            "h1 has rules about {}: {h1_flows}",
            vm.vm
        );
    }

    // A second apply changes nothing: no database write, the same flows.
    let before: Vec<(String, String)> = (0..3)
        .map(|i| (lab.next_cfg(i), lab.flows(i, "br-int")))
        .collect();
    let second = netctl.apply().expect("second apply");
    assert_eq!(second.change_count(), 0, "second apply changed: {second}");
    let after: Vec<(String, String)> = (0..3)
        .map(|i| (lab.next_cfg(i), lab.flows(i, "br-int")))
        .collect();
    assert_eq!(before, after, "the second apply touched OVS");

    // What leaves the file is removed: b3's port, its flows and its allocation.
    let cluster = lab.write_cluster(&cluster_body(&VMS[..4]));
    let netctl = Netctl::open(&cluster).expect("cluster file");
    assert!(netctl.plan().expect("plan").change_count() > 0);
    netctl.apply().expect("apply without b3");
    let h3 = lab.host_index("h3");
    let ports_h3 = lab.vsctl(h3, "list-ports br-int");
    assert!(
        !ports_h3.lines().any(|p| p == b3.interface),
        "b3's port stayed: {ports_h3}"
    );
    assert!(
        !lab.flows(h3, "br-int").contains(&b3.ip.to_string()),
        "b3's flows stayed"
    );
    assert!(netctl.port("b3").is_err(), "b3's allocation stayed");
    assert_eq!(netctl.plan().expect("plan").change_count(), 0);
    eventually("a1 still pings a3", || ping(&ns_a1, a3.ip));
}

/// A VM may send only from its own address and MAC: forged packets never arrive. The
/// sender holds a static neighbour entry for the peer, so it sends IP without ARP (whose
/// anti-spoofing is a separate rule).
fn check_anti_spoofing(ns: &str, vm: &VmPort, peer_ns: &str, peer: &VmPort) {
    lab::static_neighbour(ns, peer);
    let received = || icmp_echoes_received(peer_ns);
    let start = received();
    ping_from(ns, vm.ip, peer.ip, 2);
    let honest = received();
    assert!(honest > start, "the control pings did not arrive");

    cmd(&format!("ip -n {ns} addr add 10.10.0.99/24 dev eth0"));
    ping_from(ns, "10.10.0.99".parse().expect("address"), peer.ip, 3);
    assert_eq!(received(), honest, "packets from a forged address arrived");
    cmd(&format!("ip -n {ns} addr del 10.10.0.99/24 dev eth0"));

    // Changing the MAC flushes the neighbour table: restore the entry.
    cmd(&format!(
        "ip -n {ns} link set eth0 address 02:00:00:00:00:99"
    ));
    lab::static_neighbour(ns, peer);
    ping_from(ns, vm.ip, peer.ip, 3);
    assert_eq!(received(), honest, "packets from a forged MAC arrived");
    cmd(&format!("ip -n {ns} link set eth0 address {}", vm.mac));
    cmd(&format!(
        "ip -n {ns} route replace default via {}",
        vm.gateway
    ));
    lab::static_neighbour(ns, peer);
    ping_from(ns, vm.ip, peer.ip, 1);
    assert!(
        received() > honest,
        "pings from the real MAC stopped arriving"
    );
}
