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
    if identity::is_low_order_wrapping_key(&public.wrapping) {
        anyhow::bail!(
            "{}'s wrapping key is a low-order X25519 point: refusing it",
            user.name
        );
    }
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

/// The vault's ID, as the daemon says.
async fn vault_of(connection: &Connection) -> anyhow::Result<VaultId> {
    let bytes = connection.hello().await?.vault_id;
    Ok(VaultId(bytes.try_into().map_err(|_| {
        anyhow::anyhow!("the server sent a malformed vault ID")
    })?))
}

/// A group's ID and members, and a user's ID, by their names.
async fn look_up(
    connection: &Connection,
    group: &str,
    name: &str,
) -> anyhow::Result<(u32, Vec<u32>, u32)> {
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
    Ok((found.gid, found.members, uid))
}

/// `keys` wrapped by the administrator to each of `holders` (0: the administrator itself).
async fn wrapped_to(
    connection: &Connection,
    (vault, admin): (VaultId, &Identity),
    (gid, keys): (u32, &GroupKeys),
    holders: Vec<u32>,
) -> anyhow::Result<Vec<GroupKey>> {
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
        let blob = keys
            .wrap(vault, gid, recipient, wrapper)
            .with_context(|| format!("wrapping group {gid}'s keys to user {holder}"))?;
        wrapped.push(GroupKey { uid: holder, blob });
    }
    Ok(wrapped)
}

/// Adds (`member`) or removes user `name` to or from group `group`, with the group's new
/// signed record and its keys wrapped to whom they must reach. Returns the members.
pub async fn set_member(
    connection: &Connection,
    admin: &Identity,
    (group, name): (&str, &str),
    member: bool,
) -> anyhow::Result<Vec<u32>> {
    let vault = vault_of(connection).await?;
    let (gid, before, uid) = look_up(connection, group, name).await?;
    let mut members = before.clone();
    members.retain(|m| *m != uid);
    if member {
        members.push(uid);
        members.sort_unstable();
    } else if members.len() == before.len() {
        bail!("{name} is not in group {group}");
    }
    let current = current_keys(connection, (vault, admin), gid).await?;
    let everyone = [vec![0], members.clone()].concat();
    let (keys, holders) = match current {
        None => (GroupKeys::generate(), everyone),
        Some((_, keys)) if member => (keys, vec![uid]),
        Some((_, keys)) => {
            let rotated = keys
                .rotated()
                .context("the group has too many key epochs")?;
            (rotated, everyone)
        }
    };
    let record = GroupRecord {
        vault,
        gid,
        epoch: keys.epoch(),
        signing_key: keys.newest().public().signing,
        wrapping_key: keys.newest().public().wrapping,
        signer: 0,
        name: group.to_string(),
        members,
    };
    let signature = admin.sign(format::group::DOMAIN, &record.signed_bytes());
    let request = SetGroupMemberRequest {
        gid,
        uid,
        member,
        record: record.with_signature(&signature),
        keys: wrapped_to(connection, (vault, admin), (gid, &keys), holders).await?,
    };
    let group = connection.api().set_group_member(request).await?;
    Ok(group.into_inner().members)
}
