//! The bytes that client and server must agree on and that need no key to read: the chunk
//! envelope header, identifiers, and the format limits.
//!
//! This crate is pure (no I/O, no async, no secrets). The storage daemon uses it to check a
//! chunk's length and header before storing it; the `crypto` crate builds on it to seal and
//! open chunks. It must never gain the ability to decrypt anything: that would let the server
//! depend on it and read data. `docs/format.md` is the specification; this is its code.

pub mod acl;
pub mod envelope;
pub mod group;
pub mod ids;
pub mod layout;
pub mod limits;
pub mod manifest;
pub mod names;
pub mod wrapped;

pub use envelope::{Header, HeaderError};
pub use ids::{ChunkIndex, FileId, Generation, Handle, VaultId, Version};
