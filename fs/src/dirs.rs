//! Directories whose every name this client knows, so that a lookup of a name not there is
//! answered without a round trip (a program creating a file looks its name up first).
//!
//! A directory becomes known when this client makes it: it is empty then. It stays known
//! while this client's own changes in it are the only ones: each reply to a change that adds
//! or removes a name carries the directory's version right after it (versions go up by one
//! with every change), so a version one past the one known proves that nobody else changed
//! the directory in between. Anything else forgets the directory.
//!
//! Another client's change shows here within [`KNOWN_FOR`] of this client's last proof: a
//! name it created can look absent for that long, as a name it removed can look present for
//! as long in the kernel's entry cache (the same timeout, see `fuse::TTL`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use proto::v1::Attr;

/// How long after the last proof a directory's names stay known.
pub const KNOWN_FOR: Duration = Duration::from_secs(1);
/// Names known across all directories (a name costs about 100 bytes here).
const NAMES_MAX: usize = 200_000;
/// Directories known at once.
const DIRS_MAX: usize = 1024;
/// Longer names never exist: the server refuses them, and its lookup says so.
const NAME_BYTES_MAX: usize = 255;

#[derive(Debug)]
struct Known {
    names: HashSet<Vec<u8>>,
    /// The directory's version when `names` was last proven complete.
    version: u64,
    /// Until when `names` may answer lookups.
    until: Instant,
}

#[derive(Debug, Default)]
pub struct KnownDirs {
    dirs: HashMap<u64, Known>,
    names: usize,
}

impl KnownDirs {
    /// Whether `name` surely does not exist in `dir` (`now`: the time of the lookup).
    pub fn absent(&mut self, dir: u64, name: &[u8], now: Instant) -> bool {
        let Some(known) = self.dirs.get(&dir) else {
            return false;
        };
        if now >= known.until {
            self.forget(dir);
            return false;
        }
        name.len() <= NAME_BYTES_MAX && !known.names.contains(name)
    }

    /// A directory this client just made (asked for at `asked`): empty.
    pub fn made(&mut self, dir: &Attr, asked: Instant) {
        if !dir.may_read {
            return;
        }
        if self.dirs.len() >= DIRS_MAX {
            self.dirs.retain(|_, known| known.until > asked);
            if self.dirs.len() >= DIRS_MAX {
                return;
            }
        }
        self.forget(dir.ino);
        self.dirs.insert(
            dir.ino,
            Known {
                names: HashSet::new(),
                version: dir.version,
                until: asked + KNOWN_FOR,
            },
        );
    }

    /// This client added `name` to `dir` with a change asked for at `asked`; `reply`: the
    /// attributes that change replied with (none: it failed), which carry the directory's
    /// version after it (`parent_version`).
    pub fn added(&mut self, dir: u64, name: &[u8], reply: Option<&Attr>, asked: Instant) {
        if self.names >= NAMES_MAX {
            self.forget(dir);
        }
        let version = reply.map_or(0, |attr| attr.parent_version);
        if let Some(known) = self.proven(dir, version, asked)
            && known.names.insert(name.to_vec())
        {
            self.names += 1;
        }
    }

    /// This client removed `name` from `dir` with a change asked for at `asked`, which left
    /// the directory with attributes `after` (none: unknown, or it failed).
    pub fn removed(&mut self, dir: u64, name: &[u8], after: Option<&Attr>, asked: Instant) {
        let version = after.map_or(0, |attr| attr.version);
        if let Some(known) = self.proven(dir, version, asked)
            && known.names.remove(name)
        {
            self.names -= 1;
        }
    }

    /// This client changed `dir` without adding or removing a name (its attributes), after
    /// which it was at `version`.
    pub fn touched(&mut self, dir: u64, version: u64, asked: Instant) {
        self.proven(dir, version, asked);
    }

    /// Stops answering for `dir` (a change this client cannot account for name by name).
    pub fn forget(&mut self, dir: u64) {
        if let Some(known) = self.dirs.remove(&dir) {
            self.names -= known.names.len();
        }
    }

