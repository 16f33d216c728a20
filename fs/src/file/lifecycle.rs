//! A file's life in this client: how many handles hold it open, what it still needs on the
//! server, and when it leaves the open-files table for good.
//!
//! Only these facts are lifecycle: each decides what a close, a release, the uploader or an
//! open does with the file next, and they change only together along the transitions below.
//! A file's data (dirty chunks, sizes) and whether another writer's changes were merged into
//! its commits (`FileState::merged_foreign`, which concerns the kernel's page cache) are
//! orthogonal facts and stay fields of the state.
//!
//! ```text
//!   created_here(Some) ──▶ Pending ──creation_settled──▶ Named ◀──name_removed──▶ Unlinked
//!   created_here(None), from_server ──────────────────▶ Named
//!   Named or Unlinked, no handle ──retire──▶ Retired (for good: an open starts afresh)
//! ```
//!
//! What cannot happen is not representable: a retired file has no handles and needs nothing
//! on the server; a file not created on the server yet has no name there to lose.

use proto::v1::CreateRequest;

/// What an active file still needs on the server.
#[derive(Debug)]
enum OnServer {
    /// Created here, not on the server yet: its first flush creates it with this request
    /// (together with its first chunk when it has one).
    Pending(CreateRequest),
    /// On the server with a name; or refused there at its first flush, which leaves nothing
    /// of it to send (a later write fails at its commit, as for a file removed elsewhere).
    Named,
    /// Unlinked while open here: the server keeps it until this client frees it, at the
    /// last close.
    Unlinked,
}

#[derive(Debug)]
enum Stage {
    /// In the open-files table: open through `handles` handles (none: closed, with
    /// something left to send, or about to be retired).
    Active { handles: u32, server: OnServer },
    /// Out of the open-files table: nothing of this state is used any more.
    Retired,
}

/// A file's lifecycle (see the module comment); changed only by its transitions.
#[derive(Debug)]
pub struct Lifecycle(Stage);

impl Lifecycle {
    /// A file opened from the server: on it, with no handle yet (the open adds it).
    pub fn from_server() -> Lifecycle {
        Lifecycle(Stage::Active {
            handles: 0,
            server: OnServer::Named,
        })
    }

    /// A file this client just created, open through the create's handle; `pending`: the
    /// request that creates it on the server, when the server does not have it yet.
    pub fn created_here(pending: Option<CreateRequest>) -> Lifecycle {
        Lifecycle(Stage::Active {
            handles: 1,
            server: pending.map_or(OnServer::Named, OnServer::Pending),
        })
    }

    /// One more handle; false if the file was retired (the open must start afresh).
    pub fn open_handle(&mut self) -> bool {
        match &mut self.0 {
            Stage::Active { handles, .. } => {
                *handles += 1;
                true
            }
            Stage::Retired => false,
        }
    }

    /// A handle was released: how many are left.
    pub fn close_handle(&mut self) -> u32 {
        match &mut self.0 {
            Stage::Active { handles, .. } => {
                *handles = handles.saturating_sub(1);
                *handles
            }
            Stage::Retired => 0,
        }
    }

    pub fn handles(&self) -> u32 {
        match &self.0 {
            Stage::Active { handles, .. } => *handles,
            Stage::Retired => 0,
        }
    }

    /// In the table with no handle: closed, and something may still be left to send.
    pub fn is_closed(&self) -> bool {
        matches!(self.0, Stage::Active { handles: 0, .. })
    }

    pub fn is_retired(&self) -> bool {
        matches!(self.0, Stage::Retired)
    }

    /// The request that creates the file on the server, while the server does not have it.
    pub fn pending(&self) -> Option<&CreateRequest> {
        match &self.0 {
            Stage::Active {
                server: OnServer::Pending(request),
                ..
            } => Some(request),
            _ => None,
        }
    }

    /// The call carrying the pending creation settled it: the server has the file, or
    /// refused it (either way there is nothing left to create).
    pub fn creation_settled(&mut self) {
        if let Stage::Active { server, .. } = &mut self.0
            && matches!(server, OnServer::Pending(_))
        {
            *server = OnServer::Named;
        }
    }

    /// This client removed a name of the file on the server; `last`: the file has none left.
    /// A pending file has no name there (every removal creates the pending files of its
    /// directory first), so it stays pending.
    pub fn name_removed(&mut self, last: bool) {
        if let Stage::Active { server, .. } = &mut self.0
            && !matches!(server, OnServer::Pending(_))
        {
            *server = if last {
                OnServer::Unlinked
            } else {
                OnServer::Named
            };
        }
    }

    /// Whether the server keeps the file only for this client's handles: the last close
    /// frees it there instead of sending anything.
    pub fn unlinked(&self) -> bool {
        matches!(
            self.0,
            Stage::Active {
                server: OnServer::Unlinked,
                ..
            }
        )
    }

    /// Leaves the open-files table, when no handle holds the file and it needs no creation
    /// (the caller checks that its data is all sent); whether it did.
    pub fn retire(&mut self) -> bool {
        let done = matches!(
            self.0,
            Stage::Active {
                handles: 0,
                server: OnServer::Named | OnServer::Unlinked,
            }
        );
        if done {
            self.0 = Stage::Retired;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> CreateRequest {
        CreateRequest {
            parent: 1,
            name: b"new".to_vec(),
            ..CreateRequest::default()
        }
    }

    #[test]
    fn a_new_file_stays_until_its_creation_settles() {
        let mut life = Lifecycle::created_here(Some(request()));
        assert_eq!(life.handles(), 1);
        assert_eq!(life.pending().map(|r| r.parent), Some(1));
        assert_eq!(life.close_handle(), 0);
        assert!(life.is_closed());
        assert!(!life.retire(), "closed under a lease: still to be created");
        life.name_removed(true);
        assert!(
            life.pending().is_some() && !life.unlinked(),
            "no name to lose yet"
        );
        life.creation_settled();
        assert!(life.pending().is_none());
        assert!(life.retire());
        assert!(life.is_retired() && !life.is_closed());
    }

    #[test]
    fn handles_count_opens_and_releases() {
        let mut life = Lifecycle::from_server();
        assert!(life.is_closed(), "opened, no handle added yet");
        assert!(life.open_handle() && life.open_handle());
        assert_eq!(life.close_handle(), 1);
        assert!(!life.retire(), "still open");
        assert_eq!(life.close_handle(), 0);
        assert_eq!(life.close_handle(), 0, "a release too many changes nothing");
        assert!(Lifecycle::created_here(None).pending().is_none());
    }

    #[test]
    fn an_unlinked_file_is_freed_at_its_last_close() {
        let mut life = Lifecycle::created_here(None);
        life.name_removed(false);
        assert!(!life.unlinked(), "another name is left");
        life.name_removed(true);
        assert!(life.unlinked() && !life.is_closed());
        assert_eq!(life.close_handle(), 0);
        assert!(life.unlinked() && life.is_closed());
        assert!(life.retire());
        assert!(!life.unlinked(), "retired: nothing left to free");
    }

    #[test]
    fn a_retired_file_is_never_used_again() {
        let mut life = Lifecycle::from_server();
        assert!(life.retire());
        assert!(!life.open_handle(), "an open starts afresh");
        assert_eq!((life.handles(), life.close_handle()), (0, 0));
        life.name_removed(true);
        life.creation_settled();
        assert!(life.is_retired() && !life.unlinked() && life.pending().is_none());
        assert!(!life.retire(), "retired once");
    }
}
