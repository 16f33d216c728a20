//! Backups of the embedded store: a consistent copy of the database made while storaged runs,
//! with SQLite's online backup API, and the check of such a copy before it is restored.

use std::path::Path;
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::schema::SCHEMA_VERSION;
use super::unavailable;
use crate::meta::{SnapshotFacts, StoreError};

/// A copy that finds the database busy (a writer recovering it) tries again this often.
const BUSY_ATTEMPTS_MAX: u32 = 200;
const BUSY_WAIT: Duration = Duration::from_millis(50);

/// Copies the database at `source` into a new file `dest`, as of one moment: every page in one
/// step of the backup API, so one read transaction. Writers go on meanwhile (WAL); what they
/// commit after that moment is not in the copy. The copy is one self-contained file (no WAL),
/// checked whole before this returns.
pub fn snapshot(source: &Path, dest: &Path) -> Result<SnapshotFacts, StoreError> {
    if !source.is_file() {
        return Err(StoreError::Unavailable(format!(
            "no metadata database at {}",
            source.display()
        )));
    }
    let from = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(unavailable)?;
    from.busy_timeout(Duration::from_secs(10))
        .map_err(unavailable)?;
    let mut to = Connection::open_with_flags(
        dest,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(unavailable)?;
    {
        let backup = Backup::new(&from, &mut to).map_err(unavailable)?;
        let mut attempts = 0;
        loop {
            match backup.step(-1).map_err(unavailable)? {
                StepResult::Done => break,
                StepResult::Busy | StepResult::Locked if attempts < BUSY_ATTEMPTS_MAX => {
                    attempts += 1;
                    std::thread::sleep(BUSY_WAIT);
                }
                other => {
                    return Err(StoreError::Unavailable(format!(
                        "sqlite backup of {} did not finish: {other:?}",
                        source.display()
                    )));
                }
            }
        }
    }
    to.pragma_update(None, "journal_mode", "DELETE")
        .map_err(unavailable)?;
    facts(&to)
}

/// Checks a copy made by [`snapshot`] without changing it: whole (SQLite's integrity check),
/// of a schema this build reads, with a vault ID.
pub fn check(path: &Path) -> Result<SnapshotFacts, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(unavailable)?;
    facts(&conn)
}

fn facts(conn: &Connection) -> Result<SnapshotFacts, StoreError> {
    let verdict: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| StoreError::Corrupt(format!("sqlite integrity check: {e}")))?;
    if verdict != "ok" {
        return Err(StoreError::Corrupt(format!(
            "sqlite integrity check: {verdict}"
        )));
    }
    let setting = |key: &str| -> Result<Option<Vec<u8>>, StoreError> {
        conn.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| StoreError::Corrupt(format!("settings: {e}")))
    };
    let schema_version = setting("schema_version")?
        .and_then(|v| <[u8; 4]>::try_from(v).ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| StoreError::Corrupt("no schema version".into()))?;
    if schema_version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: schema_version,
            supported: SCHEMA_VERSION,
        });
    }
    let vault = setting("vault_id")?
        .ok_or_else(|| StoreError::Corrupt("no vault ID: not a vault's database".into()))?;
    let count = |table: &str| -> Result<u64, StoreError> {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| n as u64)
        .map_err(|e| StoreError::Corrupt(format!("{table}: {e}")))
    };
    Ok(SnapshotFacts {
        vault,
        schema_version,
        inodes: count("inodes")?,
        chunks: count("chunks")?,
    })
}
