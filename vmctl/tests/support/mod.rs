//! Shared helpers of vmctl's integration tests: netctl's lab of OVS hosts (reused as it is),
//! a private libvirtd per host, the tiny guest, the owner's key file, and a cluster of them
//! all that cleans up after itself (VMs, daemons, namespaces, files), also when a test fails.
#![allow(dead_code)] // Each test crate uses a part of the helpers.

#[path = "../../../netctl/tests/lab/mod.rs"]
pub mod lab;
pub mod libvirtd;

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use std::net::Ipv4Addr;

use identity::{Identity, KdfParams, KeyFile, KeyKind};
use keystore::PassphraseSource;
use lab::{Lab, NETWORK, project, which};
use netctl::PortRequest;
use vmctl::{OwnerKey, Store, Vmctl};

use self::libvirtd::Libvirtd;

pub const PASSPHRASE: &str = "correct horse battery staple";
/// The TCP port of the test guests' command shell (vmctl/guest/init, `--shell-port`).
pub const GUEST_SHELL_PORT: u16 = 7000;

/// Fails (never skips) when the machine lacks what the tests need.
pub fn require_libvirt() {
    lab::require_prerequisites();
    for program in "libvirtd qemu-system-x86_64 qemu-img unshare apt-get dpkg-deb cpio modinfo"
        .split_whitespace()
    {
        assert!(
            which(program).is_some(),
            "vmctl integration tests need `{program}`, which is not installed \
             (run scripts/setup.sh as root)"
        );
    }
}

/// A site: lab hosts each with its libvirtd, a cluster file, a store with the tiny guest
/// image, and an owner with a key file. Fields drop in order: VMs and daemons first.
pub struct Site {
    pub daemons: Vec<Libvirtd>,
    pub vmctl: Vmctl,
    pub cluster_file: PathBuf,
    pub store: PathBuf,
    pub owner: Identity,
    pub key: OwnerKey,
    pub lab: Lab,
}

impl Site {
    /// `host_count` hosts of 2 CPUs and `memory_mib` each; projects alpha and beta; the tiny
    /// guest as image `tiny`.
    pub fn new(tag: &str, host_count: usize, memory_mib: u64) -> Site {
        require_libvirt();
        let body = project("alpha", &[]) + &project("beta", &[]);
        Site::with(
            tag,
            host_count,
            memory_mib,
            &body,
            &[("tiny", &guest_image())],
        )
    }

    /// A site whose cluster file ends with `body` (projects, services), with `images` (name,
    /// built guest) in its store.
    pub fn with(
        tag: &str,
        host_count: usize,
        memory_mib: u64,
        body: &str,
        images: &[(&str, &Path)],
    ) -> Site {
        require_libvirt();
        let lab = Lab::new(tag, host_count);
        let mut daemons = Vec::new();
        for host in &lab.hosts {
            let dir = lab.dir.path().join(format!("libvirt-{}", host.name));
            daemons.push(Libvirtd::start(&host.ns, &dir, &host.run_dir));
        }
        let store = lab.dir.path().join("store");
        for (name, guest) in images {
            install_image(guest, &store.join("images").join(name));
        }
        let uris: Vec<String> = daemons.iter().map(|d| d.uri.clone()).collect();
        let cluster_file = lab.dir.path().join("cluster.toml");
        let text = cluster_text(&lab, &uris, memory_mib) + body;
        fs::write(&cluster_file, text).expect("cluster file");
        let net = netctl::Netctl::open(&cluster_file).expect("cluster file loads");
        let vmctl = Vmctl::new(net, Store::new(&store));
        let (owner, key) = owner_key(lab.dir.path());
        Site {
            daemons,
            vmctl,
            cluster_file,
            store,
            owner,
            key,
            lab,
        }
    }

    /// A `vmctl` command line against this site.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().expect("run vmctl")
    }

    /// A `vmctl` command against this site, to run alongside others (`spawn`).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(vmctl_binary());
        command
            .arg("--cluster")
            .arg(&self.cluster_file)
            .arg("--store")
            .arg(&self.store)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }
}

/// What a successful command printed (it fails the test otherwise).
pub fn stdout(output: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "vmctl failed: {}{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

/// The `--key`/`--passphrase-file` arguments of `owner`.
pub fn key_args(owner: &OwnerKey) -> Vec<String> {
    let passphrase = owner.passphrase.file.clone().expect("passphrase file");
    vec![
        "--key".into(),
        owner.key_file.display().to_string(),
        "--passphrase-file".into(),
        passphrase.display().to_string(),
    ]
}

/// A namespace "VM" of `project` on `host`, plugged into the VM network: its namespace and
/// address.
pub fn peer(site: &mut Site, name: &str, host: &str, project: &str) -> (String, Ipv4Addr) {
    let port = site
        .vmctl
        .network()
        .allocate_port(&PortRequest {
            vm: name.into(),
            host: host.into(),
            project: project.into(),
            network: "research".into(),
            address: None,
        })
        .expect("peer port");
    site.vmctl.network().apply().expect("apply");
    (site.lab.attach(&port), port.ip)
}

/// The `vmctl` binary: cargo's for integration tests, else the one beside the running
/// example's directory (`target/debug/examples/..` -> `target/debug/vmctl`).
pub fn vmctl_binary() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_vmctl") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("vmctl")
}

