//! Sending closed new files: the uploader thread's batches of files closed under a lease,
//! and sending what a closed file has left when something needs it on the server.

use format::ids::FileId;
use proto::ErrorKind;
use proto::v1::{PutChunkReply, PutChunkRequest, PutChunksReply, PutChunksRequest};

use super::behind::FILE_BYTES_MAX;
use super::{SharedFile, Vault};
use crate::error::FsError;
use crate::file::FileState;

impl Vault {
    /// Whether the file was closed: its last handle is gone, or a close queued it while a
    /// release is still to come.
    pub(super) fn closed(&self, state: &FileState) -> bool {
        state.life.handles() == 0 || self.behind.is_queued(state.ino)
    }

    /// Whether the close of this file may return before the server has it (see
    /// [`crate::vault::behind`]): a new file, not on the server yet, of at most 64 KiB, in a
    /// directory this client holds a lease on. If so, the file is queued for the uploader.
    pub(super) fn defers(&self, state: &FileState) -> bool {
        let Some(dir) = deferrable_in(state) else {
            return false;
        };
        if !self.behind.may_defer(dir) {
            return false;
        }
        self.behind.defer(state.ino);
        true
    }

    /// Sends what a closed file (its last handle gone, or closed under a lease, see
    /// [`crate::vault::behind`]) has not sent yet, and retires it once nothing is left; an unlinked
    /// one is freed instead.
    pub(super) async fn send_closed(
        &self,
        ino: FileId,
        file: &SharedFile,
        state: &mut FileState,
    ) -> Result<(), FsError> {
        let sent = if state.life.unlinked() && state.life.handles() == 0 {
            state.discard(&self.shared);
            self.release_orphan(ino).await;
            Ok(())
        } else {
            let flushed = state.flush(&self.shared, false).await;
            flushed.map(|attr| {
                if let Some(attr) = attr {
                    self.record_commit(&attr, state);
                }
            })
        };
        self.retire_if_done(ino, file, state);
        sent
    }

    /// The uploader's part: sends queued files that still wait; the new ones of one chunk
    /// together, in one call.
    pub(super) fn send_queued(&self, inos: Vec<FileId>) {
        self.block(async {
            let mut puts = Vec::new();
            let mut alone = Vec::new();
            for ino in inos {
                let Some(file) = self.table.file(ino) else {
                    continue;
                };
                // Never wait for one file while holding others.
                let Ok(mut state) = file.clone().try_lock_owned() else {
                    alone.push(ino);
                    continue;
                };
                if !state.life.is_closed() {
                    // Opened again (its next close sends it, or queues it again), or retired.
                    continue;
                }
                match state.creating_put(&self.shared).await {
                    Ok(Some(put)) => puts.push((ino, file, state, put)),
                    Ok(None) => alone.push(ino),
                    Err(error) => self.not_sent(ino, error),
                }
            }
            let outcomes = self.put_together(puts.iter().map(|p| &p.3)).await;
            for ((ino, file, mut state, put), outcome) in puts.into_iter().zip(outcomes) {
                match state.inline_done(&self.shared, put, outcome) {
                    Ok(attr) => self.record_commit(&attr, &mut state),
                    Err(error) => self.not_sent(ino, error),
                }
                self.retire_if_done(ino, &file, &mut state);
            }
            for ino in alone {
                let Some(file) = self.table.file(ino) else {
                    continue;
                };
                let mut state = file.lock().await;
                if !state.life.is_closed() {
                    continue;
                }
                if let Err(error) = self.send_closed(ino, &file, &mut state).await {
                    self.not_sent(ino, error);
                }
            }
        });
    }

