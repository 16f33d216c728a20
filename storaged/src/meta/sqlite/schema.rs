//! The tables of the embedded store (`docs/format.md` documents them), created and upgraded
//! one version at a time when the database opens.

use rusqlite::{Connection, OptionalExtension, params};

use super::unavailable;
use crate::meta::StoreError;

/// The schema this build writes. Older databases are upgraded on open; newer ones refused.
pub const SCHEMA_VERSION: u32 = 5;

/// Brings the schema of the database up to [`SCHEMA_VERSION`], or refuses a newer one.
pub(super) fn migrate(conn: &Connection) -> Result<(), StoreError> {
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
    let steps: [&str; 5] = [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5];
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

/// Version 2: when each chunk file went on the garbage list, so that the collector keeps it a
/// grace period (for backups taken meanwhile). Files listed before the upgrade count from it.
const SCHEMA_V2: &str = "
ALTER TABLE garbage ADD COLUMN since INTEGER NOT NULL DEFAULT 0;
UPDATE garbage SET since = unixepoch() * 1000000000;
CREATE INDEX garbage_since ON garbage (since)
";

/// Version 3: signed records (ACL records, group records, group keys), docs/format.md 5.
const SCHEMA_V3: &str = "
CREATE TABLE signed (kind INTEGER NOT NULL, id INTEGER NOT NULL, sub INTEGER NOT NULL,
    blob BLOB NOT NULL, PRIMARY KEY (kind, id, sub)) WITHOUT ROWID
";

/// Version 4: the login challenges answered and not expired yet (docs/format.md 7), so that a
/// captured login is refused after a restart too.
const SCHEMA_V4: &str = "
CREATE TABLE used_challenges (hash BLOB PRIMARY KEY, expires INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX used_challenges_expires ON used_challenges (expires)
";

/// Version 5: each entry's seal (docs/format.md section 5.6), none for the entries before.
const SCHEMA_V5: &str = "
ALTER TABLE entries ADD COLUMN seal BLOB
";
