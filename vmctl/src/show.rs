//! What `list`, `status` and `console` show.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use crate::controller::Vmctl;
use crate::error::{Result, io_error};
use crate::host::Host;
use crate::image::Image;
use crate::lifecycle::console_line_with;
use crate::limits;

/// One VM as `list` shows it.
#[derive(Debug, Clone)]
pub struct VmSummary {
    pub name: String,
    pub host: String,
    /// The libvirt state, or why it is not known.
    pub state: String,
    pub project: String,
    pub address: String,
    pub cpus: u32,
    pub memory_mib: u64,
}

/// One VM in detail.
#[derive(Debug, Clone)]
pub struct VmStatus {
    pub summary: VmSummary,
    pub image: String,
    pub accel: String,
    pub mac: String,
    pub interface: String,
    pub gateway: String,
    /// Attached drives and their guest devices.
    pub drives: Vec<(String, String)>,
    pub uptime: Option<Duration>,
    /// Resident memory of the VM's QEMU process on its host.
    pub rss_kib: Option<u64>,
    pub console: PathBuf,
    /// Whom the guest mounts the vault as, from where, and how the last start's mount went.
    pub vault: Option<String>,
}

impl Vmctl {
    /// Every VM, with its state read from its host (one connection per host).
    pub fn list(&self) -> Result<Vec<VmSummary>> {
        let state = self.store.read()?;
        let ports: BTreeMap<String, String> = self
            .net
            .ports()?
            .into_iter()
            .map(|p| (p.vm.clone(), format!("{}/{}", p.ip, p.prefix_len)))
            .collect();
        let mut summaries = Vec::new();
        for (host_name, vms) in self.hosts_of(&state) {
            let host = self.connect(&host_name);
            for name in vms {
                let vm = state.vm(&name)?;
                summaries.push(VmSummary {
                    state: describe_state(&host, &name),
                    host: host_name.clone(),
                    project: vm.project.clone(),
                    address: ports.get(&name).cloned().unwrap_or_else(|| "-".into()),
                    cpus: vm.cpus,
                    memory_mib: vm.memory_mib,
                    name,
                });
            }
        }
        summaries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(summaries)
    }

    /// One VM: state, host, address, drives, uptime.
    pub fn status(&self, name: &str) -> Result<VmStatus> {
        let state = self.store.read()?;
        let vm = state.vm(name)?;
        let port = self.net.port(name)?;
        let host = self.connect(&vm.host);
        let domain = host
            .as_ref()
            .ok()
            .and_then(|h| h.lookup(name).ok().flatten());
        let running =
            matches!((&host, &domain), (Ok(h), Some(d)) if h.state(d).is_ok_and(|s| s.is_active()));
        let rss_kib = match (&host, &domain) {
            (Ok(h), Some(d)) if running => h.rss_kib(d),
            _ => None,
        };
        let accel = match &host {
            Ok(h) => h.accel().map_or("?", |a| a.as_str()).to_string(),
            Err(_) => "?".into(),
        };
        let drives = vm
            .drives
            .iter()
            .map(|d| {
                let target = state.drives.get(d).and_then(|r| r.target.clone());
                (d.clone(), target.unwrap_or_default())
            })
            .collect();
        Ok(VmStatus {
            summary: VmSummary {
                name: name.to_string(),
                host: vm.host.clone(),
                state: describe_state(&host, name),
                project: vm.project.clone(),
                address: format!("{}/{}", port.ip, port.prefix_len),
                cpus: vm.cpus,
                memory_mib: vm.memory_mib,
            },
            image: vm.image.clone(),
            accel,
            mac: port.mac.to_string(),
            interface: port.interface.clone(),
            gateway: port.gateway.to_string(),
            drives,
            uptime: if running { Self::uptime(vm) } else { None },
            rss_kib,
            console: self.store.console_path(name),
            vault: vm.vault.as_ref().map(|seed| {
                let mount = self.vault_mount(name, &vm.image, running);
                format!("{}; {mount}", crate::vault::describe(seed))
            }),
        })
    }

    /// How the vault mount of the VM's last start went, as its console tells.
    fn vault_mount(&self, name: &str, image: &str, running: bool) -> String {
        let Ok(image) = Image::load(&self.store, image) else {
            return format!("mount state unknown (no image `{image}`)");
        };
        let console = self.store.console_path(name);
        let line = |marker: &Option<String>| {
            let marker = marker.as_deref()?;
            console_line_with(&console, marker).ok().flatten()
        };
        let failed = line(&image.failed_marker);
        let mounted = line(&image.ready_marker).is_some();
        crate::vault::mount_state(failed.as_deref(), mounted, running)
    }

    /// The end of a VM's serial console log (at most `limits::CONSOLE_BYTES_MAX`).
    pub fn console(&self, name: &str) -> Result<String> {
        self.store.read()?.vm(name)?;
        let path = self.store.console_path(name);
        let mut file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
            Err(e) => return Err(io_error("reading", path)(e)),
        };
        let length = file.metadata().map_err(io_error("reading", &path))?.len();
        let skip = length.saturating_sub(limits::CONSOLE_BYTES_MAX);
        file.seek(SeekFrom::Start(skip))
            .map_err(io_error("reading", &path))?;
        let mut text = Vec::new();
        file.take(limits::CONSOLE_BYTES_MAX)
            .read_to_end(&mut text)
            .map_err(io_error("reading", &path))?;
        Ok(String::from_utf8_lossy(&text).into_owned())
    }
}

fn describe_state(host: &Result<Host>, vm: &str) -> String {
    let host = match host {
        Ok(host) => host,
        Err(_) => return "host unreachable".into(),
    };
    match host.lookup(vm) {
        Ok(Some(domain)) => host
            .state(&domain)
            .map_or_else(|_| "unknown".into(), |s| s.as_str().to_string()),
        Ok(None) => "not defined on its host".into(),
        Err(_) => "unknown".into(),
    }
}
