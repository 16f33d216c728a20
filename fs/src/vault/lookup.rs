//! Lookups and attributes: names answered from what this client knows when it can prove
//! them, attributes as this client sees them (its own writes and kept changes), and setting
//! them.

use std::sync::Arc;
use std::time::Instant;

use format::ids::{FileId, Version};
use proto::ErrorKind;
use proto::v1::{
    Attr, FileKind, GetAttrRequest, LookupRequest, ReadLinkRequest, SetAttrRequest, StatFsReply,
    StatFsRequest,
};

use super::listing::list_for_lookups;
use super::{Changes, Vault};
use crate::dirs::Answer;
use crate::error::FsError;
use crate::file::FileState;
use crate::shared::Shared;

/// Looks `name` up in `parent` on the server: sealed as the directory's names are, and the
/// entry checked against its seal before anything uses it.
pub(super) async fn remote_lookup(
    shared: &Shared,
    parent: FileId,
    name: &[u8],
) -> Result<Attr, FsError> {
    let names = shared.dir_names(parent).await?;
    let wire = names.wire(name);
    let request = LookupRequest {
        parent: parent.0,
        name: wire.clone(),
    };
    let attr = shared
        .remote
        .send("lookup", request, |mut api, r| async move {
            api.lookup(r).await
        })
        .await?;
    names.check(&wire, &attr)?;
    Ok(attr)
}

impl Vault {
    pub fn lookup(&self, parent: FileId, name: &[u8]) -> Result<Attr, FsError> {
        self.block(self.lookup_async(parent, name))
    }

    /// [`Vault::lookup`] on the runtime.
    pub(super) async fn lookup_async(&self, parent: FileId, name: &[u8]) -> Result<Attr, FsError> {
        {
            if let Some(attr) = self.shared.pending_named(parent, name) {
                return Ok(self.local_view(attr).await);
            }
            if self.unlinks.has(parent, name) {
                return Err(FsError::local(
                    ErrorKind::NotFound,
                    "unlinked here (not sent to the server yet)",
                ));
            }
            if let Some(answer) = self.known_answer(parent, name).await {
                return answer;
            }
            if self.shared.dirs().should_list(parent, Instant::now()) {
                // Here, not in the background: changes of this client's own meanwhile (the
                // program's next, say) would void it.
                let started = Instant::now();
                let listed = list_for_lookups(&self.shared, parent).await;
                tracing::debug!(?listed, took = ?started.elapsed(), "listed a directory for lookups");
                if let Some(answer) = self.known_answer(parent, name).await {
                    return answer;
                }
            }
            let attr = remote_lookup(&self.shared, parent, name).await?;
            self.shared.remember_name(FileId(attr.ino), name);
            self.ahead.named(parent, name, &attr);
            self.coherence.learn(&attr);
            Ok(self.local_view(attr).await)
        }
    }

    /// A lookup's answer from what this client knows of the directory, if it knows enough.
    async fn known_answer(&self, parent: FileId, name: &[u8]) -> Option<Result<Attr, FsError>> {
        let changes = self.shared.remote.changes();
        let answer = self
            .shared
            .dirs()
            .answer(parent, name, Instant::now(), changes);
        match answer {
            Answer::Ask => None,
            Answer::Absent => Some(Err(FsError::local(ErrorKind::NotFound, "no such entry"))),
            Answer::Present(listed) => {
                let ino = FileId(listed.ino);
                self.shared.remember_name(ino, name);
                self.ahead.named(parent, name, &listed);
                let attr = self.coherence.fresh(ino).unwrap_or(listed);
                Some(Ok(self.local_view(attr).await))
            }
        }
    }

    pub fn getattr(&self, ino: FileId) -> Result<Attr, FsError> {
        self.block(self.getattr_async(ino))
    }

    /// [`Vault::getattr`] on the runtime.
    pub(super) async fn getattr_async(&self, ino: FileId) -> Result<Attr, FsError> {
        if let Some(attr) = self
            .coherence
            .fresh(ino)
            .or_else(|| self.shared.pending_attr(ino))
        {
            return Ok(self.local_view(attr).await);
        }
        {
            let attr = self
                .shared
                .remote
                .send(
                    "get_attr",
                    GetAttrRequest { ino: ino.0 },
                    |mut api, r| async move { api.get_attr(r).await },
                )
                .await?;
            self.coherence.learn(&attr);
            Ok(self.local_view(attr).await)
        }
    }

    pub fn setattr(&self, ino: FileId, changes: &Changes) -> Result<Attr, FsError> {
        let set = self.block(async {
            let rest = SetAttrRequest {
                lazy: true,
                ino: ino.0,
                perm: changes.perm,
                uid: changes.uid,
                gid: changes.gid,
                size: None,
                atime: changes.atime,
                mtime: changes.mtime,
                atime_now: changes.atime_now,
                mtime_now: changes.mtime_now,
            };
            if changes.size.is_none()
                && self
                    .shared
                    .remote
                    .server_has(proto::features::COMMIT_SET_ATTR)
                && let Some(file) = self.table.file(ino)
                && let Some(attr) = file
                    .lock()
                    .await
                    .keep_attr_changes(rest, self.shared.keys.uid())
            {
                // They go with the writes not flushed yet (see `FileState::keep_attr_changes`).
                self.coherence.learn(&attr);
                return Ok(attr);
            }
            self.materialize(ino).await?;
            let asked = Instant::now();
            if let Some(size) = changes.size {
                self.truncate(ino, size).await?;
            }
            let set_attr = |request: SetAttrRequest| {
                self.shared
                    .remote
                    .send("set_attr", request, |mut api, r| async move {
                        api.set_attr(r).await
                    })
            };
            let attr = match self.table.file(ino) {
                Some(file) => {
                    // Changes kept for a commit go along, first, so that these override them.
                    let mut state = file.lock().await;
                    let attr = set_attr(state.with_kept_attr_changes(rest)).await?;
                    state.kept_attr_changes_sent(&attr);
                    state.view(attr)
                }
                None => set_attr(rest).await?,
            };
            if attr.kind == FileKind::Directory as i32 {
                self.shared
                    .dirs()
                    .touched(ino, Version(attr.version), asked);
            }
            self.coherence.learn(&attr);
            Ok(attr)
        });
        self.ahead.forget(ino);
        set
    }

    async fn truncate(&self, ino: FileId, size: u64) -> Result<(), FsError> {
        let file = match self.table.file(ino) {
            Some(file) => file,
            None => Arc::new(tokio::sync::Mutex::new(
                FileState::open(&self.shared, ino).await?,
            )),
        };
        let mut state = file.lock().await;
        let attr = state.truncate(&self.shared, size).await?;
        self.record_commit(&attr, &mut state);
        Ok(())
    }

    pub fn readlink(&self, ino: FileId) -> Result<Vec<u8>, FsError> {
        self.block(async {
            let stored = self
                .shared
                .remote
                .send(
                    "read_link",
                    ReadLinkRequest { ino: ino.0 },
                    |mut api, r| async move { api.read_link(r).await },
                )
                .await?
                .target;
            self.shared.open_target(ino, stored).await
        })
    }

    pub fn statfs(&self) -> Result<StatFsReply, FsError> {
        self.block(
            self.shared
                .remote
                .send("stat_fs", StatFsRequest {}, |mut api, r| async move {
                    api.stat_fs(r).await
                }),
        )
    }
}
