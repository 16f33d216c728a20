//! Attribute changes kept for the next commit: a change of mode, owner or times made while the
//! file has unflushed writes goes with their commit (`PutChunkRequest.set_attr`,
//! `CommitChunksRequest.set_attr`) instead of a round trip of its own, when the server's own
//! checks will pass; this mount shows it at once.

use proto::v1::{Attr, SetAttrRequest};

use super::FileState;
use crate::error::FsError;
use crate::shared::Shared;

impl FileState {
    /// Keeps attribute changes (no size) for the next commit instead of a round trip now,
    /// when a commit is to come (unflushed writes) and the server will allow them: the checks
    /// `SetAttr` makes are that the owner changes mode and owner, and a writer the times.
    /// Returns the attributes the file shows now, or `None`: the changes must go now.
    pub fn keep_attr_changes(&mut self, changes: SetAttrRequest, uid: u32) -> Option<Attr> {
        let attr = self.server_attr?;
        if changes.size.is_some() || !self.is_dirty() {
            return None;
        }
        let owner_change = changes.perm.is_some() || changes.uid.is_some() || changes.gid.is_some();
        let time_change = changes.atime.is_some()
            || changes.atime_now
            || changes.mtime.is_some()
            || changes.mtime_now;
        let times_fit = [changes.atime, changes.mtime]
            .iter()
            .flatten()
            .all(|t| t.as_nanos().is_some());
        if (owner_change && attr.owner != uid) || (time_change && !attr.may_write) || !times_fit {
            return None;
        }
        let mut changes = changes;
        let now = crate::vault::stamp(std::time::SystemTime::now());
        if changes.atime_now {
            changes.atime = Some(now);
        }
        if changes.mtime_now {
            changes.mtime = Some(now);
        }
        let kept = self
            .attr_changes
            .get_or_insert_with(SetAttrRequest::default);
        merge_attr_changes(kept, changes);
        Some(self.view(attr))
    }

    /// The changes kept for the next commit with `newer` on top, to go to the server now
    /// (then call `kept_attr_changes_sent`).
    pub fn with_kept_attr_changes(&self, newer: SetAttrRequest) -> SetAttrRequest {
        match self.attr_changes {
            Some(mut kept) => {
                // The request is the newer one's: its file and durability.
                let (ino, lazy) = (newer.ino, newer.lazy);
                merge_attr_changes(&mut kept, newer);
                SetAttrRequest { ino, lazy, ..kept }
            }
            None => newer,
        }
    }

    /// The server took the changes of `with_kept_attr_changes`; it replied `attr`.
    pub fn kept_attr_changes_sent(&mut self, attr: &Attr) {
        self.attr_changes = None;
        self.server_attr = Some(*attr);
    }

    /// A write or size change sets the modification time itself (to the commit's): one kept
    /// from before it no longer applies.
    pub(super) fn forget_kept_mtime(&mut self) {
        if let Some(changes) = &mut self.attr_changes {
            changes.mtime = None;
            changes.mtime_now = false;
        }
    }

    /// Sends the attribute changes kept for a commit when there is no commit to carry them.
    pub(super) async fn flush_attr_changes(
        &mut self,
        shared: &Shared,
        durable: bool,
    ) -> Result<Option<Attr>, FsError> {
        let Some(mut request) = self.attr_changes.take() else {
            return Ok(None);
        };
        request.ino = self.ino.0;
        request.lazy = !durable;
        let changed = shared
            .remote
            .send("set_attr", request, |mut api, r| async move {
                api.set_attr(r).await
            })
            .await;
        match changed {
            Ok(attr) => {
                self.heard(attr);
                Ok(Some(attr))
            }
            Err(error) => {
                self.attr_changes = Some(request);
                Err(error)
            }
        }
    }
}

/// Puts `newer` attribute changes on top of `kept` ones.
fn merge_attr_changes(kept: &mut SetAttrRequest, newer: SetAttrRequest) {
    kept.perm = newer.perm.or(kept.perm);
    kept.uid = newer.uid.or(kept.uid);
    kept.gid = newer.gid.or(kept.gid);
    kept.size = newer.size.or(kept.size);
    if newer.atime.is_some() || newer.atime_now {
        (kept.atime, kept.atime_now) = (newer.atime, newer.atime_now);
    }
    if newer.mtime.is_some() || newer.mtime_now {
        (kept.mtime, kept.mtime_now) = (newer.mtime, newer.mtime_now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::Timestamp;

    /// Kept changes go under a newer request's: the request stays the newer one's (its file
    /// and durability), and its changes win where both set something.
    #[test]
    fn kept_attribute_changes_go_under_a_newer_request() {
        let mut state = FileState::created(
            format::ids::FileId(7),
            std::sync::Arc::new(crypto::FileKeys::generate()),
            &Attr::default(),
            None,
        );
        state.attr_changes = Some(SetAttrRequest {
            perm: Some(0o600),
            mtime: Some(Timestamp {
                seconds: 5,
                nanos: 0,
            }),
            ..SetAttrRequest::default()
        });
        let newer = SetAttrRequest {
            ino: 7,
            lazy: true,
            mtime: Some(Timestamp {
                seconds: 9,
                nanos: 0,
            }),
            ..SetAttrRequest::default()
        };
        let sent = state.with_kept_attr_changes(newer);
        assert_eq!((sent.ino, sent.lazy), (7, true));
        assert_eq!(sent.perm, Some(0o600));
        assert_eq!(
            sent.mtime,
            Some(Timestamp {
                seconds: 9,
                nanos: 0
            })
        );
    }
}
