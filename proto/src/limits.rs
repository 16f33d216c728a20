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

/// HTTP/2 flow-control windows: a stream may carry two sealed chunks (and more) before it waits for the
/// peer, a connection about eleven. (The protocol's 64 KiB default throttles 8 MiB messages.)
pub const STREAM_WINDOW_BYTES: u32 = 24 << 20;
pub const CONNECTION_WINDOW_BYTES: u32 = 96 << 20;
/// HTTP/2 frames of up to 1 MiB (the default 16 KiB costs a frame header per 16 KiB).
pub const FRAME_BYTES_MAX: u32 = 1 << 20;

/// Puts in one `PutChunks` call at most (the message's size bounds their chunks together).
pub const PUTS_PER_CALL_MAX: usize = 64;

/// Unlinks in one `Unlinks` call at most.
pub const UNLINKS_PER_CALL_MAX: usize = 64;

/// Files an `OpenMany` call answers besides the one opened, at most.
pub const OPENS_AHEAD_MAX: usize = 64;

/// Files an `OpenMany` call may ask not to answer, at most.
pub const OPEN_SKIPS_MAX: usize = 4096;

const _: () = assert!(NAME_BYTES_MAX < PATH_BYTES_MAX);
const _: () = assert!(STREAM_WINDOW_BYTES as usize >= 2 * SEALED_CHUNK_BYTES_MAX);
const _: () = assert!(MESSAGE_BYTES_MAX > SEALED_CHUNK_BYTES_MAX);
