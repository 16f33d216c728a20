//! Sharing, as `vaultfs share`, `unshare`, `acl` and `rekey` do it over their own connection:
//! every change is a new ACL record signed by this user (the owner or a writer) after checking
//! the current one, with the file's keys wrapped only to principals whose keys the pinned
//! administrator key vouches for. Revoking a reader of a file gives the file a new key epoch
//! in the same change; `rekey` re-seals every chunk under a new key and drops the old ones.

use anyhow::{Context, bail};
use crypto::{ChunkContext, FileKeys};
use format::acl::{AclRecord, Entry, Principal};
use format::ids::{ChunkIndex, FileId, Generation};
use proto::v1::{
    AclEntry, ChunkCommit, CommitChunksRequest, FileKind, GetAttrRequest, GetChunkRequest,
    GetGroupRequest, GetUserRequest, ListXattrRequest, OpenRequest, PutChunkRequest,
    SetXattrRequest, ShareRequest, UnshareRequest, get_group_request, get_user_request,
};

use crate::keys::{Keys, principal_to_wire};
use crate::manifest::Served;
use crate::remote::Remote;
use crate::trust::VerifiedAcl;

/// A logged-in user's sharing tools.
#[derive(Debug)]
pub struct Sharing {
    pub remote: Remote,
    pub keys: Keys,
    /// The manifests this user's mounts saw (their seen file): `rekey` never re-seals a
    /// file state older than one of them.
    pub seen: crate::manifest::Seen,
}

/// A principal as people name it: `NAME` for a user, `@NAME` for a group.
pub async fn principal_named(remote: &Remote, name: &str) -> anyhow::Result<Principal> {
    if let Some(group) = name.strip_prefix('@') {
        let by = Some(get_group_request::By::Name(group.to_string()));
        let found = remote
            .call("get_group", |mut api| {
                let by = by.clone();
                async move { api.get_group(GetGroupRequest { by }).await }
            })
            .await
            .with_context(|| format!("no group named {group}"))?;
        return Ok(Principal::Group(found.gid));
    }
    let by = Some(get_user_request::By::Name(name.to_string()));
    let found = remote
        .call("get_user", |mut api| {
            let by = by.clone();
            async move { api.get_user(GetUserRequest { by }).await }
        })
        .await
        .with_context(|| format!("no user named {name}"))?;
    Ok(Principal::User(found.uid))
}

impl Sharing {
    fn me(&self) -> u32 {
        self.keys.uid()
    }

    async fn kind_of(&self, ino: FileId) -> anyhow::Result<FileKind> {
        let attr = self
            .remote
            .call("get_attr", |mut api| async move {
                api.get_attr(GetAttrRequest { ino: ino.0 }).await
            })
            .await?;
        Ok(FileKind::try_from(attr.kind).unwrap_or(FileKind::Unspecified))
    }

    /// Checks that this user may change `acl` and share with `principal`.
    async fn check_change(&self, acl: &VerifiedAcl, principal: Principal) -> anyhow::Result<()> {
        if principal == Principal::User(self.me()) {
            bail!("you cannot share with yourself");
        }
        if !acl.lets_write(self.me()) {
            bail!("only its owner or a writer may change who shares it");
        }
        if let Principal::Group(gid) = principal {
            let group = self.keys.trust().group(gid).await?;
            if !group.record.members.contains(&self.me()) {
                bail!("you are not in group {}", group.record.name);
            }
        }
        Ok(())
    }

    /// `acl` changed by `change`, as a record signed by this user.
    fn signed(&self, ino: FileId, acl: &VerifiedAcl, entries: Vec<Entry>) -> Vec<u8> {
        self.keys.sign_acl(AclRecord {
            vault: self.keys.vault(),
            ino,
            serial: acl.serial + 1,
            owner: acl.owner,
            signer: self.me(),
            entries,
        })
    }

    /// Lets `principal` read (and with `write`, write) `ino`.
    pub async fn share(
        &self,
        ino: FileId,
        principal: Principal,
        write: bool,
    ) -> anyhow::Result<()> {
        let acl = self.keys.trust().acl(ino).await?;
        self.check_change(&acl, principal).await?;
        let entry = Entry {
            principal,
            read: true,
            write,
        };
        let mut entries: Vec<Entry> = acl
            .entries
            .iter()
            .filter(|e| e.principal != principal)
            .copied()
            .collect();
        entries.push(entry);
        // A directory of sealed names has a key, wrapped as a file's (docs/format.md 5.6).
        let kind = self.kind_of(ino).await?;
        let has_key = kind == FileKind::Regular
            || (kind == FileKind::Directory && format::names::is_keyed(ino));
        let wrapped_key = if has_key {
            let keys = self.keys.file_keys(ino, acl.owner).await?;
            let mut wrapped = self.keys.wrap_to(ino, &keys, &[principal]).await?;
            wrapped.remove(0).blob
        } else {
            Vec::new()
        };
        let request = ShareRequest {
            ino: ino.0,
            entry: Some(AclEntry {
                principal: Some(principal_to_wire(principal)),
                read: true,
                write,
            }),
            wrapped_key,
            acl_record: self.signed(ino, &acl, entries),
        };
        self.remote
            .send(
                "share",
                request,
                |mut api, r| async move { api.share(r).await },
            )
            .await?;
        Ok(())
    }

