//! [`Txn`] over one MongoDB session: each method is one or two driver calls, made from the
//! operation's blocking thread through the runtime handle.
//!
//! The first driver error ends the attempt: MongoDB aborts the transaction with it, so every
//! later call fails the same way without asking the server, and the store decides from that
//! error whether to run the operation again.

use mongodb::bson::{Document, doc};
use mongodb::error::Error;
use mongodb::{ClientSession, Collection};
use tokio::runtime::Handle;

use super::docs::{self, Fields, binary, file, long, name};
use super::schema::{Coll, Collections};
use super::{block, failure};
use crate::meta::*;

/// The `sequences` document holding the audit chain's head: `next`, the next entry's seq.
pub const AUDIT_HEAD: &str = "audit";

pub struct MongoTxn<'a> {
    pub handle: &'a Handle,
    pub collections: &'a Collections,
    pub session: &'a mut ClientSession,
    pub writable: bool,
    /// The driver error that ended this attempt.
    pub failure: Option<Error>,
}

impl<'a> MongoTxn<'a> {
    fn settle<T>(&mut self, result: mongodb::error::Result<T>) -> Result<T, StoreError> {
        result.map_err(|error| {
            let store_error = failure::store_error(&error);
            self.failure.get_or_insert(error);
            store_error
        })
    }

    /// The collection, once the attempt is known to be still alive.
    fn usable(&self, which: Coll) -> Result<&'a Collection<Document>, StoreError> {
        match &self.failure {
            Some(error) => Err(failure::store_error(error)),
            None => Ok(self.collections.get(which)),
        }
    }

    fn writing(&self, which: Coll) -> Result<&'a Collection<Document>, StoreError> {
        assert!(
            self.writable,
            "a read-only metadata transaction tried to write"
        );
        self.usable(which)
    }

    fn find_one(&mut self, which: Coll, filter: Document) -> Result<Option<Document>, StoreError> {
        let coll = self.usable(which)?;
        let result = block(
            self.handle,
            coll.find_one(filter).session(&mut *self.session),
        );
        self.settle(result)
    }

    /// The matching documents in `sort` order (empty: any), at most `limit` (`usize::MAX`:
    /// all).
    fn find(
        &mut self,
        which: Coll,
        filter: Document,
        sort: Document,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        let coll = self.usable(which)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let session = &mut *self.session;
        let result = block(self.handle, async move {
            let mut find = coll.find(filter);
            if !sort.is_empty() {
                find = find.sort(sort);
            }
            if let Ok(limit) = i64::try_from(limit)
                && limit < i64::MAX
            {
                find = find.limit(limit);
            }
            let mut cursor = find.session(&mut *session).await?;
            let mut found = Vec::new();
            while let Some(document) = cursor.next(&mut *session).await {
                found.push(document?);
            }
            Ok(found)
        });
        self.settle(result)
    }

    /// Inserts or replaces the one document matching `filter`.
    fn put(&mut self, which: Coll, filter: Document, document: Document) -> Result<(), StoreError> {
        let coll = self.writing(which)?;
        let result = block(
            self.handle,
            coll.replace_one(filter, document)
                .upsert(true)
                .session(&mut *self.session),
        );
        self.settle(result).map(drop)
    }

    fn delete(&mut self, which: Coll, filter: Document) -> Result<u64, StoreError> {
        let coll = self.writing(which)?;
        let result = block(
            self.handle,
            coll.delete_many(filter).session(&mut *self.session),
        );
        self.settle(result).map(|r| r.deleted_count)
    }

    fn decode_all<T>(
        documents: Vec<Document>,
        decode: impl Fn(&Document) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        documents.iter().map(decode).collect()
    }

    /// Entries named by UTF-8 strings after `after` in byte order, at most `limit`. MongoDB
    /// orders strings by their bytes; an `after` that is not UTF-8 starts the scan at its
    /// longest UTF-8 prefix and skips up to it.
    fn text_entries_after(
        &mut self,
        parent: FileId,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Entry)>, StoreError> {
        let stored = docs::name(after);
        let mut bound = match stored.as_str() {
            Some(text) => doc! { "$gt": text },
            None => {
                let error = std::str::from_utf8(after).expect_err("not stored as text");
                let prefix = String::from_utf8_lossy(&after[..error.valid_up_to()]);
                doc! { "$gte": prefix.into_owned() }
            }
        };
        let mut found = Vec::new();
        // Each round moves `bound` forward, so the rounds end within the directory's size.
        loop {
            let filter = doc! { "parent": file(parent), "name": bound };
            let page = self.find(Coll::Entries, filter, doc! { "name": 1 }, limit)?;
            let full = page.len() == limit;
            let Some(last) = page.last().and_then(|d| d.get_str("name").ok()) else {
                return Ok(found);
            };
            bound = doc! { "$gt": last.to_string() };
            for document in &page {
                let text = document.get_str("name").unwrap_or_default();
                let (name, entry) = docs::entry_from(document)?;
                if docs::after_in_text_order(text, &stored, after) && found.len() < limit {
                    found.push((name, entry));
                }
            }
            if found.len() == limit || !full {
                return Ok(found);
            }
        }
    }
}

