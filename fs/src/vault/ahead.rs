//! Opens answered ahead: under a directory's lease, the open of a small file asks storaged in
//! one `OpenMany` call for its `Open` reply and for those of the small files after it in the
//! directory's listing; a later open of one of them uses the reply held here, with no call.
//!
//! Close-to-open consistency holds because storaged recalls the directory's lease before any
//! change of another client to what `Open` returns for a file first linked there becomes
//! visible (and answers ahead no file a call of another client is changing right now), and
//! this client drops the replies held for the directory before it gives the lease back. A
//! reply is used only while the lease is held and only if it was asked for under the lease's
//! current grant (`epoch`: a recall since makes it stale, even when it arrives late). This
//! client's own changes void the replies they could make stale: every reply of a call during
//! which one of this client's changes completed, and the reply held for a file changed here
//! without a handle (`forget`); a file open here is never held.
//!
//! Every reply is checked as an `Open` reply is when it is used (`FileState::open_from`):
//! nothing the server says is trusted more because it came in a batch.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use format::ids::FileId;
use proto::v1::{Attr, FileKind, OpenManyRequest, OpenReply, OpenRequest};

use super::Vault;
use crate::error::FsError;

/// Files asked for ahead in one call (the server answers at most
/// `proto::limits::OPENS_AHEAD_MAX`).
const AHEAD_PER_CALL: u32 = 64;
/// Replies held at most, and their bytes (mostly small files' sealed chunks).
const REPLIES_MAX: usize = 4096;
const REPLY_BYTES_MAX: usize = 32 << 20;
/// Names of files kept at most (about 100 bytes each); past it they are forgotten at once.
const NAMES_MAX: usize = 100_000;
/// Directories whose epoch is kept at most; past it every directory starts a new one.
const EPOCHS_MAX: usize = 4096;

/// A reply held for a later open.
#[derive(Debug)]
struct Held {
    dir: FileId,
    epoch: u64,
    reply: OpenReply,
    bytes: usize,
    /// Its place in `Inner::order`.
    seq: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Where each regular file was last seen by name: its directory and name there.
    names: HashMap<FileId, (FileId, Vec<u8>)>,
    /// Each directory's current epoch, past every one its replies were asked for in before
    /// its lease was last given back; `floor` for a directory not here.
    epochs: HashMap<FileId, u64>,
    floor: u64,
    /// The last epoch or sequence number handed out.
    counter: u64,
    replies: HashMap<FileId, Held>,
    /// Replies in the order they came (with their `seq`), oldest first, for eviction.
    order: VecDeque<(FileId, u64)>,
    bytes: usize,
}

impl Inner {
    fn epoch(&self, dir: FileId) -> u64 {
        self.epochs.get(&dir).copied().unwrap_or(self.floor)
    }

    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// The files whose replies are held for `dir`.
    fn held_for(&self, dir: FileId) -> impl Iterator<Item = FileId> + '_ {
        self.replies
            .iter()
            .filter(move |(_, held)| held.dir == dir)
            .map(|(&ino, _)| ino)
    }

    fn remove(&mut self, ino: FileId) -> Option<Held> {
        let held = self.replies.remove(&ino)?;
        self.bytes -= held.bytes;
        Some(held)
    }

    /// Drops the oldest replies until the bounds hold.
    fn evict(&mut self) {
        while self.replies.len() > REPLIES_MAX || self.bytes > REPLY_BYTES_MAX {
            let Some((ino, seq)) = self.order.pop_front() else {
                return;
            };
            if self.replies.get(&ino).is_some_and(|held| held.seq == seq) {
                self.remove(ino);
            }
        }
        if self.order.len() > 2 * REPLIES_MAX {
            let replies = &self.replies;
            self.order
                .retain(|(ino, seq)| replies.get(ino).is_some_and(|h| h.seq == *seq));
        }
    }
}

/// The replies held for later opens, and what asking for them needs (see the module).
#[derive(Debug, Default)]
pub struct Ahead {
    inner: Mutex<Inner>,
}

