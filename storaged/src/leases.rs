//! Directory leases: a client holding a directory's lease may close new files there before
//! this server has them (it sends them right after). Before any other client's call that
//! names the directory (a lookup in it, its listing or attributes, a change in it) or removes
//! or replaces it, the lease is recalled and the call waits until the holder has sent what
//! it closed there and given the lease back (NFSv4 delegations, for creation). So what a
//! client closed, the next open elsewhere sees.
//!
//! Leases live in this process's memory: only a server that is its vault's sole instance
//! (the embedded store) grants them. A holder is a client of a user (`vault-client`), and
//! holds leases only while it listens for recalls; when it stops listening (it exited, the
//! connection dropped) its leases go. A holder that lets a recall wait `RECALL_WAIT` loses the
//! lease and gets none for `BENCHED_FOR`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

/// How long a call waits for a recalled lease, at most.
pub const RECALL_WAIT: Duration = Duration::from_secs(5);
/// A recalled directory is not leased again for this long (two writers take turns slowly).
pub const COOLING: Duration = Duration::from_secs(1);
/// A holder that let a recall time out gets no lease for this long.
pub const BENCHED_FOR: Duration = Duration::from_secs(60);
/// Leases one holder may have at once.
pub const HELD_MAX: usize = 1024;
/// Leases in all.
pub const LEASES_MAX: usize = 100_000;

/// Who holds a lease: one client of one user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Holder {
    pub uid: u32,
    pub client: u64,
}

struct Lease {
    holder: Holder,
    recalled: bool,
    /// Set to true when the lease goes (given back, taken, or the holder stopped listening).
    gone: watch::Sender<bool>,
}

struct Listener {
    id: u64,
    recalls: mpsc::Sender<u64>,
    held: usize,
}

#[derive(Default)]
struct Table {
    dirs: HashMap<u64, Lease>,
    listeners: HashMap<Holder, Listener>,
    cooling: HashMap<u64, Instant>,
    benched: HashMap<Holder, Instant>,
    next_listener: u64,
    /// Calls in progress that name each directory, by caller (see [`Leases::enter`]).
    busy: HashMap<(u64, Option<Holder>), usize>,
    /// Calls in progress that may remove or replace a directory, by caller.
    removing: HashMap<Option<Holder>, usize>,
}

impl Table {
    /// Whether a call of anyone but `holder` naming `dir`, or removing a directory, is in
    /// progress.
    fn others_busy(&self, holder: Holder, dir: u64) -> bool {
        // Calls in progress are few: a scan is cheaper than keeping an index.
        let other = |caller: &Option<Holder>| *caller != Some(holder);
        self.busy
            .keys()
            .any(|(named, caller)| *named == dir && other(caller))
            || self.removing.keys().any(other)
    }
}

impl Table {
    /// Ends a lease; its waiters go on.
    fn end(&mut self, dir: u64) {
        if let Some(lease) = self.dirs.remove(&dir) {
            let _ = lease.gone.send(true);
            if let Some(listener) = self.listeners.get_mut(&lease.holder) {
                listener.held = listener.held.saturating_sub(1);
            }
        }
    }
}

pub struct Leases {
    enabled: bool,
    table: Mutex<Table>,
    /// Leases held: a call finds none without taking the lock.
    held: AtomicUsize,
    /// The server is stopping: no one listens for recalls any more.
    stopped: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Leases({} held)", self.held.load(Ordering::Relaxed))
    }
}

