//! The data path, between `crate::ops::chunks` and the wire: sealed chunks go into the chunk
//! store and are committed (`put`), and come out again, as bytes or as descriptors (`get`).
//! The server checks what it can without a key: lengths and headers, before it stores a
//! chunk and again before it serves one.

mod get;
mod open_many;
mod put;

use format::envelope::Header;

use super::State;
use crate::chunkstore::ChunkStoreError;
use crate::meta::{self, ChunkRef};
use crate::ops::OpError;

/// A chunk-store failure as the operation's error.
pub(super) fn chunk_error(error: ChunkStoreError) -> OpError {
    match error {
        ChunkStoreError::Exists { .. } => OpError::Store(meta::StoreError::Conflict(
            "this chunk generation was already uploaded; seal again with a new generation".into(),
        )),
        ChunkStoreError::Damaged { .. } | ChunkStoreError::Missing { .. } => {
            tracing::error!(%error, "chunk store");
            OpError::BadChunk(error.to_string())
        }
        ChunkStoreError::Io { .. } => {
            OpError::Store(meta::StoreError::Unavailable(error.to_string()))
        }
    }
}

/// A stored chunk must still be the one its name says: the server's own check before it
/// serves bytes (the client checks again, cryptographically).
fn check_stored(state: &State, chunk: ChunkRef, sealed: &[u8]) -> Result<(), OpError> {
    let header = Header::parse(sealed).map_err(|e| damaged(chunk, &e.to_string()))?;
    check_stored_header(state, chunk, &header)
}

/// The checks of [`check_stored`] on a header already parsed.
fn check_stored_header(state: &State, chunk: ChunkRef, header: &Header) -> Result<(), OpError> {
    let vault = state.auth.settings().vault;
    let expected_tag = format::envelope::file_tag(vault, chunk.ino);
    if u64::from(header.index) != chunk.index.get() || header.generation != chunk.generation.get() {
        return Err(damaged(
            chunk,
            &format!(
                "holds chunk {} generation {}",
                header.index, header.generation
            ),
        ));
    }
    if header.file_tag != expected_tag {
        return Err(damaged(chunk, "belongs to another file"));
    }
    Ok(())
}

fn damaged(chunk: ChunkRef, reason: &str) -> OpError {
    tracing::error!(ino = %chunk.ino, index = chunk.index.get(), generation = chunk.generation.get(), reason, "stored chunk file is damaged");
    OpError::BadChunk(format!(
        "stored chunk {} of {} (generation {}) is damaged: {reason}",
        chunk.index, chunk.ino, chunk.generation
    ))
}

/// Counts and audits a chunk going out to the caller `uid`, as bytes or as a descriptor.
async fn chunk_read(state: &State, uid: u32, chunk: ChunkRef, bytes: usize) {
    state.metrics.bytes_out(bytes);
    let detail = format!("{}@{}", chunk.index, chunk.generation);
    state.audit(uid, "chunk-read", chunk.ino, detail).await;
}
