//! The metadata side of `storaged fsck`: every inode, directory entry, chunk record and
//! garbage entry, read in one read transaction (one consistent state), each chunk record
//! checked against its chunk file's header and length.

use std::collections::HashMap;
use std::sync::Arc;

use format::envelope::file_tag;
use format::ids::VaultId;
use format::limits::{CHUNK_BYTES, ENVELOPE_BYTES};
use indicatif::ProgressBar;

use super::Finding;
use crate::chunkstore::{ChunkStore, ChunkStoreError, DirChunkStore};
use crate::meta::{ChunkRef, FileId, Inode, Kind, StoreError, Txn};

/// Records read at once.
const PAGE: usize = 1000;
const CHUNK: u64 = CHUNK_BYTES as u64;

/// What the scan needs besides the transaction.
pub(super) struct Scan {
    pub vault: VaultId,
    pub chunks: Arc<DirChunkStore>,
    /// The chunk files on disk, sorted, listed before the scan began.
    pub on_disk: Arc<Vec<(ChunkRef, u64)>>,
    pub progress: ProgressBar,
}

/// What the scan found, and which of the chunk files on disk a record names.
pub(super) struct Scanned {
    pub findings: Vec<Finding>,
    pub named: Vec<bool>,
    pub inodes: u64,
    pub chunk_records: u64,
}

/// What an inode's records must agree with.
struct Summary {
    kind: Kind,
    size: u64,
    nlink: u32,
    orphaned: bool,
}

impl Scan {
    /// Runs the whole scan in `txn`.
    pub fn run(&self, txn: &mut dyn Txn) -> Result<Scanned, StoreError> {
        let mut scanned = Scanned {
            findings: Vec::new(),
            named: vec![false; self.on_disk.len()],
            inodes: 0,
            chunk_records: 0,
        };
        let inodes = self.inodes(txn)?;
        scanned.inodes = inodes.len() as u64;
        self.tree(txn, &inodes, &mut scanned.findings)?;
        scanned.chunk_records = self.chunk_records(txn, &inodes, &mut scanned)?;
        self.garbage(txn, &mut scanned)?;
        Ok(scanned)
    }

    fn inodes(&self, txn: &mut dyn Txn) -> Result<HashMap<FileId, Summary>, StoreError> {
        self.progress.set_message("reading inodes");
        let mut inodes = HashMap::new();
        let mut after = None;
        loop {
            let page = txn.list_inodes(after, PAGE)?;
            after = page.last().map(|i| i.ino);
            for Inode {
                ino,
                kind,
                size,
                nlink,
                orphaned_at,
                ..
            } in page.iter().cloned()
            {
                let orphaned = orphaned_at.is_some();
                inodes.insert(
                    ino,
                    Summary {
                        kind,
                        size,
                        nlink,
                        orphaned,
                    },
                );
            }
            if page.len() < PAGE {
                return Ok(inodes);
            }
        }
    }

    /// Every entry names an inode of its kind; every inode has as many names as its link
    /// count says (a directory: one, and two links more than it has subdirectories).
    fn tree(
        &self,
        txn: &mut dyn Txn,
        inodes: &HashMap<FileId, Summary>,
        findings: &mut Vec<Finding>,
    ) -> Result<(), StoreError> {
        self.progress.set_message("reading directories");
        let mut names: HashMap<FileId, u32> = HashMap::new();
        let mut subdirs: HashMap<FileId, u32> = HashMap::new();
        for (&dir, summary) in inodes {
            if summary.kind != Kind::Directory {
                continue;
            }
            let mut after = Vec::new();
            loop {
                let page = txn.list_entries(dir, &after, PAGE)?;
                for (name, entry) in &page {
                    match inodes.get(&entry.ino) {
                        None => findings.push(Finding::DanglingEntry {
                            dir,
                            ino: entry.ino,
                            why: "names no inode",
                        }),
                        Some(target) if target.kind != entry.kind => {
                            findings.push(Finding::DanglingEntry {
                                dir,
                                ino: entry.ino,
                                why: "names an inode of another kind",
                            })
                        }
                        Some(target) => {
                            *names.entry(entry.ino).or_default() += 1;
                            if target.kind == Kind::Directory {
                                *subdirs.entry(dir).or_default() += 1;
                            }
                        }
                    }
                    after.clone_from(name);
                }
                if page.len() < PAGE {
                    break;
                }
            }
        }
        for (&ino, summary) in inodes {
            let found = names.get(&ino).copied().unwrap_or(0);
            if let Some(finding) = links(ino, summary, found, subdirs.get(&ino).copied()) {
                findings.push(finding);
            }
        }
        Ok(())
    }