impl Leases {
    /// `enabled`: this server is its vault's sole instance.
    pub fn new(enabled: bool) -> Leases {
        Leases {
            enabled,
            table: Mutex::new(Table::default()),
            held: AtomicUsize::new(0),
            stopped: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().expect("lease table poisoned")
    }

    fn count(&self, table: &Table) {
        self.held.store(table.dirs.len(), Ordering::Relaxed);
    }

    /// Whether someone other than `me` holds a lease somewhere.
    pub fn others_hold_any(&self, me: Option<Holder>) -> bool {
        if self.held.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let table = self.table();
        let mine = me
            .and_then(|me| table.listeners.get(&me))
            .map_or(0, |l| l.held);
        table.dirs.len() > mine
    }

    /// Whether `holder` holds `dir`'s lease, not recalled.
    pub fn holds(&self, holder: Holder, dir: u64) -> bool {
        if self.held.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let table = self.table();
        table
            .dirs
            .get(&dir)
            .is_some_and(|lease| lease.holder == holder && !lease.recalled)
    }

    /// What the calls of anyone but `me` in progress name (they entered, see
    /// [`Leases::enter`]): they may change what `Open` returns for a file among them.
    pub fn named_by_others(&self, me: Holder) -> std::collections::HashSet<u64> {
        let table = self.table();
        table
            .busy
            .keys()
            .filter(|(_, caller)| *caller != Some(me))
            .map(|(named, _)| *named)
            .collect()
    }

    /// Starts listening for `holder`'s recalls (replacing an earlier listener of it).
    pub fn listen(self: &Arc<Self>, holder: Holder) -> Option<RecallStream> {
        if !self.enabled {
            return None;
        }
        let (sender, receiver) = mpsc::channel(HELD_MAX);
        let mut table = self.table();
        if self.stopped.load(Ordering::SeqCst) {
            return None;
        }
        table.next_listener += 1;
        let id = table.next_listener;
        let held = table.dirs.values().filter(|l| l.holder == holder).count();
        table.listeners.insert(
            holder,
            Listener {
                id,
                recalls: sender,
                held,
            },
        );
        Some(RecallStream {
            receiver,
            leases: self.clone(),
            holder,
            id,
        })
    }

    /// Ends every `Recalls` call (the server is stopping), and with them every lease; no
    /// call listens again.
    pub fn stop_listening(&self) {
        let mut table = self.table();
        self.stopped.store(true, Ordering::SeqCst);
        table.listeners.clear();
        let held: Vec<u64> = table.dirs.keys().copied().collect();
        for dir in held {
            table.end(dir);
        }
        self.count(&table);
    }

    /// `holder` stopped listening: its leases go.
    fn unlisten(&self, holder: Holder, id: u64) {
        let mut table = self.table();
        if table.listeners.get(&holder).is_none_or(|l| l.id != id) {
            return;
        }
        table.listeners.remove(&holder);
        let held: Vec<u64> = table
            .dirs
            .iter()
            .filter(|(_, l)| l.holder == holder)
            .map(|(&dir, _)| dir)
            .collect();
        for dir in held {
            table.end(dir);
        }
        self.count(&table);
    }

    /// Grants `dir`'s lease to `holder` if nothing stands against it (the caller checked that
    /// the holder may create names there).
    pub fn grant(&self, holder: Holder, dir: u64) -> bool {
        if !self.enabled {
            return false;
        }
        let now = Instant::now();
        let mut table = self.table();
        table.cooling.retain(|_, until| *until > now);
        table.benched.retain(|_, until| *until > now);
        if let Some(lease) = table.dirs.get(&dir) {
            return lease.holder == holder && !lease.recalled;
        }
        // A call in progress may have settled before the lease existed: what it changes
        // would come after the grant, unrecalled.
        if table.cooling.contains_key(&dir)
            || table.benched.contains_key(&holder)
            || table.dirs.len() >= LEASES_MAX
            || table.others_busy(holder, dir)
        {
            return false;
        }
        let Some(listener) = table.listeners.get_mut(&holder) else {
            return false;
        };
        if listener.held >= HELD_MAX {
            return false;
        }
        listener.held += 1;
        let (gone, _) = watch::channel(false);
        table.dirs.insert(
            dir,
            Lease {
                holder,
                recalled: false,
                gone,
            },
        );
        self.count(&table);
        true
    }

    /// `holder` gives `dir`'s lease back.
    pub fn give_back(&self, holder: Holder, dir: u64) {
        let mut table = self.table();
        if table.dirs.get(&dir).is_some_and(|l| l.holder == holder) {
            table.end(dir);
            self.count(&table);
        }
    }

    /// A call of `me` that names `dirs` (and may remove or replace a directory, `removes`)
    /// starts: until the guard drops, no one else is granted a lease on them (or on any
    /// directory, while it may remove one). Taken before the call settles.
    pub fn enter(
        self: &Arc<Self>,
        me: Option<Holder>,
        dirs: &[u64],
        removes: bool,
    ) -> Option<InProgress> {
        if !self.enabled || (dirs.is_empty() && !removes) {
            return None;
        }
        let mut table = self.table();
        for &dir in dirs {
            *table.busy.entry((dir, me)).or_default() += 1;
        }
        if removes {
            *table.removing.entry(me).or_default() += 1;
        }
        Some(InProgress {
            leases: self.clone(),
            me,
            dirs: dirs.to_vec(),
            removes,
        })
    }

    /// Before a call of `me` that names `dirs`: recalls every lease another holder has on
    /// them and waits until it is given back (at most `RECALL_WAIT` in all; then the lease is
    /// taken). Returns how many leases were recalled.
    pub async fn settle(&self, me: Option<Holder>, dirs: &[u64]) -> usize {
        self.settle_within(me, dirs, RECALL_WAIT).await
    }

    async fn settle_within(&self, me: Option<Holder>, dirs: &[u64], wait: Duration) -> usize {
        if self.held.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut recalled = 0;
        for &dir in dirs {
            let mut gone = {
                let mut table = self.table();
                let Some(lease) = table.dirs.get_mut(&dir) else {
                    continue;
                };
                if Some(lease.holder) == me {
                    continue;
                }
                let holder = lease.holder;
                let mut gone = lease.gone.subscribe();
                if !lease.recalled {
                    lease.recalled = true;
                    recalled += 1;
                    let sent = table
                        .listeners
                        .get(&holder)
                        .is_some_and(|l| l.recalls.try_send(dir).is_ok());
                    table.cooling.insert(dir, Instant::now() + COOLING);
                    if !sent {
                        tracing::warn!(dir = %format!("{dir:016x}"), uid = holder.uid, "a lease's holder cannot be told of its recall; taking the lease");
                        table.end(dir);
                        self.count(&table);
                        continue;
                    }
                }
                gone.mark_unchanged();
                gone
            };
            let waited = tokio::time::timeout_at(deadline, gone.wait_for(|gone| *gone)).await;
            if waited.is_err() {
                let mut table = self.table();
                if let Some(lease) = table.dirs.get(&dir) {
                    let holder = lease.holder;
                    tracing::warn!(dir = %format!("{dir:016x}"), uid = holder.uid, "a recalled lease was not given back in time; taking it (what its holder closed there and has not sent arrives late)");
                    table.end(dir);
                    table.benched.insert(holder, Instant::now() + BENCHED_FOR);
                    self.count(&table);
                }
            }
        }
        recalled
    }
}

/// A call in progress (see [`Leases::enter`]).
#[derive(Debug)]
pub struct InProgress {
    leases: Arc<Leases>,
    me: Option<Holder>,
    dirs: Vec<u64>,
    removes: bool,
}

/// Counts one call less under `key` in `counts`, forgetting the key at none.
fn leave<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let Some(count) = counts.get_mut(&key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(&key);
        }
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        let mut table = self.leases.table();
        for &dir in &self.dirs {
            leave(&mut table.busy, (dir, self.me));
        }
        if self.removes {
            leave(&mut table.removing, self.me);
        }
    }
}

