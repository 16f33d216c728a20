//! Against libvirt's `test:///default` driver (in-process, no daemon, no root): the domain
//! lifecycle vmctl drives (define, start, stop, destroy, list) with the XML it generates, and
//! create's bad-input checks, which all fail before any host's network is touched.

use std::path::Path;
use std::time::Duration;

use vmctl::domain::{Accel, DomainSpec, NicSpec};
use vmctl::host::{Host, VmState};
use vmctl::{CreateRequest, Error, Store, VaultRequest, Vmctl};

const TEST_URI: &str = "test:///default";

fn test_host() -> Host {
    let cluster =
        netctl::Cluster::parse(&cluster_text(TEST_URI, 4096), Path::new("/tmp")).expect("cluster");
    Host::open(&cluster.hosts[0]).expect("test driver")
}

fn cluster_text(uri: &str, memory_mib: u64) -> String {
    format!(
        "state = \"netctl.json\"\n\
         [[host]]\nname = \"h1\"\novsdb = \"unix:/nonexistent/db.sock\"\nunderlay_ip = \"192.168.50.1\"\n\
         libvirt_uri = \"{uri}\"\ncpus = 2\nmemory_mib = {memory_mib}\n\
         [[host]]\nname = \"h2\"\novsdb = \"unix:/nonexistent/db2.sock\"\nunderlay_ip = \"192.168.50.2\"\n\
         libvirt_uri = \"qemu:///system?socket=/nonexistent/libvirt-sock\"\ncpus = 2\nmemory_mib = {memory_mib}\n\
         [[network]]\nname = \"research\"\ncidr = \"10.10.0.0/24\"\ngateway = \"10.10.0.1\"\ntunnel_key = 100\n\
         [[project]]\nname = \"alpha\"\n"
    )
}

fn spec(name: &str) -> DomainSpec {
    DomainSpec {
        name: name.into(),
        uuid: vmctl::drive::new_uuid(),
        accel: Accel::Tcg,
        vcpus: 1,
        memory_mib: 128,
        kernel: "/images/tiny/vmlinuz".into(),
        initrd: Some("/images/tiny/initrd.img".into()),
        cmdline: "console=ttyS0".into(),
        serial_log: format!("/tmp/{name}.log").into(),
        nic: Some(NicSpec {
            interface: "vp9".into(),
            mac: "02:00:0a:0a:00:09".into(),
        }),
        drives: Vec::new(),
        channel: Some(identity::HANDOFF_CHANNEL.into()),
        project: "alpha".into(),
        image: "tiny".into(),
    }
}

#[test]
fn define_start_stop_destroy_list() {
    let host = test_host();
    let name = "vmctl-lifecycle";
    assert!(host.lookup(name).expect("lookup").is_none());
    let domain = host.define(name, &spec(name).to_xml()).expect("define");
    assert!(
        host.domain_names()
            .expect("list")
            .contains(&name.to_string())
    );
    assert_eq!(host.state(&domain).expect("state"), VmState::ShutOff);

    host.start(name, &domain).expect("start");
    assert_eq!(host.state(&domain).expect("state"), VmState::Running);
    assert!(
        host.start(name, &domain).is_err(),
        "a running VM does not start twice"
    );
    // The test driver shuts down at once: the graceful path.
    let graceful = host
        .stop(name, &domain, Duration::from_secs(5))
        .expect("stop");
    assert!(graceful);
    assert_eq!(host.state(&domain).expect("state"), VmState::ShutOff);

    host.start(name, &domain).expect("start again");
    host.force_off(name, &domain).expect("destroy");
    assert_eq!(host.state(&domain).expect("state"), VmState::ShutOff);
    host.force_off(name, &domain)
        .expect("forcing off a stopped VM is a no-op");
    host.undefine(name, &domain).expect("undefine");
    assert!(host.lookup(name).expect("lookup").is_none());
    assert!(
        !host
            .domain_names()
            .expect("list")
            .contains(&name.to_string())
    );
}

