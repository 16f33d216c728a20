//! `Netctl`: the operations of the library and the command line, over a validated cluster
//! file and its state store.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use crate::alloc::{self, PortRequest, StateChange};
use crate::apply::{self, HostReport};
use crate::config::Cluster;
use crate::desired::{self, HostDesired, Topology};
use crate::error::{AllocError, Error, HostError, OvsError};
use crate::net::Mac;
use crate::ovs::{Actual, HostOvs};
use crate::plan::{self, HostPlan};
use crate::state::{ExposureRecord, PortKind, State, StateLock, StateStore};

/// One host as read: its OVS, what it should have, and what it has with the plan to get there.
pub(crate) type Surveyed = (HostOvs, HostDesired, Result<(Actual, HostPlan), OvsError>);

/// The network controller for one cluster file.
#[derive(Debug, Clone)]
pub struct Netctl {
    cluster: Cluster,
    store: StateStore,
}

/// A VM's port (or a service's: then `kind` is `Service` and `project` is empty): what the
/// host needs to attach the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPort {
    pub vm: String,
    pub kind: PortKind,
    pub host: String,
    pub project: String,
    pub network: String,
    pub mac: Mac,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    /// The integration bridge the port is on.
    pub bridge: String,
    /// The interface name the VM's device must have on its host (for libvirt:
    /// `<interface type='ethernet'><target dev='NAME'/>`); netctl adds it to the bridge.
    pub interface: String,
    /// The OpenFlow port number netctl requests for it.
    pub ofport: u16,
    /// Whether the cluster file declares it (else the library or `vm add` added it).
    pub declared: bool,
}

/// A published VM port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    pub vm: String,
    pub vm_port: u16,
    pub host: String,
    /// The address clients connect to.
    pub address: SocketAddrV4,
}

/// What `plan` found.
#[derive(Debug, Clone)]
pub struct Plan {
    pub state_changes: Vec<StateChange>,
    pub hosts: Vec<HostPlan>,
}

/// What `apply` did.
#[derive(Debug, Clone)]
pub struct ApplyReport {
    pub state_changes: Vec<StateChange>,
    pub hosts: Vec<HostReport>,
}

impl Plan {
    pub fn change_count(&self) -> usize {
        self.state_changes.len() + self.hosts.iter().map(HostPlan::change_count).sum::<usize>()
    }
}

impl ApplyReport {
    pub fn change_count(&self) -> usize {
        self.state_changes.len()
            + self
                .hosts
                .iter()
                .map(|h| h.plan.change_count())
                .sum::<usize>()
    }
}

impl Netctl {
    /// A controller for a cluster, with the state store the cluster file names.
    pub fn new(cluster: Cluster) -> Result<Self, Error> {
        let store = StateStore::new(&cluster.state_path);
        Self::with_store(cluster, store)
    }

    /// A controller with another state store.
    pub fn with_store(cluster: Cluster, store: StateStore) -> Result<Self, Error> {
        cluster.validate()?;
        Ok(Netctl { cluster, store })
    }

    /// Loads and validates a cluster file.
    pub fn open(cluster_file: &Path) -> Result<Self, Error> {
        Self::new(Cluster::load(cluster_file)?)
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// What `apply` would change, host by host. Changes nothing.
    pub fn plan(&self) -> Result<Plan, Error> {
        let mut state = self.store.read()?;
        let state_changes = alloc::reconcile(&self.cluster, &mut state)?;
        let hosts = self.survey(&state)?;
        Ok(Plan {
            state_changes,
            hosts: hosts.into_iter().map(|(_, _, _, plan)| plan).collect(),
        })
    }

    /// Makes every host match the cluster file and the state store. Reads every host first:
    /// if one cannot be read, nothing changes. A host that then fails is reported, the
    /// others are applied, and the next apply converges.
    pub fn apply(&self) -> Result<ApplyReport, Error> {
        let lock = self.store.lock()?;
        let mut state = lock.load()?;
        let before = state.clone();
        let state_changes = alloc::reconcile(&self.cluster, &mut state)?;
        let hosts = self.survey(&state)?;
        if state != before {
            lock.save(&state)?;
        }
        let results: Vec<(String, Result<HostReport, OvsError>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = hosts
                .into_iter()
                .map(|(ovs, desired, actual, plan)| {
                    scope.spawn(move || {
                        let result = apply::apply_host(&ovs, &desired, plan, &actual);
                        (ovs.host.clone(), result)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| panic!("a host's apply thread panicked"))
                })
                .collect()
        });
        drop(lock);
        let mut reports = Vec::new();
        let mut failed = Vec::new();
        for (host, result) in results {
            match result {
                Ok(report) => reports.push(report),
                Err(source) => failed.push(HostError { host, source }),
            }
        }
        if !failed.is_empty() {
            let applied = reports.iter().map(|r| r.plan.host.clone()).collect();
            return Err(Error::Apply { failed, applied });
        }
        Ok(ApplyReport {
            state_changes,
            hosts: reports,
        })
    }

    /// Reads every host (in parallel) and plans it; any failure is `Error::Unreachable`.
    fn survey(
        &self,
        state: &State,
    ) -> Result<Vec<(HostOvs, HostDesired, Actual, HostPlan)>, Error> {
        let mut surveyed = Vec::new();
        let mut failed = Vec::new();
        for (ovs, desired, planned) in self.survey_hosts(state) {
            match planned {
                Ok((actual, plan)) => surveyed.push((ovs, desired, actual, plan)),
                Err(source) => failed.push(HostError {
                    host: ovs.host.clone(),
                    source,
                }),
            }
        }
        if failed.is_empty() {
            Ok(surveyed)
        } else {
            Err(Error::Unreachable(failed))
        }
    }

    /// Reads every host (in parallel) and plans it, host by host.
    pub(crate) fn survey_hosts(&self, state: &State) -> Vec<Surveyed> {
        let topology = Topology::new(&self.cluster, state);
        std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .cluster
                .hosts
                .iter()
                .map(|host| {
                    let desired = topology.host(host);
                    let ovs = HostOvs::new(host, self.cluster.ovs_timeout_s);
                    scope.spawn(move || {
                        let planned = ovs.read(&desired.bridges()).and_then(|actual| {
                            let plan = plan::plan_host(&desired, &actual)?;
                            Ok((actual, plan))
                        });
                        (ovs, desired, planned)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| panic!("a host's read thread panicked"))
                })
                .collect()
        })
    }

