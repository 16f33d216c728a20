//! `OpenMany`: a file's `Open`, and the `Open` replies of the small files after it in its
//! directory's listing, for the client that holds the directory's lease. The client opens
//! them later without a call while it holds the lease; a change to any of them recalls the
//! lease first (`api::leases::settle_leases`, through each request's `Names::files`).

use std::collections::HashSet;

use proto::limits::{OPEN_SKIPS_MAX, OPENS_AHEAD_MAX};
use proto::v1::*;

use super::get::{ReadOpen, SMALL_CHUNK_PLAINTEXT_BYTES, open_reply, read_open};
use crate::api::call::{Call, Context};
use crate::leases::Holder;
use crate::meta::{FileId, Kind, Txn};
use crate::ops::{Caller, OpError, tree};

/// Entries of the directory looked at for the files answered ahead, at most.
const LISTED_MAX: usize = 1024;

impl Call<OpenManyReply> for OpenManyRequest {
    async fn answer(self, at: Context) -> Result<OpenManyReply, OpError> {
        if self.skip.len() > OPEN_SKIPS_MAX {
            return Err(OpError::invalid(format!(
                "at most {OPEN_SKIPS_MAX} files to skip in one call"
            )));
        }
        let ino = FileId(self.ino);
        let limit = (self.limit as usize).min(OPENS_AHEAD_MAX);
        let holder = at.client.map(|client| Holder {
            uid: at.caller.uid,
            client,
        });
        let mut granted = false;
        if let Some(holder) = holder.filter(|_| self.lease) {
            // As a `Lease` call would; a refusal leaves the open to answer.
            granted = crate::api::leases::grant(&at, holder, self.dir)
                .await
                .unwrap_or(false);
        }
        let ahead = holder.filter(|&h| limit > 0 && at.state.leases.holds(h, self.dir));
        // A file another client's call is changing now is left out: the change may not be
        // visible yet, and that call may have settled before this lease was granted. Taken
        // before the transaction reads: a call entering after it recalls this lease.
        let mut left_out: HashSet<u64> = match ahead {
            Some(holder) => at.state.leases.named_by_others(holder),
            None => HashSet::new(),
        };
        left_out.extend(&self.skip);
        left_out.insert(self.ino);
        let wanted = Ahead {
            dir: FileId(self.dir),
            after: self.after,
            limit: if ahead.is_some() { limit } else { 0 },
            left_out,
        };
        let (opened, read_ahead) = at
            .read(move |txn, who| {
                let opened = read_open(txn, who, ino)?;
                Ok((opened, wanted.read(txn, who)))
            })
            .await?;
        let opened = open_reply(&at, opened).await;
        let mut ahead = Vec::with_capacity(read_ahead.len());
        for read in read_ahead {
            ahead.push(open_reply(&at, read).await);
        }
        Ok(OpenManyReply {
            opened: Some(opened),
            ahead,
            granted,
        })
    }
}

/// The files to answer besides the one opened.
struct Ahead {
    dir: FileId,
    after: Vec<u8>,
    limit: usize,
    left_out: HashSet<u64>,
}

impl Ahead {
    /// What `Open` replies for each file of `dir` after `after` in listing order that a
    /// change recalls `dir`'s lease for: a regular file of one link, first linked in `dir`
    /// (a change looks its lease up there), small, not left out; at most `limit`. A file
    /// that cannot be read is left out too (its own `Open` says why).
    fn read(&self, txn: &mut dyn Txn, who: &Caller) -> Vec<ReadOpen> {
        if self.limit == 0 {
            return Vec::new();
        }
        let listed = (self.limit * 2 + self.left_out.len()).min(LISTED_MAX);
        let Ok((listing, _)) = tree::readdir(txn, who, self.dir, &self.after, listed) else {
            return Vec::new();
        };
        let mut ahead = Vec::new();
        for (_, inode) in listing {
            if ahead.len() == self.limit {
                break;
            }
            let eligible = inode.kind == Kind::Regular
                && inode.nlink == 1
                && inode.parent == self.dir
                && inode.size <= SMALL_CHUNK_PLAINTEXT_BYTES
                && inode.orphaned_at.is_none()
                && !self.left_out.contains(&inode.ino.0);
            if eligible && let Ok(read) = read_open(txn, who, inode.ino) {
                ahead.push(read);
            }
        }
        ahead
    }
}