/// The hosts and network of a cluster file for the lab, with each host's libvirt URI.
pub fn cluster_text(lab: &Lab, uris: &[String], memory_mib: u64) -> String {
    let mut text = String::from("state = \"netctl-state.json\"\nexpose_ports = \"20000-20009\"\n");
    for (i, host) in lab.hosts.iter().enumerate() {
        text.push_str(&format!(
            "\n[[host]]\nname = \"{}\"\novsdb = \"{}\"\nunderlay_ip = \"{}\"\n\
             external_bridge = \"br-phy\"\nlibvirt_uri = \"{}\"\ncpus = 2\nmemory_mib = {memory_mib}\n",
            host.name,
            lab.db(i),
            host.ip,
            uris[i]
        ));
    }
    text.push_str(NETWORK);
    text
}

/// A user key file (cheap KDF) and its passphrase file in `dir`.
pub fn owner_key(dir: &Path) -> (Identity, OwnerKey) {
    let owner = Identity::generate();
    let sealed = KeyFile::seal(
        &owner,
        KeyKind::User,
        PASSPHRASE.as_bytes(),
        KdfParams::MINIMUM,
    )
    .expect("seal key file");
    let key_file = dir.join("owner.vkey");
    let _ = fs::remove_file(&key_file);
    keystore::write_key_file(&key_file, &sealed).expect("write key file");
    let passphrase_file = dir.join("owner.pass");
    fs::write(&passphrase_file, PASSPHRASE).expect("passphrase file");
    let key = OwnerKey {
        key_file,
        passphrase: PassphraseSource {
            file: Some(passphrase_file),
            ..Default::default()
        },
    };
    (owner, key)
}

/// The tiny guest (vmctl/guest with the test shell), built once per version of its sources
/// under the target dir.
pub fn guest_image() -> PathBuf {
    build_guest("tiny", None)
}

/// The vault guest: the tiny one plus fuse and `vaultfs` (this build's), rebuilt when the
/// sources or the binary change.
pub fn vault_guest_image(vaultfs: &Path) -> PathBuf {
    build_guest("vault", Some(vaultfs))
}

fn build_guest(kind: &str, vaultfs: Option<&Path>) -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let _serial = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest");
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in ["build.sh", "init"] {
        fs::read(sources.join(file))
            .expect("guest source")
            .hash(&mut hasher);
    }
    let mut args = vec!["--shell-port".to_string(), GUEST_SHELL_PORT.to_string()];
    if let Some(binary) = vaultfs {
        let meta =
            fs::metadata(binary).expect("the vaultfs binary (cargo build --workspace --bins)");
        (meta.len(), meta.modified().ok()).hash(&mut hasher);
        args.extend(["--vaultfs".to_string(), binary.display().to_string()]);
    }
    // Integration tests cache it under the target dir; the benchmark (an example) under $TMPDIR.
    let cache = option_env!("CARGO_TARGET_TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = cache.join(format!("vmctl-guest-{kind}-{:016x}", hasher.finish()));
    if !dir.join("image.toml").exists() {
        let output = Command::new("bash")
            .arg(sources.join("build.sh"))
            .arg(&dir)
            .args(&args)
            .output()
            .expect("run vmctl/guest/build.sh");
        assert!(
            output.status.success(),
            "building the {kind} guest failed (needs apt-get, dpkg-deb, cpio, modinfo and the \
             Debian package lists: run scripts/setup.sh): {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    dir
}

/// Copies the guest into a store's image directory.
pub fn install_image(guest: &Path, image_dir: &Path) {
    fs::create_dir_all(image_dir).expect("image dir");
    for file in ["vmlinuz", "initrd.img", "image.toml"] {
        fs::copy(guest.join(file), image_dir.join(file)).expect("copy guest image");
    }
}

/// Runs shell commands in the guest over its command port, from namespace `ns`; returns what
/// they printed. Bounded: 3 s to connect, 120 s without output, 150 s in all. (`-t`: socat
/// waits that long for the guest's output after it sent the commands, not its default 0.5 s.)
/// A refused connection (the shell not listening yet) is tried again, 20 times at most.
pub fn guest_shell(ns: &str, address: std::net::Ipv4Addr, commands: &str) -> String {
    let target = format!("TCP:{address}:{GUEST_SHELL_PORT},connect-timeout=3");
    for _ in 0..20 {
        let mut child = Command::new(which("ip").expect("ip"))
            .args(["netns", "exec", ns, "timeout", "150", "socat"])
            .args(["-t", "120", "-T", "120", "-", &target])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start socat");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = writeln!(stdin, "{commands}\nexit");
        }
        let output = child.wait_with_output().expect("socat");
        let refused = String::from_utf8_lossy(&output.stderr).contains("Connection refused");
        if !(refused && output.stdout.is_empty()) {
            return String::from_utf8_lossy(&output.stdout).into_owned();
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    panic!("the shell of the guest at {address} refused 20 connections");
}

/// Every regular file under `dir` (recursively; symlinks are not followed).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => todo.push(entry.path()),
                Ok(t) if t.is_file() => files.push(entry.path()),
                _ => {}
            }
        }
    }
    files
}

/// Whether `needle` occurs in the file.
pub fn file_contains(path: &Path, needle: &[u8]) -> bool {
    let bytes = fs::read(path).unwrap_or_default();
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// The number after `name` on the command line (of a benchmark), or `default`.
pub fn argument(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|value| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}
