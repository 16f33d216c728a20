//! The gRPC service: each call authenticates, runs one operation of `crate::ops` in a
//! metadata transaction (and the chunk store where chunks move), records metrics, and maps
//! errors to statuses carrying their [`ErrorKind`](proto::ErrorKind).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use format::envelope::Header;
use proto::v1::vault_server::Vault;
use proto::v1::*;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::auth::Auth;
use crate::chunkstore::{ChunkStore, ChunkStoreError};
use crate::leases::{Holder, InProgress, Leases, RecallStream};
use crate::meta::{self, ChunkRef, Durability, Inode, Kind, MetaStore, Principal, Time, Txn, now};
use crate::metrics::Metrics;
use crate::ops::chunks::Uploaded;
use crate::ops::tree::{AttrChanges, NewFile, NewNode, Rename, RenameMode};
use crate::ops::xattrs::SetMode;
use crate::ops::{Caller, OpError, access, chunks, sharing, tree, users, xattrs};

/// What every call shares.
pub struct State {
    pub store: Arc<dyn MetaStore>,
    pub chunks: Arc<dyn ChunkStore>,
    pub auth: Auth,
    pub metrics: Arc<Metrics>,
    pub audit: crate::audit::AuditQueue,
    /// Chunk files waiting to be claimed as descriptors by local clients.
    pub descriptors: Arc<crate::descriptors::Descriptors>,
    /// Directory leases held by clients (see `crate::leases`).
    pub leases: Arc<Leases>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "State({})", self.store.backend())
    }
}

#[derive(Clone, Debug)]
pub struct Service {
    pub state: Arc<State>,
}

impl State {
    pub async fn read<T, F>(&self, op: F) -> Result<T, OpError>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn Txn) -> Result<T, OpError> + Send + 'static,
    {
        meta::read(&*self.store, op).await
    }

    pub async fn write<T, F>(&self, op: F) -> Result<T, OpError>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn Txn) -> Result<T, OpError> + Send + 'static,
    {
        meta::write(&*self.store, op).await
    }

    /// A write for a request that may be `lazy` (see `Durability` in vault.proto).
    pub async fn write_as<T, F>(&self, lazy: bool, op: F) -> Result<T, OpError>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn Txn) -> Result<T, OpError> + Send + 'static,
    {
        let durability = if lazy {
            Durability::Visible
        } else {
            Durability::Durable
        };
        meta::write_as(&*self.store, durability, op).await
    }

    /// Creates a directory entry and its inode (mkdir, mknod, symlink); the caller's view of it.
    async fn create_node(
        &self,
        caller: Caller,
        parent: u64,
        name: Vec<u8>,
        node: NewNode,
        lazy: bool,
    ) -> Result<Attr, OpError> {
        let who = caller.clone();
        let (made, parent_version) = self
            .write_as(lazy, move |txn| {
                tree::create_node(txn, &who, parent, &name, &node, now())
            })
            .await?;
        Ok(named(&made, &caller, Some(parent_version)))
    }

    /// Runs blocking chunk-store work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn ChunkStore) -> Result<T, ChunkStoreError> + Send + 'static,
    ) -> Result<T, ChunkStoreError> {
        let chunks = self.chunks.clone();
        tokio::task::spawn_blocking(move || work(&*chunks))
            .await
            .expect("chunk store task panicked")
    }

    /// Queues a read-side audit event (see [`crate::audit::AuditQueue`]).
    async fn audit(&self, uid: u32, event: &'static str, ino: u64, detail: String) {
        self.audit.record(uid, event, ino, detail).await;
    }
}

/// Chunk generations an `Open` reply carries (a 32 GiB file); larger files page the rest.
const OPEN_CHUNKS_MAX: usize = 4096;

/// A file this small comes with its only chunk in the `Open` reply.
const SMALL_CHUNK_PLAINTEXT_BYTES: u64 = 64 * 1024;

/// A put of up to this many bytes into a store that defers its sync runs on the request's
/// thread: cheaper than a hand-off for so little. (Headers, small reads and unlinks always do.)
const INLINE_CHUNK_BYTES: usize = 128 * 1024;

fn status(error: &OpError) -> Status {
    use tonic::Code;
    let code = match error {
        OpError::NotFound | OpError::NoData => Code::NotFound,
        OpError::Exists => Code::AlreadyExists,
        OpError::AccessDenied(_) => Code::PermissionDenied,
        OpError::Unauthenticated(_) => Code::Unauthenticated,
        OpError::StaleGeneration { .. } => Code::Aborted,
        OpError::Invalid(_) | OpError::NameTooLong | OpError::BadChunk(_) => Code::InvalidArgument,
        OpError::NotEmpty | OpError::NotDirectory | OpError::IsDirectory => {
            Code::FailedPrecondition
        }
        OpError::TooLarge(_) => Code::OutOfRange,
        OpError::NotSupported(_) => Code::Unimplemented,
        OpError::Store(meta::StoreError::Unavailable(_)) => Code::Unavailable,
        OpError::Store(meta::StoreError::Conflict(_)) => Code::Aborted,
        OpError::Store(meta::StoreError::Corrupt(_)) => Code::DataLoss,
        OpError::Store(meta::StoreError::SchemaTooNew { .. }) => Code::Internal,
    };
    let mut status = Status::new(code, error.to_string());
    if let Ok(value) = error.kind().wire_name().parse() {
        status.metadata_mut().insert(proto::ERROR_KIND_KEY, value);
    }
    status
}

fn chunk_error(error: ChunkStoreError) -> OpError {
    match error {
        ChunkStoreError::Exists { .. } => OpError::Store(meta::StoreError::Conflict(
            "this chunk generation was already uploaded; seal again with a new generation".into(),
        )),
        ChunkStoreError::Damaged { .. } | ChunkStoreError::Missing { .. } => {
            tracing::error!(%error, "chunk store");
            OpError::BadChunk(error.to_string())
        }
        ChunkStoreError::Io { .. } => {
            OpError::Store(meta::StoreError::Unavailable(error.to_string()))
        }
    }
}

