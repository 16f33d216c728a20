//! Allocation: brings the state store in line with the cluster file, and the operations that
//! change it (add, remove and move a VM port, expose and unexpose). Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use crate::config::{Cluster, Network};
use crate::error::AllocError;
use crate::limits;
use crate::net::Mac;
use crate::state::{Origin, PortKind, PortRecord, State};
use crate::validate::check_address;

mod ops;
pub use ops::{add_port, expose, move_port, remove_port, unexpose};

/// A change to the allocations, as `plan` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange {
    PortAdded {
        name: String,
        host: String,
        ip: Ipv4Addr,
        mac: Mac,
    },
    PortRemoved {
        name: String,
        host: String,
    },
    PortMoved {
        name: String,
        from: String,
        to: String,
    },
    PortReaddressed {
        name: String,
        from: Ipv4Addr,
        to: Ipv4Addr,
    },
    ExposureRemoved {
        vm: String,
        vm_port: u16,
        host_port: u16,
    },
}

impl fmt::Display for StateChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateChange::PortAdded {
                name,
                host,
                ip,
                mac,
            } => {
                write!(f, "+ {name} on {host}: {ip} {mac}")
            }
            StateChange::PortRemoved { name, host } => write!(f, "- {name} (was on {host})"),
            StateChange::PortMoved { name, from, to } => write!(f, "~ {name} moves {from} -> {to}"),
            StateChange::PortReaddressed { name, from, to } => {
                write!(f, "~ {name} address {from} -> {to}")
            }
            StateChange::ExposureRemoved {
                vm,
                vm_port,
                host_port,
            } => write!(f, "- exposure {vm}:{vm_port} (host port {host_port})"),
        }
    }
}

/// A VM port the library or `vm add` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRequest {
    pub vm: String,
    pub host: String,
    pub project: String,
    pub network: String,
    /// A fixed address; without it the lowest free address is assigned.
    pub address: Option<Ipv4Addr>,
}

/// The MAC of the port with this index: locally administered, `02:6e:63` ("nc") + index.
pub fn port_mac(index: u16) -> Mac {
    let [high, low] = index.to_be_bytes();
    Mac([0x02, 0x6e, 0x63, 0x00, high, low])
}

/// The MAC the gateway address of a network answers with on every host.
pub fn gateway_mac(network: &Network) -> Mac {
    let [_, a, b, c] = network.tunnel_key.to_be_bytes();
    Mac([0x02, 0x6e, 0x67, a, b, c])
}

/// Brings `state` in line with `cluster`: numbers hosts and projects, allocates ports declared
/// in the file, removes what left it, and checks what the library added still fits.
pub fn reconcile(cluster: &Cluster, state: &mut State) -> Result<Vec<StateChange>, AllocError> {
    let mut changes = Vec::new();
    number(
        &mut state.hosts,
        cluster.hosts.iter().map(|h| h.name.as_str()),
        0,
        limits::HOSTS_MAX,
    )
    .ok_or(AllocError::NumbersExhausted {
        kind: "host",
        max: limits::HOSTS_MAX,
    })?;
    number(
        &mut state.projects,
        cluster.projects.iter().map(|p| p.name.as_str()),
        1,
        limits::PROJECTS_MAX + 1,
    )
    .ok_or(AllocError::NumbersExhausted {
        kind: "project",
        max: limits::PROJECTS_MAX,
    })?;
    remove_undeclared(cluster, state, &mut changes);
    check_api_ports(cluster, state)?;
    let fixed = fixed_addresses(cluster);
    for wanted in declared_ports(cluster) {
        sync_declared(state, &fixed, &wanted, &mut changes)?;
    }
    check_exposures(cluster, state)?;
    Ok(changes)
}

/// A port the file declares.
struct Declared<'a> {
    name: &'a str,
    kind: PortKind,
    host: &'a str,
    project: Option<&'a str>,
    network: &'a Network,
    address: Option<Ipv4Addr>,
}

fn declared_ports(cluster: &Cluster) -> Vec<Declared<'_>> {
    let network = |name: &str| {
        cluster
            .network(name)
            .unwrap_or_else(|| panic!("validated cluster names unknown network `{name}`"))
    };
    let services = cluster.services.iter().map(|s| Declared {
        name: &s.name,
        kind: PortKind::Service,
        host: &s.host,
        project: None,
        network: network(&s.network),
        address: Some(s.address),
    });
    let vms = cluster.vms.iter().map(|v| Declared {
        name: &v.name,
        kind: PortKind::Vm,
        host: &v.host,
        project: Some(&v.project),
        network: network(&v.network),
        address: v.address,
    });
    services.chain(vms).collect()
}

