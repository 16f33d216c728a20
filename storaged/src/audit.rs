//! The audit log: security-relevant events, append-only, each entry holding the hash of the
//! one before, so that `storaged audit verify` finds the first edited, removed or reordered
//! entry. Entries are appended in the same transaction as the change they record.

use crate::meta::{AuditEntry, FileId, MetaStore, StoreError, Time, Txn};

/// The file of an event that is about no file (a login, a user or a group).
pub const NO_FILE: FileId = FileId(0);

/// Appends one event to the chain.
pub fn append(
    txn: &mut dyn Txn,
    uid: u32,
    event: &str,
    ino: FileId,
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
    Ok(walk(store, None).await?.verdict)
}

/// What a walk of the chain found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    pub verdict: Verdict,
    /// The last entry (seq, hash) of an intact chain.
    pub head: Option<(u64, [u8; 32])>,
    /// The hash of the entry the walk was asked to keep, if the chain holds it intact.
    pub kept: Option<[u8; 32]>,
}

/// Walks the whole chain from the first entry, keeping the hash of entry `keep`.
pub async fn walk(store: &dyn MetaStore, keep: Option<u64>) -> Result<Walk, StoreError> {
    let mut expected_seq = 1u64;
    let mut prev_hash = [0u8; 32];
    let mut kept = None;
    loop {
        let from = expected_seq;
        let page: Vec<AuditEntry> =
            crate::meta::read(store, move |txn| txn.list_audit(from, PAGE)).await?;
        for entry in &page {
            if let Some(reason) = check(entry, expected_seq, &prev_hash) {
                let verdict = Verdict::Broken {
                    seq: expected_seq,
                    reason,
                };
                return Ok(Walk {
                    verdict,
                    head: None,
                    kept,
                });
            }
            if Some(entry.seq) == keep {
                kept = Some(entry.hash);
            }
            prev_hash = entry.hash;
            expected_seq += 1;
        }
        if page.len() < PAGE {
            let entries = expected_seq - 1;
            return Ok(Walk {
                verdict: Verdict::Intact { entries },
                head: (entries > 0).then_some((entries, prev_hash)),
                kept,
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

/// Read-side events (a chunk read, a refused call, a failed login) change nothing else, so
/// they need no transaction of their own: they are queued and appended in batches, at most
/// `BATCH_DELAY` after they happen. A crash may lose the last batch; every event that records
/// a change is written in the same transaction as the change.
#[derive(Debug, Clone)]
pub struct AuditQueue {
    sender: tokio::sync::mpsc::Sender<Queued>,
}

const QUEUE_EVENTS_MAX: usize = 65_536;
const BATCH_EVENTS_MAX: usize = 1024;
const BATCH_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

#[derive(Debug)]
enum Queued {
    Event {
        uid: u32,
        event: &'static str,
        ino: FileId,
        detail: String,
        time: Time,
    },
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl AuditQueue {
    /// Starts the task that writes queued events.
    pub fn start(store: std::sync::Arc<dyn MetaStore>) -> AuditQueue {
        let (sender, receiver) = tokio::sync::mpsc::channel(QUEUE_EVENTS_MAX);
        tokio::spawn(write_batches(store, receiver));
        AuditQueue { sender }
    }

    /// Queues an event; waits only when the queue is full.
    pub async fn record(&self, uid: u32, event: &'static str, ino: FileId, detail: String) {
        let queued = Queued::Event {
            uid,
            event,
            ino,
            detail,
            time: crate::meta::now(),
        };
        if self.sender.send(queued).await.is_err() {
            tracing::error!(event, "the audit writer stopped; an event is lost");
        }
    }

    /// Waits until every event queued so far is written.
    pub async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.sender.send(Queued::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn write_batches(
    store: std::sync::Arc<dyn MetaStore>,
    mut receiver: tokio::sync::mpsc::Receiver<Queued>,
) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < BATCH_EVENTS_MAX && !matches!(batch.last(), Some(Queued::Flush(_))) {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(next)) => batch.push(next),
                _ => break,
            }
        }
        let mut events = Vec::new();
        let mut flushes = Vec::new();
        for queued in batch {
            match queued {
                Queued::Event {
                    uid,
                    event,
                    ino,
                    detail,
                    time,
                } => events.push((uid, event, ino, detail, time)),
                Queued::Flush(done) => flushes.push(done),
            }
        }
        if !events.is_empty() {
            let count = events.len();
            // Read-side events are not worth a sync of their own: the next durable commit, at
            // most a second away, takes them along.
            let visible = crate::meta::Durability::Visible;
            let written =
                crate::meta::write_as(&*store, visible, move |txn| -> Result<(), StoreError> {
                    for (uid, event, ino, detail, time) in &events {
                        append(txn, *uid, event, *ino, detail, *time)?;
                    }
                    Ok(())
                })
                .await;
            if let Err(error) = written {
                tracing::error!(%error, count, "could not write audit events");
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}
