//! A vault site for VM tests and the VM benchmark: vmctl's two-host lab (netctl's OVS hosts,
//! a libvirtd each), storaged as the network's `[[service]]` on h2 listening with TLS in the
//! service's namespace, a registered user `alice`, the vault guest image, a namespace VM of
//! project alpha (which may use storaged) and one of project beta (which may not), both on h2.
#![allow(dead_code)] // The test and the benchmark each use a part.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use crate::support::lab::{project, service, which};
use crate::support::{self, Site, peer, stdout};
use tests::daemon::{Storaged, TestUser};
use tests::mount::ClientFiles;
use vmctl::OwnerKey;

/// The service's address and port on the VM network.
pub const STORAGED: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 10, 0, 2), 7000);

/// Fields drop in order: the daemon before the lab that holds its namespace.
pub struct VaultSite {
    pub storaged: Storaged,
    pub user: TestUser,
    pub client: ClientFiles,
    /// The client config `vaultfs login` wrote over TLS, from a VM of project alpha.
    pub vm_config: PathBuf,
    /// sha256:... of storaged's certificate, as it printed it.
    pub fingerprint: String,
    /// Namespace VMs on h2: `friend` of project alpha, `stranger` of project beta.
    pub friend: String,
    pub stranger: String,
    pub site: Site,
}

impl VaultSite {
    pub fn new(tag: &str) -> VaultSite {
        tests::mount::require_fuse();
        support::require_libvirt();
        let guest = support::vault_guest_image(&tests::binary("vaultfs"));
        let (address, port) = STORAGED;
        let body = project("alpha", &["storaged"])
            + &project("beta", &[])
            + &service("storaged", "h2", &address.to_string(), port);
        let mut site = Site::with(tag, 2, 4096, &body, &[("vault", &guest)]);
        site.vmctl.network().apply().expect("apply");
        let service_port = site.vmctl.network().port("storaged").expect("service port");
        let namespace = site.lab.attach(&service_port);
        let listen = format!("{address}:{port}");
        let storaged = Storaged::start_in_netns(&namespace, &["--listen", &listen]);
        let fingerprint = certificate_fingerprint(&storaged.ready_line);
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let user = runtime.block_on(storaged.user("alice"));
        let client = ClientFiles::for_user(&user);
        let (friend, _) = peer(&mut site, "friend", "h2", "alpha");
        let (stranger, _) = peer(&mut site, "stranger", "h2", "beta");
        let vm_config = client.dir.path().join("vm-client.toml");
        let admin = storaged.admin.public().fingerprint().to_hex();
        login_over_tls(&friend, &client, (&fingerprint, &admin), &vm_config);
        VaultSite {
            storaged,
            user,
            client,
            vm_config,
            fingerprint,
            friend,
            stranger,
            site,
        }
    }

    /// alice's key file and passphrase, as `vmctl start --key` takes them.
    pub fn owner_key(&self) -> OwnerKey {
        OwnerKey {
            key_file: self.client.key_file(),
            passphrase: keystore::PassphraseSource::from_file(Some(
                self.client.dir.path().join("passphrase"),
            )),
        }
    }

    /// `vmctl create NAME` of the vault image on h1 for alice, in project alpha.
    pub fn create_vm(&self, name: &str) -> String {
        self.create_vm_in(name, "alpha")
    }

    /// `vmctl create NAME` of the vault image on h1 for alice, in `project`.
    pub fn create_vm_in(&self, name: &str, project: &str) -> String {
        let config = self.vm_config.display().to_string();
        let key = self.client.key_file().display().to_string();
        let args = [
            "create",
            name,
            "--image",
            "vault",
            "--project",
            project,
            "--host",
            "h1",
            "--memory",
            "512",
            "--vault",
            &config,
            "--owner",
            &key,
        ];
        stdout(&self.site.cli(&args))
    }
}

/// The certificate fingerprint in storaged's ready line.
fn certificate_fingerprint(ready_line: &str) -> String {
    let fingerprint = ready_line
        .split("(certificate ")
        .nth(1)
        .and_then(|rest| rest.split(')').next());
    fingerprint
        .unwrap_or_else(|| panic!("no certificate in `{ready_line}`"))
        .to_string()
}

/// `vaultfs login` from namespace `ns` over TLS, as alice does once on a machine of the VM
/// network: it checks the server's certificate and administrator key against the
/// fingerprints (`certificate`, `admin`) and pins the vault and that key into `config`.
fn login_over_tls(ns: &str, client: &ClientFiles, fingerprints: (&str, &str), config: &PathBuf) {
    let (fingerprint, admin) = fingerprints;
    let (address, port) = STORAGED;
    let output = Command::new(which("ip").expect("ip"))
        .args(["netns", "exec", ns, "timeout", "60"])
        .arg(tests::binary("vaultfs"))
        .args(["login", "--server", &format!("https://{address}:{port}")])
        .args(["--server-fingerprint", fingerprint, "--name", &client.name])
        .args(["--admin-fingerprint", admin])
        .arg("--key-file")
        .arg(client.key_file())
        .arg("--passphrase-file")
        .arg(client.dir.path().join("passphrase"))
        .arg("--config")
        .arg(config)
        .output()
        .expect("run vaultfs login");
    let text = stdout(&output);
    assert!(text.contains("logged in to https://"), "{text}");
}

/// Whether a TCP connection from `ns` to storaged's address and port opens (3 s at most).
pub fn reaches_storaged(ns: &str) -> bool {
    let (address, port) = STORAGED;
    let target = format!("TCP:{address}:{port},connect-timeout=3");
    Command::new(which("ip").expect("ip"))
        .args([
            "netns",
            "exec",
            ns,
            "timeout",
            "5",
            "socat",
            "-u",
            "/dev/null",
            &target,
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Drop for VaultSite {
    /// A failed test shows what the guests said (the lab's directory goes with it).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for log in support::files_under(&self.site.store.join("console")) {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- {} (last lines) ---", log.display());
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
        }
    }
}
