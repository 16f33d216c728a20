//! What this client remembers of files' manifests (docs/format.md section 5.5): the highest
//! manifest counter it saw of each file, so that an older manifest (a whole earlier state the
//! storage kept, or put back) is refused. Kept in memory by the mount and, between mounts, in
//! a file of the user's next to the client config: written whole and atomically (a new file
//! renamed over the old) at most every [`SAVE_EVERY`] while something changed and at unmount,
//! never per open; signed with the user's key and checked at mount.
//!
//! The storage administrator has no hands on the client machine: the file's owner and mode
//! (the user's, 0600) keep it from other local users, and the signature makes a copy that went
//! through other hands (a home directory on a file server) useless to forge entries with.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use format::ids::{FileId, VaultId};
use identity::{Identity, PublicIdentity, SIGNATURE_BYTES};

/// Files whose newest manifest counter is remembered; past this, the quarter seen least
/// recently is forgotten (a client forgets, it never refuses wrongly). 4 MiB on disk.
pub const FILES_REMEMBERED_MAX: usize = 1 << 18;

/// How often a mount saves what it saw, if it saw something new.
pub const SAVE_EVERY: Duration = Duration::from_secs(30);

const MAGIC: [u8; 2] = *b"VS";
const VERSION_1: u8 = 1;
const HEADER_BYTES: usize = 32;
const ENTRY_BYTES: usize = 16;
/// The domain of the file's signature (see `identity::Identity::sign`).
pub const DOMAIN: &str = "vault/v1 manifests seen";
/// The largest such file: every entry and the signature.
const FILE_BYTES_MAX: usize = HEADER_BYTES + FILES_REMEMBERED_MAX * ENTRY_BYTES + SIGNATURE_BYTES;

#[derive(Clone, Copy, Debug)]
struct Entry {
    counter: u64,
    /// When it was last seen, on this memory's own clock (one tick per sighting).
    touched: u64,
}

#[derive(Debug, Default)]
struct Files {
    entries: HashMap<FileId, Entry>,
    clock: u64,
}

/// The highest manifest counter this client saw of each file (in a commit of its own or an
/// open it checked).
#[derive(Debug, Default)]
pub struct Seen {
    files: Mutex<Files>,
    /// A counter rose or a file was added since the last [`Seen::take_changed`].
    changed: AtomicBool,
}

impl Seen {
    /// The highest counter seen of `ino` (0: none).
    pub fn of(&self, ino: FileId) -> u64 {
        let files = self.files.lock().expect("manifests seen poisoned");
        files.entries.get(&ino).map_or(0, |e| e.counter)
    }

    /// Remembers that `ino` reached manifest `counter`.
    pub fn saw(&self, ino: FileId, counter: u64) {
        let mut files = self.files.lock().expect("manifests seen poisoned");
        files.clock += 1;
        let touched = files.clock;
        if !files.entries.contains_key(&ino) && files.entries.len() >= FILES_REMEMBERED_MAX {
            forget_oldest(&mut files.entries, FILES_REMEMBERED_MAX / 4);
        }
        let entry = files.entries.entry(ino).or_insert(Entry {
            counter: 0,
            touched,
        });
        entry.touched = touched;
        if counter > entry.counter {
            entry.counter = counter;
            self.changed.store(true, Ordering::Relaxed);
        }
    }

    /// Every file and its counter, least recently seen first.
    fn snapshot(&self) -> Vec<(FileId, u64)> {
        let files = self.files.lock().expect("manifests seen poisoned");
        let mut entries: Vec<(FileId, Entry)> =
            files.entries.iter().map(|(&i, &e)| (i, e)).collect();
        entries.sort_unstable_by_key(|(_, e)| e.touched);
        entries.into_iter().map(|(i, e)| (i, e.counter)).collect()
    }

    /// A memory holding `entries` (least recently seen first).
    fn from_entries(entries: &[(FileId, u64)]) -> Seen {
        let seen = Seen::default();
        for &(ino, counter) in entries {
            seen.saw(ino, counter);
        }
        seen.changed.store(false, Ordering::Relaxed);
        seen
    }

    /// Whether anything changed since the last call.
    fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::Relaxed)
    }
}

/// Drops the `count` entries seen least recently.
fn forget_oldest(entries: &mut HashMap<FileId, Entry>, count: usize) {
    let mut touched: Vec<u64> = entries.values().map(|e| e.touched).collect();
    let count = count.min(touched.len());
    if count == 0 {
        return;
    }
    let (_, &mut cut, _) = touched.select_nth_unstable(count - 1);
    entries.retain(|_, e| e.touched > cut);
}

