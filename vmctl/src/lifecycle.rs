//! Starting (with the drives' keys as ephemeral secrets, waiting for the guest), stopping
//! (gracefully, then forced) and moving VMs between hosts.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use identity::Identity;
use virt::domain::Domain;

use crate::controller::{OwnerKey, Undo, Vmctl, now_s};
use crate::domain::SecretSpec;
use crate::drive;
use crate::error::{Error, Result, io_error};
use crate::host::{ChannelGuard, Host, SecretGuard};
use crate::image::Image;
use crate::limits;
use crate::placement;
use crate::store::{State, VmRecord};
use crate::vault;

/// How long `move` waits for the graceful stop (then forces it), and for the guest to come up.
#[derive(Debug, Clone, Copy)]
pub struct MoveTimeouts {
    pub stop: Duration,
    pub start: Duration,
}

/// What `move` reports.
#[derive(Debug, Clone)]
pub struct Moved {
    /// The host it left.
    pub from: String,
    /// Whether the guest shut down by itself there (else it was forced off; or it was off).
    pub shut_down: bool,
    /// The start on the new host, if it was running.
    pub started: Option<Started>,
}

/// What `start` (and `move`) report.
#[derive(Debug, Clone)]
pub struct Started {
    pub vm: String,
    pub host: String,
    pub address: std::net::Ipv4Addr,
    /// From the start call until the guest printed its readiness marker (or, for an image
    /// without one, until it ran); for a VM that mounts the vault, until it mounted.
    pub elapsed: Duration,
    /// Whether the guest mounted the vault.
    pub vault: bool,
}

impl Vmctl {
    /// Starts a VM and waits (up to `timeout`) until the guest is up. Drive keys are opened
    /// with `key` and handed to libvirt only for the start; a VM that mounts the vault gets the
    /// unlocked key through its channel, and is forced off again if it does not mount.
    pub fn start(&self, name: &str, key: Option<&OwnerKey>, timeout: Duration) -> Result<Started> {
        let state = self.store.read()?;
        let vm = state.vm(name)?;
        let host = self.connect(&vm.host)?;
        let current = host.state(&host.domain(name)?)?;
        if current.is_active() {
            return Err(Error::WrongState {
                vm: name.to_string(),
                state: current.as_str().to_string(),
                hint: "stop it first",
            });
        }
        let owner = self.unlock_owner(name, vm, key)?;
        self.boot(name, owner.as_ref(), timeout)
    }

    /// Starts a stopped VM on its host with its owner's key already unlocked (by `start`, or
    /// by `move` before it stopped the VM: one passphrase for the whole move).
    fn boot(&self, name: &str, owner: Option<&Identity>, timeout: Duration) -> Result<Started> {
        let state = self.store.read()?;
        let vm = state.vm(name)?;
        let host = self.connect(&vm.host)?;
        let domain = host.domain(name)?;
        let image = Image::load(&self.store, &vm.image)?;
        let secrets = match owner {
            Some(owner) => self.drive_secrets(&host, name, &vm.drives, &state, owner)?,
            None => Vec::new(),
        };
        let console = self.store.console_path(name);
        let _ = fs::remove_file(&console);
        let started = Instant::now();
        host.start(name, &domain)?;
        drop(secrets);
        self.reattach_port(&host, name, &domain)?;
        let channel = self.hand_over(&host, name, &domain, vm, owner)?;
        self.store.update(|state| {
            if let Some(vm) = state.vms.get_mut(name) {
                vm.started_at = Some(now_s());
            }
            Ok(())
        })?;
        let up = wait_until_up(name, &console, &image, started, timeout);
        if let (Err(error), Some(_)) = (&up, &channel) {
            let _ = host.force_off(name, &domain);
            self.clear_started(name)?;
            return Err(forced_off(error, name, &console));
        }
        up?;
        drop(channel);
        Ok(Started {
            vm: name.to_string(),
            host: vm.host.clone(),
            address: self.net.port(name)?.ip,
            elapsed: started.elapsed(),
            vault: vm.vault.is_some(),
        })
    }

    /// Sends a VM that mounts the vault its hand-off; forces the VM off if that fails.
    fn hand_over(
        &self,
        host: &Host,
        name: &str,
        domain: &Domain,
        vm: &VmRecord,
        owner: Option<&Identity>,
    ) -> Result<Option<ChannelGuard>> {
        let (Some(seed), Some(owner)) = (&vm.vault, owner) else {
            return Ok(None);
        };
        let mut undo = Undo::new();
        undo.push(|| {
            let _ = host.force_off(name, domain);
        });
        let channel = vault::hand_off(host, name, domain, seed, owner)?;
        undo.done();
        Ok(Some(channel))
    }

