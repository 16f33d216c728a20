//! The MongoDB metadata store, for production and for several storaged instances sharing one
//! replica set: records are documents with named fields, in the collections and indexes that
//! `docs/format.md` section 7 lists.
//!
//! An operation runs on a blocking thread; its [`Txn`] calls the async driver through the
//! runtime handle. A write runs inside one multi-document transaction (snapshot read concern,
//! majority write concern) and is run again, with jittered backoff and within bounds, when
//! another writer wins a conflict; after too many losses it fails with
//! `StoreError::Conflict`, never half-applied. Reads run in a snapshot session. Without a
//! reachable server every call fails with `StoreError::Unavailable`, and works again once the
//! driver reconnects.

mod docs;
pub mod dump;
mod failure;
pub mod schema;
mod txn;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mongodb::options::{ClientOptions, ReadConcern, TransactionOptions, WriteConcern};
use mongodb::{Client, ClientSession, Database};
use tokio::runtime::Handle;

use self::failure::Class;
use self::schema::Collections;
use self::txn::MongoTxn;
use super::*;

pub use self::schema::SCHEMA_VERSION;

/// The database used when the URL names none.
pub const DEFAULT_DATABASE: &str = "vault";
/// How long a call waits for a usable server before it fails as unavailable, unless the URL
/// sets `serverSelectionTimeoutMS`.
const SERVER_WAIT_DEFAULT: Duration = Duration::from_secs(5);
/// A conflicting write is run again at most this often, and not after this long: longer than
/// MongoDB keeps an abandoned transaction (`transactionLifetimeLimitSeconds`, 60 s by
/// default). A storaged killed mid-transaction leaves its documents locked until the server
/// reaps that transaction; writes meanwhile wait it out instead of failing.
const WRITE_ATTEMPTS_MAX: u32 = 2048;
const WRITE_RETRY_TIME_MAX: Duration = Duration::from_secs(75);
/// The backoff before the n-th retry doubles from the first value up to the second.
const BACKOFF_FIRST: Duration = Duration::from_millis(1);
const BACKOFF_MAX: Duration = Duration::from_millis(100);
/// A commit whose outcome is unknown (a dropped connection) is repeated at most this often.
const COMMIT_ATTEMPTS_MAX: u32 = 4;
/// An operation that met a broken connection is tried once more: the driver reconnects
/// meanwhile, as after a server restart. (So is a read whose snapshot the server dropped.)
const UNAVAILABLE_ATTEMPTS_MAX: u32 = 2;

pub struct MongoStore {
    shared: Arc<Shared>,
    /// Writers of this instance take turns. Every change appends to the audit hash chain, so
    /// two concurrent write transactions always conflict on its tail: queueing them here
    /// turns that into waiting, and only writers of different instances still conflict.
    turn: tokio::sync::Mutex<()>,
}

struct Shared {
    client: Client,
    collections: Collections,
    database: String,
    /// Counts writes that found no server. A writer that queued for its turn while one did
    /// fails at once instead of waiting for the server again behind it, so that during an
    /// outage one write at a time probes the server and every other reports the outage.
    outages: AtomicU64,
}

impl std::fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MongoStore({})", self.shared.database)
    }
}

impl MongoStore {
    /// Several instances may share one database, and MongoDB cannot order its journal after
    /// our chunk files: every commit is durable, each chunk file synced before it.
    pub const CAPABILITIES: Capabilities = Capabilities {
        sole_instance: false,
        deferred_durability: false,
    };

