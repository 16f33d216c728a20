//! Bad input: each a clear error before anything changes. Needs no OVS daemons (only the
//! lab's cluster file pieces).

mod lab;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use lab::vm;
use netctl::{AllocError, Cluster, ConfigError, Error, Netctl, PortRequest};

const HOSTS: &str = r#"
state = "state.json"
expose_ports = "20000-20001"

[[host]]
name = "h1"
ovsdb = "unix:/nonexistent/h1/db.sock"
underlay_ip = "192.168.50.1"
external_bridge = "br-phy"
libvirt_uri = "qemu+ssh://h1/system"
cpus = 8
memory_mib = 16384

[[host]]
name = "h2"
ovsdb = "unix:/nonexistent/h2/db.sock"
underlay_ip = "192.168.50.2"
"#;

/// The hosts, the research network, project alpha and the storaged service it may use.
fn base() -> String {
    let project = lab::project("alpha", &["storaged"]);
    format!(
        "{HOSTS}{}{project}{}",
        lab::NETWORK,
        lab::service("storaged", "h2", "10.10.0.2", 7000)
    )
}

fn parse(extra: &str) -> Result<Cluster, ConfigError> {
    Cluster::parse(&(base() + extra), Path::new("/tmp"))
}

fn error_of(extra: &str) -> String {
    parse(extra).expect_err("invalid cluster file").to_string()
}

#[test]
fn a_valid_file_with_vmctl_fields_loads() {
    let cluster = parse(&vm("a1", "h1", "alpha", Some("10.10.0.9"))).expect("valid");
    let h1 = cluster.host("h1").expect("h1");
    assert_eq!(h1.libvirt_uri.as_deref(), Some("qemu+ssh://h1/system"));
    assert_eq!((h1.cpus, h1.memory_mib), (Some(8), Some(16384)));
    assert_eq!(
        h1.openflow_dir().expect("dir"),
        Path::new("/nonexistent/h1")
    );
    assert_eq!(cluster.state_path, Path::new("/tmp/state.json"));
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let text = base().replace("cpus = 8", "cpus = 8\ncolour = \"red\"");
    let error = Cluster::parse(&text, Path::new("/tmp"))
        .expect_err("unknown key")
        .to_string();
    assert!(
        error.contains("unknown field `colour`") && error.contains("line 12"),
        "{error}"
    );
    assert!(error_of("\n[[vm]]\nname = \"a1\"\nhost = \"h1\"\nproject = \"alpha\"\nnetwork = \"research\"\nimage = \"x\"\n").contains("unknown field `image`"));
    assert!(error_of("\nbogus = 1\n").contains("unknown field `bogus`"));
}

#[test]
fn bad_ranges_addresses_and_names_are_refused() {
    let overlap = "\n[[network]]\nname = \"other\"\ncidr = \"10.10.0.128/25\"\ngateway = \"10.10.0.129\"\ntunnel_key = 101\n";
    assert!(
        error_of(overlap).contains("overlap"),
        "{}",
        error_of(overlap)
    );
    let cases = [
        (vm("a1", "h1", "alpha", Some("10.20.0.5")), "not usable in network `research`"),
        (vm("a1", "h1", "alpha", Some("10.10.0.255")), "not usable"),
        (vm("a1", "h1", "alpha", Some("10.10.0.1")), "taken by the gateway"),
        (vm("a1", "h1", "alpha", Some("10.10.0.2")), "taken by service `storaged`"),
        (vm("a1", "h1", "alpha", Some("10.10.0.7")) + &vm("a2", "h1", "alpha", Some("10.10.0.7")), "taken by vm `a1`"),
        (vm("a1", "h1", "alpha", None) + &vm("a1", "h2", "alpha", None), "two vm or service entries are named `a1`"),
        (vm("storaged", "h1", "alpha", None), "named `storaged`"),
        (vm("a1", "h9", "alpha", None), "vm `a1` names host `h9`, which is not defined"),
        (vm("a1", "h1", "gamma", None), "vm `a1` names project `gamma`, which is not defined"),
        (vm("Bad_Name", "h1", "alpha", None), "vm name `Bad_Name`"),
        ("\n[[project]]\nname = \"beta\"\nservices = [\"nope\"]\n".to_string(), "names service `nope`"),
        ("\n[[project]]\nname = \"alpha\"\n".to_string(), "two project entries are named `alpha`"),
        ("\n[[network]]\nname = \"n2\"\ncidr = \"10.30.0.0/24\"\ngateway = \"10.30.0.1\"\ntunnel_key = 100\n".to_string(), "tunnel_key"),
        ("\n[[network]]\nname = \"n2\"\ncidr = \"10.30.0.1/24\"\ngateway = \"10.30.0.1\"\ntunnel_key = 7\n".to_string(), "host bits set"),
        ("\n[[network]]\nname = \"n2\"\ncidr = \"10.0.0.0/8\"\ngateway = \"10.0.0.1\"\ntunnel_key = 7\n".to_string(), "between /16 and /29"),
        ("\n[[network]]\nname = \"n2\"\ncidr = \"192.168.50.0/24\"\ngateway = \"192.168.50.254\"\ntunnel_key = 7\n".to_string(), "underlay_ip"),
    ];
    for (extra, expected) in cases {
        let error = error_of(&extra);
        assert!(
            error.contains(expected),
            "expected `{expected}` in: {error}"
        );
    }
    let duplicate_host = HOSTS.replace("name = \"h2\"", "name = \"h1\"");
    let error = Cluster::parse(&duplicate_host, Path::new("/tmp"))
        .expect_err("dup")
        .to_string();
    assert!(error.contains("two host entries are named `h1`"), "{error}");
    let bad_pool = base().replace("20000-20001", "30000-20000");
    let error = Cluster::parse(&bad_pool, Path::new("/tmp"))
        .expect_err("pool")
        .to_string();
    assert!(error.contains("port range"), "{error}");
}

