//! Directories whose every name this client knows, so that a lookup of a name not there is
//! answered without a round trip (a program creating a file looks its name up first), and,
//! for a while after a listing, a lookup of a name there too (a program opening or stating
//! many files of a directory looks each up first).
//!
//! A directory becomes known when this client makes it: it is empty then. It also becomes
//! known when this client lists it because lookups there keep going to the server
//! ([`KnownDirs::should_list`]): the listing holds every name with its attributes, and counts
//! if the directory had one version throughout and this client changed nothing meanwhile. It
//! stays known while this client's own changes in it are the only ones: each reply to a
//! change that adds or removes a name carries the directory's version right after it
//! (versions go up by one with every change), so a version one past the one known proves that
//! nobody else changed the directory in between. Anything else forgets the directory.
//!
//! Another client's change shows here within the mount's coherence window (by default
//! [`KNOWN_FOR`]) of this client's last proof: a name it created can look absent for that
//! long, as a name it removed can look present for as long in the kernel's entry cache (the
//! same timeout, see `fuse::VaultFs::new`). A listing's attributes answer lookups for half the
//! window (by default [`LISTED_FOR`]), and only while this client has changed
//! nothing on the server since (a change of its own could make them stale) but removed names
//! whose inode went with them ([`KnownDirs::listing_survives`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use format::ids::{FileId, Version};
use proto::v1::Attr;

/// How long after the last proof a directory's names stay known, by default (the mount's
/// coherence window, see [`KnownDirs::new`]).
pub const KNOWN_FOR: Duration = Duration::from_secs(1);
/// How long a listing's attributes answer lookups, by default (half the window); the kernel
/// keeps what a lookup answered for its attribute timeout on top.
pub const LISTED_FOR: Duration = Duration::from_millis(500);
/// Names known across all directories (a name costs about 100 bytes here).
const NAMES_MAX: usize = 200_000;
/// A directory with more entries is never listed for lookups.
pub const LISTED_ENTRIES_MAX: usize = 20_000;
/// Listed attributes kept across all directories (an entry costs about 250 bytes here).
const LISTED_MAX: usize = 60_000;
/// Directories known at once.
const DIRS_MAX: usize = 1024;
/// Versions of this client's own changes that arrived ahead of an earlier one (concurrent
/// calls), kept per directory; more, and the directory is forgotten.
const AHEAD_MAX: usize = 64;
/// Longer names never exist: the server refuses them, and its lookup says so.
const NAME_BYTES_MAX: usize = 255;
/// Lookups of one directory that go to the server, within the coherence window, after which
/// the client lists the directory.
const LIST_AFTER_ASKED: u32 = 16;
/// After a listing is asked for, the next waits at least this long; longer when the last
/// one answered few lookups (changes of this client's own, say, kept voiding it).
const LIST_AGAIN_AFTER: Duration = Duration::from_millis(250);
const LIST_AGAIN_AFTER_USELESS: Duration = Duration::from_secs(5);
/// Directories whose lookups are counted at once.
const ASKED_DIRS_MAX: usize = 64;

/// What the known directories say of a name.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// Nothing sure: ask the server.
    Ask,
    Absent,
    /// There, with the attributes a listing saw.
    Present(Attr),
}

/// A listing's attributes: every entry's as the server listed them.
#[derive(Debug)]
struct Listed {
    attrs: HashMap<Vec<u8>, Attr>,
    /// When the listing was asked for.
    asked: Instant,
    /// `Remote::changes` when it was asked for.
    changes: u64,
    /// Lookups it answered.
    answered: u32,
}

/// Lookups of one directory that went to the server.
#[derive(Debug)]
struct Asked {
    count: u32,
    since: Instant,
    /// No listing before this.
    not_before: Instant,
}

#[derive(Debug)]
struct Known {
    names: HashSet<Vec<u8>>,
    /// The directory's version when `names` was last proven complete.
    version: Version,
    /// Until when `names` may answer lookups.
    until: Instant,
    /// The listing that made it known, if one did.
    listed: Option<Listed>,
    /// Versions past `version + 1` that changes of this client's own left the directory at,
    /// whose replies came before that of an earlier change: `names` has their names, but
    /// answers nothing until the versions in between are accounted for.
    ahead: BTreeSet<Version>,
    /// `names` answers nothing until proven by a change asked for at this time or later
    /// (see [`KnownDirs::distrust`]).
    distrusted_before: Option<Instant>,
}