/// The file that keeps a user's [`Seen`] between mounts of one vault.
#[derive(Debug, Clone)]
pub struct SeenFile {
    pub path: PathBuf,
    vault: VaultId,
    uid: u32,
    /// One save at a time (the periodic one and the one at unmount share the temporary file).
    saving: Arc<Mutex<()>>,
}

impl SeenFile {
    /// The file beside the client config `config_path` (`client.toml`: `client.seen`), for
    /// vault user `uid` of `vault`.
    pub fn beside(config_path: &Path, vault: VaultId, uid: u32) -> SeenFile {
        SeenFile {
            path: config_path.with_extension("seen"),
            vault,
            uid,
            saving: Arc::default(),
        }
    }

    /// Deletes what the client with config `config_path` saw (`vaultfs mount --forget-seen`:
    /// after the administrator restored the vault from a backup, every file changed since
    /// would be refused as rolled back).
    pub fn forget(config_path: &Path) -> anyhow::Result<()> {
        let path = config_path.with_extension("seen");
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::warn!(path = %path.display(), "forgot which manifests this client saw: earlier states of files are accepted until it sees newer ones");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }

    /// What the file holds (nothing when there is none yet), checked: owned by this process's
    /// user and private to it, a regular file, and signed by `me` for this vault and user.
    pub fn load(&self, me: &PublicIdentity) -> anyhow::Result<Seen> {
        let shown = self.path.display();
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Seen::default()),
            Err(e) => return Err(e).with_context(|| format!("opening {shown}")),
        };
        let meta = file
            .metadata()
            .with_context(|| format!("reading {shown}"))?;
        let uid = rustix::process::geteuid().as_raw();
        if !meta.is_file() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
            bail!("{shown} is not a private file of this user (mode 0600): refusing it");
        }
        if meta.len() > FILE_BYTES_MAX as u64 {
            bail!("{shown} is larger than any this client writes: refusing it");
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        std::io::Read::read_to_end(&mut &file, &mut bytes)
            .with_context(|| format!("reading {shown}"))?;
        let entries = decode(&bytes, self.vault, self.uid, me).map_err(|reason| {
            anyhow::anyhow!(
                "{shown} is damaged ({reason}): move it away to start over (this client then \
                 forgets which manifests it saw)"
            )
        })?;
        Ok(Seen::from_entries(&entries))
    }

    /// Writes `seen` whole, signed by `me`: a new private file, synced, renamed over the old.
    pub fn save(&self, seen: &Seen, me: &Identity) -> anyhow::Result<()> {
        let _one = self.saving.lock().expect("saving poisoned");
        let bytes = encode(&seen.snapshot(), self.vault, self.uid, me);
        let temp = self.path.with_extension("seen.tmp");
        let _ = std::fs::remove_file(&temp);
        let mut file = crate::status::create_private(&temp)
            .with_context(|| format!("creating {}", temp.display()))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", temp.display()))?;
        std::fs::rename(&temp, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))?;
        if let Some(dir) = self.path.parent().and_then(|d| std::fs::File::open(d).ok()) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Saves `seen` if it changed since the last save; logs a failure (and tries again
    /// next time).
    pub fn save_if_changed(&self, seen: &Seen, me: &Identity) {
        if !seen.take_changed() {
            return;
        }
        if let Err(error) = self.save(seen, me) {
            seen.changed.store(true, Ordering::Relaxed);
            tracing::warn!(
                error = format!("{error:#}"),
                "could not save the manifests this client saw"
            );
        }
    }
}

/// Saves what the mount sees every [`SAVE_EVERY`] while it changes, on `runtime`, until the
/// runtime ends (the mount saves once more at unmount).
pub fn keep_saving(
    runtime: &tokio::runtime::Handle,
    file: SeenFile,
    shared: Arc<crate::shared::Shared>,
) {
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(SAVE_EVERY).await;
            let (file, shared) = (file.clone(), shared.clone());
            let saved = tokio::task::spawn_blocking(move || {
                file.save_if_changed(&shared.manifests, shared.remote.identity());
            });
            let _ = saved.await;
        }
    });
}

/// The file's bytes (docs/format.md section 5.5).
fn encode(entries: &[(FileId, u64)], vault: VaultId, uid: u32, me: &Identity) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + entries.len() * ENTRY_BYTES + SIGNATURE_BYTES);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[VERSION_1, 0]);
    out.extend_from_slice(&vault.0);
    out.extend_from_slice(&uid.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (ino, counter) in entries {
        out.extend_from_slice(&ino.0.to_le_bytes());
        out.extend_from_slice(&counter.to_le_bytes());
    }
    let signature = me.sign(DOMAIN, &out);
    out.extend_from_slice(&signature);
    out
}

