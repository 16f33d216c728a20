//! Chunk sealing and opening, data keys and their subkeys, and key wrapping to a recipient.
//!
//! Pure: no I/O, no async, no knowledge of FUSE, sockets or files; limits come from the
//! `format` crate. This is the only crate that can open a chunk, so the storage daemon must
//! never depend on it (a test over `cargo metadata` checks that).

mod blocks;
mod chunk;
mod keys;
mod manifest;
mod names;
mod signed_wrap;
mod wrap;
mod xattrs;

pub use blocks::{
    BLOCK_BYTES, BlockError, ChunkBlocks, DIGEST_BYTES, open_in_place_keeping_blocks,
};
pub use chunk::{AAD_BYTES, OpenError, SealError, authenticated_data, open, open_in_place, seal};
pub use format::envelope::ChunkContext;
pub use keys::{ChunkCipher, DATA_KEY_BYTES, DataKey};
pub use manifest::{ManifestOpenError, open_manifest, seal_manifest};
pub use names::{NameError, NameKeys};
pub use signed_wrap::{FileKeys, GroupKeys, Object, Recipient, Wrapper, signed_wrap_header};
pub use wrap::{
    PreparedWrap, UnwrapError, WRAPPED_KEY_BYTES, WrapContext, WrapError, WrapKind,
    prepare_signed_wrap, prepare_wrap, unwrap, wrap, wrap_prepared,
};
pub use xattrs::{XattrError, open_xattr, seal_xattr};