#[derive(Debug)]
pub struct KnownDirs {
    dirs: HashMap<FileId, Known>,
    names: usize,
    /// Attributes held by listings, across directories.
    listed: usize,
    asked: HashMap<FileId, Asked>,
    known_for: Duration,
    listed_for: Duration,
    asked_within: Duration,
}

impl Default for KnownDirs {
    fn default() -> Self {
        KnownDirs::new(KNOWN_FOR)
    }
}

impl KnownDirs {
    /// Known directories whose names stay known for `window` after the last proof, and
    /// listings that answer for half of it: another client's change shows within `window`.
    pub fn new(window: Duration) -> KnownDirs {
        KnownDirs {
            dirs: HashMap::new(),
            names: 0,
            listed: 0,
            asked: HashMap::new(),
            known_for: window,
            listed_for: window / 2,
            asked_within: window,
        }
    }

    /// Whether `name` surely does not exist in `dir` (`now`: the time of the lookup).
    pub fn absent(&mut self, dir: FileId, name: &[u8], now: Instant) -> bool {
        let Some(known) = self.dirs.get(&dir) else {
            return false;
        };
        if now >= known.until {
            self.forget(dir);
            return false;
        }
        let proven_at = known.until - self.known_for;
        known.ahead.is_empty()
            && known.distrusted_before.is_none_or(|t| proven_at >= t)
            && name.len() <= NAME_BYTES_MAX
            && !known.names.contains(name)
    }

    /// What is known of `name` in `dir` at `now`, while this client's change count is
    /// `changes` (`Remote::changes`).
    pub fn answer(&mut self, dir: FileId, name: &[u8], now: Instant, changes: u64) -> Answer {
        if self.absent(dir, name, now) {
            return Answer::Absent;
        }
        let Some(listed) = self
            .dirs
            .get_mut(&dir)
            .filter(|k| k.ahead.is_empty())
            .and_then(|k| k.listed.as_mut())
        else {
            return Answer::Ask;
        };
        if listed.changes != changes || now >= listed.asked + self.listed_for {
            return Answer::Ask;
        }
        match listed.attrs.get(name) {
            Some(attr) => {
                listed.answered += 1;
                Answer::Present(*attr)
            }
            None => Answer::Ask,
        }
    }

    /// A lookup in `dir` went to the server at `now`: whether to list the directory, so
    /// that the next lookups there need not (see [`KnownDirs::listed`]).
    pub fn should_list(&mut self, dir: FileId, now: Instant) -> bool {
        if self.asked.len() >= ASKED_DIRS_MAX && !self.asked.contains_key(&dir) {
            let within = self.asked_within;
            self.asked
                .retain(|_, a| now < a.since + within || now < a.not_before);
            if self.asked.len() >= ASKED_DIRS_MAX {
                return false;
            }
        }
        // The last listing answered few lookups: changes of this client's own, say, kept
        // voiding it.
        let useless = self
            .dirs
            .get(&dir)
            .and_then(|k| k.listed.as_ref())
            .is_some_and(|l| {
                l.answered < LIST_AFTER_ASKED && now < l.asked + LIST_AGAIN_AFTER_USELESS
            });
        let asked = self.asked.entry(dir).or_insert(Asked {
            count: 0,
            since: now,
            not_before: now,
        });
        if now >= asked.since + self.asked_within {
            asked.count = 0;
            asked.since = now;
        }
        asked.count += 1;
        if asked.count < LIST_AFTER_ASKED || now < asked.not_before {
            return false;
        }
        asked.count = 0;
        asked.not_before = now + LIST_AGAIN_AFTER;
        !useless
    }

