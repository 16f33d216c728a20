//! vmctl's errors. Each names what it was about (VM, drive, host) so the command line can
//! print it as one line.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Network(#[from] netctl::Error),
    #[error("invalid {kind} name `{name}`: {reason}")]
    InvalidName {
        kind: &'static str,
        name: String,
        reason: String,
    },
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("unknown image `{name}` (no {})", path.display())]
    UnknownImage { name: String, path: PathBuf },
    #[error("image `{name}` ({}): {reason}", path.display())]
    BadImage {
        name: String,
        path: PathBuf,
        reason: String,
    },
    #[error("unknown host `{name}` (the cluster file has {known})")]
    UnknownHost { name: String, known: String },
    #[error("host `{host}` has no libvirt_uri in the cluster file")]
    NoLibvirtUri { host: String },
    #[error("a VM named `{name}` already exists (on host `{host}`)")]
    DuplicateVm { name: String, host: String },
    #[error("no VM named `{0}`")]
    UnknownVm(String),
    #[error("no host has room for {cpus} CPUs and {memory_mib} MiB ({free})")]
    NoCapacity {
        cpus: u32,
        memory_mib: u64,
        free: String,
    },
    #[error("cannot reach libvirt on host `{host}` at {uri}: {}", source.message())]
    Unreachable {
        host: String,
        uri: String,
        #[source]
        source: virt::error::Error,
    },
    #[error("libvirt on host `{host}`: {action}: {}", source.message())]
    Libvirt {
        host: String,
        action: String,
        #[source]
        source: virt::error::Error,
    },
    #[error("VM `{vm}` is {state}: {hint}")]
    WrongState {
        vm: String,
        state: String,
        hint: &'static str,
    },
    #[error("VM `{vm}` did not come up within {timeout_s} s (no `{marker}` in {})", log.display())]
    NotReady {
        vm: String,
        timeout_s: u64,
        marker: String,
        log: PathBuf,
    },
    #[error(
        "VM `{vm}` started, but its network port could not follow its new tap, so it was forced off again: {source}"
    )]
    PortNotAttached {
        vm: String,
        #[source]
        source: netctl::Error,
    },
    #[error("a drive named `{0}` already exists")]
    DuplicateDrive(String),
    #[error("no drive named `{0}`")]
    UnknownDrive(String),
    #[error("drive `{drive}` is attached to VM `{vm}`: a drive has one writer")]
    DriveInUse { drive: String, vm: String },
    #[error("drive `{drive}` is not attached to VM `{vm}`")]
    DriveNotAttached { drive: String, vm: String },
    #[error("VM `{vm}` has {what}: pass its owner's key file (--key)")]
    KeyNeeded { vm: String, what: String },
    #[error("vault settings {}: {reason}", path.display())]
    BadVaultConfig { path: PathBuf, reason: String },
    #[error(
        "VM `{vm}` mounts the vault as `{user}`, whose key file this is not (it holds {fingerprint})"
    )]
    NotVaultOwner {
        vm: String,
        user: String,
        fingerprint: String,
    },
    #[error("VM `{vm}` {what} (see {})", log.display())]
    GuestFailed {
        vm: String,
        what: String,
        log: PathBuf,
    },
    #[error(transparent)]
    Key(#[from] keystore::KeystoreError),
    #[error("the key of drive `{drive}` does not open with this key file: {source}")]
    Unwrap {
        drive: String,
        #[source]
        source: crypto::UnwrapError,
    },
    #[error("qemu-img {action}: {detail}")]
    QemuImg {
        action: &'static str,
        detail: String,
    },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state store {}: {reason}", path.display())]
    State { path: PathBuf, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An `Error::Io` for `path`.
pub fn io_error(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}
