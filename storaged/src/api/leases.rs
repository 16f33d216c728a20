//! The wire side of directory leases (`crate::leases` keeps the table): before a call, the
//! leases other clients hold on what it names are recalled and given back (`settle_leases`,
//! from what each request names, [`Names`]); and the calls that take, give back and listen
//! for leases.

use std::time::Instant;

use proto::v1::*;

use super::State;
use super::call::{Call, Context};
use crate::leases::{Holder, InProgress, RecallStream};
use crate::meta::{FileId, Kind};
use crate::ops::{Caller, OpError, access, tree};

/// Before a call of `me`: recalls the leases others hold on the directories it names, and on
/// a directory it removes or replaces, and waits until they are given back (see
/// `crate::leases`).
pub(super) async fn settle_leases<Q: Names>(
    state: &State,
    caller: &Caller,
    me: Option<Holder>,
    request: &Q,
) -> Option<InProgress> {
    if !state.leases.enabled() {
        return None;
    }
    let mut dirs: Vec<u64> = request.inodes();
    dirs.retain(|&ino| ino != 0);
    dirs.sort_unstable();
    dirs.dedup();
    // From here on no lease is granted on what the call names: had it settled before the
    // grant, the recall would miss it.
    let in_progress = state.leases.enter(me, &dirs, request.removes().is_some());
    if !state.leases.others_hold_any(me) {
        return in_progress;
    }
    let started = Instant::now();
    if let Some((parent, name)) = request.removes() {
        let (who, name, parent) = (caller.clone(), name.to_vec(), FileId(parent));
        if let Ok(found) = state
            .read(move |txn| tree::lookup(txn, &who, parent, &name))
            .await
            && found.kind == Kind::Directory
        {
            dirs.push(found.ino.0);
        }
    }
    if state.leases.settle(me, &dirs).await > 0 {
        state.metrics.record("recall", started.elapsed(), true);
    }
    in_progress
}

/// What a call names, for lease recalls: the inodes it reads or changes (0: none), and an
/// entry it removes or replaces, as the request's numbers (leases are kept by them).
pub(super) trait Names {
    fn inodes(&self) -> Vec<u64> {
        Vec::new()
    }
    fn removes(&self) -> Option<(u64, &[u8])> {
        None
    }
}

macro_rules! names_nothing {
    ($($request:ty),*) => { $(impl Names for $request {})* };
}

macro_rules! names_one {
    ($field:ident: $($request:ty),*) => {
        $(impl Names for $request {
            fn inodes(&self) -> Vec<u64> {
                vec![self.$field]
            }
        })*
    };
}

names_nothing!(
    LogoutRequest,
    ListPendingRequest,
    ApproveRequest,
    GetAuditHeadRequest,
    AnchorAuditRequest,
    GetUserRequest,
    CreateGroupRequest,
    SetGroupMemberRequest,
    GetGroupRequest,
    GetGroupKeyRequest,
    SyncRequest,
    StatFsRequest,
    LeaseRequest,
    RecallsRequest
);
names_one!(parent: LookupRequest, CreateRequest, MkdirRequest, MknodRequest, SymlinkRequest, UnlinkRequest);
names_one!(
    ino: GetAttrRequest,
    OpenRequest,
    SetAttrRequest,
    ReadLinkRequest,
    ReleaseRequest,
    ReadDirRequest,
    SetXattrRequest,
    GetXattrRequest,
    ListXattrRequest,
    RemoveXattrRequest,
    CommitChunksRequest,
    GetChunkRequest,
    ListChunksRequest,
    GetWrappedKeysRequest,
    ShareRequest,
    UnshareRequest,
    GetAclRequest
);

impl Names for LinkRequest {
    fn inodes(&self) -> Vec<u64> {
        vec![self.ino, self.new_parent]
    }
}

impl Names for PutChunkRequest {
    fn inodes(&self) -> Vec<u64> {
        vec![self.ino, self.create.as_ref().map_or(0, |c| c.parent)]
    }
}

impl Names for PutChunksRequest {
    fn inodes(&self) -> Vec<u64> {
        self.puts.iter().flat_map(Names::inodes).collect()
    }
}

impl Names for UnlinksRequest {
    fn inodes(&self) -> Vec<u64> {
        self.unlinks.iter().flat_map(Names::inodes).collect()
    }
}

impl Names for RmdirRequest {
    fn inodes(&self) -> Vec<u64> {
        vec![self.parent]
    }
    fn removes(&self) -> Option<(u64, &[u8])> {
        Some((self.parent, &self.name))
    }
}

impl Names for RenameRequest {
    fn inodes(&self) -> Vec<u64> {
        vec![self.parent, self.new_parent]
    }
    fn removes(&self) -> Option<(u64, &[u8])> {
        Some((self.new_parent, &self.new_name))
    }
}

/// The holder a lease call speaks for: the caller's named client.
fn holder(at: &Context, what: &str) -> Result<Holder, OpError> {
    let client = at
        .client
        .ok_or_else(|| OpError::invalid(format!("{what} the client's name (vault-client)")))?;
    Ok(Holder {
        uid: at.caller.uid,
        client,
    })
}

impl Call<LeaseReply> for LeaseRequest {
    async fn answer(self, at: Context) -> Result<LeaseReply, OpError> {
        let holder = holder(&at, "a lease needs")?;
        let leases = &at.state.leases;
        if self.give_back {
            leases.give_back(holder, self.dir);
            return Ok(LeaseReply { granted: false });
        }
        if !leases.enabled() {
            return Ok(LeaseReply { granted: false });
        }
        let dir = FileId(self.dir);
        let may_create = at
            .read(move |txn, who| {
                let dir = tree::getattr(txn, who, dir)?;
                Ok(dir.kind == Kind::Directory && access::may_write(who, &dir))
            })
            .await?;
        Ok(LeaseReply {
            granted: may_create && leases.grant(holder, self.dir),
        })
    }
}

impl Call<RecallStream> for RecallsRequest {
    async fn answer(self, at: Context) -> Result<RecallStream, OpError> {
        let holder = holder(&at, "recalls need")?;
        at.state
            .leases
            .listen(holder)
            .ok_or_else(|| OpError::invalid("this server grants no leases"))
    }
}