fn timestamp(time: Time) -> Timestamp {
    Timestamp {
        seconds: time.div_euclid(1_000_000_000),
        nanos: time.rem_euclid(1_000_000_000) as u32,
    }
}

fn time_of(stamp: Option<&Timestamp>) -> Result<Option<Time>, OpError> {
    stamp
        .map(|t| {
            t.as_nanos().ok_or_else(|| {
                OpError::invalid("timestamp out of range (or nanoseconds past 999,999,999)")
            })
        })
        .transpose()
}

fn kind_to_wire(kind: Kind) -> FileKind {
    match kind {
        Kind::Regular => FileKind::Regular,
        Kind::Directory => FileKind::Directory,
        Kind::Symlink => FileKind::Symlink,
        Kind::Fifo => FileKind::Fifo,
        Kind::Socket => FileKind::Socket,
        Kind::CharDevice => FileKind::CharDevice,
        Kind::BlockDevice => FileKind::BlockDevice,
    }
}

/// The attributes for the reply to a change that gave `inode` a name in a directory now at
/// `parent_version` (none: no name was added).
fn named(inode: &Inode, caller: &Caller, parent_version: Option<u64>) -> Attr {
    Attr {
        parent_version: parent_version.unwrap_or(0),
        ..attr(inode, caller)
    }
}

pub fn attr(inode: &Inode, caller: &Caller) -> Attr {
    Attr {
        ino: inode.ino,
        kind: kind_to_wire(inode.kind) as i32,
        perm: inode.perm,
        uid: inode.uid,
        gid: inode.gid,
        nlink: inode.nlink,
        size: inode.size,
        atime: Some(timestamp(inode.atime)),
        mtime: Some(timestamp(inode.mtime)),
        ctime: Some(timestamp(inode.ctime)),
        rdev: inode.rdev,
        owner: inode.owner,
        version: inode.version,
        may_read: access::may_read(caller, inode),
        may_write: access::may_write(caller, inode),
        parent_version: 0,
    }
}

fn principal_of(wire: Option<&proto::v1::Principal>) -> Result<Principal, OpError> {
    match wire.and_then(|p| p.kind) {
        Some(principal::Kind::User(uid)) => Ok(Principal::User(uid)),
        Some(principal::Kind::Group(gid)) => Ok(Principal::Group(gid)),
        None => Err(OpError::invalid("a principal is required")),
    }
}

fn principal_to_wire(principal: Principal) -> proto::v1::Principal {
    proto::v1::Principal {
        kind: Some(match principal {
            Principal::User(uid) => principal::Kind::User(uid),
            Principal::Group(gid) => principal::Kind::Group(gid),
        }),
    }
}

fn wrapped_keys_of(keys: &[WrappedKey]) -> Result<Vec<(Principal, Vec<u8>)>, OpError> {
    keys.iter()
        .map(|k| Ok((principal_of(k.principal.as_ref())?, k.blob.clone())))
        .collect()
}

fn user_to_wire(user: &meta::User) -> User {
    User {
        uid: user.uid,
        name: user.name.clone(),
        signing_key: user.signing_key.to_vec(),
        wrapping_key: user.wrapping_key.to_vec(),
        certificate: user.certificate.clone(),
    }
}

fn group_to_wire(group: &meta::Group) -> Group {
    Group {
        gid: group.gid,
        name: group.name.clone(),
        members: group.members.clone(),
    }
}

fn bearer<T>(request: &Request<T>) -> Result<String, OpError> {
    let header = request
        .metadata()
        .get("authorization")
        .ok_or_else(|| OpError::Unauthenticated("no session token; log in first".into()))?;
    header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
        .ok_or_else(|| OpError::Unauthenticated("malformed authorization header".into()))
}

impl Service {
    /// Runs an authenticated call: the caller, then `work`, with a span, metrics, and an audit
    /// event when access is denied.
    async fn serve<Q, T, F, Fut>(
        &self,
        op: &'static str,
        request: Request<Q>,
        work: F,
    ) -> Result<Response<T>, Status>
    where
        Q: Names,
        F: FnOnce(Arc<State>, Caller, Q) -> Fut,
        Fut: Future<Output = Result<T, OpError>>,
    {
        let started = Instant::now();
        let state = self.state.clone();
        let span = tracing::info_span!("request", op, uid = tracing::field::Empty);
        let outcome = async {
            let token = bearer(&request)?;
            let caller = state.auth.authenticate(&*state.store, &token).await?;
            tracing::Span::current().record("uid", caller.uid);
            let uid = caller.uid;
            let me = client_of(&request).map(|client| Holder { uid, client });
            let request = request.into_inner();
            let _in_progress = settle_leases(&state, &caller, me, &request).await;
            let outcome = work(state.clone(), caller, request).await;
            if let Err(OpError::AccessDenied(reason)) = &outcome {
                tracing::warn!(%reason, "access denied");
                state
                    .audit(uid, "access-denied", 0, format!("{op}: {reason}"))
                    .await;
            }
            outcome
        }
        .instrument(span.clone())
        .await;
        self.finish(op, started, outcome, &span)
    }

    /// Runs a call that needs no session (hello, register, challenge, login).
    async fn serve_public<Q, T, F, Fut>(
        &self,
        op: &'static str,
        request: Request<Q>,
        work: F,
    ) -> Result<Response<T>, Status>
    where
        F: FnOnce(Arc<State>, Q) -> Fut,
        Fut: Future<Output = Result<T, OpError>>,
    {
        let started = Instant::now();
        let span = tracing::info_span!("request", op);
        let outcome = work(self.state.clone(), request.into_inner())
            .instrument(span.clone())
            .await;
        self.finish(op, started, outcome, &span)
    }

