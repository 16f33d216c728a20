//! Kernel coherence: which version of each file the kernel's caches hold, so that an open
//! drops cached pages and attributes that another writer made stale (close-to-open), and the
//! attributes of this client's own latest changes, which answer `getattr` for a moment.

use proto::v1::Attr;

use super::{FRESH_ATTR_LIFETIME, KERNEL_VERSIONS_MAX, Vault};
use crate::file::FileState;

impl Vault {
    /// The FUSE session's notifier, once it exists.
    pub fn set_notifier(&self, notifier: fuser::Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// The kernel is given `attr` (a reply carries it).
    pub fn kernel_has(&self, attr: &Attr) {
        let mut versions = self
            .kernel_versions
            .lock()
            .expect("kernel versions poisoned");
        if versions.len() >= KERNEL_VERSIONS_MAX {
            versions.clear();
        }
        versions.insert(attr.ino, attr.version);
    }

    /// An open found the file at `attr` on the server: if the kernel keeps attributes of
    /// another version (from a lookup or a listing before another client's close), it must
    /// drop them, or it would end reads at the size it knows (close-to-open consistency).
    pub(super) fn kernel_catches_up(&self, attr: &Attr) {
        let known = self
            .kernel_versions
            .lock()
            .expect("kernel versions poisoned")
            .get(&attr.ino)
            .copied();
        if known == Some(attr.version) {
            return;
        }
        if let Some(notifier) = self.notifier.get() {
            // Attributes only (a negative offset); the pages go by the open's own flags.
            // Safe inside the open: the kernel takes no lock of the inode for it.
            if let Err(error) = notifier.inval_inode(fuser::INodeNo(attr.ino), -1, 0) {
                tracing::debug!(%error, ino = %format!("{:016x}", attr.ino), "could not drop the kernel's attributes");
            }
        }
    }

    /// After this client committed a file. When another writer's changes were merged into the
    /// commit, the kernel's cached pages of the file lack them: the next open drops them
    /// (whatever this client commits in between).
    pub(super) fn record_commit(&self, attr: &Attr, state: &mut FileState) {
        if std::mem::take(&mut state.merged_foreign) {
            self.stale_pages
                .lock()
                .expect("stale pages poisoned")
                .insert(attr.ino);
        }
        self.versions
            .lock()
            .expect("versions poisoned")
            .insert(attr.ino, attr.version);
        self.learn_attr(attr);
    }

    /// Attributes this client learnt moments ago (a lookup, a create, a commit): the kernel
    /// asks again right after it changed something in a directory (to check permissions on the
    /// next path walk), and a round trip would tell it nothing new. Any namespace change of
    /// this client forgets them all (unlink and rmdir then learn the directory's new ones).
    pub(super) fn fresh_attr(&self, ino: u64) -> Option<Attr> {
        let mut attrs = self.attrs.lock().expect("attrs poisoned");
        match attrs.get(&ino) {
            Some((at, attr)) if at.elapsed() < FRESH_ATTR_LIFETIME => Some(*attr),
            Some(_) => {
                attrs.remove(&ino);
                None
            }
            None => None,
        }
    }

    pub(super) fn learn_attr(&self, attr: &Attr) {
        let mut attrs = self.attrs.lock().expect("attrs poisoned");
        if attrs.len() > 4096 {
            attrs.retain(|_, (at, _)| at.elapsed() < FRESH_ATTR_LIFETIME);
        }
        attrs.insert(attr.ino, (std::time::Instant::now(), *attr));
    }
}