impl Txn for MongoTxn<'_> {
    fn get_setting(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.find_one(Coll::Settings, doc! { "_id": key })?
            .map(|d| Fields::new(&d, "settings").bytes("value"))
            .transpose()
    }
    fn put_setting(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let document = doc! { "_id": key, "value": binary(value) };
        self.put(Coll::Settings, doc! { "_id": key }, document)
    }

    fn get_inode(&mut self, ino: FileId) -> Result<Option<Inode>, StoreError> {
        self.find_one(Coll::Inodes, doc! { "_id": file(ino) })?
            .map(|d| docs::inode_from(&d))
            .transpose()
    }
    fn put_inode(&mut self, inode: &Inode) -> Result<(), StoreError> {
        let filter = doc! { "_id": file(inode.ino) };
        self.put(Coll::Inodes, filter, docs::inode_doc(inode))
    }
    fn delete_inode(&mut self, ino: FileId) -> Result<(), StoreError> {
        self.delete(Coll::Inodes, doc! { "_id": file(ino) })?;
        self.delete(Coll::Xattrs, doc! { "ino": file(ino) })?;
        self.delete(Coll::WrappedKeys, doc! { "ino": file(ino) })?;
        self.delete_signed(RecordKind::Acl, ino.0)?;
        self.delete_signed(RecordKind::Manifest, ino.0)?;
        Ok(())
    }
    fn count_inodes(&mut self) -> Result<u64, StoreError> {
        let coll = self.usable(Coll::Inodes)?;
        let result = block(
            self.handle,
            coll.count_documents(doc! {}).session(&mut *self.session),
        );
        self.settle(result)
    }
    fn list_orphans(&mut self, before: Time, limit: usize) -> Result<Vec<FileId>, StoreError> {
        let filter = doc! { "orphaned_at": { "$lt": before } };
        let found = self.find(Coll::Inodes, filter, doc! {}, limit)?;
        Self::decode_all(found, |d| Fields::new(d, "inodes").file("_id"))
    }

    fn get_entry(
        &mut self,
        parent: FileId,
        entry_name: &[u8],
    ) -> Result<Option<Entry>, StoreError> {
        let filter = doc! { "parent": file(parent), "name": name(entry_name) };
        Ok(self
            .find_one(Coll::Entries, filter)?
            .map(|d| docs::entry_from(&d))
            .transpose()?
            .map(|(_, entry)| entry))
    }
    fn put_entry(
        &mut self,
        parent: FileId,
        entry_name: &[u8],
        entry: Entry,
    ) -> Result<(), StoreError> {
        let filter = doc! { "parent": file(parent), "name": name(entry_name) };
        let mut document = filter.clone();
        document.insert("ino", file(entry.ino));
        document.insert("kind", entry.kind as i32);
        if let Some(seal) = entry.seal {
            document.insert("seal", binary(&seal));
        }
        self.put(Coll::Entries, filter, document)
    }
    fn delete_entry(&mut self, parent: FileId, entry_name: &[u8]) -> Result<(), StoreError> {
        let filter = doc! { "parent": file(parent), "name": name(entry_name) };
        self.delete(Coll::Entries, filter).map(drop)
    }
    fn list_entries(
        &mut self,
        parent: FileId,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Entry)>, StoreError> {
        let mut found = self.text_entries_after(parent, after, limit)?;
        // Names that are not UTF-8 are binaries, which MongoDB orders by length first: they
        // are rare, so all of the directory's are fetched and merged here in byte order.
        let filter = doc! { "parent": file(parent), "name": { "$type": "binData" } };
        for document in self.find(Coll::Entries, filter, doc! { "name": 1 }, usize::MAX)? {
            let (name, entry) = docs::entry_from(&document)?;
            if name.as_slice() > after {
                found.push((name, entry));
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found.truncate(limit);
        Ok(found)
    }

    fn get_chunk(
        &mut self,
        ino: FileId,
        index: ChunkIndex,
    ) -> Result<Option<Generation>, StoreError> {
        let filter = doc! { "ino": file(ino), "index": long(index.get()) };
        self.find_one(Coll::Chunks, filter)?
            .map(|d| Fields::new(&d, "chunks").number("generation"))
            .transpose()
    }
    fn put_chunk(&mut self, chunk: ChunkRef) -> Result<(), StoreError> {
        let filter = doc! { "ino": file(chunk.ino), "index": long(chunk.index.get()) };
        let mut document = filter.clone();
        document.insert("generation", long(chunk.generation.get()));
        self.put(Coll::Chunks, filter, document)
    }
    fn delete_chunk(&mut self, ino: FileId, index: ChunkIndex) -> Result<(), StoreError> {
        let filter = doc! { "ino": file(ino), "index": long(index.get()) };
        self.delete(Coll::Chunks, filter).map(drop)
    }
    fn list_chunks(
        &mut self,
        ino: FileId,
        from: ChunkIndex,
        limit: usize,
    ) -> Result<Vec<(ChunkIndex, Generation)>, StoreError> {
        // Indexes above i64::MAX would wrap; no file has that many chunks (format limits).
        let filter = doc! { "ino": file(ino), "index": { "$gte": long(from.get()) } };
        let found = self.find(Coll::Chunks, filter, doc! { "index": 1 }, limit)?;
        Self::decode_all(found, |d| {
            let f = Fields::new(d, "chunks");
            Ok((f.number("index")?, f.number("generation")?))
        })
    }

    fn add_garbage(&mut self, chunk: ChunkRef) -> Result<(), StoreError> {
        let filter = garbage_key(chunk);
        let coll = self.writing(Coll::Garbage)?;
        // One listed already keeps its time.
        let result = block(
            self.handle,
            coll.update_one(filter, doc! { "$setOnInsert": { "since": now() } })
                .upsert(true)
                .session(&mut *self.session),
        );
        self.settle(result).map(drop)
    }
    fn list_garbage(
        &mut self,
        before: Time,
        after: Option<ChunkRef>,
        limit: usize,
    ) -> Result<Vec<ChunkRef>, StoreError> {
        let mut filter = doc! { "since": { "$lt": before } };
        if let Some(c) = after {
            let (ino, index, generation) =
                (file(c.ino), long(c.index.get()), long(c.generation.get()));
            filter.insert(
                "$or",
                vec![
                    doc! { "ino": { "$gt": ino } },
                    doc! { "ino": ino, "index": { "$gt": index } },
                    doc! { "ino": ino, "index": index, "generation": { "$gt": generation } },
                ],
            );
        }
        let sort = doc! { "ino": 1, "index": 1, "generation": 1 };
        let found = self.find(Coll::Garbage, filter, sort, limit)?;
        Self::decode_all(found, docs::chunk_ref_from)
    }
    fn is_garbage(&mut self, chunk: ChunkRef) -> Result<bool, StoreError> {
        Ok(self.find_one(Coll::Garbage, garbage_key(chunk))?.is_some())
    }
    fn delete_garbage(&mut self, chunk: ChunkRef) -> Result<(), StoreError> {
        self.delete(Coll::Garbage, garbage_key(chunk)).map(drop)
    }

    fn list_inodes(
        &mut self,
        after: Option<FileId>,
        limit: usize,
    ) -> Result<Vec<Inode>, StoreError> {
        let filter = match after {
            Some(ino) => doc! { "_id": { "$gt": file(ino) } },
            None => doc! {},
        };
        let found = self.find(Coll::Inodes, filter, doc! { "_id": 1 }, limit)?;
        Self::decode_all(found, docs::inode_from)
    }
    fn list_all_chunks(
        &mut self,
        after: Option<(FileId, ChunkIndex)>,
        limit: usize,
    ) -> Result<Vec<ChunkRef>, StoreError> {
        let filter = match after {
            Some((ino, index)) => doc! { "$or": [
                { "ino": { "$gt": file(ino) } },
                { "ino": file(ino), "index": { "$gt": long(index.get()) } },
            ] },
            None => doc! {},
        };
        let found = self.find(Coll::Chunks, filter, doc! { "ino": 1, "index": 1 }, limit)?;
        Self::decode_all(found, |d| {
            let f = Fields::new(d, "chunks");
            Ok(ChunkRef {
                ino: f.file("ino")?,
                index: f.number("index")?,
                generation: f.number("generation")?,
            })
        })
    }

    fn get_xattr(&mut self, ino: FileId, xattr: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let filter = doc! { "ino": file(ino), "name": name(xattr) };
        self.find_one(Coll::Xattrs, filter)?
            .map(|d| Fields::new(&d, "xattrs").bytes("value"))
            .transpose()
    }
    fn put_xattr(&mut self, ino: FileId, xattr: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let filter = doc! { "ino": file(ino), "name": name(xattr) };
        let mut document = filter.clone();
        document.insert("value", binary(value));
        self.put(Coll::Xattrs, filter, document)
    }
    fn delete_xattr(&mut self, ino: FileId, xattr: &[u8]) -> Result<(), StoreError> {
        let filter = doc! { "ino": file(ino), "name": name(xattr) };
        self.delete(Coll::Xattrs, filter).map(drop)
    }
    fn list_xattrs(&mut self, ino: FileId) -> Result<Vec<Xattr>, StoreError> {
        let filter = doc! { "ino": file(ino) };
        let found = self.find(Coll::Xattrs, filter, doc! { "name": 1 }, usize::MAX)?;
        let mut xattrs = Self::decode_all(found, |d| {
            let f = Fields::new(d, "xattrs");
            Ok((f.name("name")?, f.bytes("value")?))
        })?;
        // Byte order, as the other backends list them (binary names sort apart in MongoDB).
        xattrs.sort();
        Ok(xattrs)
    }

    fn get_wrapped_key(
        &mut self,
        ino: FileId,
        principal: Principal,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let filter = doc! { "ino": file(ino), "principal": principal.key() };
        self.find_one(Coll::WrappedKeys, filter)?
            .map(|d| Fields::new(&d, "wrapped_keys").bytes("blob"))
            .transpose()
    }
    fn put_wrapped_key(
        &mut self,
        ino: FileId,
        principal: Principal,
        blob: &[u8],
    ) -> Result<(), StoreError> {
        let filter = doc! { "ino": file(ino), "principal": principal.key() };
        let mut document = filter.clone();
        document.insert("blob", binary(blob));
        self.put(Coll::WrappedKeys, filter, document)
    }
    fn delete_wrapped_key(&mut self, ino: FileId, principal: Principal) -> Result<(), StoreError> {
        let filter = doc! { "ino": file(ino), "principal": principal.key() };
        self.delete(Coll::WrappedKeys, filter).map(drop)
    }
    fn list_wrapped_keys(&mut self, ino: FileId) -> Result<Vec<(Principal, Vec<u8>)>, StoreError> {
        let filter = doc! { "ino": file(ino) };
        let found = self.find(
            Coll::WrappedKeys,
            filter,
            doc! { "principal": 1 },
            usize::MAX,
        )?;
        Self::decode_all(found, |d| {
            let f = Fields::new(d, "wrapped_keys");
            let principal = Principal::from_key(&f.text("principal")?)
                .ok_or_else(|| f.corrupt("principal", "names no principal"))?;
            Ok((principal, f.bytes("blob")?))
        })
    }

    fn get_signed(
        &mut self,
        SignedKey(kind, id, sub): SignedKey,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let filter = docs::signed_key(kind, id, sub);
        self.find_one(Coll::Signed, filter)?
            .map(|d| Fields::new(&d, "signed").bytes("blob"))
            .transpose()
    }
    fn put_signed(
        &mut self,
        SignedKey(kind, id, sub): SignedKey,
        blob: &[u8],
    ) -> Result<(), StoreError> {
        let filter = docs::signed_key(kind, id, sub);
        let mut document = filter.clone();
        document.insert("blob", binary(blob));
        self.put(Coll::Signed, filter, document)
    }
    fn delete_signed(&mut self, kind: RecordKind, id: u64) -> Result<(), StoreError> {
        let filter = doc! { "kind": kind as i32, "id": id as i64 };
        self.delete(Coll::Signed, filter).map(drop)
    }
    fn list_signed(
        &mut self,
        kind: RecordKind,
        id: u64,
    ) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        let filter = doc! { "kind": kind as i32, "id": id as i64 };
        let found = self.find(Coll::Signed, filter, doc! { "sub": 1 }, usize::MAX)?;
        Self::decode_all(found, |d| {
            let f = Fields::new(d, "signed");
            Ok((f.u32("sub")?, f.bytes("blob")?))
        })
    }

    fn get_user(&mut self, uid: u32) -> Result<Option<User>, StoreError> {
        self.find_one(Coll::Users, doc! { "_id": i64::from(uid) })?
            .map(|d| docs::user_from(&d))
            .transpose()
    }
    fn get_user_by_name(&mut self, user: &str) -> Result<Option<User>, StoreError> {
        self.find_one(Coll::Users, doc! { "name": user })?
            .map(|d| docs::user_from(&d))
            .transpose()
    }
    fn put_user(&mut self, user: &User) -> Result<(), StoreError> {
        let filter = doc! { "_id": i64::from(user.uid) };
        self.put(Coll::Users, filter, docs::user_doc(user))
    }
    fn list_pending_users(&mut self, limit: usize) -> Result<Vec<User>, StoreError> {
        let filter = doc! { "certificate": binary(&[]) };
        let found = self.find(Coll::Users, filter, doc! { "_id": 1 }, limit)?;
        Self::decode_all(found, docs::user_from)
    }
    fn get_group(&mut self, gid: u32) -> Result<Option<Group>, StoreError> {
        self.find_one(Coll::Groups, doc! { "_id": i64::from(gid) })?
            .map(|d| docs::group_from(&d))
            .transpose()
    }
    fn get_group_by_name(&mut self, group: &str) -> Result<Option<Group>, StoreError> {
        self.find_one(Coll::Groups, doc! { "name": group })?
            .map(|d| docs::group_from(&d))
            .transpose()
    }
    fn put_group(&mut self, group: &Group) -> Result<(), StoreError> {
        let filter = doc! { "_id": i64::from(group.gid) };
        self.put(Coll::Groups, filter, docs::group_doc(group))
    }
    fn groups_of(&mut self, uid: u32) -> Result<Vec<u32>, StoreError> {
        let filter = doc! { "members": i64::from(uid) };
        let found = self.find(Coll::Groups, filter, doc! { "_id": 1 }, usize::MAX)?;
        Self::decode_all(found, |d| Fields::new(d, "groups").u32("_id"))
    }
    fn next_in_sequence(&mut self, sequence: &str, first: u32) -> Result<u32, StoreError> {
        assert_ne!(
            sequence, AUDIT_HEAD,
            "the audit head is not a numbering sequence"
        );
        // Read then replace rather than findAndModify with $inc: the transaction already
        // makes it atomic, and plain updates stay fast on every server.
        let value = match self.find_one(Coll::Sequences, doc! { "_id": sequence })? {
            Some(d) => Fields::new(&d, "sequences").u32("next")?,
            None => first,
        };
        let next = value
            .checked_add(1)
            .ok_or_else(|| StoreError::Unavailable(format!("sequence {sequence} exhausted")))?;
        let document = doc! { "_id": sequence, "next": i64::from(next) };
        self.put(Coll::Sequences, doc! { "_id": sequence }, document)?;
        Ok(value)
    }

    fn get_session(&mut self, token_hash: &[u8; 32]) -> Result<Option<Session>, StoreError> {
        self.find_one(Coll::Sessions, doc! { "_id": binary(token_hash) })?
            .map(|d| docs::session_from(&d))
            .transpose()
    }
    fn put_session(&mut self, session: &Session) -> Result<(), StoreError> {
        let filter = doc! { "_id": binary(&session.token_hash) };
        self.put(Coll::Sessions, filter, docs::session_doc(session))
    }
    fn delete_session(&mut self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.delete(Coll::Sessions, doc! { "_id": binary(token_hash) })
            .map(drop)
    }
    fn delete_expired_sessions(&mut self, now: Time) -> Result<u64, StoreError> {
        self.delete(Coll::Sessions, doc! { "expires": { "$lte": now } })
    }
    fn use_challenge(&mut self, challenge: &[u8; 32], expires: Time) -> Result<bool, StoreError> {
        // Two instances answering one challenge at once both find nothing; their upserts
        // conflict, and the one run again finds the other's.
        let filter = doc! { "_id": binary(challenge) };
        if self
            .find_one(Coll::UsedChallenges, filter.clone())?
            .is_some()
        {
            return Ok(false);
        }
        let document = doc! { "_id": binary(challenge), "expires": expires };
        self.put(Coll::UsedChallenges, filter, document)?;
        Ok(true)
    }
    fn delete_expired_challenges(&mut self, now: Time) -> Result<u64, StoreError> {
        self.delete(Coll::UsedChallenges, doc! { "expires": { "$lte": now } })
    }

    fn last_audit(&mut self) -> Result<Option<AuditEntry>, StoreError> {
        // The head names the last entry, so that finding it takes two point reads rather than
        // a sort (which not every server answers from the index).
        let head = self.find_one(Coll::Sequences, doc! { "_id": AUDIT_HEAD })?;
        let Some(head) = head else {
            return match self.find_one(Coll::Audit, doc! {})? {
                None => Ok(None),
                Some(_) => Err(StoreError::Corrupt(
                    "mongodb sequences: the audit log has entries but no head".into(),
                )),
            };
        };
        let f = Fields::new(&head, "sequences");
        let last = f.u64("next")?.wrapping_sub(1);
        let entry = self.find_one(Coll::Audit, doc! { "_id": long(last) })?;
        let entry = entry.ok_or_else(|| f.corrupt("next", "follows a missing audit entry"))?;
        docs::audit_from(&entry).map(Some)
    }
    fn append_audit(&mut self, entry: &AuditEntry) -> Result<(), StoreError> {
        // An insert, not an upsert: two writers appending the same sequence number collide
        // on `_id` (and on the head), and the loser runs again on top of the winner's entry.
        let coll = self.writing(Coll::Audit)?;
        let result = block(
            self.handle,
            coll.insert_one(docs::audit_doc(entry))
                .session(&mut *self.session),
        );
        self.settle(result)?;
        let head = doc! { "_id": AUDIT_HEAD, "next": long(entry.seq.wrapping_add(1)) };
        self.put(Coll::Sequences, doc! { "_id": AUDIT_HEAD }, head)
    }
    fn list_audit(&mut self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let filter = doc! { "_id": { "$gte": long(from_seq) } };
        let found = self.find(Coll::Audit, filter, doc! { "_id": 1 }, limit)?;
        Self::decode_all(found, docs::audit_from)
    }
}

/// The fields that name a chunk file on the garbage list.
fn garbage_key(chunk: ChunkRef) -> Document {
    doc! {
        "ino": file(chunk.ino), "index": long(chunk.index.get()),
        "generation": long(chunk.generation.get()),
    }
}