#[test]
fn the_generated_xml_round_trips_through_libvirt() {
    let host = test_host();
    let name = "vmctl-xml";
    let domain = host.define(name, &spec(name).to_xml()).expect("define");
    let xml = host.xml(&domain, true).expect("xml");
    host.undefine(name, &domain).expect("undefine");
    for expected in [
        "<interface type='ethernet'>",
        "<target dev='vp9'/>",
        "<mac address='02:00:0a:0a:00:09'/>",
        "<cmdline>console=ttyS0</cmdline>",
        "<memory unit='KiB'>131072</memory>",
        "<target type='virtio' name='org.vault.handoff.0'/>",
        "<rng model='virtio'>",
    ] {
        assert!(xml.contains(expected), "`{expected}` missing in:\n{xml}");
    }
}

#[test]
fn the_test_driver_offers_no_kvm_so_vmctl_picks_tcg() {
    assert_eq!(test_host().accel().expect("accel"), Accel::Tcg);
}

/// A vmctl over test:///default with the tiny image's files faked (never booted).
fn vmctl_on_test_driver(dir: &Path, memory_mib: u64) -> Vmctl {
    let cluster =
        netctl::Cluster::parse(&cluster_text(TEST_URI, memory_mib), dir).expect("cluster");
    let store = Store::new(dir.join("store"));
    let image = store.image_dir("tiny");
    std::fs::create_dir_all(&image).expect("image dir");
    std::fs::write(image.join("vmlinuz"), b"kernel").expect("kernel");
    std::fs::write(image.join("image.toml"), "kernel = \"vmlinuz\"\n").expect("image.toml");
    Vmctl::new(netctl::Netctl::new(cluster).expect("netctl"), store)
}

fn request(name: &str) -> CreateRequest {
    CreateRequest {
        name: name.into(),
        image: "tiny".into(),
        cpus: 1,
        memory_mib: 256,
        project: "alpha".into(),
        network: None,
        host: Some("h1".into()),
        vault: None,
    }
}

/// Nothing of a refused VM is left: no record, no network port, no domain.
fn assert_nothing_left(vmctl: &Vmctl, name: &str) {
    assert!(vmctl.list().expect("list").iter().all(|vm| vm.name != name));
    assert!(vmctl.network().port(name).is_err(), "no port for {name}");
    let host = vmctl.connect("h1").expect("h1");
    if name != "test" {
        assert!(host.lookup(name).expect("lookup").is_none());
    }
}

#[test]
fn bad_input_is_refused_before_anything_is_made() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vmctl = vmctl_on_test_driver(dir.path(), 1024);
    let cases: Vec<(CreateRequest, &str)> = vec![
        (
            CreateRequest {
                image: "nope".into(),
                ..request("vm-a")
            },
            "unknown image `nope`",
        ),
        (
            CreateRequest {
                host: Some("h9".into()),
                ..request("vm-b")
            },
            "unknown host `h9`",
        ),
        (
            CreateRequest {
                memory_mib: 4096,
                ..request("vm-c")
            },
            "no host has room",
        ),
        (
            CreateRequest {
                host: None,
                cpus: 3,
                ..request("vm-d")
            },
            "h1: 2 CPUs, 1024 MiB free",
        ),
        (
            CreateRequest {
                host: Some("h2".into()),
                ..request("vm-e")
            },
            "cannot reach libvirt on host `h2`",
        ),
        // test:///default always holds a domain named "test", made outside vmctl.
        (
            request("test"),
            "a VM named `test` already exists (on host `h1`)",
        ),
        (
            CreateRequest {
                project: "gamma".into(),
                ..request("vm-f")
            },
            "gamma",
        ),
        (request("Bad_Name"), "invalid VM name"),
        (
            CreateRequest {
                cpus: 0,
                ..request("vm-g")
            },
            "invalid CPU count",
        ),
    ];
    for (request, expected) in cases {
        let error = vmctl.create(&request).expect_err(expected);
        let message = error.to_string();
        assert!(
            message.contains(expected),
            "`{expected}` missing in: {message}"
        );
        assert!(!message.contains('\n'), "one line: {message}");
        assert_nothing_left(&vmctl, &request.name);
    }
    assert!(matches!(
        vmctl.start("ghost", None, Duration::from_secs(1)),
        Err(Error::UnknownVm(_))
    ));
}