    /// Connects to the server of `url` (`mongodb://...`, the database in its path, default
    /// [`DEFAULT_DATABASE`]) and brings the schema up to date.
    pub async fn open(url: &str) -> Result<MongoStore, StoreError> {
        let mut options = ClientOptions::parse(url).await.map_err(|e| {
            StoreError::Unavailable(format!("mongodb URL {}: {}", redact(url), e.kind))
        })?;
        options
            .server_selection_timeout
            .get_or_insert(SERVER_WAIT_DEFAULT);
        options.connect_timeout.get_or_insert(SERVER_WAIT_DEFAULT);
        options.app_name.get_or_insert_with(|| "storaged".into());
        let database = options
            .default_database
            .clone()
            .unwrap_or_else(|| DEFAULT_DATABASE.to_string());
        let client = Client::with_options(options).map_err(|e| failure::store_error(&e))?;
        let db: Database = client.database(&database);
        let collections = Collections::new(&db);
        schema::migrate(&db, &collections).await?;
        Ok(MongoStore {
            shared: Arc::new(Shared {
                client,
                collections,
                database,
                outages: AtomicU64::new(0),
            }),
            turn: tokio::sync::Mutex::new(()),
        })
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

impl MetaStore for MongoStore {
    /// Every commit is durable (majority write concern): MongoDB cannot order its
    /// journal after our chunk files, so it does not defer.
    fn write(
        &self,
        op: Operation,
        _durability: Durability,
    ) -> BoxFuture<'_, Result<(), OperationFailed>> {
        Box::pin(async move {
            let outages = self.shared.outages.load(Ordering::Acquire);
            let _turn = self.turn.lock().await;
            if self.shared.outages.load(Ordering::Acquire) != outages {
                return Err(unavailable(
                    "mongodb: no server reachable (the write before this one found none)".into(),
                ));
            }
            let shared = self.shared.clone();
            let handle = Handle::current();
            tokio::task::spawn_blocking(move || shared.write(&handle, op))
                .await
                .map_err(|e| unavailable(format!("mongodb writer: {e}")))?
        })
    }

    fn read(&self, op: Operation) -> BoxFuture<'_, Result<(), OperationFailed>> {
        Box::pin(async move {
            let shared = self.shared.clone();
            let handle = Handle::current();
            tokio::task::spawn_blocking(move || shared.read(&handle, op))
                .await
                .map_err(|e| unavailable(format!("mongodb reader: {e}")))?
        })
    }

    fn sync(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn backend(&self) -> &'static str {
        "mongodb"
    }

    fn capabilities(&self) -> Capabilities {
        MongoStore::CAPABILITIES
    }
}

fn unavailable(message: String) -> OperationFailed {
    OperationFailed::Store(StoreError::Unavailable(message))
}

/// How one attempt ended.
enum Attempt {
    Done(Result<(), OperationFailed>),
    Failed(mongodb::error::Error),
}

impl Shared {
    fn start_session(&self, handle: &Handle, snapshot: bool) -> Result<ClientSession, Attempt> {
        let start = self.client.start_session();
        let start = if snapshot {
            start.snapshot(true)
        } else {
            start
        };
        block(handle, start).map_err(Attempt::Failed)
    }

