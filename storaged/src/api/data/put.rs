//! Chunks coming in: `PutChunk` stores a sealed chunk (and may commit it, creating its file),
//! `PutChunks` does several in order, and `CommitChunks` makes uploaded chunks current.

use format::envelope::Header;
use proto::v1::*;

use super::chunk_error;
use crate::api::call::{Call, Context, each_in_order};
use crate::api::wire::{commit_attr_changes, new_file, wrapped_keys_of};
use crate::meta::{ChunkIndex, ChunkRef, FileId, Generation, Inode, Time, Txn, now};
use crate::ops::chunks::{self, Uploaded};
use crate::ops::manifest::Sent;
use crate::ops::tree::{self, AttrChanges, NewFile};
use crate::ops::{Caller, OpError};

/// A put of up to this many bytes into a store that defers its sync runs on the request's
/// thread: cheaper than a hand-off for so little. (Headers, small reads and unlinks always do.)
const INLINE_CHUNK_BYTES: usize = 128 * 1024;

/// The most chunks one `CommitChunks` makes current.
const COMMIT_CHUNKS_MAX: usize = 1024;

impl Call<PutChunkReply> for PutChunkRequest {
    async fn answer(self, at: Context) -> Result<PutChunkReply, OpError> {
        put_chunk(&at, self).await
    }
}

impl Call<PutChunksReply> for PutChunksRequest {
    async fn answer(self, at: Context) -> Result<PutChunksReply, OpError> {
        let max = proto::limits::PUTS_PER_CALL_MAX;
        let done = each_in_order(self.puts, max, |put| put_chunk(&at, put)).await?;
        let outcomes = done.into_iter().map(|done| match done {
            Ok(reply) => PutChunkOutcome {
                reply: Some(reply),
                ..PutChunkOutcome::default()
            },
            Err(error) => PutChunkOutcome {
                reply: None,
                error_kind: error.kind() as i32,
                error: error.to_string(),
            },
        });
        Ok(PutChunksReply {
            outcomes: outcomes.collect(),
        })
    }
}

impl Call<Attr> for CommitChunksRequest {
    async fn answer(self, at: Context) -> Result<Attr, OpError> {
        if self.chunks.len() > COMMIT_CHUNKS_MAX {
            return Err(OpError::TooLarge(format!(
                "more than {COMMIT_CHUNKS_MAX} chunks in one commit"
            )));
        }
        let mut uploads = Vec::with_capacity(self.chunks.len());
        for commit in &self.chunks {
            uploads.push(uploaded(&at, FileId(self.ino), commit)?);
        }
        let rekey = wrapped_keys_of(&self.rekey)?;
        let changes = commit_attr_changes(self.set_attr.as_ref())?;
        let vault = at.state.auth.settings().vault;
        let file = at
            .write(self.lazy, move |txn, who| {
                let now = now();
                let commit = chunks::Commit {
                    ino: FileId(self.ino),
                    chunks: &uploads,
                    size: self.size,
                    truncate: self.truncate,
                    rekey: &rekey,
                    manifest: Sent::of(vault, &self.manifest),
                };
                let file = chunks::commit(txn, who, &commit, now)?;
                set_after_commit(txn, who, file, changes.as_ref(), now)
            })
            .await?;
        Ok(at.attr(&file))
    }
}

/// What a put brings besides its chunk: the file it creates and the attribute changes it
/// commits, both checked.
struct Put {
    header: Header,
    create: Option<NewFile>,
    changes: Option<AttrChanges>,
}

/// Stores a sealed chunk, and commits it (creating its file) if asked: `PutChunk`, and each
/// put of `PutChunks`.
async fn put_chunk(at: &Context, r: PutChunkRequest) -> Result<PutChunkReply, OpError> {
    let put = check_put(at, &r).await?;
    let chunk = ChunkRef {
        ino: FileId(r.ino),
        index: ChunkIndex(r.index),
        generation: Generation(put.header.generation),
    };
    let state = &at.state;
    if r.data.len() <= INLINE_CHUNK_BYTES && state.chunks.defers() {
        state.chunks.put(chunk, &r.data)
    } else {
        let data = r.data.clone();
        state.blocking(move |store| store.put(chunk, &data)).await
    }
    .map_err(chunk_error)?;
    state.metrics.bytes_in(r.data.len());
    let generation = put.header.generation;
    if !r.commit {
        return Ok(PutChunkReply {
            generation,
            attr: None,
        });
    }
    match commit_put(at, r, put).await {
        Ok(attr) => Ok(PutChunkReply {
            generation,
            attr: Some(attr),
        }),
        Err(error) => {
            // Never current, so nothing refers to it: remove it now.
            let _ = state.chunks.delete(chunk);
            Err(error)
        }
    }
}

