//! The state store: every allocation (host numbers, project ids, VM and service ports with
//! their MAC and address, exposures) in one JSON file.
//!
//! Updates are atomic (write a temporary file, fsync, rename) and serialized by an exclusive
//! `flock` on a lock file beside it, which a run holds from reading the state to writing it
//! back, so two concurrent netctl runs never hand out the same address or port.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, flock};
use serde::{Deserialize, Serialize};

use crate::error::StateError;
use crate::limits;
use crate::net::Mac;

pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    /// Host name to host number (its tunnel ports' OpenFlow number is derived from it).
    pub hosts: BTreeMap<String, u16>,
    /// Project name to project id (the group id the flows match on).
    pub projects: BTreeMap<String, u32>,
    /// VM and service ports by name.
    pub ports: BTreeMap<String, PortRecord>,
    /// Published VM ports, ordered by host port.
    pub exposures: Vec<ExposureRecord>,
}

impl Default for State {
    fn default() -> Self {
        State {
            version: STATE_VERSION,
            hosts: BTreeMap::new(),
            projects: BTreeMap::new(),
            ports: BTreeMap::new(),
            exposures: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortKind {
    Vm,
    Service,
}

/// Where a port comes from: the cluster file (removed when it leaves the file) or the library
/// and `vm add` (removed by `vm remove`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    File,
    Api,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRecord {
    pub kind: PortKind,
    pub origin: Origin,
    /// Where the port is now.
    pub host: String,
    /// For ports from the file: the host the file named when last read. A VM moved by
    /// `vm move` stays where it was moved until the file names a different host.
    pub declared_host: Option<String>,
    /// The project of a VM; services have none.
    pub project: Option<String>,
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    /// Unique among live ports: names the OVS interface and fixes its OpenFlow port number.
    pub index: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExposureRecord {
    pub vm: String,
    pub vm_port: u16,
    pub host_port: u16,
}

/// The state file and its lock file.
#[derive(Debug, Clone)]
pub struct StateStore {
    path: PathBuf,
}

/// An exclusive hold on the state store; released when dropped.
#[derive(Debug)]
pub struct StateLock {
    path: PathBuf,
    _lock_file: File,
}

impl StateStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A snapshot without the lock (for plan and status): the file is replaced atomically,
    /// so a reader sees either the old or the new state. A missing file is an empty state.
    pub fn read(&self) -> Result<State, StateError> {
        read_state(&self.path)
    }

    /// Waits (bounded) for the exclusive lock.
    pub fn lock(&self) -> Result<StateLock, StateError> {
        let io_error = |what| {
            let path = self.path.clone();
            move |source| StateError::Io { path, what, source }
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_error("create its directory"))?;
        }
        let lock_path = sibling(&self.path, ".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error("open its lock file"))?;
        let started = Instant::now();
        let wait = Duration::from_millis(limits::STATE_LOCK_WAIT_MS);
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(errno) if errno == rustix::io::Errno::WOULDBLOCK => {}
                Err(errno) => return Err(io_error("lock it")(errno.into())),
            }
            if started.elapsed() >= wait {
                return Err(StateError::Busy {
                    path: self.path.clone(),
                    waited_ms: limits::STATE_LOCK_WAIT_MS,
                });
            }
            std::thread::sleep(Duration::from_millis(limits::STATE_LOCK_POLL_MS));
        }
        Ok(StateLock {
            path: self.path.clone(),
            _lock_file: file,
        })
    }
}

impl StateLock {
    pub fn load(&self) -> Result<State, StateError> {
        read_state(&self.path)
    }

    /// Replaces the state file atomically and durably.
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let io_error = |what| {
            let path = self.path.clone();
            move |source| StateError::Io { path, what, source }
        };
        let mut bytes = serde_json::to_vec_pretty(state).map_err(|source| StateError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        bytes.push(b'\n');
        let temporary = sibling(&self.path, &format!(".tmp.{}", std::process::id()));
        let mut file = File::create(&temporary).map_err(io_error("create a temporary file"))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(io_error("write a temporary file"))?;
        std::fs::rename(&temporary, &self.path).map_err(io_error("replace it"))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_error("sync its directory"))?;
        }
        Ok(())
    }
}

fn read_state(path: &Path) -> Result<State, StateError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(State::default()),
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_path_buf(),
                what: "open it",
                source,
            });
        }
    };
    let mut bytes = Vec::new();
    file.take(limits::STATE_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| StateError::Io {
            path: path.to_path_buf(),
            what: "read it",
            source,
        })?;
    if bytes.len() as u64 > limits::STATE_FILE_BYTES_MAX {
        return Err(StateError::TooLarge {
            path: path.to_path_buf(),
            max_bytes: limits::STATE_FILE_BYTES_MAX,
        });
    }
    let state: State = serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    if state.version != STATE_VERSION {
        return Err(StateError::Version {
            path: path.to_path_buf(),
            found: state.version,
            expected: STATE_VERSION,
        });
    }
    Ok(state)
}

/// `dir/.NAME.SUFFIX` beside `path`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".to_string());
    path.with_file_name(format!(".{name}{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_empty_and_save_round_trips() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = StateStore::new(dir.path().join("sub/state.json"));
        assert_eq!(store.read().expect("read"), State::default());
        let lock = store.lock().expect("lock");
        let mut state = lock.load().expect("load");
        state.hosts.insert("h1".into(), 0);
        lock.save(&state).expect("save");
        drop(lock);
        assert_eq!(store.read().expect("read"), state);
    }

    #[test]
    fn second_lock_waits_for_the_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = StateStore::new(dir.path().join("state.json"));
        let first = store.lock().expect("lock");
        let file = OpenOptions::new()
            .write(true)
            .open(sibling(store.path(), ".lock"))
            .expect("open lock file");
        assert!(flock(&file, FlockOperation::NonBlockingLockExclusive).is_err());
        drop(first);
        assert!(flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok());
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{not json").expect("write");
        let error = StateStore::new(&path).read().expect_err("corrupt");
        assert!(error.to_string().contains("corrupt"), "{error}");
    }
}