    /// Unlocks the owner's key file when the VM needs it (drives, the vault): fails before
    /// anything starts if it is missing, does not open, or is not the vault user's.
    pub(crate) fn unlock_owner(
        &self,
        name: &str,
        vm: &VmRecord,
        key: Option<&OwnerKey>,
    ) -> Result<Option<Identity>> {
        let mut needs = Vec::new();
        if let Some(seed) = &vm.vault {
            needs.push(format!("the vault mounted as `{}`", seed.user));
        }
        if !vm.drives.is_empty() {
            needs.push(format!("encrypted drives ({})", vm.drives.join(", ")));
        }
        if needs.is_empty() {
            return Ok(None);
        }
        let owner = unlock(name, &needs.join(" and "), key)?;
        if let Some(seed) = &vm.vault {
            vault::check_owner(name, seed, &owner)?;
        }
        Ok(Some(owner))
    }

    /// Attaches the VM's OVS port to the tap libvirt has just made for it. A start makes a new
    /// tap under the port's interface name, and OVS's userspace datapath keeps reading the
    /// one deleted at the last stop on this host (see `netctl::Netctl::reattach`). If that
    /// fails, the VM is forced off again: a start leaves it running and reachable, or off.
    fn reattach_port(&self, host: &Host, name: &str, domain: &Domain) -> Result<()> {
        let mut undo = Undo::new();
        undo.push(|| {
            let _ = host.force_off(name, domain);
        });
        self.net
            .reattach(name)
            .map_err(|source| Error::PortNotAttached {
                vm: name.to_string(),
                source,
            })?;
        undo.done();
        Ok(())
    }

    /// Defines an ephemeral secret with the key of each of `drives`, opened with `owner`.
    /// Fails before anything is defined if a key cannot be opened.
    pub(crate) fn drive_secrets(
        &self,
        host: &Host,
        vm: &str,
        drives: &[String],
        state: &State,
        owner: &Identity,
    ) -> Result<Vec<SecretGuard>> {
        let mut keys = Vec::new();
        for name in drives {
            let record = state.drive(name)?;
            keys.push((
                name,
                record,
                drive::unwrap_key(name, record, &state.site, owner)?,
            ));
        }
        keys.into_iter()
            .map(|(name, record, key)| {
                let spec = SecretSpec {
                    uuid: record.secret_uuid.clone(),
                    description: format!("vmctl drive {name} of VM {vm}"),
                };
                host.secret(&spec, &drive::passphrase(&key))
            })
            .collect()
    }

    /// Stops a VM: ACPI shutdown, then forced off after `timeout`. Returns whether the guest
    /// stopped by itself.
    pub fn stop(&self, name: &str, timeout: Duration) -> Result<bool> {
        let state = self.store.read()?;
        let vm = state.vm(name)?;
        let host = self.connect(&vm.host)?;
        let domain = host.domain(name)?;
        let graceful = host.stop(name, &domain, timeout)?;
        self.clear_started(name)?;
        Ok(graceful)
    }

    fn clear_started(&self, name: &str) -> Result<()> {
        self.store.update(|state| {
            if let Some(vm) = state.vms.get_mut(name) {
                vm.started_at = None;
            }
            Ok(())
        })
    }