    fn finish<T>(
        &self,
        op: &'static str,
        started: Instant,
        outcome: Result<T, OpError>,
        span: &tracing::Span,
    ) -> Result<Response<T>, Status> {
        let elapsed = started.elapsed();
        self.state.metrics.record(op, elapsed, outcome.is_ok());
        span.in_scope(|| match &outcome {
            Ok(_) => tracing::debug!(micros = elapsed.as_micros() as u64, "ok"),
            // A filesystem answers these all the time (a lookup before a create, a missing
            // attribute): not worth a log line each.
            Err(
                error @ (OpError::NotFound | OpError::Exists | OpError::NotEmpty | OpError::NoData),
            ) => tracing::debug!(micros = elapsed.as_micros() as u64, %error, "refused"),
            Err(error) => tracing::info!(micros = elapsed.as_micros() as u64, %error, "refused"),
        });
        outcome.map(Response::new).map_err(|e| status(&e))
    }
}

/// The client a call names (`vault-client`), if any.
fn client_of<Q>(request: &Request<Q>) -> Option<u64> {
    let value = request.metadata().get(proto::CLIENT_KEY)?.to_str().ok()?;
    u64::from_str_radix(value, 16).ok()
}

/// Before a call of `me`: recalls the leases others hold on the directories it names, and on
/// a directory it removes or replaces, and waits until they are given back (see
/// `crate::leases`).
async fn settle_leases<Q: Names>(
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
        let (who, name) = (caller.clone(), name.to_vec());
        if let Ok(found) = state
            .read(move |txn| tree::lookup(txn, &who, parent, &name))
            .await
            && found.kind == Kind::Directory
        {
            dirs.push(found.ino);
        }
    }
    if state.leases.settle(me, &dirs).await > 0 {
        state.metrics.record("recall", started.elapsed(), true);
    }
    in_progress
}

