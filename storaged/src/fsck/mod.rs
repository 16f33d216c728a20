//! `storaged fsck`: what the server can check without a key. Every directory entry names an
//! inode of its kind, every inode has as many names as its link count says, every chunk
//! record belongs to a regular file and lies within its size, its chunk file exists with the
//! header (index, generation, file tag, last-chunk flag) and length its place needs, every
//! chunk file is named by a record, and the audit chain is intact. A chunk's body only a key
//! opens: `vaultfs fsck` checks that.
//!
//! The chunk root is listed first, then the metadata read in one transaction (one state),
//! so a running daemon does not make fsck report what it changes meanwhile, but for uploads
//! not committed yet (reported as young orphan chunk files).
//!
//! `--repair` fixes only what loses nothing a reader could get: garbage entries whose chunk
//! file is gone, chunk records of an inode that is gone (to the garbage list), and chunk
//! files no record names older than an hour (uploads never committed, as the daemon's
//! hourly sweep would). A missing or damaged chunk stays reported: readers get EIO, never
//! the zeros that dropping its record would give them.

mod scan;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use format::ids::VaultId;
use indicatif::{ProgressBar, ProgressStyle};

use self::scan::Scan;
use crate::chunkstore::{ChunkStore, DirChunkStore};
use crate::config::{Config, ServeArgs};
use crate::meta::{self, ChunkRef, FileId, MetaStore, StoreError};

/// Nothing found, or all that was found repaired.
pub const EXIT_CLEAN: u8 = 0;
/// Only leftovers (nothing a reader misses): orphan chunk files or records, garbage entries
/// whose file is gone. `--repair` removes them.
pub const EXIT_LEFTOVERS: u8 = 3;
/// Damage: a file that does not read whole, a broken tree, or a broken audit chain.
pub const EXIT_DAMAGE: u8 = 4;

#[derive(Args, Debug)]
pub struct FsckArgs {
    /// Also fix what loses nothing: remove garbage entries whose chunk file is gone, move
    /// chunk records of missing inodes to the garbage list, delete chunk files no record
    /// names that are older than an hour. Damage is only reported.
    #[arg(long)]
    pub repair: bool,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// One thing fsck found; its line starts with its [`label`](Finding::label).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    MissingChunk(ChunkRef),
    DamagedChunk(ChunkRef, String),
    /// A chunk record past the end of its file (of this size).
    ChunkPastEnd(ChunkRef, u64),
    DanglingEntry {
        dir: FileId,
        ino: FileId,
        why: &'static str,
    },
    Unreachable(FileId),
    /// A directory named more than once.
    DirectoryNames(FileId, u32),
    LinkCount {
        ino: FileId,
        recorded: u32,
        found: u32,
    },
    AuditBroken {
        seq: u64,
        reason: String,
    },
    OrphanChunkFile {
        chunk: ChunkRef,
        age_seconds: u64,
    },
    OrphanChunkRecord(ChunkRef, &'static str),
    GarbageGone(ChunkRef),
}

impl Finding {
    /// The first word of its line: what kind of finding it is.
    pub fn label(&self) -> &'static str {
        match self {
            Finding::MissingChunk(_) => "missing-chunk",
            Finding::DamagedChunk(..) => "damaged-chunk",
            Finding::ChunkPastEnd(..) => "chunk-past-end",
            Finding::DanglingEntry { .. } => "dangling-entry",
            Finding::Unreachable(_) => "unreachable-inode",
            Finding::DirectoryNames(..) => "directory-names",
            Finding::LinkCount { .. } => "link-count",
            Finding::AuditBroken { .. } => "audit-chain",
            Finding::OrphanChunkFile { .. } => "orphan-chunk-file",
            Finding::OrphanChunkRecord(..) => "orphan-chunk-record",
            Finding::GarbageGone(_) => "garbage-gone",
        }
    }

    /// Whether a reader misses something because of it (else it is a leftover).
    pub fn is_damage(&self) -> bool {
        !matches!(
            self,
            Finding::OrphanChunkFile { .. }
                | Finding::OrphanChunkRecord(..)
                | Finding::GarbageGone(_)
        )
    }