    /// The directory, still known after this client's change that took it to `version`:
    /// exactly one past the version known, and so no other change came in between.
    fn proven(&mut self, dir: u64, version: u64, asked: Instant) -> Option<&mut Known> {
        let current = self
            .dirs
            .get(&dir)
            .is_some_and(|known| version != 0 && known.version + 1 == version);
        if !current {
            self.forget(dir);
            return None;
        }
        let known = self.dirs.get_mut(&dir)?;
        known.version = version;
        known.until = asked + KNOWN_FOR;
        Some(known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reply to a change that added a name, leaving its directory at `version`.
    fn named(version: u64) -> Option<Attr> {
        Some(Attr {
            parent_version: version,
            ..Attr::default()
        })
    }

    fn dir(ino: u64, version: u64) -> Attr {
        Attr {
            ino,
            version,
            may_read: true,
            ..Attr::default()
        }
    }

    #[test]
    fn a_directory_made_here_is_known_empty_for_a_while() {
        let mut dirs = KnownDirs::default();
        let t = Instant::now();
        assert!(
            !dirs.absent(7, b"a", t),
            "unknown directories answer nothing"
        );
        dirs.made(&dir(7, 1), t);
        assert!(dirs.absent(7, b"a", t));
        assert!(dirs.absent(7, b"a", t + KNOWN_FOR / 2));
        assert!(!dirs.absent(7, b"a", t + KNOWN_FOR), "expired");
        assert!(
            !dirs.absent(7, b"a", t),
            "an expired directory is forgotten"
        );
        assert!(
            !dirs.absent(7, &[b'x'; 256], t),
            "too long: the server says so"
        );
    }

    #[test]
    fn own_changes_keep_it_known_while_the_versions_follow_on() {
        let mut dirs = KnownDirs::default();
        let t = Instant::now();
        dirs.made(&dir(7, 1), t);
        let later = t + KNOWN_FOR / 2;
        dirs.added(7, b"a", named(2).as_ref(), later);
        assert!(!dirs.absent(7, b"a", later));
        assert!(dirs.absent(7, b"b", later));
        assert!(dirs.absent(7, b"b", t + KNOWN_FOR), "the proof renewed it");
        dirs.touched(7, 3, later);
        dirs.removed(7, b"a", Some(&dir(7, 4)), later);
        assert!(dirs.absent(7, b"a", later));
        assert_eq!(dirs.names, 0);
    }

    #[test]
    fn a_gap_in_the_versions_forgets_the_directory() {
        let t = Instant::now();
        for change in [
            |d: &mut KnownDirs, t| d.added(7, b"a", named(3).as_ref(), t),
            |d: &mut KnownDirs, t| d.added(7, b"a", None, t),
            |d: &mut KnownDirs, t| d.removed(7, b"a", Some(&dir(7, 3)), t),
            |d: &mut KnownDirs, t| d.touched(7, 1, t),
        ] {
            let mut dirs = KnownDirs::default();
            dirs.made(&dir(7, 1), t);
            change(&mut dirs, t);
            assert!(!dirs.absent(7, b"b", t));
            assert_eq!(dirs.names, 0);
        }
    }

    #[test]
    fn names_and_directories_are_bounded() {
        let mut dirs = KnownDirs::default();
        let t = Instant::now();
        dirs.made(&dir(1, 1), t);
        for i in 0..NAMES_MAX as u64 {
            dirs.added(1, &i.to_le_bytes(), named(i + 2).as_ref(), t);
        }
        assert_eq!(dirs.names, NAMES_MAX);
        dirs.added(1, b"one more", named(NAMES_MAX as u64 + 2).as_ref(), t);
        assert_eq!(dirs.names, 0, "over the bound: forgotten");
        for ino in 0..DIRS_MAX as u64 + 10 {
            dirs.made(&dir(ino + 100, 1), t);
        }
        assert_eq!(dirs.dirs.len(), DIRS_MAX);
        assert!(!dirs.absent(DIRS_MAX as u64 + 105, b"a", t));
        let unreadable = Attr {
            may_read: false,
            ..dir(5, 1)
        };
        dirs.made(&unreadable, t + KNOWN_FOR);
        assert!(
            !dirs.absent(5, b"a", t),
            "a lookup there must ask the server"
        );
    }
}
