//! Directory listings: `opendir`'s snapshot for `readdir`, and the listing that lets lookups
//! of a busy directory be answered here (see [`crate::dirs`]).

use std::sync::Arc;
use std::time::Instant;

use format::ids::{FileId, Handle};
use proto::v1::{Attr, GetAttrRequest, ReadDirRequest};

use super::table::Opened;
use super::{Listing, Vault};
use crate::error::FsError;
use crate::shared::Shared;

/// Readdir pages fetched from the server at once.
const READDIR_PAGE: u32 = 1024;
/// A directory larger than this is listed only this far (each `opendir` snapshots it).
const READDIR_ENTRIES_MAX: usize = 1_000_000;

/// The entries of `dir` with their attributes, page by page, up to about `max`; whether that
/// was all. Names come opened, and entries checked, as the directory's names are sealed; an
/// entry that fails its check is left out (and logged).
async fn read_dir(
    shared: &Shared,
    dir: FileId,
    max: usize,
) -> Result<(Vec<(Vec<u8>, Attr)>, bool), FsError> {
    let names = shared.dir_names(dir).await?;
    let mut entries = Vec::new();
    let mut after = Vec::new();
    loop {
        let page = shared
            .remote
            .send(
                "read_dir",
                ReadDirRequest {
                    ino: dir.0,
                    after,
                    limit: READDIR_PAGE,
                },
                |mut api, r| async move { api.read_dir(r).await },
            )
            .await?;
        after = page
            .entries
            .last()
            .map(|e| e.name.clone())
            .unwrap_or_default();
        entries.extend(page.entries.into_iter().filter_map(|e| {
            let attr = e.attr?;
            Some((names.open(&e.name, &attr).ok()?, attr))
        }));
        if !page.more || entries.len() >= max {
            return Ok((entries, !page.more));
        }
    }
}

/// Lists `dir` so that the next lookups there are answered here (see `dirs`): its attributes
/// before and after must show one version, or the listing is not used.
pub(super) async fn list_for_lookups(shared: &Shared, dir: FileId) -> Result<(), FsError> {
    let asked = Instant::now();
    let changes = shared.remote.changes();
    let get_attr = || {
        shared.remote.send(
            "get_attr",
            GetAttrRequest { ino: dir.0 },
            |mut api, r| async move { api.get_attr(r).await },
        )
    };
    let before = get_attr().await?;
    if !before.may_read {
        return Ok(());
    }
    let (entries, whole) = read_dir(shared, dir, crate::dirs::LISTED_ENTRIES_MAX + 1).await?;
    if !whole || get_attr().await?.version != before.version {
        return Ok(());
    }
    let mut dirs = shared.dirs();
    dirs.listed(&before, entries, asked, changes, shared.remote.changes());
    Ok(())
}

impl Vault {
    /// Snapshots a directory listing for `readdir`.
    pub fn opendir(&self, ino: FileId) -> Result<Handle, FsError> {
        let mut listing = Vec::new();
        let mut changes = 0;
        self.block(async {
            self.materialize_in(Some(ino)).await?;
            changes = self.shared.remote.changes();
            let (entries, _) = read_dir(&self.shared, ino, READDIR_ENTRIES_MAX).await?;
            for (name, attr) in entries {
                self.ahead.named(ino, &name, &attr);
                listing.push((name, self.local_view(attr).await));
            }
            Ok::<(), FsError>(())
        })?;
        Ok(self.table.add_handle(Opened::Dir {
            listing: Arc::new(listing),
            changes,
        }))
    }

    /// The snapshot taken at `opendir`, and whether its attributes are still current: nothing
    /// was changed through this client since (another client's change shows after the attribute
    /// timeout, as with lookups).
    pub fn listing(&self, fh: Handle) -> Result<(Listing, bool), FsError> {
        let (listing, changes) = self.table.listing_of(fh)?;
        Ok((listing, changes == self.shared.remote.changes()))
    }

    pub fn releasedir(&self, fh: Handle) {
        self.table.remove_handle(fh);
    }
}