    /// Runs `change` on the reconciled state under the lock and saves the result.
    fn update<T>(
        &self,
        change: impl FnOnce(&mut State) -> Result<T, AllocError>,
    ) -> Result<(T, State), Error> {
        let (value, state, _lock) = self.update_locked(change)?;
        Ok((value, state))
    }

    /// Like `update`, and keeps the lock for the caller.
    fn update_locked<T>(
        &self,
        change: impl FnOnce(&mut State) -> Result<T, AllocError>,
    ) -> Result<(T, State, StateLock), Error> {
        let lock: StateLock = self.store.lock()?;
        let mut state = lock.load()?;
        let before = state.clone();
        alloc::reconcile(&self.cluster, &mut state)?;
        let value = change(&mut state)?;
        if state != before {
            lock.save(&state)?;
        }
        Ok((value, state, lock))
    }

    /// Gives a VM a port (MAC, address, interface name) on a host; asking again for the same
    /// VM returns the same port. The port appears on the host at the next `apply`.
    pub fn allocate_port(&self, request: &PortRequest) -> Result<VmPort, Error> {
        let (_, state) = self.update(|state| alloc::add_port(&self.cluster, state, request))?;
        self.view(&state, &request.vm)
    }

    /// Releases a port added with `allocate_port`, with its exposures (apply removes it).
    pub fn release_port(&self, vm: &str) -> Result<(), Error> {
        self.update(|state| alloc::remove_port(state, vm))?;
        Ok(())
    }

    /// Moves a VM's port to another host; MAC, address and exposures stay. Call `apply` to
    /// make every host follow.
    pub fn move_vm(&self, vm: &str, to: &str) -> Result<VmPort, Error> {
        let (_, state) = self.update(|state| alloc::move_port(&self.cluster, state, vm, to))?;
        self.view(&state, vm)
    }

    /// Re-attaches a VM's (or a service's) port to its device after the device was deleted
    /// and created again under the same name, as libvirt does when a VM stops and starts
    /// again on the same host: call it once the new device exists. OVS's userspace datapath
    /// would otherwise keep reading the deleted device, with no error in its database. The
    /// port is deleted and added again with the same OpenFlow port number, then the host's
    /// ports and flows are read back (and put right, as `apply` would, if they drifted); other
    /// hosts are not touched. Fails, with the port waiting for its device, when the device
    /// does not exist; changes nothing when the host cannot be read.
    pub fn reattach(&self, vm: &str) -> Result<VmPort, Error> {
        let ((), state, _lock) = self.update_locked(|_| Ok(()))?;
        let port = self.view(&state, vm)?;
        let host = self
            .cluster
            .host(&port.host)
            .ok_or_else(|| AllocError::Unknown {
                kind: "host",
                name: port.host.clone(),
            })?;
        let desired = Topology::new(&self.cluster, &state).host(host);
        let ovs = HostOvs::new(host, self.cluster.ovs_timeout_s);
        let on_host = |source| HostError {
            host: port.host.clone(),
            source,
        };
        ovs.read(&desired.bridges())
            .map_err(|e| Error::Unreachable(vec![on_host(e)]))?;
        let report =
            apply::reattach_port(&ovs, &desired, &port.interface).map_err(|e| Error::Apply {
                failed: vec![on_host(e)],
                applied: Vec::new(),
            })?;
        if report.waiting.contains(&port.interface) {
            return Err(Error::NoDevice {
                vm: vm.to_string(),
                host: port.host,
                interface: port.interface,
            });
        }
        Ok(port)
    }

