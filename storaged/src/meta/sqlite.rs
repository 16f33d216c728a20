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
//! [`DURABLE_AFTER_COMMITS`] commits), and checkpoints the WAL only right after a durable commit
//! (automatic checkpoints are off): a checkpoint syncs the WAL, and it must not make a record
//! durable before the chunk file it names. Such a durable commit first calls the barrier
//! without holding the connection ([`sync_ahead`]): visible writes go on meanwhile, and the
//! barrier it then calls with the connection held has only their chunk files left to sync.
//! Reads run on the calling thread, on a small pool of read connections, each in its own
//! snapshot.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::oneshot;

use super::*;

/// The schema this build writes. Older databases are upgraded on open; newer ones refused.
pub const SCHEMA_VERSION: u32 = 1;

/// How many operations one commit may carry.
const GROUP_COMMIT_OPERATIONS_MAX: usize = 512;
/// Commits between two checkpoints of the WAL into the database file (at least).
const CHECKPOINT_AFTER_COMMITS: u32 = 256;
/// Commits after which the next one is made durable so that a checkpoint may follow; bounds
/// the WAL while only visible writes come.
const DURABLE_AFTER_COMMITS: u32 = 1024;
/// The settings row a durable commit writes when visible commits wait for it, so that it
/// syncs the WAL even when it has nothing else to write.
const DURABLE_MARK: &str = "durable_mark";
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

struct Job {
    /// `None`: a sync, which asks only that what came before be durable.
    op: Option<Operation>,
    durability: Durability,
}

enum Message {
    Job(Job, oneshot::Sender<Result<(), OperationFailed>>),
    /// A commit on a caller's thread left the first visible writes waiting for durability
    /// (the writer thread starts counting down to making them durable), or made enough
    /// commits that a durable one is due.
    Undurable,
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
        let writer = Writer {
            conn: writer,
            barrier,
            undurable_since: None,
            commits_since_checkpoint: 0,
            synchronous_full: true,
        };
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

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;",
    )
    .map_err(unavailable)?;
    let found: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM settings WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(unavailable)?;
    let found = match found {
        None => 0,
        Some(bytes) => u32::from_le_bytes(
            bytes
                .try_into()
                .map_err(|_| StoreError::Corrupt("schema_version".into()))?,
        ),
    };
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    // Each step takes the schema from version N to N + 1; a new version appends one.
    let steps: [&str; 1] = [SCHEMA_V1];
    for (version, step) in steps.iter().enumerate().skip(found as usize) {
        let next = version as u32 + 1;
        conn.execute_batch(&format!("BEGIN; {step}; COMMIT;"))
            .map_err(unavailable)?;
        conn.execute(
            "INSERT OR REPLACE INTO settings (key, value) VALUES ('schema_version', ?1)",
            params![next.to_le_bytes().to_vec()],
        )
        .map_err(unavailable)?;
    }
    Ok(())
}

const SCHEMA_V1: &str = "
CREATE TABLE inodes (
    ino INTEGER PRIMARY KEY, kind INTEGER NOT NULL, perm INTEGER NOT NULL,
    uid INTEGER NOT NULL, gid INTEGER NOT NULL, nlink INTEGER NOT NULL, size INTEGER NOT NULL,
    atime INTEGER NOT NULL, mtime INTEGER NOT NULL, ctime INTEGER NOT NULL,
    rdev INTEGER NOT NULL, owner INTEGER NOT NULL, version INTEGER NOT NULL,
    parent INTEGER NOT NULL, target BLOB NOT NULL, acl BLOB NOT NULL, orphaned_at INTEGER);
CREATE INDEX inodes_orphaned ON inodes (orphaned_at) WHERE orphaned_at IS NOT NULL;
CREATE TABLE entries (parent INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL,
    kind INTEGER NOT NULL, PRIMARY KEY (parent, name)) WITHOUT ROWID;
CREATE TABLE chunks (ino INTEGER NOT NULL, idx INTEGER NOT NULL, generation INTEGER NOT NULL,
    PRIMARY KEY (ino, idx)) WITHOUT ROWID;
CREATE TABLE garbage (ino INTEGER NOT NULL, idx INTEGER NOT NULL, generation INTEGER NOT NULL,
    PRIMARY KEY (ino, idx, generation)) WITHOUT ROWID;
