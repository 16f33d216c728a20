//! The records of [`Txn`] as rows of the embedded store's tables, over one connection: the
//! writer's in a write transaction, or a reader's in a snapshot.

use rusqlite::{Connection, OptionalExtension, params};

use super::rows::{
    AUDIT, INODES, USERS, audit_from_row, chunk_ref_row, corrupt, inode_from_row, inode_row,
    kind_of, user_from_row,
};
use super::unavailable;
use crate::meta::*;

pub(super) struct SqliteTxn<'a> {
    pub conn: &'a Connection,
    /// Writes are a bug in a read transaction.
    pub writable: bool,
}

/// A number as SQLite stores it (as the same 64 bits).
fn id(value: u64) -> i64 {
    value as i64
}

/// An inode number as SQLite stores it.
fn file(ino: FileId) -> i64 {
    id(ino.0)
}

impl SqliteTxn<'_> {
    pub(super) fn execute(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<usize, StoreError> {
        assert!(
            self.writable,
            "a read-only metadata transaction tried to write"
        );
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(params))
            .map_err(unavailable)
    }

    /// Runs a statement that changes rows.
    fn change(&self, sql: &str, params: impl rusqlite::Params) -> Result<(), StoreError> {
        self.execute(sql, params).map(drop)
    }

    pub(super) fn query_one<T>(
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

    pub(super) fn query_all<T>(
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
        self.change(
            "INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)",
            params![key, value],
        )
    }

    fn get_inode(&mut self, ino: FileId) -> Result<Option<Inode>, StoreError> {
        let sql = format!("{INODES} WHERE ino = ?1");
        self.query_one(&sql, params![file(ino)], inode_row)?
            .map(inode_from_row)
            .transpose()
    }
    fn put_inode(&mut self, i: &Inode) -> Result<(), StoreError> {
        self.change(
            "INSERT OR REPLACE INTO inodes (ino, kind, perm, uid, gid, nlink, size, atime, mtime,
                ctime, rdev, owner, version, parent, target, acl, orphaned_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            params![
                file(i.ino),
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
                id(i.version.get()),
                file(i.parent),
                i.target,
                encode_acl(&i.acl),
                i.orphaned_at
            ],
        )
    }
    fn delete_inode(&mut self, ino: FileId) -> Result<(), StoreError> {
        for sql in [
            "DELETE FROM inodes WHERE ino = ?1",
            "DELETE FROM xattrs WHERE ino = ?1",
            "DELETE FROM wrapped_keys WHERE ino = ?1",
            "DELETE FROM signed WHERE kind IN (1, 5) AND id = ?1",
        ] {
            self.execute(sql, params![file(ino)])?;
        }
        Ok(())
    }
    fn count_inodes(&mut self) -> Result<u64, StoreError> {
        let count: Option<i64> = self.query_one("SELECT count(*) FROM inodes", [], |r| r.get(0))?;
        Ok(count.unwrap_or(0) as u64)
    }
    fn list_orphans(&mut self, before: Time, limit: usize) -> Result<Vec<FileId>, StoreError> {
        self.query_all(
            "SELECT ino FROM inodes WHERE orphaned_at IS NOT NULL AND orphaned_at < ?1 LIMIT ?2",
            params![before, limit as i64],
            |r| r.get::<_, i64>(0).map(|i| FileId(i as u64)),
        )
    }

    fn get_entry(&mut self, parent: FileId, name: &[u8]) -> Result<Option<Entry>, StoreError> {
        let row: Option<(i64, i64, Option<Vec<u8>>)> = self.query_one(
            "SELECT ino, kind, seal FROM entries WHERE parent = ?1 AND name = ?2",
            params![file(parent), name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        row.map(|(ino, kind, seal)| entry_of(ino, kind, seal))
            .transpose()
    }
    fn put_entry(&mut self, parent: FileId, name: &[u8], entry: Entry) -> Result<(), StoreError> {
        self.change(
            "INSERT OR REPLACE INTO entries (parent, name, ino, kind, seal)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                file(parent),
                name,
                file(entry.ino),
                entry.kind as i64,
                entry.seal.map(|s| s.to_vec())
            ],
        )
    }
    fn delete_entry(&mut self, parent: FileId, name: &[u8]) -> Result<(), StoreError> {
        self.change(
            "DELETE FROM entries WHERE parent = ?1 AND name = ?2",
            params![file(parent), name],
        )
    }
    fn list_entries(
        &mut self,
        parent: FileId,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Entry)>, StoreError> {
        let rows: Vec<EntryRow> = self.query_all(
            "SELECT name, ino, kind, seal FROM entries WHERE parent = ?1 AND name > ?2
             ORDER BY name LIMIT ?3",
            params![file(parent), after, limit as i64],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        rows.into_iter()
            .map(|(name, ino, kind, seal)| Ok((name, entry_of(ino, kind, seal)?)))
            .collect()
    }

    fn get_chunk(
        &mut self,
        ino: FileId,
        index: ChunkIndex,
    ) -> Result<Option<Generation>, StoreError> {
        self.query_one(
            "SELECT generation FROM chunks WHERE ino = ?1 AND idx = ?2",
            params![file(ino), id(index.get())],
            |r| r.get::<_, i64>(0).map(|g| Generation(g as u64)),
        )
    }
    fn put_chunk(&mut self, c: ChunkRef) -> Result<(), StoreError> {
        self.change(
            "INSERT OR REPLACE INTO chunks (ino, idx, generation) VALUES (?1, ?2, ?3)",
            params![file(c.ino), id(c.index.get()), id(c.generation.get())],
        )
    }
    fn delete_chunk(&mut self, ino: FileId, index: ChunkIndex) -> Result<(), StoreError> {
        self.change(
            "DELETE FROM chunks WHERE ino = ?1 AND idx = ?2",
            params![file(ino), id(index.get())],
        )
    }
    fn list_chunks(
        &mut self,
        ino: FileId,
        from: ChunkIndex,
        limit: usize,
    ) -> Result<Vec<(ChunkIndex, Generation)>, StoreError> {
        self.query_all(
            "SELECT idx, generation FROM chunks WHERE ino = ?1 AND idx >= ?2 ORDER BY idx LIMIT ?3",
            params![file(ino), id(from.get()), limit as i64],
            |r| {
                let (index, generation): (i64, i64) = (r.get(0)?, r.get(1)?);
                Ok((ChunkIndex(index as u64), Generation(generation as u64)))
            },
        )
    }

    fn add_garbage(&mut self, c: ChunkRef) -> Result<(), StoreError> {
        self.change(
            "INSERT OR IGNORE INTO garbage (ino, idx, generation, since) VALUES (?1, ?2, ?3, ?4)",
            params![
                file(c.ino),
                id(c.index.get()),
                id(c.generation.get()),
                now()
            ],
        )
    }
    fn list_garbage(
        &mut self,
        before: Time,
        after: Option<ChunkRef>,
        limit: usize,
    ) -> Result<Vec<ChunkRef>, StoreError> {
        // Below every stored key: chunk indexes are far below 2^63, so never negative.
        let (ino, index, generation) = after.map_or((i64::MIN, -1, -1), |c| {
            (file(c.ino), id(c.index.get()), id(c.generation.get()))
        });
        self.query_all(
            "SELECT ino, idx, generation FROM garbage
             WHERE since < ?1 AND (ino, idx, generation) > (?2, ?3, ?4)
             ORDER BY ino, idx, generation LIMIT ?5",
            params![before, ino, index, generation, limit as i64],
            chunk_ref_row,
        )
    }
    fn is_garbage(&mut self, c: ChunkRef) -> Result<bool, StoreError> {
        let found: Option<i64> = self.query_one(
            "SELECT 1 FROM garbage WHERE ino = ?1 AND idx = ?2 AND generation = ?3",
            params![file(c.ino), id(c.index.get()), id(c.generation.get())],
            |r| r.get(0),
        )?;
        Ok(found.is_some())
    }
    fn delete_garbage(&mut self, c: ChunkRef) -> Result<(), StoreError> {
        self.change(
            "DELETE FROM garbage WHERE ino = ?1 AND idx = ?2 AND generation = ?3",
            params![file(c.ino), id(c.index.get()), id(c.generation.get())],
        )
    }

    fn list_inodes(
        &mut self,
        after: Option<FileId>,
        limit: usize,
    ) -> Result<Vec<Inode>, StoreError> {
        let rows = match after {
            None => self.query_all(
                &format!("{INODES} ORDER BY ino LIMIT ?1"),
                params![limit as i64],
                inode_row,
            )?,
            Some(ino) => self.query_all(
                &format!("{INODES} WHERE ino > ?1 ORDER BY ino LIMIT ?2"),
                params![file(ino), limit as i64],
                inode_row,
            )?,
        };
        rows.into_iter().map(inode_from_row).collect()
    }
    fn list_all_chunks(
        &mut self,
        after: Option<(FileId, ChunkIndex)>,
        limit: usize,
    ) -> Result<Vec<ChunkRef>, StoreError> {
        let (ino, index) =
            after.map_or((i64::MIN, -1), |(ino, index)| (file(ino), id(index.get())));
        self.query_all(
            "SELECT ino, idx, generation FROM chunks WHERE (ino, idx) > (?1, ?2)
             ORDER BY ino, idx LIMIT ?3",
            params![ino, index, limit as i64],
            chunk_ref_row,
        )
    }

    fn get_xattr(&mut self, ino: FileId, name: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.query_one(
            "SELECT value FROM xattrs WHERE ino = ?1 AND name = ?2",
            params![file(ino), name],
            |r| r.get(0),
        )
    }
    fn put_xattr(&mut self, ino: FileId, name: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.change(
            "INSERT OR REPLACE INTO xattrs (ino, name, value) VALUES (?1, ?2, ?3)",
            params![file(ino), name, value],
        )
    }
    fn delete_xattr(&mut self, ino: FileId, name: &[u8]) -> Result<(), StoreError> {
        self.change(
            "DELETE FROM xattrs WHERE ino = ?1 AND name = ?2",
            params![file(ino), name],
        )
    }
    fn list_xattrs(&mut self, ino: FileId) -> Result<Vec<Xattr>, StoreError> {
        self.query_all(
            "SELECT name, value FROM xattrs WHERE ino = ?1 ORDER BY name",
            params![file(ino)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    fn get_wrapped_key(
        &mut self,
        ino: FileId,
        principal: Principal,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.query_one(
            "SELECT blob FROM wrapped_keys WHERE ino = ?1 AND principal = ?2",
            params![file(ino), principal.key()],
            |r| r.get(0),
        )
    }
    fn put_wrapped_key(
        &mut self,
        ino: FileId,
        principal: Principal,
        blob: &[u8],
    ) -> Result<(), StoreError> {
        self.change(
            "INSERT OR REPLACE INTO wrapped_keys (ino, principal, blob) VALUES (?1, ?2, ?3)",
            params![file(ino), principal.key(), blob],
        )
    }
    fn delete_wrapped_key(&mut self, ino: FileId, principal: Principal) -> Result<(), StoreError> {
        self.change(
            "DELETE FROM wrapped_keys WHERE ino = ?1 AND principal = ?2",
            params![file(ino), principal.key()],
        )
    }
    fn list_wrapped_keys(&mut self, ino: FileId) -> Result<Vec<(Principal, Vec<u8>)>, StoreError> {
        let rows: Vec<(String, Vec<u8>)> = self.query_all(
            "SELECT principal, blob FROM wrapped_keys WHERE ino = ?1 ORDER BY principal",
            params![file(ino)],
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

    fn get_signed(
        &mut self,
        SignedKey(kind, id, sub): SignedKey,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.query_one(
            "SELECT blob FROM signed WHERE kind = ?1 AND id = ?2 AND sub = ?3",
            params![kind as i64, id as i64, sub],
            |r| r.get(0),
        )
    }
    fn put_signed(
        &mut self,
        SignedKey(kind, id, sub): SignedKey,
        blob: &[u8],
    ) -> Result<(), StoreError> {
        self.change(
            "INSERT OR REPLACE INTO signed (kind, id, sub, blob) VALUES (?1, ?2, ?3, ?4)",
            params![kind as i64, id as i64, sub, blob],
        )
    }
    fn delete_signed(&mut self, kind: RecordKind, id: u64) -> Result<(), StoreError> {
        self.change(
            "DELETE FROM signed WHERE kind = ?1 AND id = ?2",
            params![kind as i64, id as i64],
        )
    }
    fn list_signed(
        &mut self,
        kind: RecordKind,
        id: u64,
    ) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        self.query_all(
            "SELECT sub, blob FROM signed WHERE kind = ?1 AND id = ?2 ORDER BY sub",
            params![kind as i64, id as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    fn get_user(&mut self, uid: u32) -> Result<Option<User>, StoreError> {
        Ok(self
            .rows_where(USERS, "WHERE uid = ?1", params![uid], user_from_row)?
            .pop())
    }
    fn get_user_by_name(&mut self, name: &str) -> Result<Option<User>, StoreError> {
        Ok(self
            .rows_where(USERS, "WHERE name = ?1", params![name], user_from_row)?
            .pop())
    }
    fn put_user(&mut self, u: &User) -> Result<(), StoreError> {
        self.change(
            "INSERT OR REPLACE INTO users (uid, name, signing_key, wrapping_key, certificate, created)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![u.uid, u.name, u.signing_key.to_vec(), u.wrapping_key.to_vec(), u.certificate, u.created],
        )
    }
    fn list_pending_users(&mut self, limit: usize) -> Result<Vec<User>, StoreError> {
        let clause = "WHERE length(certificate) = 0 ORDER BY uid LIMIT ?1";
        self.rows_where(USERS, clause, params![limit as i64], user_from_row)
    }
    fn get_group(&mut self, gid: u32) -> Result<Option<Group>, StoreError> {
        self.group_where("WHERE gid = ?1", gid)
    }
    fn get_group_by_name(&mut self, name: &str) -> Result<Option<Group>, StoreError> {
        self.group_where("WHERE name = ?1", name)
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
        self.change(
            "INSERT OR REPLACE INTO sessions (token_hash, uid, admin, expires) VALUES (?1, ?2, ?3, ?4)",
            params![s.token_hash.to_vec(), s.uid, s.admin, s.expires],
        )
    }
    fn delete_session(&mut self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.change(
            "DELETE FROM sessions WHERE token_hash = ?1",
            params![token_hash.to_vec()],
        )
    }
    fn delete_expired_sessions(&mut self, now: Time) -> Result<u64, StoreError> {
        self.execute("DELETE FROM sessions WHERE expires <= ?1", params![now])
            .map(|n| n as u64)
    }

    fn use_challenge(&mut self, challenge: &[u8; 32], expires: Time) -> Result<bool, StoreError> {
        self.execute(
            "INSERT OR IGNORE INTO used_challenges (hash, expires) VALUES (?1, ?2)",
            params![challenge.to_vec(), expires],
        )
        .map(|inserted| inserted == 1)
    }
    fn delete_expired_challenges(&mut self, now: Time) -> Result<u64, StoreError> {
        self.execute(
            "DELETE FROM used_challenges WHERE expires <= ?1",
            params![now],
        )
        .map(|n| n as u64)
    }

    fn last_audit(&mut self) -> Result<Option<AuditEntry>, StoreError> {
        let clause = "ORDER BY seq DESC LIMIT 1";
        Ok(self.rows_where(AUDIT, clause, [], audit_from_row)?.pop())
    }
    fn append_audit(&mut self, e: &AuditEntry) -> Result<(), StoreError> {
        self.change(
            "INSERT INTO audit (seq, time, uid, event, ino, detail, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                id(e.seq),
                e.time,
                e.uid,
                e.event,
                file(e.ino),
                e.detail,
                e.prev_hash.to_vec(),
                e.hash.to_vec()
            ],
        )
    }
    fn list_audit(&mut self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let clause = "WHERE seq >= ?1 ORDER BY seq LIMIT ?2";
        let params = params![id(from_seq), limit as i64];
        self.rows_where(AUDIT, clause, params, audit_from_row)
    }
}

/// An entry's row: name, ino, kind, seal.
type EntryRow = (Vec<u8>, i64, i64, Option<Vec<u8>>);

/// An entry from its row.
fn entry_of(ino: i64, kind: i64, seal: Option<Vec<u8>>) -> Result<Entry, StoreError> {
    let seal = crate::meta::records::entry_seal(seal.as_deref().unwrap_or_default())
        .ok_or_else(|| StoreError::Corrupt(format!("entry seal of inode {ino}")))?;
    Ok(Entry {
        ino: FileId(ino as u64),
        kind: kind_of(kind)?,
        seal,
    })
}