/// Checks a put before its chunk is stored: the header, the caller's right to write the file
/// (or, for a put that creates it, what is there to check before it exists), and the
/// attribute changes.
async fn check_put(at: &Context, r: &PutChunkRequest) -> Result<Put, OpError> {
    let header = Header::parse(&r.data).map_err(|e| OpError::BadChunk(e.to_string()))?;
    let vault = at.state.auth.settings().vault;
    let (ino, index) = (FileId(r.ino), ChunkIndex(r.index));
    let create = match &r.create {
        None => {
            at.read(move |txn, who| chunks::check_upload(txn, who, vault, ino, index, &header))
                .await?;
            None
        }
        Some(create) => {
            if !r.commit || create.ino != r.ino {
                return Err(OpError::invalid(
                    "a put that creates its file must commit, and name the same inode",
                ));
            }
            // The file does not exist yet: its header is all there is to check now;
            // the commit below checks the rest with the creation.
            chunks::check_header(vault, ino, index, &header)?;
            Some(new_file(create)?)
        }
    };
    if r.set_attr.is_some() && !r.commit {
        return Err(OpError::invalid(
            "a put that changes attributes must commit",
        ));
    }
    let changes = commit_attr_changes(r.set_attr.as_ref())?;
    Ok(Put {
        header,
        create,
        changes,
    })
}

/// Commits a stored put, creating its file first if it asks to: the file's attributes then.
async fn commit_put(at: &Context, r: PutChunkRequest, put: Put) -> Result<Attr, OpError> {
    let base = Generation(r.base_generation);
    let upload = Uploaded::from_header(&put.header, r.data.len() as u64, base);
    let Put {
        create, changes, ..
    } = put;
    let vault = at.state.auth.settings().vault;
    let (file, parent_version) = at
        .write(r.lazy, move |txn, who| {
            let now = now();
            let mut parent_version = None;
            if let Some(file) = &create {
                (_, parent_version) = tree::create_file(txn, who, file, true, now)?;
            }
            let commit = chunks::Commit {
                ino: FileId(r.ino),
                chunks: &[upload],
                size: r.size,
                truncate: r.truncate,
                rekey: &[],
                manifest: Sent::of(vault, &r.manifest),
            };
            let file = chunks::commit(txn, who, &commit, now)?;
            let file = set_after_commit(txn, who, file, changes.as_ref(), now)?;
            Ok((file, parent_version))
        })
        .await?;
    Ok(at.named(&file, parent_version))
}

/// The file after a commit (`file`, with its chunks committed) and then its attribute changes.
fn set_after_commit(
    txn: &mut dyn Txn,
    caller: &Caller,
    file: Inode,
    changes: Option<&AttrChanges>,
    now: Time,
) -> Result<Inode, OpError> {
    match changes {
        Some(changes) => tree::setattr(txn, caller, file.ino, changes, now),
        None => Ok(file),
    }
}

/// Reads the header and length of an uploaded chunk for a commit.
fn uploaded(at: &Context, ino: FileId, commit: &ChunkCommit) -> Result<Uploaded, OpError> {
    let chunk = ChunkRef {
        ino,
        index: ChunkIndex(commit.index),
        generation: Generation(commit.generation),
    };
    let (header, len) = at.state.chunks.header(chunk).map_err(|e| match e {
        crate::chunkstore::ChunkStoreError::Missing { .. } => OpError::invalid(format!(
            "chunk {} generation {} was not uploaded",
            commit.index, commit.generation
        )),
        other => chunk_error(other),
    })?;
    if u64::from(header.index) != commit.index || header.generation != commit.generation {
        return Err(OpError::BadChunk(format!(
            "stored chunk ChunkRef {{ ino: {}, index: {}, generation: {} }} has a different header",
            ino.0, commit.index, commit.generation
        )));
    }
    let base = Generation(commit.base_generation);
    Ok(Uploaded::from_header(&header, len, base))
}