    /// `dir` (its attributes before and after the listing: one version throughout) holds
    /// exactly `entries`, as listed from `asked` on, when this client's change count was
    /// `changes`; `changes_now`: the count now (read with this held, as every change's
    /// bookkeeping takes it). A change of this client's meanwhile voids the listing.
    pub fn listed(
        &mut self,
        dir: &Attr,
        entries: Vec<(Vec<u8>, Attr)>,
        asked: Instant,
        changes: u64,
        changes_now: u64,
    ) {
        if changes != changes_now || !dir.may_read || entries.len() > LISTED_ENTRIES_MAX {
            return;
        }
        self.forget(FileId(dir.ino));
        if self.names + entries.len() > NAMES_MAX || self.listed + entries.len() > LISTED_MAX {
            let others: Vec<FileId> = self
                .dirs
                .iter()
                .filter(|(_, k)| k.listed.is_some())
                .map(|(ino, _)| *ino)
                .collect();
            for other in others {
                self.forget(other);
            }
            if self.names + entries.len() > NAMES_MAX {
                return;
            }
        }
        if self.dirs.len() >= DIRS_MAX {
            self.dirs.retain(|_, known| known.until > asked);
            if self.dirs.len() >= DIRS_MAX {
                return;
            }
        }
        let names: HashSet<Vec<u8>> = entries.iter().map(|(name, _)| name.clone()).collect();
        self.names += names.len();
        self.listed += entries.len();
        self.dirs.insert(
            FileId(dir.ino),
            Known {
                names,
                version: Version(dir.version),
                until: asked + self.known_for,
                listed: Some(Listed {
                    attrs: entries.into_iter().collect(),
                    asked,
                    changes,
                    answered: 0,
                }),
                ahead: BTreeSet::new(),
                distrusted_before: None,
            },
        );
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
        self.forget(FileId(dir.ino));
        self.dirs.insert(
            FileId(dir.ino),
            Known {
                names: HashSet::new(),
                version: Version(dir.version),
                until: asked + self.known_for,
                listed: None,
                ahead: BTreeSet::new(),
                distrusted_before: None,
            },
        );
    }

    /// This client added `name` to `dir` with a change asked for at `asked`; `reply`: the
    /// attributes that change replied with (none: it failed), which carry the directory's
    /// version after it (`parent_version`).
    pub fn added(&mut self, dir: FileId, name: &[u8], reply: Option<&Attr>, asked: Instant) {
        if self.names >= NAMES_MAX {
            self.forget(dir);
        }
        let version = Version(reply.map_or(0, |attr| attr.parent_version));
        if let Some(known) = self.proven(dir, version, asked)
            && known.names.insert(name.to_vec())
        {
            self.names += 1;
        }
    }

    /// This client removed `name` from `dir` with a change asked for at `asked`, which left
    /// the directory with attributes `after` (none: unknown, or it failed).
    pub fn removed(&mut self, dir: FileId, name: &[u8], after: Option<&Attr>, asked: Instant) {
        let version = Version(after.map_or(0, |attr| attr.version));
        let Some(known) = self.proven(dir, version, asked) else {
            return;
        };
        let removed = known.names.remove(name);
        let unlisted = known
            .listed
            .as_mut()
            .is_some_and(|l| l.attrs.remove(name).is_some());
        self.names -= usize::from(removed);
        self.listed -= usize::from(unlisted);
    }

    /// This client's change count went from `before` to `after` with one change that left
    /// every other entry of `dir` as it was (a removal, already applied by `removed`): the
    /// listing's attributes still answer lookups, if nothing else changed meanwhile.
    pub fn listing_survives(&mut self, dir: FileId, before: u64, after: u64) {
        if let Some(listed) = self.dirs.get_mut(&dir).and_then(|k| k.listed.as_mut())
            && listed.changes == before
            && after == before + 1
        {
            listed.changes = after;
        }
    }

    /// This client changed `dir` without adding or removing a name (its attributes), after
    /// which it was at `version`.
    pub fn touched(&mut self, dir: FileId, version: Version, asked: Instant) {
        self.proven(dir, version, asked);
    }

    /// This client's own changes in `dir` may go unanswered for a while from `since` on
    /// (closes under a lease return before the server has the file): until one asked for
    /// from then on proves the names, `dir` answers no lookup. Otherwise another client's
    /// change from before the lease could hide behind the changes not answered yet.
    pub fn distrust(&mut self, dir: FileId, since: Instant) {
        if let Some(known) = self.dirs.get_mut(&dir) {
            known.distrusted_before = Some(since);
        }
    }