    /// Revokes `principal`'s access to `ino`; a file it could read gets a new key epoch in
    /// the same change. Returns false when it had no access to revoke.
    pub async fn unshare(&self, ino: FileId, principal: Principal) -> anyhow::Result<bool> {
        let acl = self.keys.trust().acl(ino).await?;
        let Some(had) = acl
            .entries
            .iter()
            .find(|e| e.principal == principal)
            .copied()
        else {
            return Ok(false);
        };
        self.check_change(&acl, principal).await?;
        let entries: Vec<Entry> = acl
            .entries
            .iter()
            .filter(|e| e.principal != principal)
            .copied()
            .collect();
        let after = VerifiedAcl {
            entries: entries.clone(),
            ..acl.clone()
        };
        let mut rekey = Vec::new();
        if had.read && self.kind_of(ino).await? == FileKind::Regular {
            let keys = self.keys.file_keys(ino, acl.owner).await?;
            let Some(fresh) = keys.rotated() else {
                bail!("it has too many key epochs: run `vaultfs rekey` on it first");
            };
            rekey = self.keys.wrap_to(ino, &fresh, &after.key_holders()).await?;
        }
        let request = UnshareRequest {
            ino: ino.0,
            principal: Some(principal_to_wire(principal)),
            acl_record: self.signed(ino, &acl, entries),
            rekey,
        };
        self.remote
            .send("unshare", request, |mut api, r| async move {
                api.unshare(r).await
            })
            .await?;
        self.keys.forget(ino);
        Ok(true)
    }

    /// Who may read and write `ino`, each principal with the fingerprint of its keys.
    pub async fn describe(&self, ino: FileId) -> anyhow::Result<Vec<String>> {
        let acl = self.keys.trust().acl(ino).await?;
        let mut lines = vec![self.line(Principal::User(acl.owner), "owner").await?];
        for entry in &acl.entries {
            let rights = if entry.write { "read, write" } else { "read" };
            lines.push(self.line(entry.principal, rights).await?);
        }
        Ok(lines)
    }

    async fn line(&self, principal: Principal, rights: &str) -> anyhow::Result<String> {
        let trust = self.keys.trust();
        Ok(match principal {
            Principal::User(0) => format!("{:<24} {rights:<12} (the site administrator)", "admin"),
            Principal::User(uid) => {
                let public = trust.user(uid).await?;
                let name = self.user_name(uid).await?;
                format!("{name:<24} {rights:<12} {}", public.fingerprint())
            }
            Principal::Group(gid) => {
                let group = trust.group(gid).await?.record;
                let public = identity::PublicIdentity {
                    signing: group.signing_key,
                    wrapping: group.wrapping_key,
                };
                let name = format!("@{} (epoch {})", group.name, group.epoch);
                format!("{name:<24} {rights:<12} {}", public.fingerprint())
            }
        })
    }

    async fn user_name(&self, uid: u32) -> anyhow::Result<String> {
        let by = Some(get_user_request::By::Uid(uid));
        let user = self
            .remote
            .call("get_user", |mut api| {
                let by = by.clone();
                async move { api.get_user(GetUserRequest { by }).await }
            })
            .await?;
        Ok(user.name)
    }
}

/// A generation for a re-sealed chunk: past its current one, from the clock, as a writer
/// picks them (docs/format.md section 6, writing chunks).
fn next_generation(current: Generation) -> Generation {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Generation(now).max(current.next())
}

