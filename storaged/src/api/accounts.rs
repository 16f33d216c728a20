//! Users, groups and sessions over the wire: the public calls before a session (hello,
//! register, challenge, login), logout, and the administration of users and groups.

use std::sync::Arc;

use proto::v1::*;

use super::State;
use super::call::{Call, Context, PublicCall};
use super::wire::{group_by, group_to_wire, user_by, user_to_wire};
use crate::meta::{RecordKind, SignedKey, StoreError, Txn, now};
use crate::ops::{OpError, users};

impl PublicCall<HelloReply> for HelloRequest {
    async fn answer(self, state: Arc<State>) -> Result<HelloReply, OpError> {
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
    }
}

impl PublicCall<RegisterReply> for RegisterRequest {
    async fn answer(self, state: Arc<State>) -> Result<RegisterReply, OpError> {
        let settings = state.auth.settings().clone();
        let uid = state
            .write(move |txn| {
                let (name, signing, wrapping) = (&self.name, &self.signing_key, &self.wrapping_key);
                users::register(txn, &settings, name, signing, wrapping, &self.proof, now())
            })
            .await?;
        Ok(RegisterReply { uid })
    }
}

impl PublicCall<ChallengeReply> for ChallengeRequest {
    async fn answer(self, state: Arc<State>) -> Result<ChallengeReply, OpError> {
        Ok(ChallengeReply {
            challenge: state.auth.challenge(&self.name)?,
        })
    }
}

impl PublicCall<LoginReply> for LoginRequest {
    async fn answer(self, state: Arc<State>) -> Result<LoginReply, OpError> {
        let login = state
            .auth
            .login(
                &*state.store,
                &state.audit,
                &self.name,
                &self.challenge,
                &self.signature,
            )
            .await?;
        Ok(LoginReply {
            token: login.token,
            expires_unix: login.expires / 1_000_000_000,
            uid: login.uid,
            admin: login.admin,
        })
    }
}

impl Call<LogoutReply> for LogoutRequest {
    async fn answer(self, at: Context) -> Result<LogoutReply, OpError> {
        at.state.auth.logout(&*at.state.store, &at.token).await?;
        Ok(LogoutReply {})
    }
}

impl Call<ListPendingReply> for ListPendingRequest {
    async fn answer(self, at: Context) -> Result<ListPendingReply, OpError> {
        let pending = at.read(|txn, who| users::pending(txn, who)).await?;
        Ok(ListPendingReply {
            users: pending.iter().map(user_to_wire).collect(),
        })
    }
}

impl Call<ApproveReply> for ApproveRequest {
    async fn answer(self, at: Context) -> Result<ApproveReply, OpError> {
        let settings = at.state.auth.settings().clone();
        at.write_durably(move |txn, who| {
            let (name, certificate) = (&self.name, &self.certificate);
            users::approve(txn, who, &settings, name, self.uid, certificate, now())
        })
        .await?;
        Ok(ApproveReply {})
    }
}

impl Call<Group> for CreateGroupRequest {
    async fn answer(self, at: Context) -> Result<Group, OpError> {
        let group =
            at.write_durably(move |txn, who| users::create_group(txn, who, &self.name, now()));
        Ok(group_to_wire(&group.await?))
    }
}

impl Call<Group> for SetGroupMemberRequest {
    async fn answer(self, at: Context) -> Result<Group, OpError> {
        let (gid, uid, member) = (self.gid, self.uid, self.member);
        let change = users::MemberChange {
            record: self.record,
            keys: self.keys.into_iter().map(|k| (k.uid, k.blob)).collect(),
        };
        let group = at
            .write_durably(move |txn, who| {
                users::set_member(txn, who, gid, uid, member, &change, now())
            })
            .await?;
        Ok(Group {
            record: change_record(&at, gid).await?,
            ..group_to_wire(&group)
        })
    }
}

/// A group's signed record as stored (empty: none yet).
async fn change_record(at: &Context, gid: u32) -> Result<Vec<u8>, OpError> {
    let id = u64::from(gid);
    at.read(move |txn, _| {
        Ok(txn
            .get_signed(SignedKey(RecordKind::Group, id, 0))?
            .unwrap_or_default())
    })
    .await
}

impl Call<GetGroupKeyReply> for GetGroupKeyRequest {
    async fn answer(self, at: Context) -> Result<GetGroupKeyReply, OpError> {
        let (record, blob) = at
            .read(move |txn, who| users::group_key(txn, who, self.gid))
            .await?;
        Ok(GetGroupKeyReply { record, blob })
    }
}

/// The user or group that `find` looks up in one read, or `NotFound`; without `by`, the
/// call is `invalid`.
async fn find<B, T>(
    at: &Context,
    by: Option<B>,
    invalid: &str,
    find: fn(&mut dyn Txn, &B) -> Result<Option<T>, StoreError>,
) -> Result<T, OpError>
where
    B: Send + 'static,
    T: Send + 'static,
{
    let by = by.ok_or_else(|| OpError::invalid(invalid))?;
    let found = at.read(move |txn, _| Ok(find(txn, &by)?)).await?;
    found.ok_or(OpError::NotFound)
}

impl Call<User> for GetUserRequest {
    async fn answer(self, at: Context) -> Result<User, OpError> {
        let user = find(&at, self.by, "give a name or a uid", user_by).await?;
        Ok(user_to_wire(&user))
    }
}

impl Call<Group> for GetGroupRequest {
    async fn answer(self, at: Context) -> Result<Group, OpError> {
        let group = find(&at, self.by, "give a name or a gid", group_by).await?;
        Ok(Group {
            record: change_record(&at, group.gid).await?,
            ..group_to_wire(&group)
        })
    }
}