/// A controller over a temporary state store (no OVS is contacted by allocation).
fn controller(dir: &Path, extra: &str) -> Netctl {
    let text = base() + extra;
    let cluster = Cluster::parse(&text, dir).expect("valid");
    Netctl::new(cluster).expect("controller")
}

#[test]
fn exhausted_pools_and_taken_addresses_change_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let netctl = controller(dir.path(), &vm("a1", "h1", "alpha", None));
    let state_path = netctl.store().path().to_path_buf();
    for port in [22, 80] {
        netctl.expose("a1", port).expect("expose");
    }
    let again = netctl
        .expose("a1", 22)
        .expect("exposing again returns the same");
    assert_eq!(again.address.to_string(), "192.168.50.1:20000");
    let before = std::fs::read(&state_path).expect("state");
    let error = netctl.expose("a1", 443).expect_err("pool of two");
    assert!(
        matches!(error, Error::Alloc(AllocError::PoolExhausted { .. })),
        "{error}"
    );
    assert!(
        error.to_string().contains("20000-20001 is exhausted"),
        "{error}"
    );
    assert_eq!(std::fs::read(&state_path).expect("state"), before);

    let request = |vm: &str, address: Option<&str>| PortRequest {
        vm: vm.to_string(),
        host: "h2".to_string(),
        project: "alpha".to_string(),
        network: "research".to_string(),
        address: address.map(|a| a.parse().expect("address")),
    };
    let taken = netctl.port("a1").expect("a1").ip.to_string();
    let error = netctl
        .allocate_port(&request("x1", Some(&taken)))
        .expect_err("taken");
    assert!(
        error.to_string().contains("already taken by `a1`"),
        "{error}"
    );
    let error = netctl
        .allocate_port(&request("x1", Some("10.10.1.1")))
        .expect_err("outside");
    assert!(error.to_string().contains("not usable"), "{error}");
    let mut unknown = request("x1", None);
    unknown.host = "h9".to_string();
    let error = netctl.allocate_port(&unknown).expect_err("unknown host");
    assert!(error.to_string().contains("no host named `h9`"), "{error}");
    let error = netctl
        .move_vm("a1", "h2")
        .expect_err("h2 has no external bridge");
    assert!(error.to_string().contains("no external_bridge"), "{error}");
    assert_eq!(std::fs::read(&state_path).expect("state"), before);
}

