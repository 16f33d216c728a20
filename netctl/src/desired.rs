//! What each host should have: the integration bridge, its ports (tunnels, VM and service
//! ports, the patch to the external bridge) and its flows. Pure: computed from the cluster
//! file and the state store only.

use std::fmt;

use crate::alloc::gateway_mac;
use crate::config::{Cluster, Host, Network, Protocol};
use crate::flows::{self, FlowSet};
use crate::limits;
use crate::state::{ExposureRecord, PortKind, PortRecord, State};

/// Group ids of services start here; project ids stay below.
const SERVICE_GROUP_BASE: u32 = 0x10000;
const _: () = assert!(limits::PROJECTS_MAX < SERVICE_GROUP_BASE as usize);

/// The patch ports between the integration bridge and the external bridge.
pub const PATCH_INT: &str = "nc-ext";
pub const PATCH_EXT: &str = "nc-int";

/// The OVS interface name of a VM or service port.
pub fn interface_name(index: u16) -> String {
    format!("ncp{index}")
}

pub fn endpoint_ofport(index: u16) -> u16 {
    limits::ENDPOINT_OFPORT_BASE + index
}

/// One host's desired configuration.
#[derive(Debug, Clone)]
pub struct HostDesired {
    pub host: String,
    pub bridge: String,
    /// Ports on the integration bridge.
    pub ports: Vec<PortSpec>,
    /// The host's external bridge and netctl's patch port on it.
    pub external: Option<(String, PortSpec)>,
    pub flows: FlowSet,
    /// netctl's flows on the external bridge (the bridge's other flows are left alone).
    pub external_flows: FlowSet,
}

impl HostDesired {
    /// The bridges netctl reads flows from: the integration bridge and the external one.
    pub fn bridges(&self) -> Vec<&str> {
        let mut bridges = vec![self.bridge.as_str()];
        bridges.extend(self.external.as_ref().map(|(b, _)| b.as_str()));
        bridges
    }
}

/// One OVS port netctl manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub bridge: String,
    pub name: String,
    pub role: PortRole,
    /// Interface type ("" for a system device such as a VM's tap).
    pub iface_type: &'static str,
    /// `key=value` settings of the Interface row (`options:remote_ip=...`, `bfd:enable=true`).
    pub settings: Vec<String>,
    pub ofport: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRole {
    Tunnel { to: String, kind: &'static str },
    Endpoint { name: String, detail: String },
    Patch { peer_bridge: String },
}

impl PortSpec {
    /// The `ovs-vsctl` arguments after `set Interface NAME`.
    pub fn interface_settings(&self) -> Vec<String> {
        let mut settings = Vec::new();
        if !self.iface_type.is_empty() {
            settings.push(format!("type={}", self.iface_type));
        }
        settings.extend(self.settings.iter().cloned());
        settings.push(format!("ofport_request={}", self.ofport));
        settings
    }

    /// A hash of everything netctl sets, stored in the Port's external_ids to spot drift.
    pub fn spec_hash(&self) -> String {
        let text = format!(
            "{}|{}|{}",
            self.bridge,
            self.name,
            self.interface_settings().join(" ")
        );
        format!("{:016x}", flows::fnv1a(text.as_bytes()))
    }

    pub fn is_endpoint(&self) -> bool {
        matches!(self.role, PortRole::Endpoint { .. })
    }
}

impl fmt::Display for PortRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRole::Tunnel { to, kind } => write!(f, "{kind} tunnel to {to}"),
            PortRole::Endpoint { name, detail } => write!(f, "{name} {detail}"),
            PortRole::Patch { peer_bridge } => write!(f, "patch to {peer_bridge}"),
        }
    }
}

/// A VM or service port with what its flows need.
struct Endpoint<'a> {
    name: &'a str,
    record: &'a PortRecord,
    network: &'a Network,
    group: u32,
    /// Who may send to this endpoint.
    reached_by: Vec<Rule>,
}

/// Traffic from `group`, limited to a protocol and port when `l4` is set.
#[derive(Debug, Clone, Copy)]
struct Rule {
    group: u32,
    l4: Option<(Protocol, &'static str, u16)>,
}

impl Rule {
    fn matches(&self, nw_dst: std::net::Ipv4Addr) -> String {
        match self.l4 {
            None => format!("reg6={},ip,nw_dst={nw_dst}", self.group),
            Some((protocol, field, port)) => format!(
                "reg6={},{},nw_dst={nw_dst},{field}={port}",
                self.group,
                protocol.as_str()
            ),
        }
    }
}

/// The whole cluster's desired configuration, host by host.
pub struct Topology<'a> {
    cluster: &'a Cluster,
    state: &'a State,
    endpoints: Vec<Endpoint<'a>>,
}