impl Sharing {
    /// Re-seals every chunk of file `ino` under a new key and drops its older keys, in one
    /// commit that fails if anyone wrote the file meanwhile (then run it again). Returns the
    /// number of chunks re-sealed.
    pub async fn reseal(&self, ino: FileId) -> anyhow::Result<usize> {
        let reply = self
            .remote
            .send(
                "open",
                OpenRequest { ino: ino.0 },
                |mut api, r| async move { api.open(r).await },
            )
            .await?;
        let attr = reply.attr.unwrap_or_default();
        let keys = self.keys.keys_from(ino, &reply.keys, attr.owner).await?;
        // Its wraps say from now on that every commit carries a manifest (this one does).
        let manifests = self.remote.server_has(proto::features::MANIFESTS);
        // And that its extended attribute values are sealed (they are re-sealed below).
        let sealed = self.remote.server_has(proto::features::SEALED_NAMES);
        let fresh = match keys.rotated() {
            Some(rotated) => rotated
                .newest_only()
                .with_manifests(manifests)
                .with_sealed_xattrs(sealed),
            None => bail!("it has too many key epochs"),
        };
        let map = crate::file::chunk_map(&self.remote, ino, &reply).await?;
        let served = Served {
            vault: self.keys.vault(),
            ino,
            size: attr.size,
            map: &map,
        };
        let counter = crate::manifest::check(&keys, served, &reply.manifest, Some(&self.seen))
            .map_err(|reason| anyhow::anyhow!("file {ino} failed its manifest check: {reason}"))?;
        let chunks: Vec<(u64, u64)> = map
            .iter()
            .map(|(index, generation)| (index.get(), generation.get()))
            .collect();
        let last = attr.size.checked_sub(1).map(ChunkIndex::of_offset);
        let mut commits = Vec::with_capacity(chunks.len());
        for &(index, generation) in &chunks {
            let context = ChunkContext {
                vault: self.keys.vault(),
                file: ino,
                index: ChunkIndex(index),
                generation: Generation(generation),
                last: last == Some(ChunkIndex(index)),
            };
            commits.push(self.reseal_chunk(&keys, &fresh, context).await?);
        }
        let acl = self.keys.trust().acl(ino).await?;
        let resealed = commits
            .iter()
            .map(|c| (ChunkIndex(c.index), Generation(c.generation)))
            .collect();
        let served = Served {
            map: &resealed,
            ..served
        };
        let request = CommitChunksRequest {
            ino: ino.0,
            chunks: commits,
            size: attr.size,
            rekey: self.keys.wrap_to(ino, &fresh, &acl.key_holders()).await?,
            manifest: crate::manifest::seal(&fresh, served, counter + 1),
            ..CommitChunksRequest::default()
        };
        self.remote
            .send("commit_chunks", request, |mut api, r| async move {
                api.commit_chunks(r).await
            })
            .await
            .context("the file changed while it was re-sealed; run `vaultfs rekey` again")?;
        self.reseal_xattrs(ino, &keys, &fresh).await?;
        self.keys.remember(ino, fresh);
        Ok(chunks.len())
    }

    /// Seals every extended attribute value of `ino` again under `fresh`, opened under
    /// `keys` (or taken as it is from a file whose values were not sealed): after a re-seal,
    /// which drops the keys they were sealed under (docs/format.md section 5.6).
    async fn reseal_xattrs(
        &self,
        ino: FileId,
        keys: &FileKeys,
        fresh: &FileKeys,
    ) -> anyhow::Result<()> {
        if !fresh.sealed_xattrs() {
            return Ok(());
        }
        let vault = self.keys.vault();
        let names = self
            .remote
            .call("list_xattr", |mut api| async move {
                api.list_xattr(ListXattrRequest { ino: ino.0 }).await
            })
            .await?
            .names;
        for name in names {
            let stored = crate::vault::stored_xattr(&self.remote, ino, name.clone()).await?;
            let value = if keys.sealed_xattrs() {
                crypto::open_xattr(keys, vault, ino, &name, &stored)?
            } else {
                stored
            };
            let request = SetXattrRequest {
                ino: ino.0,
                value: crypto::seal_xattr(fresh, vault, ino, &name, &value),
                name,
                ..SetXattrRequest::default()
            };
            self.remote
                .send("set_xattr", request, |mut api, r| async move {
                    api.set_xattr(r).await
                })
                .await?;
        }
        Ok(())
    }

    /// Reads one chunk, opens it under the key it names, seals it under `fresh` at a newer
    /// generation and uploads it (not committed yet).
    async fn reseal_chunk(
        &self,
        keys: &FileKeys,
        fresh: &FileKeys,
        context: ChunkContext,
    ) -> anyhow::Result<ChunkCommit> {
        let (ino, index) = (context.file.0, context.index.get());
        let got = self
            .remote
            .send(
                "get_chunk",
                GetChunkRequest {
                    ino,
                    index,
                    descriptor: false,
                },
                |mut api, r| async move { api.get_chunk(r).await },
            )
            .await?;
        if got.generation != context.generation.get() {
            bail!("the file changed while it was re-sealed; run `vaultfs rekey` again");
        }
        let plaintext = crypto::open(keys.for_sealed(&got.data), &context, &got.data)
            .with_context(|| format!("chunk {index} of {} does not open", context.file))?;
        let generation = next_generation(context.generation);
        let sealed = crypto::seal(
            fresh.newest(),
            &ChunkContext {
                generation,
                ..context
            },
            &plaintext,
        )?;
        let put = PutChunkRequest {
            ino,
            index,
            data: sealed.into(),
            base_generation: context.generation.get(),
            ..PutChunkRequest::default()
        };
        self.remote
            .send("put_chunk", put, |mut api, r| async move {
                api.put_chunk(r).await
            })
            .await?;
        Ok(ChunkCommit {
            index,
            base_generation: context.generation.get(),
            generation: generation.get(),
        })
    }
}
