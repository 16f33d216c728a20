//! The cluster file: hosts, networks, projects, services and VM ports, in TOML.
//!
//! The file is shared with `vmctl`: a host also accepts `libvirt_uri`, `cpus` and `memory_mib`,
//! which netctl carries but does not use. Any other unknown key is an error.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::limits;
use crate::net::Cidr;

/// Where the state store lives when the cluster file does not say.
pub const STATE_PATH_DEFAULT: &str = "/var/lib/netctl/state.json";

/// A validated cluster file. Build it with [`Cluster::load`] or [`Cluster::parse`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// The tunnel type between hosts.
    #[serde(default)]
    pub tunnel: TunnelKind,
    /// The integration bridge on every host.
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// The state store (allocations); relative paths are relative to the cluster file.
    #[serde(default = "default_state", rename = "state")]
    pub state_path: PathBuf,
    /// The pool of host ports that `expose` hands out.
    pub expose_ports: Option<PortRange>,
    /// Seconds each OVS command may take.
    #[serde(default = "default_timeout")]
    pub ovs_timeout_s: u32,
    #[serde(default, rename = "host")]
    pub hosts: Vec<Host>,
    #[serde(default, rename = "network")]
    pub networks: Vec<Network>,
    #[serde(default, rename = "project")]
    pub projects: Vec<Project>,
    #[serde(default, rename = "service")]
    pub services: Vec<Service>,
    #[serde(default, rename = "vm")]
    pub vms: Vec<VmDecl>,
}

/// One host: how to reach its Open vSwitch, and its address on the underlay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub name: String,
    /// The OVS database: `unix:PATH` or `tcp:IP:PORT`.
    pub ovsdb: String,
    /// Where ovs-vswitchd keeps its `BRIDGE.mgmt` OpenFlow sockets; defaults to the directory
    /// of a `unix:` ovsdb socket.
    pub openflow_dir: Option<PathBuf>,
    /// The host's own address on the underlay: tunnel endpoint, and the address of exposures.
    pub underlay_ip: Ipv4Addr,
    /// The OVS bridge that holds the underlay port and `underlay_ip`; exposures need it.
    pub external_bridge: Option<String>,
    /// For vmctl; netctl ignores it.
    pub libvirt_uri: Option<String>,
    /// For vmctl; netctl ignores it.
    pub cpus: Option<u32>,
    /// For vmctl; netctl ignores it.
    pub memory_mib: Option<u64>,
}

/// One VM network: an address range, its gateway address and its tunnel key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub name: String,
    pub cidr: Cidr,
    pub gateway: Ipv4Addr,
    pub tunnel_key: u32,
}

/// A project: its VMs reach each other and the services listed here, nothing else.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    pub name: String,
    #[serde(default)]
    pub services: Vec<String>,
}

/// A service that VMs of the projects naming it may reach: an address and a port on a network,
/// attached as a port on one host (like a VM).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub host: String,
    pub network: String,
    pub address: Ipv4Addr,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

/// A VM port declared in the file (VMs can also be added through the library or `vm add`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDecl {
    pub name: String,
    pub host: String,
    pub project: String,
    pub network: String,
    /// A fixed address; without it the lowest free address of the network is assigned.
    pub address: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelKind {
    #[default]
    Geneve,
    Vxlan,
}

impl TunnelKind {
    pub fn ovs_type(self) -> &'static str {
        match self {
            TunnelKind::Geneve => "geneve",
            TunnelKind::Vxlan => "vxlan",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// An inclusive range of TCP ports, written `"20000-20099"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{text}` is not a port range such as \"20000-20099\"");
        let (first, last) = text.split_once('-').ok_or_else(bad)?;
        let first: u16 = first.trim().parse().map_err(|_| bad())?;
        let last: u16 = last.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(bad());
        }
        Ok(PortRange { first, last })
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

fn default_bridge() -> String {
    "br-int".to_string()
}

fn default_state() -> PathBuf {
    PathBuf::from(STATE_PATH_DEFAULT)
}

fn default_timeout() -> u32 {
    limits::OVS_TIMEOUT_S_DEFAULT
}

impl Cluster {
    /// Reads, parses and validates a cluster file.
    pub fn load(path: &Path) -> Result<Cluster, ConfigError> {
        let read_error = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read_error)?.len();
        if size > limits::CLUSTER_FILE_BYTES_MAX {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
                max_bytes: limits::CLUSTER_FILE_BYTES_MAX,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Cluster::parse(&text, base).map_err(|error| match error {
            ConfigError::Parse {
                line,
                column,
                message,
                ..
            } => ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message,
            },
            other => other,
        })
    }

    /// Parses and validates cluster file text; a relative state path is taken relative to
    /// `base_dir`.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Cluster, ConfigError> {
        let mut cluster: Cluster = toml::from_str(text).map_err(|error| {
            let (line, column) = error
                .span()
                .map(|span| line_and_column(text, span.start))
                .unwrap_or((0, 0));
            ConfigError::Parse {
                path: PathBuf::new(),
                line,
                column,
                message: error.message().replace('\n', " "),
            }
        })?;
        if cluster.state_path.is_relative() {
            cluster.state_path = base_dir.join(&cluster.state_path);
        }
        cluster.validate()?;
        Ok(cluster)
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|host| host.name == name)
    }

    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|network| network.name == name)
    }

    pub fn project(&self, name: &str) -> Option<&Project> {
        self.projects.iter().find(|project| project.name == name)
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|service| service.name == name)
    }

    pub fn vm(&self, name: &str) -> Option<&VmDecl> {
        self.vms.iter().find(|vm| vm.name == name)
    }
}

impl Host {
    /// The directory holding ovs-vswitchd's `BRIDGE.mgmt` sockets.
    pub fn openflow_dir(&self) -> Option<PathBuf> {
        self.openflow_dir.clone().or_else(|| {
            let socket = Path::new(self.ovsdb.strip_prefix("unix:")?);
            socket.parent().map(Path::to_path_buf)
        })
    }
}

/// 1-based line and column of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
