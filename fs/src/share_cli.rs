//! The sharing commands of `vaultfs`: `share`, `unshare`, `acl`, `rekey` (on paths inside a
//! mounted vault), and `key passwd`. The work is `vaultfs::sharing`'s, over a connection of
//! its own with the user's key; the mount is only where paths are found (and flushed first).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use format::ids::FileId;
use identity::KeyKind;
use keystore::PassphraseSource;
use vaultfs::sharing::{Sharing, principal_named};

use crate::{KeyArgs, SessionArgs, runtime};

/// How deep `-r` goes below the path it was given.
const DEPTH_MAX: usize = 1024;
/// How many entries `-r` takes on at once.
const ENTRIES_MAX: usize = 1_000_000;

#[derive(Args, Debug)]
pub struct ShareArgs {
    #[command(flatten)]
    session: SessionArgs,
    /// A file or directory inside a mounted vault.
    path: PathBuf,
    /// Who: a user's name, or @GROUP.
    #[arg(long = "with", value_name = "USER|@GROUP")]
    with: String,
    /// Let them write too.
    #[arg(long)]
    write: bool,
    /// A directory and everything in it.
    #[arg(short, long)]
    recursive: bool,
}

#[derive(Args, Debug)]
pub struct UnshareArgs {
    #[command(flatten)]
    session: SessionArgs,
    path: PathBuf,
    /// Whom: a user's name, or @GROUP.
    #[arg(long, value_name = "USER|@GROUP")]
    from: String,
    #[arg(short, long)]
    recursive: bool,
}

#[derive(Args, Debug)]
pub struct PathArgs {
    #[command(flatten)]
    session: SessionArgs,
    path: PathBuf,
    /// A directory and everything in it.
    #[arg(short, long)]
    recursive: bool,
}

#[derive(Args, Debug)]
pub struct PasswdArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// Read the new passphrase from this file instead of a prompt.
    #[arg(long)]
    new_passphrase_file: Option<PathBuf>,
}

/// `vaultfs key passwd`.
pub fn passwd(args: &PasswdArgs) -> anyhow::Result<()> {
    let path = args.key.key_file.path();
    // Without a file the new passphrase comes from a prompt, never from where the current
    // one came (VAULT_PASSPHRASE or standard input would hand back the old one).
    let current_elsewhere =
        std::env::var_os("VAULT_PASSPHRASE").is_some() || args.key.passphrase_stdin;
    let new = match &args.new_passphrase_file {
        Some(file) => PassphraseSource::from_file(Some(file.clone())),
        None if current_elsewhere => {
            bail!("give the new passphrase with --new-passphrase-file")
        }
        None => PassphraseSource::from_file(None),
    };
    let public = keystore::change_passphrase(&path, KeyKind::User, &args.key.source(), &new)?;
    println!("changed the passphrase of {}", path.display());
    println!("fingerprint {} (unchanged)", public.fingerprint());
    Ok(())
}

/// An entry inside a mounted vault: its path, vault file ID and kind.
struct VaultPath {
    path: PathBuf,
    ino: FileId,
    dir: bool,
}

/// The vaultfs mount points of this machine, from /proc/self/mountinfo.
fn vault_mounts() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let point = left.split_whitespace().nth(4)?;
            (fstype == "fuse.vaultfs").then(|| PathBuf::from(point.replace("\\040", " ")))
        })
        .collect()
}

/// `path` as a file of a mounted vault (flushed, so that the server has it).
fn in_vault(path: &Path) -> anyhow::Result<VaultPath> {
    let shown = path.display();
    let canonical = std::fs::canonicalize(path).with_context(|| format!("{shown}"))?;
    let mount = vault_mounts()
        .into_iter()
        .filter(|point| canonical.starts_with(point))
        .max_by_key(|point| point.as_os_str().len())
        .with_context(|| format!("{shown} is not inside a mounted vault"))?;
    let meta = std::fs::symlink_metadata(&canonical).with_context(|| format!("{shown}"))?;
    let device = std::fs::metadata(&mount).map(|m| m.dev()).ok();
    if device != Some(meta.dev()) {
        bail!("{shown} is not inside a mounted vault");
    }
    flush(&canonical, meta.is_dir());
    Ok(VaultPath {
        path: canonical,
        ino: FileId(meta.ino()),
        dir: meta.is_dir(),
    })
}

/// fsync through the mount: a new file reaches the server, and a directory's ACL is read
/// again by the mount before its next new file there.
fn flush(path: &Path, dir: bool) {
    let flushable = dir || std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file());
    if flushable && let Err(error) = std::fs::File::open(path).and_then(|f| f.sync_all()) {
        tracing::warn!(path = %path.display(), %error, "could not flush it first");
    }
}

