//! Chunks going out: `Open` (a file's attributes, chunk map and keys, and a small file's only
//! chunk with them), `ListChunks`, and `GetChunk`, which hands a local client the chunk file
//! itself as a descriptor when it asks (see `crate::descriptors`).

use proto::v1::*;

use super::{check_stored, check_stored_header, chunk_error, chunk_read};
use crate::api::call::{Call, Context};
use crate::api::wire::{chunks_to_wire, page_limit, wrapped_keys_to_wire};
use crate::chunkstore::ChunkStoreError;
use crate::meta::{
    self, ChunkIndex, ChunkRef, FileId, Generation, Inode, Kind, NO_GENERATION, Principal, Txn,
};
use crate::ops::{Caller, OpError, chunks, manifest, sharing, tree};

/// Chunk generations an `Open` reply carries (a 32 GiB file); larger files page the rest.
const OPEN_CHUNKS_MAX: usize = 4096;

/// A file's first chunk: the only one of a small file.
const FIRST: ChunkIndex = ChunkIndex(0);

/// A file this small comes with its only chunk in the `Open` reply.
pub(super) const SMALL_CHUNK_PLAINTEXT_BYTES: u64 = 64 * 1024;

/// How often a `GetChunk` reads a chunk's generation and then its file again, when a writer
/// replaced the chunk in between (and the old file went).
const GET_ATTEMPTS: usize = 3;

impl Call<OpenReply> for OpenRequest {
    async fn answer(self, at: Context) -> Result<OpenReply, OpError> {
        let ino = FileId(self.ino);
        let read = at.read(move |txn, who| read_open(txn, who, ino)).await?;
        Ok(open_reply(&at, read).await)
    }
}

/// What an `Open` reply says of a file, as one transaction read it.
pub(super) struct ReadOpen {
    pub inode: Inode,
    chunks: Vec<(ChunkIndex, Generation)>,
    more_chunks: bool,
    keys: Vec<(Principal, Vec<u8>)>,
    rekey_needed: bool,
    manifest: Vec<u8>,
}

/// Reads what an `Open` of `ino` by `who` replies, in the transaction `txn`.
pub(super) fn read_open(txn: &mut dyn Txn, who: &Caller, ino: FileId) -> Result<ReadOpen, OpError> {
    let inode = tree::getattr(txn, who, ino)?;
    let ((chunks, more_chunks), manifest) = match inode.kind {
        Kind::Regular => (
            chunks::list(txn, who, ino, FIRST, OPEN_CHUNKS_MAX)?,
            manifest::stored(txn, ino)?,
        ),
        _ => ((Vec::new(), false), Vec::new()),
    };
    Ok(ReadOpen {
        inode,
        chunks,
        more_chunks,
        keys: sharing::my_wrapped_keys(txn, who, ino)?,
        rekey_needed: sharing::rekey_needed(txn, ino)?,
        manifest,
    })
}

/// The `Open` reply from what [`read_open`] read, with a small file's only chunk.
pub(super) async fn open_reply(at: &Context, read: ReadOpen) -> OpenReply {
    let inode = read.inode;
    let small_chunk = match read.chunks.as_slice() {
        [(FIRST, generation)] if inode.size <= SMALL_CHUNK_PLAINTEXT_BYTES => {
            small_chunk(at, inode.ino, *generation).await
        }
        _ => None,
    };
    OpenReply {
        small_chunk,
        attr: Some(at.attr(&inode)),
        chunks: chunks_to_wire(read.chunks),
        more_chunks: read.more_chunks,
        keys: wrapped_keys_to_wire(read.keys),
        rekey_needed: read.rekey_needed,
        manifest: read.manifest,
    }
}

impl Call<ListChunksReply> for ListChunksRequest {
    async fn answer(self, at: Context) -> Result<ListChunksReply, OpError> {
        let limit = page_limit(self.limit, 1024);
        let (ino, from) = (FileId(self.ino), ChunkIndex(self.from_index));
        let (list, more) = at
            .read(move |txn, who| chunks::list(txn, who, ino, from, limit))
            .await?;
        Ok(ListChunksReply {
            chunks: chunks_to_wire(list),
            more,
        })
    }
}

