//! The audit log: security-relevant events, append-only, each entry holding the hash of the
//! one before, so that `storaged audit verify` finds the first edited, removed or reordered
//! entry. Entries are appended in the same transaction as the change they record.

use crate::meta::{AuditEntry, Ino, MetaStore, StoreError, Time, Txn};

/// Appends one event to the chain.
pub fn append(
    txn: &mut dyn Txn,
    uid: u32,
    event: &str,
    ino: Ino,
    detail: &str,
    now: Time,
) -> Result<(), StoreError> {
    let last = txn.last_audit()?;
    let mut entry = AuditEntry {
        seq: last.as_ref().map_or(1, |e| e.seq + 1),
        time: now,
        uid,
        event: event.to_string(),
        ino,
        detail: detail.to_string(),
        prev_hash: last.map_or([0; 32], |e| e.hash),
        hash: [0; 32],
    };
    entry.hash = entry.compute_hash();
    txn.append_audit(&entry)
}

/// What `audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Intact { entries: u64 },
    Broken { seq: u64, reason: String },
}

const PAGE: usize = 1000;

/// Walks the whole chain from the first entry.
pub async fn verify(store: &dyn MetaStore) -> Result<Verdict, StoreError> {
    let mut expected_seq = 1u64;
    let mut prev_hash = [0u8; 32];
    loop {
        let from = expected_seq;
        let page: Vec<AuditEntry> =
            crate::meta::read(store, move |txn| txn.list_audit(from, PAGE)).await?;
        for entry in &page {
            if let Some(reason) = check(entry, expected_seq, &prev_hash) {
                return Ok(Verdict::Broken {
                    seq: expected_seq,
                    reason,
                });
            }
            prev_hash = entry.hash;
            expected_seq += 1;
        }
        if page.len() < PAGE {
            return Ok(Verdict::Intact {
                entries: expected_seq - 1,
            });
        }
    }
}

fn check(entry: &AuditEntry, expected_seq: u64, prev_hash: &[u8; 32]) -> Option<String> {
    if entry.seq != expected_seq {
        return Some(format!(
            "entry {expected_seq} is missing (next is {})",
            entry.seq
        ));
    }
    if entry.prev_hash != *prev_hash {
        return Some("does not link to the entry before it".to_string());
    }
    if entry.hash != entry.compute_hash() {
        return Some("its contents do not match its hash (edited)".to_string());
    }
    None
}
