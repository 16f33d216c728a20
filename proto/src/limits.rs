//! Limits both sides of the wire enforce. Format limits come from the `format` crate.

pub use format::limits::{CHUNK_BYTES, ENVELOPE_BYTES, FILE_BYTES_MAX, SEALED_CHUNK_BYTES_MAX};

/// The longest name of a directory entry, as on Linux.
pub const NAME_BYTES_MAX: usize = 255;

/// The longest symlink target or path, as on Linux.
pub const PATH_BYTES_MAX: usize = 4096;

/// A gRPC message carries at most one sealed chunk plus this much for its other fields.
pub const MESSAGE_OVERHEAD_BYTES_MAX: usize = 64 * 1024;

/// The largest gRPC message either side accepts.
pub const MESSAGE_BYTES_MAX: usize = SEALED_CHUNK_BYTES_MAX + MESSAGE_OVERHEAD_BYTES_MAX;

const _: () = assert!(NAME_BYTES_MAX < PATH_BYTES_MAX);
const _: () = assert!(MESSAGE_BYTES_MAX > SEALED_CHUNK_BYTES_MAX);
