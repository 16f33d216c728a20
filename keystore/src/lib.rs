//! Key files on disk and the passphrases that open them.
//!
//! Key files are created with mode 0600 in a 0700 directory, written and synced before they
//! are visible, and never overwritten: losing a key file loses every file shared only with it.
//! Passphrases come from a file (`--passphrase-file`), an environment variable (for scripts)
//! or a terminal prompt, in that order, and are zeroized after use. `memory` keeps unlocked
//! keys and plaintext out of core dumps and swap.

pub mod locked;
pub mod memory;

pub use locked::LockedKey;

use std::fs::{self, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use identity::{Identity, KdfParams, KeyFile, KeyFileError, KeyKind, PublicIdentity};
use zeroize::Zeroizing;

/// The environment variable scripts set to pass a passphrase.
pub const PASSPHRASE_ENV: &str = "VAULT_PASSPHRASE";

/// The longest passphrase accepted from a file, so that pointing `--passphrase-file` at the
/// wrong (large) file fails clearly instead of hashing it.
const PASSPHRASE_BYTES_MAX: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    #[error("key file {path} already exists; refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error("no key file at {path} (create one with `key init`)")]
    Missing { path: PathBuf },
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("key file {path}: {source}")]
    Format {
        path: PathBuf,
        #[source]
        source: KeyFileError,
    },
    #[error("no passphrase: pass --passphrase-file, set {PASSPHRASE_ENV}, or run in a terminal")]
    NoPassphrase,
    #[error("passphrase file {path} is larger than {PASSPHRASE_BYTES_MAX} bytes")]
    PassphraseTooLong { path: PathBuf },
    #[error("the passphrases do not match")]
    Mismatch,
    #[error("the passphrase is empty")]
    Empty,
}

/// A passphrase, zeroized on drop.
pub type Passphrase = Zeroizing<Vec<u8>>;

/// Where a passphrase comes from; the first that is present wins.
#[derive(Debug, Clone, Default)]
pub struct PassphraseSource {
    pub file: Option<PathBuf>,
    /// Read one line from standard input (a parent process hands the passphrase over).
    pub stdin: bool,
}

impl PassphraseSource {
    /// From `file` when given, else from the environment or a prompt.
    pub fn from_file(file: Option<PathBuf>) -> PassphraseSource {
        PassphraseSource {
            file,
            ..PassphraseSource::default()
        }
    }

    /// Reads the passphrase. `confirm` asks twice at a terminal (for a new key file).
    pub fn read(&self, prompt: &str, confirm: bool) -> Result<Passphrase, KeystoreError> {
        let passphrase = if let Some(path) = &self.file {
            read_passphrase_file(path)?
        } else if self.stdin {
            let mut line = Zeroizing::new(String::new());
            io::stdin()
                .read_line(&mut line)
                .map_err(|source| KeystoreError::Io {
                    action: "reading the passphrase from",
                    path: PathBuf::from("standard input"),
                    source,
                })?;
            Zeroizing::new(line.trim_end_matches(['\n', '\r']).as_bytes().to_vec())
        } else if let Some(value) = std::env::var_os(PASSPHRASE_ENV) {
            Zeroizing::new(value.into_encoded_bytes())
        } else if io::stdin().is_terminal() {
            let first = Zeroizing::new(prompt_line(prompt)?.into_bytes());
            if confirm {
                let again = Zeroizing::new(prompt_line("Repeat the passphrase: ")?.into_bytes());
                if *again != *first {
                    return Err(KeystoreError::Mismatch);
                }
            }
            first
        } else {
            return Err(KeystoreError::NoPassphrase);
        };
        if passphrase.is_empty() {
            return Err(KeystoreError::Empty);
        }
        Ok(passphrase)
    }
}

fn prompt_line(prompt: &str) -> Result<String, KeystoreError> {
    rpassword::prompt_password(prompt).map_err(|source| KeystoreError::Io {
        action: "reading the passphrase from",
        path: PathBuf::from("the terminal"),
        source,
    })
}

fn read_passphrase_file(path: &Path) -> Result<Passphrase, KeystoreError> {
    let io_error = |source| KeystoreError::Io {
        action: "reading",
        path: path.to_path_buf(),
        source,
    };
    let len = fs::metadata(path).map_err(io_error)?.len();
    if len > PASSPHRASE_BYTES_MAX {
        return Err(KeystoreError::PassphraseTooLong {
            path: path.to_path_buf(),
        });
    }
    let mut bytes = Zeroizing::new(fs::read(path).map_err(io_error)?);
    // One trailing newline is how editors and `echo` end a file, not part of the passphrase.
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    Ok(bytes)
}

/// Writes a new key file: parent directories 0700, the file 0600, synced, never replacing one.
pub fn write_key_file(path: &Path, key_file: &KeyFile) -> Result<(), KeystoreError> {
    let io_error = |action, source| KeystoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| io_error("creating the directory of", e))?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => KeystoreError::Exists {
                path: path.to_path_buf(),
            },
            _ => io_error("creating", e),
        })?;
    file.write_all(key_file.as_bytes())
        .map_err(|e| io_error("writing", e))?;
    file.sync_all().map_err(|e| io_error("syncing", e))?;
    Ok(())
}

