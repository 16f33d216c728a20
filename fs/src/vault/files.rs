//! Open files: open (with close-to-open revalidation), read, write, flush, fsync, release,
//! and flushing everything at unmount.

use std::sync::Arc;

use format::ids::{FileId, Handle, Version};
use proto::ErrorKind;
use proto::v1::SyncRequest;

use super::table::{Opened, SharedFile};
use super::{Changes, Vault};
use crate::error::FsError;
use crate::file::FileState;

/// How often an open retries when the state it found was retired by a racing release.
const OPEN_ATTEMPTS: usize = 8;

impl Vault {
    /// Opens a file: revalidates it against the server (close-to-open consistency) and says
    /// whether the kernel may keep its cached pages.
    pub fn open(&self, ino: FileId) -> Result<(Handle, bool), FsError> {
        self.block(self.open_async(ino))
    }

    /// open(2) with its flags: as [`Vault::open`], and an open for writing of a file the
    /// server does not let this user write fails with `EACCES` (a read-only share).
    pub fn open_for(&self, ino: FileId, flags: i32) -> Result<(Handle, bool), FsError> {
        let opened = self.open(ino)?;
        if flags & libc::O_ACCMODE == libc::O_RDONLY {
            return Ok(opened);
        }
        let (_, file) = self.table.file_of(opened.0)?;
        let writable = self
            .block(async { file.lock().await.server_attr() })
            .is_none_or(|attr| attr.may_write);
        if !writable {
            let _ = self.release(opened.0);
            return Err(FsError::local(
                ErrorKind::AccessDenied,
                format!("file {ino} is shared with you read-only"),
            ));
        }
        Ok(opened)
    }

    pub(super) async fn open_async(&self, ino: FileId) -> Result<(Handle, bool), FsError> {
        // A release racing with this open may retire the state found in the table; it
        // leaves the table first, so a second look finds a fresh one.
        for _ in 0..OPEN_ATTEMPTS {
            let existing = self.table.file(ino);
            let file = match existing {
                Some(file) => file,
                None => {
                    let reply = self.open_reply(ino).await?;
                    let state = FileState::open_from(&self.shared, ino, reply).await?;
                    if let Some(attr) = state.server_attr() {
                        self.coherence.kernel_catches_up(&attr);
                        // As fresh as a getattr now: the kernel asks for them next.
                        self.coherence.learn(&attr);
                    }
                    let file = Arc::new(tokio::sync::Mutex::new(state));
                    self.table.file_or_insert(ino, file)
                }
            };
            let version = {
                let mut state = file.lock().await;
                if !state.life.open_handle() {
                    continue;
                }
                state.version
            };
            return Ok(self.opened(ino, file, version));
        }
        Err(FsError::local(
            ErrorKind::Internal,
            format!("file {ino} kept closing while being opened"),
        ))
    }

    /// Registers a handle on a file just opened; says whether the kernel may keep its pages.
    fn opened(&self, ino: FileId, file: SharedFile, version: Version) -> (Handle, bool) {
        let keep_cache = self.coherence.opened(ino, version);
        if !keep_cache {
            self.shared
                .cache
                .lock()
                .expect("cache poisoned")
                .forget_file(ino);
        }
        (
            self.table.add_handle(Opened::File {
                ino,
                file,
                setid_checked: false,
            }),
            keep_cache,
        )
    }

    pub fn read(&self, fh: Handle, offset: u64, size: u32) -> Result<bytes::Bytes, FsError> {
        let (_, file) = self.table.file_of(fh)?;
        self.block(async { file.lock().await.read(&self.shared, offset, size).await })
    }

    pub fn write(&self, fh: Handle, offset: u64, data: &[u8]) -> Result<usize, FsError> {
        let (_, file) = self.table.file_of(fh)?;
        self.block(async {
            {
                let mut state = file.lock().await;
                if let Some(attr) = state.write(&self.shared, offset, data).await? {
                    self.record_commit(&attr, &mut state);
                }
            }
            self.wait_for_room().await;
            Ok::<_, FsError>(())
        })?;
        Ok(data.len())
    }

    /// A write by a user without CAP_FSETID drops the file's set-user-ID bit, and its
    /// set-group-ID bit when group execution is allowed (what the kernel does itself for
    /// writes through its page cache; for direct writes it leaves it to the filesystem). Checked
    /// once per open file.
    pub fn drop_setid_bits(&self, fh: Handle) -> Result<(), FsError> {
        let Some(ino) = self.table.check_setid_once(fh) else {
            return Ok(());
        };
        let Some(perm) = without_setid(self.getattr(ino)?.perm) else {
            return Ok(());
        };
        let changes = Changes {
            perm: Some(perm),
            ..Changes::default()
        };
        self.setattr(ino, &changes).map(|_| ())
    }