/// Addresses the file fixes, by owner.
fn fixed_addresses(cluster: &Cluster) -> BTreeMap<Ipv4Addr, &str> {
    let services = cluster
        .services
        .iter()
        .map(|s| (s.address, s.name.as_str()));
    let vms = cluster
        .vms
        .iter()
        .filter_map(|v| Some((v.address?, v.name.as_str())));
    services.chain(vms).collect()
}

fn remove_undeclared(cluster: &Cluster, state: &mut State, changes: &mut Vec<StateChange>) {
    let gone: Vec<String> = state
        .ports
        .iter()
        .filter(|(name, record)| {
            record.origin == Origin::File
                && cluster.vm(name).is_none()
                && cluster.service(name).is_none()
        })
        .map(|(name, _)| name.clone())
        .collect();
    for name in gone {
        if let Some(record) = state.ports.remove(&name) {
            changes.push(StateChange::PortRemoved {
                name: name.clone(),
                host: record.host,
            });
        }
        remove_exposures(state, &name, changes);
    }
}

fn remove_exposures(state: &mut State, vm: &str, changes: &mut Vec<StateChange>) {
    state.exposures.retain(|exposure| {
        let keep = exposure.vm != vm;
        if !keep {
            changes.push(StateChange::ExposureRemoved {
                vm: exposure.vm.clone(),
                vm_port: exposure.vm_port,
                host_port: exposure.host_port,
            });
        }
        keep
    });
}

/// Ports added through the library must still name a host, project and network of the file.
fn check_api_ports(cluster: &Cluster, state: &State) -> Result<(), AllocError> {
    let api = state
        .ports
        .iter()
        .filter(|(name, r)| r.origin == Origin::Api && cluster.vm(name).is_none());
    for (name, record) in api {
        let orphan = |kind, missing: &str| AllocError::Orphan {
            vm: name.clone(),
            kind,
            name: missing.to_string(),
        };
        if cluster.host(&record.host).is_none() {
            return Err(orphan("host", &record.host));
        }
        if cluster.network(&record.network).is_none() {
            return Err(orphan("network", &record.network));
        }
        if let Some(project) = &record.project
            && cluster.project(project).is_none()
        {
            return Err(orphan("project", project));
        }
    }
    Ok(())
}

fn sync_declared(
    state: &mut State,
    fixed: &BTreeMap<Ipv4Addr, &str>,
    wanted: &Declared<'_>,
    changes: &mut Vec<StateChange>,
) -> Result<(), AllocError> {
    let name = wanted.name;
    if let Some(record) = state.ports.get(name)
        && record.kind != wanted.kind
    {
        state.ports.remove(name);
    }
    let Some(mut record) = state.ports.get(name).cloned() else {
        let ip = pick_address(state, fixed, name, wanted.network, wanted.address)?;
        let index = free_index(state)?;
        let record = PortRecord {
            kind: wanted.kind,
            origin: Origin::File,
            host: wanted.host.to_string(),
            declared_host: Some(wanted.host.to_string()),
            project: wanted.project.map(str::to_string),
            network: wanted.network.name.clone(),
            ip,
            mac: port_mac(index),
            index,
        };
        changes.push(StateChange::PortAdded {
            name: name.to_string(),
            host: record.host.clone(),
            ip,
            mac: record.mac,
        });
        state.ports.insert(name.to_string(), record);
        return Ok(());
    };
    record.origin = Origin::File;
    record.kind = wanted.kind;
    record.project = wanted.project.map(str::to_string);
    if record.declared_host.as_deref() != Some(wanted.host) {
        if record.host != wanted.host {
            changes.push(StateChange::PortMoved {
                name: name.to_string(),
                from: record.host.clone(),
                to: wanted.host.to_string(),
            });
        }
        record.host = wanted.host.to_string();
        record.declared_host = Some(wanted.host.to_string());
    }
    let claimed_by_other = fixed.get(&record.ip).is_some_and(|owner| *owner != name);
    let keeps_address = record.network == wanted.network.name
        && wanted.address.is_none_or(|a| a == record.ip)
        && check_address("", record.ip, wanted.network).is_ok()
        && !claimed_by_other;
    if !keeps_address {
        let old = record.ip;
        state.ports.remove(name);
        let ip = pick_address(state, fixed, name, wanted.network, wanted.address)?;
        record.network = wanted.network.name.clone();
        record.ip = ip;
        changes.push(StateChange::PortReaddressed {
            name: name.to_string(),
            from: old,
            to: ip,
        });
    }
    state.ports.insert(name.to_string(), record);
    Ok(())
}

