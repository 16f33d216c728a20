//! The tonic service: every call of vault.proto, one line each, handed to the request type
//! that answers it (see `call`).

use proto::v1::vault_server::Vault;
use proto::v1::*;
use tonic::{Request, Response, Status};

use super::Service;
use crate::leases::RecallStream;

/// Implements tonic's `Vault` from lines `name(Request) -> Reply = how;`: `how` is `call`
/// (with a session) or `call_public` (before one), and `name` is the call's name in logs and
/// metrics too.
macro_rules! calls {
    ($($name:ident($request:ty) -> $reply:ty = $how:ident;)*) => {
        #[tonic::async_trait]
        impl Vault for Service {
            type RecallsStream = RecallStream;

            $(async fn $name(&self, request: Request<$request>) -> Result<Response<$reply>, Status> {
                self.$how(stringify!($name), request).await
            })*
        }
    };
}

calls! {
    hello(HelloRequest) -> HelloReply = call_public;
    register(RegisterRequest) -> RegisterReply = call_public;
    challenge(ChallengeRequest) -> ChallengeReply = call_public;
    login(LoginRequest) -> LoginReply = call_public;
    logout(LogoutRequest) -> LogoutReply = call;
    list_pending(ListPendingRequest) -> ListPendingReply = call;
    approve(ApproveRequest) -> ApproveReply = call;
    get_user(GetUserRequest) -> User = call;
    create_group(CreateGroupRequest) -> Group = call;
    set_group_member(SetGroupMemberRequest) -> Group = call;
    get_group(GetGroupRequest) -> Group = call;
    get_group_key(GetGroupKeyRequest) -> GetGroupKeyReply = call;
    lookup(LookupRequest) -> Attr = call;
    get_attr(GetAttrRequest) -> Attr = call;
    open(OpenRequest) -> OpenReply = call;
    set_attr(SetAttrRequest) -> Attr = call;
    create(CreateRequest) -> Attr = call;
    mkdir(MkdirRequest) -> Attr = call;
    mknod(MknodRequest) -> Attr = call;
    symlink(SymlinkRequest) -> Attr = call;
    read_link(ReadLinkRequest) -> ReadLinkReply = call;
    link(LinkRequest) -> Attr = call;
    unlink(UnlinkRequest) -> UnlinkReply = call;
    rmdir(RmdirRequest) -> RmdirReply = call;
    rename(RenameRequest) -> RenameReply = call;
    release(ReleaseRequest) -> ReleaseReply = call;
    read_dir(ReadDirRequest) -> ReadDirReply = call;
    stat_fs(StatFsRequest) -> StatFsReply = call;
    sync(SyncRequest) -> SyncReply = call;
    set_xattr(SetXattrRequest) -> SetXattrReply = call;
    get_xattr(GetXattrRequest) -> GetXattrReply = call;
    list_xattr(ListXattrRequest) -> ListXattrReply = call;
    remove_xattr(RemoveXattrRequest) -> RemoveXattrReply = call;
    put_chunk(PutChunkRequest) -> PutChunkReply = call;
    put_chunks(PutChunksRequest) -> PutChunksReply = call;
    commit_chunks(CommitChunksRequest) -> Attr = call;
    get_chunk(GetChunkRequest) -> GetChunkReply = call;
    list_chunks(ListChunksRequest) -> ListChunksReply = call;
    get_wrapped_keys(GetWrappedKeysRequest) -> GetWrappedKeysReply = call;
    share(ShareRequest) -> Attr = call;
    unshare(UnshareRequest) -> Attr = call;
    get_acl(GetAclRequest) -> GetAclReply = call;
    lease(LeaseRequest) -> LeaseReply = call;
    recalls(RecallsRequest) -> Self::RecallsStream = call;
    get_audit_head(GetAuditHeadRequest) -> AuditHead = call;
    anchor_audit(AnchorAuditRequest) -> AnchorAuditReply = call;
    unlinks(UnlinksRequest) -> UnlinksReply = call;
    open_many(OpenManyRequest) -> OpenManyReply = call;
}