    /// close(2): everything written through this file becomes current on the server, seen by
    /// every later open (close-to-open consistency).
    pub fn flush(&self, fh: Handle) -> Result<(), FsError> {
        self.flush_as(fh, false)
    }

    /// fsync(2): as close, and durable on the server, with every change this client made
    /// before (the file's creation and name among them).
    pub fn fsync(&self, fh: Handle) -> Result<(), FsError> {
        self.flush_as(fh, true)
    }

    fn flush_as(&self, fh: Handle, durable: bool) -> Result<(), FsError> {
        let (ino, file) = self.table.file_of(fh)?;
        self.block(async {
            if durable {
                // The files this client closed before are on the server before the durable
                // commit that covers them.
                self.send_closed_except(ino).await?;
            }
            let (committed, new_in) = {
                let mut state = file.lock().await;
                if !durable && self.defers(&state) {
                    return Ok(());
                }
                let new_in = state.pending_in();
                let committed = state.flush(&self.shared, durable).await?;
                if let Some(attr) = &committed {
                    self.record_commit(attr, &mut state);
                }
                (committed.is_some(), new_in)
            };
            // A durable commit covers what came before it; without one, ask. With the file let
            // go: the other new files are created first, each under its own lock.
            if durable && !committed {
                self.sync_async().await?;
            }
            if let Some(dir) = new_in {
                self.ask_lease(dir);
            }
            Ok(())
        })
    }

    pub fn release(&self, fh: Handle) -> Result<(), FsError> {
        let (ino, file) = self.table.file_of(fh)?;
        self.table.remove_handle(fh);
        self.block(async {
            let mut state = file.lock().await;
            if state.life.close_handle() > 0 {
                return Ok(());
            }
            if !state.life.unlinked() && self.defers(&state) {
                return Ok(());
            }
            self.send_closed(ino, &file, &mut state).await
        })
    }

    /// A file with no handle and nothing left to send leaves the open-files table.
    pub(super) fn retire_if_done(&self, ino: FileId, file: &SharedFile, state: &mut FileState) {
        if state.is_dirty() || !state.life.retire() {
            return;
        }
        self.table.remove_file(ino, file);
    }

    /// fsyncdir(2), and fsync(2) with nothing left to commit: every change acknowledged so far
    /// becomes durable.
    pub fn sync(&self) -> Result<(), FsError> {
        self.block(self.sync_async())
    }

    /// fsyncdir(2): as [`Vault::sync`], and the directory's ACL is read again before the next
    /// new file there (`vaultfs share` syncs a directory it shared, so that this mount's next
    /// file there reaches the new readers).
    pub fn sync_dir(&self, dir: FileId) -> Result<(), FsError> {
        self.shared.keys.trust().forget_acl(dir);
        self.sync()
    }

    async fn sync_async(&self) -> Result<(), FsError> {
        // New files not created on the server yet are created first, so they are covered.
        self.materialize_in(None).await?;
        self.shared
            .remote
            .send("sync", SyncRequest {}, |mut api, r| async move {
                api.sync(r).await
            })
            .await
            .map(drop)
    }

    /// Flushes every file with dirty data and makes it all durable (unmount, shutdown). Waits
    /// for an unreachable server once in all, not once per call: after one wait, what is left
    /// fails at once.
    pub fn flush_all(&self) -> Result<(), FsError> {
        self.behind.stop();
        self.shared.remote.shutting_down();
        let mut first_error = None;
        for (ino, file) in self.table.files() {
            let outcome = self.block(async { file.lock().await.flush(&self.shared, false).await });
            if let Err(error) = outcome {
                let file = self.shared.name_of(ino);
                tracing::error!(%error, file, "could not flush a file at unmount");
                first_error.get_or_insert(error);
            }
        }
        if let Err(error) = self.sync() {
            tracing::error!(%error, "could not make the changes durable at unmount");
            first_error.get_or_insert(error);
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The permission bits `perm` leaves after a write by a user without CAP_FSETID: without the
/// set-user-ID bit, and the set-group-ID bit when group execution is allowed; none if that
/// changes nothing.
fn without_setid(perm: u32) -> Option<u32> {
    let perm = perm & 0o7777;
    let cleared = if perm & 0o010 != 0 { 0o6000 } else { 0o4000 };
    (perm & cleared != 0).then_some(perm & !cleared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_drops_set_id_bits_as_the_kernel_does() {
        assert_eq!(without_setid(0o4755), Some(0o755));
        assert_eq!(without_setid(0o6755), Some(0o755), "group may execute");
        assert_eq!(
            without_setid(0o6745),
            Some(0o2745),
            "mandatory locking: kept"
        );
        assert_eq!(without_setid(0o2745), None);
        assert_eq!(
            without_setid(0o100644),
            None,
            "the file type is not permission"
        );
    }
}
