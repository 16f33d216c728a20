//! Limits of the on-disk format. Changing any of these is a format change (a new version).

/// Plaintext bytes in every chunk but the last (the last holds 0..=`CHUNK_BYTES`).
pub const CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// Bytes the envelope adds to a chunk's plaintext: a sealed chunk is plaintext + this.
pub const ENVELOPE_BYTES: usize = 64;

/// The largest sealed chunk: a full chunk and its envelope.
pub const SEALED_CHUNK_BYTES_MAX: usize = CHUNK_BYTES + ENVELOPE_BYTES;

/// The largest chunk index the header can carry (`u32`); with 8 MiB chunks a file can hold
/// 32 PiB, so the bound is never the one a user meets first.
pub const CHUNK_INDEX_MAX: u64 = u32::MAX as u64;

/// The largest file size the format can represent.
pub const FILE_BYTES_MAX: u64 = (CHUNK_INDEX_MAX + 1) * CHUNK_BYTES as u64;

const _: () = assert!(CHUNK_BYTES.is_power_of_two());
const _: () = assert!(ENVELOPE_BYTES == crate::envelope::HEADER_LAYOUT_BYTES);