    fn detail(&self) -> String {
        let chunk = |c: &ChunkRef| {
            format!(
                "file {} chunk {} generation {}",
                c.ino, c.index, c.generation
            )
        };
        match self {
            Finding::MissingChunk(c) => format!("{}: its chunk file is missing", chunk(c)),
            Finding::DamagedChunk(c, why) => format!("{}: {why}", chunk(c)),
            Finding::ChunkPastEnd(c, size) => {
                format!("{}: past the end of the file ({size} bytes)", chunk(c))
            }
            Finding::DanglingEntry { dir, ino, why } => {
                format!("directory {dir}: an entry {why} ({ino})")
            }
            Finding::Unreachable(ino) => format!("inode {ino}: no directory names it"),
            Finding::DirectoryNames(ino, names) => {
                format!("directory {ino}: named {names} times")
            }
            Finding::LinkCount {
                ino,
                recorded,
                found,
            } => format!("inode {ino}: link count {recorded}, found {found}"),
            Finding::AuditBroken { seq, reason } => format!("entry {seq}: {reason}"),
            Finding::OrphanChunkFile {
                chunk: c,
                age_seconds,
            } => format!(
                "{}: no record names it (written {age_seconds} s ago{})",
                chunk(c),
                if *age_seconds < crate::gc::UPLOAD_GRACE.as_secs() {
                    "; an upload may be in progress"
                } else {
                    ""
                }
            ),
            Finding::OrphanChunkRecord(c, why) => format!("{}: a record {why}", chunk(c)),
            Finding::GarbageGone(c) => {
                format!("{}: listed for deletion, already gone", chunk(c))
            }
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:<19} {}", self.label(), self.detail())
    }
}

/// Checks the configured vault; prints each finding on a line, then a summary.
pub async fn run(args: &FsckArgs) -> anyhow::Result<ExitCode> {
    let config = Config::resolve(&args.serve)?;
    if !config.chunk_root.is_dir() {
        bail!("chunk root {} does not exist", config.chunk_root.display());
    }
    crate::server::require_existing_store(&config)?;
    let chunks = Arc::new(DirChunkStore::open(&config.chunk_root, false)?);
    let on_disk = Arc::new(list_chunk_files(&chunks).await?);
    let store = crate::server::open_store(&config, None).await?;
    let vault = vault_id(&*store).await?;
    let progress = bar(on_disk.len() as u64);
    let scan = Scan {
        vault,
        chunks: chunks.clone(),
        on_disk: on_disk.clone(),
        progress: progress.clone(),
    };
    let scanned = meta::read(&*store, move |txn| scan.run(txn)).await?;
    progress.finish_and_clear();
    let mut findings = scanned.findings;
    for ((chunk, age_seconds), named) in on_disk.iter().zip(&scanned.named) {
        if !named && chunks.path(*chunk).exists() {
            findings.push(Finding::OrphanChunkFile {
                chunk: *chunk,
                age_seconds: *age_seconds,
            });
        }
    }
    if let crate::audit::Verdict::Broken { seq, reason } = crate::audit::verify(&*store).await? {
        findings.push(Finding::AuditBroken { seq, reason });
    }
    let repaired = match args.repair {
        true => repair(&store, &chunks, &findings).await?,
        false => vec![false; findings.len()],
    };
    Ok(report(
        &findings,
        &repaired,
        (scanned.inodes, scanned.chunk_records, on_disk.len()),
    ))
}

