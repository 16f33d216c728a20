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

/// A VM's port and the namespace that stands in for the VM.
struct Vm {
    port: VmPort,
    ns: String,
}

/// The VMs of `VMS` and the service, each attached to a namespace of the lab.
struct Vms {
    a1: Vm,
    a3: Vm,
    a4: Vm,
    b2: Vm,
    b3: Vm,
    storaged: Vm,
}

impl Vms {
    fn attach(lab: &mut Lab, netctl: &Netctl) -> Vms {
        let mut vm = |name: &str| {
            let port = netctl.port(name).expect("port");
            let ns = lab.attach(&port);
            Vm { port, ns }
        };
        let vms = Vms {
            a1: vm("a1"),
            a3: vm("a3"),
            a4: vm("a4"),
            b2: vm("b2"),
            b3: vm("b3"),
            storaged: vm("storaged"),
        };
        lab.serve(&vms.a3.ns, 5000, None);
        lab.serve(&vms.storaged.ns, 7000, None);
        lab.serve(&vms.storaged.ns, 7001, None);
        vms
    }
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
    let vms = Vms::attach(&mut lab, &netctl);
    check_projects(&vms);
    check_service(&vms);
    // Anti-spoofing on the sender's host (a4 and a3 share h3, so nothing else stands in the
    // way), and across hosts.
    let (a1, a3, a4) = (&vms.a1, &vms.a3, &vms.a4);
    eventually("a4 pings a3 on the same host", || ping(&a4.ns, a3.port.ip));
    check_anti_spoofing(&a4.ns, &a4.port, &a3.ns, &a3.port);
    check_anti_spoofing(&a1.ns, &a1.port, &a3.ns, &a3.port);
    // No rules about beta's VMs on h1, which holds no VM they may talk to.
    let h1_flows = lab.flows(lab.host_index("h1"), "br-int");
    for vm in [&vms.b2.port, &vms.b3.port] {
        assert!(
            !h1_flows.contains(&format!("={},", vm.ip)),
            "h1 has rules about {}: {h1_flows}",
            vm.vm
        );
    }
    check_second_apply_changes_nothing(&lab, &netctl);
    check_what_leaves_the_file_goes(&mut lab, &vms);
}

/// One project reaches itself across hosts; other projects reach it neither across hosts nor
/// on the same host, not even with a static neighbour entry (so it is the flows that stop
/// them, not ARP).
fn check_projects(vms: &Vms) {
    let (a1, a3, b2, b3) = (&vms.a1, &vms.a3, &vms.b2, &vms.b3);
    eventually("a1 pings a3 across hosts", || ping(&a1.ns, a3.port.ip));
    assert!(tcp_echo(&a1.ns, a3.port.ip, 5000), "a1 -> a3 TCP echo");
    eventually("b2 pings b3 across hosts", || ping(&b2.ns, b3.port.ip));

    assert!(!ping(&b2.ns, a1.port.ip), "beta reached alpha across hosts");
    assert!(
        !ping(&b3.ns, a3.port.ip),
        "beta reached alpha on the same host"
    );
    lab::static_neighbour(&b3.ns, &a3.port);
    let before = icmp_echoes_received(&a3.ns);
    ping_from(&b3.ns, b3.port.ip, a3.port.ip, 3);
    let after = icmp_echoes_received(&a3.ns);
    assert_eq!(after, before, "beta's packets reached alpha");
    assert!(
        !tcp_echo(&b3.ns, a3.port.ip, 5000),
        "beta reached alpha over TCP"
    );
}

/// The service: its port, from the projects that list it, only.
fn check_service(vms: &Vms) {
    let service = vms.storaged.port.ip;
    assert!(
        tcp_echo(&vms.a1.ns, service, 7000),
        "alpha reaches storaged:7000"
    );
    let other_port = tcp_echo(&vms.a1.ns, service, 7001);
    assert!(!other_port, "alpha reached storaged on another port");
    assert!(
        !tcp_echo(&vms.b2.ns, service, 7000),
        "beta reached storaged"
    );
}

/// A second apply changes nothing: no database write, the same flows.
fn check_second_apply_changes_nothing(lab: &Lab, netctl: &Netctl) {
    let state = || -> Vec<(String, String)> {
        (0..3)
            .map(|i| (lab.next_cfg(i), lab.flows(i, "br-int")))
            .collect()
    };
    let before = state();
    let second = netctl.apply().expect("second apply");
    assert_eq!(second.change_count(), 0, "second apply changed: {second}");
    assert_eq!(before, state(), "the second apply touched OVS");
}

/// What leaves the file is removed: b3's port, its flows and its allocation.
fn check_what_leaves_the_file_goes(lab: &mut Lab, vms: &Vms) {
    let b3 = &vms.b3.port;
    let cluster = lab.write_cluster(&cluster_body(&VMS[..4]));
    let netctl = Netctl::open(&cluster).expect("cluster file");
    assert!(netctl.plan().expect("plan").change_count() > 0);
    netctl.apply().expect("apply without b3");
    let h3 = lab.host_index("h3");
    let ports_h3 = lab.vsctl(h3, "list-ports br-int");
    let stayed = ports_h3.lines().any(|p| p == b3.interface);
    assert!(!stayed, "b3's port stayed: {ports_h3}");
    let flows = lab.flows(h3, "br-int");
    assert!(!flows.contains(&b3.ip.to_string()), "b3's flows stayed");
    assert!(netctl.port("b3").is_err(), "b3's allocation stayed");
    assert_eq!(netctl.plan().expect("plan").change_count(), 0);
    eventually("a1 still pings a3", || ping(&vms.a1.ns, vms.a3.port.ip));
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
