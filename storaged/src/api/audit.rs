//! The audit log's head and anchor over the wire (the administrator's calls; `crate::anchor`).

use proto::v1::{AnchorAuditReply, AnchorAuditRequest, AuditHead, GetAuditHeadRequest};

use super::call::{Call, Context};
use crate::anchor::{self, Anchor};
use crate::meta::now;
use crate::ops::OpError;

impl Call<AuditHead> for GetAuditHeadRequest {
    async fn answer(self, at: Context) -> Result<AuditHead, OpError> {
        let head = at.read(|txn, who| anchor::head(txn, who)).await?;
        Ok(
            head.map_or_else(AuditHead::default, |(seq, hash)| AuditHead {
                seq,
                hash: hash.to_vec(),
            }),
        )
    }
}

impl Call<AnchorAuditReply> for AnchorAuditRequest {
    async fn answer(self, at: Context) -> Result<AnchorAuditReply, OpError> {
        let hash = self.hash.as_slice().try_into();
        let signature = self.signature.as_slice().try_into();
        let (Ok(hash), Ok(signature)) = (hash, signature) else {
            return Err(OpError::invalid(
                "an anchor is a 32-byte hash and a 64-byte signature",
            ));
        };
        let anchor = Anchor::from((self.seq, hash, signature));
        let settings = at.state.auth.settings().clone();
        at.write_durably(move |txn, who| anchor::set(txn, who, &settings, &anchor, now()))
            .await?;
        Ok(AnchorAuditReply {})
    }
}