impl fmt::Debug for Topology<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topology")
            .field("endpoints", &self.endpoints.len())
            .finish()
    }
}

impl<'a> Topology<'a> {
    /// The topology of a reconciled state (every port names a host, network and project of
    /// the cluster file).
    pub fn new(cluster: &'a Cluster, state: &'a State) -> Self {
        let endpoints = state
            .ports
            .iter()
            .map(|(name, record)| {
                let network = cluster
                    .network(&record.network)
                    .unwrap_or_else(|| panic!("reconciled port `{name}` names unknown network"));
                Endpoint {
                    name,
                    record,
                    network,
                    group: group_of(state, name, record),
                    reached_by: reached_by(cluster, state, name, record),
                }
            })
            .collect();
        Topology {
            cluster,
            state,
            endpoints,
        }
    }

    pub fn host(&self, host: &Host) -> HostDesired {
        let external = host.external_bridge.as_ref().map(|bridge| {
            let patch = PortSpec {
                bridge: bridge.clone(),
                name: PATCH_EXT.to_string(),
                role: PortRole::Patch {
                    peer_bridge: self.cluster.bridge.clone(),
                },
                iface_type: "patch",
                settings: vec![format!("options:peer={PATCH_INT}")],
                ofport: limits::EXTERNAL_PATCH_OFPORT,
            };
            (bridge.clone(), patch)
        });
        let mut external_flows = FlowSet::default();
        for (exposure, _) in self.exposures_on(host) {
            external_flows.add(
                0,
                200,
                &format!(
                    "tcp,nw_dst={},tp_dst={}",
                    host.underlay_ip, exposure.host_port
                ),
                &format!("output:{}", limits::EXTERNAL_PATCH_OFPORT),
            );
        }
        HostDesired {
            host: host.name.clone(),
            bridge: self.cluster.bridge.clone(),
            ports: self.ports(host),
            external,
            flows: self.flows(host),
            external_flows,
        }
    }

    fn ports(&self, host: &Host) -> Vec<PortSpec> {
        let bridge = &self.cluster.bridge;
        let mut ports = Vec::new();
        for other in self.cluster.hosts.iter().filter(|h| h.name != host.name) {
            let kind = self.cluster.tunnel.ovs_type();
            ports.push(PortSpec {
                bridge: bridge.clone(),
                name: format!("nt-{}", other.name),
                role: PortRole::Tunnel {
                    to: other.name.clone(),
                    kind,
                },
                iface_type: kind,
                settings: vec![
                    format!("options:remote_ip={}", other.underlay_ip),
                    "options:key=flow".to_string(),
                    "bfd:enable=true".to_string(),
                    "bfd:min_rx=1000".to_string(),
                    "bfd:min_tx=1000".to_string(),
                ],
                ofport: self.tunnel_ofport(&other.name),
            });
        }
        for endpoint in self.local(host) {
            let record = endpoint.record;
            let kind = match record.kind {
                PortKind::Vm => "vm",
                PortKind::Service => "service",
            };
            ports.push(PortSpec {
                bridge: bridge.clone(),
                name: interface_name(record.index),
                role: PortRole::Endpoint {
                    name: format!("{kind} {}", endpoint.name),
                    detail: format!("{} {}", record.ip, record.mac),
                },
                iface_type: "",
                settings: Vec::new(),
                ofport: endpoint_ofport(record.index),
            });
        }
        if let Some(external) = &host.external_bridge {
            ports.push(PortSpec {
                bridge: bridge.clone(),
                name: PATCH_INT.to_string(),
                role: PortRole::Patch {
                    peer_bridge: external.clone(),
                },
                iface_type: "patch",
                settings: vec![format!("options:peer={PATCH_EXT}")],
                ofport: limits::PATCH_OFPORT,
            });
        }
        ports
    }

    fn tunnel_ofport(&self, host: &str) -> u16 {
        let number = self
            .state
            .hosts
            .get(host)
            .unwrap_or_else(|| panic!("reconciled state has no number for host `{host}`"));
        limits::TUNNEL_OFPORT_BASE + number
    }