/// A client config as `vaultfs login` writes it for a TLS server.
const CLIENT_CONFIG: &str = "server = \"https://10.10.0.2:7000\"\n\
    server_fingerprint = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n\
    name = \"alice\"\nvault = \"00112233445566778899aabbccddeeff\"\nadmin_key = \"aa bb\"\n";

/// A vault image (`vault = true`) in `vmctl`'s store and a user's key file in `dir`.
fn vault_image_and_owner(vmctl: &Vmctl, dir: &Path) -> std::path::PathBuf {
    let image = vmctl.store().image_dir("vault");
    std::fs::create_dir_all(&image).expect("image dir");
    std::fs::write(image.join("vmlinuz"), b"kernel").expect("kernel");
    let manifest = "kernel = \"vmlinuz\"\nready_marker = \"mounted\"\nvault = true\n";
    std::fs::write(image.join("image.toml"), manifest).expect("image.toml");
    let owner = dir.join("alice.vkey");
    let sealed = identity::KeyFile::seal(
        &identity::Identity::generate(),
        identity::KeyKind::User,
        b"passphrase",
        identity::KdfParams::MINIMUM,
    )
    .expect("seal");
    keystore::write_key_file(&owner, &sealed).expect("key file");
    owner
}

#[test]
fn vault_settings_are_checked_before_anything_is_made() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vmctl = vmctl_on_test_driver(dir.path(), 1024);
    let owner = vault_image_and_owner(&vmctl, dir.path());
    let config = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("config");
        path
    };
    let vault = |config, owner: &Path| CreateRequest {
        image: "vault".into(),
        vault: Some(VaultRequest {
            config,
            owner: owner.to_path_buf(),
        }),
        ..request("vm-v")
    };
    // A client config with `from` replaced by `to`.
    let changed = |name: &str, from: &str, to: &str| {
        vault(config(name, &CLIENT_CONFIG.replace(from, to)), &owner)
    };
    let good = config("good.toml", CLIENT_CONFIG);
    let cases: Vec<(CreateRequest, &str)> = vec![
        (
            CreateRequest {
                image: "vault".into(),
                ..request("vm-v")
            },
            "mounts the vault: give --vault",
        ),
        (
            CreateRequest {
                image: "tiny".into(),
                ..vault(good.clone(), &owner)
            },
            "image `tiny` does not mount the vault",
        ),
        (
            changed("unknown.toml", "vault =", "x_vault ="),
            "`x_vault` is no client setting",
        ),
        (
            changed("no-pin.toml", "vault = \"0011", "#"),
            "no `vault`: run `vaultfs login",
        ),
        (
            changed("unix.toml", "https://10.10.0.2:7000", "unix:/s"),
            "must be https://HOST:PORT",
        ),
        (
            changed("pin.toml", "sha256:00", "sha256:zz"),
            "no sha256 fingerprint",
        ),
        (
            vault(config("bad.toml", "server = ["), &owner),
            "vault settings",
        ),
        (vault(dir.path().join("none.toml"), &owner), "none.toml"),
        (vault(good, &dir.path().join("none.vkey")), "no key file"),
    ];
    for (request, expected) in cases {
        let message = vmctl.create(&request).expect_err(expected).to_string();
        assert!(
            message.contains(expected),
            "`{expected}` missing in: {message}"
        );
        assert!(!message.contains('\n'), "one line: {message}");
        assert_nothing_left(&vmctl, &request.name);
    }
}
