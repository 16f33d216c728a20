//! Files' manifests on the client (docs/format.md section 5.5): the writer seals one for every
//! commit, describing the file as the commit leaves it; a reader checks the one the server
//! sends against the size and chunk map it sends before it serves any byte, and remembers the
//! highest counter it saw of each file so that an older manifest (a whole earlier state the
//! storage kept) is refused, by this mount and the user's later ones ([`crate::seen`]).

use std::collections::BTreeMap;

use crypto::FileKeys;
use format::ids::{ChunkIndex, FileId, Generation, VaultId};
use format::manifest::Manifest;

use crate::error::FsError;
pub use crate::seen::Seen;

/// What a file is, as the server sent it: the file, its size and its chunk map.
#[derive(Clone, Copy, Debug)]
pub struct Served<'a> {
    pub vault: VaultId,
    pub ino: FileId,
    pub size: u64,
    pub map: &'a BTreeMap<ChunkIndex, Generation>,
}

/// Checks `bytes`, the manifest the server sent with `served`, under the file's `keys`, and
/// against what this client saw of the file (`seen`, when it keeps that). Returns the
/// manifest's counter (0 for a file without one that may lack it), or the reason the file
/// must not be read.
pub fn check(
    keys: &FileKeys,
    served: Served<'_>,
    bytes: &[u8],
    seen: Option<&Seen>,
) -> Result<u64, String> {
    let highest = seen.map_or(0, |s| s.of(served.ino));
    if bytes.is_empty() {
        if highest > 0 {
            return Err(format!(
                "the server sent no manifest, but this client saw manifest {highest}"
            ));
        }
        if keys.manifests() && (served.size != 0 || !served.map.is_empty()) {
            return Err(format!(
                "the server sent no manifest, but the file's keys say every commit carries one \
                 (size {}, {} chunks)",
                served.size,
                served.map.len()
            ));
        }
        return Ok(0);
    }
    let manifest =
        crypto::open_manifest(keys, served.vault, served.ino, bytes).map_err(|e| e.to_string())?;
    if manifest.counter < highest {
        return Err(format!(
            "the server sent manifest {}, older than manifest {highest} this client saw (rolled \
             back)",
            manifest.counter
        ));
    }
    if !manifest.describes(served.size, served.map.iter().map(|(&i, &g)| (i, g))) {
        return Err(format!(
            "the size ({} bytes) or chunk map ({} chunks) the server sent is not the one its \
             writer committed (manifest {}: {} bytes, {} chunks)",
            served.size,
            served.map.len(),
            manifest.counter,
            manifest.size,
            manifest.chunks
        ));
    }
    if let Some(seen) = seen {
        seen.saw(served.ino, manifest.counter);
    }
    Ok(manifest.counter)
}

/// Seals manifest `counter` of a file that a commit leaves as `served`.
pub fn seal(keys: &FileKeys, served: Served<'_>, counter: u64) -> Vec<u8> {
    let map = served.map.iter().map(|(&i, &g)| (i, g));
    let manifest = Manifest {
        counter,
        ..Manifest::describing(served.vault, served.ino, served.size, map)
    };
    crypto::seal_manifest(keys, &manifest)
}

/// A file that fails its manifest check: logged, and EIO for the caller.
pub fn refused(file: &str, ino: FileId, reason: String) -> FsError {
    tracing::error!(file, %ino, %reason, "file failed its manifest check; returning EIO");
    FsError::Manifest { ino, reason }
}
