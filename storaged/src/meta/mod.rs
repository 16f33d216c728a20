//! The metadata store: the directory tree, attributes, chunk generations, wrapped keys, users,
//! groups, sessions and the audit log, behind one trait with several backends.
//!
//! A backend implements [`MetaStore`]: it runs an operation (a closure over a [`Txn`])
//! atomically. The semantics of every filesystem operation live once, in `crate::ops`, written
//! against `Txn`; backends only store and fetch records. An operation may run more than once
//! (a backend retries on conflicts), so it must have no effects outside its `Txn`.

pub mod memory;
pub mod mongo;
mod records;
pub mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

pub use records::*;

/// A failure of the store itself (not of the operation's logic).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or refused to work (database down, disk full, ...).
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    /// A stored record does not decode: damaged or written by something else.
    #[error("metadata store holds a damaged record: {0}")]
    Corrupt(String),
    /// Another writer changed what this transaction read; the backend gave up retrying.
    #[error("metadata store write conflict: {0}")]
    Conflict(String),
    /// The stored schema is newer than this build understands.
    #[error(
        "metadata schema version {found} is newer than this storaged ({supported}); upgrade storaged"
    )]
    SchemaTooNew { found: u32, supported: u32 },
}

/// What a metadata backup (`storaged backup`) holds, read from it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotFacts {
    /// The vault's ID (its `vault_id` setting).
    pub vault: Vec<u8>,
    pub schema_version: u32,
    pub inodes: u64,
    pub chunks: u64,
}

/// A boxed future, as the dyn-compatible trait returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A type-erased operation run inside a transaction (see [`write()`] and [`read()`] for the typed
/// form).
pub type Operation = Box<dyn FnMut(&mut dyn Txn) -> Result<(), OperationFailed> + Send>;

/// How a type-erased operation failed: its own error was stored in its result slot (so the
/// transaction must roll back), or the store failed.
#[derive(Debug)]
pub enum OperationFailed {
    Rejected,
    Store(StoreError),
}

impl From<StoreError> for OperationFailed {
    fn from(error: StoreError) -> Self {
        OperationFailed::Store(error)
    }
}

/// When a write's reply may be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// After the write is on disk.
    Durable,
    /// As soon as every later read sees it (close-to-open visibility). It becomes durable
    /// with the next durable write or [`MetaStore::sync`], and within
    /// [`VISIBLE_WRITES_DURABLE_WITHIN`] in any case. A backend that cannot defer durability
    /// makes it durable at once.
    Visible,
}

/// The longest a visible write waits to be made durable.
pub const VISIBLE_WRITES_DURABLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Makes the chunk files written since its last call durable. A backend that defers
/// durability calls it before anything that makes its deferred writes durable, so a
/// durable record never names a chunk file that is not. A backend that does not defer
/// takes none, and the chunk store syncs every chunk file before its commit.
pub type Barrier = std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What a backend allows the daemon around it: the daemon decides by what a store can do,
/// never by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// No other storaged instance serves the vault from this store, so what one process keeps
    /// to itself (directory leases, spare chunk files) is all there is of it.
    pub sole_instance: bool,
    /// Visible writes become durable later, and the store calls its [`Barrier`] before it
    /// makes any durable: the chunk files its records name may wait for that barrier, synced
    /// in batches, instead of each being synced before its commit.
    pub deferred_durability: bool,
}

impl Capabilities {
    /// Whether directory leases may be granted: they live in this process, so only a sole
    /// instance sees every call that must recall one.
    pub fn leases(self) -> bool {
        self.sole_instance
    }
}

/// A metadata backend.
pub trait MetaStore: Send + Sync + 'static {
    /// Runs `op` in a read-write transaction: all of its writes become visible (and durable)
    /// together, or none do. Resolves as `durability` says.
    fn write(
        &self,
        op: Operation,
        durability: Durability,
    ) -> BoxFuture<'_, Result<(), OperationFailed>>;
    /// Resolves once every write acknowledged before the call is durable.
    fn sync(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Runs `op` in a read-only transaction (a consistent snapshot where the backend has one).
    /// Writes inside it are a bug.
    fn read(&self, op: Operation) -> BoxFuture<'_, Result<(), OperationFailed>>;
    /// A short name for logs and metrics ("sqlite", "mongodb", "memory").
    fn backend(&self) -> &'static str;
    /// What the daemon may rely on around this store.
    fn capabilities(&self) -> Capabilities;
}

/// Runs a typed operation in a write transaction; resolves once it is durable.
pub async fn write<T, E, F>(store: &dyn MetaStore, op: F) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnMut(&mut dyn Txn) -> Result<T, E> + Send + 'static,
{
    write_as(store, Durability::Durable, op).await
}

