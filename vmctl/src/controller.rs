//! `Vmctl`: the VM controller over a cluster file (hosts, networks, projects; shared with
//! netctl) and a store directory (VMs, drives, images, consoles).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use identity::{Identity, KeyKind};
use keystore::PassphraseSource;
use netctl::{Netctl, VmPort};

use crate::domain::{Accel, DomainSpec, DriveSpec, NicSpec};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::image::Image;
use crate::placement::Capacity;
use crate::store::{State, Store, VmRecord};

/// The VM controller.
#[derive(Debug)]
pub struct Vmctl {
    pub(crate) net: Netctl,
    pub(crate) store: Store,
}

/// The owner's key file and where its passphrase comes from, to open drive keys.
#[derive(Debug, Clone)]
pub struct OwnerKey {
    pub key_file: PathBuf,
    pub passphrase: PassphraseSource,
}

impl OwnerKey {
    pub(crate) fn unlock(&self) -> Result<Identity> {
        Ok(keystore::unlock(
            &self.key_file,
            KeyKind::User,
            &self.passphrase,
        )?)
    }
}

/// Undo steps, run in reverse order on drop unless the operation completed.
pub(crate) struct Undo<'a> {
    steps: Vec<Box<dyn FnOnce() + 'a>>,
}

impl<'a> Undo<'a> {
    pub(crate) fn new() -> Undo<'a> {
        Undo { steps: Vec::new() }
    }

    pub(crate) fn push(&mut self, step: impl FnOnce() + 'a) {
        self.steps.push(Box::new(step));
    }

    pub(crate) fn done(mut self) {
        self.steps.clear();
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        while let Some(step) = self.steps.pop() {
            step();
        }
    }
}

impl std::fmt::Debug for Undo<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Undo({} steps)", self.steps.len())
    }
}

/// Unix seconds now.
pub(crate) fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Vmctl {
    /// A controller over a netctl controller (the cluster file) and a store directory.
    pub fn new(net: Netctl, store: Store) -> Vmctl {
        Vmctl { net, store }
    }

    pub fn network(&self) -> &Netctl {
        &self.net
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Connects to a host named in the cluster file.
    pub fn connect(&self, host: &str) -> Result<Host> {
        let cluster = self.net.cluster();
        let entry = cluster.host(host).ok_or_else(|| Error::UnknownHost {
            name: host.to_string(),
            known: cluster
                .hosts
                .iter()
                .map(|h| format!("`{}`", h.name))
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        Host::open(entry)
    }

    /// Every host's size and what vmctl's VMs take of it (`except` a VM being moved).
    pub(crate) fn capacities(&self, state: &State, except: Option<&str>) -> Result<Vec<Capacity>> {
        let mut capacities = Vec::new();
        for host in &self.net.cluster().hosts {
            let (cpus, memory_mib) = match (host.cpus, host.memory_mib) {
                (Some(cpus), Some(memory_mib)) => (cpus, memory_mib),
                _ => self.connect(&host.name)?.size()?,
            };
            let vms = state
                .vms
                .iter()
                .filter(|(name, vm)| vm.host == host.name && Some(name.as_str()) != except);
            capacities.push(Capacity {
                host: host.name.clone(),
                cpus: host.cpus.unwrap_or(cpus),
                memory_mib: host.memory_mib.unwrap_or(memory_mib),
                used_cpus: vms.clone().map(|(_, vm)| vm.cpus).sum(),
                used_memory_mib: vms.map(|(_, vm)| vm.memory_mib).sum(),
            });
        }
        Ok(capacities)
    }

    /// The domain definition of a VM: its image, its port, its drives.
    pub(crate) fn domain_spec(
        &self,
        name: &str,
        vm: &VmRecord,
        state: &State,
        port: &VmPort,
        accel: Accel,
    ) -> Result<DomainSpec> {
        let image = Image::load(&self.store, &vm.image)?;
        let drives = vm
            .drives
            .iter()
            .map(|drive| {
                let record = state.drive(drive)?;
                Ok(DriveSpec {
                    path: self.store.drive_path(drive),
                    target: record.target.clone().unwrap_or_default(),
                    serial: drive.clone(),
                    secret_uuid: record.secret_uuid.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DomainSpec {
            name: name.to_string(),
            uuid: vm.uuid.clone(),
            accel,
            vcpus: vm.cpus,
            memory_mib: vm.memory_mib,
            cmdline: image.cmdline_for(name, port.ip, port.prefix_len, port.gateway),
            kernel: image.kernel,
            initrd: image.initrd,
            serial_log: self.store.console_path(name),
            nic: Some(NicSpec {
                interface: port.interface.clone(),
                mac: port.mac.to_string(),
            }),
            drives,
            channel: vm
                .vault
                .as_ref()
                .map(|_| identity::HANDOFF_CHANNEL.to_string()),
            project: vm.project.clone(),
            image: vm.image.clone(),
        })
    }

    /// The network a new VM joins: the one named, or the cluster's only network.
    pub(crate) fn network_for(&self, wanted: Option<&str>) -> Result<String> {
        let networks = &self.net.cluster().networks;
        match (wanted, networks.as_slice()) {
            (Some(name), _) => Ok(name.to_string()),
            (None, [only]) => Ok(only.name.clone()),
            (None, _) => Err(Error::Invalid {
                what: "network",
                reason: "the cluster has several networks: name one with --network".into(),
            }),
        }
    }

    /// The drives of every VM, by VM (for `list`).
    pub(crate) fn hosts_of(&self, state: &State) -> BTreeMap<String, Vec<String>> {
        let mut hosts: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, vm) in &state.vms {
            hosts.entry(vm.host.clone()).or_default().push(name.clone());
        }
        hosts
    }

    pub(crate) fn uptime(vm: &VmRecord) -> Option<Duration> {
        vm.started_at
            .map(|at| Duration::from_secs(now_s().saturating_sub(at)))
    }
}
