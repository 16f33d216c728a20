//! Checks on a parsed cluster file: names, references, ranges and addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::config::{Cluster, Host, Network};
use crate::error::ConfigError;
use crate::limits;

impl Cluster {
    /// Checks the whole file; the first problem found is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_globals()?;
        self.check_hosts()?;
        self.check_networks()?;
        self.check_projects()?;
        self.check_ports()
    }

    fn check_globals(&self) -> Result<(), ConfigError> {
        check_interface_name("bridge", &self.bridge)?;
        if self.ovs_timeout_s == 0 || self.ovs_timeout_s > limits::OVS_TIMEOUT_S_MAX {
            return Err(bad_value(
                "ovs_timeout_s",
                self.ovs_timeout_s,
                "must be between 1 and 300 seconds",
            ));
        }
        if let Some(pool) = self.expose_ports
            && usize::from(pool.last - pool.first) >= limits::EXPOSURES_MAX
        {
            return Err(bad_value(
                "expose_ports",
                pool,
                "holds more than 4096 ports",
            ));
        }
        count("host", self.hosts.len(), limits::HOSTS_MAX)?;
        count("network", self.networks.len(), limits::NETWORKS_MAX)?;
        count("project", self.projects.len(), limits::PROJECTS_MAX)?;
        count("service", self.services.len(), limits::SERVICES_MAX)?;
        count(
            "vm and service",
            self.vms.len() + self.services.len(),
            limits::PORTS_MAX,
        )
    }

    fn check_hosts(&self) -> Result<(), ConfigError> {
        if self.hosts.is_empty() {
            return Err(ConfigError::NoHosts);
        }
        unique("host", self.hosts.iter().map(|h| h.name.as_str()))?;
        let mut underlay = BTreeMap::new();
        for host in &self.hosts {
            check_host(host, &self.bridge)?;
            if let Some(other) = underlay.insert(host.underlay_ip, &host.name) {
                return Err(ConfigError::AddressTaken {
                    owner: format!("host `{}`", host.name),
                    address: host.underlay_ip,
                    holder: format!("host `{other}`"),
                });
            }
        }
        Ok(())
    }

    fn check_networks(&self) -> Result<(), ConfigError> {
        unique("network", self.networks.iter().map(|n| n.name.as_str()))?;
        let mut keys = BTreeMap::new();
        for (i, network) in self.networks.iter().enumerate() {
            check_name("network", &network.name, limits::NAME_BYTES_MAX)?;
            check_network(network)?;
            if let Some(other) = keys.insert(network.tunnel_key, &network.name) {
                return Err(bad_value(
                    &format!("network `{}` tunnel_key", network.name),
                    network.tunnel_key,
                    &format!("network `{other}` uses it already"),
                ));
            }
            if let Some(other) = self.networks[..i]
                .iter()
                .find(|other| other.cidr.overlaps(&network.cidr))
            {
                return Err(ConfigError::Overlap {
                    first: format!("network `{}` ({})", other.name, other.cidr),
                    second: format!("network `{}` ({})", network.name, network.cidr),
                });
            }
            if let Some(host) = self
                .hosts
                .iter()
                .find(|host| network.cidr.contains(host.underlay_ip))
            {
                return Err(ConfigError::Overlap {
                    first: format!("network `{}` ({})", network.name, network.cidr),
                    second: format!("host `{}` underlay_ip {}", host.name, host.underlay_ip),
                });
            }
        }
        Ok(())
    }

    fn check_projects(&self) -> Result<(), ConfigError> {
        unique("project", self.projects.iter().map(|p| p.name.as_str()))?;
        for project in &self.projects {
            check_name("project", &project.name, limits::NAME_BYTES_MAX)?;
            let owner = format!("project `{}`", project.name);
            for service in &project.services {
                self.service(service)
                    .ok_or_else(|| unknown(&owner, "service", service))?;
            }
            unique(
                &format!("service name in {owner}"),
                project.services.iter().map(String::as_str),
            )?;
        }
        Ok(())
    }

    /// VM and service ports: names unique across both, references defined, addresses usable
    /// and distinct.
    fn check_ports(&self) -> Result<(), ConfigError> {
        let names = self.vms.iter().map(|v| v.name.as_str());
        unique(
            "vm or service",
            names.chain(self.services.iter().map(|s| s.name.as_str())),
        )?;
        let mut taken: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        for service in &self.services {
            let owner = format!("service `{}`", service.name);
            check_name("service", &service.name, limits::NAME_BYTES_MAX)?;
            self.host(&service.host)
                .ok_or_else(|| unknown(&owner, "host", &service.host))?;
            let network = self
                .network(&service.network)
                .ok_or_else(|| unknown(&owner, "network", &service.network))?;
            if service.port == 0 {
                return Err(bad_value(&format!("{owner} port"), 0, "must not be 0"));
            }
            claim(&mut taken, &owner, service.address, network)?;
        }
        for vm in &self.vms {
            let owner = format!("vm `{}`", vm.name);
            check_name("vm", &vm.name, limits::NAME_BYTES_MAX)?;
            self.host(&vm.host)
                .ok_or_else(|| unknown(&owner, "host", &vm.host))?;
            self.project(&vm.project)
                .ok_or_else(|| unknown(&owner, "project", &vm.project))?;
            let network = self
                .network(&vm.network)
                .ok_or_else(|| unknown(&owner, "network", &vm.network))?;
            if let Some(address) = vm.address {
                claim(&mut taken, &owner, address, network)?;
            }
        }
        Ok(())
    }
}

