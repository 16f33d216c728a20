//! Error types: one enum per concern, each keeping its cause.

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::net::Cidr;

/// Everything a netctl operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// A host could not be read before any change: nothing was changed anywhere.
    #[error("{}; nothing was changed", HostErrors(.0))]
    Unreachable(Vec<HostError>),
    /// A port's device does not exist on its host; the port waits for it.
    #[error(
        "vm `{vm}`: no device `{interface}` on host `{host}` (is the VM running there?); its port waits for it"
    )]
    NoDevice {
        vm: String,
        host: String,
        interface: String,
    },
    /// Applying failed on some hosts; the others were applied. The next apply converges.
    #[error("{}; {}", HostErrors(.failed), applied_note(.applied))]
    Apply {
        failed: Vec<HostError>,
        applied: Vec<String>,
    },
}

/// An OVS failure on one host.
#[derive(Debug, thiserror::Error)]
#[error("host `{host}`: {source}")]
pub struct HostError {
    pub host: String,
    #[source]
    pub source: OvsError,
}

struct HostErrors<'a>(&'a [HostError]);

impl fmt::Display for HostErrors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

fn applied_note(applied: &[String]) -> String {
    if applied.is_empty() {
        "no host was fully applied; run apply again once fixed".to_string()
    } else {
        format!(
            "applied on {}; run apply again once fixed",
            applied.join(", ")
        )
    }
}

/// A problem with the cluster file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read cluster file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cluster file {} is larger than {max_bytes} bytes", .path.display())]
    TooLarge { path: PathBuf, max_bytes: u64 },
    #[error("cluster file {}: line {line} column {column}: {message}", .path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("cluster file: no [[host]] entry")]
    NoHosts,
    #[error("cluster file: {kind} name `{name}` {reason} (at most {max} bytes of a-z, 0-9 and -)")]
    BadName {
        kind: &'static str,
        name: String,
        reason: &'static str,
        max: usize,
    },
    #[error("cluster file: two {kind} entries are named `{name}`")]
    Duplicate { kind: String, name: String },
    #[error("cluster file: {owner} names {kind} `{name}`, which is not defined")]
    Unknown {
        owner: String,
        kind: &'static str,
        name: String,
    },
    #[error("cluster file: {first} and {second} overlap")]
    Overlap { first: String, second: String },
    #[error("{owner}: address {address} is not usable in network `{network}` ({cidr})")]
    OutsideRange {
        owner: String,
        address: Ipv4Addr,
        network: String,
        cidr: Cidr,
    },
    #[error("{owner}: address {address} is already taken by {holder}")]
    AddressTaken {
        owner: String,
        address: Ipv4Addr,
        holder: String,
    },
    #[error("cluster file: {field} = {value}: {reason}")]
    BadValue {
        field: String,
        value: String,
        reason: String,
    },
    #[error("cluster file: more than {max} {kind} entries")]
    TooMany { kind: &'static str, max: usize },
}

/// A problem with the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store {}: cannot {what}: {source}", .path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("state store {} is corrupt: {source}", .path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("state store {} is too large (over {max_bytes} bytes)", .path.display())]
    TooLarge { path: PathBuf, max_bytes: u64 },
    #[error("state store {} has version {found}; this netctl reads version {expected}", .path.display())]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("state store {} is locked by another netctl run (waited {waited_ms} ms)", .path.display())]
    Busy { path: PathBuf, waited_ms: u64 },
}

/// A request the allocations cannot satisfy, or allocations that no longer fit the file.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("network `{network}` ({cidr}) has no free address left")]
    AddressesExhausted { network: String, cidr: Cidr },
    #[error("all {max} VM and service ports are in use")]
    PortsExhausted { max: usize },
    #[error("more than {max} {kind} numbers are needed")]
    NumbersExhausted { kind: &'static str, max: usize },
    #[error("the expose port pool {pool} is exhausted")]
    PoolExhausted { pool: String },
    #[error("the cluster file has no expose_ports pool")]
    NoPool,
    #[error("no VM named `{vm}` (see `netctl vm list`)")]
    UnknownVm { vm: String },
    #[error("no {kind} named `{name}` in the cluster file")]
    Unknown { kind: &'static str, name: String },
    #[error("vm `{vm}` exists already ({detail})")]
    VmExists { vm: String, detail: String },
    #[error("vm `{vm}` is declared in the cluster file: {action} it there")]
    DeclaredInFile { vm: String, action: &'static str },
    #[error(
        "vm `{vm}` (added with vm add) names {kind} `{name}`, which left the cluster file; remove or move the VM first"
    )]
    Orphan {
        vm: String,
        kind: &'static str,
        name: String,
    },
    #[error("host `{host}` has no external_bridge, so vm `{vm}` cannot be exposed there")]
    NoExternalBridge { host: String, vm: String },
    #[error("vm `{vm}` port {port} is not exposed")]
    NotExposed { vm: String, port: u16 },
    #[error(
        "exposure of vm `{vm}` port {port} holds host port {host_port}, outside the pool {pool} now; unexpose it first"
    )]
    ExposureOutsidePool {
        vm: String,
        port: u16,
        host_port: u16,
        pool: String,
    },
    #[error("port 0 cannot be exposed")]
    PortZero,
    #[error(transparent)]
    Address(#[from] ConfigError),
}

/// A failed OVS command or a state read back from OVS that is not what was asked for.
#[derive(Debug, thiserror::Error)]
pub enum OvsError {
    #[error("cannot run {program}: {source} (is Open vSwitch installed?)")]
    Spawn {
        program: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` gave no answer within {seconds} s (is ovs-vswitchd running?)")]
    Timeout { command: String, seconds: u32 },
    #[error("`{command}` printed something unexpected: {reason}")]
    Output { command: String, reason: String },
    #[error("read back after applying: {0}")]
    Verify(String),
    #[error(
        "external bridge `{bridge}` does not exist (create it with the host's underlay port and address)"
    )]
    MissingBridge { bridge: String },
}