    /// Publishes a VM's TCP port on a host port from the pool of the VM's host. Call `apply`
    /// to install it.
    pub fn expose(&self, vm: &str, vm_port: u16) -> Result<Exposure, Error> {
        let (record, state) =
            self.update(|state| alloc::expose(&self.cluster, state, vm, vm_port))?;
        Ok(self.exposure_view(&state, &record))
    }

    /// Withdraws an exposure. Call `apply` to remove it from the host.
    pub fn unexpose(&self, vm: &str, vm_port: u16) -> Result<Exposure, Error> {
        let (record, state) = self.update(|state| alloc::unexpose(state, vm, vm_port))?;
        Ok(Exposure {
            vm: record.vm.clone(),
            vm_port: record.vm_port,
            host: state
                .ports
                .get(vm)
                .map(|r| r.host.clone())
                .unwrap_or_default(),
            address: SocketAddrV4::new(
                self.host_ip(&state, vm).unwrap_or(Ipv4Addr::UNSPECIFIED),
                record.host_port,
            ),
        })
    }

    /// A VM's or a service's port (allocating the ports the file declares, if not yet done).
    pub fn port(&self, vm: &str) -> Result<VmPort, Error> {
        let (_, state) = self.update(|_| Ok(()))?;
        self.view(&state, vm)
    }

    /// Every VM port (not services), by name.
    pub fn ports(&self) -> Result<Vec<VmPort>, Error> {
        let (_, state) = self.update(|_| Ok(()))?;
        state
            .ports
            .iter()
            .filter(|(_, r)| r.kind == PortKind::Vm)
            .map(|(name, _)| self.view(&state, name))
            .collect()
    }

    /// Every exposure.
    pub fn exposures(&self) -> Result<Vec<Exposure>, Error> {
        let state = self.store.read()?;
        Ok(state
            .exposures
            .iter()
            .map(|record| self.exposure_view(&state, record))
            .collect())
    }

    fn view(&self, state: &State, vm: &str) -> Result<VmPort, Error> {
        let record = state
            .ports
            .get(vm)
            .ok_or_else(|| AllocError::UnknownVm { vm: vm.to_string() })?;
        let network = self
            .cluster
            .network(&record.network)
            .ok_or_else(|| AllocError::Unknown {
                kind: "network",
                name: record.network.clone(),
            })?;
        Ok(VmPort {
            vm: vm.to_string(),
            kind: record.kind,
            host: record.host.clone(),
            project: record.project.clone().unwrap_or_default(),
            network: record.network.clone(),
            mac: record.mac,
            ip: record.ip,
            prefix_len: network.cidr.prefix_len(),
            gateway: network.gateway,
            bridge: self.cluster.bridge.clone(),
            interface: desired::interface_name(record.index),
            ofport: desired::endpoint_ofport(record.index),
            declared: self.cluster.vm(vm).is_some(),
        })
    }

    fn exposure_view(&self, state: &State, record: &ExposureRecord) -> Exposure {
        Exposure {
            vm: record.vm.clone(),
            vm_port: record.vm_port,
            host: state
                .ports
                .get(&record.vm)
                .map(|r| r.host.clone())
                .unwrap_or_default(),
            address: SocketAddrV4::new(
                self.host_ip(state, &record.vm)
                    .unwrap_or(Ipv4Addr::UNSPECIFIED),
                record.host_port,
            ),
        }
    }

    fn host_ip(&self, state: &State, vm: &str) -> Option<Ipv4Addr> {
        let host = &state.ports.get(vm)?.host;
        Some(self.cluster.host(host)?.underlay_ip)
    }
}

impl fmt::Display for VmPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} host {} project {} network {} address {}/{} gateway {} mac {} interface {} on {}",
            self.vm,
            self.host,
            self.project,
            self.network,
            self.ip,
            self.prefix_len,
            self.gateway,
            self.mac,
            self.interface,
            self.bridge
        )
    }
}

impl fmt::Display for Exposure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} -> {} (host {})",
            self.vm, self.vm_port, self.address, self.host
        )
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_state_changes(f, &self.state_changes)?;
        for host in &self.hosts {
            write!(f, "{host}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_state_changes(f, &self.state_changes)?;
        for host in &self.hosts {
            write!(f, "{}", host.plan)?;
            if !host.waiting.is_empty() {
                writeln!(f, "  waiting for devices: {}", host.waiting.join(", "))?;
            }
        }
        Ok(())
    }
}

fn write_state_changes(f: &mut fmt::Formatter<'_>, changes: &[StateChange]) -> fmt::Result {
    if changes.is_empty() {
        return Ok(());
    }
    writeln!(f, "allocations:")?;
    for change in changes {
        writeln!(f, "  {change}")?;
    }
    Ok(())
}