    fn read(&self, handle: &Handle, mut op: Operation) -> Result<(), OperationFailed> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let outcome = self
                .start_session(handle, true)
                .and_then(|mut session| self.run(handle, &mut session, false, &mut op));
            match outcome {
                Ok(done) => return done,
                Err(Attempt::Done(done)) => return done,
                Err(Attempt::Failed(error)) => {
                    // A broken connection, or a snapshot the server could not keep: again.
                    let again = matches!(
                        failure::classify(&error),
                        Class::Unavailable | Class::Conflict
                    );
                    if !again || attempts >= UNAVAILABLE_ATTEMPTS_MAX {
                        return Err(OperationFailed::Store(failure::store_error(&error)));
                    }
                }
            }
        }
    }

    /// Runs `op` against `session`: the operation's own outcome, or the driver error that
    /// ended it.
    fn run(
        &self,
        handle: &Handle,
        session: &mut ClientSession,
        writable: bool,
        op: &mut Operation,
    ) -> Result<Result<(), OperationFailed>, Attempt> {
        let mut txn = MongoTxn {
            handle,
            collections: &self.collections,
            session,
            writable,
            failure: None,
        };
        let outcome = op(&mut txn);
        match txn.failure {
            Some(error) => Err(Attempt::Failed(error)),
            None => Ok(outcome),
        }
    }

    fn write(&self, handle: &Handle, mut op: Operation) -> Result<(), OperationFailed> {
        let started = Instant::now();
        let mut unavailable = 0;
        for attempt in 1..=WRITE_ATTEMPTS_MAX {
            let error = match self.attempt_write(handle, &mut op) {
                Attempt::Done(done) => return done,
                Attempt::Failed(error) => error,
            };
            let retry = match failure::classify(&error) {
                Class::Conflict => started.elapsed() < WRITE_RETRY_TIME_MAX,
                Class::Unavailable => {
                    unavailable += 1;
                    unavailable < UNAVAILABLE_ATTEMPTS_MAX
                }
                Class::CommitUnknown | Class::Refused => false,
            };
            if !retry || attempt == WRITE_ATTEMPTS_MAX {
                if failure::classify(&error) == Class::Unavailable {
                    self.outages.fetch_add(1, Ordering::AcqRel);
                }
                let store_error = match failure::store_error(&error) {
                    StoreError::Conflict(last) => StoreError::Conflict(format!(
                        "gave up after {attempt} attempts in {:?}: {last}",
                        started.elapsed()
                    )),
                    other => other,
                };
                return Err(OperationFailed::Store(store_error));
            }
            tracing::debug!(attempt, error = %failure::describe(&error), "retrying a metadata write");
            std::thread::sleep(backoff(attempt));
        }
        unreachable!("the last attempt returns")
    }

    /// One transaction: run the operation, then commit it (or abort it when the operation
    /// refused or the server failed it).
    fn attempt_write(&self, handle: &Handle, op: &mut Operation) -> Attempt {
        let mut session = match self.start_session(handle, false) {
            Ok(session) => session,
            Err(attempt) => return attempt,
        };
        let options = TransactionOptions::builder()
            .read_concern(ReadConcern::snapshot())
            .write_concern(WriteConcern::majority())
            .build();
        if let Err(error) = block(handle, session.start_transaction().with_options(options)) {
            return Attempt::Failed(error);
        }
        let outcome = match self.run(handle, &mut session, true, op) {
            Ok(outcome) => outcome,
            Err(attempt) => {
                let _ = block(handle, session.abort_transaction());
                return attempt;
            }
        };
        if outcome.is_err() {
            // Refused by the operation: nothing it wrote may stay. An abort that fails leaves
            // the transaction to the server, which drops it uncommitted.
            let _ = block(handle, session.abort_transaction());
            return Attempt::Done(outcome);
        }
        let mut commits = 0;
        loop {
            commits += 1;
            match block(handle, session.commit_transaction()) {
                Ok(()) => return Attempt::Done(Ok(())),
                Err(error)
                    if failure::classify(&error) == Class::CommitUnknown
                        && commits < COMMIT_ATTEMPTS_MAX =>
                {
                    std::thread::sleep(backoff(commits));
                }
                Err(error) => return Attempt::Failed(error),
            }
        }
    }
}

/// Waits for one driver call from an operation's blocking thread.
fn block<F: std::future::IntoFuture>(handle: &Handle, work: F) -> F::Output {
    handle.block_on(work.into_future())
}

/// Exponential backoff with jitter: half the step, plus a random part of the other half.
fn backoff(attempt: u32) -> Duration {
    let step = BACKOFF_FIRST
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_MAX);
    let half = step / 2;
    let random = u64::from_le_bytes(identity::random_bytes::<8>());
    let jitter_nanos = random % (half.as_nanos() as u64).max(1);
    half + Duration::from_nanos(jitter_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        for attempt in 1..40 {
            let wait = backoff(attempt);
            assert!(wait <= BACKOFF_MAX, "{attempt}: {wait:?}");
            assert!(
                wait >= BACKOFF_FIRST.min(BACKOFF_MAX / 2),
                "{attempt}: {wait:?}"
            );
        }
        assert!(backoff(30) >= BACKOFF_MAX / 2);
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("mongodb://vault:s3cret@db1:27017/vault"),
            "mongodb://***@db1:27017/vault"
        );
        assert_eq!(redact("mongodb://db1/vault"), "mongodb://db1/vault");
    }
}
