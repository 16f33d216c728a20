//! Calls about the whole vault rather than a file: how full it is, and making everything
//! acknowledged durable.

use proto::v1::*;

use super::call::{Call, Context};
use super::data::chunk_error;
use crate::ops::OpError;

impl Call<StatFsReply> for StatFsRequest {
    async fn answer(self, at: Context) -> Result<StatFsReply, OpError> {
        let space = at
            .state
            .blocking(|store| store.space())
            .await
            .map_err(chunk_error)?;
        let files = at.read(|txn, _| Ok(txn.count_inodes()?)).await?;
        Ok(StatFsReply {
            total_bytes: space.total_bytes,
            free_bytes: space.free_bytes,
            available_bytes: space.available_bytes,
            files,
            free_files: u64::MAX / 2 - files,
            block_bytes: space.block_bytes,
            name_bytes_max: proto::limits::NAME_BYTES_MAX as u32,
        })
    }
}

impl Call<SyncReply> for SyncRequest {
    async fn answer(self, at: Context) -> Result<SyncReply, OpError> {
        at.state.store.sync().await?;
        Ok(SyncReply {})
    }
}
