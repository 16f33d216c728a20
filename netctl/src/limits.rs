//! Every bound netctl enforces, in one place, with units in the names.

/// Hosts in one cluster. Each host's tunnel port uses OpenFlow port `TUNNEL_OFPORT_BASE + n`.
pub const HOSTS_MAX: usize = 64;
/// Networks, projects and services in one cluster file (each).
pub const NETWORKS_MAX: usize = 256;
pub const PROJECTS_MAX: usize = 1024;
pub const SERVICES_MAX: usize = 256;
/// VM and service ports together: each holds one OpenFlow port `ENDPOINT_OFPORT_BASE + index`.
pub const PORTS_MAX: usize = 4096;
/// Exposures (host ports in use) across the cluster.
pub const EXPOSURES_MAX: usize = 4096;

/// Names of VMs, projects, networks and services, in bytes.
pub const NAME_BYTES_MAX: usize = 32;
/// Host names are shorter: the tunnel port `nt-HOST` must fit a 15-byte interface name.
pub const HOST_NAME_BYTES_MAX: usize = 12;
/// Linux interface names (IFNAMSIZ - 1): bridges and ports.
pub const INTERFACE_NAME_BYTES_MAX: usize = 15;
/// Free text that is passed on but not interpreted (ovsdb remotes, libvirt URIs, paths).
pub const TEXT_BYTES_MAX: usize = 4096;
/// The cluster file itself.
pub const CLUSTER_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// The state file.
pub const STATE_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Smallest network prefix: a /16 holds 65,536 addresses, which bounds every address search.
pub const NETWORK_PREFIX_LEN_MIN: u8 = 16;
/// Largest network prefix: a /29 leaves room for a gateway and a few ports.
pub const NETWORK_PREFIX_LEN_MAX: u8 = 29;
/// GENEVE and VXLAN carry 24-bit network identifiers.
pub const TUNNEL_KEY_MAX: u32 = (1 << 24) - 1;

/// OpenFlow port numbers netctl requests, so that flows never depend on OVS's choice.
pub const PATCH_OFPORT: u16 = 2;
pub const TUNNEL_OFPORT_BASE: u16 = 10;
pub const ENDPOINT_OFPORT_BASE: u16 = 1000;
/// The patch port on a host's external bridge, chosen high to stay clear of the host's ports.
pub const EXTERNAL_PATCH_OFPORT: u16 = 65000;

/// Seconds an OVS command may take (ovs-vsctl waits this long for ovs-vswitchd).
pub const OVS_TIMEOUT_S_DEFAULT: u32 = 10;
pub const OVS_TIMEOUT_S_MAX: u32 = 300;
/// How long a netctl run waits for another run to release the state store.
pub const STATE_LOCK_WAIT_MS: u64 = 120_000;
pub const STATE_LOCK_POLL_MS: u64 = 50;

const _: () = assert!(TUNNEL_OFPORT_BASE as usize + HOSTS_MAX < ENDPOINT_OFPORT_BASE as usize);
const _: () = assert!(PATCH_OFPORT < TUNNEL_OFPORT_BASE);
const _: () = assert!(ENDPOINT_OFPORT_BASE as usize + PORTS_MAX < EXTERNAL_PATCH_OFPORT as usize);
// OpenFlow reserves port numbers from 0xff00 up.
const _: () = assert!(EXTERNAL_PATCH_OFPORT < 0xff00);
// The interface name `ncp` + index must fit, and so must `nt-` + a host name.
const _: () = assert!(PORTS_MAX <= 9999 && 3 + 4 <= INTERFACE_NAME_BYTES_MAX);
const _: () = assert!(3 + HOST_NAME_BYTES_MAX <= INTERFACE_NAME_BYTES_MAX);
const _: () =
    assert!(NETWORK_PREFIX_LEN_MIN <= NETWORK_PREFIX_LEN_MAX && NETWORK_PREFIX_LEN_MAX <= 30);