#[test]
fn a_full_network_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = base().replace("10.10.0.0/24", "10.10.0.0/29");
    let netctl =
        Netctl::new(Cluster::parse(&text, dir.path()).expect("valid")).expect("controller");
    // A /29 has 6 usable addresses: the gateway and storaged hold two.
    for i in 0..4 {
        let request = PortRequest {
            vm: format!("v{i}"),
            host: "h1".to_string(),
            project: "alpha".to_string(),
            network: "research".to_string(),
            address: None,
        };
        netctl.allocate_port(&request).expect("room left");
    }
    let request = PortRequest {
        vm: "v4".to_string(),
        host: "h1".to_string(),
        project: "alpha".to_string(),
        network: "research".to_string(),
        address: None,
    };
    let error = netctl.allocate_port(&request).expect_err("full");
    assert!(
        error.to_string().contains("has no free address left"),
        "{error}"
    );
}

#[test]
fn concurrent_runs_never_hand_out_the_same_address() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = Arc::new(base());
    let dir_path = Arc::new(dir.path().to_path_buf());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (text, dir_path) = (text.clone(), dir_path.clone());
            std::thread::spawn(move || {
                // Each thread is its own "run": its own controller and its own lock file handle.
                let netctl = Netctl::new(Cluster::parse(&text, &dir_path).expect("valid"))
                    .expect("controller");
                (0..8)
                    .map(|i| {
                        let request = PortRequest {
                            vm: format!("t{t}-{i}"),
                            host: if i % 2 == 0 { "h1" } else { "h2" }.to_string(),
                            project: "alpha".to_string(),
                            network: "research".to_string(),
                            address: None,
                        };
                        netctl.allocate_port(&request).expect("allocate")
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let ports: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    assert_eq!(ports.len(), 64);
    let mut ips: Vec<_> = ports.iter().map(|p| p.ip).collect();
    let mut macs: Vec<_> = ports.iter().map(|p| p.mac).collect();
    let mut interfaces: Vec<_> = ports.iter().map(|p| p.interface.clone()).collect();
    for list_len in [
        {
            ips.sort();
            ips.dedup();
            ips.len()
        },
        {
            macs.sort();
            macs.dedup();
            macs.len()
        },
        {
            interfaces.sort();
            interfaces.dedup();
            interfaces.len()
        },
    ] {
        assert_eq!(
            list_len, 64,
            "two runs handed out the same address, MAC or interface"
        );
    }
    let netctl = Netctl::new(Cluster::parse(&text, &dir_path).expect("valid")).expect("controller");
    assert_eq!(
        netctl.ports().expect("ports").len(),
        64,
        "an allocation was lost"
    );
}

#[test]
fn an_unreachable_database_is_an_error_before_anything_changes() {
    assert!(
        Command::new("ovs-vsctl").arg("--version").output().is_ok(),
        "this test needs ovs-vsctl (package openvswitch-switch; run scripts/setup.sh)"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let netctl = controller(dir.path(), &vm("a1", "h1", "alpha", None));
    let error = netctl.apply().expect_err("no database");
    lab::assert_unreachable(error, "h1", "database connection failed");
    assert!(
        !netctl.store().path().exists(),
        "the state store was written"
    );
}

#[test]
fn cli_errors_are_one_line_and_help_lists_the_commands() {
    let binary = env!("CARGO_BIN_EXE_netctl");
    let help = Command::new(binary)
        .arg("--help")
        .output()
        .expect("netctl --help");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success());
    for command in ["plan", "apply", "status", "expose", "unexpose", "vm"] {
        assert!(text.contains(command), "--help lacks {command}: {text}");
    }
    let vm_help = Command::new(binary)
        .args(["vm", "--help"])
        .output()
        .expect("netctl vm --help");
    let text = String::from_utf8_lossy(&vm_help.stdout);
    for command in ["add", "remove", "move", "show", "list"] {
        assert!(text.contains(command), "vm --help lacks {command}: {text}");
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = dir.path().join("cluster.toml");
    std::fs::write(&cluster, base() + &vm("a1", "h9", "alpha", None)).expect("write");
    for args in [
        vec!["plan"],
        vec!["vm", "show", "a1"],
        vec!["expose", "a1", "--port", "22"],
    ] {
        let output = Command::new(binary)
            .arg("--cluster")
            .arg(&cluster)
            .args(&args)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains("names host `h9`"), "{args:?}: {stderr}");
    }
    let output = Command::new(binary)
        .args(["--cluster", "/nonexistent/cluster.toml", "plan"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("cannot read cluster file"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("state.json").exists(),
        "a bad file wrote state"
    );
}
