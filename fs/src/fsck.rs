//! `vaultfs fsck`: opens every chunk of every file the user can read under a path, with the
//! user's keys, through the same checks a mount makes (`shared`), and lists the files that do
//! not open whole. The server's `storaged fsck` checks what needs no key; only this sees a
//! flipped bit in a chunk's body, or a chunk sealed under another key.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use format::ids::FileId;
use format::limits::CHUNK_BYTES;
use identity::Identity;
use indicatif::{ProgressBar, ProgressStyle};
use proto::v1::{Attr, FileKind};

use crate::config::ClientConfig;
use crate::error::FsError;
use crate::keys::Keys;
use crate::shared::{Limits, Shared};
use crate::vault::Vault;

/// Every file checked opened whole.
pub const EXIT_CLEAN: u8 = 0;
/// Some file did not: each is listed.
pub const EXIT_DAMAGE: u8 = 4;
const CHUNK: u64 = CHUNK_BYTES as u64;

#[derive(Args, Debug)]
pub struct FsckArgs {
    /// What to check: a file or directory of a mounted vault, or a path in the vault (`/` is
    /// its root).
    #[arg(default_value = "/")]
    pub path: PathBuf,
    /// How long to wait for an unreachable storaged before giving up, seconds.
    #[arg(long, default_value_t = 30)]
    pub server_wait_seconds: u64,
}

/// A file found under the path.
struct Found {
    path: String,
    ino: FileId,
    size: u64,
}

/// Checks everything under `args.path` as the user of `config` with `identity`.
pub fn run(config: ClientConfig, identity: Identity, args: &FsckArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let wait = Duration::from_secs(args.server_wait_seconds);
    let shared = runtime.block_on(async {
        let (remote, vault, pinned) =
            crate::mount::connect(&config, Arc::new(identity), wait).await?;
        let logged = remote.login().await?;
        let keys = Keys::new(remote.clone(), vault, pinned.admin()?, logged.uid);
        // One chunk at a time, none read ahead: each is fetched and opened exactly once.
        let limits = Limits {
            cache_bytes_max: 2 * CHUNK_BYTES,
            prefetch_chunks: 0,
            ..Limits::default()
        };
        anyhow::Ok(Shared::new(
            remote,
            keys,
            limits,
            tokio::runtime::Handle::current(),
        ))
    })?;
    let vault = Vault::new(Arc::new(shared));
    let (start, shown) = resolve(&vault, &args.path)?;
    let walked = walk(&vault, start, &shown)?;
    let files = &walked.files;
    let total: u64 = files.iter().map(|f| f.size).sum();
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("checking [{bar:40}] {bytes}/{total_bytes} ({eta}) {msg}")
            .expect("a valid progress template")
            .progress_chars("=> "),
    );
    for (path, reason) in &walked.broken {
        println!("damaged {path}: does not list: {reason}");
    }
    let mut damaged = walked.broken.len();
    for file in files {
        bar.set_message(file.path.clone());
        if let Some(reason) = check_file(&vault, file, &bar)? {
            damaged += 1;
            bar.suspend(|| println!("damaged {}: {reason}", file.path));
        }
    }
    bar.finish_and_clear();
    println!(
        "checked {} files ({total} bytes) under {shown}: {damaged} damaged, {} not readable by you",
        files.len(),
        walked.unreadable
    );
    Ok(ExitCode::from(if damaged == 0 {
        EXIT_CLEAN
    } else {
        EXIT_DAMAGE
    }))
}

/// The inode `path` names and how to show it: a path in a mounted vault, or one in the vault.
fn resolve(vault: &Vault, path: &Path) -> anyhow::Result<(Attr, String)> {
    let inside = match mount_of(path) {
        Some((mountpoint, canonical)) => canonical
            .strip_prefix(&mountpoint)
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        None => path.to_path_buf(),
    };
    let mut attr = vault
        .getattr(FileId::ROOT)
        .map_err(fs_error("the vault's root"))?;
    let mut shown = String::new();
    for part in inside.components() {
        use std::path::Component;
        let name = match part {
            Component::Normal(name) => name,
            Component::RootDir | Component::CurDir => continue,
            _ => bail!("{}: no .. in a vault path", path.display()),
        };
        shown.push('/');
        shown.push_str(&name.to_string_lossy());
        use std::os::unix::ffi::OsStrExt;
        attr = vault
            .lookup(FileId(attr.ino), name.as_bytes())
            .map_err(fs_error(&shown))?;
    }
    if shown.is_empty() {
        shown.push('/');
    }
    Ok((attr, shown))
}

