//! What `vaultfs status` reads: every running mount writes a small JSON file under the runtime
//! directory every few seconds (mount point, server, cache use, server state).

use std::path::PathBuf;

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

pub fn path_for(pid: u32) -> PathBuf {
    runtime_dir().join(format!("vaultfs-{pid}.json"))
}

pub fn write(status: &MountStatus) -> std::io::Result<()> {
    let dir = runtime_dir();
    std::fs::create_dir_all(&dir)?;
    let path = path_for(status.pid);
    let temp = path.with_extension("tmp");
    std::fs::write(
        &temp,
        serde_json::to_vec(status).map_err(std::io::Error::other)?,
    )?;
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
