//! `netctl`: one VM network over Open vSwitch across hosts.
//!
//! A declarative cluster file ([`Cluster`]) names the hosts (each host's OVS database and
//! underlay address), the networks (address range, gateway, tunnel key), the projects, the
//! services VMs may reach and the VM ports. netctl gives every VM a MAC and an address once
//! (kept in one [`StateStore`] with atomic, locked updates), and makes each host's OVS hold an
//! integration bridge with the VM ports, a GENEVE or VXLAN tunnel to every other host, and
//! OpenFlow rules for anti-spoofing, project isolation, ARP and port forwards (conntrack NAT).
//!
//! netctl must never trust an `ovs-vsctl` exit code alone (it reads every change back), never
//! change anything when the input is bad or a host cannot be read, and never write a rule about
//! a VM on a host that does not need it.
//!
//! # Library use (as `vmctl` does)
//!
//! ```no_run
//! use netctl::{Netctl, PortRequest};
//! # fn main() -> Result<(), netctl::Error> {
//! let netctl = Netctl::open("/etc/vault/cluster.toml".as_ref())?;
//! // Give a new VM its port: MAC, address, and the interface name its tap must have.
//! let port = netctl.allocate_port(&PortRequest {
//!     vm: "vm7".into(),
//!     host: "h1".into(),
//!     project: "alpha".into(),
//!     network: "research".into(),
//!     address: None,
//! })?;
//! println!("{} {} {}/{} via {}", port.interface, port.mac, port.ip, port.prefix_len, port.gateway);
//! netctl.apply()?; // every host follows
//! let exposure = netctl.expose("vm7", 22)?;
//! netctl.move_vm("vm7", "h2")?;
//! netctl.apply()?;
//! println!("ssh to {}", exposure.address.port());
//! # Ok(())
//! # }
//! ```
//!
//! The VM's host creates the device named [`VmPort::interface`] (for libvirt:
//! `<interface type='ethernet'><target dev='NAME' managed='yes'/><mac address='MAC'/>`, with
//! checksum offload off as machine.md says) and configures the guest with [`VmPort::ip`],
//! [`VmPort::prefix_len`] and [`VmPort::gateway`] (there is no DHCP). netctl adds the OVS port
//! at `apply` time whether or not the device exists yet; OVS attaches it when it appears. A
//! device deleted and created again under the same name (a VM stopped and started again on
//! the same host) is not attached again by OVS's userspace datapath, which keeps reading the
//! deleted one: call [`Netctl::reattach`] once the new device exists.
//!
//! Operations that change allocations ([`Netctl::allocate_port`], [`Netctl::release_port`],
//! [`Netctl::move_vm`], [`Netctl::expose`], [`Netctl::unexpose`]) update the state store only;
//! [`Netctl::apply`] makes the hosts follow.

mod alloc;
mod apply;
mod config;
mod controller;
mod desired;
mod error;
mod flows;
pub mod limits;
mod net;
mod ovs;
mod plan;
mod state;
mod status;
mod validate;

pub use alloc::{PortRequest, StateChange, gateway_mac, port_mac};
pub use apply::HostReport;
pub use config::{
    Cluster, Host, Network, PortRange, Project, Protocol, STATE_PATH_DEFAULT, Service, TunnelKind,
    VmDecl,
};
pub use controller::{ApplyReport, Exposure, Netctl, Plan, VmPort};
pub use desired::{HostDesired, PortRole, PortSpec};
pub use error::{AllocError, ConfigError, Error, HostError, OvsError, StateError};
pub use net::{Cidr, Mac};
pub use plan::{BridgeChange, FlowChanges, HostPlan, PortChange};
pub use state::{ExposureRecord, Origin, PortKind, PortRecord, State, StateLock, StateStore};
pub use status::{HostStatus, HostView, PortStatus, Status};
