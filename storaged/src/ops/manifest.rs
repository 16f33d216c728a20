//! A file's manifest (docs/format.md section 5.5): the size and chunk map its writer
//! committed, MACed under the file's key. The server cannot check the MAC; it keeps the one
//! invariant readers rely on to tell a writer's state from an edited one: the stored manifest
//! describes the stored chunk map and size exactly, or the file has none. So a commit that
//! brings one must describe the file as the commit leaves it, with a counter past the stored
//! one (else the writer lost a race and re-reads the file), and a change without one drops it.

use format::ids::VaultId;
use format::manifest::Manifest;

use super::OpError;
use crate::meta::{ChunkIndex, FileId, Generation, RecordKind, SignedKey, Txn};

/// Chunk records read per page when the map is digested.
const PAGE_CHUNKS: usize = 4096;

/// A manifest a commit brings.
#[derive(Clone, Copy, Debug)]
pub struct Sent<'a> {
    /// The vault it must name.
    pub vault: VaultId,
    pub bytes: &'a [u8],
}

impl<'a> Sent<'a> {
    /// The manifest of a request (none when its field is empty).
    pub fn of(vault: VaultId, bytes: &'a [u8]) -> Option<Sent<'a>> {
        (!bytes.is_empty()).then_some(Sent { vault, bytes })
    }
}

fn key(ino: FileId) -> SignedKey {
    SignedKey(RecordKind::Manifest, ino.0, 0)
}

/// The stored manifest of `ino`, as its writer sent it.
pub fn stored(txn: &mut dyn Txn, ino: FileId) -> Result<Vec<u8>, OpError> {
    Ok(txn.get_signed(key(ino))?.unwrap_or_default())
}

/// The file's chunk map changed (or its size) without a manifest: the stored one, which
/// describes the map before, goes.
pub fn forget(txn: &mut dyn Txn, ino: FileId) -> Result<(), OpError> {
    txn.delete_signed(RecordKind::Manifest, ino.0)?;
    Ok(())
}

/// Stores `sent` as the manifest of `ino`, a file now of `size` bytes whose chunk records the
/// commit has written, if it describes them and is newer than the stored one.
pub fn store(txn: &mut dyn Txn, ino: FileId, sent: Sent<'_>, size: u64) -> Result<(), OpError> {
    let manifest = Manifest::parse(sent.bytes).map_err(|e| OpError::invalid(e.to_string()))?;
    if manifest.vault != sent.vault || manifest.file != ino {
        return Err(OpError::invalid("the manifest names another vault or file"));
    }
    let stored_counter = txn
        .get_signed(key(ino))?
        .and_then(|bytes| Manifest::parse(&bytes).ok())
        .map_or(0, |stored| stored.counter);
    if manifest.counter <= stored_counter {
        return Err(OpError::StaleManifest(format!(
            "manifest {} is not newer than the stored {stored_counter}",
            manifest.counter
        )));
    }
    let map = chunk_map(txn, ino)?;
    if !manifest.describes(size, map) {
        return Err(OpError::StaleManifest(
            "the manifest does not describe the file as this commit leaves it (another writer \
             changed it)"
                .into(),
        ));
    }
    txn.put_signed(key(ino), sent.bytes)?;
    Ok(())
}

/// Every chunk record of `ino`, ascending.
fn chunk_map(txn: &mut dyn Txn, ino: FileId) -> Result<Vec<(ChunkIndex, Generation)>, OpError> {
    let mut map = Vec::new();
    loop {
        let from = map
            .last()
            .map_or(ChunkIndex(0), |&(index, _): &(ChunkIndex, Generation)| {
                ChunkIndex(index.get() + 1)
            });
        let page = txn.list_chunks(ino, from, PAGE_CHUNKS)?;
        let done = page.len() < PAGE_CHUNKS;
        map.extend(page);
        if done {
            return Ok(map);
        }
    }
}
