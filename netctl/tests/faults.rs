//! A host whose ovs-vswitchd is stopped, and a step that fails on one host: clear errors,
//! nothing half-done, and a later apply converges. A VM's device deleted and created again on
//! the same host: reattached. Root and real OVS; see lab/mod.rs.

mod lab;

use std::process::Command;

use lab::{Lab, eventually, ping};
use netctl::{Error, Netctl};

/// This test runs its tunnels over VXLAN (the others use the default, GENEVE).
const VXLAN: &str = "tunnel = \"vxlan\"";

/// alpha with a1 on h1 and a2 on h2, and maybe more VMs.
fn cluster_body(extra: &str) -> String {
    let vms = lab::vm("a1", "h1", "alpha", None) + &lab::vm("a2", "h2", "alpha", None);
    lab::project("alpha", &[]) + &vms + extra
}

#[test]
fn stopped_vswitchd_changes_nothing_and_a_failed_step_converges_later() {
    let mut lab = Lab::new("flt", 2);
    let cluster = lab.write_cluster_with(VXLAN, &cluster_body(""));
    let netctl = Netctl::open(&cluster).expect("cluster file");
    netctl.apply().expect("first apply");
    assert_eq!(lab.vsctl(0, "get Interface nt-h2 type").trim(), "vxlan");
    let (a1, a2) = (
        netctl.port("a1").expect("a1"),
        netctl.port("a2").expect("a2"),
    );
    let (ns_a1, _ns_a2) = (lab.attach(&a1), lab.attach(&a2));
    eventually("a1 pings a2", || ping(&ns_a1, a2.ip));

    let netctl = check_a_stopped_vswitchd_changes_nothing(&mut lab);

    // Back up: apply converges, traffic flows, and a second apply has nothing to do.
    lab.restart_vswitchd(1);
    netctl.apply().expect("apply after the restart");
    eventually("a1 pings a2 after the restart", || ping(&ns_a1, a2.ip));
    assert_eq!(netctl.apply().expect("again").change_count(), 0);

    check_a_step_that_fails_on_one_host(&lab, &netctl);

    // Once the number is free (OVS may then renumber the port itself), apply converges.
    lab.vsctl(0, "del-port br-phy intruder");
    netctl.apply().expect("apply once the port number is free");
    assert_eq!(netctl.apply().expect("again").change_count(), 0);
    let status = netctl.status().expect("status").to_string();
    assert!(
        !status.contains("problem: ") && !status.contains("UNREACHABLE"),
        "{status}"
    );
    eventually("a1 pings a2 at the end", || ping(&ns_a1, a2.ip));
}

/// h2's vswitchd stops and the file gains a VM, which would change both hosts: nothing
/// changes anywhere, the command line says why in one line, and status shows h2 unreachable.
/// Returns the controller of the new file.
fn check_a_stopped_vswitchd_changes_nothing(lab: &mut Lab) -> Netctl {
    lab.stop_vswitchd(1);
    let cluster = lab.write_cluster_with(VXLAN, &cluster_body(&lab::vm("a5", "h1", "alpha", None)));
    let netctl = Netctl::open(&cluster).expect("cluster file");
    let state_before = std::fs::read(netctl.store().path()).expect("state file");
    let h1_before = lab.next_cfg(0);
    let error = netctl.apply().expect_err("apply with h2 down");
    lab::assert_unreachable(error, "h2", "br-int.mgmt");
    assert_eq!(
        lab.next_cfg(0),
        h1_before,
        "h1 changed although h2 could not be read"
    );
    assert_eq!(
        std::fs::read(netctl.store().path()).expect("state"),
        state_before
    );

    let output = Command::new(env!("CARGO_BIN_EXE_netctl"))
        .arg("--cluster")
        .arg(&cluster)
        .arg("apply")
        .output()
        .expect("run netctl");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("host `h2`"), "{stderr}");
    let status = netctl.status().expect("status").to_string();
    assert!(status.contains("host h2: UNREACHABLE"), "{status}");
    assert!(status.contains("drift: "), "{status}");

    netctl
}

/// A step that fails on h1 only: another port holds the OpenFlow port number netctl's patch
/// port needs on br-phy. h2 is applied, h1 reports the problem.
fn check_a_step_that_fails_on_one_host(lab: &Lab, netctl: &Netctl) {
    lab.vsctl(0, "del-port br-phy nc-int");
    lab.vsctl(
        0,
        "add-port br-phy intruder -- set Interface intruder type=internal ofport_request=65000",
    );
    let error = netctl
        .apply()
        .expect_err("apply with the port number taken");
    let message = error.to_string();
    match &error {
        Error::Apply { failed, applied } => {
            assert_eq!(failed.len(), 1, "{message}");
            assert_eq!(failed[0].host, "h1", "{message}");
            assert_eq!(applied, &["h2".to_string()], "{message}");
        }
        other => panic!("expected a failed apply, got: {other}"),
    }
    assert!(
        message.contains("65000") && message.contains("apply again"),
        "{message}"
    );
    let status = netctl.status().expect("status").to_string();
    assert!(status.contains("problem: "), "{status}");
}

#[test]
fn a_device_created_again_on_the_same_host_is_reattached() {
    let mut lab = Lab::new("rat", 2);
    let cluster = lab.write_cluster(&cluster_body(""));
    let netctl = Netctl::open(&cluster).expect("cluster file");
    netctl.apply().expect("first apply");
    let (a1, a2) = (
        netctl.port("a1").expect("a1"),
        netctl.port("a2").expect("a2"),
    );
    let (ns_a1, _ns_a2) = (lab.attach(&a1), lab.attach(&a2));
    eventually("a1 pings a2", || ping(&ns_a1, a2.ip));

    // The VM stops and starts again on the same host: its device goes, and a new one comes
    // with the same name. Reattached, it answers on the same OpenFlow port, and apply has
    // nothing left to do.
    lab.detach(&a1);
    lab.attach(&a1);
    let port = netctl.reattach("a1").expect("reattach");
    assert_eq!(port, a1);
    assert_eq!(
        lab.vsctl(0, &format!("get Interface {} ofport", a1.interface))
            .trim(),
        a1.ofport.to_string()
    );
    eventually("a1 pings a2 after its device came back", || {
        ping(&ns_a1, a2.ip)
    });
    assert_eq!(netctl.apply().expect("apply").change_count(), 0);

    // The command line does the same; an unknown VM is a clear error.
    let output = Command::new(env!("CARGO_BIN_EXE_netctl"))
        .arg("--cluster")
        .arg(&cluster)
        .args(["vm", "reattach", "a2"])
        .output()
        .expect("run netctl");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.starts_with("reattached a2 host h2"), "{stdout}");
    eventually("a1 pings a2 after reattaching a2", || ping(&ns_a1, a2.ip));
    let error = netctl.reattach("ghost").expect_err("unknown VM");
    assert!(error.to_string().contains("no VM named `ghost`"), "{error}");

    // Without its device, reattaching says so and leaves the port waiting for it, as before a
    // first start; the device that comes then is attached.
    lab.detach(&a1);
    let error = netctl
        .reattach("a1")
        .expect_err("reattach without a device");
    let message = error.to_string();
    assert!(matches!(error, Error::NoDevice { .. }), "{message}");
    assert!(
        message.contains(&a1.interface) && message.contains("host `h1`"),
        "{message}"
    );
    lab.attach(&a1);
    eventually("a1 pings a2 once its device is back", || {
        ping(&ns_a1, a2.ip)
    });
}
