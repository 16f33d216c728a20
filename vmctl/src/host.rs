//! One host's libvirt: the connection, what its hypervisor can do, and the domain and secret
//! calls vmctl makes, each with errors that name the host.

use std::thread::sleep;
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::error::ErrorNumber;
use virt::secret::Secret;
use virt::stream::Stream;

use crate::domain::{Accel, SecretSpec};
use crate::error::{Error, Result};
use crate::limits;

/// A connection to one host's libvirt.
#[derive(Debug)]
pub struct Host {
    pub name: String,
    pub uri: String,
    connection: Connect,
}

/// A domain's state, as vmctl shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    Running,
    Paused,
    ShuttingDown,
    ShutOff,
    Crashed,
    Other,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::ShuttingDown => "shutting down",
            VmState::ShutOff => "shut off",
            VmState::Crashed => "crashed",
            VmState::Other => "unknown",
        }
    }

    /// Whether QEMU is running for it (and a start would fail).
    pub fn is_active(self) -> bool {
        !matches!(self, VmState::ShutOff | VmState::Crashed)
    }
}

impl Host {
    /// Connects to a host of the cluster file.
    pub fn open(host: &netctl::Host) -> Result<Host> {
        // libvirt's default handler prints every error to stderr; vmctl reports them itself.
        virt::error::clear_error_callback();
        let uri = host
            .libvirt_uri
            .clone()
            .ok_or_else(|| Error::NoLibvirtUri {
                host: host.name.clone(),
            })?;
        let connection = Connect::open(Some(&uri)).map_err(|source| Error::Unreachable {
            host: host.name.clone(),
            uri: uri.clone(),
            source,
        })?;
        Ok(Host {
            name: host.name.clone(),
            uri,
            connection,
        })
    }

    fn libvirt(&self, action: impl Into<String>) -> impl FnOnce(virt::error::Error) -> Error {
        let (host, action) = (self.name.clone(), action.into());
        move |source| Error::Libvirt {
            host,
            action,
            source,
        }
    }

    /// KVM when the hypervisor offers it and the CPU has hardware virtualisation; TCG
    /// otherwise. (A `/dev/kvm` without VMX/SVM underneath, as on our machines, is offered by
    /// libvirt but cannot run a guest.)
    pub fn accel(&self) -> Result<Accel> {
        let capabilities = self
            .connection
            .capabilities()
            .map_err(self.libvirt("reading capabilities"))?;
        Ok(accel_from_capabilities(&capabilities))
    }

    /// CPUs and memory (MiB) of the machine, for hosts whose cluster entry does not say.
    pub fn size(&self) -> Result<(u32, u64)> {
        let info = self
            .connection
            .node_info()
            .map_err(self.libvirt("reading node info"))?;
        Ok((info.cpus, info.memory / 1024))
    }

    pub fn lookup(&self, vm: &str) -> Result<Option<Domain>> {
        match Connect::lookup_domain_by_name(&self.connection, vm) {
            Ok(domain) => Ok(Some(domain)),
            Err(e) if e.code().is_known_and(|c| c == ErrorNumber::NoDomain) => Ok(None),
            Err(e) => Err(self.libvirt(format!("looking up VM `{vm}`"))(e)),
        }
    }

    /// The domain of `vm`, which must exist.
    pub fn domain(&self, vm: &str) -> Result<Domain> {
        self.lookup(vm)?.ok_or_else(|| Error::Libvirt {
            host: self.name.clone(),
            action: format!("VM `{vm}` is not defined there"),
            source: virt::error::Error::last_error(),
        })
    }

    pub fn define(&self, vm: &str, xml: &str) -> Result<Domain> {
        self.connection
            .define_domain_xml(xml)
            .map_err(self.libvirt(format!("defining VM `{vm}`")))
    }

