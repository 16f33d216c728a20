//! The manifest every commit carries (see [`crate::manifest`]): sealed here for the file as
//! the commit leaves it, with the counter after the one this state last knew.

use format::ids::{ChunkIndex, Generation};

use super::{FileState, end_index};
use crate::manifest::{Served, seal};
use crate::shared::Shared;

impl FileState {
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
