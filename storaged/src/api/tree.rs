//! The directory tree over the wire: each call runs one operation of `crate::ops::tree` as
//! its caller and answers with the caller's view of what it found or changed.

use proto::v1::*;

use super::call::{Call, Context, each_in_order};
use super::wire::{
    attr_changes, choice, chosen_ino, new_file, page_limit, seal_of, special_kind, wrapped_keys_of,
};
use crate::meta::{EntrySeal, FileId, Kind, now};
use crate::ops::OpError;
use crate::ops::tree::{self, NewNode, Rename, RenameMode, RenameSeals};

impl Call<Attr> for LookupRequest {
    async fn answer(self, at: Context) -> Result<Attr, OpError> {
        let found =
            at.read(move |txn, who| tree::lookup_sealed(txn, who, FileId(self.parent), &self.name));
        let (child, seal) = found.await?;
        Ok(sealed_attr(&at, &child, seal))
    }
}

impl Call<Attr> for GetAttrRequest {
    async fn answer(self, at: Context) -> Result<Attr, OpError> {
        let found = at.read(move |txn, who| tree::getattr(txn, who, FileId(self.ino)));
        Ok(at.attr(&found.await?))
    }
}

impl Call<Attr> for SetAttrRequest {
    async fn answer(self, at: Context) -> Result<Attr, OpError> {
        let changes = attr_changes(&self)?;
        let changed = at.write(self.lazy, move |txn, who| {
            tree::setattr(txn, who, FileId(self.ino), &changes, now())
        });
        Ok(at.attr(&changed.await?))
    }
}

impl Call<Attr> for CreateRequest {
    async fn answer(self, at: Context) -> Result<Attr, OpError> {
        let file = new_file(&self)?;
        let exclusive = self.exclusive;
        let (made, parent_version) = at
            .write(self.lazy, move |txn, who| {
                tree::create_file(txn, who, &file, exclusive, now())
            })
            .await?;
        Ok(at.named(&made, parent_version))
    }
}

/// The caller's view of an inode found under an entry with `seal`.
fn sealed_attr(at: &Context, inode: &crate::meta::Inode, seal: Option<EntrySeal>) -> Attr {
    let (low, high) = proto::seal_halves(seal.unwrap_or_default());
    Attr {
        entry_seal_low: low,
        entry_seal_high: high,
        ..at.attr(inode)
    }
}

/// Creates a directory entry and its inode (mkdir, mknod, symlink); the caller's view of it.
async fn create_node(
    at: &Context,
    parent: FileId,
    name: Vec<u8>,
    node: NewNode,
    lazy: bool,
) -> Result<Attr, OpError> {
    let (made, parent_version) = at
        .write(lazy, move |txn, who| {
            tree::create_node(txn, who, parent, &name, &node, now())
        })
        .await?;
    Ok(at.named(&made, Some(parent_version)))
}

/// A new node of `kind` with no device number and no target.
fn plain_node(kind: Kind, perm: u32, uid: u32, gid: u32) -> NewNode {
    NewNode {
        kind,
        perm,
        uid,
        gid,
        rdev: 0,
        target: Vec::new(),
        ino: None,
        acl_record: Vec::new(),
        entry_seal: None,
    }
}

impl Call<Attr> for MkdirRequest {
    async fn answer(self, at: Context) -> Result<Attr, OpError> {
        let wrapped_keys = wrapped_keys_of(&self.wrapped_keys)?;
        let node = NewNode {
            ino: chosen_ino(self.ino),
            acl_record: self.acl_record,
            entry_seal: seal_of(&self.entry_seal)?,
            ..plain_node(Kind::Directory, self.perm, self.uid, self.gid)
        };
        let (parent, name) = (FileId(self.parent), self.name);
        let (made, parent_version) = at
            .write(self.lazy, move |txn, who| {
                tree::create_dir(txn, who, (parent, &name), &node, &wrapped_keys, now())
            })
            .await?;
        Ok(at.named(&made, Some(parent_version)))
    }
}

impl Call<Attr> for MknodRequest {
    async fn answer(self, at: Context) -> Result<Attr, OpError> {
        let node = NewNode {
            rdev: self.rdev,
            ino: chosen_ino(self.ino),
            entry_seal: seal_of(&self.entry_seal)?,
            ..plain_node(special_kind(self.kind)?, self.perm, self.uid, self.gid)
        };
        create_node(&at, FileId(self.parent), self.name, node, self.lazy).await
    }
}

impl Call<Attr> for SymlinkRequest {
    async fn answer(self, at: Context) -> Result<Attr, OpError> {
        let node = NewNode {
            target: self.target,
            ino: chosen_ino(self.ino),
            entry_seal: seal_of(&self.entry_seal)?,
            ..plain_node(Kind::Symlink, 0o777, self.uid, self.gid)
        };
        create_node(&at, FileId(self.parent), self.name, node, self.lazy).await
    }
}