impl Call<GetChunkReply> for GetChunkRequest {
    async fn answer(self, at: Context) -> Result<GetChunkReply, OpError> {
        let (ino, index) = (FileId(self.ino), ChunkIndex(self.index));
        // A writer may replace the chunk between reading its generation and its file (and
        // the old file may be collected): then read both again, a bounded number of times.
        // A file still missing after that is gone, not replaced.
        let mut missing = None;
        for _ in 0..GET_ATTEMPTS {
            let generation = at
                .read(move |txn, who| chunks::current(txn, who, ino, index))
                .await?;
            if generation == NO_GENERATION {
                return Ok(GetChunkReply::default());
            }
            let chunk = ChunkRef {
                ino,
                index,
                generation,
            };
            // Only a client on this machine, over the Unix socket, can take a descriptor.
            let by_descriptor = match at.local_uid.filter(|_| self.descriptor) {
                Some(uid) => by_descriptor(&at, chunk, uid).await?,
                None => None,
            };
            let attempt = match by_descriptor {
                Some(attempt) => attempt,
                None => by_bytes(&at, chunk).await?,
            };
            match attempt {
                Attempt::Served(reply) => return Ok(reply),
                Attempt::Missing(error) => missing = Some(error),
            }
        }
        Err(missing.map_or_else(
            || {
                OpError::Store(meta::StoreError::Conflict(
                    "chunk kept changing while read".into(),
                ))
            },
            chunk_error,
        ))
    }
}

/// How one attempt to serve a chunk went.
enum Attempt {
    Served(GetChunkReply),
    /// Its file is gone: replaced since its generation was read, or lost.
    Missing(ChunkStoreError),
}

/// Serves `chunk` as a descriptor for the local user `uid`; none when too many tickets wait
/// (the bytes go out instead).
async fn by_descriptor(
    at: &Context,
    chunk: ChunkRef,
    uid: u32,
) -> Result<Option<Attempt>, OpError> {
    let state = &at.state;
    let (file, header, len) = match state.blocking(move |store| store.open(chunk)).await {
        Ok(opened) => opened,
        Err(error @ ChunkStoreError::Missing { .. }) => return Ok(Some(Attempt::Missing(error))),
        Err(other) => return Err(chunk_error(other)),
    };
    check_stored_header(state, chunk, &header)?;
    let Some(ticket) = state.descriptors.issue(file, uid) else {
        return Ok(None);
    };
    chunk_read(state, at.caller.uid, chunk, len as usize).await;
    Ok(Some(Attempt::Served(GetChunkReply {
        generation: chunk.generation.get(),
        data: bytes::Bytes::new(),
        descriptor_ticket: ticket.to_vec(),
    })))
}

/// Serves `chunk` as bytes.
async fn by_bytes(at: &Context, chunk: ChunkRef) -> Result<Attempt, OpError> {
    let state = &at.state;
    let sealed = match state.blocking(move |store| store.get(chunk)).await {
        Ok(sealed) => sealed,
        Err(error @ ChunkStoreError::Missing { .. }) => return Ok(Attempt::Missing(error)),
        Err(other) => return Err(chunk_error(other)),
    };
    check_stored(state, chunk, &sealed)?;
    chunk_read(state, at.caller.uid, chunk, sealed.len()).await;
    Ok(Attempt::Served(GetChunkReply {
        generation: chunk.generation.get(),
        data: sealed,
        descriptor_ticket: Vec::new(),
    }))
}

/// A small file's only chunk for an `Open` reply, if it reads and checks out now (otherwise
/// the client's `GetChunk` reports the problem).
async fn small_chunk(at: &Context, ino: FileId, generation: Generation) -> Option<GetChunkReply> {
    let chunk = ChunkRef {
        ino,
        index: FIRST,
        generation,
    };
    let state = &at.state;
    let sealed = state.chunks.get(chunk).ok()?;
    check_stored(state, chunk, &sealed).ok()?;
    chunk_read(state, at.caller.uid, chunk, sealed.len()).await;
    Some(GetChunkReply {
        generation: generation.get(),
        data: sealed,
        descriptor_ticket: Vec::new(),
    })
}
