//! Decoding rows into records: a value that does not decode is a damaged record
//! ([`StoreError::Corrupt`]), never a panic.

use rusqlite::params;

use super::txn::SqliteTxn;
use crate::meta::*;

pub(super) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn key32(bytes: Vec<u8>, what: &str) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| corrupt(what))
}

pub(super) fn kind_of(code: i64) -> Result<Kind, StoreError> {
    Kind::from_code(code).ok_or_else(|| corrupt("file kind"))
}

pub(super) type InodeRow = (
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

pub(super) fn inode_from_row(row: InodeRow) -> Result<Inode, StoreError> {
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
        ino: FileId(ino as u64),
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
        version: Version(version as u64),
        parent: FileId(parent as u64),
        target,
        acl: decode_acl(&acl).ok_or_else(|| corrupt("acl"))?,
        orphaned_at,
    })
}

/// The columns of an inode, and their table.
pub(super) const INODES: &str =
    "SELECT ino, kind, perm, uid, gid, nlink, size, atime, mtime, ctime,
    rdev, owner, version, parent, target, acl, orphaned_at FROM inodes";

/// The columns of [`INODES`] as a tuple (one too many for rusqlite's `TryFrom<&Row>`).
pub(super) fn inode_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<InodeRow> {
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
}

/// A chunk file's (ino, idx, generation) columns.
pub(super) fn chunk_ref_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChunkRef> {
    Ok(ChunkRef {
        ino: FileId(r.get::<_, i64>(0)? as u64),
        index: ChunkIndex(r.get::<_, i64>(1)? as u64),
        generation: Generation(r.get::<_, i64>(2)? as u64),
    })
}

/// The columns of a user, and their table.
pub(super) const USERS: &str =
    "SELECT uid, name, signing_key, wrapping_key, certificate, created FROM users";

/// The columns of an audit entry, and their table.
pub(super) const AUDIT: &str =
    "SELECT seq, time, uid, event, ino, detail, prev_hash, hash FROM audit";

type UserRow = (u32, String, Vec<u8>, Vec<u8>, Vec<u8>, i64);

pub(super) fn user_from_row(row: UserRow) -> Result<User, StoreError> {
    let (uid, name, signing, wrapping, certificate, created) = row;
    Ok(User {
        uid,
        name,
        signing_key: key32(signing, "user signing key")?,
        wrapping_key: key32(wrapping, "user wrapping key")?,
        certificate,
        created,
    })
}

type AuditRow = (i64, i64, u32, String, i64, String, Vec<u8>, Vec<u8>);

pub(super) fn audit_from_row(row: AuditRow) -> Result<AuditEntry, StoreError> {
    let (seq, time, uid, event, ino, detail, prev, hash) = row;
    Ok(AuditEntry {
        seq: seq as u64,
        time,
        uid,
        event,
        ino: FileId(ino as u64),
        detail,
        prev_hash: key32(prev, "audit prev_hash")?,
        hash: key32(hash, "audit hash")?,
    })
}

impl SqliteTxn<'_> {
    /// The rows of `select` (columns and their table) that `clause` picks, each read into a
    /// tuple of its columns and decoded.
    pub(super) fn rows_where<R, T>(
        &self,
        select: &str,
        clause: &str,
        params: impl rusqlite::Params,
        decode: fn(R) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError>
    where
        R: for<'r> TryFrom<&'r rusqlite::Row<'r>, Error = rusqlite::Error>,
    {
        let rows = self.query_all(&format!("{select} {clause}"), params, |r| R::try_from(r))?;
        rows.into_iter().map(decode).collect()
    }

    /// The group that `clause` picks by `param`, with its members.
    pub(super) fn group_where(
        &self,
        clause: &str,
        param: impl rusqlite::ToSql,
    ) -> Result<Option<Group>, StoreError> {
        let sql = format!("SELECT gid, name FROM groups {clause}");
        let row: Option<(u32, String)> =
            self.query_one(&sql, params![param], |r| Ok((r.get(0)?, r.get(1)?)))?;
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