/// `root` and, with `recursive`, every directory and regular file below it (symbolic links
/// are not followed).
fn walk(root: VaultPath, recursive: bool) -> anyhow::Result<Vec<VaultPath>> {
    let mut found = Vec::new();
    let mut stack = vec![(root, 0usize)];
    while let Some((entry, depth)) = stack.pop() {
        if recursive && entry.dir {
            if depth >= DEPTH_MAX {
                bail!(
                    "{} is more than {DEPTH_MAX} levels deep",
                    entry.path.display()
                );
            }
            let listing = std::fs::read_dir(&entry.path)
                .with_context(|| format!("listing {}", entry.path.display()))?;
            for child in listing {
                let child = child.with_context(|| format!("listing {}", entry.path.display()))?;
                let meta = child.metadata()?;
                if meta.is_dir() || meta.is_file() {
                    flush(&child.path(), meta.is_dir());
                    let ino = FileId(meta.ino());
                    let (path, dir) = (child.path(), meta.is_dir());
                    stack.push((VaultPath { path, ino, dir }, depth + 1));
                }
            }
        }
        found.push(entry);
        if found.len() > ENTRIES_MAX {
            bail!("more than {ENTRIES_MAX} entries; share a smaller tree");
        }
    }
    Ok(found)
}

/// Unlocks the key, connects and logs in as the config says.
async fn connect(session: &SessionArgs) -> anyhow::Result<Sharing> {
    let config = session.config()?;
    let identity = Arc::new(session.key.unlock()?);
    let (remote, vault, pinned) =
        vaultfs::mount::connect(&config, identity, Duration::from_secs(10)).await?;
    let logged = remote.login().await?;
    let seen = vaultfs::seen::SeenFile::beside(&session.config_path(), vault, logged.uid)
        .load(&remote.identity().public())?;
    let keys = vaultfs::keys::Keys::new(remote.clone(), vault, pinned.admin()?, logged.uid);
    Ok(Sharing { remote, keys, seen })
}

/// Runs `work` on every entry's file ID, with a progress bar when there is more than one;
/// returns the sum of what it counted.
async fn each<F, Fut>(entries: &[VaultPath], what: &str, mut work: F) -> anyhow::Result<usize>
where
    F: FnMut(FileId) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<usize>>,
{
    let bar = if entries.len() > 1 {
        indicatif::ProgressBar::new(entries.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len}")
            .context("the progress bar's template")?,
    );
    bar.set_message(what.to_string());
    let mut counted = 0;
    for entry in entries {
        counted += work(entry.ino)
            .await
            .with_context(|| format!("{}", entry.path.display()))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(counted)
}

/// `vaultfs share`.
pub fn share(args: &ShareArgs) -> anyhow::Result<()> {
    let root = in_vault(&args.path)?;
    let entries = walk(root, args.recursive)?;
    runtime()?.block_on(async {
        let sharing = connect(&args.session).await?;
        let principal = principal_named(&sharing.remote, &args.with).await?;
        let sharing = &sharing;
        each(&entries, "sharing", |ino| async move {
            sharing.share(ino, principal, args.write).await.map(|()| 1)
        })
        .await
    })?;
    for entry in entries.iter().filter(|e| e.dir) {
        flush(&entry.path, true);
    }
    let rights = if args.write { "read and write" } else { "read" };
    println!(
        "{} may now {rights} {} ({} entries)",
        args.with,
        args.path.display(),
        entries.len()
    );
    Ok(())
}

/// `vaultfs unshare`.
pub fn unshare(args: &UnshareArgs) -> anyhow::Result<()> {
    let root = in_vault(&args.path)?;
    let entries = walk(root, args.recursive)?;
    let revoked = runtime()?.block_on(async {
        let sharing = connect(&args.session).await?;
        let principal = principal_named(&sharing.remote, &args.from).await?;
        let sharing = &sharing;
        each(&entries, "revoking", |ino| async move {
            Ok(usize::from(sharing.unshare(ino, principal).await?))
        })
        .await
    })?;
    for entry in entries.iter().filter(|e| e.dir) {
        flush(&entry.path, true);
    }
    if revoked == 0 {
        bail!("{} is not shared with {}", args.path.display(), args.from);
    }
    println!(
        "{} may no longer reach {} ({revoked} entries); files it could read have new keys",
        args.from,
        args.path.display()
    );
    Ok(())
}

/// `vaultfs acl`.
pub fn acl(args: &PathArgs) -> anyhow::Result<()> {
    let root = in_vault(&args.path)?;
    let entries = walk(root, args.recursive)?;
    runtime()?.block_on(async {
        let sharing = connect(&args.session).await?;
        for entry in &entries {
            println!("{}:", entry.path.display());
            for line in sharing.describe(entry.ino).await? {
                println!("  {line}");
            }
        }
        anyhow::Ok(())
    })
}

/// `vaultfs rekey`.
pub fn rekey(args: &PathArgs) -> anyhow::Result<()> {
    let root = in_vault(&args.path)?;
    let entries: Vec<VaultPath> = walk(root, args.recursive)?
        .into_iter()
        .filter(|e| !e.dir)
        .collect();
    let chunks = runtime()?.block_on(async {
        let sharing = connect(&args.session).await?;
        let sharing = &sharing;
        each(&entries, "re-sealing", |ino| async move {
            sharing.reseal(ino).await
        })
        .await
    })?;
    println!(
        "re-sealed {} files ({chunks} chunks) under new keys",
        entries.len()
    );
    Ok(())
}
