//! The operations that change allocations on request: add, remove and move a VM port,
//! expose and unexpose.

use std::collections::BTreeSet;

use super::{
    PortRequest, check_exposable, fixed_addresses, free_index, pick_address, port_mac,
    remove_exposures, vm_record,
};
use crate::config::Cluster;
use crate::error::AllocError;
use crate::limits;
use crate::state::{ExposureRecord, Origin, PortKind, PortRecord, State};
use crate::validate::check_name;

/// Adds a VM port through the library. Asking again for the same VM on the same host,
/// project and network returns the existing allocation.
pub fn add_port(
    cluster: &Cluster,
    state: &mut State,
    request: &PortRequest,
) -> Result<(), AllocError> {
    let vm = &request.vm;
    check_name("vm", vm, limits::NAME_BYTES_MAX)?;
    if let Some(record) = state.ports.get(vm) {
        let same = record.kind == PortKind::Vm
            && record.host == request.host
            && record.project.as_deref() == Some(request.project.as_str())
            && record.network == request.network
            && request.address.is_none_or(|a| a == record.ip);
        if same {
            return Ok(());
        }
        return Err(AllocError::VmExists {
            vm: vm.clone(),
            detail: format!(
                "on host {} in network {} with {}",
                record.host, record.network, record.ip
            ),
        });
    }
    let unknown = |kind, name: &str| AllocError::Unknown {
        kind,
        name: name.to_string(),
    };
    cluster
        .host(&request.host)
        .ok_or_else(|| unknown("host", &request.host))?;
    cluster
        .project(&request.project)
        .ok_or_else(|| unknown("project", &request.project))?;
    let network = cluster
        .network(&request.network)
        .ok_or_else(|| unknown("network", &request.network))?;
    let fixed = fixed_addresses(cluster);
    let ip = pick_address(state, &fixed, vm, network, request.address)?;
    let index = free_index(state)?;
    state.ports.insert(
        vm.clone(),
        PortRecord {
            kind: PortKind::Vm,
            origin: Origin::Api,
            host: request.host.clone(),
            declared_host: None,
            project: Some(request.project.clone()),
            network: network.name.clone(),
            ip,
            mac: port_mac(index),
            index,
        },
    );
    Ok(())
}

/// Removes a VM port added through the library, with its exposures.
pub fn remove_port(state: &mut State, vm: &str) -> Result<(), AllocError> {
    match state.ports.get(vm) {
        Some(record) if record.kind == PortKind::Vm && record.origin == Origin::Api => {
            state.ports.remove(vm);
            remove_exposures(state, vm, &mut Vec::new());
            Ok(())
        }
        Some(_) => Err(AllocError::DeclaredInFile {
            vm: vm.to_string(),
            action: "remove",
        }),
        None => Err(AllocError::UnknownVm { vm: vm.to_string() }),
    }
}

/// Moves a VM port to another host; its MAC, address and exposures stay.
pub fn move_port(
    cluster: &Cluster,
    state: &mut State,
    vm: &str,
    to: &str,
) -> Result<(), AllocError> {
    cluster.host(to).ok_or_else(|| AllocError::Unknown {
        kind: "host",
        name: to.to_string(),
    })?;
    vm_record(state, vm)?;
    if state.exposures.iter().any(|e| e.vm == vm) {
        check_exposable(cluster, vm, to)?;
    }
    if let Some(record) = state.ports.get_mut(vm) {
        record.host = to.to_string();
    }
    Ok(())
}

/// Publishes `vm_port` of a VM on a host port from the pool; exposing it again returns the
/// same host port.
pub fn expose(
    cluster: &Cluster,
    state: &mut State,
    vm: &str,
    vm_port: u16,
) -> Result<ExposureRecord, AllocError> {
    if vm_port == 0 {
        return Err(AllocError::PortZero);
    }
    let host = vm_record(state, vm)?.host.clone();
    let pool = cluster.expose_ports.ok_or(AllocError::NoPool)?;
    check_exposable(cluster, vm, &host)?;
    if let Some(existing) = state
        .exposures
        .iter()
        .find(|e| e.vm == vm && e.vm_port == vm_port)
    {
        return Ok(existing.clone());
    }
    let used: BTreeSet<u16> = state.exposures.iter().map(|e| e.host_port).collect();
    let host_port = (pool.first..=pool.last)
        .find(|p| !used.contains(p))
        .ok_or_else(|| AllocError::PoolExhausted {
            pool: pool.to_string(),
        })?;
    let exposure = ExposureRecord {
        vm: vm.to_string(),
        vm_port,
        host_port,
    };
    state.exposures.push(exposure.clone());
    state.exposures.sort_by_key(|e| e.host_port);
    Ok(exposure)
}

/// Withdraws an exposure and returns it.
pub fn unexpose(state: &mut State, vm: &str, vm_port: u16) -> Result<ExposureRecord, AllocError> {
    vm_record(state, vm)?;
    let position = state
        .exposures
        .iter()
        .position(|e| e.vm == vm && e.vm_port == vm_port)
        .ok_or_else(|| AllocError::NotExposed {
            vm: vm.to_string(),
            port: vm_port,
        })?;
    Ok(state.exposures.remove(position))
}
