//! Kernel coherence: which version of each file the kernel's caches hold, so that an open
//! drops cached pages and attributes that another writer made stale (close-to-open), and the
//! attributes of this client's own latest changes, which answer `getattr` for a moment.
//!
//! Each table has a lock of its own, a leaf of the vault's lock order: nothing else is taken
//! while one is held, and the kernel is told to drop attributes with none held.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use format::ids::{FileId, Version};
use proto::v1::Attr;

use super::Vault;
use crate::file::FileState;

/// Inodes whose kernel-side attribute version is tracked (beyond it, the table starts over:
/// an untracked inode is caught up at its next open anyway).
const KERNEL_VERSIONS_MAX: usize = 100_000;
/// How long attributes from this client's own commit answer `getattr` without a round trip.
const FRESH_ATTR_LIFETIME: Duration = Duration::from_millis(250);
/// Fresh attributes kept before the expired ones are swept out.
const FRESH_ATTRS_SWEEP: usize = 4096;

/// Tells the kernel to drop what it keeps of a file. In a mount, the FUSE session's notifier,
/// implemented in `fuse.rs`: only the adapter and the mount know the FUSE library.
pub trait Notifier: Send + Sync + std::fmt::Debug {
    /// Drops the attributes the kernel keeps of `ino` (the size it would end reads at), not
    /// its cached pages.
    fn drop_attributes(&self, ino: FileId) -> std::io::Result<()>;
}

/// What the kernel's caches hold of each file, as far as this client knows.
#[derive(Debug, Default)]
pub(super) struct Coherence {
    pages: Mutex<Pages>,
    kernel: Mutex<KernelAttrs>,
    fresh: Mutex<FreshAttrs>,
    notifier: OnceLock<Box<dyn Notifier>>,
}

/// What the kernel's cached pages of each file may hold.
#[derive(Debug, Default)]
struct Pages {
    /// The inode version each file had when this client last read or wrote it.
    versions: HashMap<FileId, Version>,
    /// Files whose pages in the kernel's cache may lack another writer's merged changes.
    stale_pages: HashSet<FileId>,
}

impl Pages {
    /// This client committed `ino` at `version`; `merged_foreign`: another writer's changes
    /// were merged into its commits since the last one recorded. Then the kernel's pages lack
    /// them until the next open drops them, whatever this client commits in between.
    fn committed(&mut self, ino: FileId, version: Version, merged_foreign: bool) {
        if merged_foreign {
            self.stale_pages.insert(ino);
        }
        self.versions.insert(ino, version);
    }

    /// An open found `ino` at `version`: whether the kernel may keep its cached pages. Only
    /// when the version is the one this client last read or committed, with no other
    /// writer's changes merged since.
    fn opened(&mut self, ino: FileId, version: Version) -> bool {
        let previous = self.versions.insert(ino, version);
        let stale = self.stale_pages.remove(&ino);
        previous == Some(version) && !stale
    }
}

/// The version of the attributes the kernel was last given for each inode (it keeps them for
/// the mount's coherence window, `Limits::coherence`).
#[derive(Debug, Default)]
struct KernelAttrs {
    versions: HashMap<FileId, Version>,
}

impl KernelAttrs {
    fn given(&mut self, ino: FileId, version: Version) {
        if self.versions.len() >= KERNEL_VERSIONS_MAX {
            self.versions.clear();
        }
        self.versions.insert(ino, version);
    }

    /// Whether the kernel may keep attributes of `ino` of another version than `version`.
    fn other_than(&self, ino: FileId, version: Version) -> bool {
        self.versions.get(&ino) != Some(&version)
    }
}

/// Attributes this client learnt moments ago, trusted for [`FRESH_ATTR_LIFETIME`].
#[derive(Debug, Default)]
struct FreshAttrs {
    attrs: HashMap<FileId, (Instant, Attr)>,
}

impl FreshAttrs {
    fn get(&mut self, ino: FileId, now: Instant) -> Option<Attr> {
        match self.attrs.get(&ino) {
            Some((at, attr)) if now.duration_since(*at) < FRESH_ATTR_LIFETIME => Some(*attr),
            Some(_) => {
                self.attrs.remove(&ino);
                None
            }
            None => None,
        }
    }

    fn learn(&mut self, attr: &Attr, now: Instant) {
        if self.attrs.len() > FRESH_ATTRS_SWEEP {
            self.attrs
                .retain(|_, (at, _)| now.duration_since(*at) < FRESH_ATTR_LIFETIME);
        }
        self.attrs.insert(FileId(attr.ino), (now, *attr));
    }
}

impl Coherence {
    pub(super) fn set_notifier(&self, notifier: Box<dyn Notifier>) {
        let _ = self.notifier.set(notifier);
    }

    /// The kernel is given `attr` (a reply carries it).
    pub(super) fn kernel_has(&self, attr: &Attr) {
        let mut kernel = self.kernel.lock().expect("kernel versions poisoned");
        kernel.given(FileId(attr.ino), Version(attr.version));
    }

    /// An open found the file at `attr` on the server: if the kernel keeps attributes of
    /// another version (from a lookup or a listing before another client's close), it must
    /// drop them, or it would end reads at the size it knows (close-to-open consistency).
    pub(super) fn kernel_catches_up(&self, attr: &Attr) {
        let kernel = self.kernel.lock().expect("kernel versions poisoned");
        let ino = FileId(attr.ino);
        let other = kernel.other_than(ino, Version(attr.version));
        drop(kernel);
        if other && let Some(notifier) = self.notifier.get() {
            // The pages go by the open's own flags.
            if let Err(error) = notifier.drop_attributes(ino) {
                tracing::debug!(%error, %ino, "could not drop the kernel's attributes");
            }
        }
    }