/// Runs a typed operation in a write transaction; resolves as `durability` says.
pub async fn write_as<T, E, F>(store: &dyn MetaStore, durability: Durability, op: F) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnMut(&mut dyn Txn) -> Result<T, E> + Send + 'static,
{
    let (erased, slot) = erase(op);
    let outcome = store.write(erased, durability).await;
    finish(outcome, &slot)
}

/// Runs a typed operation in a read transaction.
pub async fn read<T, E, F>(store: &dyn MetaStore, op: F) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnMut(&mut dyn Txn) -> Result<T, E> + Send + 'static,
{
    let (erased, slot) = erase(op);
    let outcome = store.read(erased).await;
    finish(outcome, &slot)
}

type Slot<T, E> = Arc<Mutex<Option<Result<T, E>>>>;

fn erase<T, E, F>(mut op: F) -> (Operation, Slot<T, E>)
where
    T: Send + 'static,
    E: Send + 'static,
    F: FnMut(&mut dyn Txn) -> Result<T, E> + Send + 'static,
{
    let slot: Slot<T, E> = Arc::new(Mutex::new(None));
    let inner = slot.clone();
    let erased: Operation = Box::new(move |txn| {
        let outcome = op(txn);
        let rejected = outcome.is_err();
        *inner.lock().expect("result slot poisoned") = Some(outcome);
        if rejected {
            Err(OperationFailed::Rejected)
        } else {
            Ok(())
        }
    });
    (erased, slot)
}

fn finish<T, E: From<StoreError>>(
    outcome: Result<(), OperationFailed>,
    slot: &Slot<T, E>,
) -> Result<T, E> {
    let stored = slot.lock().expect("result slot poisoned").take();
    match (outcome, stored) {
        (Err(OperationFailed::Store(error)), _) => Err(error.into()),
        (_, Some(result)) => result,
        (_, None) => panic!("metadata backend finished an operation without running it"),
    }
}

