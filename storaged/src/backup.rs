//! `storaged backup` and `storaged restore`: a copy of the metadata as of one moment, made
//! while the daemon runs, beside which any ordinary tool copies the chunk root; and putting
//! such a copy back on another data dir or database (`docs/format.md` section 10).
//!
//! A backup is a directory: `BACKUP` (the manifest, written last), `admin.pub`, and the
//! metadata: `meta.db` (the embedded store) or `mongodb/` (one `.bson` file per collection,
//! as `mongodump` writes them). The chunk files are not in it: chunk files never change once
//! written and superseded ones stay `gc_grace_seconds`, so a copy of the chunk root that ends
//! within that time after the backup holds every chunk file the backup names.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::config::{Config, MetaBackend, ServeArgs};
use crate::meta::{SnapshotFacts, mongo::MongoStore, sqlite};

/// The manifest's name in a backup directory.
pub const MANIFEST: &str = "BACKUP";
/// The layout of a backup directory this build writes and reads.
const FORMAT: u32 = 1;
/// Where the embedded store's copy goes, and MongoDB's dump.
const SQLITE_COPY: &str = "meta.db";
const MONGODB_DUMP: &str = "mongodb";
const ADMIN_KEY: &str = "admin.pub";

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The directory to write the backup into (it must not exist, or be empty).
    pub dest: PathBuf,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// A directory written by `storaged backup`.
    pub backup: PathBuf,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// What a backup holds (`BACKUP`, TOML).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub format: u32,
    /// "sqlite" or "mongodb".
    pub backend: String,
    /// The vault ID, hex.
    pub vault: String,
    pub schema_version: u32,
    /// When the metadata was read, in nanoseconds since the epoch.
    pub taken_ns: i64,
    pub inodes: u64,
    pub chunks: u64,
    /// The storaged that made it.
    pub storaged: String,
    /// SHA-256 (hex) of every other file of the backup, by its path in the backup.
    pub sha256: BTreeMap<String, String>,
}

impl Manifest {
    /// Reads and checks `BACKUP` in `dir`.
    pub fn read(dir: &Path) -> anyhow::Result<Manifest> {
        let path = dir.join(MANIFEST);
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "{} is not a complete backup: reading {}",
                dir.display(),
                path.display()
            )
        })?;
        let manifest: Manifest =
            toml::from_str(&text).with_context(|| format!("in {}", path.display()))?;
        if manifest.format != FORMAT {
            bail!(
                "{}: backup format {} (this storaged reads {FORMAT})",
                path.display(),
                manifest.format
            );
        }
        Ok(manifest)
    }

    /// Fails unless the files of the backup in `dir` are those the manifest lists, each with
    /// its checksum: a backup damaged since it was made is never restored.
    pub fn verify(&self, dir: &Path) -> anyhow::Result<()> {
        let found = digests(dir)?;
        for (path, digest) in &self.sha256 {
            match found.get(path) {
                None => bail!("{}: {path} is missing from the backup", dir.display()),
                Some(d) if d != digest => bail!(
                    "{}: {path} does not match its checksum in {MANIFEST}: damaged",
                    dir.display()
                ),
                Some(_) => {}
            }
        }
        if let Some(extra) = found.keys().find(|p| !self.sha256.contains_key(*p)) {
            bail!("{}: {extra} is not in {MANIFEST}", dir.display());
        }
        Ok(())
    }
}

/// SHA-256 (hex) of every file under `dir` but the manifest, by its path relative to `dir`.
fn digests(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    use sha2::Digest;
    let mut found = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let listing = fs::read_dir(dir.join(&relative))
            .with_context(|| format!("listing {}", dir.join(&relative).display()))?;
        for entry in listing {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let path = relative.join(entry.file_name());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path);
                continue;
            }
            if path.as_os_str() == MANIFEST {
                continue;
            }
            let mut file = File::open(entry.path())
                .with_context(|| format!("reading {}", entry.path().display()))?;
            let mut hasher = sha2::Sha256::new();
            let mut buffer = vec![0u8; 1 << 16];
            loop {
                let read = file
                    .read(&mut buffer)
                    .with_context(|| format!("reading {}", entry.path().display()))?;
                if read == 0 {
                    break;
                }
                hasher.update(&buffer[..read]);
            }
            found.insert(
                path.to_string_lossy().into_owned(),
                hex::encode(hasher.finalize()),
            );
        }
    }
    Ok(found)
}