CREATE TABLE xattrs (ino INTEGER NOT NULL, name BLOB NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (ino, name)) WITHOUT ROWID;
CREATE TABLE wrapped_keys (ino INTEGER NOT NULL, principal TEXT NOT NULL, blob BLOB NOT NULL,
    PRIMARY KEY (ino, principal)) WITHOUT ROWID;
CREATE TABLE users (uid INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
    signing_key BLOB NOT NULL, wrapping_key BLOB NOT NULL, certificate BLOB NOT NULL,
    created INTEGER NOT NULL);
CREATE TABLE groups (gid INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE group_members (gid INTEGER NOT NULL, uid INTEGER NOT NULL,
    PRIMARY KEY (gid, uid)) WITHOUT ROWID;
CREATE INDEX group_members_by_uid ON group_members (uid);
CREATE TABLE sequences (name TEXT PRIMARY KEY, next INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE sessions (token_hash BLOB PRIMARY KEY, uid INTEGER NOT NULL,
    admin INTEGER NOT NULL, expires INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE audit (seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, uid INTEGER NOT NULL,
    event TEXT NOT NULL, ino INTEGER NOT NULL, detail TEXT NOT NULL,
    prev_hash BLOB NOT NULL, hash BLOB NOT NULL)
";

/// The write connection and what its thread knows about durability.
struct Writer {
    conn: Connection,
    barrier: Option<Barrier>,
    /// When the oldest commit that is visible but not yet durable was made.
    undurable_since: Option<Instant>,
    commits_since_checkpoint: u32,
    /// The connection's `synchronous` setting: FULL (true) or NORMAL.
    synchronous_full: bool,
}

fn lock(writer: &Mutex<Writer>) -> std::sync::MutexGuard<'_, Writer> {
    writer.lock().expect("sqlite writer poisoned")
}

fn writer_loop(writer: &Mutex<Writer>, queued: &AtomicUsize, messages: mpsc::Receiver<Message>) {
    loop {
        let undurable_since = lock(writer).undurable_since;
        let first = match undurable_since {
            None => messages.recv().ok(),
            Some(since) => {
                let wait = (since + VISIBLE_WRITES_DURABLE_WITHIN)
                    .saturating_duration_since(Instant::now());
                match messages.recv_timeout(wait) {
                    Ok(message) => Some(message),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        sync_ahead(writer);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => None,
                }
            }
        };
        let Some(first) = first else { break };
        let (mut batch, mut replies) = (Vec::new(), Vec::new());
        let mut next = Some(first);
        while let Some(message) = next {
            if let Message::Job(job, reply) = message {
                queued.fetch_sub(1, Ordering::AcqRel);
                batch.push(job);
                replies.push(reply);
            }
            next = match batch.len() < GROUP_COMMIT_OPERATIONS_MAX {
                true => messages.try_recv().ok(),
                false => None,
            };
        }
        if !batch.is_empty() {
            let outcomes = lock(writer).run_batch(&mut batch);
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
        if lock(writer).durability_due() {
            sync_ahead(writer);
        }
    }
    // Stopping: the connection checkpoints as it closes, which must not come before the
    // chunk files of the visible commits.
    lock(writer).make_durable();
}

/// Makes the visible commits durable without stopping visible writes for long: the barrier
/// first runs without the connection (the chunk files written so far, in bulk), while visible
/// commits go on; then, with the connection held, the durable commit calls it again, for the
/// chunk files of the commits made meanwhile only. (With the barrier held throughout, each
/// such commit stopped every write for the 20-70 ms a sync of a second's files takes.)
fn sync_ahead(writer: &Mutex<Writer>) {
    let barrier = {
        let writer = lock(writer);
        if writer.undurable_since.is_none() {
            return;
        }
        writer.barrier.clone()
    };
    if let Some(barrier) = barrier
        && let Err(error) = barrier()
    {
        // The barrier under the connection tries again, and fails the commit if it must.
        tracing::warn!(%error, "could not sync the chunk files ahead of a durable commit");
    }
    lock(writer).make_durable();
}

impl Writer {
    /// Whether the writer thread should make the visible commits durable now.
    fn durability_due(&self) -> bool {
        let Some(since) = self.undurable_since else {
            return false;
        };
        self.commits_since_checkpoint >= DURABLE_AFTER_COMMITS
            || since.elapsed() >= VISIBLE_WRITES_DURABLE_WITHIN
    }

    /// A durable commit of nothing but the mark, when visible commits wait for one.
    fn make_durable(&mut self) {
        if self.undurable_since.is_none() {
            return;
        }
        if let Err(error) = self.commit(&mut [], true) {
            tracing::error!(%error, "could not make the visible metadata writes durable; will retry");
            // Retry in a while, not at once.
            self.undurable_since = Some(Instant::now());
        }
    }

    /// Runs a batch in one transaction, each operation under its own savepoint, and commits
    /// it as durably as its most demanding member asks.
    fn run_batch(&mut self, batch: &mut [Job]) -> Vec<Result<(), OperationFailed>> {
        let durable = batch.iter().any(|j| j.durability == Durability::Durable);
        let only_syncs = batch.iter().all(|j| j.op.is_none());
        if only_syncs && self.undurable_since.is_none() {
            // Everything acknowledged is durable already.
            return batch.iter().map(|_| Ok(())).collect();
        }
        match self.commit(batch, durable) {
            Ok(outcomes) => outcomes,
            Err(error) => batch
                .iter()
                .map(|_| Err(OperationFailed::Store(error.clone())))
                .collect(),
        }
    }

    fn commit(
        &mut self,
        batch: &mut [Job],
        durable: bool,
    ) -> Result<Vec<Result<(), OperationFailed>>, StoreError> {
        if self.synchronous_full != durable {
            let level = if durable { "FULL" } else { "NORMAL" };
            self.conn
                .pragma_update(None, "synchronous", level)
                .map_err(unavailable)?;
            self.synchronous_full = durable;
        }
        if durable && let Some(barrier) = &self.barrier {
            // Every job in the batch was queued after its chunk files were written.
            barrier()
                .map_err(|e| StoreError::Unavailable(format!("syncing the chunk files: {e}")))?;
        }
        let conn = &self.conn;
        run(conn, "BEGIN IMMEDIATE")?;
        // An operation alone in its transaction rolls back with it if it fails.
        let alone = batch.len() == 1 && !durable;
        let mut outcomes = Vec::with_capacity(batch.len());
        for job in batch.iter_mut() {
            let Some(op) = job.op.as_mut() else {
                outcomes.push(Ok(()));
                continue;
            };
            let mut txn = SqliteTxn {
                conn,
                writable: true,
            };
            if alone {
                let outcome = op(&mut txn);
                if outcome.is_err() {
                    let _ = run(conn, "ROLLBACK");
                    return Ok(vec![outcome]);
                }
                outcomes.push(outcome);
                continue;
            }
            let outcome = run(conn, "SAVEPOINT op").map_err(Into::into);
            let outcome = outcome.and_then(|()| op(&mut txn));
            let end = match outcome.is_ok() {
                true => run(conn, "RELEASE op"),
                false => run(conn, "ROLLBACK TO op").and_then(|()| run(conn, "RELEASE op")),
            };
            let outcome = match end {
                Ok(()) => outcome,
                Err(error) => Err(OperationFailed::Store(error)),
            };
            outcomes.push(outcome);
        }
        let committed = (|| {
            if durable && self.undurable_since.is_some() {
                // Earlier visible commits wait for this one's WAL sync, but a commit with
                // nothing written syncs nothing: the mark makes sure it does.
                let mark = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                conn.execute(
                    "INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)",
                    params![DURABLE_MARK, mark.to_le_bytes().to_vec()],
                )
                .map_err(unavailable)?;
            }
            run(conn, "COMMIT")
        })();
        if let Err(error) = committed {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(error);
        }
        self.commits_since_checkpoint += 1;
        if durable {
            self.undurable_since = None;
            if self.commits_since_checkpoint >= CHECKPOINT_AFTER_COMMITS {
                // Right after a durable commit: everything the WAL holds may become durable.
                match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    Ok(()) => self.commits_since_checkpoint = 0,
                    Err(error) => tracing::warn!(%error, "WAL checkpoint failed; will retry"),
                }
            }
        } else if self.undurable_since.is_none() {
            self.undurable_since = Some(Instant::now());
        }
        Ok(outcomes)
    }
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

struct SqliteTxn<'a> {
    conn: &'a Connection,
    writable: bool,
}

fn id(value: u64) -> i64 {
    value as i64
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn key32(bytes: Vec<u8>, what: &str) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| corrupt(what))
}

impl SqliteTxn<'_> {
    fn execute(&self, sql: &str, params: impl rusqlite::Params) -> Result<usize, StoreError> {
        assert!(
            self.writable,
            "a read-only metadata transaction tried to write"
        );
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(params))
            .map_err(unavailable)
    }

    fn query_one<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        map: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.query_row(params, map).optional())
            .map_err(unavailable)
    }

    fn query_all<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        mut map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut statement = self.conn.prepare_cached(sql).map_err(unavailable)?;
        let rows = statement
            .query_map(params, |row| map(row))
            .map_err(unavailable)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
    }

    fn users_where(
        &self,
        clause: &str,
        param: impl rusqlite::ToSql,
    ) -> Result<Vec<User>, StoreError> {
        let sql = format!(
            "SELECT uid, name, signing_key, wrapping_key, certificate, created FROM users {clause}"
        );
        let rows = self.query_all(&sql, params![param], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?;
        rows.into_iter()
            .map(
                |(uid, name, signing, wrapping, certificate, created): (
                    u32,
                    String,
                    Vec<u8>,
                    Vec<u8>,
                    Vec<u8>,
                    i64,
                )| {
                    Ok(User {
                        uid,
                        name,
                        signing_key: key32(signing, "user signing key")?,
                        wrapping_key: key32(wrapping, "user wrapping key")?,
                        certificate,
                        created,
                    })
                },
            )
            .collect()
    }

    fn group_with_members(&self, row: Option<(u32, String)>) -> Result<Option<Group>, StoreError> {
        let Some((gid, name)) = row else {
            return Ok(None);
        };
        let members = self.query_all(
            "SELECT uid FROM group_members WHERE gid = ?1 ORDER BY uid",
            params![gid],
            |r| r.get(0),
        )?;
        Ok(Some(Group { gid, name, members }))
    }
}

