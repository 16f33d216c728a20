//! The connection to storaged, as the filesystem uses it: every call re-logs in once when the
//! session has expired, and waits (bounded) while the server is unreachable, so that a
//! restarted daemon is picked up without remounting.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use client::{Api, Connection};
use identity::Identity;
use proto::ErrorKind;

use crate::error::FsError;

thread_local! {
    /// The runtime this thread drives its filesystem calls on (see [`drive`]).
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a thread's own async runtime");
    /// Set while this thread drives [`RUNTIME`].
    static DRIVING: Cell<bool> = const { Cell::new(false) };
    /// Each remote's channel of this thread, whose tasks run on [`RUNTIME`].
    static OWN: RefCell<HashMap<u64, Connection>> = RefCell::new(HashMap::new());
}

/// Runs `work` to completion on this thread, calls to storaged included: a call made inside
/// goes out on this thread's own channel to the server and its reply is read by this thread,
/// with no hand-off to the mount's runtime threads and back (each such wake-up costs more
/// than the call itself on a small VM). Work spawned inside must go to the mount's runtime
/// ([`crate::shared::Shared::spawn`]): this runtime runs only while its thread is in here.
pub fn drive<T>(work: impl Future<Output = T>) -> T {
    RUNTIME.with(|runtime| {
        let was = DRIVING.replace(true);
        let out = runtime.block_on(work);
        DRIVING.set(was);
        out
    })
}

static NEXT_REMOTE: AtomicU64 = AtomicU64::new(1);

#[derive(Clone)]
pub struct Remote {
    /// Tells this remote's channels apart in [`OWN`] (threads may serve several vaults).
    id: u64,
    connection: Connection,
    name: String,
    identity: Arc<Identity>,
    /// How long a call waits for an unreachable server before it fails.
    wait: Duration,
    /// No call waits past this (see [`Remote::shutting_down`]).
    deadline: Arc<std::sync::OnceLock<Instant>>,
    relogin: Arc<tokio::sync::Mutex<()>>,
    /// Counts finished calls that may have changed something on the server.
    changes: Arc<AtomicU64>,
    features: Arc<Vec<String>>,
}

/// Calls that change nothing on the server.
const READ_ONLY: &[&str] = &[
    "lookup",
    "open",
    "open_many",
    "get_attr",
    "read_dir",
    "read_link",
    "get_chunk",
    "list_chunks",
    "get_xattr",
    "list_xattr",
    "get_acl",
    "get_user",
    "get_wrapped_keys",
    "stat_fs",
    "lease",
    "recalls",
];

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({} as {})", self.connection.target, self.name)
    }
}

impl Remote {
    pub fn new(
        connection: Connection,
        name: &str,
        identity: Arc<Identity>,
        wait: Duration,
    ) -> Remote {
        keystore::memory::lock_secret(&*identity);
        Remote {
            id: NEXT_REMOTE.fetch_add(1, Ordering::Relaxed),
            connection,
            name: name.to_string(),
            identity,
            wait,
            deadline: Arc::new(std::sync::OnceLock::new()),
            relogin: Arc::new(tokio::sync::Mutex::new(())),
            changes: Arc::new(AtomicU64::new(0)),
            features: Arc::new(Vec::new()),
        }
    }

    /// What the server said it does beyond the first protocol (`HelloReply.features`).
    pub fn with_server_features(mut self, features: &[String]) -> Remote {
        self.features = Arc::new(features.to_vec());
        self
    }

