//! `vmctl`: secure VMs through libvirt across hosts.
//!
//! The hosts come from netctl's cluster file (each host's `libvirt_uri`, `cpus` and
//! `memory_mib` beside its OVS settings); netctl, used as a library, gives each VM its port,
//! MAC and address. VMs boot an image from the store by direct kernel boot, with their address
//! on the kernel command line, and get encrypted data drives: qcow2 files with QEMU's LUKS
//! encryption under a random 256-bit key stored only wrapped to its owner's public key.
//!
//! VMs created with the vault's settings get their user's unlocked key at every start, through a
//! virtio-serial channel (`vault`), and mount the vault inside the guest.
//!
//! vmctl must never write a plaintext drive key to a disk (it reaches `qemu-img` through a
//! pipe and libvirt as an ephemeral private secret, undefined once QEMU has it), nor a user's
//! unlocked key (it reaches the guest only through the channel's stream), never build a
//! libvirt document by pasting strings (every value goes through [`xml`]), never attach a drive
//! to a second VM, and never leave a half-created VM or drive behind when an operation fails.

pub mod controller;
pub mod domain;
pub mod drive;
mod drives;
pub mod error;
pub mod host;
pub mod image;
mod lifecycle;
pub mod limits;
pub mod placement;
mod show;
pub mod store;
pub mod vault;
mod vms;
pub mod xml;

pub use controller::{OwnerKey, Vmctl};
pub use drives::DriveInfo;
pub use error::{Error, Result};
pub use lifecycle::{MoveTimeouts, Moved, Started};
pub use show::{VmStatus, VmSummary};
pub use store::Store;
pub use vault::VaultRequest;
pub use vms::CreateRequest;