    fn local(&self, host: &Host) -> impl Iterator<Item = &Endpoint<'a>> {
        let name = host.name.clone();
        self.endpoints.iter().filter(move |e| e.record.host == name)
    }

    fn exposures_on(&self, host: &Host) -> Vec<(&ExposureRecord, &Endpoint<'a>)> {
        self.state
            .exposures
            .iter()
            .filter_map(|exposure| {
                let endpoint = self.endpoints.iter().find(|e| e.name == exposure.vm)?;
                (endpoint.record.host == host.name).then_some((exposure, endpoint))
            })
            .collect()
    }

    fn flows(&self, host: &Host) -> FlowSet {
        let mut flows = FlowSet::default();
        for table in flows::TABLES {
            flows.add(table, 0, "", "drop");
        }
        let local: Vec<&Endpoint<'a>> = self.local(host).collect();
        let local_groups: Vec<u32> = local.iter().map(|e| e.group).collect();
        for endpoint in &local {
            self.local_endpoint_flows(&mut flows, endpoint);
        }
        for endpoint in self.endpoints.iter().filter(|e| e.record.host != host.name) {
            let reaches_local = local
                .iter()
                .any(|l| l.reached_by.iter().any(|r| r.group == endpoint.group));
            if reaches_local {
                self.remote_source_flow(&mut flows, endpoint);
            }
        }
        for target in &self.endpoints {
            let is_local = target.record.host == host.name;
            let output = if is_local {
                format!("output:{}", endpoint_ofport(target.record.index))
            } else {
                format!("output:{}", self.tunnel_ofport(&target.record.host))
            };
            let deliver = format!("set_field:{}->eth_dst,{output}", target.record.mac);
            for rule in &target.reached_by {
                if local_groups.contains(&rule.group) {
                    let reply = flows::arp_reply(target.record.mac, target.record.ip);
                    let arp = format!(
                        "reg6={},arp,arp_op=1,arp_tpa={}",
                        rule.group, target.record.ip
                    );
                    flows.add(flows::TABLE_ARP, 100, &arp, &reply);
                    let matches = rule.matches(target.record.ip);
                    flows.add(flows::TABLE_FROM_LOCAL, 100, &matches, &deliver);
                }
                if is_local {
                    let matches = rule.matches(target.record.ip);
                    flows.add(flows::TABLE_FROM_TUNNEL, 100, &matches, &deliver);
                }
            }
        }
        for (exposure, endpoint) in self.exposures_on(host) {
            expose_flows(&mut flows, host, exposure, endpoint);
        }
        flows
    }

    /// Anti-spoofing: a local port may send IP and ARP only from its own MAC and address;
    /// what it sends is tagged with its group and its network's tunnel key.
    fn local_endpoint_flows(&self, flows: &mut FlowSet, endpoint: &Endpoint<'a>) {
        let record = endpoint.record;
        let ofport = endpoint_ofport(record.index);
        let tag = format!(
            "set_field:{}->reg6,set_field:{}->tun_id",
            endpoint.group, endpoint.network.tunnel_key
        );
        flows.add(
            flows::TABLE_CLASSIFY,
            100,
            &format!(
                "in_port={ofport},dl_src={},ip,nw_src={}",
                record.mac, record.ip
            ),
            &format!("{tag},goto_table:{}", flows::TABLE_FROM_LOCAL),
        );
        flows.add(
            flows::TABLE_CLASSIFY,
            100,
            &format!(
                "in_port={ofport},dl_src={mac},arp,arp_spa={},arp_sha={mac}",
                record.ip,
                mac = record.mac
            ),
            &format!("{tag},goto_table:{}", flows::TABLE_ARP),
        );
        let gateway = endpoint.network.gateway;
        flows.add(
            flows::TABLE_ARP,
            100,
            &format!("arp,arp_op=1,arp_tpa={gateway}"),
            &flows::arp_reply(gateway_mac(endpoint.network), gateway),
        );
    }

    /// A packet from a tunnel is tagged with its sender's group only if it comes from the
    /// sender's host with the sender's network key and address.
    fn remote_source_flow(&self, flows: &mut FlowSet, endpoint: &Endpoint<'a>) {
        let record = endpoint.record;
        flows.add(
            flows::TABLE_CLASSIFY,
            100,
            &format!(
                "in_port={},tun_id={},ip,nw_src={}",
                self.tunnel_ofport(&record.host),
                endpoint.network.tunnel_key,
                record.ip
            ),
            &format!(
                "set_field:{}->reg6,goto_table:{}",
                endpoint.group,
                flows::TABLE_FROM_TUNNEL
            ),
        );
    }
}