fn kind_of(code: i64) -> Result<Kind, StoreError> {
    Kind::from_code(code).ok_or_else(|| corrupt("file kind"))
}

type InodeRow = (
    i64,
    i64,
    u32,
    u32,
    u32,
    u32,
    i64,
    i64,
    i64,
    i64,
    i64,
    u32,
    i64,
    i64,
    Vec<u8>,
    Vec<u8>,
    Option<i64>,
);

fn inode_from_row(row: InodeRow) -> Result<Inode, StoreError> {
    let (
        ino,
        kind,
        perm,
        uid,
        gid,
        nlink,
        size,
        atime,
        mtime,
        ctime,
        rdev,
        owner,
        version,
        parent,
        target,
        acl,
        orphaned_at,
    ) = row;
    Ok(Inode {
        ino: ino as u64,
        kind: kind_of(kind)?,
        perm,
        uid,
        gid,
        nlink,
        size: size as u64,
        atime,
        mtime,
        ctime,
        rdev: rdev as u64,
        owner,
        version: version as u64,
        parent: parent as u64,
        target,
        acl: decode_acl(&acl).ok_or_else(|| corrupt("acl"))?,
        orphaned_at,
    })
}

impl Txn for SqliteTxn<'_> {
    fn get_setting(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.query_one(
            "SELECT value FROM settings WHERE key = ?1",
            params![key],
            |r| r.get(0),
        )
    }
    fn put_setting(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.execute(
            "INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)",
            params![key, value],
        )
        .map(drop)
    }

    fn get_inode(&mut self, ino: Ino) -> Result<Option<Inode>, StoreError> {
        let row = self.query_one(
            "SELECT ino, kind, perm, uid, gid, nlink, size, atime, mtime, ctime, rdev, owner,
                    version, parent, target, acl, orphaned_at FROM inodes WHERE ino = ?1",
            params![id(ino)],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                    r.get(11)?,
                    r.get(12)?,
                    r.get(13)?,
                    r.get(14)?,
                    r.get(15)?,
                    r.get(16)?,
                ))
            },
        )?;
        row.map(inode_from_row).transpose()
    }
    fn put_inode(&mut self, i: &Inode) -> Result<(), StoreError> {
        self.execute(
            "INSERT OR REPLACE INTO inodes (ino, kind, perm, uid, gid, nlink, size, atime, mtime,
                ctime, rdev, owner, version, parent, target, acl, orphaned_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            params![
                id(i.ino),
                i.kind as i64,
                i.perm,
                i.uid,
                i.gid,
                i.nlink,
                id(i.size),
                i.atime,
                i.mtime,
                i.ctime,
                id(i.rdev),
                i.owner,
                id(i.version),
                id(i.parent),
                i.target,
                encode_acl(&i.acl),
                i.orphaned_at
            ],
        )
        .map(drop)
    }
    fn delete_inode(&mut self, ino: Ino) -> Result<(), StoreError> {
        for sql in [
            "DELETE FROM inodes WHERE ino = ?1",
            "DELETE FROM xattrs WHERE ino = ?1",
            "DELETE FROM wrapped_keys WHERE ino = ?1",
        ] {
            self.execute(sql, params![id(ino)])?;
        }
        Ok(())
    }
    fn count_inodes(&mut self) -> Result<u64, StoreError> {
        let count: Option<i64> = self.query_one("SELECT count(*) FROM inodes", [], |r| r.get(0))?;
        Ok(count.unwrap_or(0) as u64)
    }
    fn list_orphans(&mut self, before: Time, limit: usize) -> Result<Vec<Ino>, StoreError> {
        self.query_all(
            "SELECT ino FROM inodes WHERE orphaned_at IS NOT NULL AND orphaned_at < ?1 LIMIT ?2",
            params![before, limit as i64],
            |r| r.get::<_, i64>(0).map(|i| i as u64),
        )
    }

    fn get_entry(&mut self, parent: Ino, name: &[u8]) -> Result<Option<Entry>, StoreError> {
        let row: Option<(i64, i64)> = self.query_one(
            "SELECT ino, kind FROM entries WHERE parent = ?1 AND name = ?2",
            params![id(parent), name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        row.map(|(ino, kind)| {
            Ok(Entry {
                ino: ino as u64,
                kind: kind_of(kind)?,
            })
        })
        .transpose()
    }
    fn put_entry(&mut self, parent: Ino, name: &[u8], entry: Entry) -> Result<(), StoreError> {
        self.execute(
            "INSERT OR REPLACE INTO entries (parent, name, ino, kind) VALUES (?1, ?2, ?3, ?4)",
            params![id(parent), name, id(entry.ino), entry.kind as i64],
        )
        .map(drop)
    }
    fn delete_entry(&mut self, parent: Ino, name: &[u8]) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM entries WHERE parent = ?1 AND name = ?2",
            params![id(parent), name],
        )
        .map(drop)
    }
    fn list_entries(
        &mut self,
        parent: Ino,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Entry)>, StoreError> {
        let rows: Vec<(Vec<u8>, i64, i64)> = self.query_all(
            "SELECT name, ino, kind FROM entries WHERE parent = ?1 AND name > ?2
             ORDER BY name LIMIT ?3",
            params![id(parent), after, limit as i64],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        rows.into_iter()
            .map(|(name, ino, kind)| {
                Ok((
                    name,
                    Entry {
                        ino: ino as u64,
                        kind: kind_of(kind)?,
                    },
                ))
            })
            .collect()
    }

    fn get_chunk(&mut self, ino: Ino, index: u64) -> Result<Option<u64>, StoreError> {
        self.query_one(
            "SELECT generation FROM chunks WHERE ino = ?1 AND idx = ?2",
            params![id(ino), id(index)],
            |r| r.get::<_, i64>(0).map(|g| g as u64),
        )
    }
    fn put_chunk(&mut self, ino: Ino, index: u64, generation: u64) -> Result<(), StoreError> {
        self.execute(
            "INSERT OR REPLACE INTO chunks (ino, idx, generation) VALUES (?1, ?2, ?3)",
            params![id(ino), id(index), id(generation)],
        )
        .map(drop)
    }
    fn delete_chunk(&mut self, ino: Ino, index: u64) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM chunks WHERE ino = ?1 AND idx = ?2",
            params![id(ino), id(index)],
        )
        .map(drop)
    }
    fn list_chunks(
        &mut self,
        ino: Ino,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        self.query_all(
            "SELECT idx, generation FROM chunks WHERE ino = ?1 AND idx >= ?2 ORDER BY idx LIMIT ?3",
            params![id(ino), id(from), limit as i64],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
    }

    fn add_garbage(&mut self, c: ChunkRef) -> Result<(), StoreError> {
        self.execute(
            "INSERT OR IGNORE INTO garbage (ino, idx, generation) VALUES (?1, ?2, ?3)",
            params![id(c.ino), id(c.index), id(c.generation)],
        )
        .map(drop)
    }
    fn list_garbage(&mut self, limit: usize) -> Result<Vec<ChunkRef>, StoreError> {
        self.query_all(
            "SELECT ino, idx, generation FROM garbage LIMIT ?1",
            params![limit as i64],
            |r| {
                Ok(ChunkRef {
                    ino: r.get::<_, i64>(0)? as u64,
                    index: r.get::<_, i64>(1)? as u64,
                    generation: r.get::<_, i64>(2)? as u64,
                })
            },
        )
    }
    fn delete_garbage(&mut self, c: ChunkRef) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM garbage WHERE ino = ?1 AND idx = ?2 AND generation = ?3",
            params![id(c.ino), id(c.index), id(c.generation)],
        )
        .map(drop)
    }

    fn get_xattr(&mut self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.query_one(
            "SELECT value FROM xattrs WHERE ino = ?1 AND name = ?2",
            params![id(ino), name],
            |r| r.get(0),
        )
    }
    fn put_xattr(&mut self, ino: Ino, name: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.execute(
            "INSERT OR REPLACE INTO xattrs (ino, name, value) VALUES (?1, ?2, ?3)",
            params![id(ino), name, value],
        )
        .map(drop)
    }
    fn delete_xattr(&mut self, ino: Ino, name: &[u8]) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM xattrs WHERE ino = ?1 AND name = ?2",
            params![id(ino), name],
        )
        .map(drop)
    }
    fn list_xattrs(&mut self, ino: Ino) -> Result<Vec<Xattr>, StoreError> {
        self.query_all(
            "SELECT name, value FROM xattrs WHERE ino = ?1 ORDER BY name",
            params![id(ino)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    fn get_wrapped_key(
        &mut self,
        ino: Ino,
        principal: Principal,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.query_one(
            "SELECT blob FROM wrapped_keys WHERE ino = ?1 AND principal = ?2",
            params![id(ino), principal.key()],
            |r| r.get(0),
        )
    }
    fn put_wrapped_key(
        &mut self,
        ino: Ino,
        principal: Principal,
        blob: &[u8],
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT OR REPLACE INTO wrapped_keys (ino, principal, blob) VALUES (?1, ?2, ?3)",
            params![id(ino), principal.key(), blob],
        )
        .map(drop)
    }
    fn delete_wrapped_key(&mut self, ino: Ino, principal: Principal) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM wrapped_keys WHERE ino = ?1 AND principal = ?2",
            params![id(ino), principal.key()],
        )
        .map(drop)
    }
    fn list_wrapped_keys(&mut self, ino: Ino) -> Result<Vec<(Principal, Vec<u8>)>, StoreError> {
        let rows: Vec<(String, Vec<u8>)> = self.query_all(
            "SELECT principal, blob FROM wrapped_keys WHERE ino = ?1 ORDER BY principal",
            params![id(ino)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        rows.into_iter()
            .map(|(key, blob)| {
                Ok((
                    Principal::from_key(&key).ok_or_else(|| corrupt("principal"))?,
                    blob,
                ))
            })
            .collect()
    }

    fn get_user(&mut self, uid: u32) -> Result<Option<User>, StoreError> {
        Ok(self.users_where("WHERE uid = ?1", uid)?.pop())
    }
    fn get_user_by_name(&mut self, name: &str) -> Result<Option<User>, StoreError> {
        Ok(self.users_where("WHERE name = ?1", name)?.pop())
    }
    fn put_user(&mut self, u: &User) -> Result<(), StoreError> {
        self.execute(
            "INSERT OR REPLACE INTO users (uid, name, signing_key, wrapping_key, certificate, created)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![u.uid, u.name, u.signing_key.to_vec(), u.wrapping_key.to_vec(), u.certificate, u.created],
        )
        .map(drop)
    }
    fn list_pending_users(&mut self, limit: usize) -> Result<Vec<User>, StoreError> {
        self.users_where(
            "WHERE length(certificate) = 0 ORDER BY uid LIMIT ?1",
            limit as i64,
        )
    }
    fn get_group(&mut self, gid: u32) -> Result<Option<Group>, StoreError> {
        let row = self.query_one(
            "SELECT gid, name FROM groups WHERE gid = ?1",
            params![gid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        self.group_with_members(row)
    }
    fn get_group_by_name(&mut self, name: &str) -> Result<Option<Group>, StoreError> {
        let row = self.query_one(
            "SELECT gid, name FROM groups WHERE name = ?1",
            params![name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        self.group_with_members(row)
    }
    fn put_group(&mut self, g: &Group) -> Result<(), StoreError> {
        self.execute(
            "INSERT OR REPLACE INTO groups (gid, name) VALUES (?1, ?2)",
            params![g.gid, g.name],
        )?;
        self.execute("DELETE FROM group_members WHERE gid = ?1", params![g.gid])?;
        for uid in &g.members {
            self.execute(
                "INSERT INTO group_members (gid, uid) VALUES (?1, ?2)",
                params![g.gid, uid],
            )?;
        }
        Ok(())
    }
    fn groups_of(&mut self, uid: u32) -> Result<Vec<u32>, StoreError> {
        self.query_all(
            "SELECT gid FROM group_members WHERE uid = ?1 ORDER BY gid",
            params![uid],
            |r| r.get(0),
        )
    }
    fn next_in_sequence(&mut self, sequence: &str, first: u32) -> Result<u32, StoreError> {
        let current: Option<u32> = self.query_one(
            "SELECT next FROM sequences WHERE name = ?1",
            params![sequence],
            |r| r.get(0),
        )?;
        let value = current.unwrap_or(first);
        let next = value
            .checked_add(1)
            .ok_or_else(|| StoreError::Unavailable(format!("sequence {sequence} exhausted")))?;
        self.execute(
            "INSERT OR REPLACE INTO sequences (name, next) VALUES (?1, ?2)",
            params![sequence, next],
        )?;
        Ok(value)
    }

    fn get_session(&mut self, token_hash: &[u8; 32]) -> Result<Option<Session>, StoreError> {
        self.query_one(
            "SELECT uid, admin, expires FROM sessions WHERE token_hash = ?1",
            params![token_hash.to_vec()],
            |r| {
                Ok(Session {
                    token_hash: *token_hash,
                    uid: r.get(0)?,
                    admin: r.get(1)?,
                    expires: r.get(2)?,
                })
            },
        )
    }
    fn put_session(&mut self, s: &Session) -> Result<(), StoreError> {
        self.execute(
            "INSERT OR REPLACE INTO sessions (token_hash, uid, admin, expires) VALUES (?1, ?2, ?3, ?4)",
            params![s.token_hash.to_vec(), s.uid, s.admin, s.expires],
        )
        .map(drop)
    }
    fn delete_session(&mut self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM sessions WHERE token_hash = ?1",
            params![token_hash.to_vec()],
        )
        .map(drop)
    }
    fn delete_expired_sessions(&mut self, now: Time) -> Result<u64, StoreError> {
        self.execute("DELETE FROM sessions WHERE expires <= ?1", params![now])
            .map(|n| n as u64)
    }

    fn last_audit(&mut self) -> Result<Option<AuditEntry>, StoreError> {
        Ok(self.audit_where("ORDER BY seq DESC LIMIT 1", [])?.pop())
    }
    fn append_audit(&mut self, e: &AuditEntry) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO audit (seq, time, uid, event, ino, detail, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                id(e.seq),
                e.time,
                e.uid,
                e.event,
                id(e.ino),
                e.detail,
                e.prev_hash.to_vec(),
                e.hash.to_vec()
            ],
        )
        .map(drop)
    }
    fn list_audit(&mut self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_where(
            "WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
            params![id(from_seq), limit as i64],
        )
    }
}

impl SqliteTxn<'_> {
    fn audit_where(
        &self,
        clause: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let sql = format!(
            "SELECT seq, time, uid, event, ino, detail, prev_hash, hash FROM audit {clause}"
        );
        let rows = self.query_all(&sql, params, |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Vec<u8>>(6)?,
                r.get::<_, Vec<u8>>(7)?,
            ))
        })?;
        rows.into_iter()
            .map(|(seq, time, uid, event, ino, detail, prev, hash)| {
                Ok(AuditEntry {
                    seq: seq as u64,
                    time,
                    uid,
                    event,
                    ino: ino as u64,
                    detail,
                    prev_hash: key32(prev, "audit prev_hash")?,
                    hash: key32(hash, "audit hash")?,
                })
            })
            .collect()
    }
}