/// The vaultfs mount holding `path` (from `/proc/self/mounts`), and `path` made absolute.
fn mount_of(path: &Path) -> Option<(PathBuf, PathBuf)> {
    let canonical = std::fs::canonicalize(path).ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "fuse.vaultfs").then(|| PathBuf::from(point.replace("\\040", " ")))
        })
        .filter(|point| canonical.starts_with(point))
        .max_by_key(|point| point.as_os_str().len())
        .map(|point| (point, canonical))
}

fn fs_error(what: &str) -> impl FnOnce(FsError) -> anyhow::Error + '_ {
    move |error| anyhow::anyhow!("{what}: {error}")
}

/// What a walk found: the regular files (each once), the directories that do not list (and
/// why), and how many files and directories the user may not read.
#[derive(Default)]
struct Walked {
    files: Vec<Found>,
    broken: Vec<(String, String)>,
    unreadable: usize,
}

fn display(path: &str) -> String {
    if path.is_empty() {
        "/".into()
    } else {
        path.to_string()
    }
}

fn list(vault: &Vault, dir: FileId) -> Result<crate::vault::Listing, FsError> {
    let handle = vault.opendir(dir)?;
    let listing = vault.listing(handle).map(|(listing, _)| listing);
    vault.releasedir(handle);
    listing
}

/// Everything under `start` (itself, if it is a file).
fn walk(vault: &Vault, start: Attr, shown: &str) -> anyhow::Result<Walked> {
    let spinner = ProgressBar::new_spinner().with_message("listing");
    let mut walked = Walked::default();
    let mut seen = HashSet::new();
    let mut pending = vec![(shown.trim_end_matches('/').to_string(), start)];
    while let Some((path, attr)) = pending.pop() {
        if !seen.insert(attr.ino) {
            continue;
        }
        if !attr.may_read {
            walked.unreadable += 1;
            continue;
        }
        match attr.kind() {
            FileKind::Regular => walked.files.push(Found {
                path: display(&path),
                ino: FileId(attr.ino),
                size: attr.size,
            }),
            FileKind::Directory => {
                let listing = match list(vault, FileId(attr.ino)) {
                    Ok(listing) => listing,
                    Err(error) if error.kind() == proto::ErrorKind::Unavailable => {
                        bail!("storaged is unreachable: {error}")
                    }
                    Err(error) => {
                        walked.broken.push((display(&path), error.to_string()));
                        continue;
                    }
                };
                for (name, child) in listing.iter() {
                    if name.as_slice() == b"." || name.as_slice() == b".." {
                        continue;
                    }
                    let child_path = format!("{path}/{}", String::from_utf8_lossy(name));
                    pending.push((child_path, *child));
                }
                spinner.set_message(format!("listing: {} files", walked.files.len()));
                spinner.tick();
            }
            _ => {}
        }
    }
    spinner.finish_and_clear();
    walked.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(walked)
}

/// Opens and reads every chunk of `file`: why it does not read whole, if it does not. An
/// unreachable server ends the check instead.
fn check_file(vault: &Vault, file: &Found, bar: &ProgressBar) -> anyhow::Result<Option<String>> {
    let handle = match vault.open(file.ino) {
        Ok((handle, _)) => handle,
        Err(error) => return verdict(error, None),
    };
    let mut outcome = None;
    for index in 0..file.size.div_ceil(CHUNK) {
        // One byte of a chunk loads, checks and opens all of it.
        if let Err(error) = vault.read(handle, index * CHUNK, 1) {
            outcome = verdict(error, Some(index))?;
            break;
        }
        bar.inc(CHUNK.min(file.size - index * CHUNK));
    }
    let _ = vault.release(handle);
    Ok(outcome)
}

fn verdict(error: FsError, index: Option<u64>) -> anyhow::Result<Option<String>> {
    if error.kind() == proto::ErrorKind::Unavailable {
        bail!("storaged is unreachable: {error}");
    }
    Ok(Some(match (error, index) {
        (FsError::Integrity { index, reason, .. }, _) => format!("chunk {index}: {reason}"),
        (other, Some(index)) => format!("chunk {index}: {other}"),
        (other, None) => format!("does not open: {other}"),
    }))
}