/// Port forward `host:host_port` -> `vm:vm_port` through conntrack NAT. The client's MAC is
/// kept in the connection's label, so replies go back to it without an ARP table.
fn expose_flows(flows: &mut FlowSet, host: &Host, exposure: &ExposureRecord, vm: &Endpoint<'_>) {
    let (host_ip, host_port) = (host.underlay_ip, exposure.host_port);
    let (vm_ip, vm_port, vm_mac) = (vm.record.ip, exposure.vm_port, vm.record.mac);
    let ofport = endpoint_ofport(vm.record.index);
    let gateway = gateway_mac(vm.network);
    let zone = flows::EXPOSE_ZONE;
    let to_vm = format!("set_field:{gateway}->eth_src,set_field:{vm_mac}->eth_dst,output:{ofport}");
    flows.add(
        flows::TABLE_CLASSIFY,
        100,
        &format!(
            "in_port={},tcp,nw_dst={host_ip},tp_dst={host_port}",
            limits::PATCH_OFPORT
        ),
        &format!("ct(zone={zone},nat,table={})", flows::TABLE_EXPOSE_IN),
    );
    flows.add(
        flows::TABLE_EXPOSE_IN,
        100,
        &format!("ct_state=+new+trk,tcp,nw_dst={host_ip},tp_dst={host_port}"),
        &format!(
            "ct(commit,zone={zone},nat(dst={vm_ip}:{vm_port}),\
             exec(move:NXM_OF_ETH_SRC[]->NXM_NX_CT_LABEL[0..47])),{to_vm}"
        ),
    );
    flows.add(
        flows::TABLE_EXPOSE_IN,
        100,
        &format!("ct_state=+est+trk,tcp,nw_dst={vm_ip},tp_dst={vm_port}"),
        &to_vm,
    );
    flows.add(
        flows::TABLE_FROM_LOCAL,
        50,
        &format!("in_port={ofport},tcp,tp_src={vm_port}"),
        &format!("ct(zone={zone},nat,table={})", flows::TABLE_EXPOSE_OUT),
    );
    flows.add(
        flows::TABLE_EXPOSE_OUT,
        100,
        &format!("ct_state=+est+rpl+trk,tcp,nw_src={host_ip},tp_src={host_port}"),
        &format!(
            "move:NXM_NX_CT_LABEL[0..47]->NXM_OF_ETH_DST[],set_field:{gateway}->eth_src,output:{}",
            limits::PATCH_OFPORT
        ),
    );
}

fn group_of(state: &State, name: &str, record: &PortRecord) -> u32 {
    match (record.kind, &record.project) {
        (PortKind::Vm, Some(project)) => *state
            .projects
            .get(project)
            .unwrap_or_else(|| panic!("reconciled state has no id for project `{project}`")),
        (PortKind::Vm, None) => panic!("vm `{name}` has no project"),
        (PortKind::Service, _) => SERVICE_GROUP_BASE + u32::from(record.index),
    }
}

/// Who may send to a port: a VM hears its own project and the replies of the services its
/// project may use; a service hears the projects that list it, on its protocol and port.
fn reached_by(cluster: &Cluster, state: &State, name: &str, record: &PortRecord) -> Vec<Rule> {
    match record.kind {
        PortKind::Vm => {
            let project = record.project.as_deref().unwrap_or_default();
            let mut rules = vec![Rule {
                group: group_of(state, name, record),
                l4: None,
            }];
            let services = cluster
                .project(project)
                .map(|p| p.services.as_slice())
                .unwrap_or_default();
            for service in services {
                let (Some(config), Some(port)) =
                    (cluster.service(service), state.ports.get(service))
                else {
                    continue;
                };
                rules.push(Rule {
                    group: group_of(state, service, port),
                    l4: Some((config.protocol, "tp_src", config.port)),
                });
            }
            rules
        }
        PortKind::Service => {
            let Some(config) = cluster.service(name) else {
                return Vec::new();
            };
            cluster
                .projects
                .iter()
                .filter(|p| p.services.iter().any(|s| s == name))
                .filter_map(|p| state.projects.get(&p.name))
                .map(|group| Rule {
                    group: *group,
                    l4: Some((config.protocol, "tp_dst", config.port)),
                })
                .collect()
        }
    }
}