/// The records an operation reads and writes. Every method is a single-record (or bounded
/// range) access; the backend decides how that maps onto its storage.
pub trait Txn {
    // Vault-wide settings: vault ID, schema version, administrator keys, server secret.
    fn get_setting(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn put_setting(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError>;

    // Inodes.
    fn get_inode(&mut self, ino: FileId) -> Result<Option<Inode>, StoreError>;
    /// Inserts or replaces.
    fn put_inode(&mut self, inode: &Inode) -> Result<(), StoreError>;
    /// Removes the inode record and its xattrs, wrapped keys, ACL record and manifest. Chunk records must be moved
    /// to the garbage list by the caller first.
    fn delete_inode(&mut self, ino: FileId) -> Result<(), StoreError>;
    fn count_inodes(&mut self) -> Result<u64, StoreError>;
    /// Inodes with no links that were kept for an open file, orphaned before `before`.
    fn list_orphans(&mut self, before: Time, limit: usize) -> Result<Vec<FileId>, StoreError>;

    // Directory entries: (parent, name) is unique.
    fn get_entry(&mut self, parent: FileId, name: &[u8]) -> Result<Option<Entry>, StoreError>;
    fn put_entry(&mut self, parent: FileId, name: &[u8], entry: Entry) -> Result<(), StoreError>;
    fn delete_entry(&mut self, parent: FileId, name: &[u8]) -> Result<(), StoreError>;
    /// Entries after `after` in byte order of their names, at most `limit`.
    fn list_entries(
        &mut self,
        parent: FileId,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Entry)>, StoreError>;

    // Chunks: the current generation of each stored chunk of a file.
    fn get_chunk(
        &mut self,
        ino: FileId,
        index: ChunkIndex,
    ) -> Result<Option<Generation>, StoreError>;
    /// Makes `chunk` the current generation at its index.
    fn put_chunk(&mut self, chunk: ChunkRef) -> Result<(), StoreError>;
    fn delete_chunk(&mut self, ino: FileId, index: ChunkIndex) -> Result<(), StoreError>;
    /// (index, generation) from `from` upward, at most `limit`.
    fn list_chunks(
        &mut self,
        ino: FileId,
        from: ChunkIndex,
        limit: usize,
    ) -> Result<Vec<(ChunkIndex, Generation)>, StoreError>;

    // Chunk files no longer current, to delete from the chunk store after commit (and after
    // a grace period, for backups: see `crate::gc`).
    /// Lists `chunk` as superseded now; one listed already keeps its time.
    fn add_garbage(&mut self, chunk: ChunkRef) -> Result<(), StoreError>;
    /// Chunk files superseded before `before`, past `after` in the store's own order (the
    /// same on every call), at most `limit`.
    fn list_garbage(
        &mut self,
        before: Time,
        after: Option<ChunkRef>,
        limit: usize,
    ) -> Result<Vec<ChunkRef>, StoreError>;
    fn is_garbage(&mut self, chunk: ChunkRef) -> Result<bool, StoreError>;
    fn delete_garbage(&mut self, chunk: ChunkRef) -> Result<(), StoreError>;

    // Every record, page by page, for `storaged fsck`.
    /// Inodes past `after` in the store's own order (the same on every call), at most `limit`.
    fn list_inodes(
        &mut self,
        after: Option<FileId>,
        limit: usize,
    ) -> Result<Vec<Inode>, StoreError>;
    /// The chunk records of every file past `after` (by file in the store's own order, then
    /// by index), at most `limit`.
    fn list_all_chunks(
        &mut self,
        after: Option<(FileId, ChunkIndex)>,
        limit: usize,
    ) -> Result<Vec<ChunkRef>, StoreError>;

    // Extended attributes.
    fn get_xattr(&mut self, ino: FileId, name: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn put_xattr(&mut self, ino: FileId, name: &[u8], value: &[u8]) -> Result<(), StoreError>;
    fn delete_xattr(&mut self, ino: FileId, name: &[u8]) -> Result<(), StoreError>;
    fn list_xattrs(&mut self, ino: FileId) -> Result<Vec<Xattr>, StoreError>;

    // Wrapped keys: one per (file, principal).
    fn get_wrapped_key(
        &mut self,
        ino: FileId,
        principal: Principal,
    ) -> Result<Option<Vec<u8>>, StoreError>;
    fn put_wrapped_key(
        &mut self,
        ino: FileId,
        principal: Principal,
        blob: &[u8],
    ) -> Result<(), StoreError>;
    fn delete_wrapped_key(&mut self, ino: FileId, principal: Principal) -> Result<(), StoreError>;
    fn list_wrapped_keys(&mut self, ino: FileId) -> Result<Vec<(Principal, Vec<u8>)>, StoreError>;

    // Signed records (docs/format.md section 5): opaque to the store, one per (kind, id, sub).
    /// The signed record stored under `key`, if any.
    fn get_signed(&mut self, key: SignedKey) -> Result<Option<Vec<u8>>, StoreError>;
    fn put_signed(&mut self, key: SignedKey, blob: &[u8]) -> Result<(), StoreError>;
    /// Removes every record of `kind` for `id`, whatever its `sub`.
    fn delete_signed(&mut self, kind: RecordKind, id: u64) -> Result<(), StoreError>;
    /// Every record of `kind` for `id`, by `sub`.
    fn list_signed(&mut self, kind: RecordKind, id: u64)
    -> Result<Vec<(u32, Vec<u8>)>, StoreError>;

    // Users and groups.
    fn get_user(&mut self, uid: u32) -> Result<Option<User>, StoreError>;
    fn get_user_by_name(&mut self, name: &str) -> Result<Option<User>, StoreError>;
    fn put_user(&mut self, user: &User) -> Result<(), StoreError>;
    fn list_pending_users(&mut self, limit: usize) -> Result<Vec<User>, StoreError>;
    fn get_group(&mut self, gid: u32) -> Result<Option<Group>, StoreError>;
    fn get_group_by_name(&mut self, name: &str) -> Result<Option<Group>, StoreError>;
    fn put_group(&mut self, group: &Group) -> Result<(), StoreError>;
    fn groups_of(&mut self, uid: u32) -> Result<Vec<u32>, StoreError>;
    /// The next number of a sequence ("uid", "gid"), starting at `first`.
    fn next_in_sequence(&mut self, sequence: &str, first: u32) -> Result<u32, StoreError>;

    // Sessions, by the SHA-256 of their token.
    fn get_session(&mut self, token_hash: &[u8; 32]) -> Result<Option<Session>, StoreError>;
    fn put_session(&mut self, session: &Session) -> Result<(), StoreError>;
    fn delete_session(&mut self, token_hash: &[u8; 32]) -> Result<(), StoreError>;
    fn delete_expired_sessions(&mut self, now: Time) -> Result<u64, StoreError>;

    // Login challenges answered, by their SHA-256, kept until they expire: a login is
    // answered once by every instance sharing the store, before and after a restart.
    /// Records `challenge` as used until `expires`; false if it was used already.
    fn use_challenge(&mut self, challenge: &[u8; 32], expires: Time) -> Result<bool, StoreError>;
    fn delete_expired_challenges(&mut self, now: Time) -> Result<u64, StoreError>;

    // The audit log: append-only, hash-chained.
    fn last_audit(&mut self) -> Result<Option<AuditEntry>, StoreError>;
    fn append_audit(&mut self, entry: &AuditEntry) -> Result<(), StoreError>;
    fn list_audit(&mut self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
}