    /// This client committed (or created) the file at `attr` (see [`Pages::committed`]).
    pub(super) fn committed(&self, attr: &Attr, merged_foreign: bool) {
        let mut pages = self.pages.lock().expect("pages poisoned");
        pages.committed(FileId(attr.ino), Version(attr.version), merged_foreign);
        drop(pages);
        self.learn(attr);
    }

    /// An open found `ino` at `version`: whether the kernel may keep its cached pages.
    pub(super) fn opened(&self, ino: FileId, version: Version) -> bool {
        self.pages
            .lock()
            .expect("pages poisoned")
            .opened(ino, version)
    }

    /// Attributes this client learnt moments ago (a lookup, a create, a commit): the kernel
    /// asks again right after it changed something in a directory (to check permissions on
    /// the next path walk), and a round trip would tell it nothing new.
    pub(super) fn fresh(&self, ino: FileId) -> Option<Attr> {
        let mut fresh = self.fresh.lock().expect("fresh attributes poisoned");
        fresh.get(ino, Instant::now())
    }

    pub(super) fn learn(&self, attr: &Attr) {
        let mut fresh = self.fresh.lock().expect("fresh attributes poisoned");
        fresh.learn(attr, Instant::now());
    }

    /// Any namespace change of this client forgets the fresh attributes (unlink and rmdir
    /// then learn the directory's new ones).
    pub(super) fn forget_fresh(&self) {
        let mut fresh = self.fresh.lock().expect("fresh attributes poisoned");
        fresh.attrs.clear();
    }
}

impl Vault {
    /// The FUSE session's notifier, once it exists.
    pub fn set_notifier(&self, notifier: impl Notifier + 'static) {
        self.coherence.set_notifier(Box::new(notifier));
    }

    /// The kernel is given `attr` (a reply carries it).
    pub fn kernel_has(&self, attr: &Attr) {
        self.coherence.kernel_has(attr);
    }

    /// After this client committed a file. When another writer's changes were merged into the
    /// commit, the kernel's cached pages of the file lack them: the next open drops them
    /// (whatever this client commits in between).
    pub(super) fn record_commit(&self, attr: &Attr, state: &mut FileState) {
        let merged_foreign = std::mem::take(&mut state.merged_foreign);
        self.coherence.committed(attr, merged_foreign);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Debug, Default)]
    struct Recorder(Arc<Mutex<Vec<FileId>>>);

    impl Notifier for Recorder {
        fn drop_attributes(&self, ino: FileId) -> std::io::Result<()> {
            self.0.lock().expect("recorder").push(ino);
            Ok(())
        }
    }

    fn attr(ino: u64, version: u64) -> Attr {
        Attr {
            ino,
            version,
            ..Attr::default()
        }
    }

    #[test]
    fn pages_are_kept_only_at_the_version_this_client_knows() {
        let (mut pages, file) = (Pages::default(), FileId(7));
        assert!(!pages.opened(file, Version(3)), "never read here");
        assert!(
            pages.opened(file, Version(3)),
            "read at this version before"
        );
        assert!(
            !pages.opened(file, Version(4)),
            "another client's close since"
        );
        pages.committed(file, Version(5), false);
        assert!(pages.opened(file, Version(5)), "this client's own commit");
    }

    #[test]
    fn merged_changes_drop_the_pages_at_the_next_open_only() {
        let (mut pages, file) = (Pages::default(), FileId(7));
        pages.committed(file, Version(5), true);
        pages.committed(file, Version(6), false);
        assert!(
            !pages.opened(file, Version(6)),
            "the pages lack the merged changes"
        );
        assert!(pages.opened(file, Version(6)), "dropped once");
    }

    #[test]
    fn the_kernel_drops_attributes_of_another_version() {
        let coherence = Coherence::default();
        let dropped = Recorder::default();
        let seen = dropped.0.clone();
        coherence.set_notifier(Box::new(dropped));
        coherence.kernel_catches_up(&attr(7, 2));
        coherence.kernel_has(&attr(7, 2));
        coherence.kernel_catches_up(&attr(7, 2));
        coherence.kernel_catches_up(&attr(7, 3));
        assert_eq!(*seen.lock().expect("recorder"), vec![FileId(7), FileId(7)]);
    }

    #[test]
    fn kernel_versions_are_bounded() {
        let mut kernel = KernelAttrs::default();
        for ino in 0..KERNEL_VERSIONS_MAX as u64 + 1 {
            kernel.given(FileId(ino), Version(1));
        }
        assert_eq!(kernel.versions.len(), 1, "started over");
        assert!(
            kernel.other_than(FileId(0), Version(1)),
            "forgotten: caught up at its next open"
        );
    }

    #[test]
    fn fresh_attributes_answer_for_a_moment() {
        let mut fresh = FreshAttrs::default();
        let t = Instant::now();
        fresh.learn(&attr(7, 2), t);
        let file = FileId(7);
        assert_eq!(
            fresh.get(file, t + FRESH_ATTR_LIFETIME / 2),
            Some(attr(7, 2))
        );
        assert_eq!(fresh.get(file, t + FRESH_ATTR_LIFETIME), None);
        assert!(fresh.attrs.is_empty(), "an expired one goes");
        for ino in 0..=FRESH_ATTRS_SWEEP as u64 {
            fresh.learn(&attr(ino, 1), t);
        }
        fresh.learn(&attr(1, 2), t + FRESH_ATTR_LIFETIME);
        assert_eq!(fresh.attrs.len(), 1, "the expired ones were swept out");
    }
}