/// What a call names, for lease recalls: the inodes it reads or changes (0: none), and an
/// entry it removes or replaces.
trait Names {
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
    GetUserRequest,
    CreateGroupRequest,
    SetGroupMemberRequest,
    GetGroupRequest,
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

/// Stores a sealed chunk, and commits it (creating its file) if asked: `PutChunk`, and each
/// put of `PutChunks`.
async fn put_chunk(
    state: Arc<State>,
    caller: Caller,
    r: PutChunkRequest,
) -> Result<PutChunkReply, OpError> {
    let header = Header::parse(&r.data).map_err(|e| OpError::BadChunk(e.to_string()))?;
    let vault = state.auth.settings().vault;
    let who = caller.clone();
    let (ino, index) = (r.ino, r.index);
    let create = match &r.create {
        None => {
            state
                .read(move |txn| chunks::check_upload(txn, &who, vault, ino, index, &header))
                .await?;
            None
        }
        Some(create) => {
            if !r.commit || create.ino != ino {
                return Err(OpError::invalid(
                    "a put that creates its file must commit, and name the same inode",
                ));
            }
            // The file does not exist yet: its header is all there is to check now;
            // the commit below checks the rest with the creation.
            chunks::check_header(vault, ino, index, &header)?;
            Some(new_file(create)?)
        }
    };
    if r.set_attr.is_some() && !r.commit {
        return Err(OpError::invalid(
            "a put that changes attributes must commit",
        ));
    }
    let changes = commit_attr_changes(r.set_attr.as_ref())?;
    let chunk = ChunkRef {
        ino,
        index,
        generation: header.generation,
    };
    if r.data.len() <= INLINE_CHUNK_BYTES && state.chunks.defers() {
        state.chunks.put(chunk, &r.data)
    } else {
        let data = r.data.clone();
        state.blocking(move |store| store.put(chunk, &data)).await
    }
    .map_err(chunk_error)?;
    state.metrics.bytes_in(r.data.len());
    if !r.commit {
        return Ok(PutChunkReply {
            generation: header.generation,
            attr: None,
        });
    }
    let upload = Uploaded::from_header(&header, r.data.len() as u64, r.base_generation);
    let who = caller.clone();
    let committed = state
        .write_as(r.lazy, move |txn| {
            let now = now();
            let mut parent_version = None;
            if let Some(file) = &create {
                (_, parent_version) = tree::create_file(txn, &who, file, true, now)?;
            }
            let commit = chunks::Commit {
                ino,
                chunks: &[upload],
                size: r.size,
                truncate: r.truncate,
                rekey: &[],
            };
            let file = chunks::commit(txn, &who, &commit, now)?;
            let file = set_after_commit(txn, &who, file, changes.as_ref(), now)?;
            Ok((file, parent_version))
        })
        .await;
    match committed {
        Ok((file, parent_version)) => Ok(PutChunkReply {
            generation: header.generation,
            attr: Some(named(&file, &caller, parent_version)),
        }),
        Err(error) => {
            // Never current, so nothing refers to it: remove it now.
            let _ = state.chunks.delete(chunk);
            Err(error)
        }
    }
}

/// The file a `Create` request asks for.
fn new_file(r: &CreateRequest) -> Result<NewFile, OpError> {
    let wrapped_keys = wrapped_keys_of(&r.wrapped_keys)?;
    let node = NewNode {
        kind: Kind::Regular,
        perm: r.perm,
        uid: r.uid,
        gid: r.gid,
        rdev: 0,
        target: Vec::new(),
        ino: Some(r.ino),
    };
    Ok(NewFile {
        parent: r.parent,
        name: r.name.clone(),
        node,
        wrapped_keys,
    })
}

/// Counts and audits a chunk going out to the caller `uid`, as bytes or as a descriptor.
async fn chunk_read(state: &State, uid: u32, chunk: ChunkRef, bytes: usize) {
    state.metrics.bytes_out(bytes);
    let detail = format!("{}@{}", chunk.index, chunk.generation);
    state.audit(uid, "chunk-read", chunk.ino, detail).await;
}

/// A small file's only chunk for an `Open` reply, if it reads and checks out now (otherwise
/// the client's `GetChunk` reports the problem).
async fn small_chunk(
    state: &Arc<State>,
    caller: &Caller,
    ino: u64,
    generation: u64,
) -> Option<GetChunkReply> {
    let chunk = ChunkRef {
        ino,
        index: 0,
        generation,
    };
    let sealed = state.chunks.get(chunk).ok()?;
    check_stored(state, chunk, &sealed).ok()?;
    chunk_read(state, caller.uid, chunk, sealed.len()).await;
    Some(GetChunkReply {
        generation,
        data: sealed,
        descriptor_ticket: Vec::new(),
    })
}

/// What a `SetAttr` asks to change; "now" is the server's clock.
fn attr_changes(r: &SetAttrRequest) -> Result<AttrChanges, OpError> {
    let stamp = |now_flag: bool, given: Option<&Timestamp>| -> Result<Option<Time>, OpError> {
        if now_flag {
            Ok(Some(now()))
        } else {
            time_of(given)
        }
    };
    Ok(AttrChanges {
        perm: r.perm,
        uid: r.uid,
        gid: r.gid,
        size: r.size,
        atime: stamp(r.atime_now, r.atime.as_ref())?,
        mtime: stamp(r.mtime_now, r.mtime.as_ref())?,
    })
}

/// The file after a commit (`file`, with its chunks committed) and then its attribute changes.
fn set_after_commit(
    txn: &mut dyn Txn,
    caller: &Caller,
    file: Inode,
    changes: Option<&AttrChanges>,
    now: Time,
) -> Result<Inode, OpError> {
    match changes {
        Some(changes) => tree::setattr(txn, caller, file.ino, changes, now),
        None => Ok(file),
    }
}

/// The attribute changes a commit carries, applied after its chunks.
fn commit_attr_changes(set_attr: Option<&SetAttrRequest>) -> Result<Option<AttrChanges>, OpError> {
    let Some(set_attr) = set_attr else {
        return Ok(None);
    };
    if set_attr.size.is_some() {
        return Err(OpError::invalid(
            "the attribute changes of a commit cannot set a size",
        ));
    }
    attr_changes(set_attr).map(Some)
}

/// Reads the header and length of an uploaded chunk for a commit.
async fn uploaded(state: &State, ino: u64, commit: &ChunkCommit) -> Result<Uploaded, OpError> {
    let chunk = ChunkRef {
        ino,
        index: commit.index,
        generation: commit.generation,
    };
    let (header, len) = state.chunks.header(chunk).map_err(|e| match e {
        ChunkStoreError::Missing { .. } => OpError::invalid(format!(
            "chunk {} generation {} was not uploaded",
            commit.index, commit.generation
        )),
        other => chunk_error(other),
    })?;
    if u64::from(header.index) != commit.index || header.generation != commit.generation {
        return Err(OpError::BadChunk(format!(
            "stored chunk {chunk:?} has a different header"
        )));
    }
    Ok(Uploaded::from_header(&header, len, commit.base_generation))
}

#[tonic::async_trait]
impl Vault for Service {
    async fn hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        self.serve_public("hello", request, |state, _| async move {
            let settings = state.auth.settings();
            Ok(HelloReply {
                vault_id: settings.vault.0.to_vec(),
                admin_signing_key: settings.admin.signing.to_vec(),
                admin_wrapping_key: settings.admin.wrapping.to_vec(),
                server_version: env!("CARGO_PKG_VERSION").into(),
                features: proto::features::ALL
                    .iter()
                    .chain(state.leases.enabled().then_some(&proto::features::LEASES))
                    .map(|f| f.to_string())
                    .collect(),
            })
        })
        .await
    }

    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        self.serve_public("register", request, |state, r| async move {
            let settings = state.auth.settings().clone();
            let uid = state
                .write(move |txn| {
                    users::register(
                        txn,
                        &settings,
                        &r.name,
                        &r.signing_key,
                        &r.wrapping_key,
                        &r.proof,
                        now(),
                    )
                })
                .await?;
            Ok(RegisterReply { uid })
        })
        .await
    }

    async fn challenge(
        &self,
        request: Request<ChallengeRequest>,
    ) -> Result<Response<ChallengeReply>, Status> {
        self.serve_public("challenge", request, |state, r| async move {
            Ok(ChallengeReply {
                challenge: state.auth.challenge(&r.name),
            })
        })
        .await
    }

    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<LoginReply>, Status> {
        self.serve_public("login", request, |state, r| async move {
            let login = state
                .auth
                .login(&*state.store, &r.name, &r.challenge, &r.signature)
                .await?;
            Ok(LoginReply {
                token: login.token,
                expires_unix: login.expires / 1_000_000_000,
                uid: login.uid,
                admin: login.admin,
            })
        })
        .await
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutReply>, Status> {
        let token = bearer(&request).map_err(|e| status(&e))?;
        self.serve("logout", request, |state, _, _| async move {
            state.auth.logout(&*state.store, &token).await?;
            Ok(LogoutReply {})
        })
        .await
    }

    async fn list_pending(
        &self,
        request: Request<ListPendingRequest>,
    ) -> Result<Response<ListPendingReply>, Status> {
        self.serve("list_pending", request, |state, caller, _| async move {
            let pending = state.read(move |txn| users::pending(txn, &caller)).await?;
            Ok(ListPendingReply {
                users: pending.iter().map(user_to_wire).collect(),
            })
        })
        .await
    }

    async fn approve(
        &self,
        request: Request<ApproveRequest>,
    ) -> Result<Response<ApproveReply>, Status> {
        self.serve("approve", request, |state, caller, r| async move {
            let settings = state.auth.settings().clone();
            state
                .write(move |txn| {
                    users::approve(
                        txn,
                        &caller,
                        &settings,
                        &r.name,
                        r.uid,
                        &r.certificate,
                        now(),
                    )
                })
                .await?;
            Ok(ApproveReply {})
        })
        .await
    }

    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        self.serve("get_user", request, |state, _, r| async move {
            let by =
                r.by.ok_or_else(|| OpError::invalid("give a name or a uid"))?;
            let user = state
                .read(move |txn| {
                    Ok(match &by {
                        get_user_request::By::Name(name) => txn.get_user_by_name(name)?,
                        get_user_request::By::Uid(uid) => txn.get_user(*uid)?,
                    })
                })
                .await?
                .ok_or(OpError::NotFound)?;
            Ok(user_to_wire(&user))
        })
        .await
    }

    async fn create_group(
        &self,
        request: Request<CreateGroupRequest>,
    ) -> Result<Response<Group>, Status> {
        self.serve("create_group", request, |state, caller, r| async move {
            let group = state
                .write(move |txn| users::create_group(txn, &caller, &r.name, now()))
                .await?;
            Ok(group_to_wire(&group))
        })
        .await
    }

    async fn set_group_member(
        &self,
        request: Request<SetGroupMemberRequest>,
    ) -> Result<Response<Group>, Status> {
        self.serve("set_group_member", request, |state, caller, r| async move {
            let group = state
                .write(move |txn| users::set_member(txn, &caller, r.gid, r.uid, r.member, now()))
                .await?;
            Ok(group_to_wire(&group))
        })
        .await
    }

    async fn get_group(
        &self,
        request: Request<GetGroupRequest>,
    ) -> Result<Response<Group>, Status> {
        self.serve("get_group", request, |state, _, r| async move {
            let by =
                r.by.ok_or_else(|| OpError::invalid("give a name or a gid"))?;
            let group = state
                .read(move |txn| {
                    Ok(match &by {
                        get_group_request::By::Name(name) => txn.get_group_by_name(name)?,
                        get_group_request::By::Gid(gid) => txn.get_group(*gid)?,
                    })
                })
                .await?
                .ok_or(OpError::NotFound)?;
            Ok(group_to_wire(&group))
        })
        .await
    }

    async fn lookup(&self, request: Request<LookupRequest>) -> Result<Response<Attr>, Status> {
        self.serve("lookup", request, |state, caller, r| async move {
            let who = caller.clone();
            let found = state
                .read(move |txn| tree::lookup(txn, &who, r.parent, &r.name))
                .await?;
            Ok(attr(&found, &caller))
        })
        .await
    }

    async fn get_attr(&self, request: Request<GetAttrRequest>) -> Result<Response<Attr>, Status> {
        self.serve("get_attr", request, |state, caller, r| async move {
            let who = caller.clone();
            let found = state
                .read(move |txn| tree::getattr(txn, &who, r.ino))
                .await?;
            Ok(attr(&found, &caller))
        })
        .await
    }

    async fn open(&self, request: Request<OpenRequest>) -> Result<Response<OpenReply>, Status> {
        self.serve("open", request, |state, caller, r| async move {
            let who = caller.clone();
            let (inode, (chunks, more_chunks), keys) = state
                .read(move |txn| {
                    let inode = tree::getattr(txn, &who, r.ino)?;
                    let listed = match inode.kind {
                        Kind::Regular => chunks::list(txn, &who, r.ino, 0, OPEN_CHUNKS_MAX)?,
                        _ => (Vec::new(), false),
                    };
                    let keys = sharing::my_wrapped_keys(txn, &who, r.ino)?;
                    Ok((inode, listed, keys))
                })
                .await?;
            let small_chunk = match chunks.as_slice() {
                [(0, generation)] if inode.size <= SMALL_CHUNK_PLAINTEXT_BYTES => {
                    small_chunk(&state, &caller, r.ino, *generation).await
                }
                _ => None,
            };
            Ok(OpenReply {
                small_chunk,
                attr: Some(attr(&inode, &caller)),
                chunks: chunks
                    .into_iter()
                    .map(|(index, generation)| ChunkInfo { index, generation })
                    .collect(),
                more_chunks,
                keys: keys
                    .into_iter()
                    .map(|(p, blob)| WrappedKey {
                        principal: Some(principal_to_wire(p)),
                        blob,
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn set_attr(&self, request: Request<SetAttrRequest>) -> Result<Response<Attr>, Status> {
        self.serve("set_attr", request, |state, caller, r| async move {
            let changes = attr_changes(&r)?;
            let who = caller.clone();
            let changed = state
                .write_as(r.lazy, move |txn| {
                    tree::setattr(txn, &who, r.ino, &changes, now())
                })
                .await?;
            Ok(attr(&changed, &caller))
        })
        .await
    }

    async fn create(&self, request: Request<CreateRequest>) -> Result<Response<Attr>, Status> {
        self.serve("create", request, |state, caller, r| async move {
            let file = new_file(&r)?;
            let who = caller.clone();
            let (file, parent_version) = state
                .write_as(r.lazy, move |txn| {
                    tree::create_file(txn, &who, &file, r.exclusive, now())
                })
                .await?;
            Ok(named(&file, &caller, parent_version))
        })
        .await
    }

    async fn mkdir(&self, request: Request<MkdirRequest>) -> Result<Response<Attr>, Status> {
        self.serve("mkdir", request, |state, caller, r| async move {
            let node = NewNode {
                kind: Kind::Directory,
                perm: r.perm,
                uid: r.uid,
                gid: r.gid,
                rdev: 0,
                target: Vec::new(),
                ino: None,
            };
            state
                .create_node(caller, r.parent, r.name, node, r.lazy)
                .await
        })
        .await
    }

    async fn mknod(&self, request: Request<MknodRequest>) -> Result<Response<Attr>, Status> {
        self.serve("mknod", request, |state, caller, r| async move {
            let kind = match FileKind::try_from(r.kind) {
                Ok(FileKind::Fifo) => Kind::Fifo,
                Ok(FileKind::Socket) => Kind::Socket,
                Ok(FileKind::CharDevice) => Kind::CharDevice,
                Ok(FileKind::BlockDevice) => Kind::BlockDevice,
                _ => {
                    return Err(OpError::invalid(
                        "mknod makes fifos, sockets and device nodes",
                    ));
                }
            };
            let node = NewNode {
                kind,
                perm: r.perm,
                uid: r.uid,
                gid: r.gid,
                rdev: r.rdev,
                target: Vec::new(),
                ino: None,
            };
            state
                .create_node(caller, r.parent, r.name, node, r.lazy)
                .await
        })
        .await
    }

    async fn symlink(&self, request: Request<SymlinkRequest>) -> Result<Response<Attr>, Status> {
        self.serve("symlink", request, |state, caller, r| async move {
            let node = NewNode {
                kind: Kind::Symlink,
                perm: 0o777,
                uid: r.uid,
                gid: r.gid,
                rdev: 0,
                target: r.target,
                ino: None,
            };
            state
                .create_node(caller, r.parent, r.name, node, r.lazy)
                .await
        })
        .await
    }

    async fn read_link(
        &self,
        request: Request<ReadLinkRequest>,
    ) -> Result<Response<ReadLinkReply>, Status> {
        self.serve("read_link", request, |state, caller, r| async move {
            let target = state
                .read(move |txn| tree::readlink(txn, &caller, r.ino))
                .await?;
            Ok(ReadLinkReply { target })
        })
        .await
    }

    async fn link(&self, request: Request<LinkRequest>) -> Result<Response<Attr>, Status> {
        self.serve("link", request, |state, caller, r| async move {
            let who = caller.clone();
            let (linked, parent_version) = state
                .write_as(r.lazy, move |txn| {
                    tree::link(txn, &who, r.ino, r.new_parent, &r.new_name, now())
                })
                .await?;
            Ok(named(&linked, &caller, Some(parent_version)))
        })
        .await
    }

    async fn unlink(
        &self,
        request: Request<UnlinkRequest>,
    ) -> Result<Response<UnlinkReply>, Status> {
        self.serve("unlink", request, |state, caller, r| async move {
            let who = caller.clone();
            let unlinked = state
                .write_as(r.lazy, move |txn| {
                    tree::unlink(txn, &who, r.parent, &r.name, r.keep_open, now())
                })
                .await?;
            Ok(UnlinkReply {
                parent: Some(attr(&unlinked.parent, &caller)),
                nlink: unlinked.links_left,
            })
        })
        .await
    }

    async fn rmdir(&self, request: Request<RmdirRequest>) -> Result<Response<RmdirReply>, Status> {
        self.serve("rmdir", request, |state, caller, r| async move {
            let who = caller.clone();
            let parent = state
                .write_as(r.lazy, move |txn| {
                    tree::rmdir(txn, &who, r.parent, &r.name, now())
                })
                .await?;
            Ok(RmdirReply {
                parent: Some(attr(&parent, &caller)),
            })
        })
        .await
    }

    async fn rename(
        &self,
        request: Request<RenameRequest>,
    ) -> Result<Response<RenameReply>, Status> {
        self.serve("rename", request, |state, caller, r| async move {
            let mode = match (r.no_replace, r.exchange) {
                (false, false) => RenameMode::Replace,
                (true, false) => RenameMode::NoReplace,
                (false, true) => RenameMode::Exchange,
                (true, true) => {
                    return Err(OpError::invalid(
                        "no_replace and exchange exclude each other",
                    ));
                }
            };
            let replaced = state
                .write_as(r.lazy, move |txn| {
                    let rename = Rename {
                        parent: r.parent,
                        name: &r.name,
                        new_parent: r.new_parent,
                        new_name: &r.new_name,
                        mode,
                    };
                    tree::rename(txn, &caller, &rename, now())
                })
                .await?;
            Ok(RenameReply {
                replaced_ino: replaced.unwrap_or(0),
            })
        })
        .await
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseReply>, Status> {
        self.serve("release", request, |state, caller, r| async move {
            state
                .write_as(r.lazy, move |txn| tree::release(txn, &caller, r.ino, now()))
                .await?;
            Ok(ReleaseReply {})
        })
        .await
    }

    async fn read_dir(
        &self,
        request: Request<ReadDirRequest>,
    ) -> Result<Response<ReadDirReply>, Status> {
        self.serve("read_dir", request, |state, caller, r| async move {
            let who = caller.clone();
            let limit = if r.limit == 0 { 512 } else { r.limit as usize };
            let (entries, more) = state
                .read(move |txn| tree::readdir(txn, &who, r.ino, &r.after, limit))
                .await?;
            let entries = entries
                .iter()
                .map(|(name, inode)| DirEntry {
                    name: name.clone(),
                    attr: Some(attr(inode, &caller)),
                })
                .collect();
            Ok(ReadDirReply { entries, more })
        })
        .await
    }

    async fn sync(&self, request: Request<SyncRequest>) -> Result<Response<SyncReply>, Status> {
        self.serve("sync", request, |state, _caller, _r| async move {
            state.store.sync().await?;
            Ok(SyncReply {})
        })
        .await
    }

    async fn stat_fs(
        &self,
        request: Request<StatFsRequest>,
    ) -> Result<Response<StatFsReply>, Status> {
        self.serve("stat_fs", request, |state, _, _| async move {
            let space = state
                .blocking(|store| store.space())
                .await
                .map_err(chunk_error)?;
            let files = state.read(|txn| Ok(txn.count_inodes()?)).await?;
            Ok(StatFsReply {
                total_bytes: space.total_bytes,
                free_bytes: space.free_bytes,
                available_bytes: space.available_bytes,
                files,
                free_files: u64::MAX / 2 - files,
                block_bytes: space.block_bytes,
                name_bytes_max: proto::limits::NAME_BYTES_MAX as u32,
            })
        })
        .await
    }

    async fn set_xattr(
        &self,
        request: Request<SetXattrRequest>,
    ) -> Result<Response<SetXattrReply>, Status> {
        self.serve("set_xattr", request, |state, caller, r| async move {
            let mode = match (r.create_only, r.replace_only) {
                (false, false) => SetMode::Either,
                (true, false) => SetMode::CreateOnly,
                (false, true) => SetMode::ReplaceOnly,
                (true, true) => {
                    return Err(OpError::invalid(
                        "create_only and replace_only exclude each other",
                    ));
                }
            };
            state
                .write_as(r.lazy, move |txn| {
                    xattrs::set(txn, &caller, r.ino, &r.name, &r.value, mode, now())
                })
                .await?;
            Ok(SetXattrReply {})
        })
        .await
    }

    async fn get_xattr(
        &self,
        request: Request<GetXattrRequest>,
    ) -> Result<Response<GetXattrReply>, Status> {
        self.serve("get_xattr", request, |state, caller, r| async move {
            let value = state
                .read(move |txn| xattrs::get(txn, &caller, r.ino, &r.name))
                .await?;
            Ok(GetXattrReply { value })
        })
        .await
    }

    async fn list_xattr(
        &self,
        request: Request<ListXattrRequest>,
    ) -> Result<Response<ListXattrReply>, Status> {
        self.serve("list_xattr", request, |state, caller, r| async move {
            let names = state
                .read(move |txn| xattrs::list(txn, &caller, r.ino))
                .await?;
            Ok(ListXattrReply { names })
        })
        .await
    }

    async fn remove_xattr(
        &self,
        request: Request<RemoveXattrRequest>,
    ) -> Result<Response<RemoveXattrReply>, Status> {
        self.serve("remove_xattr", request, |state, caller, r| async move {
            state
                .write_as(r.lazy, move |txn| {
                    xattrs::remove(txn, &caller, r.ino, &r.name, now())
                })
                .await?;
            Ok(RemoveXattrReply {})
        })
        .await
    }

    async fn put_chunk(
        &self,
        request: Request<PutChunkRequest>,
    ) -> Result<Response<PutChunkReply>, Status> {
        self.serve("put_chunk", request, put_chunk).await
    }

    async fn put_chunks(
        &self,
        request: Request<PutChunksRequest>,
    ) -> Result<Response<PutChunksReply>, Status> {
        self.serve("put_chunks", request, |state, caller, r| async move {
            if r.puts.len() > proto::limits::PUTS_PER_CALL_MAX {
                return Err(OpError::invalid(format!(
                    "at most {} puts in one call",
                    proto::limits::PUTS_PER_CALL_MAX
                )));
            }
            // In order: the client learns its directories' versions from the replies.
            let mut outcomes = Vec::with_capacity(r.puts.len());
            for put in r.puts {
                outcomes.push(match put_chunk(state.clone(), caller.clone(), put).await {
                    Ok(reply) => PutChunkOutcome {
                        reply: Some(reply),
                        ..PutChunkOutcome::default()
                    },
                    Err(error) => PutChunkOutcome {
                        reply: None,
                        error_kind: error.kind() as i32,
                        error: error.to_string(),
                    },
                });
            }
            Ok(PutChunksReply { outcomes })
        })
        .await
    }

    async fn commit_chunks(
        &self,
        request: Request<CommitChunksRequest>,
    ) -> Result<Response<Attr>, Status> {
        self.serve("commit_chunks", request, |state, caller, r| async move {
            if r.chunks.len() > 1024 {
                return Err(OpError::TooLarge(
                    "more than 1024 chunks in one commit".into(),
                ));
            }
            let mut uploads = Vec::with_capacity(r.chunks.len());
            for commit in &r.chunks {
                uploads.push(uploaded(&state, r.ino, commit).await?);
            }
            let rekey = wrapped_keys_of(&r.rekey)?;
            let changes = commit_attr_changes(r.set_attr.as_ref())?;
            let who = caller.clone();
            let file = state
                .write_as(r.lazy, move |txn| {
                    let now = now();
                    let commit = chunks::Commit {
                        ino: r.ino,
                        chunks: &uploads,
                        size: r.size,
                        truncate: r.truncate,
                        rekey: &rekey,
                    };
                    let file = chunks::commit(txn, &who, &commit, now)?;
                    set_after_commit(txn, &who, file, changes.as_ref(), now)
                })
                .await?;
            Ok(attr(&file, &caller))
        })
        .await
    }

    async fn get_chunk(
        &self,
        request: Request<GetChunkRequest>,
    ) -> Result<Response<GetChunkReply>, Status> {
        // Only a client on this machine, over the Unix socket, can take a descriptor.
        let local_uid = request
            .extensions()
            .get::<tonic::transport::server::UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .map(|peer| peer.uid());
        self.serve("get_chunk", request, |state, caller, r| async move {
            let (ino, index) = (r.ino, r.index);
            // A writer may replace the chunk between reading its generation and its file (and
            // the old file may be collected): then read both again, a bounded number of times.
            // A file still missing after that is gone, not replaced.
            let mut missing = None;
            for _ in 0..3 {
                let who = caller.clone();
                let generation = state
                    .read(move |txn| chunks::current(txn, &who, ino, index))
                    .await?;
                if generation == 0 {
                    return Ok(GetChunkReply::default());
                }
                let chunk = ChunkRef {
                    ino,
                    index,
                    generation,
                };
                let by_descriptor = local_uid.filter(|_| r.descriptor);
                if let Some(uid) = by_descriptor {
                    match state.blocking(move |store| store.open(chunk)).await {
                        Ok((file, header, len)) => {
                            check_stored_header(&state, chunk, &header)?;
                            // None: too many tickets wait; the bytes go out below.
                            if let Some(ticket) = state.descriptors.issue(file, uid) {
                                chunk_read(&state, caller.uid, chunk, len as usize).await;
                                return Ok(GetChunkReply {
                                    generation,
                                    data: bytes::Bytes::new(),
                                    descriptor_ticket: ticket.to_vec(),
                                });
                            }
                        }
                        Err(error @ ChunkStoreError::Missing { .. }) => {
                            missing = Some(error);
                            continue;
                        }
                        Err(other) => return Err(chunk_error(other)),
                    }
                }
                match state.blocking(move |store| store.get(chunk)).await {
                    Ok(sealed) => {
                        check_stored(&state, chunk, &sealed)?;
                        chunk_read(&state, caller.uid, chunk, sealed.len()).await;
                        return Ok(GetChunkReply {
                            generation,
                            data: sealed,
                            descriptor_ticket: Vec::new(),
                        });
                    }
                    Err(error @ ChunkStoreError::Missing { .. }) => missing = Some(error),
                    Err(other) => return Err(chunk_error(other)),
                }
            }
            Err(missing.map_or_else(
                || {
                    OpError::Store(meta::StoreError::Conflict(
                        "chunk kept changing while read".into(),
                    ))
                },
                chunk_error,
            ))
        })
        .await
    }

    async fn list_chunks(
        &self,
        request: Request<ListChunksRequest>,
    ) -> Result<Response<ListChunksReply>, Status> {
        self.serve("list_chunks", request, |state, caller, r| async move {
            let limit = if r.limit == 0 { 1024 } else { r.limit as usize };
            let (list, more) = state
                .read(move |txn| chunks::list(txn, &caller, r.ino, r.from_index, limit))
                .await?;
            let chunks = list
                .into_iter()
                .map(|(index, generation)| ChunkInfo { index, generation })
                .collect();
            Ok(ListChunksReply { chunks, more })
        })
        .await
    }

    async fn get_wrapped_keys(
        &self,
        request: Request<GetWrappedKeysRequest>,
    ) -> Result<Response<GetWrappedKeysReply>, Status> {
        self.serve("get_wrapped_keys", request, |state, caller, r| async move {
            let keys = state
                .read(move |txn| sharing::my_wrapped_keys(txn, &caller, r.ino))
                .await?;
            let keys = keys
                .into_iter()
                .map(|(p, blob)| WrappedKey {
                    principal: Some(principal_to_wire(p)),
                    blob,
                })
                .collect();
            Ok(GetWrappedKeysReply { keys })
        })
        .await
    }

    async fn share(&self, request: Request<ShareRequest>) -> Result<Response<Attr>, Status> {
        self.serve("share", request, |state, caller, r| async move {
            let entry = r
                .entry
                .ok_or_else(|| OpError::invalid("an ACL entry is required"))?;
            let acl_entry = meta::AclEntry {
                principal: principal_of(entry.principal.as_ref())?,
                read: entry.read,
                write: entry.write,
            };
            let who = caller.clone();
            let node = state
                .write(move |txn| {
                    sharing::share(txn, &who, r.ino, acl_entry, &r.wrapped_key, now())
                })
                .await?;
            Ok(attr(&node, &caller))
        })
        .await
    }

    async fn unshare(&self, request: Request<UnshareRequest>) -> Result<Response<Attr>, Status> {
        self.serve("unshare", request, |state, caller, r| async move {
            let principal = principal_of(r.principal.as_ref())?;
            let who = caller.clone();
            let node = state
                .write(move |txn| sharing::unshare(txn, &who, r.ino, principal, now()))
                .await?;
            Ok(attr(&node, &caller))
        })
        .await
    }

    async fn get_acl(
        &self,
        request: Request<GetAclRequest>,
    ) -> Result<Response<GetAclReply>, Status> {
        self.serve("get_acl", request, |state, caller, r| async move {
            let (owner, acl) = state
                .read(move |txn| sharing::acl(txn, &caller, r.ino))
                .await?;
            let entries = acl
                .into_iter()
                .map(|e| AclEntry {
                    principal: Some(principal_to_wire(e.principal)),
                    read: e.read,
                    write: e.write,
                })
                .collect();
            Ok(GetAclReply { owner, entries })
        })
        .await
    }

    async fn lease(&self, request: Request<LeaseRequest>) -> Result<Response<LeaseReply>, Status> {
        let client = client_of(&request);
        self.serve("lease", request, |state, caller, r| async move {
            let Some(client) = client else {
                return Err(OpError::invalid(
                    "a lease needs the client's name (vault-client)",
                ));
            };
            let holder = Holder {
                uid: caller.uid,
                client,
            };
            if r.give_back {
                state.leases.give_back(holder, r.dir);
                return Ok(LeaseReply { granted: false });
            }
            if !state.leases.enabled() {
                return Ok(LeaseReply { granted: false });
            }
            let who = caller.clone();
            let may_create = state
                .read(move |txn| {
                    let dir = tree::getattr(txn, &who, r.dir)?;
                    Ok(dir.kind == Kind::Directory && access::may_write(&who, &dir))
                })
                .await?;
            Ok(LeaseReply {
                granted: may_create && state.leases.grant(holder, r.dir),
            })
        })
        .await
    }

    type RecallsStream = RecallStream;

    async fn recalls(
        &self,
        request: Request<RecallsRequest>,
    ) -> Result<Response<Self::RecallsStream>, Status> {
        let client = client_of(&request);
        self.serve("recalls", request, |state, caller, _| async move {
            let Some(client) = client else {
                return Err(OpError::invalid(
                    "recalls need the client's name (vault-client)",
                ));
            };
            state
                .leases
                .listen(Holder {
                    uid: caller.uid,
                    client,
                })
                .ok_or_else(|| OpError::invalid("this server grants no leases"))
        })
        .await
    }
}

/// A stored chunk must still be the one its name says: the server's own check before it
/// serves bytes (the client checks again, cryptographically).
fn check_stored(state: &State, chunk: ChunkRef, sealed: &[u8]) -> Result<(), OpError> {
    let header = Header::parse(sealed).map_err(|e| damaged(chunk, &e.to_string()))?;
    check_stored_header(state, chunk, &header)
}

/// The checks of [`check_stored`] on a header already parsed.
fn check_stored_header(state: &State, chunk: ChunkRef, header: &Header) -> Result<(), OpError> {
    let vault = state.auth.settings().vault;
    let expected_tag = format::envelope::file_tag(vault, format::ids::FileId(chunk.ino));
    if u64::from(header.index) != chunk.index || header.generation != chunk.generation {
        return Err(damaged(
            chunk,
            &format!(
                "holds chunk {} generation {}",
                header.index, header.generation
            ),
        ));
    }
    if header.file_tag != expected_tag {
        return Err(damaged(chunk, "belongs to another file"));
    }
    Ok(())
}

fn damaged(chunk: ChunkRef, reason: &str) -> OpError {
    tracing::error!(ino = %format!("{:016x}", chunk.ino), index = chunk.index, generation = chunk.generation, reason, "stored chunk file is damaged");
    OpError::BadChunk(format!(
        "stored chunk {} of {:016x} (generation {}) is damaged: {reason}",
        chunk.index, chunk.ino, chunk.generation
    ))
}