    pub fn state(&self, domain: &Domain) -> Result<VmState> {
        let (state, _) = domain
            .state()
            .map_err(self.libvirt("reading a VM's state"))?;
        Ok(match state.unwrap_or(DomainState::NoState) {
            DomainState::Running | DomainState::Blocked => VmState::Running,
            DomainState::Paused | DomainState::PMSuspended => VmState::Paused,
            DomainState::Shutdown => VmState::ShuttingDown,
            DomainState::Shutoff => VmState::ShutOff,
            DomainState::Crashed => VmState::Crashed,
            DomainState::NoState => VmState::Other,
        })
    }

    pub fn start(&self, vm: &str, domain: &Domain) -> Result<()> {
        domain
            .create()
            .map_err(self.libvirt(format!("starting VM `{vm}`")))
    }

    /// Asks the guest to shut down (ACPI), waits up to `timeout`, then forces it off.
    /// Returns whether the guest stopped by itself.
    pub fn stop(&self, vm: &str, domain: &Domain, timeout: Duration) -> Result<bool> {
        if !self.state(domain)?.is_active() {
            return Ok(true);
        }
        // A guest that ignores ACPI is still stopped below; the request itself may fail for a
        // guest that is already going down.
        let _ = domain.shutdown();
        let started = Instant::now();
        while started.elapsed() < timeout {
            if !self.state(domain)?.is_active() {
                return Ok(true);
            }
            sleep(Duration::from_millis(limits::POLL_MS));
        }
        self.force_off(vm, domain)?;
        Ok(false)
    }

    /// Pulls the plug (no error if it is already off).
    pub fn force_off(&self, vm: &str, domain: &Domain) -> Result<()> {
        if !self.state(domain)?.is_active() {
            return Ok(());
        }
        domain
            .destroy()
            .map_err(self.libvirt(format!("forcing VM `{vm}` off")))
    }

    pub fn undefine(&self, vm: &str, domain: &Domain) -> Result<()> {
        domain
            .undefine()
            .map_err(self.libvirt(format!("undefining VM `{vm}`")))
    }

    /// The names of every domain on the host.
    pub fn domain_names(&self) -> Result<Vec<String>> {
        let domains = self
            .connection
            .list_all_domains(0)
            .map_err(self.libvirt("listing VMs"))?;
        domains
            .iter()
            .map(|d| d.name().map_err(self.libvirt("reading a VM's name")))
            .collect()
    }

    /// The resident memory (KiB) of the VM's QEMU process, if libvirt can tell.
    pub fn rss_kib(&self, domain: &Domain) -> Option<u64> {
        let stats = domain.memory_stats(0).ok()?;
        stats
            .iter()
            .find(|s| s.tag == virt::sys::VIR_DOMAIN_MEMORY_STAT_RSS)
            .map(|s| s.val)
    }

    /// Attaches (or with `attach == false` detaches) a device, live when the VM runs and in
    /// its definition always. `attach_device_flags`, since plain `attach_device` loses errors.
    pub fn change_device(
        &self,
        domain: &Domain,
        xml: &str,
        attach: bool,
        live: bool,
    ) -> Result<()> {
        let mut flags = virt::sys::VIR_DOMAIN_AFFECT_CONFIG;
        if live {
            flags |= virt::sys::VIR_DOMAIN_AFFECT_LIVE;
        }
        let (result, action) = if attach {
            (domain.attach_device_flags(xml, flags), "attaching a drive")
        } else {
            (domain.detach_device_flags(xml, flags), "detaching a drive")
        };
        result.map_err(self.libvirt(action))
    }

    /// The live (or, with `inactive`, the persistent) XML of a domain.
    pub fn xml(&self, domain: &Domain, inactive: bool) -> Result<String> {
        let flags = if inactive {
            virt::sys::VIR_DOMAIN_XML_INACTIVE
        } else {
            0
        };
        domain
            .xml_desc(flags)
            .map_err(self.libvirt("reading a VM's XML"))
    }

    /// Defines an ephemeral private secret holding `value`; it is undefined when the guard
    /// drops, so the key stays in libvirt only while QEMU opens the drive.
    pub fn secret(&self, spec: &SecretSpec, value: &[u8]) -> Result<SecretGuard> {
        let secret = self
            .connection
            .define_secret_xml(&spec.to_xml(), 0)
            .map_err(self.libvirt("defining a drive secret"))?;
        let guard = SecretGuard { secret };
        guard
            .secret
            .set_value(value, 0)
            .map_err(self.libvirt("setting a drive secret"))?;
        Ok(guard)
    }