/// Creates a new identity of `kind` and its key file at `path`, asking for the passphrase
/// (twice at a terminal). Refuses to replace an existing file before asking anything.
pub fn create(
    path: &Path,
    kind: KeyKind,
    passphrase: &PassphraseSource,
) -> Result<PublicIdentity, KeystoreError> {
    if path.exists() {
        return Err(KeystoreError::Exists {
            path: path.to_path_buf(),
        });
    }
    let passphrase = passphrase.read("Passphrase for the new key file: ", true)?;
    let identity = Identity::generate();
    let sealed =
        KeyFile::seal(&identity, kind, &passphrase, KdfParams::DEFAULT).map_err(|source| {
            KeystoreError::Format {
                path: path.to_path_buf(),
                source,
            }
        })?;
    write_key_file(path, &sealed)?;
    Ok(identity.public())
}

/// Reads a key file and opens it with a passphrase from `passphrase`.
pub fn unlock(
    path: &Path,
    kind: KeyKind,
    passphrase: &PassphraseSource,
) -> Result<Identity, KeystoreError> {
    let key_file = read_key_file(path)?;
    let passphrase = passphrase.read(&format!("Passphrase for {}: ", path.display()), false)?;
    key_file
        .open(&passphrase, kind)
        .map_err(|source| KeystoreError::Format {
            path: path.to_path_buf(),
            source,
        })
}

/// Seals the key file at `path` under a new passphrase, keeping the keys: the old passphrase
/// from `old`, the new one from `new` (twice at a terminal), the same Argon2id parameters.
/// The new file is written beside the old one (0600, synced) and renamed over it, and the
/// directory synced: a crash leaves the old file or the new one, never neither.
pub fn change_passphrase(
    path: &Path,
    kind: KeyKind,
    old: &PassphraseSource,
    new: &PassphraseSource,
) -> Result<PublicIdentity, KeystoreError> {
    let key_file = read_key_file(path)?;
    let format = |source| KeystoreError::Format {
        path: path.to_path_buf(),
        source,
    };
    let current = old.read(
        &format!("Current passphrase for {}: ", path.display()),
        false,
    )?;
    let identity = key_file.open(&current, kind).map_err(format)?;
    let passphrase = new.read("New passphrase: ", true)?;
    let sealed = KeyFile::seal(&identity, kind, &passphrase, key_file.params()).map_err(format)?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    let _ = fs::remove_file(&temporary);
    write_key_file(&temporary, &sealed)?;
    let io_error = |action, source| KeystoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    if let Err(error) = fs::rename(&temporary, path) {
        let _ = fs::remove_file(&temporary);
        return Err(io_error("replacing", error));
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    fs::File::open(parent.unwrap_or(Path::new(".")))
        .and_then(|dir| dir.sync_all())
        .map_err(|e| io_error("syncing the directory of", e))?;
    Ok(identity.public())
}

/// What `key show` prints: the file, its kind, fingerprint and public keys.
pub fn describe(path: &Path, key_file: &KeyFile) -> String {
    let public = key_file.public();
    format!(
        "key file     {}\nkind         {:?}\nfingerprint  {}\nsigning key  {}\nwrapping key {}",
        path.display(),
        key_file.kind(),
        public.fingerprint(),
        hex::encode(public.signing),
        hex::encode(public.wrapping),
    )
}

/// Reads and parses a key file (no passphrase needed for that).
pub fn read_key_file(path: &Path) -> Result<KeyFile, KeystoreError> {
    let bytes = fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => KeystoreError::Missing {
            path: path.to_path_buf(),
        },
        _ => KeystoreError::Io {
            action: "reading",
            path: path.to_path_buf(),
            source,
        },
    })?;
    KeyFile::parse(&bytes).map_err(|source| KeystoreError::Format {
        path: path.to_path_buf(),
        source,
    })
}

/// `$XDG_CONFIG_HOME/vault/NAME`, else `$HOME/.config/vault/NAME`.
/// `given` when there is one, else [`default_path`] of `name`.
pub fn path_or_default(given: Option<&Path>, name: &str) -> PathBuf {
    given.map_or_else(|| default_path(name), Path::to_path_buf)
}

pub fn default_path(name: &str) -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("vault").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use identity::{Identity, KdfParams, KeyKind};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/user.vkey");
        let identity = Identity::generate();
        let sealed =
            KeyFile::seal(&identity, KeyKind::User, b"pw", KdfParams::MINIMUM).expect("seal");
        write_key_file(&path, &sealed).expect("write");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            write_key_file(&path, &sealed),
            Err(KeystoreError::Exists { .. })
        ));
        assert_eq!(
            read_key_file(&path).expect("read").public(),
            identity.public()
        );
        assert!(matches!(
            read_key_file(&dir.path().join("none")),
            Err(KeystoreError::Missing { .. })
        ));
        fs::write(dir.path().join("junk"), b"junk").expect("write junk");
        assert!(matches!(
            read_key_file(&dir.path().join("junk")),
            Err(KeystoreError::Format { .. })
        ));
    }

    #[test]
    fn passphrase_file_loses_one_trailing_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pass");
        fs::write(&path, b"secret words\n").expect("write");
        let source = PassphraseSource {
            file: Some(path.clone()),
            ..Default::default()
        };
        assert_eq!(&source.read("", false).expect("read")[..], b"secret words");
        fs::write(&path, b"\n").expect("write");
        assert!(matches!(source.read("", false), Err(KeystoreError::Empty)));
        fs::write(&path, vec![b'x'; 5000]).expect("write");
        assert!(matches!(
            source.read("", false),
            Err(KeystoreError::PassphraseTooLong { .. })
        ));
    }
}