/// A holder's recalls, as the `Recalls` call streams them; dropping it (the call ended) ends
/// the holder's leases.
#[derive(Debug)]
pub struct RecallStream {
    receiver: mpsc::Receiver<u64>,
    leases: Arc<Leases>,
    holder: Holder,
    id: u64,
}

impl tokio_stream::Stream for RecallStream {
    type Item = Result<proto::v1::Recall, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver
            .poll_recv(cx)
            .map(|dir| dir.map(|dir| Ok(proto::v1::Recall { dir })))
    }
}

impl Drop for RecallStream {
    fn drop(&mut self) {
        self.leases.unlisten(self.holder, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    const A: Holder = Holder { uid: 1, client: 10 };
    const B: Holder = Holder { uid: 2, client: 20 };

    #[tokio::test]
    async fn a_lease_needs_a_listener_and_is_exclusive() {
        let leases = Arc::new(Leases::new(true));
        assert!(!leases.grant(A, 5), "A does not listen");
        let _a = leases.listen(A).expect("listening");
        let _b = leases.listen(B).expect("listening");
        assert!(leases.grant(A, 5));
        assert!(leases.grant(A, 5), "asking again keeps it");
        assert!(!leases.grant(B, 5), "held by A");
        assert!(leases.others_hold_any(Some(B)));
        assert!(!leases.others_hold_any(Some(A)));
        leases.give_back(B, 5);
        assert!(!leases.grant(B, 5), "only the holder gives it back");
        leases.give_back(A, 5);
        assert!(leases.grant(B, 5));
    }

    #[tokio::test]
    async fn no_lease_while_a_call_naming_the_directory_is_in_progress() {
        let leases = Arc::new(Leases::new(true));
        let _a = leases.listen(A).expect("listening");
        let call = leases.enter(Some(B), &[5, 6], false);
        let own = leases.enter(Some(A), &[5], false);
        assert!(!leases.grant(A, 5));
        assert!(leases.grant(A, 7));
        assert!(leases.holds(A, 7) && !leases.holds(B, 7) && !leases.holds(A, 5));
        let mut named: Vec<u64> = leases.named_by_others(A).into_iter().collect();
        named.sort_unstable();
        assert_eq!(
            named,
            vec![5, 6],
            "B's call names them (A's own does not count)"
        );
        drop(call);
        assert!(leases.grant(A, 5), "its own call stands in no one's way");
        drop(own);
        let removing = leases.enter(None, &[9], true);
        assert!(!leases.grant(A, 8), "a directory may be going");
        drop(removing);
        assert!(leases.grant(A, 8));
        let table = leases.table();
        assert!(table.busy.is_empty() && table.removing.is_empty());
    }

    #[tokio::test]
    async fn stopping_ends_every_recall_stream_and_lease() {
        let leases = Arc::new(Leases::new(true));
        let mut recalls = leases.listen(A).expect("listening");
        assert!(leases.grant(A, 5));
        leases.stop_listening();
        assert!(recalls.next().await.is_none(), "the stream ends");
        assert!(!leases.others_hold_any(None));
        assert!(leases.listen(B).is_none(), "no one listens again");
    }

    #[tokio::test]
    async fn a_disabled_table_grants_nothing() {
        let leases = Arc::new(Leases::new(false));
        assert!(leases.listen(A).is_none());
        assert!(!leases.grant(A, 5));
    }

    #[tokio::test]
    async fn a_call_waits_until_the_recalled_lease_is_given_back() {
        let leases = Arc::new(Leases::new(true));
        let mut recalls = leases.listen(A).expect("listening");
        assert!(leases.grant(A, 5));
        assert_eq!(
            leases.settle(Some(A), &[5]).await,
            0,
            "its holder's own call"
        );
        let waiting = tokio::spawn({
            let leases = leases.clone();
            async move { leases.settle(Some(B), &[7, 5]).await }
        });
        let recall = recalls.next().await.expect("a recall").expect("no error");
        assert_eq!(recall.dir, 5);
        assert!(!waiting.is_finished());
        assert!(!leases.grant(A, 5), "recalled");
        assert!(
            !leases.holds(A, 5),
            "a recalled lease answers nothing ahead"
        );
        leases.give_back(A, 5);
        assert_eq!(waiting.await.expect("settled"), 1);
        assert!(!leases.grant(A, 5), "cooling after the recall");
    }

    #[tokio::test]
    async fn a_holder_that_does_not_answer_loses_the_lease() {
        let leases = Arc::new(Leases::new(true));
        let _recalls = leases.listen(A).expect("listening");
        assert!(leases.grant(A, 5));
        let wait = Duration::from_millis(50);
        let started = tokio::time::Instant::now();
        assert_eq!(leases.settle_within(None, &[5], wait).await, 1);
        assert!(started.elapsed() >= wait);
        assert!(!leases.others_hold_any(None));
        assert!(!leases.grant(A, 6), "benched");
    }

    #[tokio::test]
    async fn leases_go_when_their_holder_stops_listening() {
        let leases = Arc::new(Leases::new(true));
        let first = leases.listen(A).expect("listening");
        let second = leases.listen(A).expect("listening");
        assert!(leases.grant(A, 5));
        drop(first);
        assert!(
            leases.others_hold_any(None),
            "an earlier listener's end changes nothing"
        );
        drop(second);
        assert!(!leases.others_hold_any(None));
        assert_eq!(leases.settle(Some(B), &[5]).await, 0);
    }
}
