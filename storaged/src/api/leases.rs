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

/// Before a call of `me`: recalls the leases others hold on the directories it names, on a
/// directory it removes or replaces, and on the directory of a file whose `Open` reply it
/// may change (a client may hold that reply, see `OpenMany`), and waits until they are given
/// back (see `crate::leases`).
pub(super) async fn settle_leases<Q: Names>(
    state: &State,
    caller: &Caller,
    me: Option<Holder>,
    request: &Q,
) -> Option<InProgress> {
    if !state.leases.enabled() {
        return None;
    }
    let files = request.files();
    let mut named: Vec<u64> = request.inodes();
    named.extend(&files);
    named.retain(|&ino| ino != 0);
    named.sort_unstable();
    named.dedup();
    // From here on no lease is granted on what the call names, and no `OpenMany` answers a
    // file it names: had it settled before, the recall would miss it.
    let in_progress = state.leases.enter(me, &named, request.removes().is_some());
    if !state.leases.others_hold_any(me) {
        return in_progress;
    }
    let started = Instant::now();
    let mut dirs = named;
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
    if !files.is_empty() {
        dirs.extend(parents_of(state, files).await);
    }
    if state.leases.settle(me, &dirs).await > 0 {
        state.metrics.record("recall", started.elapsed(), true);
    }
    in_progress
}

/// The directory each of `files` was first linked in (none for a file not found: the call
/// fails on its own).
async fn parents_of(state: &State, files: Vec<u64>) -> Vec<u64> {
    let parents = state
        .read(move |txn| {
            let mut parents = Vec::with_capacity(files.len());
            for &ino in &files {
                if let Some(inode) = txn.get_inode(FileId(ino))? {
                    parents.push(inode.parent.0);
                }
            }
            Ok(parents)
        })
        .await;
    parents.unwrap_or_default()
}

/// What a call names, for lease recalls: the inodes it reads or changes (0: none), the
/// files whose `Open` reply it may change, and an entry it removes or replaces, as the
/// request's numbers (leases are kept by them).
pub(super) trait Names {
    fn inodes(&self) -> Vec<u64> {
        Vec::new()
    }
    fn files(&self) -> Vec<u64> {
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
    ReadLinkRequest,
    ReleaseRequest,
    ReadDirRequest,
    GetXattrRequest,
    ListXattrRequest,
    GetChunkRequest,
    ListChunksRequest,
    GetWrappedKeysRequest,
    GetAclRequest
);

/// Requests that change a file's attributes, chunks, keys or ACL: what `Open` returns.
macro_rules! changes_one {
    ($($request:ty),*) => {
        $(impl Names for $request {
            fn inodes(&self) -> Vec<u64> {
                vec![self.ino]
            }
            fn files(&self) -> Vec<u64> {
                vec![self.ino]
            }
        })*
    };
}

changes_one!(
    SetAttrRequest,
    SetXattrRequest,
    RemoveXattrRequest,
    CommitChunksRequest,
    ShareRequest,
    UnshareRequest
);

/// A link changes the file's link count: the directory it is in already is recalled too.
impl Names for LinkRequest {
    fn inodes(&self) -> Vec<u64> {
        vec![self.ino, self.new_parent]
    }
    fn files(&self) -> Vec<u64> {
        vec![self.ino]
    }
}

impl Names for PutChunkRequest {
    fn inodes(&self) -> Vec<u64> {
        vec![self.ino, self.create.as_ref().map_or(0, |c| c.parent)]
    }
    fn files(&self) -> Vec<u64> {
        // A new file has no reply anyone holds yet.
        match (self.commit, &self.create) {
            (true, None) => vec![self.ino],
            _ => Vec::new(),
        }
    }
}

impl Names for PutChunksRequest {
    fn inodes(&self) -> Vec<u64> {
        self.puts.iter().flat_map(Names::inodes).collect()
    }
    fn files(&self) -> Vec<u64> {
        self.puts.iter().flat_map(Names::files).collect()
    }
}

impl Names for OpenManyRequest {
    fn inodes(&self) -> Vec<u64> {
        vec![self.ino]
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
        Ok(LeaseReply {
            granted: grant(&at, holder, self.dir).await?,
        })
    }
}

/// Grants `dir`'s lease to `holder`, the caller's client, if the caller may create names
/// there and nothing stands against it (`crate::leases::Leases::grant`).
pub(super) async fn grant(at: &Context, holder: Holder, dir: u64) -> Result<bool, OpError> {
    let leases = &at.state.leases;
    if !leases.enabled() {
        return Ok(false);
    }
    let ino = FileId(dir);
    let may_create = at
        .read(move |txn, who| {
            let dir = tree::getattr(txn, who, ino)?;
            Ok(dir.kind == Kind::Directory && access::may_write(who, &dir))
        })
        .await?;
    Ok(may_create && leases.grant(holder, dir))
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