/// Writes a backup of the configured vault's metadata into `args.dest`.
pub async fn backup(args: &BackupArgs) -> anyhow::Result<ExitCode> {
    let config = Config::resolve(&args.serve)?;
    let partial = prepare(&args.dest)?;
    let written = write_backup(&config, &partial).await;
    let manifest = match written.and_then(|m| finish(&partial, &args.dest).map(|()| m)) {
        Ok(manifest) => manifest,
        Err(error) => {
            let _ = fs::remove_dir_all(&partial);
            return Err(error.context(format!("backing up into {}", args.dest.display())));
        }
    };
    println!(
        "backup of vault {} ({} metadata, schema {}): {} inodes, {} chunk records, in {}",
        manifest.vault,
        manifest.backend,
        manifest.schema_version,
        manifest.inodes,
        manifest.chunks,
        args.dest.display()
    );
    println!(
        "now copy the chunk root {} (cp -a, rsync -a or tar), finishing within {} s",
        config.chunk_root.display(),
        config.gc_grace.as_secs()
    );
    Ok(ExitCode::SUCCESS)
}

/// A new, empty sibling of `dest` to write into, renamed to `dest` once complete.
fn prepare(dest: &Path) -> anyhow::Result<PathBuf> {
    if dest.exists() {
        let empty = fs::read_dir(dest)
            .with_context(|| format!("{} exists and is not a directory", dest.display()))?
            .next()
            .is_none();
        if !empty {
            bail!("{} exists and is not empty", dest.display());
        }
    }
    let name = dest
        .file_name()
        .with_context(|| format!("{} names no directory", dest.display()))?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let partial = parent.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    fs::create_dir(&partial).with_context(|| format!("creating {}", partial.display()))?;
    Ok(partial)
}

async fn write_backup(config: &Config, dir: &Path) -> anyhow::Result<Manifest> {
    let taken_ns = crate::meta::now();
    let (backend, facts) = match &config.meta {
        MetaBackend::Sqlite(path) => {
            let (from, to) = (path.clone(), dir.join(SQLITE_COPY));
            let facts = tokio::task::spawn_blocking(move || sqlite::backup::snapshot(&from, &to))
                .await
                .context("the backup thread")??;
            sync_file(&dir.join(SQLITE_COPY))?;
            ("sqlite", facts)
        }
        MetaBackend::Mongo(url) => {
            let store = MongoStore::open(url).await?;
            let dump = dir.join(MONGODB_DUMP);
            fs::create_dir(&dump).with_context(|| format!("creating {}", dump.display()))?;
            let facts = store.dump(&dump).await?;
            sync_dir(&dump)?;
            ("mongodb", facts)
        }
    };
    if config.admin_public_key.is_file() {
        fs::copy(&config.admin_public_key, dir.join(ADMIN_KEY))
            .with_context(|| format!("copying {}", config.admin_public_key.display()))?;
        sync_file(&dir.join(ADMIN_KEY))?;
    }
    let manifest = Manifest {
        format: FORMAT,
        backend: backend.to_string(),
        vault: hex::encode(&facts.vault),
        schema_version: facts.schema_version,
        taken_ns,
        inodes: facts.inodes,
        chunks: facts.chunks,
        storaged: env!("CARGO_PKG_VERSION").to_string(),
        sha256: digests(dir)?,
    };
    let text = format!(
        "# A vault metadata backup by `storaged backup`; put it back with `storaged restore`.\n{}",
        toml::to_string(&manifest).context("writing the manifest")?
    );
    fs::write(dir.join(MANIFEST), text).context("writing the manifest")?;
    sync_file(&dir.join(MANIFEST))?;
    sync_dir(dir)?;
    Ok(manifest)
}

/// Gives the complete backup its name (replacing an empty directory there) durably.
fn finish(partial: &Path, dest: &Path) -> anyhow::Result<()> {
    fs::rename(partial, dest)
        .with_context(|| format!("renaming {} to {}", partial.display(), dest.display()))?;
    sync_dir(
        dest.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
}

fn sync_file(path: &Path) -> anyhow::Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", path.display()))
}

fn sync_dir(path: &Path) -> anyhow::Result<()> {
    sync_file(path)
}