impl Ahead {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("opens ahead poisoned")
    }

    /// A lookup or listing saw `attr` as `name` in `dir`.
    pub fn named(&self, dir: FileId, name: &[u8], attr: &Attr) {
        if attr.kind != FileKind::Regular as i32 {
            return;
        }
        let mut inner = self.inner();
        if inner.names.len() >= NAMES_MAX {
            inner.names.clear();
        }
        inner.names.insert(FileId(attr.ino), (dir, name.to_vec()));
    }

    /// Where `ino` was last seen by name.
    fn place(&self, ino: FileId) -> Option<(FileId, Vec<u8>)> {
        self.inner().names.get(&ino).cloned()
    }

    /// `dir`'s current epoch.
    fn epoch(&self, dir: FileId) -> u64 {
        self.inner().epoch(dir)
    }

    /// The directory of the reply held for `ino`, if any.
    fn held_in(&self, ino: FileId) -> Option<FileId> {
        self.inner().replies.get(&ino).map(|held| held.dir)
    }

    /// Takes the reply held for `ino` if it was asked for in `dir`'s current epoch.
    fn take(&self, ino: FileId, dir: FileId) -> Option<OpenReply> {
        let mut inner = self.inner();
        let current = inner.epoch(dir);
        let held = inner.remove(ino)?;
        (held.dir == dir && held.epoch == current).then_some(held.reply)
    }

    /// This client changed `ino` (its attributes, its links): the reply held for it is stale.
    pub fn forget(&self, ino: FileId) {
        self.inner().remove(ino);
    }

    /// The files whose replies are held for `dir` (not to be asked for again), at most
    /// `proto::limits::OPEN_SKIPS_MAX`.
    fn held_for(&self, dir: FileId) -> Vec<u64> {
        let inner = self.inner();
        let held = inner.held_for(dir);
        held.take(proto::limits::OPEN_SKIPS_MAX)
            .map(|ino| ino.0)
            .collect()
    }

    /// Holds `replies`, asked for in `dir`'s `epoch`, unless a recall ended it since.
    fn hold(&self, dir: FileId, epoch: u64, replies: Vec<OpenReply>) {
        let mut inner = self.inner();
        if inner.epoch(dir) != epoch {
            return;
        }
        for reply in replies {
            let Some(ino) = reply.attr.map(|attr| FileId(attr.ino)) else {
                continue;
            };
            inner.remove(ino);
            let bytes = reply_bytes(&reply);
            let seq = inner.next();
            inner.bytes += bytes;
            inner.order.push_back((ino, seq));
            let held = Held {
                dir,
                epoch,
                reply,
                bytes,
                seq,
            };
            inner.replies.insert(ino, held);
        }
        inner.evict();
    }

    /// `dir`'s lease is going back: its replies are dropped, and any asked for before now
    /// is stale when it arrives.
    pub fn drop_dir(&self, dir: FileId) {
        let mut inner = self.inner();
        let held: Vec<FileId> = inner.held_for(dir).collect();
        for ino in held {
            inner.remove(ino);
        }
        if inner.epochs.len() >= EPOCHS_MAX {
            inner.epochs.clear();
            inner.floor = inner.next();
        }
        let epoch = inner.next();
        inner.epochs.insert(dir, epoch);
    }

    /// The server forgot every lease: every reply is dropped, and any asked for before now
    /// is stale when it arrives.
    pub fn drop_all(&self) {
        let mut inner = self.inner();
        inner.replies.clear();
        inner.order.clear();
        inner.bytes = 0;
        inner.epochs.clear();
        inner.floor = inner.next();
    }

    /// Replies held (for tests).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.inner().replies.len()
    }
}

impl Vault {
    /// The `Open` reply for `ino`: one held from an earlier `OpenMany` under its directory's
    /// lease, else one `OpenMany` call under the lease (asking for it in the same call when
    /// this client may), holding the replies of the files after it, else an `Open` call.
    pub(super) async fn open_reply(&self, ino: FileId) -> Result<OpenReply, FsError> {
        if let Some(reply) = self.held_reply(ino) {
            return Ok(reply);
        }
        let remote = &self.shared.remote;
        let Some((dir, name)) = self.ahead.place(ino) else {
            return open_call(remote, ino).await;
        };
        if !remote.server_has(proto::features::OPEN_MANY) {
            return open_call(remote, ino).await;
        }
        // The server lists a directory by its names as stored: sealed in a keyed directory.
        let Ok(names) = self.shared.dir_names(dir).await else {
            return open_call(remote, ino).await;
        };
        let mut epoch = None;
        self.behind.while_held(dir, || {
            epoch = Some(self.ahead.epoch(dir));
            true
        });
        let lease = epoch.is_none();
        if lease && !self.may_ask_lease(dir) {
            return open_call(remote, ino).await;
        }
        // Asked for now, a lease is granted after this: a recall of it ends this epoch.
        let epoch = epoch.unwrap_or_else(|| self.ahead.epoch(dir));
        let changes = remote.changes();
        let request = OpenManyRequest {
            ino: ino.0,
            dir: dir.0,
            after: names.wire(&name),
            limit: AHEAD_PER_CALL,
            skip: self.ahead.held_for(dir),
            lease,
        };
        let reply = remote
            .send("open_many", request, |mut api, r| async move {
                api.open_many(r).await
            })
            .await;
        if lease {
            self.lease_answered(dir, reply.as_ref().is_ok_and(|r| r.granted));
        }
        let reply = reply?;
        // A change of this client's own that completed meanwhile may have come after the
        // server read the replies; a file open here may be changing.
        if remote.changes() == changes {
            let ahead: Vec<OpenReply> = reply
                .ahead
                .into_iter()
                .filter(|r| {
                    r.attr
                        .is_some_and(|a| self.table.file(FileId(a.ino)).is_none())
                })
                .collect();
            self.unwrap_ahead(&ahead);
            self.ahead.hold(dir, epoch, ahead);
        }
        reply
            .opened
            .ok_or_else(|| FsError::local(proto::ErrorKind::Internal, "OpenMany without the open"))
    }

