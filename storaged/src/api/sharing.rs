//! Sharing over the wire: ACL entries with the file key wrapped to their principal, and the
//! wrapped keys a caller may open (`crate::ops::sharing`).

use proto::v1::*;

use super::call::{Call, Context};
use super::wire::{principal_of, principal_to_wire, wrapped_keys_of, wrapped_keys_to_wire};
use crate::meta::{self, FileId, now};
use crate::ops::{OpError, sharing};

impl Call<GetWrappedKeysReply> for GetWrappedKeysRequest {
    async fn answer(self, at: Context) -> Result<GetWrappedKeysReply, OpError> {
        let keys = at.read(move |txn, who| sharing::my_wrapped_keys(txn, who, FileId(self.ino)));
        Ok(GetWrappedKeysReply {
            keys: wrapped_keys_to_wire(keys.await?),
        })
    }
}

impl Call<Attr> for ShareRequest {
    async fn answer(self, at: Context) -> Result<Attr, OpError> {
        let entry = self
            .entry
            .ok_or_else(|| OpError::invalid("an ACL entry is required"))?;
        let acl_entry = meta::AclEntry {
            principal: principal_of(entry.principal.as_ref())?,
            read: entry.read,
            write: entry.write,
        };
        let ino = FileId(self.ino);
        let change = sharing::AclChange {
            record: self.acl_record,
            wrapped_key: self.wrapped_key,
            rekey: Vec::new(),
        };
        let node = at
            .write_durably(move |txn, who| sharing::share(txn, who, ino, acl_entry, &change, now()))
            .await?;
        Ok(at.attr(&node))
    }
}

impl Call<Attr> for UnshareRequest {
    async fn answer(self, at: Context) -> Result<Attr, OpError> {
        let principal = principal_of(self.principal.as_ref())?;
        let change = sharing::AclChange {
            record: self.acl_record,
            wrapped_key: Vec::new(),
            rekey: wrapped_keys_of(&self.rekey)?,
        };
        let node = at.write_durably(move |txn, who| {
            sharing::unshare(txn, who, FileId(self.ino), principal, &change, now())
        });
        Ok(at.attr(&node.await?))
    }
}

impl Call<GetAclReply> for GetAclRequest {
    async fn answer(self, at: Context) -> Result<GetAclReply, OpError> {
        let (owner, acl, record) = at
            .read(move |txn, who| sharing::acl(txn, who, FileId(self.ino)))
            .await?;
        let entries = acl
            .into_iter()
            .map(|e| AclEntry {
                principal: Some(principal_to_wire(e.principal)),
                read: e.read,
                write: e.write,
            })
            .collect();
        Ok(GetAclReply {
            owner,
            entries,
            record,
        })
    }
}
