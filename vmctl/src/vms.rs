//! Creating and destroying VMs. Either completes, or leaves nothing behind: no domain, no
//! network port, no record.

use netctl::PortRequest;

use crate::controller::{Undo, Vmctl};
use crate::drive::new_uuid;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::limits;
use crate::placement;
use crate::store::{VmRecord, check_name};
use crate::vault::{VaultRequest, VaultSeed};

/// What `create` needs.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub name: String,
    pub image: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub project: String,
    /// The cluster's only network when not named.
    pub network: Option<String>,
    /// The host with the most free capacity when not named.
    pub host: Option<String>,
    /// The vault settings and user, for an image that mounts the vault.
    pub vault: Option<VaultRequest>,
}

impl CreateRequest {
    fn check(&self) -> Result<()> {
        check_name("VM", &self.name, limits::VM_NAME_BYTES_MAX)?;
        if !(1..=limits::VCPUS_MAX).contains(&self.cpus) {
            return Err(Error::Invalid {
                what: "CPU count",
                reason: format!("{} is not between 1 and {}", self.cpus, limits::VCPUS_MAX),
            });
        }
        if !(limits::MEMORY_MIB_MIN..=limits::MEMORY_MIB_MAX).contains(&self.memory_mib) {
            return Err(Error::Invalid {
                what: "memory",
                reason: format!(
                    "{} MiB is not between {} and {} MiB",
                    self.memory_mib,
                    limits::MEMORY_MIB_MIN,
                    limits::MEMORY_MIB_MAX
                ),
            });
        }
        Ok(())
    }
}

impl Vmctl {
    /// Defines a VM on a host (the named one, or the one with the most free capacity), gives
    /// it its network port, and records it. Returns the host.
    pub fn create(&self, request: &CreateRequest) -> Result<String> {
        request.check()?;
        let name = request.name.as_str();
        let image = Image::load(&self.store, &request.image)?;
        let vault = vault_seed(request, &image)?;
        let network = self.network_for(request.network.as_deref())?;
        if let Some(host) = &request.host {
            self.connect_check(host)?;
        }
        self.store.update(|state| {
            if let Some(existing) = state.vms.get(name) {
                return Err(Error::DuplicateVm {
                    name: name.to_string(),
                    host: existing.host.clone(),
                });
            }
            let capacities = self.capacities(state, None)?;
            let host_name = placement::choose(
                &capacities,
                request.host.as_deref(),
                request.cpus,
                request.memory_mib,
            )?;
            let host = self.connect(&host_name)?;
            if host.lookup(name)?.is_some() {
                return Err(Error::DuplicateVm {
                    name: name.to_string(),
                    host: host_name,
                });
            }
            let accel = host.accel()?;
            let mut undo = Undo::new();
            let port = self.net.allocate_port(&PortRequest {
                vm: name.to_string(),
                host: host_name.clone(),
                project: request.project.clone(),
                network: network.clone(),
                address: None,
            })?;
            undo.push(|| {
                let _ = self.net.release_port(name);
                let _ = self.net.apply();
            });
            let record = VmRecord {
                uuid: new_uuid(),
                host: host_name.clone(),
                project: request.project.clone(),
                network,
                image: request.image.clone(),
                cpus: request.cpus,
                memory_mib: request.memory_mib,
                drives: Vec::new(),
                started_at: None,
                vault,
            };
            let spec = self.domain_spec(name, &record, state, &port, accel)?;
            let domain = host.define(name, &spec.to_xml())?;
            let defined_on = &host;
            undo.push(move || {
                let _ = defined_on.undefine(name, &domain);
            });
            self.net.apply()?;
            state.vms.insert(name.to_string(), record);
            undo.done();
            Ok(host_name)
        })
    }

    /// Fails with a clear error if the host is not in the cluster file or unreachable.
    fn connect_check(&self, host: &str) -> Result<()> {
        self.connect(host).map(drop)
    }

    /// Forces a VM off, undefines it, releases its port, detaches its drives (they stay) and
    /// removes its record and console log.
    pub fn destroy(&self, name: &str) -> Result<()> {
        self.store.update(|state| {
            let vm = state.vm(name)?.clone();
            let host = self.connect(&vm.host)?;
            if let Some(domain) = host.lookup(name)? {
                host.force_off(name, &domain)?;
                host.undefine(name, &domain)?;
            }
            self.net.release_port(name)?;
            self.net.apply()?;
            for drive in &vm.drives {
                if let Some(record) = state.drives.get_mut(drive) {
                    record.attached_to = None;
                    record.target = None;
                }
            }
            state.vms.remove(name);
            let _ = std::fs::remove_file(self.store.console_path(name));
            Ok(())
        })
    }
}

/// The checked vault settings of a VM whose image mounts the vault; none for other images.
fn vault_seed(request: &CreateRequest, image: &Image) -> Result<Option<VaultSeed>> {
    match (&request.vault, image.vault) {
        (Some(vault), true) => vault.seed().map(Some),
        (None, false) => Ok(None),
        (Some(_), false) => Err(Error::Invalid {
            what: "--vault",
            reason: format!(
                "image `{}` does not mount the vault (no `vault = true` in its image.toml)",
                image.name
            ),
        }),
        (None, true) => Err(Error::Invalid {
            what: "VM",
            reason: format!(
                "image `{}` mounts the vault: give --vault CLIENT_CONFIG and --owner KEY_FILE",
                image.name
            ),
        }),
    }
}