impl Call<ReadLinkReply> for ReadLinkRequest {
    async fn answer(self, at: Context) -> Result<ReadLinkReply, OpError> {
        let target = at.read(move |txn, who| tree::readlink(txn, who, FileId(self.ino)));
        Ok(ReadLinkReply {
            target: target.await?,
        })
    }
}

impl Call<Attr> for LinkRequest {
    async fn answer(self, at: Context) -> Result<Attr, OpError> {
        let seal = seal_of(&self.entry_seal)?;
        let (linked, parent_version) = at
            .write(self.lazy, move |txn, who| {
                let to = (FileId(self.new_parent), self.new_name.as_slice(), seal);
                tree::link(txn, who, FileId(self.ino), to, now())
            })
            .await?;
        Ok(at.named(&linked, Some(parent_version)))
    }
}

impl Call<UnlinkReply> for UnlinkRequest {
    async fn answer(self, at: Context) -> Result<UnlinkReply, OpError> {
        unlink(&at, self).await
    }
}

/// One unlink, of `Unlink` or `Unlinks`.
async fn unlink(at: &Context, request: UnlinkRequest) -> Result<UnlinkReply, OpError> {
    let unlinked = at
        .write(request.lazy, move |txn, who| {
            tree::unlink(
                txn,
                who,
                FileId(request.parent),
                &request.name,
                request.keep_open,
                now(),
            )
        })
        .await?;
    Ok(UnlinkReply {
        parent: Some(at.attr(&unlinked.parent)),
        nlink: unlinked.links_left,
    })
}

impl Call<UnlinksReply> for UnlinksRequest {
    async fn answer(self, at: Context) -> Result<UnlinksReply, OpError> {
        let max = proto::limits::UNLINKS_PER_CALL_MAX;
        let done = each_in_order(self.unlinks, max, |request| unlink(&at, request)).await?;
        let outcome = |done: Result<UnlinkReply, OpError>| {
            Some(done.map_or_else(
                |error| {
                    unlink_outcome::Outcome::Refused(Refusal {
                        kind: error.kind() as i32,
                        message: error.to_string(),
                    })
                },
                unlink_outcome::Outcome::Done,
            ))
        };
        let outcomes = done.into_iter().map(|done| UnlinkOutcome {
            outcome: outcome(done),
        });
        Ok(UnlinksReply {
            outcomes: outcomes.collect(),
        })
    }
}

impl Call<RmdirReply> for RmdirRequest {
    async fn answer(self, at: Context) -> Result<RmdirReply, OpError> {
        let parent = at.write(self.lazy, move |txn, who| {
            tree::rmdir(txn, who, FileId(self.parent), &self.name, now())
        });
        Ok(RmdirReply {
            parent: Some(at.attr(&parent.await?)),
        })
    }
}

impl Call<RenameReply> for RenameRequest {
    async fn answer(self, at: Context) -> Result<RenameReply, OpError> {
        let modes = [
            RenameMode::Replace,
            RenameMode::NoReplace,
            RenameMode::Exchange,
        ];
        let flags = (self.no_replace, self.exchange);
        let mode = choice(flags, modes, "no_replace and exchange exclude each other")?;
        let seals = RenameSeals {
            ino: chosen_ino(self.ino),
            new_ino: chosen_ino(self.new_ino),
            new_entry_seal: seal_of(&self.new_entry_seal)?,
            entry_seal: seal_of(&self.entry_seal)?,
        };
        let replaced = at
            .write(self.lazy, move |txn, who| {
                let rename = Rename {
                    parent: FileId(self.parent),
                    name: &self.name,
                    new_parent: FileId(self.new_parent),
                    new_name: &self.new_name,
                    mode,
                    seals,
                };
                tree::rename(txn, who, &rename, now())
            })
            .await?;
        Ok(RenameReply {
            replaced_ino: replaced.map_or(0, |ino| ino.0),
        })
    }
}

impl Call<ReleaseReply> for ReleaseRequest {
    async fn answer(self, at: Context) -> Result<ReleaseReply, OpError> {
        at.write(self.lazy, move |txn, who| {
            tree::release(txn, who, FileId(self.ino), now())
        })
        .await?;
        Ok(ReleaseReply {})
    }
}

impl Call<ReadDirReply> for ReadDirRequest {
    async fn answer(self, at: Context) -> Result<ReadDirReply, OpError> {
        let limit = page_limit(self.limit, 512);
        let (entries, more) = at
            .read(move |txn, who| {
                tree::readdir_sealed(txn, who, FileId(self.ino), &self.after, limit)
            })
            .await?;
        let entries = entries
            .iter()
            .map(|(name, inode, seal)| DirEntry {
                name: name.clone(),
                attr: Some(sealed_attr(&at, inode, *seal)),
            })
            .collect();
        Ok(ReadDirReply { entries, more })
    }
}
