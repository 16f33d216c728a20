//! The embedded metadata store: SQLite (bundled) in WAL mode, in one file of the data dir.
//!
//! One write connection, behind a lock. A visible-only write that finds it free and nobody
//! queued runs on the caller's thread: handing it to another thread and back would cost more
//! than the commit. Every other write is queued for the writer thread, which commits
//! concurrent operations together (group commit): it takes every queued operation, runs each
//! under its own savepoint (a failed operation rolls back alone; an operation alone in its
//! batch needs none), commits once, and only then replies to each.
//!
//! Durability is per batch. A batch holding a [`Durability::Durable`] write calls the
//! [`Barrier`] (the chunk files written so far become durable) and commits with
//! `synchronous=FULL`, so the WAL is synced before anyone hears back; that sync also covers
//! every earlier visible-only batch, which committed with `synchronous=NORMAL` (in the WAL,
//! seen by every later read, not yet synced). The writer thread makes a durable commit when
//! visible batches have waited [`VISIBLE_WRITES_DURABLE_WITHIN`] (or after
//! `DURABLE_AFTER_COMMITS` commits), and checkpoints the WAL only right after a durable commit
//! (automatic checkpoints are off): a checkpoint syncs the WAL, and it must not make a record
//! durable before the chunk file it names. Such a durable commit first calls the barrier
//! without holding the connection (`writer::sync_ahead`): visible writes go on meanwhile, and
//! the barrier it then calls with the connection held has only their chunk files left to sync.
//! Reads run on the calling thread, on a small pool of read connections, each in its own
//! snapshot.
//!
//! `schema` creates and upgrades the tables, `writer` is the writer thread and its commits,
//! `txn` the records as rows, and `rows` their decoding.

pub mod backup;
mod rows;
mod schema;
mod txn;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use self::schema::migrate;
use self::txn::SqliteTxn;
use self::writer::{DURABLE_AFTER_COMMITS, Job, Message, Writer, writer_loop};
use super::*;

pub use self::schema::SCHEMA_VERSION;

const READ_CONNECTIONS: usize = 4;
/// What the WAL is cut back to when it restarts after a checkpoint (`journal_size_limit`):
/// nothing, so that new frames are appended. A second of creates leaves a WAL of about 30 MB;
/// rewritten in place once the page cache has dropped it, every frame (24 bytes of header and
/// a page, so never block-aligned) first reads the disk block it half covers.
const WAL_KEPT_BYTES: i64 = 0;
/// The write connection's page cache, in KiB.
const WRITER_CACHE_KIB: i64 = 64 * 1024;
/// Prepared statements kept per connection: more than the store has distinct statements.
const STATEMENTS_CACHED: usize = 128;

pub struct SqliteStore {
    writer: Arc<Mutex<Writer>>,
    /// To the writer thread.
    queue: mpsc::Sender<Message>,
    /// Jobs sent to the writer thread that it has not taken yet.
    queued: Arc<AtomicUsize>,
    readers: Mutex<Vec<Connection>>,
    path: std::path::PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SqliteStore({})", self.path.display())
    }
}

fn unavailable(error: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {error}"))
}

/// Runs one statement without parameters, prepared once per connection.
fn run(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut statement| statement.execute([]))
        .map(drop)
        .map_err(unavailable)
}

impl SqliteStore {
    /// One file in the data dir, which one storaged opens; visible writes are made durable
    /// later, after the barrier (see the module comment).
    pub const CAPABILITIES: Capabilities = Capabilities {
        sole_instance: true,
        deferred_durability: true,
    };

    /// Opens (creating if needed) the database at `path` and starts its writer thread.
    /// `barrier` makes the chunk files written so far durable (see [`Barrier`]); without one,
    /// the chunk store must sync each chunk file itself.
    pub fn open(path: &Path, barrier: Option<Barrier>) -> Result<SqliteStore, StoreError> {
        let writer = open_connection(path, false)?;
        migrate(&writer)?;
        // Checkpoints happen only after durable commits (see the module comment).
        writer
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(unavailable)?;
        // The pages a stream of creates touches (new files have random inode numbers, so all
        // over the inode, chunk and key tables) stay in the daemon, whatever else evicts the
        // OS page cache: creating files after `drop_caches` took 810 us a file with SQLite's
        // default 2 MiB, 720 us with this.
        writer
            .pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(unavailable)?;
        writer
            .pragma_update(None, "journal_size_limit", WAL_KEPT_BYTES)
            .map_err(unavailable)?;
        let writer = Writer::new(writer, barrier);
        let readers = (0..READ_CONNECTIONS)
            .map(|_| open_connection(path, true))
            .collect::<Result<Vec<_>, _>>()?;
        let writer = Arc::new(Mutex::new(writer));
        let queued = Arc::new(AtomicUsize::new(0));
        let (sender, receiver) = mpsc::channel();
        let (thread_writer, thread_queued) = (writer.clone(), queued.clone());
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(&thread_writer, &thread_queued, receiver))
            .map_err(|e| StoreError::Unavailable(format!("starting the sqlite writer: {e}")))?;
        Ok(SqliteStore {
            writer,
            queue: sender,
            queued,
            readers: Mutex::new(readers),
            path: path.to_path_buf(),
        })
    }
}