    /// The reply held for `ino`, if the lease it was asked for under is still held.
    fn held_reply(&self, ino: FileId) -> Option<OpenReply> {
        let dir = self.ahead.held_in(ino)?;
        let mut taken = None;
        self.behind.while_held(dir, || {
            taken = self.ahead.take(ino, dir);
            taken.is_some()
        });
        self.ahead.forget(ino);
        taken
    }

    /// Unwraps the keys of files answered ahead in the background, so that their opens find
    /// them (checked as at an open, see `Keys::keys_from`).
    fn unwrap_ahead(&self, ahead: &[OpenReply]) {
        let wrapped: Vec<_> = ahead
            .iter()
            .filter(|reply| !reply.rekey_needed)
            .filter_map(|reply| Some((reply.attr?, reply.keys.clone())))
            .collect();
        if wrapped.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        self.shared.spawn(async move {
            for (attr, keys) in wrapped {
                // An open of the file says what was wrong.
                let _ = shared
                    .keys
                    .keys_from(FileId(attr.ino), &keys, attr.owner)
                    .await;
            }
        });
    }
}

/// About what `reply` takes in memory.
fn reply_bytes(reply: &OpenReply) -> usize {
    let chunk = reply.small_chunk.as_ref().map_or(0, |c| c.data.len());
    let keys: usize = reply.keys.iter().map(|k| k.blob.len() + 32).sum();
    256 + chunk + keys + reply.manifest.len() + reply.chunks.len() * 16
}

/// One `Open` call.
pub(crate) async fn open_call(
    remote: &crate::remote::Remote,
    ino: FileId,
) -> Result<OpenReply, FsError> {
    remote
        .send(
            "open",
            OpenRequest { ino: ino.0 },
            |mut api, r| async move { api.open(r).await },
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(ino: u64) -> OpenReply {
        OpenReply {
            attr: Some(Attr {
                ino,
                kind: FileKind::Regular as i32,
                ..Attr::default()
            }),
            ..OpenReply::default()
        }
    }

    #[test]
    fn a_reply_is_taken_once_and_only_in_its_epoch() {
        let ahead = Ahead::default();
        let (dir, other) = (FileId(1), FileId(2));
        let epoch = ahead.epoch(dir);
        ahead.hold(dir, epoch, vec![reply(10), reply(11), reply(12)]);
        assert_eq!(ahead.held_in(FileId(10)), Some(dir));
        assert!(ahead.take(FileId(10), dir).is_some());
        assert!(ahead.take(FileId(10), dir).is_none(), "taken once");
        assert!(
            ahead.take(FileId(11), other).is_none(),
            "asked for elsewhere"
        );
        assert_eq!(ahead.held_for(dir), vec![12]);
        ahead.forget(FileId(12));
        assert_eq!(ahead.held(), 0);
    }

    #[test]
    fn a_recall_drops_the_replies_and_voids_those_on_their_way() {
        let ahead = Ahead::default();
        let (dir, other) = (FileId(1), FileId(2));
        let asked = ahead.epoch(dir);
        ahead.hold(dir, asked, vec![reply(10)]);
        ahead.hold(other, ahead.epoch(other), vec![reply(20)]);
        ahead.drop_dir(dir);
        assert!(ahead.take(FileId(10), dir).is_none(), "dropped");
        ahead.hold(dir, asked, vec![reply(11)]);
        assert_eq!(ahead.held(), 1, "arrived after the recall: not held");
        assert!(ahead.take(FileId(20), other).is_some(), "another lease");
        let before_loss = ahead.epoch(other);
        ahead.drop_all();
        ahead.hold(other, before_loss, vec![reply(21)]);
        assert_eq!(ahead.held(), 0);
        ahead.hold(dir, ahead.epoch(dir), vec![reply(12)]);
        assert!(ahead.take(FileId(12), dir).is_some(), "a new grant's");
    }

    #[test]
    fn replies_are_bounded_oldest_first() {
        let ahead = Ahead::default();
        let dir = FileId(1);
        let epoch = ahead.epoch(dir);
        let many = (0..REPLIES_MAX as u64 + 10)
            .map(|i| reply(100 + i))
            .collect();
        ahead.hold(dir, epoch, many);
        assert_eq!(ahead.held(), REPLIES_MAX);
        assert!(ahead.held_in(FileId(100)).is_none(), "the oldest went");
        assert!(ahead.held_in(FileId(109 + REPLIES_MAX as u64)).is_some());
    }

    #[test]
    fn only_regular_files_are_named() {
        let ahead = Ahead::default();
        let mut attr = reply(5).attr.expect("attr");
        ahead.named(FileId(1), b"f", &attr);
        assert_eq!(ahead.place(FileId(5)), Some((FileId(1), b"f".to_vec())));
        attr.ino = 6;
        attr.kind = FileKind::Directory as i32;
        ahead.named(FileId(1), b"d", &attr);
        assert_eq!(ahead.place(FileId(6)), None);
    }
}
