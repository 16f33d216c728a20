//! Extended attributes over the wire (`crate::ops::xattrs`).

use proto::v1::*;

use super::call::{Call, Context};
use super::wire::choice;
use crate::meta::{FileId, now};
use crate::ops::OpError;
use crate::ops::xattrs::{self, SetMode};

impl Call<SetXattrReply> for SetXattrRequest {
    async fn answer(self, at: Context) -> Result<SetXattrReply, OpError> {
        let modes = [SetMode::Either, SetMode::CreateOnly, SetMode::ReplaceOnly];
        let flags = (self.create_only, self.replace_only);
        let mode = choice(
            flags,
            modes,
            "create_only and replace_only exclude each other",
        )?;
        at.write(self.lazy, move |txn, who| {
            xattrs::set(
                txn,
                who,
                FileId(self.ino),
                &self.name,
                &self.value,
                mode,
                now(),
            )
        })
        .await?;
        Ok(SetXattrReply {})
    }
}

impl Call<GetXattrReply> for GetXattrRequest {
    async fn answer(self, at: Context) -> Result<GetXattrReply, OpError> {
        let value = at.read(move |txn, who| xattrs::get(txn, who, FileId(self.ino), &self.name));
        Ok(GetXattrReply {
            value: value.await?,
        })
    }
}

impl Call<RemoveXattrReply> for RemoveXattrRequest {
    async fn answer(self, at: Context) -> Result<RemoveXattrReply, OpError> {
        at.write(self.lazy, move |txn, who| {
            xattrs::remove(txn, who, FileId(self.ino), &self.name, now())
        })
        .await?;
        Ok(RemoveXattrReply {})
    }
}

impl Call<ListXattrReply> for ListXattrRequest {
    async fn answer(self, at: Context) -> Result<ListXattrReply, OpError> {
        let names = at.read(move |txn, who| xattrs::list(txn, who, FileId(self.ino)));
        Ok(ListXattrReply {
            names: names.await?,
        })
    }
}