fn open_connection(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(unavailable)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(unavailable)?;
    // Every statement this store runs stays prepared (there are fewer than this).
    conn.set_prepared_statement_cache_capacity(STATEMENTS_CACHED);
    if !read_only {
        // WAL: readers never block the writer. synchronous=FULL: a commit is on disk (the WAL
        // is fsynced) before it returns, which group commit amortises; the writer lowers it to
        // NORMAL for visible-only batches.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(unavailable)?;
    }
    Ok(conn)
}

impl SqliteStore {
    /// Commits a visible-only write on this thread if the writer is idle: nothing queued and
    /// the connection free. Otherwise gives the operation back.
    fn write_here(
        &self,
        op: Operation,
        durability: Durability,
    ) -> Result<Result<(), OperationFailed>, Operation> {
        if durability != Durability::Visible || self.queued.load(Ordering::Acquire) > 0 {
            return Err(op);
        }
        let Ok(mut writer) = self.writer.try_lock() else {
            return Err(op);
        };
        let was_durable = writer.undurable_since.is_none();
        let mut batch = [Job {
            op: Some(op),
            durability,
        }];
        let outcome = writer
            .run_batch(&mut batch)
            .pop()
            .expect("one outcome per job");
        let undurable = writer.undurable_since.is_some();
        let many = writer.commits_since_checkpoint == DURABLE_AFTER_COMMITS;
        drop(writer);
        if (was_durable && undurable) || many {
            // If the thread is gone, so is everything else: the next write says so.
            let _ = self.queue.send(Message::Undurable);
        }
        Ok(outcome)
    }

    fn queue(
        &self,
        op: Option<Operation>,
        durability: Durability,
    ) -> BoxFuture<'_, Result<(), OperationFailed>> {
        Box::pin(async move {
            let stopped =
                || OperationFailed::Store(StoreError::Unavailable("sqlite writer stopped".into()));
            let (reply, done) = oneshot::channel();
            self.queued.fetch_add(1, Ordering::AcqRel);
            if self
                .queue
                .send(Message::Job(Job { op, durability }, reply))
                .is_err()
            {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                return Err(stopped());
            }
            done.await.map_err(|_| stopped())?
        })
    }
}

impl MetaStore for SqliteStore {
    fn write(
        &self,
        op: Operation,
        durability: Durability,
    ) -> BoxFuture<'_, Result<(), OperationFailed>> {
        match self.write_here(op, durability) {
            Ok(outcome) => Box::pin(std::future::ready(outcome)),
            Err(op) => self.queue(Some(op), durability),
        }
    }

    fn sync(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            match self.queue(None, Durability::Durable).await {
                Ok(()) => Ok(()),
                Err(OperationFailed::Store(error)) => Err(error),
                Err(OperationFailed::Rejected) => unreachable!("a sync runs no operation"),
            }
        })
    }

    fn read(&self, mut op: Operation) -> BoxFuture<'_, Result<(), OperationFailed>> {
        // Inline on the calling thread: an indexed read takes microseconds, less than handing
        // it to another thread and back would.
        Box::pin(async move {
            let pooled = self.readers.lock().expect("reader pool poisoned").pop();
            // All pooled readers busy: open one more; it joins the pool afterwards, so the
            // pool grows only as far as concurrency actually went.
            let conn = match pooled {
                Some(conn) => conn,
                None => open_connection(&self.path, true)?,
            };
            let outcome = run(&conn, "BEGIN")
                .map_err(OperationFailed::from)
                .and_then(|()| {
                    op(&mut SqliteTxn {
                        conn: &conn,
                        writable: false,
                    })
                });
            let _ = run(&conn, "COMMIT");
            self.readers
                .lock()
                .expect("reader pool poisoned")
                .push(conn);
            outcome
        })
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn capabilities(&self) -> Capabilities {
        SqliteStore::CAPABILITIES
    }
}
