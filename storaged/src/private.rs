//! What storaged keeps is for storaged alone: other local users of the storage host may
//! connect to its socket, and nothing else. Every file it creates is private (umask 077); the
//! data directory lets others through to the socket but not list or read it (0711); the
//! metadata database and the chunk root, when they were made before with wider permissions,
//! are narrowed at start, with a log line.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use rustix::fs::Mode;

use crate::config::{Config, MetaBackend};

/// The data directory: others may pass through to the socket, not list it.
pub const DATA_DIR_MODE: u32 = 0o711;
/// Everything else storaged makes.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Sets the umask, then makes or narrows the data directory, the chunk root and the
/// embedded database's files.
pub fn make_private(config: &Config) -> anyhow::Result<()> {
    rustix::process::umask(Mode::from_raw_mode(0o077));
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data dir {}", config.data_dir.display()))?;
    narrow(&config.data_dir, DATA_DIR_MODE)?;
    if config.chunk_root.exists() {
        narrow(&config.chunk_root, PRIVATE_DIR_MODE)?;
    }
    if let MetaBackend::Sqlite(database) = &config.meta {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = database.as_os_str().to_owned();
            path.push(suffix);
            let path = Path::new(&path);
            if path.exists() {
                narrow(path, PRIVATE_FILE_MODE)?;
            }
        }
    }
    Ok(())
}

/// Takes from `path` every permission `mode` does not grant.
fn narrow(path: &Path, mode: u32) -> anyhow::Result<()> {
    let metadata =
        std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let current = metadata.permissions().mode() & 0o7777;
    if current & !mode == 0 {
        return Ok(());
    }
    let narrowed = current & mode;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(narrowed))
        .with_context(|| format!("narrowing the permissions of {}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        from = format!("{current:o}"),
        to = format!("{narrowed:o}"),
        "narrowed permissions: other local users could read what storaged keeps"
    );
    Ok(())
}