    /// Whether a secret with this UUID is defined (the tests check none outlives its use).
    pub fn has_secret(&self, uuid: &str) -> bool {
        self.connection.lookup_secret_by_uuid_string(uuid).is_ok()
    }

    /// Opens a running VM's virtio channel `channel` (a libvirt stream to QEMU's socket for it)
    /// and sends `message` into it. The channel stays open until the guard drops: QEMU passes
    /// the bytes on when the guest opens its port, and a socket closed before might lose them.
    pub fn send_to_channel(
        &self,
        vm: &str,
        domain: &Domain,
        channel: &str,
        message: &[u8],
    ) -> Result<ChannelGuard> {
        let action = || format!("opening channel {channel} of VM `{vm}`");
        let stream = Stream::new(&self.connection, 0).map_err(self.libvirt(action()))?;
        domain
            .open_channel(Some(channel), &stream, 0)
            .map_err(self.libvirt(action()))?;
        let guard = ChannelGuard {
            stream: Some(stream),
        };
        let stream = guard.stream.as_ref().expect("open until dropped");
        let mut sent = 0;
        // A blocking send takes at least one byte or fails: the message's length bounds this.
        while sent < message.len() {
            let action = || format!("writing to channel {channel} of VM `{vm}`");
            let count = stream
                .send(&message[sent..])
                .map_err(self.libvirt(action()))?;
            match usize::try_from(count) {
                Ok(count) if count > 0 => sent += count,
                _ => return Err(self.libvirt(action())(virt::error::Error::last_error())),
            }
        }
        Ok(guard)
    }
}

/// An open channel into a VM, closed on drop.
pub struct ChannelGuard {
    stream: Option<Stream>,
}

impl std::fmt::Debug for ChannelGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChannelGuard(open: {})", self.stream.is_some())
    }
}

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        // Nothing is left in it once the guest has read its message; a failed close only
        // means the VM is gone already.
        if let Some(stream) = self.stream.take() {
            let _ = stream.finish();
        }
    }
}

/// A libvirt secret, undefined on drop.
#[derive(Debug)]
pub struct SecretGuard {
    secret: Secret,
}

impl Drop for SecretGuard {
    fn drop(&mut self) {
        // Undefining wipes the value from libvirtd; QEMU holds its own copy once it opened
        // the drive. Nothing to do if it fails: an ephemeral secret dies with libvirtd.
        let _ = self.secret.undefine();
    }
}

/// See [`Host::accel`].
pub fn accel_from_capabilities(capabilities: &str) -> Accel {
    let offers_kvm = capabilities.contains("<domain type='kvm'");
    let host_cpu = capabilities
        .split("<host>")
        .nth(1)
        .and_then(|host| host.split("</cpu>").next())
        .unwrap_or("");
    let hardware = ["vmx", "svm"]
        .iter()
        .any(|flag| host_cpu.contains(&format!("<feature name='{flag}'/>")));
    if offers_kvm && hardware {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_needs_both_the_hypervisor_and_the_cpu() {
        let caps = |feature: &str, domain: &str| {
            format!(
                "<capabilities><host><cpu><arch>x86_64</arch><feature name='{feature}'/></cpu>\
                 </host><guest><arch name='x86_64'><domain type='qemu'/>{domain}</arch></guest>\
                 </capabilities>"
            )
        };
        assert_eq!(
            accel_from_capabilities(&caps("vmx", "<domain type='kvm'/>")),
            Accel::Kvm
        );
        assert_eq!(
            accel_from_capabilities(&caps("svm", "<domain type='kvm'/>")),
            Accel::Kvm
        );
        assert_eq!(
            accel_from_capabilities(&caps("pni", "<domain type='kvm'/>")),
            Accel::Tcg
        );
        assert_eq!(accel_from_capabilities(&caps("vmx", "")), Accel::Tcg);
    }
}
