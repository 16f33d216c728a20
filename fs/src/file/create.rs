//! A new file this client has not created on the server yet: its creation there, alone or
//! with the first commit, and what a refusal leaves.

use format::ids::FileId;
use proto::ErrorKind;
use proto::v1::{Attr, CreateRequest};

use super::FileState;
use crate::error::FsError;
use crate::shared::Shared;

impl FileState {
    /// Creates a pending new file on the server now (see `Lifecycle::pending`). A creation the
    /// server refuses (the name was taken meanwhile by another client, the directory went)
    /// drops what was written locally and returns the error.
    pub async fn materialize(
        &mut self,
        shared: &Shared,
        durable: bool,
    ) -> Result<Option<Attr>, FsError> {
        let Some(mut request) = self.life.pending().cloned() else {
            return Ok(None);
        };
        request.lazy = !durable;
        let asked = std::time::Instant::now();
        let created = shared
            .remote
            .send("create", request.clone(), |mut api, r| async move {
                api.create(r).await
            })
            .await;
        self.creation_settled(shared, &request, created.as_ref().map(Some), asked);
        let attr = created?;
        self.heard(attr);
        Ok(Some(attr))
    }

    /// After the call that carried this file's pending creation (asked for at `asked`; the
    /// file's attributes it replied with, or its error): it is no longer pending unless the
    /// server was not reached, and a refused creation drops what was written (nothing of it
    /// exists on the server).
    pub(super) fn creation_settled(
        &mut self,
        shared: &Shared,
        request: &CreateRequest,
        outcome: Result<Option<&Attr>, &FsError>,
        asked: std::time::Instant,
    ) {
        let reply = outcome.ok().flatten();
        // The known directories and the log hold plaintext names; the request, the wire's.
        let name = shared
            .pending_name(self.ino)
            .unwrap_or_else(|| request.name.clone());
        shared
            .dirs()
            .added(FileId(request.parent), &name, reply, asked);
        if let Err(error) = outcome
            && error.kind() == ErrorKind::Unavailable
        {
            // The server was not reached (or its answer was lost): the file stays new, and
            // the next flush asks again (one that had reached it finds the name taken).
            return;
        }
        self.life.creation_settled();
        shared.forget_pending(self.ino);
        if let Err(error) = outcome {
            tracing::error!(
                file = %String::from_utf8_lossy(&name),
                %error,
                "the server refused to create a new file at its first flush; its data is lost"
            );
            self.discard(shared);
        }
    }
}