/// The fixed address if it is free, else the lowest free address of the network. The
/// network's gateway, addresses other ports hold and addresses the file fixes for other ports
/// are not free; a port from the file that holds an address the file now fixes for another
/// port does not count as holding it, because it is given a new address when its turn comes.
fn pick_address(
    state: &State,
    fixed: &BTreeMap<Ipv4Addr, &str>,
    name: &str,
    network: &Network,
    address: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, AllocError> {
    let holder = |ip: Ipv4Addr| {
        let held = state
            .ports
            .iter()
            .find(|(other, r)| {
                let displaced = r.origin == Origin::File
                    && fixed.get(&r.ip).is_some_and(|owner| owner != other);
                r.ip == ip && other.as_str() != name && !displaced
            })
            .map(|(other, _)| other.as_str());
        held.or_else(|| fixed.get(&ip).copied().filter(|owner| *owner != name))
    };
    if let Some(ip) = address {
        check_address(&format!("`{name}`"), ip, network)?;
        if let Some(other) = holder(ip) {
            return Err(crate::error::ConfigError::AddressTaken {
                owner: format!("`{name}`"),
                address: ip,
                holder: format!("`{other}`"),
            }
            .into());
        }
        return Ok(ip);
    }
    network
        .cidr
        .usable()
        .find(|ip| *ip != network.gateway && holder(*ip).is_none())
        .ok_or_else(|| AllocError::AddressesExhausted {
            network: network.name.clone(),
            cidr: network.cidr,
        })
}

fn free_index(state: &State) -> Result<u16, AllocError> {
    let used: BTreeSet<u16> = state.ports.values().map(|r| r.index).collect();
    (0..limits::PORTS_MAX as u16)
        .find(|i| !used.contains(i))
        .ok_or(AllocError::PortsExhausted {
            max: limits::PORTS_MAX,
        })
}

/// Keeps numbers of names still present and numbers new names with the lowest free number in
/// `first..end`; `None` when the numbers run out.
fn number<'a, N>(
    numbers: &mut BTreeMap<String, N>,
    names: impl Iterator<Item = &'a str> + Clone,
    first: usize,
    end: usize,
) -> Option<()>
where
    N: Copy + Ord + TryFrom<usize> + Into<u64>,
{
    let present: BTreeSet<&str> = names.clone().collect();
    numbers.retain(|name, _| present.contains(name.as_str()));
    for name in names {
        if numbers.contains_key(name) {
            continue;
        }
        let used: BTreeSet<u64> = numbers.values().map(|n| (*n).into()).collect();
        let free = (first..end).find(|n| !used.contains(&(*n as u64)))?;
        numbers.insert(name.to_string(), N::try_from(free).ok()?);
    }
    Some(())
}

fn check_exposures(cluster: &Cluster, state: &State) -> Result<(), AllocError> {
    for exposure in &state.exposures {
        let pool = cluster.expose_ports;
        if !pool.is_some_and(|p| p.contains(exposure.host_port)) {
            return Err(AllocError::ExposureOutsidePool {
                vm: exposure.vm.clone(),
                port: exposure.vm_port,
                host_port: exposure.host_port,
                pool: pool.map_or("(none)".to_string(), |p| p.to_string()),
            });
        }
        let record = vm_record(state, &exposure.vm)?;
        check_exposable(cluster, &exposure.vm, &record.host)?;
    }
    Ok(())
}

fn check_exposable(cluster: &Cluster, vm: &str, host: &str) -> Result<(), AllocError> {
    match cluster.host(host) {
        Some(h) if h.external_bridge.is_some() => Ok(()),
        _ => Err(AllocError::NoExternalBridge {
            host: host.to_string(),
            vm: vm.to_string(),
        }),
    }
}

fn vm_record<'a>(state: &'a State, vm: &str) -> Result<&'a PortRecord, AllocError> {
    state
        .ports
        .get(vm)
        .filter(|r| r.kind == PortKind::Vm)
        .ok_or_else(|| AllocError::UnknownVm { vm: vm.to_string() })
}

#[cfg(test)]
mod tests;