/// The entries of a file's bytes, if they are well formed, of this vault and user, and
/// signed by `me`.
fn decode(
    bytes: &[u8],
    vault: VaultId,
    uid: u32,
    me: &PublicIdentity,
) -> Result<Vec<(FileId, u64)>, String> {
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if bytes.len() < HEADER_BYTES + SIGNATURE_BYTES || bytes[..2] != MAGIC {
        return Err("not a file of manifests seen".into());
    }
    if bytes[2] != VERSION_1 || bytes[3] != 0 {
        return Err(format!("version {} is unknown to this build", bytes[2]));
    }
    let count = u64_at(24);
    let body = bytes.len() - SIGNATURE_BYTES;
    if count > FILES_REMEMBERED_MAX as u64 || HEADER_BYTES as u64 + count * 16 != body as u64 {
        return Err(format!("{count} entries do not fill {} bytes", bytes.len()));
    }
    let signature: &[u8; SIGNATURE_BYTES] = bytes[body..].try_into().expect("64 bytes");
    me.verify(DOMAIN, &bytes[..body], signature)
        .map_err(|_| "not signed by this user's key".to_string())?;
    if bytes[4..20] != vault.0 || u32::from_le_bytes(bytes[20..24].try_into().expect("4")) != uid {
        return Err("of another vault or user".into());
    }
    Ok((0..count as usize)
        .map(|i| HEADER_BYTES + i * ENTRY_BYTES)
        .map(|at| (FileId(u64_at(at)), u64_at(at + 8)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_counter_is_kept_and_the_oldest_files_forgotten_first() {
        let seen = Seen::default();
        seen.saw(FileId(1), 5);
        seen.saw(FileId(1), 3);
        assert_eq!(seen.of(FileId(1)), 5, "never lowered");
        assert!(seen.take_changed());
        seen.saw(FileId(1), 4);
        assert!(!seen.take_changed(), "nothing new to save");
        let mut entries: HashMap<FileId, Entry> = (0..8)
            .map(|i| {
                (
                    FileId(i),
                    Entry {
                        counter: 1,
                        touched: i,
                    },
                )
            })
            .collect();
        forget_oldest(&mut entries, 3);
        let mut left: Vec<u64> = entries.keys().map(|i| i.0).collect();
        left.sort_unstable();
        assert_eq!(left, vec![3, 4, 5, 6, 7]);
    }

    #[test]
    fn the_file_round_trips_and_refuses_any_change() {
        let me = Identity::generate();
        let (vault, uid) = (VaultId([4; 16]), 1001);
        let seen = Seen::default();
        for (ino, counter) in [(7, 2), (3, 9), (7, 4)] {
            seen.saw(FileId(ino), counter);
        }
        let entries = seen.snapshot();
        assert_eq!(entries, vec![(FileId(3), 9), (FileId(7), 4)], "by recency");
        let bytes = encode(&entries, vault, uid, &me);
        assert_eq!(
            bytes.len(),
            HEADER_BYTES + 2 * ENTRY_BYTES + SIGNATURE_BYTES
        );
        assert_eq!(decode(&bytes, vault, uid, &me.public()), Ok(entries));
        for at in [0, 4, 20, 24, 40, bytes.len() - 1] {
            let mut changed = bytes.clone();
            changed[at] ^= 1;
            assert!(
                decode(&changed, vault, uid, &me.public()).is_err(),
                "byte {at}"
            );
        }
        let other = Identity::generate().public();
        assert!(
            decode(&bytes, vault, uid, &other).is_err(),
            "another user's"
        );
        assert!(
            decode(&bytes, vault, 1002, &me.public()).is_err(),
            "another uid"
        );
        assert!(
            decode(&bytes[..40], vault, uid, &me.public()).is_err(),
            "cut"
        );
    }

    #[test]
    fn saved_memory_loads_only_from_a_private_file() {
        let me = Identity::generate();
        let dir = tempfile::tempdir().expect("dir");
        let file = SeenFile::beside(&dir.path().join("client.toml"), VaultId([1; 16]), 7);
        assert_eq!(file.load(&me.public()).expect("none yet").of(FileId(5)), 0);
        let seen = Seen::default();
        seen.saw(FileId(5), 12);
        file.save_if_changed(&seen, &me);
        assert_eq!(file.load(&me.public()).expect("loads").of(FileId(5)), 12);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(&file.path, mode).expect("chmod");
        let error = file.load(&me.public()).expect_err("a file others may read");
        assert!(error.to_string().contains("not a private file"), "{error}");
    }
}
