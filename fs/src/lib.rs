//! vaultfs: the vault's client. It holds the user's private key (unlocked by passphrase),
//! wraps and unwraps file keys, seals and opens every chunk, caches plaintext in memory, and
//! presents the vault as a FUSE filesystem. It is the only process that ever sees plaintext.
//!
//! Layers: [`vault::Vault`] has every filesystem operation as a plain function (testable
//! without a mount), with the directory leases it closes new files under
//! ([`vault::behind`]); [`file`](mod@file) the per-file chunk logic (dirty buffers,
//! write-behind, flush with compare-and-swap, the file's lifecycle); [`shared`] the cache and
//! chunk loading with integrity checks; [`fuse`] the thin FUSE adapter; [`error::errno`] the
//! one errno mapping. Inode numbers, handles, versions, generations and chunk indexes are
//! `format::ids` types inside; `fuse.rs` and the wire messages carry plain numbers.

pub mod blocks;
pub mod cache;
pub mod claims;
pub mod config;
pub mod dirs;
pub mod error;
pub mod file;
pub mod fsck;
pub mod fuse;
pub mod fusermount;
pub mod guest;
pub mod helper;
pub mod keys;
pub mod manifest;
pub mod mount;
pub mod names;
pub mod remote;
pub mod seen;
pub mod shared;
pub mod sharing;
pub mod status;
pub mod trust;
pub mod vault;
pub mod writeback;
