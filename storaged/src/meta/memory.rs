//! An in-memory metadata store for unit tests: the same semantics as the durable backends
//! (the conformance suite checks that), none of the durability.
//!
//! A write runs on a copy of the state and replaces it on success, which makes rollback
//! trivial; that is O(state) per write, fine for tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;

#[derive(Default, Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Clone, Default, Debug)]
struct State {
    settings: BTreeMap<String, Vec<u8>>,
    inodes: BTreeMap<FileId, Inode>,
    entries: BTreeMap<(FileId, Vec<u8>), Entry>,
    chunks: BTreeMap<(FileId, ChunkIndex), Generation>,
    /// Each with when it was superseded.
    garbage: BTreeMap<ChunkRef, Time>,
    xattrs: BTreeMap<(FileId, Vec<u8>), Vec<u8>>,
    wrapped_keys: BTreeMap<(FileId, Principal), Vec<u8>>,
    signed: BTreeMap<(RecordKind, u64, u32), Vec<u8>>,
    users: BTreeMap<u32, User>,
    groups: BTreeMap<u32, Group>,
    sequences: BTreeMap<String, u32>,
    sessions: BTreeMap<[u8; 32], Session>,
    /// Login challenges answered, with when they expire.
    used_challenges: BTreeMap<[u8; 32], Time>,
    audit: BTreeMap<u64, AuditEntry>,
}

impl MemoryStore {
    /// One process's memory: no one else sees it, and nothing in it is ever durable.
    pub const CAPABILITIES: Capabilities = Capabilities {
        sole_instance: true,
        deferred_durability: false,
    };

    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

impl MetaStore for MemoryStore {
    /// Nothing here is ever durable, so nothing waits for it.
    fn write(
        &self,
        mut op: Operation,
        _durability: Durability,
    ) -> BoxFuture<'_, Result<(), OperationFailed>> {
        let mut state = self.state.lock().expect("memory store poisoned");
        let mut draft = state.clone();
        let outcome = op(&mut MemoryTxn {
            state: &mut draft,
            writable: true,
        });
        if outcome.is_ok() {
            *state = draft;
        }
        Box::pin(std::future::ready(outcome))
    }

    fn read(&self, mut op: Operation) -> BoxFuture<'_, Result<(), OperationFailed>> {
        let mut state = self.state.lock().expect("memory store poisoned");
        let outcome = op(&mut MemoryTxn {
            state: &mut state,
            writable: false,
        });
        Box::pin(std::future::ready(outcome))
    }

    fn sync(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn backend(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        MemoryStore::CAPABILITIES
    }
}

struct MemoryTxn<'a> {
    state: &'a mut State,
    writable: bool,
}

impl MemoryTxn<'_> {
    fn state_mut(&mut self) -> &mut State {
        assert!(
            self.writable,
            "a read-only metadata transaction tried to write"
        );
        self.state
    }
}