    /// Sends puts in one `PutChunks` call (one by one to a server without it); the outcome of
    /// each, in order.
    async fn put_together<'a>(
        &self,
        puts: impl Iterator<Item = &'a crate::file::InlinePut>,
    ) -> Vec<Result<PutChunkReply, FsError>> {
        let requests: Vec<PutChunkRequest> = puts.map(|put| put.request.clone()).collect();
        let remote = &self.shared.remote;
        if requests.len() < 2 || !remote.server_has(proto::features::PUT_CHUNKS) {
            let mut outcomes = Vec::with_capacity(requests.len());
            for request in requests {
                let outcome = remote
                    .send("put_chunk", request, |mut api, r| async move {
                        api.put_chunk(r).await
                    })
                    .await;
                outcomes.push(outcome);
            }
            return outcomes;
        }
        let count = requests.len();
        let reply = remote
            .send(
                "put_chunks",
                PutChunksRequest { puts: requests },
                |mut api, r| async move { api.put_chunks(r).await },
            )
            .await;
        outcomes_of(reply, count)
    }

    /// A queued file could not be sent: queued again if storaged was unreachable, else the
    /// error is logged (a refused new file's data is gone, as at a refused close).
    fn not_sent(&self, ino: FileId, error: FsError) {
        let name = self.shared.name_of(ino);
        if error.kind() == ErrorKind::Unavailable && !self.behind.stopping() {
            tracing::warn!(%error, file = name, "storaged unreachable; will send a closed new file again");
            self.behind.defer(ino);
        } else {
            tracing::error!(%error, file = name, "could not send a closed new file to the server");
        }
    }

    /// Sends every new file this client closed but has not sent yet, but `skip`.
    pub(super) async fn send_closed_except(&self, skip: FileId) -> Result<(), FsError> {
        for ino in self.shared.pending_in(None) {
            let Some(file) = self.table.file(ino).filter(|_| ino != skip) else {
                continue;
            };
            let mut state = file.lock().await;
            if !state.life.is_retired() && self.closed(&state) {
                self.send_closed(ino, &file, &mut state).await?;
            }
        }
        Ok(())
    }

    /// Sends the unlinks answered in `dir` (or everywhere) and every new file there not on
    /// the server yet: whole, also one still open (a close may have returned before its
    /// release came).
    pub(super) async fn send_held_in(&self, dir: Option<FileId>) -> Result<(), FsError> {
        let mut first_error = self.send_unlinks(dir).await.err();
        for ino in self.shared.pending_in(dir) {
            let Some(file) = self.table.file(ino) else {
                continue;
            };
            let mut state = file.lock().await;
            if state.life.is_retired() {
                continue;
            }
            if let Err(error) = self.send_closed(ino, &file, &mut state).await {
                if state.life.handles() == 0 {
                    // Queued again if storaged was unreachable.
                    self.not_sent(ino, error.clone());
                }
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The directory a close of this file may return early in, before the server has the file
/// (see `crate::vault::behind`): a new file, not on the server yet, of one chunk not uploaded
/// yet and at most [`FILE_BYTES_MAX`]. Whether the lease there is held is asked next.
fn deferrable_in(state: &FileState) -> Option<FileId> {
    let dir = state.pending_in()?;
    (state.size <= FILE_BYTES_MAX && state.small()).then_some(dir)
}

/// The outcome of each of `count` puts from the reply to their `PutChunks` call: each put's
/// reply or error, or the call's error for all.
fn outcomes_of(
    reply: Result<PutChunksReply, FsError>,
    count: usize,
) -> Vec<Result<PutChunkReply, FsError>> {
    match reply {
        Ok(reply) if reply.outcomes.len() == count => reply
            .outcomes
            .into_iter()
            .map(|outcome| match outcome.reply {
                Some(reply) => Ok(reply),
                None => Err(FsError::refused(outcome.error_kind, outcome.error)),
            })
            .collect(),
        Ok(reply) => {
            let error = FsError::local(
                ErrorKind::Internal,
                format!("{} outcomes for {count} puts", reply.outcomes.len()),
            );
            vec![Err(error); count]
        }
        Err(error) => vec![Err(error); count],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::{Attr, CreateRequest, PutChunkOutcome};

    fn new_file(pending: bool) -> FileState {
        let cipher = std::sync::Arc::new(crypto::FileKeys::generate());
        let request = CreateRequest {
            parent: 9,
            ..CreateRequest::default()
        };
        FileState::created(
            FileId(7),
            cipher,
            &Attr::default(),
            pending.then_some(request),
        )
    }

    #[test]
    fn only_small_new_files_may_close_early() {
        let mut state = new_file(true);
        assert_eq!(deferrable_in(&state), Some(FileId(9)));
        state.size = FILE_BYTES_MAX;
        assert_eq!(deferrable_in(&state), Some(FileId(9)));
        state.size = FILE_BYTES_MAX + 1;
        assert_eq!(deferrable_in(&state), None, "too large");
        assert_eq!(
            deferrable_in(&new_file(false)),
            None,
            "on the server already"
        );
    }

    #[test]
    fn each_put_gets_its_own_outcome() {
        let done = PutChunkReply {
            generation: 4,
            attr: None,
        };
        let refused = PutChunkOutcome {
            reply: None,
            error_kind: ErrorKind::Exists as i32,
            error: "taken".into(),
        };
        let reply = PutChunksReply {
            outcomes: vec![
                PutChunkOutcome {
                    reply: Some(done),
                    ..PutChunkOutcome::default()
                },
                refused,
            ],
        };
        let outcomes = outcomes_of(Ok(reply.clone()), 2);
        assert_eq!(outcomes[0].as_ref().expect("done").generation, 4);
        let error = outcomes[1].as_ref().expect_err("refused");
        assert_eq!(
            (error.kind(), error.to_string()),
            (ErrorKind::Exists, "taken".into())
        );
        let miscounted = outcomes_of(Ok(reply), 3);
        assert!(
            miscounted
                .iter()
                .all(|o| o.as_ref().is_err_and(|e| e.kind() == ErrorKind::Internal))
        );
        let unreachable = FsError::local(ErrorKind::Unavailable, "down");
        let failed = outcomes_of(Err(unreachable), 2);
        assert!(failed.iter().all(|o| {
            o.as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::Unavailable)
        }));
    }
}