    /// Whether the server said it has `feature` (one of `proto::features`).
    pub fn server_has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// Moves on after every call that may have changed something on the server (whatever its
    /// outcome): what this client learnt from the server before is current only while this
    /// stays the same (read it before asking).
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// From now on, calls together wait for an unreachable server at most one wait: the
    /// client is shutting down, flushing what it holds, and must not wait once per call.
    pub fn shutting_down(&self) {
        let _ = self.deadline.set(Instant::now() + self.wait);
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    pub async fn login(&self) -> Result<client::LoggedIn, FsError> {
        let _one_at_a_time = self.relogin.lock().await;
        Ok(self.connection.login(&self.name, &self.identity).await?)
    }

    /// The client for a call: this thread's own channel while it [`drive`]s its runtime,
    /// else the shared one (whose tasks run on the runtime that made it).
    fn api(&self) -> Api {
        if !DRIVING.get() {
            return self.connection.api();
        }
        OWN.with(|own| {
            let mut own = own.borrow_mut();
            if let Some(connection) = own.get(&self.id) {
                return connection.api();
            }
            match self.connection.another_channel() {
                Ok(connection) => own.entry(self.id).or_insert(connection).api(),
                Err(_) => self.connection.api(),
            }
        })
    }

    /// Runs one API call with re-login and bounded waiting for the server.
    pub async fn call<T, F, Fut>(&self, what: &'static str, call: F) -> Result<T, FsError>
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let outcome = self.call_retrying(what, call).await;
        if !READ_ONLY.contains(&what) {
            self.changes.fetch_add(1, Ordering::SeqCst);
        }
        outcome
    }

    /// [`Remote::call`] with one request, which each attempt sends anew (a copy of it).
    pub async fn send<Q, T, F, Fut>(
        &self,
        what: &'static str,
        request: Q,
        call: F,
    ) -> Result<T, FsError>
    where
        Q: Clone,
        F: Fn(Api, Q) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call(what, |api| call(api, request.clone())).await
    }

    async fn call_retrying<T, F, Fut>(&self, what: &'static str, mut call: F) -> Result<T, FsError>
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let mut relogged = false;
        let mut pause = Duration::from_millis(50);
        loop {
            let error: FsError = match call(self.api()).await {
                Ok(reply) => return Ok(reply.into_inner()),
                // Every refusal of the server names its kind; a status without one comes
                // from the transport. This thread's own channel notices a dropped connection
                // only when it sends (it is idle between calls): start a new one, and treat
                // the failure as the server being unreachable.
                Err(status)
                    if DRIVING.get() && status.metadata().get(proto::ERROR_KIND_KEY).is_none() =>
                {
                    OWN.with(|own| own.borrow_mut().remove(&self.id));
                    FsError::local(
                        ErrorKind::Unavailable,
                        format!("connection to storaged lost: {}", status.message()),
                    )
                }
                Err(status) => status.into(),
            };
            match error.kind() {
                ErrorKind::Unauthenticated if !relogged => {
                    relogged = true;
                    tracing::info!(what, "session ended; logging in again");
                    self.login().await?;
                }
                ErrorKind::Unavailable
                    if may_wait(started, Instant::now(), self.wait, self.deadline.get()) =>
                {
                    tracing::warn!(what, %error, "storaged unreachable; waiting");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                _ => return Err(error),
            }
        }
    }
}

/// Whether a call started at `started` may wait longer for an unreachable server at `now`:
/// within its own `wait`, and before the shutdown `deadline` if there is one (then all calls
/// together wait one wait, not one each).
fn may_wait(started: Instant, now: Instant, wait: Duration, deadline: Option<&Instant>) -> bool {
    now < started + wait && deadline.is_none_or(|d| now < *d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_shutdown_all_calls_together_wait_one_wait() {
        let wait = Duration::from_secs(30);
        let t = Instant::now();
        assert!(may_wait(t, t + wait / 2, wait, None));
        assert!(!may_wait(t, t + wait, wait, None), "its own wait is over");
        // Shutting down at t + 10 s: no call waits past t + 40 s, however late it started.
        let deadline = t + Duration::from_secs(10) + wait;
        let late = t + Duration::from_secs(35);
        assert!(may_wait(
            late,
            late + Duration::from_secs(4),
            wait,
            Some(&deadline)
        ));
        assert!(!may_wait(late, deadline, wait, Some(&deadline)));
        assert!(!may_wait(
            late,
            late + Duration::from_secs(20),
            wait,
            Some(&deadline)
        ));
    }
}