    /// Moves a VM to another host: stop, define there, move the network port, undefine here,
    /// and start again if it was running. Name, address and drives stay. Every check (target
    /// host reachable with room, the owner's key opens) happens before the VM is stopped; a
    /// VM that mounts the vault gets its hand-off again on the new host, as at any start (the
    /// key the old host's QEMU held goes with that process, and no disk ever had it).
    pub fn move_vm(
        &self,
        name: &str,
        to: &str,
        key: Option<&OwnerKey>,
        timeouts: MoveTimeouts,
    ) -> Result<Moved> {
        let state = self.store.read()?;
        let vm = state.vm(name)?.clone();
        if vm.host == to {
            return Err(Error::Invalid {
                what: "move",
                reason: format!("VM `{name}` is already on host `{to}`"),
            });
        }
        let source = self.connect(&vm.host)?;
        let target = self.connect(to)?;
        placement::choose(
            &self.capacities(&state, Some(name))?,
            Some(to),
            vm.cpus,
            vm.memory_mib,
        )?;
        if target.lookup(name)?.is_some() {
            return Err(Error::DuplicateVm {
                name: name.to_string(),
                host: to.to_string(),
            });
        }
        let domain = source.domain(name)?;
        let was_running = source.state(&domain)?.is_active();
        // Open the key now, once: a wrong passphrase must fail before the VM stops, and the
        // start on the new host (drive secrets, the vault's hand-off) uses it from memory.
        let owner = if was_running {
            self.unlock_owner(name, &vm, key)?
        } else {
            None
        };
        let port = self.net.port(name)?;
        let spec = self.domain_spec(name, &vm, &state, &port, target.accel()?)?;
        let shut_down = source.stop(name, &domain, timeouts.stop)?;
        self.clear_started(name)?;
        let mut undo = Undo::new();
        if was_running {
            undo.push(|| {
                let _ = self.boot(name, owner.as_ref(), timeouts.start);
            });
        }
        let defined = target.define(name, &spec.to_xml())?;
        let target_ref = &target;
        undo.push(move || {
            let _ = target_ref.undefine(name, &defined);
        });
        let from = vm.host.clone();
        self.net.move_vm(name, to)?;
        undo.push(move || {
            let _ = self.net.move_vm(name, &from);
            let _ = self.net.apply();
        });
        self.net.apply()?;
        source.undefine(name, &domain)?;
        self.store.update(|state| {
            if let Some(record) = state.vms.get_mut(name) {
                record.host = to.to_string();
            }
            Ok(())
        })?;
        undo.done();
        let started = if was_running {
            Some(self.boot(name, owner.as_ref(), timeouts.start)?)
        } else {
            None
        };
        Ok(Moved {
            from: vm.host,
            shut_down,
            started,
        })
    }
}

/// Unlocks `key`, which VM `vm` needs for `what`.
pub(crate) fn unlock(vm: &str, what: &str, key: Option<&OwnerKey>) -> Result<Identity> {
    let key = key.ok_or_else(|| Error::KeyNeeded {
        vm: vm.to_string(),
        what: what.to_string(),
    })?;
    key.unlock()
}

/// Waits until the guest printed the image's ready marker (if it has one), bounded by
/// `timeout` and a count of looks; the failure marker ends the wait at once.
fn wait_until_up(
    vm: &str,
    console: &Path,
    image: &Image,
    started: Instant,
    timeout: Duration,
) -> Result<()> {
    let Some(marker) = &image.ready_marker else {
        return Ok(());
    };
    let looks = timeout.as_millis() / u128::from(limits::POLL_MS) + 1;
    for _ in 0..looks {
        if console_line_with(console, marker)?.is_some() {
            return Ok(());
        }
        if let Some(failed) = &image.failed_marker
            && let Some(line) = console_line_with(console, failed)?
        {
            return Err(Error::GuestFailed {
                vm: vm.to_string(),
                what: format!("reported `{line}`"),
                log: console.to_path_buf(),
            });
        }
        if started.elapsed() > timeout {
            break;
        }
        sleep(Duration::from_millis(limits::POLL_MS));
    }
    Err(Error::NotReady {
        vm: vm.to_string(),
        timeout_s: timeout.as_secs(),
        marker: marker.to_string(),
        log: console.to_path_buf(),
    })
}

/// The error of a start that failed after the VM got its vault key (it was forced off).
fn forced_off(error: &Error, vm: &str, console: &Path) -> Error {
    let what = match error {
        Error::GuestFailed { what, .. } => what.clone(),
        Error::NotReady {
            timeout_s, marker, ..
        } => format!("did not print `{marker}` within {timeout_s} s"),
        other => other.to_string(),
    };
    Error::GuestFailed {
        vm: vm.to_string(),
        what: what + ", so it was forced off again",
        log: console.to_path_buf(),
    }
}

/// The first line of the console log holding `marker`, if any.
pub(crate) fn console_line_with(console: &Path, marker: &str) -> Result<Option<String>> {
    let mut text = Vec::new();
    match fs::File::open(console) {
        Ok(file) => {
            file.take(limits::CONSOLE_BYTES_MAX)
                .read_to_end(&mut text)
                .map_err(io_error("reading", console))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("reading", console)(e)),
    }
    let text = String::from_utf8_lossy(&text);
    Ok(text
        .lines()
        .find(|line| line.contains(marker))
        .map(|line| line.trim().to_string()))
}

/// Whether a domain is running (for callers holding one).
pub(crate) fn is_running(host: &Host, domain: &Domain) -> Result<bool> {
    Ok(host.state(domain)?.is_active())
}
