//! Group members and the group's keys (docs/format.md section 5.3). A group has its own key
//! pairs; the administrator signs the group's record (name, members, current public keys) and
//! wraps its private keys to every member and to itself. Adding a member wraps the keys it
//! already has to the newcomer; removing one makes a new key pair (a new epoch) and wraps all
//! of them again to those who stay, so the removed member cannot open keys wrapped from then on.

use anyhow::{Context, bail};
use client::Connection;
use crypto::{GroupKeys, Recipient, Wrapper};
use format::acl::Principal;
use format::group::{GroupRecord, SignedGroup};
use format::ids::VaultId;
use identity::{Identity, PublicIdentity};
use proto::v1::{
    GetGroupKeyRequest, GetGroupRequest, GetUserRequest, GroupKey, SetGroupMemberRequest,
    get_group_request, get_user_request,
};

/// A certified user's keys: the administrator checks its own certificate on them, so that a
/// server that swapped a member's keys gets no group key wrapped to its own.
async fn certified(
    connection: &Connection,
    (vault, admin): (VaultId, &Identity),
    uid: u32,
) -> anyhow::Result<PublicIdentity> {
    let by = Some(get_user_request::By::Uid(uid));
    let user = connection
        .api()
        .get_user(GetUserRequest { by })
        .await
        .with_context(|| format!("looking up user {uid}"))?
        .into_inner();
    let public = PublicIdentity::from_slices(&user.signing_key, &user.wrapping_key)
        .context("the server sent malformed keys")?;
    let message =
        proto::certificate_message(&vault.0, uid, &user.name, &public.signing, &public.wrapping);
    let certificate: [u8; 64] = user
        .certificate
        .as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("{} is not approved yet", user.name))?;
    admin
        .public()
        .verify(proto::domains::USER_CERTIFICATE, &message, &certificate)
        .map_err(|_| anyhow::anyhow!("{}'s keys are not the ones you approved", user.name))?;
    Ok(public)
}

/// The group's keys as the administrator holds them, checked against its signed record.
async fn current_keys(
    connection: &Connection,
    (vault, admin): (VaultId, &Identity),
    gid: u32,
) -> anyhow::Result<Option<(SignedGroup, GroupKeys)>> {
    let reply = connection
        .api()
        .get_group_key(GetGroupKeyRequest { gid })
        .await?
        .into_inner();
    if reply.record.is_empty() {
        return Ok(None);
    }
    let signed = SignedGroup::parse(&reply.record)?;
    admin
        .public()
        .verify(
            format::group::DOMAIN,
            &signed.record.signed_bytes(),
            &signed.signature,
        )
        .map_err(|_| anyhow::anyhow!("the group's record is not signed by your key"))?;
    let keys = GroupKeys::unwrap(&reply.blob, admin, vault, gid, &admin.public())
        .context("the group's keys wrapped to you do not open")?;
    if keys.newest().public().wrapping != signed.record.wrapping_key {
        bail!("the group's keys are not its record's");
    }
    Ok(Some((signed, keys)))
}

/// Adds (`member`) or removes user `name` to or from group `group`, with the group's new
/// signed record and its keys wrapped to whom they must reach.
pub async fn set_member(
    connection: &Connection,
    admin: &Identity,
    (group, name): (&str, &str),
    member: bool,
) -> anyhow::Result<Vec<u32>> {
    let vault = VaultId(
        connection
            .hello()
            .await?
            .vault_id
            .try_into()
            .map_err(|_| anyhow::anyhow!("the server sent a malformed vault ID"))?,
    );
    let by = Some(get_group_request::By::Name(group.to_string()));
    let found = connection
        .api()
        .get_group(GetGroupRequest { by })
        .await
        .with_context(|| format!("looking up group {group}"))?
        .into_inner();
    let by = Some(get_user_request::By::Name(name.to_string()));
    let uid = connection
        .api()
        .get_user(GetUserRequest { by })
        .await
        .with_context(|| format!("looking up user {name}"))?
        .into_inner()
        .uid;
    let mut members = found.members.clone();
    members.retain(|m| *m != uid);
    if member {
        members.push(uid);
        members.sort_unstable();
    } else if members.len() == found.members.len() {
        bail!("{name} is not in group {group}");
    }
    let gid = found.gid;
    let current = current_keys(connection, (vault, admin), gid).await?;
    let (epoch, keys, holders) = match current {
        None => (
            1,
            GroupKeys::generate(),
            [vec![0], members.clone()].concat(),
        ),
        Some((signed, keys)) if member => (signed.record.epoch, keys, vec![uid]),
        Some((_, keys)) => {
            let keys = keys
                .rotated()
                .context("the group has too many key epochs")?;
            (keys.epoch(), keys, [vec![0], members.clone()].concat())
        }
    };
    let record = GroupRecord {
        vault,
        gid,
        epoch,
        signing_key: keys.newest().public().signing,
        wrapping_key: keys.newest().public().wrapping,
        signer: 0,
        name: found.name.clone(),
        members: members.clone(),
    };
    let signature = admin.sign(format::group::DOMAIN, &record.signed_bytes());
    let mut wrapped = Vec::with_capacity(holders.len());
    for holder in holders {
        let wrapping_key = if holder == 0 {
            admin.public().wrapping
        } else {
            certified(connection, (vault, admin), holder)
                .await?
                .wrapping
        };
        let recipient = Recipient {
            principal: Principal::User(holder),
            wrapping_key,
        };
        let wrapper = Wrapper {
            uid: 0,
            identity: admin,
        };
        let blob = keys.wrap(vault, gid, recipient, wrapper);
        wrapped.push(GroupKey { uid: holder, blob });
    }
    let request = SetGroupMemberRequest {
        gid,
        uid,
        member,
        record: record.with_signature(&signature),
        keys: wrapped,
    };
    let group = connection
        .api()
        .set_group_member(request)
        .await?
        .into_inner();
    Ok(group.members)
}
