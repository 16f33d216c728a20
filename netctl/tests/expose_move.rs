//! Port forwards from outside and VM moves between hosts, through the command line. Root and
//! real OVS; see lab/mod.rs.

mod lab;

use std::path::Path;
use std::process::Command;

use lab::{Lab, cmd, eventually, ping, tcp_echo, tcp_exchange};
use netctl::{Netctl, VmPort};

/// Runs the netctl binary; returns stdout, or panics with stderr.
fn netctl_cli(cluster: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_netctl"))
        .arg("--cluster")
        .arg(cluster)
        .args(args)
        .output()
        .expect("run netctl");
    assert!(
        output.status.success(),
        "netctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn exposed_port_reaches_only_that_port_and_follows_a_moved_vm() {
    let mut lab = Lab::new("exp", 3);
    let body = lab::project("alpha", &[]) + &lab::vm("a1", "h1", "alpha", None);
    let cluster = lab.write_cluster(&(body + &lab::vm("a3", "h3", "alpha", None)));
    netctl_cli(&cluster, &["apply"]);
    let netctl = Netctl::open(&cluster).expect("cluster file");
    let a1 = netctl.port("a1").expect("a1");
    let a3 = netctl.port("a3").expect("a3");
    let ns_a1 = lab.attach(&a1);
    let ns_a3 = lab.attach(&a3);
    lab.serve(&ns_a1, 22, None);
    lab.serve(&ns_a1, 80, Some("wrong-port"));
    let client = lab.client();
    let (h1, h2) = (lab.hosts[0].ip, lab.hosts[1].ip);

    // Expose a1:22; the command prints the address to use.
    let printed = netctl_cli(&cluster, &["expose", "a1", "--port", "22"]);
    let address = printed
        .lines()
        .last()
        .expect("an address")
        .trim()
        .to_string();
    assert_eq!(address, format!("{h1}:20000"), "{printed}");
    eventually("the client reaches a1:22 through h1:20000", || {
        tcp_echo(&client, h1, 20000)
    });
    assert!(
        !tcp_echo(&client, h1, 20001),
        "an unexposed pool port answered"
    );
    cmd(&format!("ip -n {client} route add 10.10.0.0/24 via {h1}"));
    assert_eq!(
        tcp_exchange(&client, a1.ip, 80, "hello"),
        "",
        "the client reached a1:80"
    );
    assert!(
        !tcp_echo(&client, a1.ip, 22),
        "the client reached a1:22 directly"
    );
    assert_no_exposure_rules(&lab, &[1, 2]);

    move_a1_to_h2(&mut lab, &cluster, &netctl, &a1, &ns_a3);

    // The exposure followed: same host port, now on h2, and gone from h1.
    let exposures = netctl.exposures().expect("exposures");
    assert_eq!(exposures.len(), 1);
    assert_eq!(exposures[0].address.to_string(), format!("{h2}:20000"));
    eventually("the client reaches a1:22 through h2:20000", || {
        tcp_echo(&client, h2, 20000)
    });
    assert!(!tcp_echo(&client, h1, 20000), "h1 still forwards 20000");
    assert_no_exposure_rules(&lab, &[0, 2]);

    let printed = netctl_cli(&cluster, &["unexpose", "a1", "--port", "22"]);
    assert!(printed.contains("withdrawn"), "{printed}");
    assert!(
        !tcp_echo(&client, h2, 20000),
        "the withdrawn exposure answered"
    );
    assert_no_exposure_rules(&lab, &[0, 1, 2]);
    assert_eq!(netctl.plan().expect("plan").change_count(), 0);
}

/// Moves a1 to h2: the VM stops on h1 and starts on h2 with the same MAC and address, and h1
/// keeps no rule about it.
fn move_a1_to_h2(lab: &mut Lab, cluster: &Path, netctl: &Netctl, a1: &VmPort, ns_a3: &str) {
    lab.detach(a1);
    let printed = netctl_cli(cluster, &["vm", "move", "a1", "--to", "h2"]);
    assert!(printed.contains("a1 host h2"), "{printed}");
    let moved = netctl.port("a1").expect("a1");
    assert_eq!(
        (moved.host.as_str(), moved.mac, moved.ip, &moved.interface),
        ("h2", a1.mac, a1.ip, &a1.interface)
    );
    lab.attach(&moved);
    eventually("a3 reaches a1 at the same address on h2", || {
        ping(ns_a3, a1.ip)
    });
    assert!(tcp_echo(ns_a3, a1.ip, 22), "a3 -> a1 TCP after the move");
    let h1_flows = lab.flows(0, "br-int");
    assert!(
        !h1_flows.contains(&a1.ip.to_string()),
        "h1 kept rules about a1: {h1_flows}"
    );
}

/// The hosts (by index) hold no forwarding rule for host port 20000.
fn assert_no_exposure_rules(lab: &Lab, hosts: &[usize]) {
    for &index in hosts {
        for bridge in ["br-int", "br-phy"] {
            let flows = lab.flows(index, bridge);
            assert!(
                !flows.contains("20000"),
                "host {} has exposure rules on {bridge}: {flows}",
                lab.hosts[index].name
            );
        }
    }
}