fn range_after<K: Ord + Clone, V: Clone>(
    map: &BTreeMap<K, V>,
    from: std::ops::Bound<K>,
    to: std::ops::Bound<K>,
    limit: usize,
) -> Vec<(K, V)> {
    map.range((from, to))
        .take(limit)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl Txn for MemoryTxn<'_> {
    fn get_setting(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.state.settings.get(key).cloned())
    }
    fn put_setting(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.state_mut()
            .settings
            .insert(key.to_string(), value.to_vec());
        Ok(())
    }

    fn get_inode(&mut self, ino: FileId) -> Result<Option<Inode>, StoreError> {
        Ok(self.state.inodes.get(&ino).cloned())
    }
    fn put_inode(&mut self, inode: &Inode) -> Result<(), StoreError> {
        self.state_mut().inodes.insert(inode.ino, inode.clone());
        Ok(())
    }
    fn delete_inode(&mut self, ino: FileId) -> Result<(), StoreError> {
        let state = self.state_mut();
        state.inodes.remove(&ino);
        state.xattrs.retain(|(i, _), _| *i != ino);
        state.wrapped_keys.retain(|(i, _), _| *i != ino);
        state.signed.remove(&(RecordKind::Acl, ino.0, 0));
        state.signed.remove(&(RecordKind::Manifest, ino.0, 0));
        Ok(())
    }
    fn count_inodes(&mut self) -> Result<u64, StoreError> {
        Ok(self.state.inodes.len() as u64)
    }
    fn list_orphans(&mut self, before: Time, limit: usize) -> Result<Vec<FileId>, StoreError> {
        Ok(self
            .state
            .inodes
            .values()
            .filter(|i| i.orphaned_at.is_some_and(|t| t < before))
            .map(|i| i.ino)
            .take(limit)
            .collect())
    }

    fn get_entry(&mut self, parent: FileId, name: &[u8]) -> Result<Option<Entry>, StoreError> {
        Ok(self.state.entries.get(&(parent, name.to_vec())).copied())
    }
    fn put_entry(&mut self, parent: FileId, name: &[u8], entry: Entry) -> Result<(), StoreError> {
        self.state_mut()
            .entries
            .insert((parent, name.to_vec()), entry);
        Ok(())
    }
    fn delete_entry(&mut self, parent: FileId, name: &[u8]) -> Result<(), StoreError> {
        self.state_mut().entries.remove(&(parent, name.to_vec()));
        Ok(())
    }
    fn list_entries(
        &mut self,
        parent: FileId,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Entry)>, StoreError> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let from = if after.is_empty() {
            Included((parent, Vec::new()))
        } else {
            Excluded((parent, after.to_vec()))
        };
        let to = match parent.0.checked_add(1) {
            None => Unbounded,
            Some(next) => Excluded((FileId(next), Vec::new())),
        };
        Ok(range_after(&self.state.entries, from, to, limit)
            .into_iter()
            .map(|((_, name), entry)| (name, entry))
            .collect())
    }

    fn get_chunk(
        &mut self,
        ino: FileId,
        index: ChunkIndex,
    ) -> Result<Option<Generation>, StoreError> {
        Ok(self.state.chunks.get(&(ino, index)).copied())
    }
    fn put_chunk(&mut self, chunk: ChunkRef) -> Result<(), StoreError> {
        let key = (chunk.ino, chunk.index);
        self.state_mut().chunks.insert(key, chunk.generation);
        Ok(())
    }
    fn delete_chunk(&mut self, ino: FileId, index: ChunkIndex) -> Result<(), StoreError> {
        self.state_mut().chunks.remove(&(ino, index));
        Ok(())
    }
    fn list_chunks(
        &mut self,
        ino: FileId,
        from: ChunkIndex,
        limit: usize,
    ) -> Result<Vec<(ChunkIndex, Generation)>, StoreError> {
        Ok(self
            .state
            .chunks
            .range((ino, from)..=(ino, ChunkIndex(u64::MAX)))
            .take(limit)
            .map(|(&(_, index), &generation)| (index, generation))
            .collect())
    }

    fn add_garbage(&mut self, chunk: ChunkRef) -> Result<(), StoreError> {
        self.state_mut().garbage.entry(chunk).or_insert_with(now);
        Ok(())
    }
    fn list_garbage(
        &mut self,
        before: Time,
        after: Option<ChunkRef>,
        limit: usize,
    ) -> Result<Vec<ChunkRef>, StoreError> {
        Ok(page(&self.state.garbage, after, limit, |&chunk, &since| {
            (since < before).then_some(chunk)
        }))
    }
    fn is_garbage(&mut self, chunk: ChunkRef) -> Result<bool, StoreError> {
        Ok(self.state.garbage.contains_key(&chunk))
    }
    fn delete_garbage(&mut self, chunk: ChunkRef) -> Result<(), StoreError> {
        self.state_mut().garbage.remove(&chunk);
        Ok(())
    }

    fn list_inodes(
        &mut self,
        after: Option<FileId>,
        limit: usize,
    ) -> Result<Vec<Inode>, StoreError> {
        Ok(page(&self.state.inodes, after, limit, |_, inode| {
            Some(inode.clone())
        }))
    }
    fn list_all_chunks(
        &mut self,
        after: Option<(FileId, ChunkIndex)>,
        limit: usize,
    ) -> Result<Vec<ChunkRef>, StoreError> {
        Ok(page(
            &self.state.chunks,
            after,
            limit,
            |&(ino, index), &generation| {
                Some(ChunkRef {
                    ino,
                    index,
                    generation,
                })
            },
        ))
    }

    fn get_xattr(&mut self, ino: FileId, name: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.state.xattrs.get(&(ino, name.to_vec())).cloned())
    }
    fn put_xattr(&mut self, ino: FileId, name: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.state_mut()
            .xattrs
            .insert((ino, name.to_vec()), value.to_vec());
        Ok(())
    }
    fn delete_xattr(&mut self, ino: FileId, name: &[u8]) -> Result<(), StoreError> {
        self.state_mut().xattrs.remove(&(ino, name.to_vec()));
        Ok(())
    }
    fn list_xattrs(&mut self, ino: FileId) -> Result<Vec<Xattr>, StoreError> {
        Ok(self
            .state
            .xattrs
            .iter()
            .filter(|((i, _), _)| *i == ino)
            .map(|((_, name), value)| (name.clone(), value.clone()))
            .collect())
    }

    fn get_wrapped_key(
        &mut self,
        ino: FileId,
        principal: Principal,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.state.wrapped_keys.get(&(ino, principal)).cloned())
    }
    fn put_wrapped_key(
        &mut self,
        ino: FileId,
        principal: Principal,
        blob: &[u8],
    ) -> Result<(), StoreError> {
        self.state_mut()
            .wrapped_keys
            .insert((ino, principal), blob.to_vec());
        Ok(())
    }
    fn delete_wrapped_key(&mut self, ino: FileId, principal: Principal) -> Result<(), StoreError> {
        self.state_mut().wrapped_keys.remove(&(ino, principal));
        Ok(())
    }
    fn list_wrapped_keys(&mut self, ino: FileId) -> Result<Vec<(Principal, Vec<u8>)>, StoreError> {
        Ok(self
            .state
            .wrapped_keys
            .iter()
            .filter(|((i, _), _)| *i == ino)
            .map(|((_, p), blob)| (*p, blob.clone()))
            .collect())
    }

    fn get_signed(
        &mut self,
        SignedKey(kind, id, sub): SignedKey,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.state.signed.get(&(kind, id, sub)).cloned())
    }
    fn put_signed(
        &mut self,
        SignedKey(kind, id, sub): SignedKey,
        blob: &[u8],
    ) -> Result<(), StoreError> {
        self.state_mut()
            .signed
            .insert((kind, id, sub), blob.to_vec());
        Ok(())
    }
    fn delete_signed(&mut self, kind: RecordKind, id: u64) -> Result<(), StoreError> {
        self.state_mut()
            .signed
            .retain(|(k, i, _), _| (*k, *i) != (kind, id));
        Ok(())
    }
    fn list_signed(
        &mut self,
        kind: RecordKind,
        id: u64,
    ) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        Ok(self
            .state
            .signed
            .range((kind, id, 0)..=(kind, id, u32::MAX))
            .map(|((_, _, sub), blob)| (*sub, blob.clone()))
            .collect())
    }

    fn get_user(&mut self, uid: u32) -> Result<Option<User>, StoreError> {
        Ok(self.state.users.get(&uid).cloned())
    }
    fn get_user_by_name(&mut self, name: &str) -> Result<Option<User>, StoreError> {
        Ok(self.state.users.values().find(|u| u.name == name).cloned())
    }
    fn put_user(&mut self, user: &User) -> Result<(), StoreError> {
        self.state_mut().users.insert(user.uid, user.clone());
        Ok(())
    }
    fn list_pending_users(&mut self, limit: usize) -> Result<Vec<User>, StoreError> {
        Ok(self
            .state
            .users
            .values()
            .filter(|u| !u.is_active())
            .take(limit)
            .cloned()
            .collect())
    }
    fn get_group(&mut self, gid: u32) -> Result<Option<Group>, StoreError> {
        Ok(self.state.groups.get(&gid).cloned())
    }
    fn get_group_by_name(&mut self, name: &str) -> Result<Option<Group>, StoreError> {
        Ok(self.state.groups.values().find(|g| g.name == name).cloned())
    }
    fn put_group(&mut self, group: &Group) -> Result<(), StoreError> {
        self.state_mut().groups.insert(group.gid, group.clone());
        Ok(())
    }
    fn groups_of(&mut self, uid: u32) -> Result<Vec<u32>, StoreError> {
        Ok(self
            .state
            .groups
            .values()
            .filter(|g| g.members.contains(&uid))
            .map(|g| g.gid)
            .collect())
    }
    fn next_in_sequence(&mut self, sequence: &str, first: u32) -> Result<u32, StoreError> {
        let next = self
            .state_mut()
            .sequences
            .entry(sequence.to_string())
            .or_insert(first);
        let value = *next;
        *next = next
            .checked_add(1)
            .ok_or_else(|| StoreError::Unavailable(format!("sequence {sequence} exhausted")))?;
        Ok(value)
    }

    fn get_session(&mut self, token_hash: &[u8; 32]) -> Result<Option<Session>, StoreError> {
        Ok(self.state.sessions.get(token_hash).cloned())
    }
    fn put_session(&mut self, session: &Session) -> Result<(), StoreError> {
        self.state_mut()
            .sessions
            .insert(session.token_hash, session.clone());
        Ok(())
    }
    fn delete_session(&mut self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.state_mut().sessions.remove(token_hash);
        Ok(())
    }
    fn delete_expired_sessions(&mut self, now: Time) -> Result<u64, StoreError> {
        let sessions = &mut self.state_mut().sessions;
        let before = sessions.len();
        sessions.retain(|_, s| s.expires > now);
        Ok((before - sessions.len()) as u64)
    }
    fn use_challenge(&mut self, challenge: &[u8; 32], expires: Time) -> Result<bool, StoreError> {
        let used = &mut self.state_mut().used_challenges;
        Ok(used.insert(*challenge, expires).is_none())
    }
    fn delete_expired_challenges(&mut self, now: Time) -> Result<u64, StoreError> {
        let used = &mut self.state_mut().used_challenges;
        let before = used.len();
        used.retain(|_, expires| *expires > now);
        Ok((before - used.len()) as u64)
    }

    fn last_audit(&mut self) -> Result<Option<AuditEntry>, StoreError> {
        Ok(self.state.audit.values().next_back().cloned())
    }
    fn append_audit(&mut self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.state_mut().audit.insert(entry.seq, entry.clone());
        Ok(())
    }
    fn list_audit(&mut self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(self
            .state
            .audit
            .range(from_seq..)
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

/// At most `limit` of what `pick` makes of the entries of `map` past `after`, in key order
/// (entries it makes nothing of are skipped).
fn page<K: Ord, V, T>(
    map: &BTreeMap<K, V>,
    after: Option<K>,
    limit: usize,
    mut pick: impl FnMut(&K, &V) -> Option<T>,
) -> Vec<T> {
    use std::ops::Bound::{Excluded, Unbounded};
    map.range((after.map_or(Unbounded, Excluded), Unbounded))
        .filter_map(|(key, value)| pick(key, value))
        .take(limit)
        .collect()
}
