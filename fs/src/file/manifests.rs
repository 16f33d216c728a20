//! The manifest every commit carries (see [`crate::manifest`]): sealed here for the file as
//! the commit leaves it, with the counter after the one this state last knew.

use std::collections::BTreeMap;

use format::ids::{ChunkIndex, Generation};
use proto::ErrorKind;
use proto::v1::{Attr, OpenReply};

use super::{FileState, chunk_map, end_index, open_call};
use crate::error::FsError;
use crate::manifest::{Served, check, refused, seal};
use crate::shared::Shared;

/// Reads of a file whose manifest and chunk map disagree before it is refused. A read of
/// several records may be torn by a concurrent commit (a large file's map comes in pages; a
/// MongoDB-compatible server may not pin a session's reads to one moment): read again. An
/// edited map disagrees every time.
const READS_MAX: usize = 3;

/// An `Open` reply whose size and chunk map its manifest describes.
pub(super) struct Checked {
    pub reply: OpenReply,
    pub attr: Attr,
    pub generations: BTreeMap<ChunkIndex, Generation>,
    /// The manifest's counter (0: none, and the file may lack one).
    pub counter: u64,
}

impl FileState {
    /// Checks the manifest of an `Open` reply (and of its chunk map's pages) against them,
    /// reading the file again when they disagree, a bounded number of times.
    pub(super) async fn checked(
        &self,
        shared: &Shared,
        mut reply: OpenReply,
    ) -> Result<Checked, FsError> {
        let ino = self.ino;
        let mut read = 1;
        loop {
            let attr = reply.attr.ok_or_else(|| {
                FsError::local(ErrorKind::Internal, "an open reply without attributes")
            })?;
            let generations = chunk_map(&shared.remote, ino, &reply).await?;
            let served = Served {
                vault: shared.keys.vault(),
                ino,
                size: attr.size,
                map: &generations,
            };
            match check(&self.keys, served, &reply.manifest, Some(&shared.manifests)) {
                Ok(counter) => {
                    return Ok(Checked {
                        reply,
                        attr,
                        generations,
                        counter,
                    });
                }
                Err(reason) if read < READS_MAX => {
                    tracing::info!(%ino, %reason, read, "the file's manifest and chunk map disagree; reading them again");
                    reply = open_call(shared, ino).await?;
                    read += 1;
                }
                Err(reason) => return Err(refused(&shared.name_of(ino), ino, reason)),
            }
        }
    }

    /// The manifest of the file after a commit of `chunks` (index, new generation) with
    /// `size`, as the server applies it (`truncate`: exactly that size; else at least it), and
    /// its counter. If another writer changed the file meanwhile it does not describe it, and
    /// the server refuses the commit (the writer re-reads the file and tries again).
    pub(super) fn manifest_after(
        &self,
        shared: &Shared,
        chunks: &[(ChunkIndex, Generation)],
        size: u64,
        truncate: bool,
    ) -> (Vec<u8>, u64) {
        let size = if truncate {
            size
        } else {
            size.max(self.committed_size)
        };
        let mut map = self.generations.clone();
        map.extend(chunks.iter().copied());
        if truncate {
            map.split_off(&end_index(size));
        }
        let counter = self.manifest + 1;
        let served = Served {
            vault: shared.keys.vault(),
            ino: self.ino,
            size,
            map: &map,
        };
        (seal(&self.keys, served, counter), counter)
    }

    /// A commit with manifest `counter` succeeded.
    pub(super) fn manifest_committed(&mut self, shared: &Shared, counter: u64) {
        self.manifest = counter;
        shared.manifests.saw(self.ino, counter);
    }
}
