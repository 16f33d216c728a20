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

impl SqliteTxn<'_> {
    pub(super) fn users_where(
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

    pub(super) fn group_with_members(
        &self,
        row: Option<(u32, String)>,
    ) -> Result<Option<Group>, StoreError> {
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

impl SqliteTxn<'_> {
    pub(super) fn audit_where(
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
                    ino: FileId(ino as u64),
                    detail,
                    prev_hash: key32(prev, "audit prev_hash")?,
                    hash: key32(hash, "audit hash")?,
                })
            })
            .collect()
    }
}
