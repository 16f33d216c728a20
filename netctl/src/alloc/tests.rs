//! Allocation against a simple model of what the file asks for.

use std::net::Ipv4Addr;
use std::path::Path;

use super::*;

const BASE: &str = r#"
expose_ports = "20000-20009"
[[host]]
name = "h1"
ovsdb = "unix:/run/h1/db.sock"
underlay_ip = "192.168.50.1"
external_bridge = "br-phy"
[[host]]
name = "h2"
ovsdb = "unix:/run/h2/db.sock"
underlay_ip = "192.168.50.2"
external_bridge = "br-phy"
[[network]]
name = "n"
cidr = "10.10.0.0/24"
gateway = "10.10.0.1"
tunnel_key = 5
[[project]]
name = "p"
[[service]]
name = "s"
host = "h1"
network = "n"
address = "10.10.0.2"
port = 7000
"#;

fn cluster(vms: &str) -> Cluster {
    Cluster::parse(&format!("{BASE}{vms}"), Path::new("/tmp")).expect("valid cluster")
}

fn vm(name: &str, host: &str, address: Option<&str>) -> String {
    let address = address.map_or(String::new(), |a| format!("address = \"{a}\"\n"));
    format!(
        "[[vm]]\nname = \"{name}\"\nhost = \"{host}\"\nproject = \"p\"\nnetwork = \"n\"\n{address}"
    )
}

fn ip(text: &str) -> Ipv4Addr {
    text.parse().expect("address")
}

#[test]
fn lowest_free_addresses_and_stable_on_repeat() {
    let cluster = cluster(&(vm("a", "h1", None) + &vm("b", "h2", None)));
    let mut state = State::default();
    let changes = reconcile(&cluster, &mut state).expect("reconcile");
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert_eq!(
        state.ports["a"].ip,
        ip("10.10.0.3"),
        "gateway and service skipped"
    );
    assert_eq!(state.ports["b"].ip, ip("10.10.0.4"));
    assert_eq!(state.ports["a"].mac, port_mac(state.ports["a"].index));
    let before = state.clone();
    assert!(reconcile(&cluster, &mut state).expect("again").is_empty());
    assert_eq!(state, before);
}

#[test]
fn a_moved_vm_stays_until_the_file_names_another_host() {
    let mut state = State::default();
    let on_h1 = cluster(&vm("a", "h1", None));
    reconcile(&on_h1, &mut state).expect("reconcile");
    let (mac, address) = (state.ports["a"].mac, state.ports["a"].ip);
    expose(&on_h1, &mut state, "a", 22).expect("expose");
    move_port(&on_h1, &mut state, "a", "h2").expect("move");
    reconcile(&on_h1, &mut state).expect("reconcile");
    assert_eq!(state.ports["a"].host, "h2", "reconcile undid the move");
    assert_eq!((state.ports["a"].mac, state.ports["a"].ip), (mac, address));
    assert_eq!(state.exposures.len(), 1, "the exposure stays");
    let changes = reconcile(&cluster(&vm("a", "h2", None)), &mut state).expect("file says h2");
    assert!(changes.is_empty(), "{changes:?}");
    let changes = reconcile(&on_h1, &mut state).expect("file says h1");
    assert_eq!(state.ports["a"].host, "h1");
    assert!(
        matches!(&changes[..], [StateChange::PortMoved { .. }]),
        "{changes:?}"
    );
}

#[test]
fn leaving_the_file_releases_the_port_and_its_exposures() {
    let mut state = State::default();
    let both = cluster(&(vm("a", "h1", None) + &vm("b", "h1", None)));
    reconcile(&both, &mut state).expect("reconcile");
    let freed = state.ports["a"].ip;
    expose(&both, &mut state, "a", 22).expect("expose");
    let changes = reconcile(&cluster(&vm("b", "h1", None)), &mut state).expect("a left");
    assert!(!state.ports.contains_key("a"));
    assert!(state.exposures.is_empty());
    assert_eq!(changes.len(), 2, "{changes:?}");
    reconcile(
        &cluster(&(vm("b", "h1", None) + &vm("c", "h2", None))),
        &mut state,
    )
    .expect("c");
    assert_eq!(
        state.ports["c"].ip, freed,
        "the freed address is given again"
    );
}

#[test]
fn a_fixed_address_displaces_an_assigned_one_and_a_new_range_readdresses() {
    let mut state = State::default();
    reconcile(&cluster(&vm("a", "h1", None)), &mut state).expect("reconcile");
    assert_eq!(state.ports["a"].ip, ip("10.10.0.3"));
    let fixed = cluster(&(vm("b", "h1", Some("10.10.0.3")) + &vm("a", "h1", None)));
    reconcile(&fixed, &mut state).expect("b takes .3");
    assert_eq!(state.ports["b"].ip, ip("10.10.0.3"));
    assert_ne!(state.ports["a"].ip, ip("10.10.0.3"));
    let moved = BASE.replace("10.10.0.", "10.20.0.");
    let text = format!("{moved}{}", vm("a", "h1", None));
    let renumbered = Cluster::parse(&text, Path::new("/tmp")).expect("valid");
    let changes = reconcile(&renumbered, &mut state).expect("new range");
    assert!(renumbered.networks[0].cidr.contains(state.ports["a"].ip));
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, StateChange::PortReaddressed { .. })),
        "{changes:?}"
    );
}

#[test]
fn library_ports_must_keep_their_host_and_project() {
    let mut state = State::default();
    let full = cluster("");
    let request = PortRequest {
        vm: "x".to_string(),
        host: "h2".to_string(),
        project: "p".to_string(),
        network: "n".to_string(),
        address: None,
    };
    add_port(&full, &mut state, &request).expect("add");
    add_port(&full, &mut state, &request).expect("asking again is fine");
    let mut elsewhere = request.clone();
    elsewhere.host = "h1".to_string();
    assert!(matches!(
        add_port(&full, &mut state, &elsewhere),
        Err(AllocError::VmExists { .. })
    ));
    let without_h2 = Cluster::parse(
        &BASE.replace("name = \"h2\"", "name = \"h3\""),
        Path::new("/tmp"),
    )
    .expect("valid");
    let error = reconcile(&without_h2, &mut state).expect_err("orphan");
    assert!(
        error
            .to_string()
            .contains("names host `h2`, which left the cluster file"),
        "{error}"
    );
    remove_port(&mut state, "x").expect("remove");
    reconcile(&without_h2, &mut state).expect("no orphan left");
    assert!(matches!(
        remove_port(&mut state, "s"),
        Err(AllocError::DeclaredInFile { .. })
    ));
}