/// Puts the backup in `args.backup` back as the configured vault's metadata, which must not
/// exist yet (no metadata database in the data dir; an empty MongoDB database).
pub async fn restore(args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let config = Config::resolve(&args.serve)?;
    let manifest = Manifest::read(&args.backup)?;
    manifest.verify(&args.backup)?;
    restore_admin_key(&args.backup, &config)?;
    let facts = match (&config.meta, manifest.backend.as_str()) {
        (MetaBackend::Sqlite(path), "sqlite") => {
            restore_sqlite(&args.backup, path, &manifest).await?
        }
        (MetaBackend::Mongo(url), "mongodb") => {
            restore_mongodb(&args.backup.join(MONGODB_DUMP), url, &manifest).await?
        }
        (_, backend) => bail!(
            "{} is a backup of the {backend} metadata store; restore it onto the same kind \
             (--meta {})",
            args.backup.display(),
            if backend == "sqlite" {
                "sqlite"
            } else {
                "mongodb://..."
            }
        ),
    };
    println!(
        "restored vault {}: {} inodes, {} chunk records, as of the backup in {}",
        manifest.vault,
        facts.inodes,
        facts.chunks,
        args.backup.display()
    );
    println!(
        "next: put the chunk files copied with it into {} (e.g. tar -xf chunks.tar -C {}), then \
         check with `storaged fsck` before `storaged serve`",
        config.chunk_root.display(),
        config.chunk_root.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Fails unless the metadata read from a backup (`facts`, from `what`) is what its manifest
/// says, of a schema this storaged reads: checked before anything is put in place.
fn agrees(
    facts: &SnapshotFacts,
    manifest: &Manifest,
    what: &Path,
    newest: u32,
) -> anyhow::Result<()> {
    if hex::encode(&facts.vault) != manifest.vault
        || facts.schema_version != manifest.schema_version
    {
        bail!(
            "{}: the metadata is of vault {} schema {}, the manifest names vault {} schema {}",
            what.display(),
            hex::encode(&facts.vault),
            facts.schema_version,
            manifest.vault,
            manifest.schema_version
        );
    }
    if facts.schema_version > newest {
        bail!(
            "{}: metadata schema version {} is newer than this storaged ({newest}); upgrade storaged",
            what.display(),
            facts.schema_version
        );
    }
    Ok(())
}

async fn restore_sqlite(
    backup: &Path,
    target: &Path,
    manifest: &Manifest,
) -> anyhow::Result<SnapshotFacts> {
    if target.exists() {
        bail!(
            "{} exists: restore onto a data dir without a metadata database",
            target.display()
        );
    }
    let copy = backup.join(SQLITE_COPY);
    let checked = copy.clone();
    let facts = tokio::task::spawn_blocking(move || sqlite::backup::check(&checked))
        .await
        .context("the restore thread")?
        .with_context(|| format!("checking {}", copy.display()))?;
    agrees(&facts, manifest, &copy, sqlite::SCHEMA_VERSION)?;
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temporary = dir.join(format!(".meta.db.restoring-{}", std::process::id()));
    fs::copy(&copy, &temporary).with_context(|| format!("copying {}", copy.display()))?;
    sync_file(&temporary)?;
    // A link fails if the name exists: a database that appeared meanwhile is never replaced.
    let linked =
        fs::hard_link(&temporary, target).with_context(|| format!("creating {}", target.display()));
    let _ = fs::remove_file(&temporary);
    linked?;
    sync_dir(dir)?;
    Ok(facts)
}

async fn restore_mongodb(
    dump: &Path,
    url: &str,
    manifest: &Manifest,
) -> anyhow::Result<SnapshotFacts> {
    let checked = crate::meta::mongo::dump::check_dump(dump)?;
    agrees(&checked, manifest, dump, crate::meta::mongo::SCHEMA_VERSION)?;
    let store = MongoStore::open(url).await?;
    if !store.is_empty().await? {
        bail!(
            "MongoDB database {} holds data: restore into an empty database",
            store.database_name()
        );
    }
    store
        .load(dump, manifest.schema_version)
        .await
        .context("loading the backup")?;
    drop(store);
    // Opening again upgrades the schema from the backup's version.
    let store = MongoStore::open(url).await?;
    let vault = crate::meta::read(&store, |txn| txn.get_setting(crate::settings::VAULT_ID))
        .await?
        .context("the restored database holds no vault ID")?;
    Ok(SnapshotFacts { vault, ..checked })
}

/// The administrator's public key file of the backup, where the restored vault looks for it,
/// unless the same is there already.
fn restore_admin_key(backup: &Path, config: &Config) -> anyhow::Result<()> {
    let saved = backup.join(ADMIN_KEY);
    if !saved.is_file() {
        return Ok(());
    }
    let key = fs::read(&saved).with_context(|| format!("reading {}", saved.display()))?;
    match fs::read(&config.admin_public_key) {
        Ok(present) if present == key => Ok(()),
        Ok(_) => bail!(
            "{} differs from the backup's {}: the restored vault keeps its administrator",
            config.admin_public_key.display(),
            saved.display()
        ),
        Err(_) => {
            if let Some(dir) = config.admin_public_key.parent() {
                fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            fs::write(&config.admin_public_key, key)
                .with_context(|| format!("writing {}", config.admin_public_key.display()))
        }
    }
}