    /// Stops answering for `dir` (a change this client cannot account for name by name).
    pub fn forget(&mut self, dir: FileId) {
        if let Some(known) = self.dirs.remove(&dir) {
            self.names -= known.names.len();
            self.listed -= known.listed.map_or(0, |l| l.attrs.len());
        }
    }

    /// The directory, still known after this client's change that took it to `version`:
    /// exactly one past the version known, and so no other change came in between. A version
    /// further on waits in `ahead` for the changes of this client's own still in flight; if
    /// another client's change took one of the versions between, the gap never closes and
    /// the directory answers nothing until forgotten.
    fn proven(&mut self, dir: FileId, version: Version, asked: Instant) -> Option<&mut Known> {
        let usable = self.dirs.get(&dir).is_some_and(|known| {
            version > known.version
                && !known.ahead.contains(&version)
                && (version == known.version.next() || known.ahead.len() < AHEAD_MAX)
        });
        if !usable {
            self.forget(dir);
            return None;
        }
        let known = self.dirs.get_mut(&dir)?;
        if version != known.version.next() {
            known.ahead.insert(version);
            return Some(known);
        }
        known.version = version;
        while known.ahead.remove(&known.version.next()) {
            known.version = known.version.next();
        }
        known.until = asked + self.known_for;
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
            !dirs.absent(FileId(7), b"a", t),
            "unknown directories answer nothing"
        );
        dirs.made(&dir(7, 1), t);
        assert!(dirs.absent(FileId(7), b"a", t));
        assert!(dirs.absent(FileId(7), b"a", t + KNOWN_FOR / 2));
        assert!(!dirs.absent(FileId(7), b"a", t + KNOWN_FOR), "expired");
        assert!(
            !dirs.absent(FileId(7), b"a", t),
            "an expired directory is forgotten"
        );
        assert!(
            !dirs.absent(FileId(7), &[b'x'; 256], t),
            "too long: the server says so"
        );
    }

    #[test]
    fn own_changes_keep_it_known_while_the_versions_follow_on() {
        let mut dirs = KnownDirs::default();
        let t = Instant::now();
        dirs.made(&dir(7, 1), t);
        let later = t + KNOWN_FOR / 2;
        dirs.added(FileId(7), b"a", named(2).as_ref(), later);
        assert!(!dirs.absent(FileId(7), b"a", later));
        assert!(dirs.absent(FileId(7), b"b", later));
        assert!(
            dirs.absent(FileId(7), b"b", t + KNOWN_FOR),
            "the proof renewed it"
        );
        dirs.touched(FileId(7), Version(3), later);
        dirs.removed(FileId(7), b"a", Some(&dir(7, 4)), later);
        assert!(dirs.absent(FileId(7), b"a", later));
        assert_eq!(dirs.names, 0);
    }

    #[test]
    fn a_gap_in_the_versions_answers_nothing() {
        let t = Instant::now();
        for change in [
            |d: &mut KnownDirs, t| d.added(FileId(7), b"a", named(3).as_ref(), t),
            |d: &mut KnownDirs, t| d.added(FileId(7), b"a", None, t),
            |d: &mut KnownDirs, t| d.removed(FileId(7), b"a", Some(&dir(7, 3)), t),
            |d: &mut KnownDirs, t| d.touched(FileId(7), Version(1), t),
        ] {
            let mut dirs = KnownDirs::default();
            dirs.made(&dir(7, 1), t);
            change(&mut dirs, t);
            assert!(!dirs.absent(FileId(7), b"b", t));
            assert_eq!(dirs.answer(FileId(7), b"b", t, 0), Answer::Ask);
        }
    }

    fn file(ino: u64) -> Attr {
        Attr {
            ino,
            nlink: 1,
            ..Attr::default()
        }
    }

    fn listing(n: u64) -> Vec<(Vec<u8>, Attr)> {
        (0..n)
            .map(|i| (format!("f{i}").into_bytes(), file(100 + i)))
            .collect()
    }

    #[test]
    fn lookups_that_keep_asking_list_the_directory_which_then_answers() {
        let mut dirs = KnownDirs::default();
        let t = Instant::now();
        let asked: Vec<bool> = (0..LIST_AFTER_ASKED)
            .map(|_| dirs.should_list(FileId(7), t))
            .collect();
        assert_eq!(asked.iter().filter(|l| **l).count(), 1);
        assert!(asked[LIST_AFTER_ASKED as usize - 1], "the last one lists");
        dirs.listed(&dir(7, 5), listing(3), t, 40, 40);
        assert_eq!(
            dirs.answer(FileId(7), b"f1", t, 40),
            Answer::Present(file(101))
        );
        assert_eq!(dirs.answer(FileId(7), b"g", t, 40), Answer::Absent);
        assert_eq!(
            dirs.answer(FileId(7), b"f1", t, 41),
            Answer::Ask,
            "a change of this client's own since: the attributes may be stale"
        );
        assert_eq!(
            dirs.answer(FileId(7), b"g", t, 41),
            Answer::Absent,
            "names still known"
        );
        assert_eq!(
            dirs.answer(FileId(7), b"f1", t + LISTED_FOR, 40),
            Answer::Ask,
            "attributes expired"
        );
        assert_eq!(
            dirs.answer(FileId(7), b"f1", t + KNOWN_FOR, 40),
            Answer::Ask
        );
        assert_eq!(dirs.names + dirs.listed, 0, "expired: forgotten");
    }

    #[test]
    fn a_listing_is_taken_only_whole_and_unchanged() {
        let mut dirs = KnownDirs::default();
        let t = Instant::now();
        dirs.listed(&dir(7, 5), listing(3), t, 40, 41);
        assert_eq!(
            dirs.answer(FileId(7), b"g", t, 41),
            Answer::Ask,
            "changed meanwhile"
        );
        let unreadable = Attr {
            may_read: false,
            ..dir(7, 5)
        };
        dirs.listed(&unreadable, listing(3), t, 40, 40);
        assert_eq!(dirs.answer(FileId(7), b"g", t, 40), Answer::Ask);
        dirs.listed(
            &dir(7, 5),
            listing(LISTED_ENTRIES_MAX as u64 + 1),
            t,
            40,
            40,
        );
        assert_eq!(
            dirs.answer(FileId(7), b"g", t, 40),
            Answer::Ask,
            "too large"
        );
        assert_eq!(dirs.names + dirs.listed, 0);
    }

    #[test]
    fn removing_a_name_keeps_the_listing_answering_for_the_others() {
        let mut dirs = KnownDirs::default();
        let t = Instant::now();
        dirs.listed(&dir(7, 5), listing(3), t, 40, 40);
        dirs.removed(FileId(7), b"f0", Some(&dir(7, 6)), t);
        dirs.listing_survives(FileId(7), 40, 41);
        assert_eq!(dirs.answer(FileId(7), b"f0", t, 41), Answer::Absent);
        assert_eq!(
            dirs.answer(FileId(7), b"f1", t, 41),
            Answer::Present(file(101))
        );
        assert_eq!((dirs.names, dirs.listed), (2, 2));
        // Another change came in between: the attributes no longer answer.
        dirs.removed(FileId(7), b"f1", Some(&dir(7, 7)), t);
        dirs.listing_survives(FileId(7), 41, 43);
        assert_eq!(dirs.answer(FileId(7), b"f2", t, 43), Answer::Ask);
        // A gap in the directory's versions forgets it all.
        dirs.removed(FileId(7), b"f2", Some(&dir(7, 9)), t);
        assert_eq!(dirs.answer(FileId(7), b"f2", t, 43), Answer::Ask);
        assert_eq!((dirs.names, dirs.listed), (0, 0));
    }

    #[test]
    fn a_listing_that_answered_little_is_not_taken_again_soon() {
        let mut dirs = KnownDirs::default();
        let t = Instant::now();
        let list = |dirs: &mut KnownDirs, at| {
            (0..LIST_AFTER_ASKED).any(|_| dirs.should_list(FileId(7), at))
        };
        assert!(list(&mut dirs, t));
        dirs.listed(&dir(7, 5), listing(3), t, 40, 40);
        // Voided at once by this client's changes: it answered nothing.
        let soon = t + KNOWN_FOR;
        assert!(!list(&mut dirs, soon));
        let later = t + LIST_AGAIN_AFTER_USELESS;
        assert!(list(&mut dirs, later));
        // One that answered enough may be taken again once the short pause is over.
        dirs.listed(&dir(7, 5), listing(3), later, 40, 40);
        for _ in 0..LIST_AFTER_ASKED {
            assert!(matches!(
                dirs.answer(FileId(7), b"f1", later, 40),
                Answer::Present(_)
            ));
        }
        assert!(!list(&mut dirs, later));
        assert!(list(&mut dirs, later + LIST_AGAIN_AFTER));
    }

    #[test]
    fn names_and_directories_are_bounded() {
        let mut dirs = KnownDirs::default();
        let t = Instant::now();
        dirs.made(&dir(1, 1), t);
        for i in 0..NAMES_MAX as u64 {
            dirs.added(FileId(1), &i.to_le_bytes(), named(i + 2).as_ref(), t);
        }
        assert_eq!(dirs.names, NAMES_MAX);
        dirs.added(
            FileId(1),
            b"one more",
            named(NAMES_MAX as u64 + 2).as_ref(),
            t,
        );
        assert_eq!(dirs.names, 0, "over the bound: forgotten");
        for ino in 0..DIRS_MAX as u64 + 10 {
            dirs.made(&dir(ino + 100, 1), t);
        }
        assert_eq!(dirs.dirs.len(), DIRS_MAX);
        assert!(!dirs.absent(FileId(DIRS_MAX as u64 + 105), b"a", t));
        let unreadable = Attr {
            may_read: false,
            ..dir(5, 1)
        };
        dirs.made(&unreadable, t + KNOWN_FOR);
        assert!(
            !dirs.absent(FileId(5), b"a", t),
            "a lookup there must ask the server"
        );
    }

    #[test]
    fn changes_replied_out_of_order_keep_the_directory_known_once_all_are_in() {
        let mut dirs = KnownDirs::default();
        let t = Instant::now();
        dirs.made(&dir(5, 1), t);
        dirs.added(FileId(5), b"b", named(3).as_ref(), t);
        assert!(
            !dirs.absent(FileId(5), b"x", t),
            "version 2 is not accounted for yet"
        );
        dirs.added(FileId(5), b"a", named(2).as_ref(), t);
        assert!(dirs.absent(FileId(5), b"x", t));
        assert!(!dirs.absent(FileId(5), b"a", t) && !dirs.absent(FileId(5), b"b", t));
        dirs.added(FileId(5), b"c", named(4).as_ref(), t);
        assert!(dirs.absent(FileId(5), b"x", t), "in order again");
    }

    #[test]
    fn a_distrusted_directory_answers_again_after_a_later_proof() {
        let mut dirs = KnownDirs::default();
        let t = Instant::now();
        dirs.made(&dir(5, 1), t);
        assert!(dirs.absent(FileId(5), b"x", t));
        let later = t + Duration::from_millis(10);
        dirs.distrust(FileId(5), later);
        assert!(!dirs.absent(FileId(5), b"x", later));
        dirs.added(FileId(5), b"a", named(2).as_ref(), t);
        assert!(
            !dirs.absent(FileId(5), b"x", later),
            "asked for before the distrust"
        );
        dirs.added(FileId(5), b"b", named(3).as_ref(), later);
        assert!(dirs.absent(FileId(5), b"x", later));
    }

    #[test]
    fn a_version_another_client_took_keeps_the_directory_unsure() {
        let mut dirs = KnownDirs::default();
        let t = Instant::now();
        dirs.made(&dir(5, 1), t);
        // Another client's change took version 2.
        for version in 3..3 + AHEAD_MAX as u64 {
            dirs.added(
                FileId(5),
                format!("f{version}").as_bytes(),
                named(version).as_ref(),
                t,
            );
            assert!(!dirs.absent(FileId(5), b"x", t));
        }
        dirs.added(FileId(5), b"last", named(3 + AHEAD_MAX as u64).as_ref(), t);
        assert!(dirs.dirs.is_empty(), "forgotten once too far ahead");
    }
}