    /// Each chunk record: of a regular file, within its size, its chunk file whole.
    fn chunk_records(
        &self,
        txn: &mut dyn Txn,
        inodes: &HashMap<FileId, Summary>,
        scanned: &mut Scanned,
    ) -> Result<u64, StoreError> {
        self.progress.set_message("checking chunk files");
        self.progress.set_length(self.on_disk.len() as u64);
        let mut count = 0;
        let mut after = None;
        loop {
            let page = txn.list_all_chunks(after, PAGE)?;
            after = page.last().map(|c| (c.ino, c.index));
            for &chunk in &page {
                count += 1;
                self.progress.inc(1);
                self.mark_named(chunk, &mut scanned.named);
                let finding = match inodes.get(&chunk.ino) {
                    Some(file) if file.kind == Kind::Regular => self.check_chunk(chunk, file.size),
                    Some(_) => Some(Finding::OrphanChunkRecord(chunk, "of an inode not a file")),
                    None => Some(Finding::OrphanChunkRecord(chunk, "of no inode")),
                };
                scanned.findings.extend(finding);
            }
            if page.len() < PAGE {
                return Ok(count);
            }
        }
    }

    /// Garbage entries name superseded chunk files the collector has yet to delete.
    fn garbage(&self, txn: &mut dyn Txn, scanned: &mut Scanned) -> Result<(), StoreError> {
        let mut after = None;
        loop {
            let page = txn.list_garbage(i64::MAX, after, PAGE)?;
            after = page.last().copied();
            for &chunk in &page {
                if !self.mark_named(chunk, &mut scanned.named) && !self.chunks.path(chunk).exists()
                {
                    scanned.findings.push(Finding::GarbageGone(chunk));
                }
            }
            if page.len() < PAGE {
                return Ok(());
            }
        }
    }

    /// Marks a chunk file on disk as named by a record: whether it was listed.
    fn mark_named(&self, chunk: ChunkRef, named: &mut [bool]) -> bool {
        match self.on_disk.binary_search_by(|(c, _)| c.cmp(&chunk)) {
            Ok(at) => {
                named[at] = true;
                true
            }
            Err(_) => false,
        }
    }

    /// The chunk file of a record of a file of `size` bytes: there, with the header and
    /// length its place in the file needs. (Its body only a key can check: `vaultfs fsck`.)
    fn check_chunk(&self, chunk: ChunkRef, size: u64) -> Option<Finding> {
        let index = chunk.index.get();
        let last_index = match size.div_ceil(CHUNK).checked_sub(1) {
            Some(last) if index <= last => last,
            _ => return Some(Finding::ChunkPastEnd(chunk, size)),
        };
        let last = index == last_index;
        let plaintext = if last {
            size - last_index * CHUNK
        } else {
            CHUNK
        };
        let expected_len = plaintext + ENVELOPE_BYTES as u64;
        let (header, len) = match self.chunks.header(chunk) {
            Ok(found) => found,
            Err(ChunkStoreError::Missing { .. }) => return Some(Finding::MissingChunk(chunk)),
            Err(ChunkStoreError::Damaged { reason, .. }) => {
                return Some(Finding::DamagedChunk(chunk, reason));
            }
            Err(error) => return Some(Finding::DamagedChunk(chunk, error.to_string())),
        };
        let reason =
            if u64::from(header.index) != index || header.generation != chunk.generation.get() {
                format!(
                    "holds chunk {} generation {}",
                    header.index, header.generation
                )
            } else if header.file_tag != file_tag(self.vault, chunk.ino) {
                "belongs to another file".to_string()
            } else if header.last != last {
                match last {
                    true => "not marked last, where the file ends".to_string(),
                    false => "marked last, where the file goes on".to_string(),
                }
            } else if len != expected_len {
                format!("{len} bytes, where the file's size needs {expected_len}")
            } else {
                return None;
            };
        Some(Finding::DamagedChunk(chunk, reason))
    }
}

/// Whether an inode's link count agrees with the `names` entries naming it and, for a
/// directory, its `subdirs`.
fn links(ino: FileId, summary: &Summary, names: u32, subdirs: Option<u32>) -> Option<Finding> {
    let root = ino == FileId::ROOT;
    match summary.kind {
        Kind::Directory => {
            let expected_names = if root { 0 } else { 1 };
            let expected_links = 2 + subdirs.unwrap_or(0);
            if names == 0 && !root {
                return Some(Finding::Unreachable(ino));
            }
            if names != expected_names {
                return Some(Finding::DirectoryNames(ino, names));
            }
            (summary.nlink != expected_links).then_some(Finding::LinkCount {
                ino,
                recorded: summary.nlink,
                found: expected_links,
            })
        }
        _ if names == 0 && summary.nlink == 0 && summary.orphaned => None,
        _ if names == 0 => Some(Finding::Unreachable(ino)),
        _ => (summary.nlink != names).then_some(Finding::LinkCount {
            ino,
            recorded: summary.nlink,
            found: names,
        }),
    }
}