/// Checks that `address` is a usable, free address of `network` and records it as taken.
fn claim(
    taken: &mut BTreeMap<Ipv4Addr, String>,
    owner: &str,
    address: Ipv4Addr,
    network: &Network,
) -> Result<(), ConfigError> {
    check_address(owner, address, network)?;
    if let Some(holder) = taken.insert(address, owner.to_string()) {
        return Err(ConfigError::AddressTaken {
            owner: owner.to_string(),
            address,
            holder,
        });
    }
    Ok(())
}

/// Checks that `address` may be given to a port of `network`.
pub(crate) fn check_address(
    owner: &str,
    address: Ipv4Addr,
    network: &Network,
) -> Result<(), ConfigError> {
    if !network.cidr.is_usable(address) {
        return Err(ConfigError::OutsideRange {
            owner: owner.to_string(),
            address,
            network: network.name.clone(),
            cidr: network.cidr,
        });
    }
    if address == network.gateway {
        return Err(ConfigError::AddressTaken {
            owner: owner.to_string(),
            address,
            holder: format!("the gateway of network `{}`", network.name),
        });
    }
    Ok(())
}

fn check_host(host: &Host, bridge: &str) -> Result<(), ConfigError> {
    check_name("host", &host.name, limits::HOST_NAME_BYTES_MAX)?;
    let owner = format!("host `{}`", host.name);
    check_text(&format!("{owner} ovsdb"), &host.ovsdb)?;
    let socket = host.ovsdb.strip_prefix("unix:");
    let tcp = host.ovsdb.strip_prefix("tcp:");
    if socket.is_some_and(str::is_empty)
        || tcp.is_some_and(|t| t.rsplit_once(':').is_none())
        || (socket.is_none() && tcp.is_none())
    {
        return Err(bad_value(
            &format!("{owner} ovsdb"),
            &host.ovsdb,
            "must be unix:PATH or tcp:IP:PORT",
        ));
    }
    if host.openflow_dir().is_none() {
        return Err(bad_value(
            &format!("{owner} openflow_dir"),
            "(missing)",
            "is needed when ovsdb is not a unix: socket",
        ));
    }
    if let Some(external) = &host.external_bridge {
        check_interface_name(&format!("{owner} external_bridge"), external)?;
        if external == bridge {
            return Err(bad_value(
                &format!("{owner} external_bridge"),
                external,
                "must differ from the integration bridge",
            ));
        }
    }
    if let Some(uri) = &host.libvirt_uri {
        check_text(&format!("{owner} libvirt_uri"), uri)?;
    }
    if host.cpus == Some(0) {
        return Err(bad_value(&format!("{owner} cpus"), 0, "must be at least 1"));
    }
    if host.memory_mib == Some(0) {
        return Err(bad_value(
            &format!("{owner} memory_mib"),
            0,
            "must be at least 1",
        ));
    }
    Ok(())
}

fn check_network(network: &Network) -> Result<(), ConfigError> {
    let owner = format!("network `{}`", network.name);
    let prefix = network.cidr.prefix_len();
    if !(limits::NETWORK_PREFIX_LEN_MIN..=limits::NETWORK_PREFIX_LEN_MAX).contains(&prefix) {
        return Err(bad_value(
            &format!("{owner} cidr"),
            network.cidr,
            "prefix length must be between /16 and /29",
        ));
    }
    if network.tunnel_key == 0 || network.tunnel_key > limits::TUNNEL_KEY_MAX {
        return Err(bad_value(
            &format!("{owner} tunnel_key"),
            network.tunnel_key,
            "must be between 1 and 16777215",
        ));
    }
    if !network.cidr.is_usable(network.gateway) {
        return Err(ConfigError::OutsideRange {
            owner: format!("{owner} gateway"),
            address: network.gateway,
            network: network.name.clone(),
            cidr: network.cidr,
        });
    }
    Ok(())
}

/// Names: lowercase letters, digits and `-`, starting with a letter or digit.
pub(crate) fn check_name(kind: &'static str, name: &str, max: usize) -> Result<(), ConfigError> {
    let reason = if name.is_empty() {
        Some("is empty")
    } else if name.len() > max {
        Some("is too long")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("may hold only a-z, 0-9 and -")
    } else if name.starts_with('-') {
        Some("must not start with -")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ConfigError::BadName {
            kind,
            name: name.to_string(),
            reason,
            max,
        }),
        None => Ok(()),
    }
}

fn check_interface_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= limits::INTERFACE_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(bad_value(
            field,
            name,
            "must be 1-15 characters of a-z, A-Z, 0-9, -, _ and .",
        ))
    }
}

fn check_text(field: &str, text: &str) -> Result<(), ConfigError> {
    if text.len() > limits::TEXT_BYTES_MAX || text.chars().any(char::is_control) {
        return Err(bad_value(
            field,
            text.escape_debug(),
            "is too long or holds control characters",
        ));
    }
    Ok(())
}

fn unique<'a>(kind: &str, names: impl Iterator<Item = &'a str>) -> Result<(), ConfigError> {
    let mut seen = BTreeSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(ConfigError::Duplicate {
                kind: kind.to_string(),
                name: name.to_string(),
            });
        }
    }
    Ok(())
}

fn count(kind: &'static str, count: usize, max: usize) -> Result<(), ConfigError> {
    if count > max {
        return Err(ConfigError::TooMany { kind, max });
    }
    Ok(())
}

fn unknown(owner: &str, kind: &'static str, name: &str) -> ConfigError {
    ConfigError::Unknown {
        owner: owner.to_string(),
        kind,
        name: name.to_string(),
    }
}

fn bad_value(field: &str, value: impl std::fmt::Display, reason: &str) -> ConfigError {
    ConfigError::BadValue {
        field: field.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}
