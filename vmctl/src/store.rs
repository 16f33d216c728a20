//! vmctl's store: a directory every host reaches (the drives and consoles live there) holding
//! one JSON state file of VMs and drives, changed under an exclusive `flock` and replaced by
//! atomic rename, so concurrent `vmctl` runs never lose each other's changes.
//!
//! ```text
//! STORE/state.json        VMs and drives (this module)
//! STORE/state.lock        the lock
//! STORE/images/NAME/      image.toml and the files it names (crate::image)
//! STORE/drives/NAME.qcow2 encrypted data drives (crate::drive)
//! STORE/console/VM.log    each VM's serial console
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, io_error};
use crate::limits;

/// What vmctl knows about its VMs and drives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// This store's random ID (hex): the "vault" that drive keys are wrapped for.
    pub site: String,
    pub vms: BTreeMap<String, VmRecord>,
    pub drives: BTreeMap<String, DriveRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRecord {
    pub uuid: String,
    pub host: String,
    pub project: String,
    pub network: String,
    pub image: String,
    pub cpus: u32,
    pub memory_mib: u64,
    /// Attached drives, in attach order.
    pub drives: Vec<String>,
    /// Unix seconds of the last start through vmctl (for uptime).
    pub started_at: Option<u64>,
    /// What the VM needs to mount the vault (`create --vault`), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<crate::vault::VaultSeed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveRecord {
    /// The object ID its key is wrapped for.
    pub object: u64,
    pub size_gib: u64,
    /// The owner's public identity (signing and wrapping keys, hex).
    pub owner: String,
    /// The drive key wrapped to the owner (docs/format.md section 5, kind 2), hex.
    pub wrapped_key: String,
    /// The UUID of the ephemeral libvirt secret that carries the key while a VM opens it.
    pub secret_uuid: String,
    pub attached_to: Option<String>,
    /// The guest device while attached (`vdb`...).
    pub target: Option<String>,
}

impl State {
    pub fn vm(&self, name: &str) -> Result<&VmRecord> {
        self.vms
            .get(name)
            .ok_or_else(|| Error::UnknownVm(name.to_string()))
    }

    pub fn drive(&self, name: &str) -> Result<&DriveRecord> {
        self.drives
            .get(name)
            .ok_or_else(|| Error::UnknownDrive(name.to_string()))
    }
}

/// The store directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn image_dir(&self, image: &str) -> PathBuf {
        self.dir.join("images").join(image)
    }

    pub fn drive_path(&self, drive: &str) -> PathBuf {
        self.dir.join("drives").join(format!("{drive}.qcow2"))
    }

    pub fn console_path(&self, vm: &str) -> PathBuf {
        self.dir.join("console").join(format!("{vm}.log"))
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Creates the store's directories.
    pub fn init(&self) -> Result<()> {
        for sub in ["images", "drives", "console"] {
            let path = self.dir.join(sub);
            fs::create_dir_all(&path).map_err(io_error("creating", &path))?;
        }
        Ok(())
    }

    /// Reads the state without locking (a consistent snapshot thanks to atomic renames).
    pub fn read(&self) -> Result<State> {
        self.load()
    }

    /// Runs `change` on the state under the lock, and saves the state if it changed. When
    /// `change` fails nothing is saved.
    pub fn update<T>(&self, change: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        self.init()?;
        let _lock = self.lock()?;
        let mut state = self.load()?;
        let before = state.clone();
        let value = change(&mut state)?;
        if state != before {
            self.save(&state)?;
        }
        Ok(value)
    }

    fn lock(&self) -> Result<File> {
        let path = self.dir.join("state.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_error("opening", &path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_error("locking", &path)(e.into()))?;
        Ok(file)
    }

    fn load(&self) -> Result<State> {
        let path = self.state_path();
        let bad = |reason: String| Error::State {
            path: path.clone(),
            reason,
        };
        let mut state = match fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io_error("reading", &path)(e)),
            Ok(meta) if meta.len() > limits::STATE_FILE_BYTES_MAX => {
                return Err(bad(format!(
                    "larger than {} bytes",
                    limits::STATE_FILE_BYTES_MAX
                )));
            }
            Ok(_) => {
                let text = fs::read_to_string(&path).map_err(io_error("reading", &path))?;
                serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?
            }
        };
        if state.site.is_empty() {
            state.site = hex::encode(identity::random_bytes::<16>());
        }
        Ok(state)
    }

    fn save(&self, state: &State) -> Result<()> {
        let path = self.state_path();
        let temporary = self.dir.join("state.json.tmp");
        let text = serde_json::to_string_pretty(state).map_err(|e| Error::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut file = File::create(&temporary).map_err(io_error("creating", &temporary))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_error("writing", &temporary))?;
        fs::rename(&temporary, &path).map_err(io_error("replacing", &path))
    }
}

/// Checks a VM or drive name: lowercase letters, digits and `-`, starting with a letter. Such
/// names are safe as file names, libvirt names and kernel command-line words.
pub fn check_name(kind: &'static str, name: &str, max_bytes: usize) -> Result<()> {
    let invalid = |reason: &str| Error::InvalidName {
        kind,
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() || name.len() > max_bytes {
        return Err(invalid(&format!("it must be 1 to {max_bytes} bytes long")));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(invalid("it must start with a lowercase letter"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(invalid("use lowercase letters, digits and `-` only"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_persist_and_failed_updates_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        store
            .update(|state| {
                state.drives.insert(
                    "d1".into(),
                    DriveRecord {
                        object: 7,
                        size_gib: 1,
                        owner: "aa".into(),
                        wrapped_key: "bb".into(),
                        secret_uuid: "u".into(),
                        attached_to: None,
                        target: None,
                    },
                );
                Ok(())
            })
            .expect("update");
        let site = store.read().expect("read").site;
        assert_eq!(site.len(), 32);
        let failed: Result<()> = store.update(|state| {
            state.drives.clear();
            Err(Error::UnknownDrive("x".into()))
        });
        assert!(failed.is_err());
        let state = store.read().expect("read");
        assert_eq!(state.site, site, "the site ID is kept");
        assert_eq!(state.drive("d1").expect("d1").object, 7);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("VM", "vm-1", 48).is_ok());
        for bad in ["", "1vm", "Vm", "vm_1", "vm 1", "vm/1", "a'b"] {
            assert!(check_name("VM", bad, 48).is_err(), "{bad}");
        }
        assert!(check_name("drive", &"d".repeat(21), 20).is_err());
    }
}
