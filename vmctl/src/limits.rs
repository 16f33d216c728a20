//! Bounds on everything vmctl accepts or waits for.

/// VM names: libvirt domain names and netctl port names.
pub const VM_NAME_BYTES_MAX: usize = 48;
/// Drive names are the guest's disk serial number, which virtio-blk caps at 20 bytes.
pub const DRIVE_NAME_BYTES_MAX: usize = 20;
pub const VCPUS_MAX: u32 = 64;
pub const MEMORY_MIB_MIN: u64 = 64;
pub const MEMORY_MIB_MAX: u64 = 1 << 20;
pub const DRIVE_GIB_MAX: u64 = 16 * 1024;
/// Guest devices for data drives: vdb to vdz (vda stays free for a boot disk).
pub const DRIVES_PER_VM_MAX: usize = 25;
/// The state file is small; a larger one is not ours.
pub const STATE_FILE_BYTES_MAX: u64 = 16 << 20;
pub const IMAGE_FILE_BYTES_MAX: u64 = 64 << 10;
/// How long `start` waits for the guest's readiness marker by default.
pub const START_TIMEOUT_S_DEFAULT: u64 = 120;
/// How long `stop` waits for a graceful shutdown before forcing it, by default.
pub const STOP_TIMEOUT_S_DEFAULT: u64 = 30;
/// How long a live detach may take for the guest to release the device.
pub const DETACH_TIMEOUT_S: u64 = 20;
/// How often waits look again.
pub const POLL_MS: u64 = 100;

const _: () = assert!(DRIVE_NAME_BYTES_MAX <= 20);
const _: () = assert!(MEMORY_MIB_MIN < MEMORY_MIB_MAX);
/// How much of a console log vmctl reads (to find the marker, or for `console`).
pub const CONSOLE_BYTES_MAX: u64 = 4 << 20;
