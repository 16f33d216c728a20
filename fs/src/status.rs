//! What `vaultfs status` reads: every running mount writes a small JSON file under the runtime
//! directory every few seconds (mount point, server, cache use, server state).

use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct MountStatus {
    pub pid: u32,
    pub mountpoint: String,
    pub server: String,
    pub user: String,
    pub cache_bytes: usize,
    pub cache_bytes_max: usize,
    pub dirty_bytes: usize,
    pub open_files: usize,
    /// New files closed under a directory lease, not sent to the server yet.
    #[serde(default)]
    pub unsent_files: usize,
    /// Directory leases held.
    #[serde(default)]
    pub leases: usize,
    pub server_reachable: bool,
    pub updated_unix: u64,
}

/// `$XDG_RUNTIME_DIR/vault`, else `/run/vault` for root, else `/tmp/vault-<uid>`.
pub fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join("vault");
    }
    let uid = rustix::process::getuid();
    if uid.is_root() {
        PathBuf::from("/run/vault")
    } else {
        PathBuf::from(format!("/tmp/vault-{}", uid.as_raw()))
    }
}

/// The runtime directory, private to this user: made so if it is new, narrowed if it is this
/// user's (an older vaultfs made it 0755); refused when it is not a directory of this user's
/// (another local user may have made it first in `/tmp`, to read the logs or plant links).
pub fn private_runtime_dir() -> io::Result<PathBuf> {
    let dir = runtime_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let uid = rustix::process::getuid().as_raw();
    if let Err(error) = check_private_dir(&dir, uid) {
        let metadata = std::fs::symlink_metadata(&dir)?;
        if !metadata.is_dir() || metadata.uid() != uid {
            return Err(error);
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(dir)
}

/// `dir` is a directory (not a link to one) owned by `uid`, which no one else may enter.
pub fn check_private_dir(dir: &Path, uid: u32) -> io::Result<()> {
    let metadata = std::fs::symlink_metadata(dir)?;
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "refusing the runtime directory {}: {why}; remove it, or set XDG_RUNTIME_DIR \
                 to a directory of yours",
                dir.display()
            ),
        ))
    };
    if !metadata.is_dir() {
        return refuse("it is not a directory".into());
    }
    if metadata.uid() != uid {
        return refuse(format!("it belongs to uid {}, not to you", metadata.uid()));
    }
    if metadata.mode() & 0o077 != 0 {
        return refuse(format!(
            "others may use it (mode {:o})",
            metadata.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Creates (or truncates) a file of this user's only, never through a symbolic link.
pub fn create_private(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    // An older file keeps its mode through a truncation.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

pub fn path_for(pid: u32) -> PathBuf {
    runtime_dir().join(format!("vaultfs-{pid}.json"))
}

pub fn write(status: &MountStatus) -> std::io::Result<()> {
    private_runtime_dir()?;
    let path = path_for(status.pid);
    let temp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(status).map_err(std::io::Error::other)?;
    io::Write::write_all(&mut create_private(&temp)?, &bytes)?;
    std::fs::rename(temp, path)
}

/// Every mount whose vaultfs process still runs (stale files are removed).
pub fn read_all() -> Vec<MountStatus> {
    let Ok(entries) = std::fs::read_dir(runtime_dir()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Some(status) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<MountStatus>(&b).ok())
        else {
            continue;
        };
        // A killed client leaves its file behind, and its process ID may come back as
        // another program's.
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", status.pid));
        if comm.is_ok_and(|comm| comm.trim_end() == "vaultfs") {
            out.push(status);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
    out.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    out
}