/// Prints the findings and a summary; the exit code of what is left.
fn report(findings: &[Finding], repaired: &[bool], counts: (u64, u64, usize)) -> ExitCode {
    let mut left = (0, 0);
    for (finding, &fixed) in findings.iter().zip(repaired) {
        println!("{finding}{}", if fixed { " [repaired]" } else { "" });
        match (fixed, finding.is_damage()) {
            (true, _) => {}
            (false, true) => left.0 += 1,
            (false, false) => left.1 += 1,
        }
    }
    let fixed = repaired.iter().filter(|r| **r).count();
    println!(
        "checked {} inodes, {} chunk records, {} chunk files: {} damaged, {} leftovers, {fixed} repaired",
        counts.0, counts.1, counts.2, left.0, left.1
    );
    ExitCode::from(match left {
        (0, 0) => EXIT_CLEAN,
        (0, _) => EXIT_LEFTOVERS,
        _ => EXIT_DAMAGE,
    })
}

fn bar(length: u64) -> ProgressBar {
    let bar = ProgressBar::new(length);
    let style = ProgressStyle::with_template("{msg:24} [{bar:40}] {pos}/{len} ({eta})")
        .expect("a valid progress template")
        .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// Every chunk file under the root, sorted, with its age in seconds.
async fn list_chunk_files(chunks: &Arc<DirChunkStore>) -> anyhow::Result<Vec<(ChunkRef, u64)>> {
    let spinner = ProgressBar::new_spinner().with_message("listing chunk files");
    spinner.enable_steady_tick(Duration::from_millis(200));
    let store = chunks.clone();
    let listed = tokio::task::spawn_blocking(move || store.list())
        .await
        .context("the listing thread")?;
    spinner.finish_and_clear();
    let mut listed = listed?;
    listed.sort();
    Ok(listed)
}

async fn vault_id(store: &dyn MetaStore) -> anyhow::Result<VaultId> {
    let bytes = meta::read(store, |txn| txn.get_setting(crate::settings::VAULT_ID))
        .await?
        .context("the metadata holds no vault ID: not a vault")?;
    let bytes: [u8; 16] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("vault ID".into()))?;
    Ok(VaultId(bytes))
}

/// Fixes what is safe to fix (see the module comment), each checked again in the transaction
/// that fixes it; which findings were fixed.
async fn repair(
    store: &Arc<dyn MetaStore>,
    chunks: &Arc<DirChunkStore>,
    findings: &[Finding],
) -> anyhow::Result<Vec<bool>> {
    let mut fixed = Vec::with_capacity(findings.len());
    for finding in findings {
        let done = match *finding {
            Finding::GarbageGone(chunk) if !chunks.path(chunk).exists() => {
                meta::write(&**store, move |txn| txn.delete_garbage(chunk)).await?;
                true
            }
            Finding::OrphanChunkRecord(chunk, _) => {
                meta::write(&**store, move |txn| {
                    let file = txn.get_inode(chunk.ino)?;
                    let current = txn.get_chunk(chunk.ino, chunk.index)?;
                    if file.is_some_and(|f| f.kind == meta::Kind::Regular)
                        || current != Some(chunk.generation)
                    {
                        return Ok(false);
                    }
                    txn.delete_chunk(chunk.ino, chunk.index)?;
                    txn.add_garbage(chunk)?;
                    Ok::<_, StoreError>(true)
                })
                .await?
            }
            Finding::OrphanChunkFile { chunk, age_seconds }
                if age_seconds >= crate::gc::UPLOAD_GRACE.as_secs() =>
            {
                remove_orphan(store, chunks, chunk).await?
            }
            _ => false,
        };
        fixed.push(done);
    }
    Ok(fixed)
}

/// Deletes a chunk file no record names, unless one does by now.
async fn remove_orphan(
    store: &Arc<dyn MetaStore>,
    chunks: &Arc<DirChunkStore>,
    chunk: ChunkRef,
) -> anyhow::Result<bool> {
    let named = meta::read(&**store, move |txn| {
        let current = txn.get_chunk(chunk.ino, chunk.index)? == Some(chunk.generation);
        Ok::<_, StoreError>(current || txn.is_garbage(chunk)?)
    })
    .await?;
    if named {
        return Ok(false);
    }
    let store = chunks.clone();
    tokio::task::spawn_blocking(move || store.delete(chunk))
        .await
        .context("the repair thread")?
        .with_context(|| format!("removing {}", chunks.path(chunk).display()))?;
    Ok(true)
}
