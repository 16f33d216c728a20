//! The gRPC service. Every call takes one path (`call`): it authenticates, settles the
//! directory leases of other clients on what it names (`leases`), runs one operation of
//! `crate::ops` in a metadata transaction (and the chunk store where chunks move, `data`),
//! records metrics, and maps errors to statuses carrying their
//! [`ErrorKind`](proto::ErrorKind). Each request type answers itself (`call::Call`), in the
//! module of its concern; `service` only hands tonic's calls to them, and `wire` converts
//! records to and from messages.

mod accounts;
mod audit;
mod call;
mod data;
mod leases;
mod service;
mod sharing;
mod tree;
mod volume;
mod wire;
mod xattrs;

use std::sync::Arc;

use crate::auth::Auth;
use crate::chunkstore::{ChunkStore, ChunkStoreError};
use crate::leases::Leases;
use crate::meta::{self, Durability, FileId, MetaStore, Txn};
use crate::metrics::Metrics;
use crate::ops::OpError;

/// What every call shares.
pub struct State {
    pub store: Arc<dyn MetaStore>,
    pub chunks: Arc<dyn ChunkStore>,
    pub auth: Auth,
    pub metrics: Arc<Metrics>,
    pub audit: crate::audit::AuditQueue,
    /// Chunk files waiting to be claimed as descriptors by local clients.
    pub descriptors: Arc<crate::descriptors::Descriptors>,
    /// Directory leases held by clients (see `crate::leases`).
    pub leases: Arc<Leases>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "State({})", self.store.backend())
    }
}

/// The gRPC service over the shared [`State`].
#[derive(Clone, Debug)]
pub struct Service {
    pub state: Arc<State>,
}

impl State {
    /// Runs `op` in a read transaction.
    pub async fn read<T, F>(&self, op: F) -> Result<T, OpError>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn Txn) -> Result<T, OpError> + Send + 'static,
    {
        meta::read(&*self.store, op).await
    }

    /// Runs `op` in a write transaction, answered once it is durable.
    pub async fn write<T, F>(&self, op: F) -> Result<T, OpError>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn Txn) -> Result<T, OpError> + Send + 'static,
    {
        meta::write(&*self.store, op).await
    }

    /// A write for a request that may be `lazy` (see `Durability` in vault.proto).
    pub async fn write_as<T, F>(&self, lazy: bool, op: F) -> Result<T, OpError>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn Txn) -> Result<T, OpError> + Send + 'static,
    {
        let durability = if lazy {
            Durability::Visible
        } else {
            Durability::Durable
        };
        meta::write_as(&*self.store, durability, op).await
    }

    /// Runs blocking chunk-store work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn ChunkStore) -> Result<T, ChunkStoreError> + Send + 'static,
    ) -> Result<T, ChunkStoreError> {
        let chunks = self.chunks.clone();
        tokio::task::spawn_blocking(move || work(&*chunks))
            .await
            .expect("chunk store task panicked")
    }

    /// Queues a read-side audit event (see [`crate::audit::AuditQueue`]).
    async fn audit(&self, uid: u32, event: &'static str, ino: FileId, detail: String) {
        self.audit.record(uid, event, ino, detail).await;
    }
}
